//! Starting the workload: a forked child that enters the verified root and
//! applies the plan (mounts, rlimits, identity, capabilities, no_new_privs,
//! seccomp) before `execve`. Failures come back over a close-on-exec pipe
//! as data, so the host sees the real reason.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use moat_agent::proto::Start;
use moat_policy::plan::{MountPlan, RlimitResource};

use crate::{explain_io, sys, Failure, NEW_ROOT};

/// The running workload and the agent's ends of its stdio.
pub struct Child {
    pub pid: libc::pid_t,
    /// Pipe to its stdin, or the pty master with a terminal.
    pub stdin: OwnedFd,
    /// Pipe from its stdout, or (a clone of) the pty master.
    pub stdout: OwnedFd,
    /// Pipe from its stderr; `None` with a terminal.
    pub stderr: Option<OwnedFd>,
}

pub fn spawn(start: &Start) -> Result<Child, Failure> {
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    // (parent end, child end) pairs.
    let (stdin, stdout, stderr, child_fds): (OwnedFd, OwnedFd, Option<OwnedFd>, [OwnedFd; 3]) =
        if start.process.tty {
            let (master, slave) =
                sys::openpty().map_err(|e| err("allocating a pseudo-terminal", e))?;
            let m2 = master.try_clone().map_err(|e| err("dup", e))?;
            let s2 = slave.try_clone().map_err(|e| err("dup", e))?;
            let s3 = slave.try_clone().map_err(|e| err("dup", e))?;
            (master, m2, None, [slave, s2, s3])
        } else {
            let (in_r, in_w) = sys::pipe().map_err(|e| err("pipe", e))?;
            let (out_r, out_w) = sys::pipe().map_err(|e| err("pipe", e))?;
            let (err_r, err_w) = sys::pipe().map_err(|e| err("pipe", e))?;
            (in_w, out_r, Some(err_r), [in_r, out_w, err_w])
        };
    let (report_r, report_w) = sys::pipe().map_err(|e| err("pipe", e))?;
    match sys::fork().map_err(|e| err("fork", e))? {
        sys::Fork::Child => {
            drop(report_r);
            let Err(f) = child(start, &child_fds, last_cap);
            let mut w = File::from(report_w);
            let _ = write!(w, "{}\n{}", f.code, f.message);
            sys::exit_now(f.code);
        }
        sys::Fork::Parent(pid) => {
            drop(report_w);
            drop(child_fds);
            let mut report = String::new();
            let _ = File::from(report_r).read_to_string(&mut report);
            if !report.is_empty() {
                // The child failed before execve; reap it and report why.
                let (code, message) = report.split_once('\n').unwrap_or(("125", &report));
                return Err(Failure {
                    code: code.parse().unwrap_or(125),
                    message: message.to_string(),
                });
            }
            Ok(Child {
                pid,
                stdin,
                stdout,
                stderr,
            })
        }
    }
}

fn child(start: &Start, fds: &[OwnedFd; 3], last_cap: u32) -> Result<Infallible, Failure> {
    let p = &start.process;
    let plan = &start.plan;
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    sys::reset_signals().map_err(|e| err("resetting signals", e))?;
    sys::setsid_ctty(if p.tty { Some(fds[0].as_fd()) } else { None })
        .map_err(|e| err("setsid", e))?;
    for (i, fd) in fds.iter().enumerate() {
        sys::dup2(fd.as_raw_fd(), i as i32).map_err(|e| err("dup2", e))?;
    }
    // The pty lives in the agent's devpts instance: keep a handle to bind it in.
    let pts = File::open("/dev/pts").map_err(|e| err("opening /dev/pts", e))?;
    std::os::unix::fs::chroot(NEW_ROOT).map_err(|e| err("chroot into the root filesystem", e))?;
    std::env::set_current_dir("/").map_err(|e| err("chdir /", e))?;
    mount_container_fs(plan, &pts)?;
    drop(pts);
    if !p.hostname.is_empty() {
        sys::sethostname(&p.hostname).map_err(|e| err("sethostname", e))?;
    }
    for r in &plan.rlimits {
        let res = match r.resource {
            RlimitResource::Nofile => libc::RLIMIT_NOFILE,
            RlimitResource::Nproc => libc::RLIMIT_NPROC,
            RlimitResource::Core => libc::RLIMIT_CORE,
            RlimitResource::Memlock => libc::RLIMIT_MEMLOCK,
            RlimitResource::Fsize => libc::RLIMIT_FSIZE,
            RlimitResource::Stack => libc::RLIMIT_STACK,
        };
        sys::setrlimit(res, r.soft, r.hard)
            .map_err(|e| err(&format!("setrlimit {:?}", r.resource), e))?;
    }
    let cwd = if p.cwd.is_empty() {
        "/"
    } else {
        p.cwd.as_str()
    };
    std::env::set_current_dir(cwd).map_err(|e| err(&format!("working directory {cwd}"), e))?;
    // Capabilities: bounding set first (needs CAP_SETPCAP), then identity, then the sets.
    let mut mask: u64 = 0;
    for name in &plan.capabilities {
        let n =
            cap_number(name).ok_or_else(|| Failure::setup(format!("unknown capability {name}")))?;
        mask |= 1 << n;
    }
    for cap in 0..=last_cap {
        if mask & (1 << cap) == 0 {
            sys::capbset_drop(cap).map_err(|e| err(&format!("dropping capability {cap}"), e))?;
        }
    }
    sys::set_ids(p.uid, p.gid, &p.additional_gids)
        .map_err(|e| err(&format!("switching to uid {} gid {}", p.uid, p.gid), e))?;
    sys::capset(mask).map_err(|e| err("capset", e))?;
    for cap in 0..=last_cap {
        if mask & (1 << cap) != 0 {
            sys::ambient_raise(cap).map_err(|e| err("raising ambient capability", e))?;
        }
    }
    sys::no_new_privs().map_err(|e| err("no_new_privs", e))?;
    let env: Vec<CString> = p
        .env
        .iter()
        .filter_map(|e| CString::new(e.as_str()).ok())
        .collect();
    let argv: Vec<CString> = p
        .args
        .iter()
        .map(|a| {
            CString::new(a.as_str())
                .map_err(|_| Failure::setup(format!("argument {a:?} contains a NUL byte")))
        })
        .collect::<Result<_, _>>()?;
    let Some(arg0) = p.args.first() else {
        return Err(Failure::setup(
            "no command to run: the image has no entrypoint or cmd and none was given",
        ));
    };
    let path_var = p
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let exe = resolve(arg0, path_var).ok_or_else(|| Failure {
        code: 127,
        message: format!("{arg0}: executable file not found in $PATH"),
    })?;
    let exe_c = CString::new(exe.as_str()).map_err(|_| Failure::setup("NUL in path"))?;
    sys::cloexec_from_3().map_err(|e| err("close_range", e))?;
    let prog: Vec<libc::sock_filter> = plan
        .seccomp
        .instructions
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    if !prog.is_empty() {
        sys::seccomp_filter(&prog).map_err(|e| err("installing the seccomp filter", e))?;
    }
    let e = sys::execve(&exe_c, &argv, &env);
    let code = match e.raw_os_error() {
        Some(libc::ENOENT) => 127,
        Some(libc::EIO) => return Err(explain_io(format!("exec {exe}"), &e)),
        _ => 126,
    };
    Err(Failure {
        code,
        message: format!("exec {exe}: {e}"),
    })
}

