//! Processes: clone into namespaces, pidfds, waiting, prctl, ids and
//! the other per-process calls of the supervisor and the init.

use super::*;

/// Number of threads of this process, from `/proc/self/status`.
fn thread_count() -> io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// The result of [`clone_child`] as seen by each side.
pub enum Forked {
    Parent { pid: i32, pidfd: OwnedFd },
    Child,
}

/// `clone(2)` without a new stack (fork semantics) with extra namespace
/// flags and `CLONE_PIDFD`. Refuses to run in a multi-threaded process, since
/// the child of a multi-threaded fork may only call async-signal-safe code
/// and ours allocates.
pub fn clone_child(ns_flags: libc::c_int) -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the sandbox must be started from a single-threaded process (this one has {threads} threads)"
        )));
    }
    let mut pidfd: libc::c_int = -1;
    let flags = (ns_flags | libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a NULL stack gives fork semantics (the child continues on a
    // copy-on-write copy of this stack); the process is single-threaded
    // (checked above), so no lock is held by a thread that does not exist in
    // the child. `pidfd` outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            null_mut::<libc::c_void>(),
            &mut pidfd as *mut libc::c_int,
            null_mut::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    let pid = check(ret)? as i32;
    if pid == 0 {
        return Ok(Forked::Child);
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor in `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Forked::Parent { pid, pidfd })
}

/// `setns(2)` into the namespaces `flags` of the process of `pidfd`, all
/// at once (the kernel joins the user namespace first).
pub fn setns(pidfd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<()> {
    use rustix::thread::ThreadNameSpaceType;
    Ok(rustix::thread::move_into_thread_name_spaces(
        pidfd,
        ThreadNameSpaceType::from_bits_retain(flags as u32),
    )?)
}

/// `clone(2)` with `CLONE_PARENT` (fork semantics): the new process is a
/// child of this process's parent, so that the parent can supervise it
/// while this process exits. Returns 0 in the new process, its pid here.
pub fn clone_parent() -> io::Result<i32> {
    // SAFETY: as in `clone_child`: a NULL stack gives fork semantics, and
    // the caller is a single-threaded fork.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            null_mut::<libc::c_void>(),
            null_mut::<libc::c_int>(),
            null_mut::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    check(ret).map(|pid| pid as i32)
}

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: a NULL siginfo means "as kill(2) would send it".
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// `waitid(P_PIDFD)`; `None` when `nohang` and the process still runs.
pub fn wait_pidfd(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<Option<Exit>> {
    // SAFETY: siginfo_t is plain data; zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { zeroed() };
    let mut options = libc::WEXITED;
    if nohang {
        options |= libc::WNOHANG;
    }
    loop {
        // SAFETY: `info` is valid for writes for the duration of the call.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                options,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        break;
    }
    // SAFETY: waitid filled `info` (or left si_pid zero with WNOHANG).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if info.si_code == libc::CLD_EXITED {
        Exit::Code(status)
    } else {
        Exit::Signal(status)
    }))
}

pub(super) fn prctl(op: i32, a: libc::c_ulong, b: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the operations used here take integer arguments only.
    check(unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) } as libc::c_long)
        .map(drop)
}

pub fn set_pdeathsig(sig: i32) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0)
}
pub fn set_dumpable(on: bool) -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, on as libc::c_ulong, 0)
}

pub fn getrlimit(resource: u32) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is valid for writes.
    check(unsafe { libc::getrlimit(resource, &mut lim) } as libc::c_long)?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

pub fn set_ids(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: `groups` is a valid slice of gid_t for its length.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } as libc::c_long)?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) } as libc::c_long)?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) } as libc::c_long)?;
    Ok(())
}

pub fn sethostname(name: &str) -> io::Result<()> {
    Ok(rustix::system::sethostname(name.as_bytes())?)
}

pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: integer argument only.
    check(unsafe { libc::unshare(flags) } as libc::c_long).map(drop)
}

pub fn setsid() -> io::Result<()> {
    rustix::process::setsid()?;
    Ok(())
}

/// Leaves the process immediately, without running destructors or atexit
/// handlers that belong to the parent's copy of the state.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Writes `buf` to a raw descriptor the caller owns (used across the clone boundary).
pub fn write_fd(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    check(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) } as libc::c_long)
        .map(|n| n as usize)
}
