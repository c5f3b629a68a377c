//! The few calls of the runtime core that rustix does not wrap safely.

use std::io;

/// The result of [`fork`].
pub enum Forked {
    Child,
    Parent(i32),
}

/// `fork(2)`. The caller must be single-threaded (the monitor is: it runs
/// in a process of its own, started for it).
pub fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory-safety preconditions of its own; in a
    // single-threaded caller the child's copy of the address space is
    // consistent (no lock held by another thread).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// `_exit(2)`: ends the process without running destructors or atexit
/// handlers (the forked child must not flush the parent's buffers).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}
