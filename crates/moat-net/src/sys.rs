//! The system calls of this crate that need `unsafe`: hooks that run in a
//! forked child before `execve`, and the loopback ioctl.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
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
    Ok(rustix::thread::move_into_link_name_space(
        fd,
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?)
}

/// Brings the loopback interface of the calling thread's network
/// namespace up (the sandbox's container process calls it too, in its new
/// network namespace: no allocation).
pub fn loopback_up() -> io::Result<()> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let sock = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
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

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;
const CAP_NET_BIND_SERVICE: u32 = 10;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A process holding a new user namespace owned by `uid` (mapped as its
/// root: `0 uid 1`) and a network namespace owned by it. The caller reads
/// the namespaces from `/proc/<pid>/ns` once [`UsernsHolder::ready`]
/// returns, then drops the holder (which ends the process).
pub(crate) struct UsernsHolder {
    pid: libc::pid_t,
    /// Read end: one byte once the child has unshared.
    ready: OwnedFd,
    /// Write end: closed to let the child exit.
    release: Option<OwnedFd>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

impl UsernsHolder {
    /// Forks the holder: it becomes `uid`/`uid` with no groups, unshares a
    /// user and a network namespace (the network one owned by the new user
    /// one), says so and waits. The caller must be root.
    pub(crate) fn spawn(uid: u32) -> io::Result<UsernsHolder> {
        let (ready_r, ready_w) = pipe()?;
        let (release_r, release_w) = pipe()?;
        let (rw, rr, ww) = (
            ready_w.as_raw_fd(),
            release_r.as_raw_fd(),
            release_w.as_raw_fd(),
        );
        // SAFETY: the child only makes async-signal-safe system calls with
        // integer arguments and pointers to its own stack, then `_exit`s;
        // it never returns into Rust code of the (possibly multi-threaded)
        // parent.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: as above; the child's own copies of the descriptors.
            unsafe {
                // (No parent-death signal: the change of uid would clear
                // it; the release pipe's end-of-file ends the holder.)
                let ok = libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setresgid(uid, uid, uid) == 0
                    && libc::setresuid(uid, uid, uid) == 0
                    && libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) == 0;
                // Its copy of the release pipe's write end would keep the
                // read below from ever seeing end-of-file.
                libc::close(ww);
                let b = [u8::from(ok)];
                libc::write(rw, b.as_ptr().cast(), 1);
                let mut r = [0u8; 1];
                libc::read(rr, r.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        drop(ready_w);
        drop(release_r);
        Ok(UsernsHolder {
            pid,
            ready: ready_r,
            release: Some(release_w),
        })
    }

    /// Waits until the child has unshared; `Err` if it could not.
    pub(crate) fn ready(&self) -> io::Result<()> {
        let mut b = [0u8; 1];
        match (rustix::io::read(&self.ready, &mut b)?, b[0]) {
            (1, 1) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the namespace holder could not become its uid or unshare a user and a network namespace",
            )),
        }
    }

    pub(crate) fn pid(&self) -> libc::pid_t {
        self.pid
    }
}

impl Drop for UsernsHolder {
    fn drop(&mut self) {
        self.release.take();
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        }
    }
}

/// What [`jail_before_exec`] sets up for pasta (all paths prepared before
/// the fork: the hook allocates nothing).
pub(crate) struct JailPaths {
    pub uid: u32,
    /// The user namespace owning the container's network namespace.
    pub userns: RawFd,
    /// The directory holding the namespace's bound file, on the host.
    pub netns_dir: CString,
    /// The pid file, created by the caller and owned by `uid`.
    pub pid_file: CString,
}

use std::ffi::CString;

/// pasta's jail, set up in the forked child before `execve`, as root:
/// a mount namespace of its own (no propagation to the host) with a tmpfs
/// over `/dev/net` holding only a `tun` node owned by `uid`, the user
/// namespace at `/dev/net/userns`, the namespace directory at
/// `/dev/net/ns` and the pid file at `/dev/net/pid`; then uid and gid
/// `uid`, no groups, and of all capabilities only CAP_NET_BIND_SERVICE
/// (ambient, for published host ports below 1024). Register it before
/// [`helper_before_exec`]: a change of credentials clears the
/// parent-death signal, which that hook sets.
pub(crate) fn jail_before_exec(cmd: &mut Command, j: JailPaths) {
    let c = |s: &str| CString::new(s).unwrap_or_default();
    let (root, devnet, tmpfs, opts) = (
        c("/"),
        c("/dev/net"),
        c("tmpfs"),
        c("mode=0755,size=16k,nr_inodes=16"),
    );
    let (tun, userns_dst, ns_dst, pid_dst) = (
        c("/dev/net/tun"),
        c("/dev/net/userns"),
        c("/dev/net/ns"),
        c("/dev/net/pid"),
    );
    let userns_src = c(&format!("/proc/self/fd/{}", j.userns));
    // SAFETY: the hook runs in the forked child between fork and execve;
    // it makes only async-signal-safe system calls on the C strings built
    // above (owned by the closure) and on integers.
    unsafe {
        cmd.pre_exec(move || {
            let uid = j.uid;
            check(libc::unshare(libc::CLONE_NEWNS) as libc::c_long)?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) as libc::c_long)?;
            check(libc::mount(
                tmpfs.as_ptr(),
                devnet.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                opts.as_ptr().cast(),
            ) as libc::c_long)?;
            check(
                libc::mknod(tun.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(10, 200))
                    as libc::c_long,
            )?;
            check(libc::chown(tun.as_ptr(), uid, uid) as libc::c_long)?;
            for (src, dst) in [
                (userns_src.as_ptr(), userns_dst.as_ptr()),
                (j.pid_file.as_ptr(), pid_dst.as_ptr()),
            ] {
                let fd = check(libc::open(
                    dst,
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o600,
                ) as libc::c_long)?;
                libc::close(fd as libc::c_int);
                check(
                    libc::mount(src, dst, std::ptr::null(), libc::MS_BIND, std::ptr::null())
                        as libc::c_long,
                )?;
            }
            check(libc::mkdir(ns_dst.as_ptr(), 0o755) as libc::c_long)?;
            // Recursive: the namespace's file is a mount of its own.
            check(libc::mount(
                j.netns_dir.as_ptr(),
                ns_dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) as libc::c_long)?;
            check(libc::setgroups(0, std::ptr::null()) as libc::c_long)?;
            check(libc::setresgid(uid, uid, uid) as libc::c_long)?;
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) as libc::c_long)?;
            check(libc::setresuid(uid, uid, uid) as libc::c_long)?;
            let mut hdr = CapHeader {
                version: CAP_V3,
                pid: 0,
            };
            let bit = 1u32 << CAP_NET_BIND_SERVICE;
            let data = [
                CapData {
                    effective: bit,
                    permitted: bit,
                    inheritable: bit,
                },
                CapData {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                },
            ];
            check(libc::syscall(
                libc::SYS_capset,
                &mut hdr as *mut CapHeader,
                data.as_ptr(),
            ))?;
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                CAP_NET_BIND_SERVICE as libc::c_ulong,
                0,
                0,
            ) as libc::c_long)
            .map(drop)
        });
    }
}
