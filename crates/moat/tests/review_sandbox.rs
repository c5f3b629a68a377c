//! Attack tests for the sandbox items of the outside security reviews
//! (issues 11 and 23) and the sandbox's share of issue 12. Each test does
//! what the review did, as a hostile workload or a planted record, and
//! asserts that it now fails with the host unchanged.

#[path = "sandbox_common/mod.rs"]
mod sandbox_common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use sandbox_common::*;

/// The static helper of these tests (`tests/helper/sandbox_review_helper.rs`),
/// compiled once per source content, as the escape helper is.
fn helper() -> PathBuf {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let src =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helper/sandbox_review_helper.rs");
            let text = std::fs::read(&src).unwrap();
            let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let out = out_dir.join(format!("sandbox-review-helper-{hash:016x}"));
            if !out.exists() {
                let tmp = out_dir.join(format!(
                    "sandbox-review-helper-{hash:016x}.{}",
                    std::process::id()
                ));
                let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
                let st = Command::new(rustc)
                    .args([
                        "--edition",
                        "2021",
                        "-O",
                        "-C",
                        "target-feature=+crt-static",
                        "-o",
                    ])
                    .arg(&tmp)
                    .arg(&src)
                    .status()
                    .expect("running rustc for the sandbox review helper");
                assert!(st.success(), "building the sandbox review helper failed");
                std::fs::rename(&tmp, &out).unwrap();
            }
            out
        })
        .clone()
}

/// Installs the helper as `/bin/helper` in the env's rootfs.
fn with_helper(env: &Env) {
    let dst = env.rootfs.join("bin/helper");
    std::fs::copy(helper(), &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A policy file in the env's directory: `baseline` with the given spec
/// lines added.
fn policy(env: &Env, name: &str, spec: &str) -> PathBuf {
    let p = env.dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!(
            "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  extends: baseline\n{spec}"
        ),
    )
    .unwrap();
    p
}

fn moat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_moat")
}

/// Issue 11 item 2: under `script` (a real pty) with stdin from /dev/null,
/// a workload opens /dev/tty, tries to become the foreground process group
/// and TIOCSTI-injects a command into the host shell, under a policy that
/// does not deny TIOCSTI. The container is its own session without a
/// terminal: no /dev/tty, no terminal on stdio, nothing injected, and the
/// host shell runs nothing.
#[test]
fn workload_cannot_reach_the_host_terminal() {
    if !can_sandbox("workload_cannot_reach_the_host_terminal") {
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        println!("SKIP: workload_cannot_reach_the_host_terminal: script (util-linux) is missing");
        return;
    }
    let env = Env::new();
    with_helper(&env);
    let pol = policy(
        &env,
        "tiocsti-not-denied",
        "  syscalls:\n    conditions:\n      ioctl:\n        deny: []\n",
    );
    let marker = env.dir.path().join("injected-command-ran");
    let moat = format!(
        "{} --root {} run --isolation sandbox --policy {} --rootfs {} /bin/helper tty-attack 'touch {}'",
        moat_bin(),
        env.state_root().display(),
        pol.display(),
        env.rootfs.display(),
        marker.display()
    );
    // The "host shell": runs moat on the terminal, then reads lines from
    // that terminal and runs them, as an interactive shell would.
    let shell = format!(
        "{moat}; echo moat-exit=$?; for i in 1 2 3; do read -t 1 line && [ -n \"$line\" ] && {{ echo HOST-RAN:$line; sh -c \"$line\"; }}; done; true"
    );
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!("bash -c '{}'", shell.replace('\'', "'\\''")))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let o = stdout(&out).replace('\r', "");
    assert!(o.contains("moat-exit=0"), "{o}");
    assert!(o.contains("session: own\n"), "{o}");
    assert!(o.contains("open /dev/tty: ENOENT\n"), "{o}");
    for fd in 0..3 {
        assert!(o.contains(&format!("fd {fd}: not a terminal\n")), "{o}");
    }
    assert!(!o.contains("TIOCSTI"), "no terminal to inject into:\n{o}");
    assert!(
        !o.contains("HOST-RAN"),
        "the host shell ran injected input:\n{o}"
    );
    assert!(!marker.exists(), "the injected command ran on the host");
}

