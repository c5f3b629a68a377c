//! The guest root: the image's rootfs as a read-only EROFS image with a
//! dm-verity hash tree appended, cached by image ID. The root hash goes on
//! the guest kernel command line, so a changed block fails to read.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use moat_image::lock::Staging;

use crate::lock::FileLock;

pub const BLOCK: u64 = 4096;
/// Directories the agent mounts on; added when an image lacks them. A
/// change here must bump the cache directory name (`rootfs-v1`).
pub(crate) const MOUNT_POINTS: [&str; 5] = ["proc", "sys", "dev", "tmp", "run"];

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("image ID {image_id:?} is not of the form sha256:<64 hex digits> (or rootfs:<dir>)")]
    BadImageId { image_id: String },
    #[error("rootfs {path} is not a directory: import the image again")]
    NotADirectory { path: PathBuf },
    #[error("`{tool}` is not installed: install {package} (scripts/bootstrap does)")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed for {path}: {detail}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("cached root image {path} has {actual} bytes but {expected} were recorded: it was modified; remove {dir} to rebuild it", dir = .path.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    SizeChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("cached verity metadata {path} is unreadable: remove its directory to rebuild it")]
    BadMetadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{entry} in {rootfs} has a {len}-byte name; the VM's root image takes names of at most {max} bytes (mkfs.erofs fails on longer ones): rename it in the image, or run it with --isolation sandbox")]
    NameTooLong {
        rootfs: PathBuf,
        /// The entry's path inside the root, escaped and shortened.
        entry: String,
        len: usize,
        max: usize,
    },
    #[error("the state root is not private")]
    Private(#[source] moat_image::private::PrivateDirError),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What the guest needs to set up the verity device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verity {
    /// Bytes of EROFS data (a multiple of 4096); the hash tree follows.
    pub data_size: u64,
    pub root_hash: String,
    pub salt: String,
    /// Size of the whole file (data and hash tree).
    pub image_size: u64,
}

impl Verity {
    /// The `dm-mod.create=` table: one read-only verity target on the
    /// first virtio disk, hash tree on the same disk after the data.
    pub fn dm_create(&self, device: &str) -> String {
        let blocks = self.data_size / BLOCK;
        format!(
            "moatroot,,,ro,0 {} verity 1 {device} {device} {BLOCK} {BLOCK} {blocks} {blocks} sha256 {} {}",
            self.data_size / 512,
            self.root_hash,
            self.salt
        )
    }
}

/// What the root disk holds, and so how the guest mounts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFs {
    /// Read-only EROFS under dm-verity ([`RootImage::verity`]).
    Verity,
    /// A per-container ext4 disk built from an OCI bundle's rootfs
    /// ([`crate::rootdisk`]): writable unless `read_only`, no verity.
    Ext4 { read_only: bool },
}

/// A cached, verified root image.
#[derive(Debug)]
pub struct RootImage {
    pub path: PathBuf,
    pub verity: Verity,
    /// True when this call built it (the cold path).
    pub built: bool,
    /// How the guest mounts it.
    pub fs: RootFs,
    /// Set for a root directory that is not an image (`--rootfs DIR`): it
    /// may change between runs, so its disk is built per run in a staging
    /// directory, removed on drop (or swept once this process is dead).
    ephemeral: Option<Staging>,
}

impl RootImage {
    /// A per-run disk built in `stage` (removed with it).
    pub(crate) fn per_run(path: PathBuf, fs: RootFs, stage: Staging) -> RootImage {
        RootImage {
            path,
            verity: Verity {
                data_size: 0,
                root_hash: String::new(),
                salt: String::new(),
                image_size: 0,
            },
            built: true,
            fs,
            ephemeral: Some(stage),
        }
    }

    /// The per-run directory to remove if moat dies abruptly, if any.
    pub fn per_run_dir(&self) -> Option<PathBuf> {
        self.ephemeral.as_ref().map(|s| s.path().to_path_buf())
    }
}

