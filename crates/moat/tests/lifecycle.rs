//! Containers that outlive the command (issue 13): the monitor of a
//! detached sandbox container, its logs and control socket, podman's
//! lifecycle commands, `moat exec`, and the faults: `kill -9` of the CLI
//! or of the monitor, concurrent stop and rm, a reboot, a full disk, and
//! fifty containers at once.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{alive, can_sandbox, stderr, stdout, wait_for, Env};

/// `moat ARGS` in `env`, waited for.
fn moat(env: &Env, args: &[&str]) -> Output {
    env.moat(args).output().unwrap()
}

/// `moat run -d` of `cmd` under `policy` in the busybox rootfs; returns the ID.
fn run_d(env: &Env, name: &str, policy: &str, cmd: &[&str]) -> String {
    let root = env.rootfs.to_str().unwrap().to_string();
    let mut args = vec![
        "run",
        "-d",
        "-q",
        "--isolation",
        "sandbox",
        "--policy",
        policy,
        "--name",
        name,
        "--rootfs",
        &root,
    ];
    args.extend(cmd);
    let id = env.ok(&args).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    id
}

fn ps_all(env: &Env) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["ps", "-a", "--format", "json"])).unwrap();
    v.as_array().unwrap().clone()
}

/// No cgroup directory of container `id` is left on the host.
fn no_cgroups(id: &str) -> bool {
    let out = Command::new("find")
        .args([
            "/sys/fs/cgroup",
            "-maxdepth",
            "4",
            "-name",
            &format!("*{}*", &id[..16]),
        ])
        .output()
        .unwrap();
    stdout(&out).trim().is_empty()
}

