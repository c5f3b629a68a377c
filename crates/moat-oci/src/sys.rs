//! The few system calls of the VM helper processes that need `unsafe` or
//! descriptor passing: fork, the signal mask, pty peers, SCM_RIGHTS.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Where a [`fork`] returned.
pub enum Forked {
    Child,
    Parent(i32),
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `fork()`, refused unless this process has one thread (moat-oci's
/// commands are single-threaded until they fork a helper).
pub fn fork() -> io::Result<Forked> {
    if threads() != 1 {
        return Err(io::Error::other(
            "refusing to fork a multi-threaded process",
        ));
    }
    // SAFETY: the process has a single thread (checked above), so the
    // child's copy of every lock and allocator state is consistent.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

const SESSION_SIGNALS: [i32; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
];

/// Blocks the signals the VM session reads from its signalfd, in this
/// thread and every thread it starts afterwards: a process-directed one
/// must wait for the signalfd, never kill the helper through a thread
/// that has it unblocked.
pub fn block_session_signals() -> io::Result<()> {
    block_signals(&SESSION_SIGNALS)
}

/// Waits for one of the signals [`block_session_signals`] blocked.
pub fn wait_session_signal() -> io::Result<i32> {
    wait_signals(&SESSION_SIGNALS)
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is valid storage; sigemptyset
    // initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is valid, writable storage.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: set is initialised; s is a signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Blocks `signals` in this thread and the threads it starts afterwards.
pub fn block_signals(signals: &[i32]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: set is initialised; the old mask is not asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Waits for one of `signals` (blocked by [`block_signals`]).
pub fn wait_signals(signals: &[i32]) -> io::Result<i32> {
    let set = sigset(signals);
    let mut sig = 0;
    // SAFETY: set is initialised; sig is writable storage.
    let r = unsafe { libc::sigwait(&set, &mut sig) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(sig)
}

/// A new pseudo-terminal: (master, peer), both close-on-exec.
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt has no memory arguments.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: m is a new descriptor that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: m is an open pty master.
    if unsafe { libc::grantpt(m) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: m is an open pty master.
    if unsafe { libc::unlockpt(m) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: name is writable for its whole length, which is passed.
    let r = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string into name.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    let peer = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok((master, peer))
}

/// Makes `tty` this process's stdin, stdout, stderr and, in a new session,
/// its controlling terminal (window-size changes reach it as SIGWINCH).
pub fn take_terminal(tty: BorrowedFd<'_>) -> io::Result<()> {
    rustix::process::setsid()?;
    rustix::process::ioctl_tiocsctty(tty)?;
    onto_stdio(tty)
}

/// Makes `fd` this process's stdin, stdout and stderr.
pub fn onto_stdio(fd: BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    for n in 0..3 {
        // SAFETY: fd is open; 0-2 are this process's stdio, which it
        // replaces (the descriptors they held are closed).
        if unsafe { libc::dup2(fd.as_raw_fd(), n) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts the terminal `tty` in raw mode: the guest's own terminal does the
/// echo and line editing, so this one must pass bytes through untouched.
pub fn raw_mode(tty: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
    let mut t = tcgetattr(tty)?;
    t.make_raw();
    tcsetattr(tty, OptionalActions::Now, &t)?;
    Ok(())
}

pub use moat_sandbox::oci::{recv_fd, send_fd};