/// `<root>/vm/rootfs-v1`, every level mode 0700 (it holds copies of image
/// trees and their EROFS images: DESIGN rule 10).
pub(crate) fn private_parent(root: &Path) -> Result<PathBuf, RootfsError> {
    use moat_image::private::{ensure_private_subdir, ensure_state_root};
    ensure_state_root(root).map_err(RootfsError::Private)?;
    let vm = root.join("vm");
    ensure_private_subdir(&vm).map_err(RootfsError::Private)?;
    let parent = vm.join("rootfs-v1");
    ensure_private_subdir(&parent).map_err(RootfsError::Private)?;
    ensure_private_subdir(&tmp_dir(root)).map_err(RootfsError::Private)?;
    sweep(root);
    Ok(parent)
}

/// `<root>/vm/tmp`: per-run disks and build stages, each in a directory
/// holding an flock for its creator's lifetime.
fn tmp_dir(root: &Path) -> PathBuf {
    root.join("vm").join("tmp")
}

pub(crate) fn staging(root: &Path, kind: &str) -> Result<Staging, RootfsError> {
    let tmp = tmp_dir(root);
    Staging::new(&tmp, kind).map_err(io("create", &tmp))
}

/// Removes every per-run disk and build stage whose owner is dead: the
/// staging directories under `vm/tmp` whose lock can be taken, and the
/// `.run-<pid>-*` / `.stage-*-<pid>` directories older versions made in
/// `vm/rootfs-v1` whose pid is gone. Returns how many it removed.
pub fn sweep(root: &Path) -> usize {
    let mut removed = moat_image::lock::clean_stale(&tmp_dir(root)).unwrap_or(0);
    let parent = root.join("vm").join("rootfs-v1");
    let Ok(entries) = fs::read_dir(&parent) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = if let Some(rest) = name.strip_prefix(".run-") {
            rest.split('-').next()
        } else if let Some(rest) = name.strip_prefix(".stage-") {
            rest.rsplit('-').next()
        } else {
            continue;
        };
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Cache directory for an image ID.
pub fn cache_dir(root: &Path, image_id: &str) -> Result<PathBuf, RootfsError> {
    let hex = image_id
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| RootfsError::BadImageId {
            image_id: image_id.to_string(),
        })?;
    Ok(root.join(moat_image::store::VM_CACHE_DIR).join(hex))
}

/// Returns the cached EROFS+verity image of `rootfs`, building it on first use.
pub fn ensure(
    root: &Path,
    image_id: &moat_runtime::ImageId,
    rootfs: &Path,
) -> Result<RootImage, RootfsError> {
    let parent = private_parent(root)?;
    let digest = match image_id {
        moat_runtime::ImageId::Rootfs(_) => return ephemeral(root, rootfs),
        moat_runtime::ImageId::Digest(d) => d,
    };
    let dir = cache_dir(root, digest.as_str())?;
    if let Some(img) = load(&dir)? {
        return Ok(img);
    }
    if !rootfs.is_dir() {
        return Err(RootfsError::NotADirectory {
            path: rootfs.to_path_buf(),
        });
    }
    let _lock = FileLock::exclusive(&parent.join(".lock")).map_err(io("lock", &parent))?;
    if let Some(img) = load(&dir)? {
        return Ok(img);
    }
    let stage = staging(root, "stage")?;
    let out = stage.path().join("out");
    create_private(&out)?;
    let verity = build(&out, stage.path(), rootfs)?;
    fs::rename(&out, &dir).map_err(io("rename", &dir))?;
    Ok(RootImage {
        path: dir.join("root.img"),
        verity,
        built: true,
        fs: RootFs::Verity,
        ephemeral: None,
    })
}

fn ephemeral(root: &Path, rootfs: &Path) -> Result<RootImage, RootfsError> {
    if !rootfs.is_dir() {
        return Err(RootfsError::NotADirectory {
            path: rootfs.to_path_buf(),
        });
    }
    let stage = staging(root, "run")?;
    let verity = build(stage.path(), stage.path(), rootfs)?;
    Ok(RootImage {
        path: stage.path().join("root.img"),
        verity,
        built: true,
        fs: RootFs::Verity,
        ephemeral: Some(stage),
    })
}

