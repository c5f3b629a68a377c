//! The state root is reachable by its owner (root) alone (DESIGN rule 10).
//!
//! Materialised rootfs trees keep the image's owners and modes (setuid
//! binaries, mode-1777 directories), so every directory holding image
//! content sits below a directory of mode 0700 owned by moat's user: no
//! other host user can execute, read or plant anything in it. The modes are
//! set on creation and checked (and repaired) each time the store is opened.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("cannot create or open {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is owned by uid {owner}, not by uid {euid} that runs moat: moat keeps images there that only it may reach; `chown {euid} {path}` or choose another --root")]
    NotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("{path} is not a directory")]
    NotDirectory { path: PathBuf },
    #[error("{path} (above the state root {root}) is {why}: another user could replace the state root; fix its owner or mode, or choose another --root")]
    UnsafeAncestor {
        path: PathBuf,
        root: PathBuf,
        why: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PrivateDirError + '_ {
    move |source| PrivateDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Makes sure `root` is a directory of mode 0700 owned by the current user,
/// creating it (and its parents) if needed; when running as root, also that
/// no directory above it can be changed by another user.
pub fn ensure_state_root(root: &Path) -> Result<(), PrivateDirError> {
    if euid() == 0 {
        check_ancestors(root)?;
    }
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    ensure_private_dir(root, true)
}

/// Makes sure `dir` (a directory below the state root) is mode 0700 and
/// owned by the current user; creates it if missing. Symlinks are refused.
pub fn ensure_private_subdir(dir: &Path) -> Result<(), PrivateDirError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
    }
    ensure_private_dir(dir, false)
}

fn ensure_private_dir(dir: &Path, follow: bool) -> Result<(), PrivateDirError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    let meta = if follow {
        fs::metadata(dir)
    } else {
        fs::symlink_metadata(dir)
    }
    .map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(PrivateDirError::NotDirectory {
            path: dir.to_path_buf(),
        });
    }
    let me = euid();
    if meta.uid() != me {
        return Err(PrivateDirError::NotOwned {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            euid: me,
        });
    }
    // Repaired silently: a state root made by an older moat, an installer
    // or `mkdir` under the default umask is 0755, and the fix is the same.
    if meta.mode() & 0o7777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Every existing directory above `root` must be owned by root and not
/// writable by group or others, unless sticky (like /tmp), where others
/// cannot rename or remove root's entries.
fn check_ancestors(root: &Path) -> Result<(), PrivateDirError> {
    let abs = if root.is_absolute() {
        root.to_path_buf()
    } else {
        std::env::current_dir().map_err(io_err(root))?.join(root)
    };
    for anc in abs.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(anc) else {
            continue; // created below, by root
        };
        let why = if meta.uid() != 0 {
            Some(format!("owned by uid {}", meta.uid()))
        } else if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
            Some(format!(
                "mode {:04o}, writable by others and not sticky",
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(PrivateDirError::UnsafeAncestor {
                path: anc.to_path_buf(),
                root: root.to_path_buf(),
                why,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_repairs_mode_0700() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("a/state");
        ensure_private_subdir(&root).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o7777, 0o700);
        fs::set_permissions(&root, fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_private_subdir(&root).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn refuses_a_symlinked_subdir() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("rootfs")).unwrap();
        let err = ensure_private_subdir(&d.path().join("rootfs")).unwrap_err();
        assert!(
            err.to_string().ends_with("rootfs is not a directory"),
            "{err}"
        );
    }
}
