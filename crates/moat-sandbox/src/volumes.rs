//! Volume mounts, made by the supervisor (host root, host mount namespace)
//! before the container process exists, as detached mounts it hands over;
//! the container process only attaches them onto targets resolved inside
//! its root (`mounts::build`).
//!
//! - A host directory is opened from `/` with `openat2(RESOLVE_NO_SYMLINKS
//!   | RESOLVE_NO_MAGICLINKS)`: no component of the authorised path may be
//!   a symbolic link, so the directory opened is the one the path names
//!   (policy and flags refuse `..`); the mount is cloned from that
//!   descriptor (`open_tree`), never from the path again.
//! - A named volume's image is locked (one container at a time), checked
//!   with `e2fsck` (a vm guest may have written hostile metadata that the
//!   host kernel would otherwise parse), bound to a self-clearing loop
//!   device and mounted with `fsmount`: it never appears in the host's
//!   mount table.
//! - Both are idmapped onto the container's id range: a file owned by host
//!   (on disk) id N is seen as id N in the container, and in a vm guest,
//!   which mounts the same ext4 images without any mapping.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use moat_image::fsat::{self, WalkError};
use moat_policy::plan::MountPlan;
use moat_runtime::volume_store;

use crate::idmap::{idmap_mount, IdMap};
use crate::sys::{self, FsContext};
use crate::SandboxError;

/// The detached mounts of `mounts`' volumes, in order (tmpfs mounts have
/// none).
pub(crate) fn prepare(mounts: &[MountPlan], map: &IdMap) -> Result<Vec<OwnedFd>, SandboxError> {
    let mut out = Vec::new();
    for m in mounts {
        match m {
            MountPlan::Tmpfs { .. } => {}
            MountPlan::Volume {
                source, read_only, ..
            } => out.push(host_dir(source, *read_only, map)?),
            MountPlan::Named {
                name,
                dir,
                read_only,
                ..
            } => out.push(named(name, Path::new(dir), *read_only, map)?),
        }
    }
    Ok(out)
}

fn attrs(read_only: bool) -> u64 {
    let mut set = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if read_only {
        set |= sys::MOUNT_ATTR_RDONLY;
    }
    set
}

fn host_dir(source: &str, read_only: bool, map: &IdMap) -> Result<OwnedFd, SandboxError> {
    let what = || format!("host directory {source}");
    let dir = fsat::open_host_dir(source)
    .map_err(|e| match e {
        WalkError::Symlink(_) => SandboxError::Volume {
            what: what(),
            why: "a component of the path is a symbolic link; moat never follows links in a volume's host path: name the real directory".into(),
        },
        WalkError::NotDir(_) => SandboxError::Volume {
            what: what(),
            why: "not a directory (a volume's source is a directory)".into(),
        },
        WalkError::Missing(_) => SandboxError::VolumeIo {
            what: what(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        },
        WalkError::Io { source, .. } | WalkError::Create { source, .. } => {
            SandboxError::VolumeIo {
                what: what(),
                source,
            }
        }
    })?;
    let mnt =
        sys::open_tree(dir.as_fd(), "", sys::OPEN_TREE_CLONE | sys::AT_RECURSIVE).map_err(|e| {
            SandboxError::VolumeIo {
                what: format!("{}: cloning its mount", what()),
                source: e,
            }
        })?;
    idmap_mount(mnt.as_fd(), attrs(read_only), true, map).map_err(|e| SandboxError::Volume {
        what: what(),
        why: format!(
            "its filesystem ({}) cannot be idmapped ({e}), so its files' owners cannot be shown to the container as they are on the host; moat does not mount it unmapped: use a named volume (`moat volume create`) or a directory on a filesystem that supports idmapped mounts (ext4, xfs, btrfs, tmpfs)",
            fs_type(&dir)
        ),
    })?;
    Ok(mnt)
}

fn named(name: &str, dir: &Path, read_only: bool, map: &IdMap) -> Result<OwnedFd, SandboxError> {
    let what = || format!("{name:?}");
    // Read-write even for a read-only mount: e2fsck may have to replay the
    // journal, and the mount's own read-only attribute is what the
    // container meets.
    let disk = volume_store::open_locked(dir, name, false)?;
    volume_store::fsck(dir)?;
    let (loopdev, n) = sys::loop_attach(disk.as_fd()).map_err(|e| SandboxError::VolumeIo {
        what: format!("{}: attaching a loop device", what()),
        source: e,
    })?;
    let mnt = FsContext::open("ext4")
        .and_then(|fs| {
            fs.set_string("source", &format!("/dev/loop{n}"))?;
            fs.set_string("errors", "remount-ro")?;
            fs.mount(attrs(read_only))
        })
        .map_err(|e| SandboxError::VolumeIo {
            what: format!("{}: mounting its ext4 filesystem", what()),
            source: e,
        })?;
    // The mount now holds the device (which holds the locked file); the
    // device clears itself once the container's mount is gone.
    drop(loopdev);
    drop(disk);
    idmap_mount(mnt.as_fd(), attrs(read_only), false, map).map_err(|e| SandboxError::VolumeIo {
        what: format!("{}: idmapping its mount", what()),
        source: e,
    })?;
    Ok(mnt)
}

/// The filesystem type of `fd`, for error messages.
fn fs_type(fd: &OwnedFd) -> String {
    match rustix::fs::fstatfs(fd) {
        Ok(st) => format!("type 0x{:x}", st.f_type),
        Err(_) => "unknown type".into(),
    }
}
