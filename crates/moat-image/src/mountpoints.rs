//! The standard mount points every materialised rootfs has.
//!
//! Images built `FROM scratch` (a static binary, distroless) have no `/dev`,
//! `/proc`, `/sys`, `/tmp` or `/run`; both backends mount there and never
//! write to the image at run time. So when a rootfs is materialised, moat
//! adds the missing ones as empty directories (mode 0755, owned by the
//! store's user) after the last layer. They are moat's own: no layer blob
//! changes, the image's digests stay the same, and the image record lists
//! them (`mount_points`).

use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, Mode};

/// Directories both backends mount on. A change here changes what new
/// rootfs trees hold; existing ones get the new ones on first use.
pub const MOUNT_POINTS: [&str; 5] = ["dev", "proc", "sys", "tmp", "run"];

/// Creates each missing mount point directly under `root` (never through a
/// symlink: an entry that exists in any form is left as the image made it).
/// Returns the names it created.
pub fn add_missing(root: BorrowedFd<'_>) -> std::io::Result<Vec<String>> {
    let mut added = Vec::new();
    for name in MOUNT_POINTS {
        match rustix::fs::statat(root, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => continue,
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        match rustix::fs::mkdirat(root, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        // mkdirat is cut by the umask; the mode must not depend on it.
        let fd = rustix::fs::openat(
            root,
            name,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
        added.push(format!("/{name}"));
    }
    if add_resolv_conf(root)? {
        added.push(format!("/{RESOLV_CONF}"));
    }
    Ok(added)
}

/// The file a `network.dns` grant mounts the resolver over (the sandbox
/// cannot create it in the read-only image at run time).
pub const RESOLV_CONF: &str = "etc/resolv.conf";

/// Whether [`add_missing`] would add `/etc/resolv.conf` under `root`.
pub fn resolv_conf_missing(root: BorrowedFd<'_>) -> bool {
    let Ok(etc) = open_etc(root) else {
        return false;
    };
    matches!(
        rustix::fs::statat(&etc, "resolv.conf", AtFlags::SYMLINK_NOFOLLOW),
        Err(rustix::io::Errno::NOENT)
    )
}

/// `/etc` as a real directory (never through a symlink).
fn open_etc(root: BorrowedFd<'_>) -> rustix::io::Result<std::os::fd::OwnedFd> {
    rustix::fs::openat(
        root,
        "etc",
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// An empty `/etc/resolv.conf` (mode 0644) where the image has a real
/// `/etc` directory and no entry of that name in any form.
fn add_resolv_conf(root: BorrowedFd<'_>) -> std::io::Result<bool> {
    if !resolv_conf_missing(root) {
        return Ok(false);
    }
    let etc = open_etc(root)?;
    let fd = match rustix::fs::openat(
        &etc,
        "resolv.conf",
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::EXCL
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::EXIST) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn adds_only_what_is_missing_and_never_through_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("proc")).unwrap();
        std::fs::set_permissions(
            d.path().join("proc"),
            std::fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("tmp")).unwrap();
        let root = std::fs::File::open(d.path()).unwrap();
        let added = add_missing(root.as_fd()).unwrap();
        assert_eq!(added, ["/dev", "/sys", "/run"]);
        let mode = |n: &str| {
            std::fs::symlink_metadata(d.path().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("dev"), 0o755);
        assert_eq!(mode("proc"), 0o555);
        assert!(std::fs::symlink_metadata(d.path().join("tmp"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(add_missing(root.as_fd()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn an_empty_resolv_conf_only_in_a_real_etc_without_one() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::File::open(d.path()).unwrap();
        // No /etc: nothing made.
        assert!(!add_missing(root.as_fd())
            .unwrap()
            .contains(&"/etc/resolv.conf".to_string()));
        std::fs::create_dir(d.path().join("etc")).unwrap();
        assert_eq!(add_missing(root.as_fd()).unwrap(), ["/etc/resolv.conf"]);
        let md = std::fs::symlink_metadata(d.path().join("etc/resolv.conf")).unwrap();
        assert!(md.is_file() && md.len() == 0);
        assert_eq!(md.permissions().mode() & 0o7777, 0o644);
        // A link (even a dangling one) is the image's: left alone.
        let e = tempfile::tempdir().unwrap();
        std::fs::create_dir(e.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/nowhere", e.path().join("etc/resolv.conf")).unwrap();
        let root = std::fs::File::open(e.path()).unwrap();
        assert!(!add_missing(root.as_fd())
            .unwrap()
            .contains(&"/etc/resolv.conf".to_string()));
        // /etc a symlink: never followed.
        let f = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), f.path().join("etc")).unwrap();
        let root = std::fs::File::open(f.path()).unwrap();
        assert!(!add_missing(root.as_fd())
            .unwrap()
            .contains(&"/etc/resolv.conf".to_string()));
        assert!(!target.path().join("resolv.conf").exists());
    }
}
