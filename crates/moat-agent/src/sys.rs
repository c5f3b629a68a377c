//! The agent's system calls. All `unsafe` of the agent lives here; every
//! wrapper returns `io::Result` and takes owned or borrowed values only.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (src, target, fstype, data) = (cstr(src)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

pub fn mknod(path: &str, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let path = cstr(path)?;
    // SAFETY: valid C string; makedev is a pure computation.
    check(unsafe { libc::mknod(path.as_ptr(), mode, libc::makedev(major, minor)) }).map(drop)
}

pub enum Fork {
    Child,
    Parent(libc::pid_t),
}

/// Forks the (single-threaded) agent.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the agent is single-threaded, so the child may keep using the
    // allocator and every library function.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

/// Reaps one exited child without blocking: `(pid, wait status)`.
pub fn reap() -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: status points to a valid int.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is an array of two ints as pipe2 requires.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pseudo-terminal pair `(master, slave)`.
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (0, 0);
    // SAFETY: m and s are valid out-pointers; name, termios and winsize may be NULL.
    check(unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    // SAFETY: openpty returned two fresh descriptors that we now own.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    set_cloexec(m.as_fd_raw())?;
    Ok((m, s))
}

/// A pseudo-terminal of the devpts instance whose `ptmx` is at `ptmx` (a
/// container's own, so that the process's `ttyname` resolves inside it):
/// the peer is opened from the master (`TIOCGPTPEER`), never by path, and
/// `ptmx` must be on a devpts.
pub fn openpty_in(ptmx: &str) -> io::Result<(OwnedFd, OwnedFd)> {
    let path =
        std::ffi::CString::new(ptmx).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: path is a valid NUL-terminated string.
    let m = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    })?;
    // SAFETY: open returned a fresh descriptor that we now own.
    let m = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: an all-zero statfs is valid storage for fstatfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: m is open; st is valid, writable storage.
    check(unsafe { libc::fstatfs(m.as_raw_fd(), &mut st) })?;
    if st.f_type != libc::DEVPTS_SUPER_MAGIC {
        return Err(io::Error::from_raw_os_error(libc::ENOTTY));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one c_int from a valid pointer.
    check(unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let s = check(unsafe {
        libc::ioctl(
            m.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        )
    })?;
    // SAFETY: the ioctl returned a fresh descriptor that we now own.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    Ok((m, s))
}

trait RawOf {
    fn as_fd_raw(&self) -> RawFd;
}
impl RawOf for OwnedFd {
    fn as_fd_raw(&self) -> RawFd {
        self.as_raw_fd()
    }
}

pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd number has no memory-safety requirements.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a borrowed, open fd.
    let fl = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) }).map(drop)
}

pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// New session; with `tty`, make it the controlling terminal.
pub fn setsid_ctty(tty: Option<BorrowedFd<'_>>) -> io::Result<()> {
    // SAFETY: setsid has no arguments.
    check(unsafe { libc::setsid() })?;
    if let Some(t) = tty {
        // SAFETY: TIOCSCTTY takes an int argument.
        check(unsafe { libc::ioctl(t.as_raw_fd(), libc::TIOCSCTTY, 0) })?;
    }
    Ok(())
}

pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on fd numbers; the caller owns both.
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: fds is a valid mutable slice of pollfd of the given length.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

pub fn kill(pid: libc::pid_t, sig: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety requirements.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Blocks SIGCHLD and returns a signalfd that reports it.
pub fn sigchld_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
    }
    // SAFETY: set is initialised; the old mask is not needed.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: -1 asks for a new fd; set is valid.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: signalfd returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the bytes of `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

pub fn power_off() -> ! {
    // SAFETY: sync and reboot have no memory-safety requirements.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure; PID 1 must not exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// `_exit` without running destructors (forked child).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// Seconds since the guest booted (`CLOCK_BOOTTIME`), for phase traces.
pub fn boottime_secs() -> f64 {
    // SAFETY: timespec is plain data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes only flags.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// Enters the namespace `fd` refers to (`nstype`: `CLONE_NEW*`).
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns on a borrowed, open namespace fd; no memory is passed.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

pub fn umount_detach(target: &str) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// Makes the current directory the root of this process: `MS_MOVE` of the
/// mount at `.` onto `/`, then `chroot(".")` (what switch_root does; the
/// initramfs itself cannot be pivoted away from).
pub fn move_to_root() -> io::Result<()> {
    // SAFETY: constant C strings; a NULL fstype and data are allowed for MS_MOVE.
    check(unsafe {
        libc::mount(
            c".".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    })?;
    // SAFETY: constant C strings.
    check(unsafe { libc::chroot(c".".as_ptr()) })?;
    // SAFETY: constant C string.
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map(drop)
}

/// `pivot_root` onto the mount at `new_root` (the old root is stacked under
/// it and detached), then `chdir("/")`. Needs a private mount namespace.
pub fn pivot_into(new_root: &str) -> io::Result<()> {
    let r = cstr(new_root)?;
    // SAFETY: valid C string.
    check(unsafe { libc::chdir(r.as_ptr()) })?;
    // SAFETY: constant C strings.
    check(unsafe {
        libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int
    })?;
    // SAFETY: constant C string.
    check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })?;
    // SAFETY: constant C string.
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map(drop)
}

/// Sets `CLOCK_REALTIME`.
pub fn set_realtime(secs: i64, nanos: u32) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: nanos as libc::c_long,
    };
    // SAFETY: ts is a valid timespec.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// Brings the loopback interface up (`SIOCSIFFLAGS` with `IFF_UP`).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes only integers.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket returned a fresh descriptor that we now own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in req.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the flags member of the union is the one SIOC[GS]IFFLAGS use.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the flags from req.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

