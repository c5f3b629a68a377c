//! `filesystem.root: ephemeral`: an overlay whose lower layer is the
//! image root (the same read-only, idmapped clone a read-only container
//! gets) and whose upper and work directories live on a fresh tmpfs of the
//! policy's size. Made by the supervisor, as host root, from descriptors
//! only (no path into the store is resolved): the stored image is never
//! written, a full layer fails with ENOSPC inside the container and
//! nowhere else, and the whole layer is freed when the container's mount
//! namespace goes.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::sys::{self, FsContext};

const BENEATH: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// A detached overlay over `lower` (a detached mount of the image root)
/// with a `size_bytes` tmpfs above it. Its root directory has the owner
/// and mode of the image's.
pub(crate) fn overlay(lower: &OwnedFd, size_bytes: u64) -> std::io::Result<OwnedFd> {
    // An ordinary descriptor of the lower mount's root: fsconfig refuses
    // O_PATH ones.
    let lower_dir = sys::openat2(
        lower.as_fd(),
        ".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        BENEATH,
    )?;
    let meta = File::from(lower_dir.try_clone()?).metadata()?;

    let fs = FsContext::open("tmpfs")?;
    fs.set_string("size", &size_bytes.to_string())?;
    fs.set_string("mode", "700")?;
    let scratch = fs.mount(sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV)?;
    let dir = |name: &str| -> std::io::Result<OwnedFd> {
        sys::mkdirat(scratch.as_fd(), name, 0o700)?;
        sys::openat2(
            scratch.as_fd(),
            name,
            libc::O_RDONLY | libc::O_DIRECTORY,
            BENEATH,
        )
    };
    let upper = dir("upper")?;
    let work = dir("work")?;
    let upper_file = File::from(upper.try_clone()?);
    std::os::unix::fs::fchown(&upper_file, Some(meta.uid()), Some(meta.gid()))?;
    upper_file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    // The merged root shows the upper directory's times: the image's.
    upper_file.set_times(
        std::fs::FileTimes::new()
            .set_accessed(meta.accessed()?)
            .set_modified(meta.modified()?),
    )?;

    let ovl = FsContext::open("overlay")?;
    // `lowerdir+` by descriptor is Linux 6.13's: older kernels do not
    // know the key (EINVAL), and moat resolves no store path instead.
    ovl.set_fd("lowerdir+", lower_dir.as_fd()).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "`filesystem.root: ephemeral` needs Linux 6.13 or later (overlayfs layers given \
                 by descriptor); this kernel refused them: use the read-only root with \
                 `filesystem.writable` grants, or a newer kernel",
            )
        } else {
            e
        }
    })?;
    ovl.set_fd("upperdir", upper.as_fd())?;
    ovl.set_fd("workdir", work.as_fd())?;
    // No inode index or metadata-only copy-up: nothing that refers back
    // to the lower layer's inodes outlives this mount.
    ovl.set_string("index", "off")?;
    ovl.set_string("metacopy", "off")?;
    ovl.mount(sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV)
}
