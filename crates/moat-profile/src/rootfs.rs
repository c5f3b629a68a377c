//! Reading files inside an image's root filesystem without ever leaving it.
//!
//! Every lookup goes through `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! on a handle to the root, so absolute symlinks and `..` resolve inside the
//! root as they would for the container, never on the host. Paths that climb
//! above the root lexically are refused outright.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot open root filesystem {path}")]
    OpenRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: escapes the root filesystem (`..` above /); refusing to follow it")]
    Escape { path: String },
    #[error("{path}: not found in the root filesystem {root}")]
    NotFound { path: String, root: PathBuf },
    #[error("cannot read {path} in the root filesystem {root}")]
    Read {
        path: String,
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Largest file the analysis reads (a guard against hostile images).
const MAX_FILE: u64 = 512 << 20;

/// A handle on a root filesystem directory.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// A file read from the root, with its identity for de-duplication.
#[derive(Debug)]
pub struct RootFile {
    pub data: Vec<u8>,
    /// (device, inode): the same library reached by two names is read once.
    pub id: (u64, u64),
}

/// Normalises `path` lexically to an absolute path inside the root, or
/// refuses it when `..` would climb above `/`.
pub fn normalize(path: &str) -> Result<String, RootError> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(RootError::Escape {
                        path: path.to_string(),
                    });
                }
            }
            other => parts.push(other),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

impl Root {
    pub fn open(path: &Path) -> Result<Root, RootError> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RootError::OpenRoot {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_in(&self, path: &str, flags: OFlags) -> Result<OwnedFd, RootError> {
        let norm = normalize(path)?;
        openat2(
            &self.fd,
            norm.trim_start_matches('/'),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| {
            if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::NOTDIR {
                RootError::NotFound {
                    path: path.to_string(),
                    root: self.path.clone(),
                }
            } else {
                RootError::Read {
                    path: path.to_string(),
                    root: self.path.clone(),
                    source: e.into(),
                }
            }
        })
    }

    /// Whether `path` names a regular file inside the root.
    pub fn is_file(&self, path: &str) -> bool {
        self.open_in(path, OFlags::PATH)
            .ok()
            .and_then(|fd| rustix::fs::fstat(&fd).ok())
            .is_some_and(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            })
    }

    /// Reads a regular file inside the root. The file is first opened
    /// `O_PATH` and its type checked, then reopened for reading: opening a
    /// FIFO (or a device) for reading could block forever.
    pub fn read(&self, path: &str) -> Result<RootFile, RootError> {
        let handle = self.open_in(path, OFlags::PATH)?;
        let err = |source: std::io::Error| RootError::Read {
            path: path.to_string(),
            root: self.path.clone(),
            source,
        };
        let st = rustix::fs::fstat(&handle).map_err(|e| err(e.into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(err(std::io::Error::other("not a regular file")));
        }
        let fd = reopen(&handle, OFlags::RDONLY).map_err(err)?;
        let mut data = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_FILE)
            .read_to_end(&mut data)
            .map_err(err)?;
        Ok(RootFile {
            data,
            id: (st.st_dev, st.st_ino),
        })
    }
}

impl Root {
    /// Whether `path` names a directory inside the root (symlinks
    /// resolved inside the root).
    pub fn is_dir(&self, path: &str) -> bool {
        self.open_in(path, OFlags::PATH | OFlags::DIRECTORY).is_ok()
    }

    /// Names in the directory `path` inside the root (symlinks resolved
    /// inside the root, never on the host). Empty when it is not there.
    pub fn list_dir(&self, path: &str) -> Vec<String> {
        let Ok(handle) = self.open_in(path, OFlags::PATH | OFlags::DIRECTORY) else {
            return Vec::new();
        };
        let Ok(fd) = reopen(&handle, OFlags::RDONLY | OFlags::DIRECTORY) else {
            return Vec::new();
        };
        let Ok(dir) = rustix::fs::Dir::read_from(&fd) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .map(|e| String::from_utf8_lossy(e.file_name().to_bytes()).into_owned())
            .filter(|n| n != "." && n != "..")
            .take(4096)
            .collect()
    }

    /// Reads a regular file inside the root when it starts with the ELF
    /// magic; `None` for any other file (read no further than 4 bytes).
    pub fn read_elf(&self, path: &str) -> Result<Option<RootFile>, RootError> {
        // Type first, through an O_PATH handle: opening a FIFO or a device
        // of a hostile image for reading could block or touch hardware.
        let handle = self.open_in(path, OFlags::PATH | OFlags::NOFOLLOW)?;
        let err = |source: std::io::Error| RootError::Read {
            path: path.to_string(),
            root: self.path.clone(),
            source,
        };
        let st = rustix::fs::fstat(&handle).map_err(|e| err(e.into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
            || st.st_size < 64
        {
            return Ok(None);
        }
        let mut file = std::fs::File::from(reopen(&handle, OFlags::RDONLY).map_err(err)?);
        let mut magic = [0u8; 4];
        if file.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
            return Ok(None);
        }
        let mut data = magic.to_vec();
        file.take(MAX_FILE).read_to_end(&mut data).map_err(err)?;
        Ok(Some(RootFile {
            data,
            id: (st.st_dev, st.st_ino),
        }))
    }
}

/// Opens the file an `O_PATH` descriptor names, with `flags`: the same
/// inode, whatever happened to the path since.
fn reopen(handle: &OwnedFd, flags: OFlags) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    Ok(rustix::fs::open(
        format!("/proc/self/fd/{}", handle.as_raw_fd()),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_elf_skips_a_fifo_without_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(dir.path().join("fifo"))
            .status()
            .unwrap();
        assert!(st.success());
        let root = Root::open(dir.path()).unwrap();
        // Opening a FIFO for reading would block here forever.
        assert!(root.read_elf("/fifo").unwrap().is_none());
    }

    #[test]
    fn normalize_refuses_climbing_out() {
        assert_eq!(normalize("/usr/../lib//x").unwrap(), "/lib/x");
        assert_eq!(normalize("lib/x").unwrap(), "/lib/x");
        let err = normalize("/lib/../../etc/shadow").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/lib/../../etc/shadow: escapes the root filesystem (`..` above /); refusing to follow it"
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "inside\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", dir.path().join("rel")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        assert_eq!(root.read("/abs").unwrap().data, b"inside\n");
        assert_eq!(root.read("/rel").unwrap().data, b"inside\n");
        assert!(root.is_file("/abs"));
        assert!(!root.is_file("/etc"));
        let err = root.read("/missing").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "/missing: not found in the root filesystem {}",
                dir.path().display()
            )
        );
    }
}