/// `execvp`-style lookup inside the (already entered) root.
fn resolve(arg0: &str, path_var: &str) -> Option<String> {
    if arg0.contains('/') {
        return Path::new(arg0).exists().then(|| arg0.to_string());
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}/{arg0}"))
        .find(|c| std::fs::metadata(c).is_ok_and(|m| m.is_file()))
}

/// /proc, a minimal /dev, read-only /sys and the plan's tmpfs mounts, all
/// resolved inside the root we already chrooted into.
fn mount_container_fs(plan: &moat_policy::Plan, pts: &File) -> Result<(), Failure> {
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    let hard = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount("proc", "/proc", "proc", hard, "").map_err(|e| err("mounting /proc", e))?;
    sys::mount("sysfs", "/sys", "sysfs", hard | libc::MS_RDONLY, "")
        .map_err(|e| err("mounting /sys", e))?;
    sys::mount(
        "tmpfs",
        "/dev",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=755,size=65536k",
    )
    .map_err(|e| err("mounting /dev", e))?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = format!("/dev/{name}");
        sys::mknod(&path, libc::S_IFCHR | 0o666, major, minor)
            .map_err(|e| err(&format!("mknod {path}"), e))?;
    }
    for d in ["/dev/pts", "/dev/shm"] {
        std::fs::create_dir(d).map_err(|e| err(&format!("mkdir {d}"), e))?;
    }
    // The agent's devpts instance (it holds only this container's terminal),
    // so that the workload's terminal is visible as /dev/pts/N.
    sys::mount(
        &format!("/proc/self/fd/{}", pts.as_raw_fd()),
        "/dev/pts",
        "",
        libc::MS_BIND,
        "",
    )
    .map_err(|e| err("mounting /dev/pts", e))?;
    sys::mount("shm", "/dev/shm", "tmpfs", hard, "mode=1777,size=65536k")
        .map_err(|e| err("mounting /dev/shm", e))?;
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, link).map_err(|e| err(&format!("symlink {link}"), e))?;
    }
    for m in &plan.mounts {
        match m {
            MountPlan::Tmpfs {
                destination,
                size_bytes,
                optional,
            } => {
                if *optional && !Path::new(destination).exists() {
                    // A built-in default (baseline's /run) the image lacks.
                    eprintln!("moat: notice: the image has no {destination}; skipping its tmpfs");
                    continue;
                }
                if !Path::new(destination).is_dir() {
                    return Err(Failure::setup(format!(
                        "tmpfs destination {destination} is not a directory in the image: create it in the image or change the policy's tmpfs path"
                    )));
                }
                sys::mount(
                    "tmpfs",
                    destination,
                    "tmpfs",
                    libc::MS_NOSUID | libc::MS_NODEV,
                    &format!("mode=1777,size={size_bytes}"),
                )
                .map_err(|e| err(&format!("mounting tmpfs on {destination}"), e))?;
            }
            MountPlan::Volume { destination, .. } => {
                return Err(Failure::setup(format!(
                    "volume at {destination}: the vm backend does not share host directories; use --isolation sandbox for volumes"
                )));
            }
        }
    }
    Ok(())
}

/// Capability numbers by kernel name (without `CAP_`), up to Linux 6.1.
pub fn cap_number(name: &str) -> Option<u32> {
    let n = name.trim_start_matches("CAP_").to_ascii_uppercase();
    moat_policy::caps::CAPABILITIES
        .iter()
        .position(|c| *c == n)
        .map(|i| i as u32)
}
