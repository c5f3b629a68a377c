//! `exec` into a running VM container through the guest agent (issue 13):
//! a real guest on TCG, a control socketpair, requests made with
//! `moat_vm::exec::request` as the monitor will make them. The exec'd
//! process is never weaker than the first: same ids, capabilities,
//! seccomp filter, no_new_privs, PID and mount namespaces.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use common::*;
use moat_policy::ProcessSpec;

/// The workload: runs until an exec creates /tmp/stop. It then gives that
/// exec time to exit: the end of a PID namespace's init kills the rest,
/// and a loaded TCG guest can see the file before `touch` has exited.
const WORKLOAD: &str = "while [ ! -e /tmp/stop ]; do sleep 0.1; done; sleep 2; echo workload-done";

fn as_app(mut p: ProcessSpec) -> ProcessSpec {
    p.uid = 1000;
    p.gid = 1000;
    p
}

/// Runs one exec; its exit code, stdout and stderr.
fn exec_with_stdin(
    control: BorrowedFd<'_>,
    p: &ProcessSpec,
    stdin: BorrowedFd<'_>,
) -> (Result<i32, String>, String, String) {
    let (mut out_r, out_w) = std::io::pipe().unwrap();
    let (mut err_r, err_w) = std::io::pipe().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        out_r.read_to_string(&mut s).unwrap();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        err_r.read_to_string(&mut s).unwrap();
        s
    });
    let code = moat_vm::exec::request(control, p, false, stdin, out_w.as_fd(), err_w.as_fd())
        .map_err(|e| e.to_string());
    drop((out_w, err_w));
    (code, out_t.join().unwrap(), err_t.join().unwrap())
}

fn exec(control: BorrowedFd<'_>, args: &[&str]) -> (Result<i32, String>, String, String) {
    let devnull = File::open("/dev/null").unwrap();
    exec_with_stdin(control, &as_app(process(args)), devnull.as_fd())
}

fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_string()
}

