//! podman 4.3 (through conmon) drives the runtime under test (moat-oci, or
//! `$MOAT_OCI_TEST_RUNTIME`): each case is a function of the isolation,
//! passed as podman's `--annotation moat.dev/isolation=...`; the `sandbox_`
//! tests call them with the sandbox. Needs root, podman, conmon, tmux and
//! curl (scripts/bootstrap).

#[path = "clients/mod.rs"]
mod clients;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use clients::{code, ready, run, stderr, stdout, wait_until, Podman, Tmux, IMAGE};

const SANDBOX: &str = "sandbox";
const NO_NET: [&str; 2] = ["--network", "none"];

/// `podman run --rm --network none OPTS IMAGE CMD` for `isolation`.
fn run_rm(p: &Podman, isolation: &str, opts: &[&str], cmd: &[&str]) -> std::process::Output {
    let mut all = NO_NET.to_vec();
    all.extend_from_slice(opts);
    p.run_rm(isolation, &all, cmd)
}

/// Asserts success and returns stdout, with podman's words on failure.
fn ok(o: &std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: podman exited {}: {}{}",
        o.status,
        stderr(o),
        stdout(o)
    );
    stdout(o)
}

/// `run -d` of `cmd` named `name`; returns the container id.
fn run_d(p: &Podman, isolation: &str, name: &str, opts: &[&str], cmd: &[&str]) -> String {
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.into()];
    args.extend(Podman::container_opts(isolation));
    args.extend(opts.iter().map(|s| s.to_string()));
    args.push(IMAGE.into());
    args.extend(cmd.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    p.ok(&refs).trim().to_string()
}

fn inspect(p: &Podman, name: &str, format: &str) -> String {
    p.ok(&["container", "inspect", "--format", format, name])
        .trim()
        .to_string()
}

