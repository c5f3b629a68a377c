//! The ioctls that configure an IPv4 interface (no netlink library in the
//! static agent): `SIOCSIF*` for address, netmask, MTU and flags,
//! `SIOCADDRT` for the default route. All `unsafe` of [`crate::net`].

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `struct rtentry` of `<net/route.h>` (glibc's libc crate lacks it).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // both are plain data; the kernel reads it by its family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// An `AF_INET` datagram socket to issue the ioctls on.
pub struct Ctl {
    sock: OwnedFd,
}

impl Ctl {
    pub fn new() -> io::Result<Ctl> {
        // SAFETY: socket takes only integers.
        let fd = check(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: socket returned a fresh descriptor that we now own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Ctl { sock })
    }

    fn ifreq(name: &str) -> io::Result<libc::ifreq> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *s as libc::c_char;
        }
        Ok(req)
    }

    fn set_addr(&self, name: &str, op: libc::c_ulong, a: Ipv4Addr) -> io::Result<()> {
        let mut req = Ctl::ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr_in(a);
        // SAFETY: SIOCSIFADDR / SIOCSIFNETMASK read an ifreq whose union
        // holds a sockaddr, as set above.
        check(unsafe { libc::ioctl(self.sock.as_raw_fd(), op, &req) }).map(drop)
    }

    pub fn set_address(&self, name: &str, a: Ipv4Addr) -> io::Result<()> {
        self.set_addr(name, libc::SIOCSIFADDR, a)
    }

    pub fn set_netmask(&self, name: &str, m: Ipv4Addr) -> io::Result<()> {
        self.set_addr(name, libc::SIOCSIFNETMASK, m)
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) -> io::Result<()> {
        let mut req = Ctl::ifreq(name)?;
        req.ifr_ifru.ifru_mtu =
            i32::try_from(mtu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: SIOCSIFMTU reads the mtu member of the union, set above.
        check(unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCSIFMTU, &req) }).map(drop)
    }

    /// The interface's MAC address.
    pub fn hwaddr(&self, name: &str) -> io::Result<[u8; 6]> {
        let mut req = Ctl::ifreq(name)?;
        // SAFETY: SIOCGIFHWADDR fills the hwaddr member of req.
        check(unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) })?;
        // SAFETY: the member SIOCGIFHWADDR wrote.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data.iter()) {
            *m = *d as u8;
        }
        Ok(mac)
    }

    /// Sets `IFF_UP` (and `IFF_RUNNING`) on the interface.
    pub fn up(&self, name: &str) -> io::Result<()> {
        let mut req = Ctl::ifreq(name)?;
        // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in req.
        check(unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
        // SAFETY: the flags member of the union is the one SIOC[GS]IFFLAGS use.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        // SAFETY: SIOCSIFFLAGS reads the flags from req.
        check(unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
    }

    /// Adds the default route through `gateway`.
    pub fn default_route(&self, gateway: Ipv4Addr) -> io::Result<()> {
        let any = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        let rt = RtEntry {
            rt_pad1: 0,
            rt_dst: any,
            rt_gateway: sockaddr_in(gateway),
            rt_genmask: any,
            rt_flags: RTF_UP | RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: std::ptr::null_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: SIOCADDRT reads one struct rtentry, laid out as the C
        // one; rt_dev is NULL (the kernel picks the interface by gateway).
        check(unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCADDRT, &rt) }).map(drop)
    }
}
