//! Network system calls of the host side: entering a network namespace on
//! one thread and creating a tap device there. All `unsafe` of
//! [`crate::net`].

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Moves the calling thread (only it: network namespaces are per thread)
/// into the network namespace `ns` refers to.
pub fn enter_netns(ns: &File) -> io::Result<()> {
    // SAFETY: setns takes a descriptor we hold open and a flag.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

/// Creates the tap device `name` (no packet information header) in the
/// calling thread's network namespace and returns its queue. The device is
/// not persistent: it disappears when the last copy of the descriptor
/// closes (when the VMM ends).
pub fn create_tap(name: &str) -> io::Result<OwnedFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: a constant C string; the flags ask for a new descriptor.
    let fd =
        check(unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a fresh descriptor that we now own.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads the name and flags from req.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &req) })?;
    Ok(tun)
}