fn echo_and_exit_status(isolation: &str) {
    let p = Podman::new();
    let o = run_rm(&p, isolation, &[], &["echo", "hi"]);
    assert_eq!(ok(&o, "run --rm echo hi"), "hi\n");
    // The workload's status is podman's, through the pid conmon reaps.
    let o = run_rm(
        &p,
        isolation,
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(code(o.status), 7, "podman: {}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert!(stderr(&o).contains("err"), "stderr: {}", stderr(&o));
    // --rm left nothing behind.
    assert_eq!(p.ok(&["ps", "-aq"]), "");
}

fn detached_lifecycle(isolation: &str) {
    let p = Podman::new();
    let script = "echo started; trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done";
    let id = run_d(&p, isolation, "d", &NO_NET, &["sh", "-c", script]);
    assert_eq!(id.len(), 64, "run -d printed {id:?}");
    assert_eq!(inspect(&p, "d", "{{.State.Status}}"), "running");
    let logs = wait_until(Duration::from_secs(10), || {
        let l = p.ok(&["logs", "d"]);
        l.contains("started").then_some(l)
    });
    assert!(logs.is_some(), "podman logs d: {:?}", p.ok(&["logs", "d"]));
    let o = p.podman(&["exec", "d", "sh", "-c", "echo in-$((6*7)); ps"]);
    let out = ok(&o, "exec");
    assert!(out.starts_with("in-42\n"), "exec printed {out:?}");
    assert!(
        out.contains("while"),
        "exec does not see the workload: {out:?}"
    );
    let o = p.podman(&["exec", "d", "sh", "-c", "exit 3"]);
    assert_eq!(code(o.status), 3, "exec exit status: {}", stderr(&o));
    p.ok(&["stop", "-t", "10", "d"]);
    assert_eq!(inspect(&p, "d", "{{.State.Status}}"), "exited");
    assert_eq!(inspect(&p, "d", "{{.State.ExitCode}}"), "0");
    assert!(p.ok(&["logs", "d"]).contains("got-term"));
    p.ok(&["rm", "d"]);
    // `container inspect`: a bare `inspect d` also finds an image whose ID
    // starts with "d" (one import in 16).
    let o = p.podman(&["container", "inspect", "d"]);
    assert!(
        !o.status.success(),
        "d still exists after rm: {}",
        stdout(&o)
    );
    // A workload killed by a signal: 128+N, as the reaped pid shows it.
    run_d(&p, isolation, "k", &NO_NET, &["sleep", "600"]);
    p.ok(&["kill", "k"]);
    let o = p.podman(&["wait", "k"]);
    assert_eq!(ok(&o, "wait k").trim(), "137");
    p.ok(&["rm", "k"]);
}

fn interactive_terminal(isolation: &str) {
    let p = Podman::new();
    let mut args: Vec<&str> = vec!["run", "--rm", "-it", "--name", "it", "--network", "none"];
    let opts = Podman::container_opts(isolation);
    args.extend(opts.iter().map(String::as_str));
    args.extend([IMAGE, "sh"]);
    let tmux = Tmux::start(p.dir.path().join("tmux.sock"), &p.argv(&args));
    let screen =
        tmux.shell_round_trip("run -it", isolation, "stty size; ", Duration::from_secs(20));
    assert!(
        screen.contains("30 100"),
        "terminal size not passed:\n{screen}"
    );
    // exec -it: a second terminal in the same container.
    let exec = Tmux::start(
        p.dir.path().join("tmux-exec.sock"),
        &p.argv(&["exec", "-it", "it", "sh"]),
    );
    exec.shell_round_trip("exec -it", isolation, "ps; ", Duration::from_secs(20));
    exec.exit_with("exec -it", 3, Duration::from_secs(20));
    tmux.exit_with("run -it", 5, Duration::from_secs(20));
}

fn volume(isolation: &str) {
    let p = Podman::new();
    let host = p.dir.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("from-host"), "host-data\n").unwrap();
    let v = format!("{}:/data", host.display());
    let o = run_rm(
        &p,
        isolation,
        &["-v", &v],
        &[
            "sh",
            "-c",
            "cat /data/from-host; echo container-data > /data/from-container",
        ],
    );
    assert_eq!(ok(&o, "-v"), "host-data\n");
    assert_eq!(
        std::fs::read_to_string(host.join("from-container")).unwrap(),
        "container-data\n"
    );
}

fn published_port(isolation: &str) {
    let p = Podman::new();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("127.0.0.1:{port}:80");
    let serve = "mkdir -p /tmp/www && echo moat-httpd-ok > /tmp/www/index.html && \
                 exec httpd -f -p 80 -h /tmp/www";
    run_d(
        &p,
        isolation,
        "web",
        &["-p", &publish],
        &["sh", "-c", serve],
    );
    let url = format!("http://127.0.0.1:{port}/index.html");
    let mut last = String::new();
    let body = wait_until(Duration::from_secs(15), || {
        let o = run(
            Command::new("curl").args(["-sS", "--max-time", "2", &url]),
            Duration::from_secs(5),
        );
        last = format!("{}{}", stdout(&o), stderr(&o));
        o.status.success().then(|| stdout(&o))
    });
    assert_eq!(
        body.as_deref(),
        Some("moat-httpd-ok\n"),
        "curl {url}: {last}; podman logs: {}",
        p.ok(&["logs", "web"])
    );
    p.ok(&["rm", "-f", "-t", "0", "web"]);
}

fn read_only_root(isolation: &str) {
    let p = Podman::new();
    let o = run_rm(&p, isolation, &["--read-only"], &["touch", "/new-file"]);
    assert_eq!(
        code(o.status),
        1,
        "write to / under --read-only: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    // Without it the same write works (the test can tell the difference).
    let o = run_rm(&p, isolation, &[], &["touch", "/new-file"]);
    ok(&o, "write to / without --read-only");
}

fn user(isolation: &str) {
    let p = Podman::new();
    let o = run_rm(&p, isolation, &["--user", "1000:1000"], &["id"]);
    let out = ok(&o, "--user 1000:1000");
    assert!(
        out.starts_with("uid=1000(user) gid=1000(user)"),
        "id printed {out:?}"
    );
    let o = run_rm(
        &p,
        isolation,
        &["--user", "1000:1000"],
        &["touch", "/root/x"],
    );
    assert!(!o.status.success(), "uid 1000 wrote to /root");
}

fn cap_eff(out: &str) -> Option<&str> {
    out.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
}

fn cap_drop_all(isolation: &str) {
    let p = Podman::new();
    let cat = ["cat", "/proc/self/status"];
    let out = ok(
        &run_rm(&p, isolation, &["--cap-drop", "ALL"], &cat),
        "--cap-drop ALL",
    );
    assert_eq!(cap_eff(&out), Some("0000000000000000"), "{out}");
    let out = ok(&run_rm(&p, isolation, &[], &cat), "default capabilities");
    assert_ne!(cap_eff(&out), Some("0000000000000000"), "{out}");
    assert!(cap_eff(&out).is_some(), "{out}");
}

fn pids_limit(isolation: &str) {
    let p = Podman::new();
    // 40 background sleeps: the 20th process cannot fork.
    let forks = "i=0; while [ $i -lt 40 ]; do sleep 2 & i=$((i+1)); done; echo all-forked";
    let o = run_rm(&p, isolation, &["--pids-limit", "20"], &["sh", "-c", forks]);
    assert!(
        !o.status.success(),
        "40 processes under --pids-limit 20: {}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("can't fork"), "{}", stderr(&o));
    let o = run_rm(&p, isolation, &[], &["sh", "-c", forks]);
    assert_eq!(ok(&o, "40 processes without a limit"), "all-forked\n");
}

fn memory_limit(isolation: &str) {
    let p = Podman::new();
    // 100 MB in a shell variable is more than 64 MiB: the OOM killer ends it.
    let hog = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo kept ${#x}";
    let o = run_rm(&p, isolation, &["--memory", "64m"], &["sh", "-c", hog]);
    assert_eq!(
        code(o.status),
        137,
        "100 MB under --memory 64m: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let small = "x=$(head -c 10000000 /dev/zero | tr '\\0' a); echo kept ${#x}";
    let o = run_rm(&p, isolation, &["--memory", "64m"], &["sh", "-c", small]);
    assert_eq!(ok(&o, "10 MB under --memory 64m"), "kept 10000000\n");
    run_d(
        &p,
        isolation,
        "m",
        &["--network", "none", "--memory", "64m"],
        &["sleep", "60"],
    );
    assert_eq!(inspect(&p, "m", "{{.HostConfig.Memory}}"), "67108864");
    p.ok(&["rm", "-f", "-t", "0", "m"]);
}

fn seccomp_profile(isolation: &str) {
    let p = Podman::new();
    let profile = p.dir.path().join("deny-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let opt = format!("seccomp={}", profile.display());
    let script = "mkdir /tmp/d; echo mkdir=$?; touch /tmp/f && echo touch-ok";
    let o = run_rm(
        &p,
        isolation,
        &["--security-opt", &opt],
        &["sh", "-c", script],
    );
    assert_eq!(ok(&o, "seccomp profile"), "mkdir=1\ntouch-ok\n");
    assert!(
        stderr(&o).contains("Operation not permitted"),
        "{}",
        stderr(&o)
    );
    let o = run_rm(&p, isolation, &[], &["sh", "-c", script]);
    assert_eq!(ok(&o, "default profile"), "mkdir=0\ntouch-ok\n");
}

/// `podman run --rm` under the site's default policy (no test policy).
fn run_rm_default_policy(
    p: &Podman,
    isolation: &str,
    opts: &[&str],
    cmd: &[&str],
) -> std::process::Output {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "--network".into(),
        "none".into(),
    ];
    args.extend(Podman::default_policy_opts(isolation));
    args.extend(opts.iter().map(|s| s.to_string()));
    args.push(IMAGE.into());
    args.extend(cmd.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    p.podman(&refs)
}

fn privileged_refused(isolation: &str) {
    let p = Podman::new();
    let o = run_rm_default_policy(
        &p,
        isolation,
        &["--privileged"],
        &["echo", "ran-privileged"],
    );
    assert!(
        !o.status.success() && !stdout(&o).contains("ran-privileged"),
        "--privileged ran under moat's default policy: {}{}",
        stdout(&o),
        stderr(&o)
    );
    // The refusal names the policy, in podman's relay of the runtime's error.
    assert!(stderr(&o).contains("policy"), "podman said: {}", stderr(&o));
    assert_eq!(p.ok(&["ps", "-aq"]), "", "a refused container was left");
}

/// Under the default policy (`auto`, baseline narrowed) a podman container keeps none of
/// podman's default capabilities, and exec is refused by name.
fn default_policy_narrows(isolation: &str) {
    let p = Podman::new();
    let o = run_rm_default_policy(&p, isolation, &[], &["grep", "CapEff", "/proc/self/status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("0000000000000000"),
        "baseline left capabilities: {}",
        stdout(&o)
    );
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        "b".into(),
        "--network".into(),
        "none".into(),
    ];
    args.extend(Podman::default_policy_opts(isolation));
    args.extend([IMAGE.to_string(), "sleep".into(), "600".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    p.ok(&refs);
    let e = p.podman(&["exec", "b", "true"]);
    assert!(!e.status.success(), "exec ran under baseline");
    assert!(
        stderr(&e).contains("does not allow exec"),
        "podman said: {}",
        stderr(&e)
    );
    p.ok(&["rm", "-f", "-t", "0", "b"]);
}

macro_rules! sandbox_tests {
    ($($name:ident => $case:ident,)*) => {$(
        #[test]
        fn $name() {
            if ready(stringify!($name), &["podman", "conmon", "tmux", "curl"]) {
                $case(SANDBOX);
            }
        }
    )*};
}

sandbox_tests! {
    sandbox_run_rm_echo_and_exit_status => echo_and_exit_status,
    sandbox_detached_logs_exec_stop_rm => detached_lifecycle,
    sandbox_interactive_terminal_in_tmux => interactive_terminal,
    sandbox_volume_written_inside_read_on_host => volume,
    sandbox_published_port_serves_httpd_to_curl => published_port,
    sandbox_read_only_root => read_only_root,
    sandbox_user_1000 => user,
    sandbox_cap_drop_all => cap_drop_all,
    sandbox_pids_limit => pids_limit,
    sandbox_memory_limit => memory_limit,
    sandbox_seccomp_profile_denies_mkdir => seccomp_profile,
    sandbox_privileged_refused_by_default_policy => privileged_refused,
    sandbox_default_policy_narrows_caps_and_refuses_exec => default_policy_narrows,
}

use moat_testkit::host as vmhost;

/// Whether the VM tests can run (root, the clients, QEMU, a built guest
/// kernel); prints why not. Builds the agent when no build of it exists.
fn vm_ready(test: &str) -> bool {
    clients::vm_ready(test, &["podman", "conmon", "tmux", "curl"])
}

const VM: &str = "vm";

/// A VM container's root is its own disk: what it writes stays out of
/// podman's overlay; a volume (`-v DIR:/data`) reaches the guest through
/// its own virtiofsd, and what the guest writes there is on the host.
fn vm_disk_and_volume(isolation: &str) {
    let p = Podman::new();
    let id = run_d(
        &p,
        isolation,
        "w",
        &NO_NET,
        &[
            "sh",
            "-c",
            "echo data > /written; cat /etc/hostname; sleep 600",
        ],
    );
    let merged = wait_until(Duration::from_secs(30), || {
        let m = inspect(&p, "w", "{{.GraphDriver.Data.MergedDir}}");
        p.ok(&["logs", "w"]).lines().next().map(|_| m)
    })
    .expect("no output from the VM container");
    // podman's /etc/hostname (a bind-mounted file) reached the guest.
    assert_eq!(p.ok(&["logs", "w"]).trim(), &id[..12]);
    assert!(
        !std::path::Path::new(&merged).join("written").exists(),
        "the guest's write reached podman's overlay {merged}"
    );
    let o = p.podman(&["exec", "w", "cat", "/written"]);
    assert_eq!(ok(&o, "exec cat"), "data\n");
    p.ok(&["rm", "-f", "w"]);
    let host = p.dir.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    let v = format!("{}:/data", host.display());
    let o = run_rm(
        &p,
        isolation,
        &["-v", &v],
        &[
            "sh",
            "-c",
            "echo from-vm > /data/f; grep -c ' /data virtiofs' /proc/mounts",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1\n");
    assert_eq!(
        std::fs::read_to_string(host.join("f")).unwrap(),
        "from-vm\n"
    );
}

macro_rules! vm_tests {
    ($($name:ident => $case:ident,)*) => {$(
        #[test]
        fn $name() {
            if vm_ready(stringify!($name)) {
                let _lock = vmhost::vm_lock();
                $case(VM);
                vmhost::assert_nothing_left(std::path::Path::new("/nonexistent"));
            }
        }
    )*};
}

vm_tests! {
    vm_run_rm_echo_and_exit_status => echo_and_exit_status,
    vm_detached_logs_exec_stop_rm => detached_lifecycle,
    vm_read_only_root => read_only_root,
    vm_interactive_terminal_in_tmux => interactive_terminal,
    vm_seccomp_profile_denies_mkdir => seccomp_profile,
    vm_user_1000 => user,
    vm_pids_limit => pids_limit,
    vm_memory_limit => memory_limit,
    vm_disk_private_and_volume_through_virtiofsd => vm_disk_and_volume,
}
