//! The only module of this crate with `unsafe` code: thin, typed wrappers
//! around the Linux system calls the sandbox needs and that neither `std`
//! nor a safe crate offers in the form we want (new mount API, `openat2`,
//! pidfds, seccomp, capabilities, pty peers). Every wrapper returns
//! `io::Result` and owns the file descriptors it creates.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{null, null_mut};

mod creds;
mod fdpass;
mod loopdev;
mod mount;
mod process;
mod signal;
mod tty;

pub use creds::*;
pub use fdpass::*;
pub use loopdev::*;
pub use mount::*;
pub use process::*;
pub use signal::*;
pub use tty::*;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd_from(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing
    // else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
