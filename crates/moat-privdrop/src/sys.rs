//! The calls rustix does not offer (seccomp filters, `execve` with
//! prepared arrays, `close_range`, the raw `getcwd`, signal resets,
//! `poll`). All `unsafe` of this crate is here; nothing allocates.

use std::ffi::{c_char, CStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use crate::spec::Insn;

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Installs `prog` with `seccomp(SECCOMP_SET_MODE_FILTER)` on this thread;
/// with `log`, denied calls are logged (`SECCOMP_FILTER_FLAG_LOG`).
pub fn seccomp_install(prog: &[Insn], log: bool) -> io::Result<()> {
    let len = u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let fprog = libc::sock_fprog {
        len,
        // `Insn` has the layout of `sock_filter` (asserted in spec.rs).
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let flags = if log {
        libc::SECCOMP_FILTER_FLAG_LOG
    } else {
        0
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call, with its
    // length; the kernel copies the program and does not keep the pointer.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    })
    .map(drop)
}

/// `execve(2)` with argv and envp as NULL-terminated arrays of addresses
/// of C strings; returns only on failure, with the errno.
pub fn execve(path: &CStr, argv: &[usize], envp: &[usize]) -> i32 {
    debug_assert_eq!(argv.last(), Some(&0));
    debug_assert_eq!(envp.last(), Some(&0));
    const _: () = assert!(std::mem::size_of::<usize>() == std::mem::size_of::<*const c_char>());
    // SAFETY: `path` is a C string; `argv` and `envp` are NULL-terminated
    // arrays of addresses (pointer-sized, asserted above) of C strings
    // owned by the caller's `Exec`, which outlives the call.
    unsafe {
        libc::execve(
            path.as_ptr(),
            argv.as_ptr().cast::<*const c_char>(),
            envp.as_ptr().cast::<*const c_char>(),
        )
    };
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Marks every descriptor from 3 up close-on-exec except those in `keep`
/// (sorted, each >= 3). No allocation: safe between fork and exec.
pub fn cloexec_from_3_except(keep: &[RawFd]) -> io::Result<()> {
    let mut first: RawFd = 3;
    for &k in keep {
        if k > first {
            cloexec_range(first as u32, (k - 1) as u32)?;
        }
        first = first.max(k + 1);
    }
    cloexec_range(first as u32, u32::MAX)
}

/// `close_range(first, last, CLOSE_RANGE_CLOEXEC)`; before Linux 5.11,
/// `FD_CLOEXEC` descriptor by descriptor.
fn cloexec_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: no pointers; changes only descriptor flags of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            last,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) {
        return Err(e);
    }
    for fd in first..=last.min(65_535) {
        // SAFETY: fcntl on a descriptor number; EBADF for unused ones is ignored.
        unsafe { libc::fcntl(fd as RawFd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Whether the working directory is below this process's root: the raw
/// `getcwd` system call prefixes a path outside it with `(unreachable)`
/// (glibc hides that behind ENOENT; std behind an error).
pub fn cwd_is_inside_root() -> io::Result<bool> {
    let mut buf = [0u8; 4096];
    // SAFETY: the buffer and its length are valid for writes.
    let n = check(unsafe {
        libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr() as *mut c_char, buf.len())
    })?;
    let path = &buf[..n as usize];
    Ok(path.first() == Some(&b'/'))
}

/// Default dispositions for every signal and an empty mask: an ignored
/// signal (the Rust runtime ignores SIGPIPE) and the mask survive `execve`.
pub fn reset_signals() -> io::Result<()> {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; numbers the C
        // library reserves fail with EINVAL, which is ignored on purpose.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is initialised; the old mask is not asked for.
    let r = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    check(r as libc::c_long).map(drop)
}

/// Whether `fd` is readable, hung up or in error, without waiting.
pub fn ready_now(fd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents != 0
}
