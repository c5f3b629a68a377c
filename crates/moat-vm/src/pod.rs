//! A pod's share: how the further containers of a Kubernetes pod reach the
//! micro-VM its first container booted (QEMU's microvm has no hotplug, so
//! no disk can be added once it runs).
//!
//! The directory `<dir>/share` is a bind mount of `<dir>/src`, read-only,
//! `nosuid,nodev`, and *shared*; its own virtiofsd serves it from a mount
//! namespace that is a slave of the host's, so a mount made below it on
//! the host later reaches the daemon, and the guest (tag `moat-pod`).
//! A container joining the pod gets `<dir>/src/<id>/rootfs` and its
//! rootfs bound (recursively, `nosuid,nodev`) on `<dir>/share/<id>/rootfs`;
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
        // Read-only stays read-only (a remount names every flag it keeps).
        let mut flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV;
        let ro = rustix::fs::statvfs(rootfs)
            .map(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
            .map_err(|e| err(format!("reading {}", rootfs.display()))(e.into()))?;
        if ro {
            flags |= MountFlags::RDONLY;
        }
        let bound = rustix::mount::mount_bind_recursive(rootfs, &target)
            .and_then(|()| rustix::mount::mount_remount(&target, flags, c""));
        if let Err(e) = bound {
            self.leave(id);
            return Err(err(format!(
                "binding {} on {}",
                rootfs.display(),
                target.display()
            ))(e.into()));
        }
        Ok(())
    }

    /// Takes container `id`'s root off the share (the unmount reaches the
    /// daemon; a guest still using it keeps it until it lets go).
    pub fn leave(&self, id: &str) {
        let target = self.served().join(id).join("rootfs");
        // Recursive binds stack: unmount until nothing is left there.
        while rustix::mount::unmount(&target, UnmountFlags::DETACH).is_ok() {}
        let _ = std::fs::remove_dir(self.src().join(id).join("rootfs"));
        let _ = std::fs::remove_dir(self.src().join(id));
    }
}
