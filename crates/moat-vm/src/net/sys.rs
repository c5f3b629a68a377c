//! Network system calls of the host side: entering a network namespace on
//! one thread and creating a tap device there. All `unsafe` of
//! [`crate::net`].

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

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
    Ok(rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?)
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
    use rustix::fs::{Mode, OFlags};
    let tun = rustix::fs::open(
        c"/dev/net/tun",
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
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

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// In a network namespace of its own (root only): the thread enters
    /// it and makes a tap device there, which goes with its descriptor.
    #[test]
    fn a_tap_is_made_in_the_namespace_entered() {
        if !rustix::process::geteuid().is_root() || Command::new("ip").arg("-V").output().is_err() {
            println!("SKIP: needs root and ip(8)");
            return;
        }
        let ns = format!("moat-tap-test-{}", std::process::id());
        let ip = |args: &[&str]| Command::new("ip").args(args).output().unwrap();
        assert!(ip(&["netns", "add", &ns]).status.success());
        let file = File::open(format!("/run/netns/{ns}")).unwrap();
        let tap = std::thread::spawn(move || {
            enter_netns(&file).unwrap();
            create_tap("moattest0").unwrap()
        })
        .join()
        .unwrap();
        let shown = ip(&["-n", &ns, "link", "show", "moattest0"]);
        let host = ip(&["link", "show", "moattest0"]);
        drop(tap);
        let after = ip(&["-n", &ns, "link", "show", "moattest0"]);
        ip(&["netns", "delete", &ns]);
        assert!(shown.status.success(), "{shown:?}");
        assert!(!host.status.success(), "the tap is on the host");
        assert!(!after.status.success(), "the tap outlived its descriptor");
    }
}
