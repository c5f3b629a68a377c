//! Named volumes: one ext4 filesystem image each, made by moat, under
//! `<state root>/volumes/<name>/` (`disk.ext4` and `volume.json`). Both
//! backends use the same image: the vm attaches it as a virtio-blk disk
//! that its agent mounts, the sandbox checks it with `e2fsck` and mounts it
//! from a loop device. The ext4 journal keeps it consistent across crashes.
//!
//! A volume is in use while some process holds an exclusive `flock` on an
//! open `disk.ext4`: the sandbox's loop device, or QEMU, which inherit the
//! open file. The kernel drops the lock when the last of them ends, so a
//! crash never leaves a volume locked; and one container at a time mounts a
//! volume, so no two kernels ever write the same ext4 at once.

use std::fs::{self, File, TryLockError};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use moat_policy::model::valid_volume_name;

/// Size of a volume created without `--size` (sparse: blocks are used only
/// when written).
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// The smallest volume `mkfs.ext4` makes usefully (journal included).
pub const MIN_SIZE: u64 = 8 << 20;

const DISK: &str = "disk.ext4";
const META: &str = "volume.json";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume name {0:?} is not valid: use letters, digits, `_`, `.`, `-` (at most 64, starting with a letter or digit)")]
    BadName(String),
    #[error("volume {0:?} already exists; `moat volume rm {0}` first or pick another name")]
    Exists(String),
    #[error(
        "no volume {0:?}; create it with `moat volume create {0}` (`moat volume ls` lists them)"
    )]
    NotFound(String),
    #[error("volume {name:?} is in use by {by}")]
    InUse { name: String, by: String },
    #[error("volume size {0} is below the minimum of 8 MiB; pass a larger --size")]
    TooSmall(u64),
    #[error("{what} {path}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed on {path} ({status}): {output}")]
    Tool {
        program: &'static str,
        path: PathBuf,
        status: String,
        output: String,
    },
}

/// What `volume.json` records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    /// Apparent size of the filesystem image.
    pub size_bytes: u64,
    /// Seconds since the epoch.
    pub created: u64,
    /// The directory holding the image (filled in when read).
    #[serde(default)]
    pub dir: PathBuf,
    /// Blocks the image really uses on the host, in bytes (filled in when read).
    #[serde(default)]
    pub used_bytes: u64,
    /// For an anonymous volume (an image's declared `VOLUME`): the
    /// container it was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<Anonymous>,
}

/// Whose anonymous volume this is, and whether it goes with the container.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Anonymous {
    pub container: String,
    /// Made for a `--rm` container: removed with it (else kept, as in
    /// podman, until `moat rm -v` or `moat volume prune`).
    pub remove_with_container: bool,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let (what, path) = (what.to_string(), path.to_path_buf());
    move |source| VolumeError::Io { what, path, source }
}

/// The volume store under a state root.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(state_root: &Path) -> Self {
        Store {
            dir: state_root.join("volumes"),
        }
    }

    /// The directory a volume named `name` lives in (whether or not it exists).
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ensure(&self) -> Result<(), VolumeError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io("creating the volume store", &self.dir))
    }

    /// Creates volume `name` of `size` bytes: the image is made and
    /// formatted in a staging directory, then renamed into place, so that
    /// no half-made volume is ever visible.
    pub fn create(&self, name: &str, size: u64) -> Result<VolumeInfo, VolumeError> {
        self.create_as(name, size, None)
    }

    /// [`Store::create`], recording `anonymous` in the volume's metadata.
    pub fn create_as(
        &self,
        name: &str,
        size: u64,
        anonymous: Option<Anonymous>,
    ) -> Result<VolumeInfo, VolumeError> {
        if !valid_volume_name(name) {
            return Err(VolumeError::BadName(name.into()));
        }
        if size < MIN_SIZE {
            return Err(VolumeError::TooSmall(size));
        }
        self.ensure()?;
        let dest = self.dir_of(name);
        if dest.exists() {
            return Err(VolumeError::Exists(name.into()));
        }
        let stage = self
            .dir
            .join(format!(".stage-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&stage);
        let result = (|| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&stage)
                .map_err(io("creating", &stage))?;
            let disk = stage.join(DISK);
            let f = File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&disk)
                .map_err(io("creating", &disk))?;
            f.set_len(size).map_err(io("sizing", &disk))?;
            drop(f);
            // The root directory is container root's (0:0, shown through
            // the sandbox's idmapped mount as 0:0 too); no reserved blocks.
            run_tool(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-m",
                    "0",
                    "-E",
                    "root_owner=0:0",
                    "-L",
                    &label(name),
                ],
                &disk,
            )?;
            let info = VolumeInfo {
                name: name.into(),
                size_bytes: size,
                created: now(),
                dir: PathBuf::new(),
                used_bytes: 0,
                anonymous,
            };
            let meta = stage.join(META);
            let json = serde_json::to_vec_pretty(&info).map_err(|e| VolumeError::Io {
                what: "encoding".into(),
                path: meta.clone(),
                source: std::io::Error::other(e),
            })?;
            fs::write(&meta, json).map_err(io("writing", &meta))?;
            File::open(&stage)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing", &stage))?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&stage);
            return Err(e);
        }
        // rename(2) of a directory onto an existing non-empty one fails:
        // a concurrent create of the same name wins, this one says so.
        if let Err(e) = fs::rename(&stage, &dest) {
            let _ = fs::remove_dir_all(&stage);
            return Err(match dest.exists() {
                true => VolumeError::Exists(name.into()),
                false => io("renaming into", &dest)(e),
            });
        }
        self.get(name)
    }

    /// The volume `name`.
    pub fn get(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        if !valid_volume_name(name) {
            return Err(VolumeError::BadName(name.into()));
        }
        let dir = self.dir_of(name);
        let meta = dir.join(META);
        let text = match fs::read(&meta) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.into()))
            }
            Err(e) => return Err(io("reading", &meta)(e)),
        };
        let mut info: VolumeInfo = serde_json::from_slice(&text).map_err(|e| VolumeError::Io {
            what: "parsing".into(),
            path: meta.clone(),
            source: std::io::Error::other(e),
        })?;
        use std::os::unix::fs::MetadataExt;
        info.used_bytes = fs::metadata(dir.join(DISK))
            .map(|m| m.blocks() * 512)
            .unwrap_or(0);
        info.dir = dir;
        Ok(info)
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(v) = self.get(&name) {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes volume `name` unless a running container holds it (its
    /// lock); the caller has checked that no stopped container names it.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let info = self.get(name)?;
        let lock = open_locked(&info.dir, name, false)?;
        // Out of sight first (atomic), then deleted.
        let trash = self.dir.join(format!(".rm-{name}-{}", std::process::id()));
        fs::rename(&info.dir, &trash).map_err(io("removing", &info.dir))?;
        drop(lock);
        fs::remove_dir_all(&trash).map_err(io("removing", &trash))
    }

    /// Removes the anonymous volumes made for container `id` (all of them
    /// with `all`, else only those that go with their container); returns
    /// their names. A volume still locked by a running container stays.
    pub fn remove_anonymous(&self, id: &str, all: bool) -> Result<Vec<String>, VolumeError> {
        let mut removed = Vec::new();
        for v in self.list()? {
            let Some(a) = &v.anonymous else { continue };
            if a.container == id && (all || a.remove_with_container) {
                self.remove(&v.name)?;
                removed.push(v.name);
            }
        }
        Ok(removed)
    }

    /// Removes the anonymous volumes of `--rm` containers that no longer
    /// exist (`live`: the IDs that do), whichever path removed them. A
    /// volume is made just before its container's record is written, so
    /// one younger than a minute is left for the next collection.
    pub fn collect_anonymous(&self, live: &dyn Fn(&str) -> bool) -> Result<(), VolumeError> {
        let settled = now().saturating_sub(60);
        for v in self.list()? {
            if let Some(a) = &v.anonymous {
                if a.remove_with_container && v.created < settled && !live(&a.container) {
                    self.remove(&v.name)?;
                }
            }
        }
        Ok(())
    }
}

