//! containerd 1.6 drives `containerd-shim-moat-v2` itself: `ctr run
//! --runtime io.containerd.moat.v2` with the shim config as the runtime
//! option ConfigPath (`--runtime-config-path`) and the isolation as the
//! annotation `moat.dev/isolation`. Each test starts a private containerd
//! (tests/common). Needs root and containerd; the VM variants also QEMU,
//! the guest kernel and the agent.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{code, stderr, stdout, wait_until, Containerd, Tmux, NAMESPACE};
use moat_testkit::containerd::exec_t_argv;

fn start(test: &str, isolation: &str) -> Option<Containerd> {
    let ok = if isolation == "vm" {
        common::vm_ready(test, &[])
    } else {
        common::ready(test, &[])
    };
    if !ok {
        return None;
    }
    let c = Containerd::start(false);
    c.import_busybox(NAMESPACE);
    Some(c)
}

fn run_to_completion(isolation: &str) {
    let Some(c) = start("run_to_completion", isolation) else {
        return;
    };
    let o = c.run(
        isolation,
        &["--rm"],
        "once",
        &["sh", "-c", "echo out-$((6*7)); echo err >&2; exit 3"],
    );
    assert_eq!(code(o.status), 3, "ctr run: {}\n{}", stderr(&o), c.log());
    assert_eq!(stdout(&o), "out-42\n");
    assert!(stderr(&o).contains("err"), "{}", stderr(&o));
    assert_eq!(
        c.ok(&["container", "ls", "-q"]),
        "",
        "--rm left the container"
    );
    // The shim exits once its last container is deleted.
    let gone = wait_until(Duration::from_secs(10), || {
        c.shims().is_empty().then_some(())
    });
    assert!(gone.is_some(), "shims left running: {:?}", c.shims());
    let left: Vec<_> = std::fs::read_dir(c.shim_root.path().join(NAMESPACE).join("oci"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        // `.vm`: moat-vm's records directory, shared by VM containers.
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        left.is_empty(),
        "moat-oci state left after delete: {left:?}"
    );
}

/// stdin through the FIFO and a pipe: `cat` sees EOF once ctr's stdin
/// ends (CloseIO).
fn stdin_and_close_io(isolation: &str) {
    let Some(c) = start("stdin_and_close_io", isolation) else {
        return;
    };
    let argv = c.run_argv(
        isolation,
        &["--rm"],
        "cat",
        &["sh", "-c", "cat; echo done-$?"],
    );
    let mut child = Command::new("ctr")
        .arg("-a")
        .arg(c.socket())
        .args(["-n", NAMESPACE])
        .args(&argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"line-one\nline-two\n").unwrap();
    drop(input);
    let waited = wait_until(Duration::from_secs(60), || child.try_wait().unwrap());
    if waited.is_none() {
        let _ = child.kill();
    }
    let o = child.wait_with_output().unwrap();
    assert!(waited.is_some(), "cat never saw EOF: {}", stdout(&o));
    assert_eq!(stdout(&o), "line-one\nline-two\ndone-0\n", "{}", stderr(&o));
}

fn detached_exec_kill_delete(isolation: &str) {
    let Some(c) = start("detached_exec_kill_delete", isolation) else {
        return;
    };
    let log = c.path().join("d.log");
    let uri = format!("file://{}", log.display());
    let script = "echo started; trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done";
    let o = c.run(
        isolation,
        &["-d", "--log-uri", &uri],
        "d",
        &["sh", "-c", script],
    );
    assert!(
        o.status.success(),
        "ctr run -d: {}\n{}",
        stderr(&o),
        c.log()
    );
    c.wait_status("d", "RUNNING").unwrap();
    // The shim runs under its seccomp filter (seccomp/shim.json).
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", shims[0])).unwrap();
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
    let logged = wait_until(Duration::from_secs(20), || {
        let l = std::fs::read_to_string(&log).ok()?;
        l.contains("started").then_some(l)
    });
    assert!(logged.is_some(), "no output in {}", log.display());
    let o = c.ctr_out(&[
        "task",
        "exec",
        "--exec-id",
        "x",
        "d",
        "sh",
        "-c",
        "echo in-$((6*7)); ps; exit 4",
    ]);
    assert_eq!(code(o.status), 4, "ctr task exec: {}", stderr(&o));
    assert!(stdout(&o).starts_with("in-42\n"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("while"),
        "exec does not see the workload: {}",
        stdout(&o)
    );
    // Pids: the workload's processes.
    let ps = c.ok(&["task", "ps", "d"]);
    assert!(ps.lines().count() >= 2, "task ps: {ps}");
    // Stats: the container's cgroup figures.
    let metrics = c.ok(&["task", "metrics", "d"]);
    assert!(
        metrics.contains("memory.usage_in_bytes"),
        "task metrics: {metrics}"
    );
    if isolation == "sandbox" {
        // Pause and Resume: the cgroup freezer.
        c.ok(&["task", "pause", "d"]);
        c.wait_status("d", "PAUSED").unwrap();
        c.ok(&["task", "resume", "d"]);
        c.wait_status("d", "RUNNING").unwrap();
    }
    c.ok(&["task", "kill", "d"]);
    c.wait_status("d", "STOPPED").unwrap();
    assert!(std::fs::read_to_string(&log).unwrap().contains("got-term"));
    let o = c.ctr_out(&["task", "delete", "d"]);
    assert!(o.status.success(), "ctr task delete: {}", stderr(&o));
    assert!(!stderr(&o).contains("non-zero exit code"), "{}", stderr(&o));
    assert_eq!(c.task_status("d"), None);
    c.ok(&["container", "delete", "d"]);
    // SIGKILL to every process (kill --all): 128+9.
    let o = c.run(isolation, &["-d", "--null-io"], "k", &["sleep", "600"]);
    assert!(o.status.success(), "ctr run -d: {}", stderr(&o));
    c.wait_status("k", "RUNNING").unwrap();
    c.ok(&["task", "kill", "--all", "-s", "SIGKILL", "k"]);
    c.wait_status("k", "STOPPED").unwrap();
    let o = c.ctr_out(&["task", "delete", "k"]);
    assert!(
        stderr(&o).contains("exit code 137"),
        "ctr task delete k: {}",
        stderr(&o)
    );
    c.ok(&["container", "delete", "k"]);
}

fn terminal(isolation: &str) {
    let Some(c) = start("terminal", isolation) else {
        return;
    };
    let mut argv: Vec<String> = vec![
        "ctr".into(),
        "-a".into(),
        c.socket().display().to_string(),
        "-n".into(),
        NAMESPACE.into(),
    ];
    argv.extend(c.run_argv(isolation, &["--rm", "-t"], "tty", &["sh"]));
    let tmux = Tmux::start(c.path().join("tmux.sock"), &argv);
    let prompt = tmux.wait_for("/ #", Duration::from_secs(40));
    assert!(
        prompt.is_ok(),
        "no shell prompt:\n{}\n{}",
        prompt.unwrap_err(),
        c.log()
    );
    // ResizePty: the terminal is tmux's 100x30.
    let screen = tmux.shell_round_trip(
        "ctr run -t",
        isolation,
        "stty size; ",
        Duration::from_secs(20),
    );
    assert!(
        screen.contains("30 100"),
        "the size did not reach the pty:\n{screen}"
    );
    let exec = Tmux::start(
        c.path().join("tmux-exec.sock"),
        &exec_t_argv(&c.socket(), NAMESPACE, "tty"),
    );
    // ResizePty of an exec: its own terminal follows tmux's size too (in a
    // micro-VM through the exec's `ExecResize` frame).
    let screen = exec.shell_round_trip(
        "ctr task exec -t",
        isolation,
        "stty size; ",
        Duration::from_secs(30),
    );
    assert!(
        screen.contains("30 100"),
        "the size did not reach the exec's pty:\n{screen}"
    );
    exec.exit_with("ctr task exec -t", 3, Duration::from_secs(20));
    tmux.exit_with("ctr run -t", 6, Duration::from_secs(30));
}

/// A config.json asking for more than the policy: refused at Create with
/// moat-oci's message, and nothing is left behind.
fn refused_by_policy(isolation: &str) {
    let Some(c) = start("refused_by_policy", isolation) else {
        return;
    };
    let o = c.run(isolation, &["--rm", "--privileged"], "priv", &["true"]);
    assert!(!o.status.success(), "--privileged ran");
    assert!(
        stderr(&o).contains("moat-oci create priv:") && stderr(&o).contains("policy"),
        "{}",
        stderr(&o)
    );
}

/// The shim killed under a running container: containerd runs the
/// shim's `delete` action, which ends the container and removes its
/// moat-oci record; the task is gone and the container can be deleted.
fn shim_killed_cleanup_action(isolation: &str) {
    let Some(c) = start("shim_killed_cleanup_action", isolation) else {
        return;
    };
    let o = c.run(isolation, &["-d", "--null-io"], "orphan", &["sleep", "600"]);
    assert!(o.status.success(), "ctr run -d: {}", stderr(&o));
    c.wait_status("orphan", "RUNNING").unwrap();
    let records = c.shim_root.path().join(NAMESPACE).join("oci");
    assert!(records.join("orphan").is_dir());
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let pid = rustix::process::Pid::from_raw(shims[0]).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let cleaned = wait_until(Duration::from_secs(30), || {
        let gone = c.task_status("orphan").is_none_or(|s| s == "STOPPED");
        (gone && !records.join("orphan").exists()).then_some(())
    });
    assert!(
        cleaned.is_some(),
        "task {:?}, record left: {}\n{}",
        c.task_status("orphan"),
        records.join("orphan").exists(),
        c.log()
    );
    let _ = c.ctr_out(&["task", "delete", "orphan"]);
    c.ok(&["container", "delete", "orphan"]);
}

/// TaskOOM: a container that outgrows its memory limit is killed by the
/// kernel's OOM killer in its memory group, and the shim publishes
/// `/tasks/oom` for it (what CRI reports as `OOMKilled`). Sandbox only: a
/// guest's OOM happens inside the guest.
#[test]
fn an_oom_kill_is_published_as_task_oom() {
    let Some(c) = start("an_oom_kill_is_published_as_task_oom", "sandbox") else {
        return;
    };
    let mut events = c
        .ctr(&["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Under the same limit, a container that ends by itself is no OOM.
    let o = c.run(
        "sandbox",
        &["--rm", "--memory-limit", "67108864"],
        "calm",
        &["sh", "-c", "exit 3"],
    );
    assert_eq!(code(o.status), 3, "ctr run: {}\n{}", stderr(&o), c.log());
    // A shell string doubling itself until the 64 MiB limit stops it.
    let o = c.run(
        "sandbox",
        &["--rm", "--memory-limit", "67108864"],
        "hog",
        &["sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done"],
    );
    assert_eq!(code(o.status), 137, "ctr run: {}\n{}", stderr(&o), c.log());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("/tasks/oom") && l.contains("\"hog\"") => break true,
            Ok(l) => seen.push(l),
            Err(_) => break false,
        }
    };
    let _ = events.kill();
    let _ = events.wait();
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("/tasks/oom") && l.contains("\"calm\"")),
        "an OOM for a container that had none:\n{}",
        seen.join("\n")
    );
    assert!(
        found,
        "no /tasks/oom for hog among:\n{}\n{}",
        seen.join("\n"),
        c.log()
    );
}

macro_rules! both {
    ($($name:ident),*) => {
        mod sandbox {
            $( #[test] fn $name() { super::$name("sandbox") } )*
        }
        mod vm {
            $( #[test] fn $name() { super::$name("vm") } )*
        }
    };
}

both!(
    run_to_completion,
    stdin_and_close_io,
    detached_exec_kill_delete,
    terminal,
    refused_by_policy,
    shim_killed_cleanup_action
);
