//! One behaviour in both backends (what a new user hit: devices a non-root
//! workload cannot use, loopback missing in the VM, different wording and
//! modes), through the real `moat` binary: the same command in
//! `--isolation sandbox` and `--isolation vm` gives the same output. And
//! `moat kernel build` says what it is doing when its output is a log.

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};

use common::{stderr, stdout, vm_ready, Env};
use vm_host::vm_lock;

/// `moat run --isolation BACKEND [OPTS] --rootfs ROOT CMD...`
fn run_in(env: &Env, backend: &str, opts: &[&str], cmd: &[&str]) -> Output {
    let root = env.rootfs.to_str().unwrap().to_string();
    let mut full = vec!["run", "--isolation", backend];
    if backend == "vm" {
        full.extend(["--accel", "tcg"]);
    }
    full.extend_from_slice(opts);
    full.extend(["--rootfs", &root]);
    full.extend_from_slice(cmd);
    env.moat(&full).output().unwrap()
}

/// Runs `cmd` in both backends; asserts the same exit code, stdout and
/// stderr, and returns the sandbox's output.
fn same_in_both(env: &Env, opts: &[&str], cmd: &[&str]) -> Output {
    let s = run_in(env, "sandbox", opts, cmd);
    let v = run_in(env, "vm", opts, cmd);
    assert_eq!(
        (stdout(&v), stderr(&v), v.status.code()),
        (stdout(&s), stderr(&s), s.status.code()),
        "vm (left) and sandbox (right) differ for {cmd:?}"
    );
    s
}

#[test]
fn a_non_root_workload_sees_the_same_dev_and_run_in_both_backends() {
    let env = Env::new();
    if !vm_ready(
        &env,
        "a_non_root_workload_sees_the_same_dev_and_run_in_both_backends",
    ) {
        return;
    }
    let _l = vm_lock();
    // What the user did: write /dev/null as a non-root user (python's
    // subprocess.DEVNULL), read the random devices, look at the modes.
    let o = same_in_both(
        &env,
        &["-u", "1000"],
        &[
            "sh",
            "-c",
            "echo x > /dev/null && echo null-ok; \
             head -c 4 /dev/zero | wc -c; head -c 4 /dev/urandom | wc -c; \
             head -c 4 /dev/random | wc -c; \
             echo x > /dev/full 2>/dev/null || echo full-refuses; \
             [ -e /dev/tty ] || echo no-tty-without-t; \
             stat -c '%n %a' /dev /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/pts /dev/shm /tmp /run; \
             touch /dev/x 2>/dev/null || echo dev-read-only",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "null-ok\n4\n4\n4\nfull-refuses\nno-tty-without-t\n\
         /dev 755\n/dev/null 666\n/dev/zero 666\n/dev/full 666\n\
         /dev/random 666\n/dev/urandom 666\n\
         /dev/pts 755\n/dev/shm 1777\n/tmp 1777\n/run 755\n\
         dev-read-only\n"
    );
    // Owners differ by design: the VM's nodes are guest root's (0:0, as
    // runc makes them; checked in moat-vm's review_vmguest.rs), the
    // sandbox's are the host's devices, whose owner (host root) is unmapped
    // in its user namespace and shows as 65534.

    // A missing command: the same words and exit code in both.
    let o = same_in_both(&env, &[], &["no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert_eq!(
        stderr(&o),
        "moat: error: executable \"no-such-command\" not found in the container (PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)\n"
    );
}

#[test]
fn the_console_is_dev_console_in_both_backends() {
    let env = Env::new();
    if !vm_ready(&env, "the_console_is_dev_console_in_both_backends") {
        return;
    }
    let _l = vm_lock();
    let o = same_in_both(
        &env,
        &["-t"],
        &["sh", "-c", "tty; test -c /dev/console && echo char-device"],
    );
    // (Its mode is the pty's: the host's devpts decides it in the sandbox.)
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).replace('\r', ""), "/dev/console\nchar-device\n");
}

fn policy(env: &Env, network: &str) -> String {
    let p = env.dir.path().join(format!("{network}.yaml"));
    std::fs::write(
        &p,
        format!(
            "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: net-{network}\nspec:\n  extends: baseline\n  network: {network}\n"
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn network_none_and_loopback_are_the_same_in_both_backends() {
    let env = Env::new();
    if !vm_ready(
        &env,
        "network_none_and_loopback_are_the_same_in_both_backends",
    ) {
        return;
    }
    let _l = vm_lock();
    // A server and a client on 127.0.0.1 inside the container.
    let lo = policy(&env, "loopback");
    let o = same_in_both(
        &env,
        &["--policy", &lo],
        &[
            "sh",
            "-c",
            // The server's stdin stays open (busybox nc ends at once on
            // EOF there, racing the client's data).
            "sleep 3 | nc -l -p 5555 > /tmp/got & sleep 1; \
             echo hello-over-lo | nc -w 2 127.0.0.1 5555; sleep 1; echo got=$(cat /tmp/got)",
        ],
    );
    assert_eq!(stdout(&o), "got=hello-over-lo\n", "{}", stderr(&o));

    // `none`: loopback stays down, and 127.0.0.1 fails the same way.
    let none = policy(&env, "none");
    let o = same_in_both(
        &env,
        &["--policy", &none],
        &["sh", "-c", "echo hi | nc -w 2 127.0.0.1 5555; echo rc=$?"],
    );
    assert_eq!(stdout(&o), "rc=1\n");
    assert_eq!(
        stderr(&o),
        "nc: can't connect to remote host (127.0.0.1): Network is unreachable\n"
    );
}

#[test]
fn kernel_build_prints_a_line_per_phase_into_a_log() {
    let env = Env::new();
    // A source tarball that is not one: the build gets as far as
    // extracting it. Another build holds the lock at first.
    let src = env.dir.path().join("linux-source-6.1.tar.xz");
    std::fs::write(&src, b"not a tarball").unwrap();
    let kernels = env.state_root().join("kernels");
    std::fs::create_dir_all(&kernels).unwrap();
    let lock = std::fs::File::create(kernels.join(".lock")).unwrap();
    lock.lock().unwrap();
    let mut child = env
        .moat(&["kernel", "build"])
        .env("MOAT_KERNEL_SOURCE", &src)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert_eq!(
        first,
        format!(
            "moat kernel build: waiting for another kernel build to finish (it holds {})\n",
            kernels.join(".lock").display()
        )
    );
    drop(lock);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    let mut lines = rest.lines();
    assert_eq!(
        lines.next(),
        Some(format!("moat kernel build: [1/5] extracting {}", src.display()).as_str())
    );
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("moat: error: tar xf failed in "),
        "{rest}"
    );
}