/// Creates a directory, mode 0700.
fn create_private(dir: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))
}

fn load(dir: &Path) -> Result<Option<RootImage>, RootfsError> {
    let meta = dir.join("verity.json");
    let Ok(text) = fs::read(&meta) else {
        return Ok(None);
    };
    let verity: Verity =
        serde_json::from_slice(&text).map_err(|source| RootfsError::BadMetadata {
            path: meta.clone(),
            source,
        })?;
    let path = dir.join("root.img");
    let actual = fs::metadata(&path).map_err(io("stat", &path))?.len();
    if actual != verity.image_size {
        return Err(RootfsError::SizeChanged {
            path,
            expected: verity.image_size,
            actual,
        });
    }
    Ok(Some(RootImage {
        path,
        verity,
        built: false,
        fs: RootFs::Verity,
        ephemeral: None,
    }))
}

pub(crate) fn tool(
    name: &'static str,
    package: &'static str,
    cmd: &mut Command,
    path: &Path,
) -> Result<String, RootfsError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RootfsError::ToolMissing {
                tool: name,
                package,
            }
        } else {
            RootfsError::Tool {
                tool: name,
                path: path.to_path_buf(),
                detail: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        return Err(RootfsError::Tool {
            tool: name,
            path: path.to_path_buf(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Longest file name mkfs.erofs (erofs-utils 1.5) accepts: 255 bytes,
/// which the kernel allows, fails with "Could not format the device".
const MAX_NAME: usize = 254;

/// A path inside the root for a message: control characters and invalid
/// UTF-8 escaped, long components shortened.
fn describe(components: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for c in components {
        out.push('/');
        let text = String::from_utf8_lossy(c);
        let escaped: String = text.chars().flat_map(char::escape_debug).collect();
        if escaped.chars().count() > 40 {
            let head: String = escaped.chars().take(32).collect();
            out.push_str(&format!("{head}...({} bytes)", c.len()));
        } else {
            out.push_str(&escaped);
        }
    }
    format!("\"{out}\"")
}

/// Refuses a tree with a name mkfs.erofs cannot store, naming the entry
/// (instead of mkfs.erofs's "Could not format the device").
fn check_names(rootfs: &Path) -> Result<(), RootfsError> {
    use std::os::unix::ffi::OsStrExt;
    let mut stack: Vec<(PathBuf, Vec<Vec<u8>>)> = vec![(rootfs.to_path_buf(), Vec::new())];
    while let Some((dir, comps)) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(io("read", &dir))?;
        for e in rd {
            let e = e.map_err(io("read", &dir))?;
            let name = e.file_name().as_bytes().to_vec();
            let mut path = comps.clone();
            path.push(name.clone());
            if name.len() > MAX_NAME {
                return Err(RootfsError::NameTooLong {
                    rootfs: rootfs.to_path_buf(),
                    entry: describe(&path),
                    len: name.len(),
                    max: MAX_NAME,
                });
            }
            if e.file_type().map_err(io("stat", &e.path()))?.is_dir() {
                stack.push((e.path(), path));
            }
        }
    }
    Ok(())
}

/// Builds `out/root.img` (EROFS + verity) and `out/verity.json` from
/// `rootfs`; a copy of the tree, when one is needed, goes in `work`.
fn build(out: &Path, work: &Path, rootfs: &Path) -> Result<Verity, RootfsError> {
    check_names(rootfs)?;
    // The image is never modified: when it lacks a mount point, build from a copy.
    let missing: Vec<&str> = MOUNT_POINTS
        .iter()
        .copied()
        .filter(|d| !rootfs.join(d).symlink_metadata().is_ok_and(|m| m.is_dir()))
        .collect();
    let tree = if missing.is_empty() {
        rootfs.to_path_buf()
    } else {
        let tree = work.join("tree");
        tool(
            "cp",
            "coreutils",
            Command::new("cp")
                .arg("-a")
                .arg("--reflink=auto")
                .arg(rootfs)
                .arg(&tree),
            rootfs,
        )?;
        for d in missing {
            let p = tree.join(d);
            if p.symlink_metadata().is_ok() {
                // A file or symlink where a mount point must be: replace it in the copy.
                fs::remove_file(&p).map_err(io("remove", &p))?;
            }
            fs::create_dir(&p).map_err(io("create", &p))?;
        }
        tree
    };
    let img = out.join("root.img");
    tool(
        "mkfs.erofs",
        "erofs-utils",
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg("-T0")
            .arg("-x-1")
            .arg(&img)
            .arg(&tree),
        rootfs,
    )?;
    if tree != rootfs {
        fs::remove_dir_all(&tree).map_err(io("remove", &tree))?;
    }
    let len = fs::metadata(&img).map_err(io("stat", &img))?.len();
    let data_size = len.div_ceil(BLOCK) * BLOCK;
    let f = fs::File::options()
        .write(true)
        .open(&img)
        .map_err(io("open", &img))?;
    f.set_len(data_size).map_err(io("extend", &img))?;
    drop(f);
    let vout = tool(
        "veritysetup",
        "cryptsetup-bin",
        Command::new("veritysetup")
            .arg("format")
            .arg("--no-superblock")
            .arg(format!("--hash-offset={data_size}"))
            .arg(format!("--data-blocks={}", data_size / BLOCK))
            .arg(&img)
            .arg(&img),
        &img,
    )?;
    let field = |name: &str| {
        vout.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .ok_or_else(|| RootfsError::Tool {
                tool: "veritysetup",
                path: img.clone(),
                detail: format!("no {name:?} in its output: {vout}"),
            })
    };
    let root_hash = field("Root hash:")?;
    let salt = field("Salt:")?;
    let image_size = fs::metadata(&img).map_err(io("stat", &img))?.len();
    let verity = Verity {
        data_size,
        root_hash,
        salt,
        image_size,
    };
    let meta = out.join("verity.json");
    fs::write(
        &meta,
        serde_json::to_vec_pretty(&verity).unwrap_or_default(),
    )
    .map_err(io("write", &meta))?;
    // Readable by root only: the VMM gets it as an inherited fd.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&img, fs::Permissions::from_mode(0o600)).map_err(io("chmod", &img))?;
    Ok(verity)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11 item 8: what a `kill -9` leaves (a per-run disk or a build
    /// stage whose owner is dead) is swept; a live owner's is kept.
    #[test]
    fn sweep_removes_per_run_paths_of_dead_owners_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("state");
        let parent = private_parent(&root).unwrap();
        // Older layout: pid in the name.
        let dead = parent.join(".run-999999999-abc");
        let dead_stage = parent.join(format!(".stage-{}-999999999", "c".repeat(64)));
        let live = parent.join(format!(".run-{}-abc", std::process::id()));
        for p in [&dead, &dead_stage, &live] {
            fs::create_dir(p).unwrap();
            fs::write(p.join("root.img"), b"x").unwrap();
        }
        // Current layout: a staging directory whose lock nobody holds (its
        // creator was killed), and one this process holds.
        let held = staging(&root, "run").unwrap();
        let orphan = tmp_dir(&root).join("run-999999999-1-0");
        fs::create_dir(&orphan).unwrap();
        fs::write(orphan.join(".lock"), b"").unwrap();
        fs::write(orphan.join("root.img"), b"x").unwrap();
        assert_eq!(sweep(&root), 3);
        assert!(!dead.exists() && !dead_stage.exists() && !orphan.exists());
        assert!(live.exists() && held.path().exists());
        drop(held);
        assert_eq!(fs::read_dir(tmp_dir(&root)).unwrap().count(), 0);
    }

    /// Issue 23 item 11: a 255-byte name is refused before mkfs.erofs runs,
    /// with the entry named; 254 bytes build.
    #[test]
    fn a_name_mkfs_erofs_cannot_store_is_named() {
        if Command::new("mkfs.erofs").arg("--help").output().is_err() {
            println!("SKIP: mkfs.erofs not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        fs::create_dir_all(rootfs.join("srv/data")).unwrap();
        fs::write(rootfs.join("srv/data").join("b".repeat(254)), b"ok").unwrap();
        let state = d.path().join("state");
        ensure(
            &state,
            &format!("sha256:{}", "d".repeat(64)).parse().unwrap(),
            &rootfs,
        )
        .unwrap();
        fs::write(rootfs.join("srv/data").join("a".repeat(255)), b"x").unwrap();
        let err = ensure(
            &state,
            &format!("sha256:{}", "e".repeat(64)).parse().unwrap(),
            &rootfs,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            format!(
                "\"/srv/data/{}...(255 bytes)\" in {} has a 255-byte name; the VM's root image takes names of at most 254 bytes (mkfs.erofs fails on longer ones): rename it in the image, or run it with --isolation sandbox",
                "a".repeat(32),
                rootfs.display()
            )
        );
        // Nothing staged is left.
        assert_eq!(fs::read_dir(tmp_dir(&state)).unwrap().count(), 0);
        assert_eq!(describe(&[b"a\x1b[2Jb".to_vec()]), "\"/a\\u{1b}[2Jb\"");
    }

    #[test]
    fn dm_table() {
        let v = Verity {
            data_size: 8192,
            root_hash: "ab".into(),
            salt: "cd".into(),
            image_size: 12288,
        };
        assert_eq!(
            v.dm_create("/dev/vda"),
            "moatroot,,,ro,0 16 verity 1 /dev/vda /dev/vda 4096 4096 2 2 sha256 ab cd"
        );
    }

    #[test]
    fn image_ids_are_checked() {
        assert_eq!(
            cache_dir(Path::new("/r"), "latest")
                .unwrap_err()
                .to_string(),
            "image ID \"latest\" is not of the form sha256:<64 hex digits> (or rootfs:<dir>)"
        );
        let id = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            cache_dir(Path::new("/r"), &id).unwrap(),
            Path::new("/r/vm/rootfs-v1").join("a".repeat(64))
        );
    }

    #[test]
    fn builds_a_verity_image_and_notices_truncation() {
        if Command::new("mkfs.erofs").arg("--help").output().is_err()
            || Command::new("veritysetup")
                .arg("--version")
                .output()
                .is_err()
        {
            println!("SKIP: mkfs.erofs or veritysetup not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::write(rootfs.join("bin/hello"), vec![7u8; 300_000]).unwrap();
        let id = format!("sha256:{}", "b".repeat(64));
        let state = d.path().join("state");
        let first = ensure(&state, &id.parse().unwrap(), &rootfs).unwrap();
        assert!(first.built);
        assert_eq!(first.verity.root_hash.len(), 64);
        assert_eq!(first.verity.data_size % BLOCK, 0);
        // The source tree is untouched (mount points were added to a copy).
        assert!(!rootfs.join("proc").exists());
        let again = ensure(&state, &id.parse().unwrap(), &rootfs).unwrap();
        assert!(!again.built);
        assert_eq!(again.verity, first.verity);
        // The hash verifies with the real tool.
        let ok = Command::new("veritysetup")
            .args(["verify", "--no-superblock"])
            .arg(format!("--hash-offset={}", first.verity.data_size))
            .arg(format!("--data-blocks={}", first.verity.data_size / BLOCK))
            .arg(format!("--salt={}", first.verity.salt))
            .arg(&first.path)
            .arg(&first.path)
            .arg(&first.verity.root_hash)
            .status()
            .unwrap();
        assert!(ok.success());
        let f = fs::File::options().write(true).open(&first.path).unwrap();
        assert!(first.verity.image_size > first.verity.data_size);
        f.set_len(first.verity.image_size - 1).unwrap();
        let err = ensure(&state, &id.parse().unwrap(), &rootfs)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "has {} bytes but {} were recorded",
                first.verity.image_size - 1,
                first.verity.image_size
            )),
            "{err}"
        );
        let want = format!(
            "it was modified; remove {} to rebuild it",
            cache_dir(&state, &id).unwrap().display()
        );
        assert!(err.ends_with(&want), "{err}");
    }
}