/// The relay keeps stdout and stderr apart and complete, and `-t` still
/// gives the container its own terminal as `/dev/tty` and `/dev/console`.
#[test]
fn stdio_on_a_terminal_is_relayed_and_tty_is_the_containers_own() {
    if !can_sandbox("stdio_on_a_terminal_is_relayed_and_tty_is_the_containers_own") {
        return;
    }
    let env = Env::new();
    let root = env.rootfs.display().to_string();
    let run = |args: &str| {
        let cmd = format!(
            "{} --root {} run --isolation sandbox --rootfs {root} {args}",
            moat_bin(),
            env.state_root().display()
        );
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        stdout(&out).replace('\r', "")
    };
    let o = run("sh -c 'seq 1 20000 | tail -n 1; echo to-stderr >&2; test -t 1 || echo no-tty'");
    assert_eq!(o, "20000\nto-stderr\nno-tty\n");
    // -i without -t: host stdin (a terminal) is relayed through a pipe,
    // and its end reaches the workload as EOF.
    let o = run("-i sh -c 'test -t 0 || echo stdin-not-a-terminal; cat; echo end'");
    assert_eq!(o, "stdin-not-a-terminal\nend\n");
    let o =
        run("-t sh -c 'test -c /dev/tty && echo hi > /dev/tty && test -t 0 && ls /dev/console'");
    assert_eq!(o, "hi\n/dev/console\n");
}

/// Start time (field 22 of /proc/PID/stat) of a host process.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(19).unwrap().parse().unwrap()
}

fn alive(child: &mut std::process::Child) -> bool {
    child.try_wait().unwrap().is_none()
}