pub fn chmod(path: &str, mode: libc::mode_t) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: valid C string.
    check(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

/// A detached copy of the mount at `path` (`open_tree(OPEN_TREE_CLONE)`).
pub fn open_tree_clone(path: &str) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let p = cstr(path)?;
    // SAFETY: valid C string; the flags ask for a new, close-on-exec fd.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        ) as libc::c_int
    })?;
    // SAFETY: open_tree returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches the detached mount `mnt` at `target`.
pub fn move_mount_to(mnt: BorrowedFd<'_>, target: &str) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let t = cstr(target)?;
    // SAFETY: mnt is an open mount fd, the paths are valid C strings.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ) as libc::c_int
    })
    .map(drop)
}

/// `openat2(2)` of an absolute `path` as an `O_PATH` directory, refusing
/// symbolic links (and magic links) at every component.
pub fn open_dir_no_symlinks(path: &str) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `p` and `how` are valid for the call; the size matches.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `RNDADDENTROPY` (`_IOW('R', 0x03, int[2])`) and `RNDRESEEDCRNG` (`_IO('R', 0x07)`).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `bytes` into the kernel's input pool, credited as full entropy,
/// then forces the CRNG to reseed from it: a VM restored from a template
/// stops producing the random numbers its template (and every other
/// clone) would have produced next.
pub fn reseed_rng(random: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: `info` is a rand_pool_info header followed by `buf_size`
    // bytes, alive for the call; the kernel only reads it.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) })?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _, 0) }).map(drop)
}

/// `struct dm_ioctl` (312 bytes) and the commands used here.
const DM_IOCTL_SIZE: usize = 312;
const DM_TARGET_SPEC_SIZE: usize = 40;
const DM_READONLY_FLAG: u32 = 1;

const fn dm_iowr(nr: libc::c_ulong) -> libc::c_ulong {
    (3 << 30) | ((DM_IOCTL_SIZE as libc::c_ulong) << 16) | (0xfd << 8) | nr
}
const DM_DEV_CREATE: libc::c_ulong = dm_iowr(3);
const DM_DEV_SUSPEND: libc::c_ulong = dm_iowr(6);
const DM_TABLE_LOAD: libc::c_ulong = dm_iowr(9);

/// A `dm_ioctl` header for device `name`, with `extra` bytes of data after it.
fn dm_header(name: &str, flags: u32, target_count: u32, extra: usize) -> io::Result<Vec<u8>> {
    if name.len() >= 128 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "device-mapper name too long",
        ));
    }
    let total = DM_IOCTL_SIZE + extra;
    let mut b = vec![0u8; total];
    // version 4.0.0: the kernel accepts any 4.x.
    b[0..4].copy_from_slice(&4u32.to_ne_bytes());
    b[12..16].copy_from_slice(&(total as u32).to_ne_bytes());
    b[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes());
    b[20..24].copy_from_slice(&target_count.to_ne_bytes());
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

fn dm_ioctl(control: BorrowedFd<'_>, cmd: libc::c_ulong, buf: &mut [u8]) -> io::Result<()> {
    // SAFETY: `buf` starts with a dm_ioctl whose data_size is buf.len(), so
    // the kernel reads and writes only inside it.
    check(unsafe { libc::ioctl(control.as_raw_fd(), cmd as _, buf.as_mut_ptr()) }).map(drop)
}

/// Creates read-only device-mapper device `name` with one target
/// (`sectors` long, of `target_type` with `params`) and activates it, as
/// `dmsetup create` does: the device appears as `/dev/dm-N`.
pub fn dm_create(
    control: BorrowedFd<'_>,
    name: &str,
    sectors: u64,
    target_type: &str,
    params: &str,
) -> io::Result<()> {
    let mut create = dm_header(name, 0, 0, 0)?;
    dm_ioctl(control, DM_DEV_CREATE, &mut create)?;
    // Target spec (sector_start, length, status, next, target_type[16]) and
    // the NUL-terminated parameters, padded to 8 bytes.
    let extra = (DM_TARGET_SPEC_SIZE + params.len() + 1).div_ceil(8) * 8;
    let mut load = dm_header(name, DM_READONLY_FLAG, 1, extra)?;
    let spec = &mut load[DM_IOCTL_SIZE..];
    spec[8..16].copy_from_slice(&sectors.to_ne_bytes());
    if target_type.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "target type too long",
        ));
    }
    spec[24..24 + target_type.len()].copy_from_slice(target_type.as_bytes());
    spec[DM_TARGET_SPEC_SIZE..DM_TARGET_SPEC_SIZE + params.len()]
        .copy_from_slice(params.as_bytes());
    dm_ioctl(control, DM_TABLE_LOAD, &mut load)?;
    // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the table goes live.
    let mut resume = dm_header(name, 0, 0, 0)?;
    dm_ioctl(control, DM_DEV_SUSPEND, &mut resume)
}

/// A `NETLINK_AUDIT` socket, non-blocking, with a receive buffer of
/// `rcvbuf` bytes (forced: the agent is root), so a burst of records waits
/// in it rather than in the kernel's backlog.
pub fn audit_socket(rcvbuf: usize) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before it is owned.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_AUDIT,
        )
    })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size = rcvbuf.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: the option value points at a c_int that outlives the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Sends one netlink message (header built from the arguments, then
/// `payload`) to the kernel.
pub fn netlink_send(
    fd: BorrowedFd<'_>,
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &[u8],
) -> io::Result<()> {
    let len = 16 + payload.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(payload);
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `msg` and `kernel` are valid for the lengths passed and
    // outlive the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram (non-blocking: `WouldBlock` when none waits).
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
