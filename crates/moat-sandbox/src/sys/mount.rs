//! The new mount API, `openat2` and directory-relative file creation:
//! how the sandbox builds its root from descriptors.

use super::*;

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

/// `openat2(2)` with the given `resolve` flags; always `O_CLOEXEC`
/// (rustix's call, with libc's flag numbers the callers use).
pub fn openat2(dir: BorrowedFd<'_>, path: &str, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let flags = OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC;
    let resolve = ResolveFlags::from_bits_retain(resolve);
    Ok(rustix::fs::openat2(
        dir,
        path,
        flags,
        Mode::empty(),
        resolve,
    )?)
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