/// A policy that allows `moat exec`.
fn exec_policy(env: &Env) -> String {
    let p = env.dir.path().join("exec.yaml");
    std::fs::write(
        &p,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: exec-ok\nspec:\n  extends: baseline\n  exec: true\n",
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn a_detached_container_lives_logs_stops_starts_and_is_removed() {
    if !can_sandbox("a_detached_container_lives_logs_stops_starts_and_is_removed") {
        return;
    }
    let env = Env::new();
    let id = run_d(
        &env,
        "svc",
        "baseline",
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 3' TERM; echo hello; echo oops >&2; while true; do sleep 0.1; done",
        ],
    );
    // The CLI has returned; the container runs under its monitor.
    let c = env.inspect("svc");
    assert_eq!(c["State"]["Status"], "running", "{c}");
    let monitor = c["State"]["MonitorPid"].as_i64().unwrap();
    let pid = c["State"]["Pid"].as_i64().unwrap();
    assert!(alive(monitor) && alive(pid));
    assert!(env.ok(&["ps"]).contains("svc"));
    // DESIGN rule 9: the monitor runs with no capability but CAP_KILL, with
    // no_new_privs and its own seccomp filter.
    let st = std::fs::read_to_string(format!("/proc/{monitor}/status")).unwrap();
    for want in [
        "CapEff:\t0000000000000020",
        "CapPrm:\t0000000000000020",
        "CapBnd:\t0000000000000020",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(st.contains(want), "{want} in {st}");
    }
    // Logs: both streams, as JSON lines in the container's directory.
    wait_for("the logs", 20, || {
        let o = moat(&env, &["logs", "svc"]);
        stdout(&o) == "hello\n" && stderr(&o) == "oops\n"
    });
    let log = env
        .state_root()
        .join("containers")
        .join(&id)
        .join("ctr.log");
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first}");
    assert!(["stdout", "stderr"].contains(&first["stream"].as_str().unwrap()));
    assert_eq!(std::fs::metadata(&log).unwrap().mode() & 0o777, 0o600);
    // The control socket: 0600 in a 0700 directory.
    let sock = env
        .state_root()
        .join("run/containers")
        .join(&id)
        .join("monitor.sock");
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(sock.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );

    // Bad input gets exact errors.
    let o = moat(&env, &["start", "svc"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("container svc is already running"),
        "{}",
        stderr(&o)
    );
    let o = moat(&env, &["rm", "svc"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("container svc is running: stop it first (moat stop svc), or remove it anyway (moat rm -f svc)"),
        "{}",
        stderr(&o)
    );
    let root = env.rootfs.to_str().unwrap().to_string();
    let o = moat(
        &env,
        &[
            "run",
            "-d",
            "--isolation",
            "sandbox",
            "--name",
            "svc",
            "--rootfs",
            &root,
            "true",
        ],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("container name \"svc\" is already in use"),
        "{}",
        stderr(&o)
    );
    for cmd in ["stop", "start", "rm", "wait", "logs", "inspect", "exec"] {
        let mut args = vec![cmd, "nosuch"];
        if cmd == "exec" {
            args.push("true");
        }
        let o = moat(&env, &args);
        assert!(!o.status.success(), "{cmd}");
        assert!(
            stderr(&o).contains("no container named \"nosuch\""),
            "{cmd}: {}",
            stderr(&o)
        );
    }

    // stop: SIGTERM reaches the workload (its trap runs), the exit is kept.
    assert_eq!(env.ok(&["stop", "svc"]).trim(), "svc");
    assert!(!alive(pid));
    wait_for("the monitor to exit", 10, || !alive(monitor));
    let c = env.inspect("svc");
    assert_eq!(c["State"]["Status"], "stopped", "{c}");
    assert_eq!(c["State"]["ExitCode"], 3, "{c}");
    assert_eq!(env.ok(&["wait", "svc"]).trim(), "3");
    assert!(env.ok(&["logs", "svc"]).contains("bye"));
    assert!(no_cgroups(&id));
    let all = ps_all(&env);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["exit_code"], 3);
    assert!(!env.ok(&["ps"]).contains("svc"));
    let o = moat(&env, &["exec", "svc", "true"]);
    assert!(
        stderr(&o).contains("container svc is not running (Exited (3))"),
        "{}",
        stderr(&o)
    );

    // start again (its log goes on), restart, then rm -f.
    assert_eq!(env.ok(&["start", "svc"]).trim(), "svc");
    assert_eq!(env.inspect("svc")["State"]["Status"], "running");
    assert_eq!(env.ok(&["restart", "-t", "5", "svc"]).trim(), "svc");
    let c = env.inspect("svc");
    assert_eq!(c["State"]["Status"], "running");
    let pid2 = c["State"]["Pid"].as_i64().unwrap();
    assert_eq!(env.ok(&["rm", "-f", "svc"]).trim(), "svc");
    assert!(!alive(pid2));
    assert!(ps_all(&env).is_empty());
    assert!(!env.state_root().join("containers").join(&id).exists());
    assert!(no_cgroups(&id));
}

#[test]
fn foreground_containers_are_kept_stopped_unless_rm() {
    if !can_sandbox("foreground_containers_are_kept_stopped_unless_rm") {
        return;
    }
    let env = Env::new();
    let o = env.run(&["--name", "fg", "--", "sh", "-c", "exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let all = ps_all(&env);
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0]["status"].as_str(), all[0]["exit_code"].as_i64()),
        (Some("stopped"), Some(4))
    );
    // The name stays taken until moat rm, as in podman.
    let o = env.run(&["--name", "fg", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("moat rm -f fg"), "{}", stderr(&o));
    env.ok(&["rm", "fg"]);
    let o = env.run(&["--rm", "--name", "fg", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ps_all(&env).is_empty());
    // create + start -a: the output, then the workload's status.
    let root = env.rootfs.to_str().unwrap().to_string();
    let id = env.ok(&[
        "create",
        "--isolation",
        "sandbox",
        "--name",
        "job",
        "--rootfs",
        &root,
        "sh",
        "-c",
        "echo from-job; exit 5",
    ]);
    assert_eq!(id.trim().len(), 64);
    assert_eq!(env.inspect("job")["State"]["Status"], "created");
    let o = moat(&env, &["start", "-a", "job"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(stdout(&o), "from-job\n");
    // start of a missing command: the exit code says so, the record too.
    env.ok(&[
        "create",
        "--isolation",
        "sandbox",
        "--name",
        "bad",
        "--rootfs",
        &root,
        "nosuch",
    ]);
    let o = moat(&env, &["start", "bad"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("\"nosuch\" not found"),
        "{}",
        stderr(&o)
    );
    assert_eq!(env.inspect("bad")["State"]["Status"], "stopped");
}

#[test]
fn exec_is_never_weaker_than_the_first_process() {
    if !can_sandbox("exec_is_never_weaker_than_the_first_process") {
        return;
    }
    let env = Env::new();
    run_d(&env, "denied", "baseline", &["sleep", "1000"]);
    let o = moat(&env, &["exec", "denied", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o)
            .contains("policy baseline of container denied does not allow exec (`exec: false`"),
        "{}",
        stderr(&o)
    );
    let policy = exec_policy(&env);
    run_d(&env, "x", &policy, &["sleep", "1000"]);
    let status = |pid: &str| {
        env.ok(&["exec", "x", "sh", "-c", &format!("grep -E '^(Uid|Gid|CapEff|CapBnd|CapPrm|NoNewPrivs|Seccomp):' /proc/{pid}/status; cat /proc/{pid}/uid_map /proc/{pid}/cgroup; for n in user mnt pid net ipc uts cgroup; do readlink /proc/{pid}/ns/$n; done")])
    };
    // The exec'd shell reads its own status and PID 1's: the same.
    let mine = status("self");
    let first = status("1");
    assert_eq!(mine, first);
    assert!(
        mine.contains("NoNewPrivs:\t1") && mine.contains("Seccomp:\t2"),
        "{mine}"
    );
    assert!(mine.contains("CapEff:\t0000000000000000"), "{mine}");
    // No descriptor of the caller reaches it (fd 7 is open in moat's caller).
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7</etc/hostname; exec {} --root {} exec x ls /proc/self/fd",
            env!("CARGO_BIN_EXE_moat"),
            env.state_root().display()
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    // -u, -w, -e, exit codes, stdin with -i.
    let o = moat(
        &env,
        &[
            "exec",
            "-u",
            "1000:1000",
            "-w",
            "/tmp",
            "-e",
            "A=b",
            "x",
            "sh",
            "-c",
            "id -u; pwd; echo $A; exit 7",
        ],
    );
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(stdout(&o), "1000\n/tmp\nb\n");
    let o = moat(&env, &["exec", "x", "nosuch"]);
    assert_eq!(o.status.code(), Some(127));
    let o = moat(&env, &["exec", "-w", "/nonexistent", "x", "true"]);
    assert_eq!(o.status.code(), Some(125));
    // -t: a terminal of the container's own devpts (its name resolves
    // inside), owned by the exec's user, with TERM set; run under `script`
    // for a terminal of our own.
    let out = Command::new("script")
        .arg("-qec")
        .arg(format!(
            "{} --root {} exec -it -w /tmp -u 1000 x sh -c 'tty; stat -c %u:%g:%a $(tty); echo $TERM; exit 9'",
            env!("CARGO_BIN_EXE_moat"),
            env.state_root().display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // (`script` echoes a stray NUL from its own terminal as `^@`.)
    let text = stdout(&out).replace('\r', "").replace("^@", "");
    assert!(text.contains("/dev/pts/0\n1000:5:620\nxterm\n"), "{text:?}");
    assert_eq!(out.status.code(), Some(9), "{text:?}");
    let mut child = env
        .moat(&["exec", "-i", "x", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"piped\n").unwrap();
    drop(child.stdin.take());
    assert_eq!(stdout(&child.wait_with_output().unwrap()), "piped\n");
    env.ok(&["rm", "-f", "x", "denied"]);
}

#[test]
fn kill_9_of_the_monitor_ends_the_container_and_the_record_says_so() {
    if !can_sandbox("kill_9_of_the_monitor_ends_the_container_and_the_record_says_so") {
        return;
    }
    let env = Env::new();
    let id = run_d(&env, "m", "baseline", &["sleep", "1000"]);
    let c = env.inspect("m");
    let (monitor, pid) = (
        c["State"]["MonitorPid"].as_i64().unwrap(),
        c["State"]["Pid"].as_i64().unwrap(),
    );
    unsafe_kill(monitor, 9);
    wait_for("the workload to die with its monitor", 20, || !alive(pid));
    let c = env.inspect("m");
    assert_eq!(c["State"]["Status"], "stopped", "{c}");
    assert!(
        c["State"]["Error"]
            .as_str()
            .unwrap()
            .contains("its monitor died"),
        "{c}"
    );
    assert!(no_cgroups(&id));
    // kill -9 of a CLI attached to a container never harms it.
    run_d(&env, "a", "baseline", &["sleep", "1000"]);
    env.ok(&["stop", "-t", "0", "a"]);
    let mut attached = env
        .moat(&["start", "-a", "a"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a to run", 20, || {
        env.inspect("a")["State"]["Status"] == "running"
    });
    attached.kill().unwrap();
    attached.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.inspect("a")["State"]["Status"], "running");
    env.ok(&["rm", "-f", "a", "m"]);
}

fn unsafe_kill(pid: i64, sig: i32) {
    assert!(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
}

#[test]
fn kill_9_of_the_cli_during_run_d_leaves_no_half_created_container() {
    if !can_sandbox("kill_9_of_the_cli_during_run_d_leaves_no_half_created_container") {
        return;
    }
    let env = Env::new();
    let root = env.rootfs.to_str().unwrap().to_string();
    // Killed at different points of its work: before, during and after
    // the record is written and the monitor starts.
    for (i, ms) in [0u64, 20, 60, 120, 250, 500].iter().enumerate() {
        let name = format!("k{i}");
        let mut c = env
            .moat(&[
                "run",
                "-d",
                "-q",
                "--isolation",
                "sandbox",
                "--policy",
                "baseline",
                "--name",
                &name,
                "--rootfs",
                &root,
                "sleep",
                "1000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*ms));
        let _ = c.kill();
        c.wait().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    // Every container listed is a whole one: running under its monitor
    // (the CLI died after starting it) and fully controllable.
    for c in ps_all(&env) {
        let name = c["name"].as_str().unwrap();
        assert_eq!(c["status"], "running", "half-created: {c}");
        assert!(alive(c["monitor_pid"].as_i64().unwrap()), "{c}");
        env.ok(&["rm", "-f", name]);
    }
    assert!(ps_all(&env).is_empty());
}

#[test]
fn concurrent_stop_and_rm_serialise() {
    if !can_sandbox("concurrent_stop_and_rm_serialise") {
        return;
    }
    let env = Env::new();
    for round in 0..3 {
        let name = format!("c{round}");
        let id = run_d(&env, &name, "baseline", &["sleep", "1000"]);
        let stop = env
            .moat(&["stop", "-t", "1", &name])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rm = env
            .moat(&["rm", "-f", &name])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (stop, rm) = (
            stop.wait_with_output().unwrap(),
            rm.wait_with_output().unwrap(),
        );
        assert!(rm.status.success(), "rm: {}", stderr(&rm));
        // stop either stopped it or found it already gone: never a
        // corrupt state.
        assert!(
            stop.status.success()
                || stderr(&stop).contains(&format!("no container named \"{name}\"")),
            "stop: {}",
            stderr(&stop)
        );
        assert!(ps_all(&env).is_empty());
        assert!(no_cgroups(&id));
    }
}

#[test]
fn a_reboot_leaves_records_of_stopped_containers_and_nothing_half_started() {
    if !can_sandbox("a_reboot_leaves_records_of_stopped_containers_and_nothing_half_started") {
        return;
    }
    let env = Env::new();
    let id = run_d(&env, "r", "baseline", &["sleep", "1000"]);
    env.ok(&["stop", "-t", "0", "r"]);
    // Make the stopped record look like one of a container that was
    // running when the host went down: another boot ID, and a monitor pid
    // that exists now (pid 1, with its real start time) — only the boot ID
    // tells them apart.
    let path = env
        .state_root()
        .join("containers")
        .join(&id)
        .join("state.json");
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let init = std::fs::read_to_string("/proc/1/stat").unwrap();
    let start: u64 = init[init.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    rec["status"] = "running".into();
    rec["exit_code"] = serde_json::Value::Null;
    rec["monitor_pid"] = 1.into();
    rec["monitor_start_time"] = start.into();
    rec["boot_id"] = "00000000-0000-0000-0000-000000000000".into();
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
    // The run root (a tmpfs) is empty after a reboot.
    let _ = std::fs::remove_dir_all(env.state_root().join("run"));
    let all = ps_all(&env);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["status"], "stopped", "{}", all[0]);
    assert!(
        all[0]["exit_error"].as_str().unwrap().contains("rebooted"),
        "{}",
        all[0]
    );
    assert!(!env.ok(&["ps"]).contains(" r "));
    // It can be started again and removed.
    env.ok(&["start", "r"]);
    env.ok(&["rm", "-f", "r"]);
}

#[test]
fn a_full_disk_stops_the_logs_not_the_container() {
    if !can_sandbox("a_full_disk_stops_the_logs_not_the_container") {
        return;
    }
    let env = Env::new();
    // The state root on a 2 MiB tmpfs; the rootfs stays outside it.
    let small = env.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(m.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Unmount(small.clone());
    let root = env.rootfs.to_str().unwrap().to_string();
    let moat = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_moat"))
            .arg("--root")
            .arg(&small)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = moat(&[
        "run", "-d", "-q", "--isolation", "sandbox", "--policy", "baseline", "--name", "noisy", "--rootfs", &root,
        "sh", "-c", "i=0; while [ $i -lt 40000 ]; do echo line $i of some output; i=$((i+1)); done; echo done >&2; exit 0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = moat(&["wait", "noisy"]);
    assert_eq!(stdout(&o).trim(), "0", "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&moat(&["inspect", "noisy"]).stdout).unwrap();
    let notice = v[0]["State"]["LogNotice"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        notice.contains("logging stopped") && notice.contains("nearly full"),
        "{v}"
    );
    assert_eq!(v[0]["State"]["ExitCode"], 0);
    moat(&["rm", "noisy"]);
}

#[test]
fn fifty_detached_containers_start_at_once_and_are_removed_cleanly() {
    if !can_sandbox("fifty_detached_containers_start_at_once_and_are_removed_cleanly") {
        return;
    }
    let env = Env::new();
    let root = env.rootfs.to_str().unwrap().to_string();
    let children: Vec<_> = (0..50)
        .map(|i| {
            env.moat(&[
                "run",
                "-d",
                "-q",
                "--isolation",
                "sandbox",
                "--policy",
                "baseline",
                "--name",
                &format!("n{i}"),
                "--rootfs",
                &root,
                "sleep",
                "1000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        ids.insert(stdout(&o).trim().to_string());
    }
    assert_eq!(ids.len(), 50);
    let all = ps_all(&env);
    assert_eq!(all.len(), 50);
    let names: std::collections::BTreeSet<_> = all
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 50);
    assert!(all.iter().all(|c| c["status"] == "running"));
    let mut rm = vec!["rm", "-f"];
    let names: Vec<String> = names.into_iter().collect();
    rm.extend(names.iter().map(String::as_str));
    env.ok(&rm);
    assert!(ps_all(&env).is_empty());
    for id in &ids {
        assert!(no_cgroups(id), "{id}");
    }
}

#[test]
fn a_held_create_has_its_process_before_start() {
    if !can_sandbox("a_held_create_has_its_process_before_start") {
        return;
    }
    let env = Env::new();
    let root = env.rootfs.to_str().unwrap().to_string();
    // runc's create: the process exists, in its namespaces and cgroups,
    // and the workload has not run.
    let id = env.ok(&[
        "create",
        "--held",
        "--isolation",
        "sandbox",
        "--policy",
        "baseline",
        "--name",
        "h",
        "--rootfs",
        &root,
        "sh",
        "-c",
        "echo ran; exit 4",
    ]);
    let c = env.inspect("h");
    assert_eq!(c["State"]["Status"], "created", "{c}");
    let pid = c["State"]["Pid"].as_i64().unwrap();
    assert!(pid > 0 && alive(pid), "{c}");
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).unwrap();
    assert_ne!(ns(&pid.to_string()), ns("self"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.ok(&["logs", "h"]), "");
    assert!(!no_cgroups(id.trim()));
    // start releases it: the workload runs, its status is kept.
    assert_eq!(env.ok(&["start", "h"]).trim(), "h");
    assert_eq!(env.ok(&["wait", "h"]).trim(), "4");
    assert_eq!(env.ok(&["logs", "h"]), "ran\n");
    env.ok(&["rm", "h"]);
    assert!(no_cgroups(id.trim()));
}
