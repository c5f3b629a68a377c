//! The new mount API, `openat2` and directory-relative file creation:
//! how the sandbox builds its root from descriptors.

use super::*;

// New mount API constants (include/uapi/linux/mount.h); not all are in `libc`.
pub const OPEN_TREE_CLONE: u32 = 1;
pub const AT_RECURSIVE: u32 = 0x8000;
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
    use rustix::mount::OpenTreeFlags;
    let mut flags = OpenTreeFlags::from_bits_retain(flags) | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if path.is_empty() {
        flags |= OpenTreeFlags::AT_EMPTY_PATH;
    }
    Ok(rustix::mount::open_tree(dir, path, flags)?)
}

/// `move_mount(2)` of the mount `from` onto the object `to` (both fds, empty paths).
pub fn move_mount_fd(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::mount::MoveMountFlags;
    Ok(rustix::mount::move_mount(
        from,
        c"",
        to,
        c"",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?)
}

/// `move_mount(2)` of the mount `from` onto the current working directory
/// (no path walk: nothing on the way needs to be searchable).
pub fn move_mount_to_cwd(from: BorrowedFd<'_>) -> io::Result<()> {
    // AT_FDCWD with an empty path and MOVE_MOUNT_T_EMPTY_PATH names the
    // working directory.
    move_mount_fd(from, rustix::fs::CWD)
}

/// `fchdir(2)`.
pub fn fchdir(dir: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::process::fchdir(dir)?)
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
        Ok(Self(rustix::mount::fsopen(
            fstype,
            rustix::mount::FsOpenFlags::FSOPEN_CLOEXEC,
        )?))
    }

    pub fn set_string(&self, key: &str, value: &str) -> io::Result<()> {
        Ok(rustix::mount::fsconfig_set_string(&self.0, key, value)?)
    }

    /// Sets `key` to an open file (overlayfs layers, Linux 6.13+): no
    /// path is resolved, so a detached mount can be a layer.
    pub fn set_fd(&self, key: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(rustix::mount::fsconfig_set_fd(&self.0, key, fd)?)
    }

    /// Creates the superblock and returns a detached mount of it.
    pub fn mount(self, attrs: u64) -> io::Result<OwnedFd> {
        use rustix::mount::{FsMountFlags, MountAttrFlags};
        rustix::mount::fsconfig_create(&self.0)?;
        let attrs = u32::try_from(attrs).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(rustix::mount::fsmount(
            &self.0,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::from_bits_retain(attrs),
        )?)
    }
}

/// Makes every mount of this (new) mount namespace private, so nothing we do
/// propagates back to the host.
pub fn make_rprivate() -> io::Result<()> {
    use rustix::mount::MountPropagationFlags;
    Ok(rustix::mount::mount_change(
        c"/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )?)
}

/// `fchdir(root); pivot_root(".", "."); umount2(".", MNT_DETACH); chdir("/")`:
/// the old root is stacked under the new one and then detached.
pub fn pivot_into(root: BorrowedFd<'_>) -> io::Result<()> {
    rustix::process::fchdir(root)?;
    rustix::process::pivot_root(c".", c".")?;
    rustix::mount::unmount(c".", rustix::mount::UnmountFlags::DETACH)?;
    rustix::process::chdir(c"/")?;
    Ok(())
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(
        dir,
        name,
        rustix::fs::Mode::from_raw_mode(mode),
    )?)
}

pub fn symlinkat(target: &str, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

/// Creates an empty regular file (a bind-mount target) in a directory we own.
pub fn create_file(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    use rustix::fs::OFlags;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(mode),
    )?;
    drop(fd);
    Ok(())
}

/// `AT_FDCWD` as a borrowed descriptor, for the `*at` wrappers.
pub fn cwd() -> BorrowedFd<'static> {
    rustix::fs::CWD
}
