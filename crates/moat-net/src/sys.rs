//! The system calls of this crate that need `unsafe`: hooks that run in a
//! forked child before `execve`, and the loopback ioctl.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Makes `cmd`'s child join the network namespace `netns` before it
/// executes (the caller's own namespace is untouched).
pub(crate) fn enter_netns_before_exec(cmd: &mut Command, netns: BorrowedFd<'_>) {
    let fd: RawFd = netns.as_raw_fd();
    // SAFETY: the hook runs in the forked child between fork and execve
    // and only makes one async-signal-safe system call on `fd`, which the
    // caller keeps open until `spawn` returns (the borrow outlives it).
    unsafe {
        cmd.pre_exec(move || check(libc::setns(fd, libc::CLONE_NEWNET) as libc::c_long).map(drop));
    }
}

/// Makes `cmd`'s child a helper that dies with its parent: its own
/// session (no terminal of the host), SIGKILL when the thread that
/// spawned it ends, every descriptor above stderr closed at `execve`.
pub(crate) fn helper_before_exec(cmd: &mut Command) {
    // SAFETY: the hook runs in the forked child between fork and execve
    // and makes only async-signal-safe system calls with integer arguments.
    unsafe {
        cmd.pre_exec(|| {
            check(libc::setsid() as libc::c_long)?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as libc::c_long)?;
            // The parent may already be gone (then no signal would come).
            if libc::getppid() == 1 {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            check(libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ))
            .map(drop)
        });
    }
}

/// Moves the calling thread into a new network namespace.
pub(crate) fn unshare_net() -> io::Result<()> {
    // SAFETY: integer argument; affects only the calling thread's netns.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) } as libc::c_long).map(drop)
}

/// Moves the calling thread into the network namespace `fd`.
pub(crate) fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor for the borrow's lifetime.
    check(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } as libc::c_long).map(drop)
}

/// Brings the loopback interface of the calling thread's network
/// namespace up.
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket creation; the result is checked before use.
    let raw = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long,
    )?;
    // SAFETY: `raw` is a descriptor we just created and own alone.
    let sock = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    // SAFETY: ifreq is plain data, all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for SIOCGIFFLAGS, which fills the flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as libc::c_long)?;
    // SAFETY: the flags member of the union is the one SIOCGIFFLAGS filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above, for SIOCSIFFLAGS.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as libc::c_long)?;
    Ok(())
}