/// Opens `dir`'s image (read-only or read-write) and takes its exclusive
/// lock: refused while another container uses the volume. The lock lives
/// as long as this open file does (in every process that inherits it).
pub fn open_locked(dir: &Path, name: &str, read_only: bool) -> Result<File, VolumeError> {
    let disk = dir.join(DISK);
    let f = File::options()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&disk)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VolumeError::NotFound(name.into()),
            _ => io("opening", &disk)(e),
        })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(TryLockError::WouldBlock) => Err(VolumeError::InUse {
            name: name.into(),
            by: "a running container; stop it first".into(),
        }),
        Err(TryLockError::Error(e)) => Err(io("locking", &disk)(e)),
    }
}

/// The image file of the volume in `dir`.
pub fn disk_path(dir: &Path) -> PathBuf {
    dir.join(DISK)
}

/// Checks (and repairs what is safe to repair: `-p`) the filesystem in
/// `dir`, forced even when marked clean: a vm guest may have written
/// anything into it, and the host kernel is about to parse it.
pub fn fsck(dir: &Path) -> Result<(), VolumeError> {
    let disk = dir.join(DISK);
    let out = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(&disk)
        .output()
        .map_err(io("running e2fsck on", &disk))?;
    // 0: clean; 1: errors corrected. Anything else is refused.
    match out.status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(VolumeError::Tool {
            program: "e2fsck",
            path: disk,
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string()
                + " (the volume's filesystem is damaged; moat does not mount it: repair it with `e2fsck -f` on that file, or remove the volume)",
        }),
    }
}

fn run_tool(program: &'static str, args: &[&str], path: &Path) -> Result<(), VolumeError> {
    let out = Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .map_err(io(&format!("running {program} on"), path))?;
    if !out.status.success() {
        return Err(VolumeError::Tool {
            program,
            path: path.to_path_buf(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// An ext4 label (at most 16 bytes).
fn label(name: &str) -> String {
    name.chars().take(16).collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_mkfs() -> bool {
        Command::new("mkfs.ext4").arg("-V").output().is_ok()
    }

    #[test]
    fn create_list_lock_remove() {
        if !have_mkfs() {
            println!("SKIP: mkfs.ext4 is not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        assert!(s.list().unwrap().is_empty());
        let v = s.create("data", 16 << 20).unwrap();
        assert_eq!((v.name.as_str(), v.size_bytes), ("data", 16 << 20));
        assert!(matches!(
            s.create("data", 16 << 20),
            Err(VolumeError::Exists(_))
        ));
        assert!(matches!(
            s.create("../x", 16 << 20),
            Err(VolumeError::BadName(_))
        ));
        assert!(matches!(
            s.create("small", 1 << 20),
            Err(VolumeError::TooSmall(_))
        ));
        assert_eq!(s.list().unwrap().len(), 1);
        fsck(&v.dir).unwrap();
        // In use: neither a second user nor rm gets it.
        let held = open_locked(&v.dir, "data", false).unwrap();
        assert!(matches!(
            open_locked(&v.dir, "data", true),
            Err(VolumeError::InUse { .. })
        ));
        let e = s.remove("data").unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        drop(held);
        s.remove("data").unwrap();
        assert!(matches!(s.get("data"), Err(VolumeError::NotFound(_))));
        assert!(s.list().unwrap().is_empty());
    }
}
