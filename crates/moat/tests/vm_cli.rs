//! `moat run --isolation vm` end to end through the CLI: an imported image
//! in a micro-VM, stdin, exit codes, the guest's own kernel, signals sent to
//! the real `moat` process (SIGTERM, Ctrl-C, `kill -9`) and what is left
//! afterwards. Skips with `SKIP:` when QEMU or the guest kernel is absent
//! (`make kernel` builds it).

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use std::io::{BufRead, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{stderr, stdout, vm_ready, Env};
use vm_host::{jailed_processes, vm_lock, VmLock};

#[test]
fn an_imported_image_runs_in_a_micro_vm() {
    let env = Env::new();
    if !vm_ready(&env, "an_imported_image_runs_in_a_micro_vm") {
        return;
    }
    let _l = vm_lock();
    let archive = env.dir.path().join("busybox.oci.tar");
    let o = env
        .moat(&["dev", "test-image", "-o", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env
        .moat(&["image", "import", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let vm = |args: &[&str]| {
        let mut full = vec!["run", "--isolation", "vm", "--accel", "tcg"];
        full.extend_from_slice(args);
        env.moat(&full).output().unwrap()
    };
    let o = vm(&["busybox", "echo", "hello from a micro-VM"]);
    assert_eq!(stdout(&o), "hello from a micro-VM\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));

    let o = vm(&["busybox", "uname", "-r"]);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(
        stdout(&o).trim(),
        host.trim(),
        "the guest runs its own kernel"
    );

    let o = vm(&["busybox", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));

    // MOAT_VM_TRACE=1: the host's and the agent's phase times on stderr.
    let o = env
        .moat(&[
            "run",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "busybox",
            "true",
        ])
        .env("MOAT_VM_TRACE", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let phases: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("moat-vm trace: "))
        .map(|l| l.rsplit_once(") ").map_or(l, |(_, p)| p))
        .map(|l| {
            l.strip_prefix("guest ")
                .map_or(l, |g| g.split_once(' ').map_or(g, |(_, p)| p))
        })
        .collect();
    for want in [
        "jail set up, VMM spawned",
        "supervisor seccomp filter installed",
        "agent said hello",
        "hello sent",
        "verified root mounted",
        "start received",
        "workload started",
        "workload exited",
        "workload exit status received",
        "VMM stopped, cgroup removed",
    ] {
        assert!(phases.contains(&want), "{want:?} missing from {err}");
    }

    // The test image's Entrypoint is /bin/busybox: an unknown command is an
    // unknown applet, exit 127 as in the sandbox.
    let o = vm(&["busybox", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert_eq!(stderr(&o), "no-such-command: applet not found\n");

    // echo abc | moat run -i --isolation vm IMAGE cat
    let mut child = env
        .moat(&[
            "run",
            "-i",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "busybox",
            "cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "abc\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));

    // The running container was visible under the state root and is gone.
    let containers = env.state_root().join("containers");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir()) // the `.lock` file stays
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_accelerator_is_a_clear_error() {
    let env = Env::new();
    let o = env
        .moat(&[
            "run",
            "--isolation",
            "vm",
            "--accel",
            "hvf",
            "busybox",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("invalid value 'hvf' for '--accel <ACCEL>'"),
        "{}",
        stderr(&o)
    );
}

/// Imports the test image as `busybox` into `env`'s state root.
fn import_test_image(env: &Env) {
    let archive = env.dir.path().join("busybox.oci.tar");
    let o = env
        .moat(&["dev", "test-image", "-o", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env
        .moat(&["image", "import", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A `moat run --isolation vm` in its own process group (as a shell runs a
/// foreground job), with its stdout read line by line.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

fn spawn_vm(env: &Env, script: &str) -> Running {
    use std::os::unix::process::CommandExt;
    let mut child = env
        .moat(&[
            "run",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "--stop-timeout",
            "60",
            "busybox",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    Running { child, lines: rx }
}

impl Running {
    /// Waits (up to 3 minutes: TCG on two busy cores) for the workload to print `want`.
    fn wait_line(&mut self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_secs(1)) {
                if l == want {
                    return;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("moat ended ({st}) before the workload printed {want:?}");
            }
        }
        let _ = self.child.kill();
        panic!("the workload never printed {want:?}");
    }

    /// Waits (bounded) for moat to end.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("moat did not end within 120 s");
    }

    /// The rest of the workload's output.
    fn rest(&self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            v.push(l);
        }
        v
    }
}

impl Drop for Running {
    /// A failed assertion must not leave moat (and its VM) running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A VM started through the CLI for `test` with `script`, once the script
/// has printed `ready`; `None` (after a `SKIP:` line) when VMs cannot run
/// here. Fields drop in order: moat (killed if still running), the lock,
/// then the temporary root.
struct Started {
    r: Running,
    _lock: VmLock,
    env: Env,
}

fn start_ready(test: &str, script: &str) -> Option<Started> {
    let env = Env::new();
    if !vm_ready(&env, test) {
        return None;
    }
    let lock = vm_lock();
    import_test_image(&env);
    let mut r = spawn_vm(&env, script);
    r.wait_line("ready");
    Some(Started {
        r,
        _lock: lock,
        env,
    })
}

/// `kill(2)` through the `kill` command (tests stay free of `unsafe`).
fn send(pid: i32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

fn status_field(pid: u32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn sigterm_to_moat_reaches_the_workload() {
    let Some(mut vm) = start_ready(
        "sigterm_to_moat_reaches_the_workload",
        "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.2; done",
    ) else {
        return;
    };
    assert!(
        !jailed_processes().is_empty(),
        "the VMM runs as a jailed uid"
    );
    // The supervisor relays under its own seccomp filter (DESIGN rule 9).
    let pid = vm.r.child.id();
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    send(pid as i32, "TERM");
    let status = vm.r.wait();
    assert!(vm.r.rest().contains(&"got-term".to_string()));
    assert_eq!(status.code(), Some(7), "{status}");
    assert_nothing_left(&vm.env);
}

#[test]
fn ctrl_c_ends_the_workload_and_leaves_nothing() {
    let Some(mut vm) = start_ready(
        "ctrl_c_ends_the_workload_and_leaves_nothing",
        "echo ready; exec sleep 1000",
    ) else {
        return;
    };
    // Ctrl-C on a terminal: SIGINT to the whole foreground process group.
    send(-(vm.r.child.id() as i32), "INT");
    let status = vm.r.wait();
    assert_eq!(status.code(), Some(130), "{status}");
    assert_nothing_left(&vm.env);
}

#[test]
fn kill_9_of_moat_leaves_nothing() {
    let Some(mut vm) = start_ready(
        "kill_9_of_moat_leaves_nothing",
        "echo ready; exec sleep 1000",
    ) else {
        return;
    };
    assert!(
        !jailed_processes().is_empty(),
        "the VMM runs as a jailed uid"
    );
    send(vm.r.child.id() as i32, "KILL");
    let status = vm.r.wait();
    assert_eq!(status.signal(), Some(9), "{status}");
    assert_nothing_left(&vm.env);
}

#[test]
fn normal_exit_leaves_nothing() {
    let Some(mut vm) = start_ready("normal_exit_leaves_nothing", "echo ready; exit 3") else {
        return;
    };
    assert_eq!(vm.r.wait().code(), Some(3));
    // Nothing to wait for here: moat removed everything before it exited.
    assert_eq!(leftovers(&vm.env), Vec::<String>::new());
}

/// What VMs left behind (see `vm_host::leftovers`), records under `env`.
fn leftovers(env: &Env) -> Vec<String> {
    vm_host::leftovers(&env.state_root().join("containers"))
}

fn assert_nothing_left(env: &Env) {
    vm_host::assert_nothing_left(&env.state_root().join("containers"))
}
