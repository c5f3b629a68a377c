//! The only module of this crate with `unsafe` code: thin, typed wrappers
//! around the Linux system calls the sandbox needs and that neither `std`
//! nor a safe crate offers in the form we want (new mount API, `openat2`,
//! pidfds, seccomp, capabilities, pty peers). Every wrapper returns
//! `io::Result` and owns the file descriptors it creates.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{null, null_mut};

// New mount API constants (include/uapi/linux/mount.h); not all are in `libc`.
pub const OPEN_TREE_CLONE: u32 = 1;
pub const AT_RECURSIVE: u32 = 0x8000;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
const FSOPEN_CLOEXEC: u32 = 1;
const FSMOUNT_CLOEXEC: u32 = 1;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_SET_FD: u32 = 5;
const FSCONFIG_CMD_CREATE: u32 = 6;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

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

/// Number of threads of this process, from `/proc/self/status`.
fn thread_count() -> io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// The result of [`clone_child`] as seen by each side.
pub enum Forked {
    Parent { pid: i32, pidfd: OwnedFd },
    Child,
}

/// `clone(2)` without a new stack (fork semantics) with extra namespace
/// flags and `CLONE_PIDFD`. Refuses to run in a multi-threaded process, since
/// the child of a multi-threaded fork may only call async-signal-safe code
/// and ours allocates.
pub fn clone_child(ns_flags: libc::c_int) -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the sandbox must be started from a single-threaded process (this one has {threads} threads)"
        )));
    }
    let mut pidfd: libc::c_int = -1;
    let flags = (ns_flags | libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a NULL stack gives fork semantics (the child continues on a
    // copy-on-write copy of this stack); the process is single-threaded
    // (checked above), so no lock is held by a thread that does not exist in
    // the child. `pidfd` outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            null_mut::<libc::c_void>(),
            &mut pidfd as *mut libc::c_int,
            null_mut::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    let pid = check(ret)? as i32;
    if pid == 0 {
        return Ok(Forked::Child);
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor in `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Forked::Parent { pid, pidfd })
}

/// `setns(2)` into the namespaces `flags` of the process of `pidfd`, all
/// at once (the kernel joins the user namespace first).
pub fn setns(pidfd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: no pointers; the descriptor is borrowed for the call.
    check(unsafe { libc::setns(pidfd.as_raw_fd(), flags) } as libc::c_long).map(|_| ())
}

/// `clone(2)` with `CLONE_PARENT` (fork semantics): the new process is a
/// child of this process's parent, so that the parent can supervise it
/// while this process exits. Returns 0 in the new process, its pid here.
pub fn clone_parent() -> io::Result<i32> {
    // SAFETY: as in `clone_child`: a NULL stack gives fork semantics, and
    // the caller is a single-threaded fork.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            null_mut::<libc::c_void>(),
            null_mut::<libc::c_int>(),
            null_mut::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    check(ret).map(|pid| pid as i32)
}

/// `openat2(2)` with the given `resolve` flags; always `O_CLOEXEC`.
pub fn openat2(dir: BorrowedFd<'_>, path: &str, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let path = cstr(path)?;
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: `path` and `how` are valid for the duration of the call and
    // the size passed matches the struct.
    fd_from(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    })
}

/// `open_tree(2)`: `OPEN_TREE_CLONE` gives a detached copy of a mount.
pub fn open_tree(dir: BorrowedFd<'_>, path: &str, flags: u32) -> io::Result<OwnedFd> {
    let path = cstr(path)?;
    let mut flags = flags | libc::O_CLOEXEC as u32;
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH as u32;
    }
    // SAFETY: `path` is a valid C string; `dir` is a descriptor or AT_FDCWD.
    fd_from(unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), path.as_ptr(), flags) })
}

/// `move_mount(2)` of the mount `from` onto the object `to` (both fds, empty paths).
pub fn move_mount_fd(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    let empty = c"";
    // SAFETY: both descriptors are valid and borrowed for the call; the
    // paths are empty C strings interpreted with the *_EMPTY_PATH flags.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// `move_mount(2)` of the mount `from` onto the current working directory
/// (no path walk: nothing on the way needs to be searchable).
pub fn move_mount_to_cwd(from: BorrowedFd<'_>) -> io::Result<()> {
    let empty = c"";
    // SAFETY: `from` is valid; AT_FDCWD with an empty path and
    // MOVE_MOUNT_T_EMPTY_PATH names the working directory.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Sets only the effective uid (the real and saved uids stay, so the
/// change can be undone). From 0 to non-zero the kernel clears the
/// effective capabilities; back to 0 it restores them from the permitted set.
pub fn set_euid(uid: u32) -> io::Result<()> {
    // SAFETY: integer arguments; u32::MAX (-1) leaves real and saved alone.
    check(unsafe { libc::setresuid(u32::MAX, uid, u32::MAX) } as libc::c_long).map(drop)
}

/// The effective uid switched away from 0 for a while (to create a user
/// namespace owned by that uid and write its id maps), keeping the
/// effective capabilities through `SECBIT_NO_SETUID_FIXUP` where this
/// process may set it. Not undone on drop: the cloned child must not undo
/// anything of the parent's.
pub struct EuidSwitch {
    old_securebits: Option<libc::c_ulong>,
    /// The parent-death signal, which a credential change clears.
    pdeathsig: libc::c_int,
    parent: libc::pid_t,
}

const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;

impl EuidSwitch {
    pub fn to(uid: u32) -> io::Result<Self> {
        let mut pdeathsig: libc::c_int = 0;
        // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer,
        // which points to a live local.
        unsafe {
            libc::prctl(
                libc::PR_GET_PDEATHSIG,
                &mut pdeathsig as *mut libc::c_int,
                0,
                0,
                0,
            )
        };
        // SAFETY: getppid has no arguments.
        let parent = unsafe { libc::getppid() };
        // SAFETY: PR_GET_SECUREBITS takes no pointer arguments.
        let old = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
        let old_securebits = (old >= 0)
            .then_some(old as libc::c_ulong)
            .filter(|&o| prctl(libc::PR_SET_SECUREBITS, o | SECBIT_NO_SETUID_FIXUP, 0).is_ok());
        if let Err(e) = set_euid(uid) {
            if let Some(o) = old_securebits {
                let _ = prctl(libc::PR_SET_SECUREBITS, o, 0);
            }
            return Err(e);
        }
        Ok(Self {
            old_securebits,
            pdeathsig,
            parent,
        })
    }

    /// Back to effective uid 0 and the previous securebits, with the
    /// parent-death signal armed again (a detached container's supervisor
    /// must die with its monitor); if the parent died in between, the
    /// signal is raised now.
    pub fn restore(self) -> io::Result<()> {
        set_euid(0)?;
        if let Some(o) = self.old_securebits {
            prctl(libc::PR_SET_SECUREBITS, o, 0)?;
        }
        if self.pdeathsig != 0 {
            set_pdeathsig(self.pdeathsig)?;
            // SAFETY: getppid has no arguments.
            if unsafe { libc::getppid() } != self.parent {
                // SAFETY: kill with this process's own pid and a signal number.
                unsafe { libc::kill(libc::getpid(), self.pdeathsig) };
            }
        }
        Ok(())
    }
}

/// `fchdir(2)`.
pub fn fchdir(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `dir` is a valid descriptor.
    check(unsafe { libc::fchdir(dir.as_raw_fd()) } as libc::c_long).map(drop)
}

/// `mount_setattr(2)` on the mount referred to by `fd` (optionally recursive).
pub fn mount_setattr(fd: BorrowedFd<'_>, set: u64, clear: u64, recursive: bool) -> io::Result<()> {
    mount_setattr_raw(fd, set, clear, recursive, 0)
}

/// `mount_setattr(2)` with `MOUNT_ATTR_IDMAP`: ids on the (detached) mount
/// `fd` are shown through the mapping of the user namespace `userns`.
pub fn mount_setattr_idmap(
    fd: BorrowedFd<'_>,
    set: u64,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> io::Result<()> {
    mount_setattr_raw(
        fd,
        set | MOUNT_ATTR_IDMAP,
        0,
        recursive,
        userns.as_raw_fd() as u64,
    )
}

// Loop devices (include/uapi/linux/loop.h).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Binds `file` to a free loop device that clears itself when its last
/// user (the filesystem mounted from it) goes away; returns the device's
/// open descriptor and number. The device holds its own reference to the
/// open file (and so to any lock on it) until then.
pub fn loop_attach(file: BorrowedFd<'_>) -> io::Result<(OwnedFd, u32)> {
    let ctl: OwnedFd = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?
        .into();
    // std opens every file close-on-exec.
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    // Another process may take the free device between the two calls.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let n =
            check(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) } as libc::c_long)?
                as u32;
        let dev: OwnedFd = std::fs::File::options()
            .read(true)
            .write(true)
            .open(format!("/dev/loop{n}"))?
            .into();
        // SAFETY: plain data; all-zero is a valid value.
        let mut cfg: LoopConfig = unsafe { zeroed() };
        cfg.fd = file.as_raw_fd() as u32;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: `cfg` is a properly laid out `struct loop_config` that
        // lives for the call.
        let r = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                LOOP_CONFIGURE as _,
                &cfg as *const LoopConfig,
            )
        };
        if r == 0 {
            return Ok((dev, n));
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EBUSY) {
            return Err(last);
        }
    }
    Err(last)
}

fn mount_setattr_raw(
    fd: BorrowedFd<'_>,
    set: u64,
    clear: u64,
    recursive: bool,
    userns_fd: u64,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd,
    };
    let mut flags = libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: `attr` is a properly laid out `struct mount_attr` (VER0 size)
    // that lives for the call; the path is an empty C string.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// A filesystem context being configured (`fsopen(2)`).
pub struct FsContext(OwnedFd);

impl FsContext {
    pub fn open(fstype: &str) -> io::Result<Self> {
        let name = cstr(fstype)?;
        // SAFETY: `name` is a valid C string.
        Ok(Self(fd_from(unsafe {
            libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC)
        })?))
    }

    pub fn set_string(&self, key: &str, value: &str) -> io::Result<()> {
        let (k, v) = (cstr(key)?, cstr(value)?);
        // SAFETY: the context fd is owned; key and value are valid C strings.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.0.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        })?;
        Ok(())
    }

    /// Sets `key` to an open file (overlayfs layers, Linux 6.13+): no
    /// path is resolved, so a detached mount can be a layer.
    pub fn set_fd(&self, key: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        let k = cstr(key)?;
        // SAFETY: the context fd is owned; the key is a valid C string and
        // `fd` a valid descriptor for the duration of the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.0.as_raw_fd(),
                FSCONFIG_SET_FD,
                k.as_ptr(),
                null::<libc::c_void>(),
                fd.as_raw_fd(),
            )
        })?;
        Ok(())
    }

    /// Creates the superblock and returns a detached mount of it.
    pub fn mount(self, attrs: u64) -> io::Result<OwnedFd> {
        // SAFETY: the context fd is owned; no pointers are passed.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.0.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                null::<libc::c_char>(),
                null::<libc::c_void>(),
                0,
            )
        })?;
        // SAFETY: the context fd is owned and configured.
        fd_from(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.0.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                attrs,
            )
        })
    }
}

/// Makes every mount of this (new) mount namespace private, so nothing we do
/// propagates back to the host.
pub fn make_rprivate() -> io::Result<()> {
    // SAFETY: constant C strings; a NULL source/fstype/data is valid for a
    // propagation change.
    let ret = unsafe {
        libc::mount(
            null(),
            c"/".as_ptr(),
            null(),
            libc::MS_REC | libc::MS_PRIVATE,
            null(),
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// `fchdir(root); pivot_root(".", "."); umount2(".", MNT_DETACH); chdir("/")`:
/// the old root is stacked under the new one and then detached.
pub fn pivot_into(root: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `root` is a valid directory descriptor.
    check(unsafe { libc::fchdir(root.as_raw_fd()) } as libc::c_long)?;
    // SAFETY: constant C strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) })?;
    // SAFETY: constant C string.
    check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } as libc::c_long)?;
    // SAFETY: constant C string.
    check(unsafe { libc::chdir(c"/".as_ptr()) } as libc::c_long)?;
    Ok(())
}

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: no pointers.
    fd_from(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: a NULL siginfo means "as kill(2) would send it".
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// `waitid(P_PIDFD)`; `None` when `nohang` and the process still runs.
pub fn wait_pidfd(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<Option<Exit>> {
    // SAFETY: siginfo_t is plain data; zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { zeroed() };
    let mut options = libc::WEXITED;
    if nohang {
        options |= libc::WNOHANG;
    }
    loop {
        // SAFETY: `info` is valid for writes for the duration of the call.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                options,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        break;
    }
    // SAFETY: waitid filled `info` (or left si_pid zero with WNOHANG).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if info.si_code == libc::CLD_EXITED {
        Exit::Code(status)
    } else {
        Exit::Signal(status)
    }))
}

/// A set of signals.
pub struct SigSet(libc::sigset_t);

impl SigSet {
    pub fn of(signals: &[i32]) -> Self {
        // SAFETY: sigemptyset initialises the set in place.
        let mut set: libc::sigset_t = unsafe { zeroed() };
        // SAFETY: `set` is a valid sigset_t.
        unsafe { libc::sigemptyset(&mut set) };
        for &s in signals {
            // SAFETY: `set` is initialised; invalid numbers just fail.
            unsafe { libc::sigaddset(&mut set, s) };
        }
        Self(set)
    }
}

/// Blocks `set` for this thread and returns the previous mask.
pub fn block_signals(set: &SigSet) -> io::Result<SigSet> {
    let mut old = SigSet::of(&[]);
    // SAFETY: both sets are valid sigset_t values.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set.0, &mut old.0) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(old)
}

/// Restores a mask returned by [`block_signals`].
pub fn set_signal_mask(set: &SigSet) -> io::Result<()> {
    // SAFETY: valid sigset_t; old mask not requested.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set.0, null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// A `signalfd(2)` for a blocked set.
pub fn signalfd(set: &SigSet) -> io::Result<OwnedFd> {
    // SAFETY: valid sigset_t; -1 creates a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    fd_from(fd as libc::c_long)
}

/// Reads one pending signal number from a signalfd, if any.
pub fn read_signal(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    // SAFETY: plain data.
    let mut info: libc::signalfd_siginfo = unsafe { zeroed() };
    // SAFETY: the buffer is exactly one signalfd_siginfo.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            &mut info as *mut _ as *mut libc::c_void,
            size_of::<libc::signalfd_siginfo>(),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(err);
    }
    Ok(Some(info.ssi_signo as i32))
}

/// `poll(2)` on borrowed descriptors for readability; returns which are
/// ready (readable, hung up or in error).
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs.
    let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(err);
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

fn prctl(op: i32, a: libc::c_ulong, b: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the operations used here take integer arguments only.
    check(unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) } as libc::c_long)
        .map(drop)
}

pub fn set_pdeathsig(sig: i32) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0)
}
pub fn set_dumpable(on: bool) -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, on as libc::c_ulong, 0)
}

pub fn getrlimit(resource: u32) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is valid for writes.
    check(unsafe { libc::getrlimit(resource, &mut lim) } as libc::c_long)?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

pub fn set_ids(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: `groups` is a valid slice of gid_t for its length.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } as libc::c_long)?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) } as libc::c_long)?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) } as libc::c_long)?;
    Ok(())
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } as libc::c_long).map(drop)
}

pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: integer argument only.
    check(unsafe { libc::unshare(flags) } as libc::c_long).map(drop)
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() } as libc::c_long).map(drop)
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket creation.
    let sock =
        fd_from(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
                as libc::c_long,
        )?;
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as libc::c_long)?;
    // SAFETY: reading/writing the flags member of the union we just filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as libc::c_long)?;
    Ok(())
}

/// Opens a new pty pair from `ptmx` (the host's `/dev/ptmx`): (master, peer).
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: constant C string.
    let master = fd_from(unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    } as libc::c_long)?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } as libc::c_long)?;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let peer = fd_from(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    } as libc::c_long)?;
    Ok((master, peer))
}

/// Sends descriptor `fd` (SCM_RIGHTS) over the connected socket `sock`.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [fd];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        sock,
        &[io::IoSlice::new(b"t")],
        &mut cmsg,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Receives one descriptor sent with [`send_fd`]; `None` at EOF.
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut buf = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    rustix::net::recvmsg(sock, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC)?;
    let mut got = None;
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                got.get_or_insert(f);
            }
        }
    }
    Ok(got)
}

/// A connected pair of `SOCK_SEQPACKET` unix sockets, close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The number N of a pty master's peer `/dev/pts/N` (`TIOCGPTN`).
pub fn pty_number(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } as libc::c_long)?;
    Ok(n)
}

/// Makes `fd` (a terminal) the controlling terminal of this session.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } as libc::c_long).map(drop)
}

pub fn dup2(from: BorrowedFd<'_>, to: RawFd) -> io::Result<()> {
    // SAFETY: `from` is valid; `to` is one of the standard descriptors.
    check(unsafe { libc::dup2(from.as_raw_fd(), to) } as libc::c_long).map(drop)
}

pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

pub fn get_winsize(fd: RawFd) -> Option<libc::winsize> {
    // SAFETY: plain data.
    let mut ws: libc::winsize = unsafe { zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (ret == 0).then_some(ws)
}

pub fn set_winsize(fd: BorrowedFd<'_>, ws: &libc::winsize) {
    // SAFETY: TIOCSWINSZ reads one winsize; failure is harmless.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws) };
}

/// Terminal attributes saved by [`make_raw`], restored by [`restore_termios`].
pub struct Termios(libc::termios);

pub fn make_raw(fd: RawFd) -> io::Result<Termios> {
    // SAFETY: plain data.
    let mut t: libc::termios = unsafe { zeroed() };
    // SAFETY: `t` is valid for writes.
    check(unsafe { libc::tcgetattr(fd, &mut t) } as libc::c_long)?;
    let saved = Termios(t);
    // SAFETY: cfmakeraw edits `t` in place.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: `t` is a valid termios.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } as libc::c_long)?;
    Ok(saved)
}

pub fn restore_termios(fd: RawFd, saved: &Termios) {
    // SAFETY: `saved` came from tcgetattr.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved.0) };
}

/// Leaves the process immediately, without running destructors or atexit
/// handlers that belong to the parent's copy of the state.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Writes `buf` to a raw descriptor the caller owns (used across the clone boundary).
pub fn write_fd(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    check(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) } as libc::c_long)
        .map(|n| n as usize)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: `n` is a valid C string; `dir` a valid directory descriptor.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), mode) } as libc::c_long).map(drop)
}

pub fn symlinkat(target: &str, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let (t, n) = (cstr(target)?, cstr(name)?);
    // SAFETY: valid C strings and directory descriptor.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) } as libc::c_long)
        .map(drop)
}

/// Creates an empty regular file (a bind-mount target) in a directory we own.
pub fn create_file(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid C string and directory descriptor; the returned fd is
    // closed right away.
    let fd = fd_from(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    } as libc::c_long)?;
    drop(fd);
    Ok(())
}

/// `AT_FDCWD` as a borrowed descriptor, for the `*at` wrappers.
pub fn cwd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel the kernel interprets as "the current
    // directory"; it is never closed.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}