/// Issue 23 item 2: planted records make `moat ps` (stale cleanup) delete
/// an unrelated directory, kill an unrelated process and kill through a
/// cgroup path outside moat's subtree. After `moat ps` all three survive.
#[test]
fn planted_records_cannot_steer_cleanup() {
    if !can_sandbox("planted_records_cannot_steer_cleanup") {
        return;
    }
    let env = Env::new();
    // Create the run root as moat does (a first `moat ps`).
    let out = env.moat(&["ps"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let containers = env.state_root().join("containers");

    let victim_dir = env.dir.path().join("victim-dir");
    std::fs::create_dir_all(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("precious"), b"keep me").unwrap();
    let mut victim = Command::new("sleep").arg("600").spawn().unwrap();
    let mut in_cgroup = Command::new("sleep").arg("600").spawn().unwrap();
    // A cgroup beside moat's subtree holding a process.
    let memory = Path::new("/sys/fs/cgroup/memory");
    let hierarchy = if memory.join("cgroup.procs").exists() {
        memory.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    std::fs::create_dir_all(hierarchy.join("moat")).unwrap();
    let victim_cg = hierarchy.join(format!("moat-review-victim-{}", std::process::id()));
    std::fs::create_dir_all(&victim_cg).unwrap();
    std::fs::write(victim_cg.join("cgroup.procs"), in_cgroup.id().to_string()).unwrap();

    let dead = i32::MAX - 7;
    let record = |id: &str, pid: u32, cgroup: &Path| {
        serde_json::json!({
            "id": id, "name": format!("planted{}", pid), "image_id": format!("sha256:{}", "0".repeat(64)), "pid": pid,
            "isolation": "sandbox", "created": "2026-01-01T00:00:00Z", "command": ["x"],
            "pid_start_time": start_time(pid), "supervisor_pid": dead,
            "supervisor_start_time": 1, "cgroups": [cgroup],
        })
    };
    let sneaky_cg = hierarchy
        .join("moat/..")
        .join(victim_cg.file_name().unwrap());
    let plant = |dir: &str, json: serde_json::Value| {
        let d = containers.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(d.join("state.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    };
    // The review's record: `id` is an absolute path.
    plant(
        &"1".repeat(64),
        record(victim_dir.to_str().unwrap(), victim.id(), &sneaky_cg),
    );
    // A well-formed record of a dead container naming another process and
    // a cgroup outside moat's subtree.
    let id2 = "2".repeat(64);
    plant(&id2, record(&id2, in_cgroup.id(), &sneaky_cg));

    let out = env.moat(&["ps"]).output().unwrap();
    let survived = (
        victim_dir.join("precious").exists(),
        alive(&mut victim),
        alive(&mut in_cgroup),
        victim_cg.exists(),
    );
    let _ = victim.kill();
    let _ = in_cgroup.kill();
    let _ = victim.wait();
    let _ = in_cgroup.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::remove_dir(&victim_cg).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        survived,
        (true, true, true, true),
        "(directory, process, process in the cgroup, cgroup) after moat ps"
    );
    // The dead container's own record now says it stopped (kept until
    // `moat rm`); the one whose id is not its directory's name is not
    // trusted and left alone.
    let settled: serde_json::Value =
        serde_json::from_slice(&std::fs::read(containers.join(&id2).join("state.json")).unwrap())
            .unwrap();
    assert_eq!(settled["status"], "stopped", "{settled}");
    assert!(containers.join("1".repeat(64)).exists());
}

/// Kills a test cgroup's processes however the test ends.
struct KillGroup(PathBuf);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if self.0.exists() {
            moat_sandbox::cgroup::kill_all(std::slice::from_ref(&self.0));
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

/// Issue 11 item 12: leftovers are killed as a group, not by pids read
/// from `cgroup.procs`: `cgroup.kill` (v2), freeze-kill-thaw (v1
/// freezer), or pidfds re-checked for membership. Each way is tried on a
/// cgroup holding a shell that keeps forking; afterwards the group is
/// empty and removable, and a process outside it is untouched.
#[test]
fn leftover_processes_are_killed_as_a_group() {
    if !can_sandbox("leftover_processes_are_killed_as_a_group") {
        return;
    }
    let mut bystander = Command::new("sleep").arg("600").spawn().unwrap();
    let candidates = [
        ("cgroup.kill", "/sys/fs/cgroup/unified", "cgroup.kill"),
        ("cgroup.kill", "/sys/fs/cgroup", "cgroup.kill"),
        ("freezer", "/sys/fs/cgroup/freezer", "freezer.state"),
        ("pidfd", "/sys/fs/cgroup/pids", "pids.max"),
    ];
    let mut tried = Vec::new();
    for (way, hierarchy, marker_file) in candidates {
        let h = Path::new(hierarchy);
        if !h.join("cgroup.procs").exists() || tried.contains(&way) {
            continue;
        }
        let id = format!(
            "{:016x}",
            std::process::id() as u64 * 7919 + tried.len() as u64
        );
        let dir = h.join("moat").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        if !dir.join(marker_file).exists() {
            let _ = std::fs::remove_dir(&dir);
            continue;
        }
        tried.push(way);
        // The shell joins the group before its first fork.
        let mut bomb = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs || exit 1; while :; do (sleep 600 &); sleep 0.01; done",
                dir.display()
            ))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let _guard = KillGroup(dir.clone());
        std::thread::sleep(std::time::Duration::from_millis(300));
        let procs = |d: &Path| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert!(procs(&dir) > 3, "{way}: the bomb did not fork");
        let real = moat_sandbox::cgroup::confined(&dir).expect("a moat cgroup is confined");
        // Only that one kind of directory, so that this way is the one used.
        moat_sandbox::cgroup::kill_all(std::slice::from_ref(&real));
        let left = procs(&dir);
        let _ = bomb.wait();
        let removed = std::fs::remove_dir(&dir).is_ok();
        assert_eq!(
            (left, removed),
            (0, true),
            "{way}: processes left in {dir:?}"
        );
    }
    assert!(!tried.is_empty(), "no cgroup hierarchy to test on");
    assert!(
        alive(&mut bystander),
        "a process outside the group was killed"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    // Paths outside moat's subtree are never confined.
    for p in [
        "/sys/fs/cgroup/memory/moat/../x",
        "/tmp",
        "/sys/fs/cgroup/memory/moat",
    ] {
        assert_eq!(moat_sandbox::cgroup::confined(Path::new(p)), None, "{p}");
    }
    println!("tried: {tried:?}");
}

/// Runs `/bin/helper <hog> <arg>` in a container named `name` until it
/// prints `holding`, then the host-side `probe` as host root, then kills
/// the container. Returns (container's report, host's report).
fn hog_then_probe(hog: &str, probe: &str, arg: &str) -> (String, String) {
    use std::io::{BufRead, BufReader};
    let env = Env::new();
    with_helper(&env);
    let name = format!("hog-{}", std::process::id());
    let mut c = env.moat(&[
        "run",
        "--isolation",
        "sandbox",
        // The counters, not `auto`'s narrowing, are under test.
        "--policy",
        "baseline",
        "--name",
        &name,
        "--rootfs",
        env.rootfs.to_str().unwrap(),
        "/bin/helper",
        hog,
        arg,
    ]);
    let mut child = c.stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut report = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line == "holding" {
            break;
        }
        report.push_str(&line);
    }
    let host = Command::new(helper()).args([probe, arg]).output().unwrap();
    let kill = env.moat(&["kill", &name, "KILL"]).output().unwrap();
    let _ = child.wait();
    assert!(kill.status.success(), "{}", stderr(&kill));
    (report, stdout(&host).trim().to_string())
}

/// The number in "<what>: N (then ...)".
fn held(report: &str) -> u64 {
    report
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report:?}"))
}

/// Issue 11 item 5: a container holding every inotify instance it can get
/// (128 per user by default) does not stop host root's `inotify_init`
/// (`tail -f`, `inotifywait`): the container's user namespace is owned by
/// its own unprivileged uid, which the kernel charges instead of root.
#[test]
fn inotify_instances_of_a_container_are_not_host_roots() {
    if !can_sandbox("inotify_instances_of_a_container_are_not_host_roots") {
        return;
    }
    let (inside, host) = hog_then_probe("inotify-hog", "inotify-probe", "");
    assert!(held(&inside) >= 100, "{inside}");
    assert!(inside.ends_with("(then EMFILE)"), "{inside}");
    assert!(host.starts_with("inotify_init1: ok"), "{inside} / {host}");
}

/// The same for POSIX message queue bytes (RLIMIT_MSGQUEUE, per user).
#[test]
fn message_queues_of_a_container_are_not_host_roots() {
    if !can_sandbox("message_queues_of_a_container_are_not_host_roots") {
        return;
    }
    let q = format!("moat-review-{}", std::process::id());
    let (inside, host) = hog_then_probe("mqueue-hog", "mqueue-probe", &q);
    assert!(held(&inside) >= 1, "{inside}");
    assert!(inside.ends_with("(then EMFILE)"), "{inside}");
    assert!(host.starts_with("mq_open: ok"), "{inside} / {host}");
}

/// The same for queued signals (RLIMIT_SIGPENDING, per user).
#[test]
fn pending_signals_of_a_container_are_not_host_roots() {
    if !can_sandbox("pending_signals_of_a_container_are_not_host_roots") {
        return;
    }
    let (inside, host) = hog_then_probe("sigqueue-hog", "sigqueue-probe", "");
    assert!(held(&inside) >= 1000, "{inside}");
    assert!(inside.ends_with("(then EAGAIN)"), "{inside}");
    assert_eq!(host, "pending signals queued: 1 (then limit of the helper)");
}

/// Issue 12 item 13: a workload killed by the container's memory limit
/// exits 137 and moat says why.
#[test]
fn memory_limit_kill_is_reported() {
    if !can_sandbox("memory_limit_kill_is_reported") {
        return;
    }
    let env = Env::new();
    let pol = policy(&env, "small-memory", "  resources:\n    memory: 32Mi\n");
    let out = env.run(&[
        "--policy",
        pol.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).ends_with(
            "moat: the workload was killed by the container's memory limit of 32 MiB (exit 137); raise resources.memory in the policy\n"
        ),
        "{}",
        stderr(&out)
    );
    // A workload that stays below the limit, or is killed otherwise, gets
    // no such line.
    let out = env.run(&[
        "--policy",
        pol.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "sh -c 'kill -9 $$'; exit $?",
    ]);
    assert_eq!(out.status.code(), Some(137));
    assert!(!stderr(&out).contains("memory limit"), "{}", stderr(&out));
}

/// Issue 12 items 2 and 9 (sandbox side): what a non-root workload finds
/// in /dev, /tmp and /run, checked against what runc creates: the
/// standard devices usable (mode 0666), /dev/full full, no /dev/tty
/// without -t, /tmp and /dev/shm 1777, /run 0755, /dev/mqueue 1777, and
/// with -t the console the workload's own (0620, group tty).
#[test]
fn non_root_workload_sees_runc_modes() {
    if !can_sandbox("non_root_workload_sees_runc_modes") {
        return;
    }
    let env = Env::new();
    let script = "set -e; echo x > /dev/null; head -c 4 /dev/zero | wc -c; \
        head -c 4 /dev/urandom | wc -c; \
        if echo x > /dev/full 2>/dev/null; then echo full-writable; else echo full-refuses; fi; \
        test -e /dev/tty && echo has-tty || echo no-tty; \
        echo t > /tmp/t && echo tmp-ok; echo s > /dev/shm/s && echo shm-ok; \
        stat -c '%n %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/pts/ptmx \
          /dev /dev/pts /dev/shm /dev/mqueue /tmp /run; id -u";
    let out = env.run(&["-u", "1000", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "4\n4\nfull-refuses\nno-tty\ntmp-ok\nshm-ok\n\
         /dev/null 666\n/dev/zero 666\n/dev/full 666\n/dev/random 666\n/dev/urandom 666\n/dev/pts/ptmx 666\n\
         /dev 755\n/dev/pts 755\n/dev/shm 1777\n/dev/mqueue 1777\n/tmp 1777\n/run 755\n1000\n"
    );
    let cmd = format!(
        "{} --root {} run -t -u 1000 --isolation sandbox --rootfs {} sh -c 'tty; stat -c \"%a %u %g\" /dev/console; echo ok > /dev/tty'",
        moat_bin(),
        env.state_root().display(),
        env.rootfs.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out).replace('\r', ""),
        "/dev/console\n620 1000 5\nok\n"
    );
}

/// Issue 11 item 2 under `moat profile record` (the recording run and the
/// `--verify` run): the same attack from a recorded workload, under
/// `script` with stdin from /dev/null, injects nothing into the host shell.
#[test]
fn recorded_workload_cannot_reach_the_host_terminal() {
    if !can_sandbox("recorded_workload_cannot_reach_the_host_terminal") {
        return;
    }
    if moat_profile::trace::ensure_tracefs().is_err() {
        println!(
            "SKIP: recorded_workload_cannot_reach_the_host_terminal: tracefs cannot be mounted"
        );
        return;
    }
    let env = Env::new();
    with_helper(&env);
    let marker = env.dir.path().join("injected-command-ran");
    let out_policy = env.dir.path().join("recorded.yaml");
    let moat = format!(
        "{} --root {} profile record --rootfs {} -o {} -- /bin/helper tty-attack 'touch {}'",
        moat_bin(),
        env.state_root().display(),
        env.rootfs.display(),
        out_policy.display(),
        marker.display()
    );
    let shell = format!(
        "{moat}; echo moat-exit=$?; for i in 1 2 3; do read -t 1 line && [ -n \"$line\" ] && {{ echo HOST-RAN:$line; sh -c \"$line\"; }}; done; true"
    );
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!("bash -c '{}'", shell.replace('\'', "'\\''")))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let o = stdout(&out).replace('\r', "");
    assert!(o.contains("moat-exit=0"), "{o}");
    assert!(o.contains("moat: verified: the workload exits 0"), "{o}");
    assert!(
        !o.contains("HOST-RAN"),
        "the host shell ran injected input:\n{o}"
    );
    assert!(!marker.exists(), "the injected command ran on the host");
}
