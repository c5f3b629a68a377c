//! A pod's share: how the further containers of a Kubernetes pod reach the
//! micro-VM its sandbox (pause) container booted (QEMU's microvm has no hotplug, so
//! no disk can be added once it runs).
//!
//! The directory `<dir>/share` is a bind mount of `<dir>/src`, read-only,
//! `nosuid,nodev`, and *shared*; its own virtiofsd serves it from a mount
//! namespace that is a slave of the host's, so a mount made below it on
//! the host later reaches the daemon, and the guest (tag `moat-pod`).
//! A container joining the pod gets `<dir>/src/<id>/rootfs` and its
//! rootfs bound (`nosuid,nodev`) on `<dir>/share/<id>/rootfs`, its host
//! directories on `<dir>/share/<id>/vol-<n>`;
//! the agent pivots into it. The share's own directories are read-only
//! to the guest: it writes only into the roots, as the containers do.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

/// The share of one pod, under `dir`.
#[derive(Debug, Clone)]
pub struct Share {
    dir: PathBuf,
}

fn err(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Share {
    pub fn at(dir: &Path) -> Share {
        Share {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory the daemon serves.
    pub fn served(&self) -> PathBuf {
        self.dir.join("share")
    }

    fn src(&self) -> PathBuf {
        self.dir.join("src")
    }

    /// Makes the share (see the module docs); an existing one is taken
    /// down first.
    pub fn make(&self) -> io::Result<()> {
        self.remove();
        let (src, share) = (self.src(), self.served());
        for d in [&self.dir, &src, &share] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(d)
                .map_err(err(format!("making {}", d.display())))?;
        }
        rustix::mount::mount_bind(&src, &share).map_err(|e| {
            err(format!("binding {} on {}", src.display(), share.display()))(e.into())
        })?;
        let ro = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
        let done = rustix::mount::mount_remount(&share, ro | MountFlags::BIND, c"")
            .and_then(|()| rustix::mount::mount_change(&share, MountPropagationFlags::SHARED));
        if let Err(e) = done {
            self.remove();
            return Err(err(format!(
                "making {} a read-only shared mount",
                share.display()
            ))(e.into()));
        }
        Ok(())
    }

    /// Takes the share down: every member's root, the share, the
    /// directories. Errors are ignored (a best effort at teardown).
    pub fn remove(&self) {
        if let Ok(entries) = std::fs::read_dir(self.src()) {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str() {
                    self.leave(id);
                }
            }
        }
        let _ = rustix::mount::unmount(self.served(), UnmountFlags::DETACH);
        let _ = std::fs::remove_dir(self.served());
        let _ = std::fs::remove_dir(self.src());
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// Puts container `id`'s `rootfs` on the share (see the module docs).
    pub fn join(&self, id: &str, rootfs: &Path) -> io::Result<()> {
        if !moat_agent::proto::Member::valid_name(id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "container id {id:?} cannot name a pod member (letters, digits, '-', '_', '.')"
                ),
            ));
        }
        let mine = self.src().join(id).join("rootfs");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&mine)
            .map_err(err(format!("making {}", mine.display())))?;
        let target = self.served().join(id).join("rootfs");
        // Read-only stays read-only.
        let ro = rustix::fs::statvfs(rootfs)
            .map(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
            .map_err(|e| err(format!("reading {}", rootfs.display()))(e.into()))?;
        let dir =
            std::fs::File::open(rootfs).map_err(err(format!("opening {}", rootfs.display())))?;
        if let Err(e) = attach(std::os::fd::AsFd::as_fd(&dir), &target, ro) {
            self.leave(id);
            return Err(err(format!(
                "binding {} on {}",
                rootfs.display(),
                target.display()
            ))(e));
        }
        Ok(())
    }

    /// Puts host directory `source` on the share as container `id`'s
    /// volume `n` (`<id>/vol-<n>`), opened without following any link (as
    /// every host directory moat gives a VM), not recursive, `nosuid,nodev`,
    /// read-only on the host side too with `read_only`. Call after
    /// [`Share::join`].
    pub fn join_dir(&self, id: &str, n: usize, source: &str, read_only: bool) -> io::Result<()> {
        let name = format!("vol-{n}");
        let fd = moat_image::fsat::open_host_dir(source).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("host directory {source}: {}", walk_reason(&e)),
            )
        })?;
        let mine = self.src().join(id).join(&name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&mine)
            .map_err(err(format!("making {}", mine.display())))?;
        let target = self.served().join(id).join(&name);
        attach(std::os::fd::AsFd::as_fd(&fd), &target, read_only)
            .map_err(err(format!("binding {source} on {}", target.display())))
    }

    /// Takes container `id`'s root and volumes off the share (the unmount
    /// reaches the daemon; a guest still using them keeps them until it
    /// lets go).
    pub fn leave(&self, id: &str) {
        let mine = self.src().join(id);
        let names: Vec<std::ffi::OsString> = std::fs::read_dir(&mine)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        for name in names {
            let target = self.served().join(id).join(&name);
            // Mounts may stack: unmount until nothing is left there.
            while rustix::mount::unmount(&target, UnmountFlags::DETACH).is_ok() {}
            let _ = std::fs::remove_dir(mine.join(&name));
        }
        let _ = std::fs::remove_dir(&mine);
    }
}

/// Attaches a copy of the mount at `dir` (not recursive) on `target`,
/// `nosuid,nodev` and read-only with `read_only`, the attributes set
/// before it is attached: a remount afterwards would not propagate, and
/// the daemon's copy would keep the old ones.
fn attach(dir: std::os::fd::BorrowedFd<'_>, target: &Path, read_only: bool) -> io::Result<()> {
    let mut attrs = crate::sys::MOUNT_ATTR_NOSUID | crate::sys::MOUNT_ATTR_NODEV;
    if read_only {
        attrs |= crate::sys::MOUNT_ATTR_RDONLY;
    }
    let tree = crate::sys::clone_mount(dir, attrs)?;
    rustix::mount::move_mount(
        &tree,
        "",
        rustix::fs::CWD,
        target,
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// Why a host directory could not be opened, in words.
fn walk_reason(e: &moat_image::fsat::WalkError) -> String {
    use moat_image::fsat::WalkError;
    let path = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    match e {
        WalkError::Symlink(p) => format!(
            "{} is a symbolic link; moat never follows links in a volume's host path: name the real directory",
            path(p)
        ),
        WalkError::NotDir(p) => format!("{} is not a directory", path(p)),
        WalkError::Missing(p) => format!("{} does not exist", path(p)),
        WalkError::Io { source, .. } | WalkError::Create { source, .. } => source.to_string(),
    }
}
