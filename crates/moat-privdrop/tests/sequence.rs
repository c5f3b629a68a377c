//! The sequence run for real in forked children (needs root): what the
//! exec'd process holds afterwards, the 127/126 classification, and a
//! working directory that leads out of the root (CVE-2024-21626) refused.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;

use moat_policy::plan::{Rlimit, RlimitResource};
use moat_policy::ProcessSpec;
use moat_privdrop::{drop_and_exec, DropSpec, Exec, ExecFailure, Step};

mod sys {
    //! The fork of these tests; all their `unsafe`.
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

    pub fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: two fresh descriptors, now owned.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// A descriptor without close-on-exec: what a careless caller leaks.
    pub fn leaky_dup(fd: BorrowedFd<'_>) -> RawFd {
        // SAFETY: dup of a valid descriptor; the copy is closed by the exec
        // (or the child's exit), never used otherwise.
        unsafe { libc::dup(fd.as_raw_fd()) }
    }

    pub fn dup2(fd: BorrowedFd<'_>, to: RawFd) {
        // SAFETY: dup2 of a valid descriptor onto a standard one.
        unsafe { libc::dup2(fd.as_raw_fd(), to) };
    }

    /// Forks; the child runs `f` (which must not allocate: the test
    /// harness is multi-threaded) and `_exit`s with its result.
    pub fn fork_run(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only runs `f`, which makes system calls on data
        // prepared before the fork, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = f();
            // SAFETY: leaves the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child into a valid int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// A mount namespace of the calling (forked, single-threaded) child.
    pub fn new_mount_namespace() {
        // SAFETY: NEWNS only; no descriptor table is unshared.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.unwrap();
    }

    pub fn write_all(fd: BorrowedFd<'_>, b: &[u8]) {
        // SAFETY: `b` is valid for reads of its length.
        unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), b.len()) };
    }
}

fn process(args: &[&str], cwd: &str) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        cwd: cwd.into(),
        uid: 65534,
        gid: 65534,
        additional_gids: vec![65533],
        tty: false,
        interactive: false,
        hostname: String::new(),
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs the sequence in a child with stdout to a pipe; returns the exit
/// code, what the child printed and the failure it reported, if any.
fn run(spec: &DropSpec, exec: &Exec, before: impl FnOnce()) -> (i32, String, Option<ExecFailure>) {
    let (out_r, out_w) = sys::pipe();
    let (rep_r, rep_w) = sys::pipe();
    let code = sys::fork_run(|| {
        sys::dup2(out_w.as_fd(), 1);
        before();
        let f = drop_and_exec(spec, exec, None);
        sys::write_all(rep_w.as_fd(), &f.to_bytes());
        i32::from(f.exit_code())
    });
    drop((out_w, rep_w));
    let mut out = String::new();
    File::from(out_r).read_to_string(&mut out).unwrap();
    let mut rep = Vec::new();
    File::from(rep_r).read_to_end(&mut rep).unwrap();
    (code, out, ExecFailure::from_bytes(&rep))
}

#[test]
fn the_workload_holds_exactly_what_the_spec_grants() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut plan =
        moat_policy::compile(&moat_policy::Policy::builtin("baseline").unwrap()).unwrap();
    plan.capabilities = vec!["NET_BIND_SERVICE".into()];
    plan.rlimits = vec![Rlimit {
        resource: RlimitResource::Nofile,
        soft: 100,
        hard: 200,
    }];
    let p = process(
        &[
            "sh",
            "-c",
            "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; ls /proc/self/fd | tr '\\n' ' '; echo; pwd; ulimit -n; ulimit -Hn",
        ],
        "/tmp",
    );
    let spec = DropSpec::new(&plan, &p).unwrap();
    let exec = Exec::from_process(&p).unwrap();
    let secret = File::open("/etc/hostname").unwrap();
    let (code, out, failure) = run(&spec, &exec, || {
        // A descriptor without close-on-exec, as a careless caller leaves it.
        sys::leaky_dup(secret.as_fd());
    });
    assert_eq!((code, failure), (0, None), "{out}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{out}");
    assert_eq!(field("Gid:"), "65534 65534 65534 65534", "{out}");
    assert_eq!(field("Groups:"), "65533", "{out}");
    let bind = format!("{:016x}", 1u64 << 10);
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(set), bind, "{set}\n{out}");
    }
    assert_eq!(field("NoNewPrivs:"), "1", "{out}");
    assert_eq!(field("Seccomp:"), "2", "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let n = lines.len();
    // ls's own directory descriptor is the only one above 2.
    let fds: Vec<u32> = lines[n - 4]
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert!(fds.iter().filter(|&&f| f > 2).count() <= 1, "{out}");
    assert_eq!(&lines[n - 3..], ["/tmp", "100", "200"], "{out}");
    drop(secret);
}

#[test]
fn missing_and_unexecutable_commands_exit_127_and_126() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let spec = DropSpec::unprivileged(65534, 65534, &[]);

    let exec = Exec::new(&["no-such-command".into()], &["PATH=/bin".into()]).unwrap();
    let (code, _, f) = run(&spec, &exec, || {});
    let f = f.unwrap();
    assert_eq!((code, f.step), (127, Step::NotFound));
    assert_eq!(
        f.message(&spec, &exec),
        "executable \"no-such-command\" not found in the container (PATH=/bin)"
    );

    let path = format!("PATH={}", dir.path().display());
    let exec = Exec::new(&["plain".into()], &[path]).unwrap();
    let (code, _, f) = run(&spec, &exec, || {});
    let f = f.unwrap();
    assert_eq!((code, f.step, f.errno), (126, Step::Execve, libc::EACCES));
    assert_eq!(
        f.message(&spec, &exec),
        "cannot execute \"plain\" in the container: plain: Permission denied (os error 13)"
    );
}

/// CVE-2024-21626: a working directory given as `/proc/self/fd/N`, where
/// N is a descriptor of a host directory still open in the child, would
/// put the workload outside its root. The sequence refuses it (125).
#[test]
fn a_working_directory_outside_the_root_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    use rustix::mount::{mount, MountFlags, MountPropagationFlags};
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("proc")).unwrap();
    let host = File::open("/etc").unwrap();
    let cwd = format!("/proc/self/fd/{}", host.as_raw_fd());
    let spec = DropSpec::unprivileged(0, 0, &[]).with_cwd(&cwd).unwrap();
    let exec = Exec::new(&["/bin/true".into()], &[]).unwrap();
    let root_c = CString::new(root.path().as_os_str().as_encoded_bytes()).unwrap();
    let proc_c = CString::new(root.path().join("proc").as_os_str().as_encoded_bytes()).unwrap();
    let (code, _, f) = run(&spec, &exec, || {
        sys::new_mount_namespace();
        rustix::mount::mount_change(
            c"/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        )
        .unwrap();
        mount(
            c"proc",
            proc_c.as_c_str(),
            c"proc",
            MountFlags::empty(),
            None,
        )
        .unwrap();
        rustix::process::chroot(root_c.as_c_str()).unwrap();
        rustix::process::chdir(c"/").unwrap();
    });
    let f = f.unwrap();
    assert_eq!((code, f.step), (125, Step::CwdOutsideRoot));
    assert_eq!(
        f.message(&spec, &exec),
        format!("working directory: {cwd} resolves outside the container root")
    );
    drop(host);
}