#[test]
fn exec_into_a_running_vm_container() {
    require_vm!();
    let _l = vm_lock();
    let f = fixture();
    let mut opts = options(f, as_app(process(&["sh", "-c", WORKLOAD])));
    // A real filter (baseline's) and one capability, so that "the same as
    // the workload's" means something.
    let baseline =
        moat_policy::compile(&moat_policy::Policy::builtin("baseline").unwrap()).unwrap();
    opts.plan.seccomp = baseline.seccomp;
    opts.plan.capabilities = vec!["CAP_NET_BIND_SERVICE".into()];
    let (control, theirs) = moat_vm::exec::control_pair().unwrap();
    opts.control = Some(theirs);
    let vm = std::thread::spawn(move || run(opts, None));
    let c = control.as_fd();

    // Identity and confinement, against the workload's (PID 1 of the same
    // PID namespace).
    let (code, status, err) = exec(c, &["cat", "/proc/self/status"]);
    assert_eq!(code, Ok(0), "{err}");
    // The VM runs: its record names it.
    let records = moat_runtime::record::read_all(&f.state.join("run")).unwrap();
    let id = records
        .iter()
        .find(|r| r.status == moat_runtime::Status::Running)
        .expect("the running container's record")
        .id
        .clone();
    let (code, workload, err) = exec(c, &["cat", "/proc/1/status"]);
    assert_eq!(code, Ok(0), "{err}");
    assert_eq!(field(&workload, "Name:"), "sh");
    assert_eq!(field(&status, "Uid:"), "1000\t1000\t1000\t1000");
    assert_eq!(field(&status, "Gid:"), "1000\t1000\t1000\t1000");
    assert_eq!(field(&status, "NoNewPrivs:"), "1");
    assert_eq!(field(&status, "Seccomp:"), "2");
    assert_eq!(field(&workload, "Seccomp:"), "2");
    assert_eq!(field(&status, "CapEff:"), "0000000000000400");
    for cap in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:", "CapInh:"] {
        assert_eq!(field(&status, cap), field(&workload, cap), "{cap}");
    }
    let (code, out, err) = exec(c, &["id"]);
    assert_eq!(code, Ok(0), "{err}");
    assert!(out.starts_with("uid=1000(app) gid=1000(app)"), "{out}");
    // No descriptor beyond its stdio (3 is ls's own directory).
    assert_eq!(
        exec(c, &["ls", "/proc/self/fd"]),
        (Ok(0), "0\n1\n2\n3\n".to_string(), String::new())
    );
    // The same cgroup as the workload (the agent's pids cgroup).
    let (_, cg, _) = exec(c, &["cat", "/proc/self/cgroup"]);
    let (_, wcg, _) = exec(c, &["cat", "/proc/1/cgroup"]);
    assert_eq!(cg, wcg);

    // Exit codes, a missing command, the working directory.
    assert_eq!(exec(c, &["sh", "-c", "exit 3"]).0, Ok(3));
    let (code, out, err) = exec(c, &["nope"]);
    assert_eq!(code, Ok(127));
    assert_eq!(out, "");
    assert_eq!(
        err,
        "moat: error: executable \"nope\" not found in the container (PATH=/bin)\n"
    );
    let mut p = as_app(process(&["pwd"]));
    p.cwd = "/home/app".into();
    let devnull = File::open("/dev/null").unwrap();
    assert_eq!(
        exec_with_stdin(c, &p, devnull.as_fd()),
        (Ok(0), "/home/app\n".to_string(), String::new())
    );

    // Two at once: the first waits on its stdin while the second runs
    // start to end; the first then gets its line.
    let (stdin_r, mut stdin_w) = std::io::pipe().unwrap();
    let control2: OwnedFd = control.try_clone().unwrap();
    let first = std::thread::spawn(move || {
        exec_with_stdin(
            control2.as_fd(),
            &as_app(process(&["sh", "-c", "read x; echo got-$x"])),
            stdin_r.as_fd(),
        )
    });
    let started = Instant::now();
    assert_eq!(
        exec(c, &["echo", "second"]),
        (Ok(0), "second\n".to_string(), String::new())
    );
    assert!(!first.is_finished());
    writeln!(stdin_w, "line").unwrap();
    drop(stdin_w);
    assert_eq!(
        first.join().unwrap(),
        (Ok(0), "got-line\n".to_string(), String::new())
    );
    assert!(started.elapsed() < Duration::from_secs(120));

    // The same mounts as the workload: its /tmp. Stopping it ends the VM.
    assert_eq!(exec(c, &["touch", "/tmp/stop"]).0, Ok(0));
    let r = vm.join().unwrap();
    assert_eq!(r.code, Ok(0), "{}", r.stderr);
    assert_eq!(r.stdout, "workload-done\n");
    // The container is gone: a request says so.
    assert_eq!(
        exec(c, &["true"]).0,
        Err("the container is not running, or stopped before the exec'd process ended".into())
    );
    assert_eq!(jailed_processes(), Vec::<String>::new());
    let left: Vec<String> = vm_cgroups()
        .into_iter()
        .filter(|c| c.ends_with(&format!("vm-{id}")))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

#[test]
fn exec_with_a_terminal() {
    require_vm!();
    let _l = vm_lock();
    let f = fixture();
    let mut opts = options(f, process(&["sh", "-c", WORKLOAD]));
    let (control, theirs) = moat_vm::exec::control_pair().unwrap();
    opts.control = Some(theirs);
    let vm = std::thread::spawn(move || run(opts, None));
    // A socket as the caller's side of the terminal (a pty peer in real
    // use): what the guest's terminal echoes comes back on it.
    let (mut mine, peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let p = process(&["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo both-ttys; exit 5"]);
    let code = moat_vm::exec::request(
        control.as_fd(),
        &p,
        true,
        peer.as_fd(),
        peer.as_fd(),
        peer.as_fd(),
    );
    assert_eq!(code.map_err(|e| e.to_string()), Ok(5));
    drop(peer);
    mine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = mine.read_to_end(&mut out);
    assert_eq!(String::from_utf8_lossy(&out), "both-ttys\r\n");
    let (code, _, err) = exec(control.as_fd(), &["touch", "/tmp/stop"]);
    assert_eq!(code, Ok(0), "{err}");
    assert_eq!(vm.join().unwrap().code, Ok(0));
}
