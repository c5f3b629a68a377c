//! The content-addressed store: blobs, image records, names, rootfs caches.
//!
//! ```text
//! <root>/blobs/sha256/<hex>        every blob (manifest, config, layer), named by its digest
//! <root>/images/<hex>.json         one record per image, <hex> of the manifest digest
//! <root>/images/names.json         name:tag -> manifest digest
//! <root>/images/store.lock         flock: shared by import, exclusive by rm/prune
//! <root>/images/meta.lock          flock: exclusive around record/name updates
//! <root>/rootfs/<hex>/             materialised rootfs per manifest digest, never modified
//! <root>/tmp/                      staging; anything here is invisible
//! ```
//! An image is visible exactly when its record exists; the record is written
//! (by rename) after its blobs and rootfs are in place.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::{sha256_hex, short, Digest};
use crate::lock::{self, LockGuard, Staging};
use crate::oci;
use crate::unpack::{self, Budget, UnpackError, UnpackOptions};

/// Where the VM backend caches an image's EROFS + dm-verity root image,
/// below the state root: `<VM_CACHE_DIR>/<image ID hex>/`.
pub const VM_CACHE_DIR: &str = "vm/rootfs-v1";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state root is not private")]
    Private(#[source] crate::private::PrivateDirError),
    #[error("cannot use the state root {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no image matches {} (see `moat image ls`)", crate::quote::quote(.reference))]
    NotFound { reference: String },
    #[error("{} matches several images ({candidates}); give more digits or a name", crate::quote::quote(.reference))]
    Ambiguous {
        reference: String,
        candidates: String,
    },
    #[error("blob {digest} is missing from the store; re-import the image")]
    MissingBlob { digest: String },
    #[error("blob {digest} is corrupt (its content hashes to {actual}); re-import the image")]
    CorruptBlob { digest: String, actual: String },
    #[error("{} is not a sha256 digest", crate::quote::quote(.digest))]
    BadDigest { digest: String },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("record {path} is damaged")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {digest}")]
    Oci {
        digest: String,
        #[source]
        source: oci::OciError,
    },
    #[error("materialising the rootfs of {image}: layer {layer}")]
    Materialise {
        image: String,
        layer: String,
        #[source]
        source: UnpackError,
    },
    #[error("image {image} is used by container {container} (state in {state}); remove it first (moat rm -f {container}) or pass --force")]
    InUse {
        image: String,
        container: String,
        state: PathBuf,
    },
    #[error("{} is not a valid image name (letters, digits and ._-/:@ only, at most 255 characters)", crate::quote::quote(.name))]
    BadName { name: String },
}

/// The runtime-relevant part of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
    pub exposed_ports: Vec<String>,
    /// `Volumes` (Docker's `VOLUME`), by path. Absent from records
    /// written before it existed.
    #[serde(default)]
    pub volumes: Vec<String>,
    pub architecture: String,
    pub os: String,
    pub created: Option<String>,
}

impl ImageConfig {
    fn from_file(c: &oci::ConfigFile) -> Self {
        let rc = &c.config;
        Self {
            entrypoint: rc.entrypoint.clone().unwrap_or_default(),
            cmd: rc.cmd.clone().unwrap_or_default(),
            env: rc.env.clone().unwrap_or_default(),
            working_dir: rc.working_dir.clone(),
            user: rc.user.clone(),
            labels: rc.labels.clone().unwrap_or_default(),
            stop_signal: rc.stop_signal.clone(),
            exposed_ports: rc
                .exposed_ports
                .as_ref()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            volumes: rc
                .volumes
                .as_ref()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            architecture: c.architecture.clone(),
            os: c.os.clone(),
            created: c.created.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Digest of the blob as stored (compressed or not).
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Size of the blob in bytes.
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub manifest_digest: String,
    /// The image ID, as podman and Docker show it.
    pub config_digest: String,
    pub names: Vec<String>,
    pub config: ImageConfig,
    pub layers: Vec<LayerInfo>,
    /// Sum of manifest, config and layer blob sizes.
    pub size: u64,
    /// When this store imported the image (RFC 3339).
    pub imported: String,
    /// What it was imported from.
    pub source: String,
}

impl Image {
    /// The image ID (config digest), 12 hex digits.
    pub fn short_id(&self) -> &str {
        short(&self.config_digest)
    }
}

/// The derived kind that holds an image's signatures.
const SIGNATURES: &str = "signatures";

/// What `images/<hex>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub manifest_size: u64,
    pub config_size: u64,
    pub layers: Vec<LayerInfo>,
    pub imported: String,
    pub source: String,
    pub unpack: UnpackOptions,
    /// Mount points moat added to the materialised rootfs because no layer
    /// has them (`/dev`, `/proc`, ...): moat's own, in no blob.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Names {
    pub names: BTreeMap<String, String>,
}

/// A container and the image it uses, as the front end read it through
/// the runtime core's one reader (`moat_runtime::record::read_all`, which
/// keeps the trust rules): the store never parses container state itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUse {
    /// The container's name (its ID when it has none).
    pub container: String,
    /// The image config digest it runs.
    pub image_id: String,
    /// Its `state.json`, for the message.
    pub state: PathBuf,
}

/// Options of `Store::remove`.
#[derive(Debug, Clone, Default)]
pub struct RemoveOptions {
    /// Remove even if a container uses the image.
    pub force: bool,
    /// The containers that exist (`None`: not checked).
    pub containers: Option<Vec<ContainerUse>>,
}

/// What `remove` or `prune` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub untagged: Vec<String>,
    pub images: Vec<String>,
    pub blobs: usize,
    pub bytes: u64,
    pub staging: usize,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

pub(crate) fn io_read(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn io_write(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to `path` atomically (temporary file, then rename).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, data).map_err(io_write(&tmp))?;
    fs::rename(&tmp, path).map_err(io_write(path))
}

/// Checks and normalises an image name: adds `:latest` when no tag.
pub fn normalize_name(name: &str) -> Result<String, StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with("sha256:")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
    if !ok {
        return Err(StoreError::BadName {
            name: name.to_string(),
        });
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    Ok(if last.contains(':') || last.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    })
}

impl Store {
    /// Opens (creating if needed) the store under the state root, and
    /// removes staging directories left by killed imports.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        // Rootfs trees keep the image's setuid bits, owners and 1777
        // directories: only the state root's owner may reach them.
        crate::private::ensure_state_root(root).map_err(StoreError::Private)?;
        for dir in [
            store.root.join("blobs"),
            store.blob_dir(),
            store.images_dir(),
            store.rootfs_dir(),
            store.tmp_dir(),
        ] {
            crate::private::ensure_private_subdir(&dir).map_err(StoreError::Private)?;
        }
        lock::clean_stale(&store.tmp_dir()).map_err(|source| StoreError::Open {
            path: store.tmp_dir(),
            source,
        })?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub(crate) fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    pub(crate) fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub(crate) fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// The VM backend's root images, one directory per image ID (config
    /// hex): `moat-vm` builds them, `rm` and `prune` remove them.
    pub(crate) fn vm_cache_dir(&self) -> PathBuf {
        self.root.join(VM_CACHE_DIR)
    }
    fn names_path(&self) -> PathBuf {
        self.images_dir().join("names.json")
    }

    /// Path of a blob (which may not exist).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex = sha256_hex(digest).ok_or_else(|| StoreError::BadDigest {
            digest: digest.to_string(),
        })?;
        Ok(self.blob_dir().join(hex))
    }

    pub(crate) fn lock_shared(&self) -> Result<LockGuard, StoreError> {
        let p = self.images_dir().join("store.lock");
        lock::lock_shared(&p).map_err(io_write(&p))
    }
    pub(crate) fn lock_exclusive(&self) -> Result<LockGuard, StoreError> {
        let p = self.images_dir().join("store.lock");
        lock::lock_exclusive(&p).map_err(io_write(&p))
    }
    pub(crate) fn lock_meta(&self) -> Result<LockGuard, StoreError> {
        let p = self.images_dir().join("meta.lock");
        lock::lock_exclusive(&p).map_err(io_write(&p))
    }
    pub(crate) fn staging(&self, kind: &str) -> Result<Staging, StoreError> {
        Staging::new(&self.tmp_dir(), kind).map_err(io_write(&self.tmp_dir()))
    }

    /// Reads a whole (small) blob after checking its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest)?;
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob {
                    digest: digest.to_string(),
                })
            }
            Err(e) => return Err(io_read(&path)(e)),
        };
        let actual = crate::digest::sha256_of(&data);
        if actual != digest {
            return Err(StoreError::CorruptBlob {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(data)
    }

    /// Checks a blob's digest by reading it fully; returns the open file
    /// rewound to its start.
    pub fn open_verified_blob(&self, digest: &str) -> Result<File, StoreError> {
        use std::io::Seek;
        let path = self.blob_path(digest)?;
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob {
                    digest: digest.to_string(),
                })
            }
            Err(e) => return Err(io_read(&path)(e)),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io_read(&path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(StoreError::CorruptBlob {
                digest: digest.to_string(),
                actual,
            });
        }
        f.rewind().map_err(io_read(&path))?;
        Ok(f)
    }

    /// The verified, decompressed tar stream of a layer blob.
    pub fn open_layer(&self, digest: &str) -> Result<Box<dyn Read>, StoreError> {
        let f = self.open_verified_blob(digest)?;
        let path = self.blob_path(digest)?;
        let (r, _) = crate::layer::decompress(io::BufReader::with_capacity(256 << 10, f))
            .map_err(io_read(&path))?;
        Ok(r)
    }

    pub(crate) fn read_names(&self) -> Result<Names, StoreError> {
        let path = self.names_path();
        match fs::read(&path) {
            Ok(d) => {
                serde_json::from_slice(&d).map_err(|source| StoreError::Record { path, source })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Names::default()),
            Err(e) => Err(io_read(&path)(e)),
        }
    }

    pub(crate) fn write_names(&self, names: &Names) -> Result<(), StoreError> {
        write_atomic(
            &self.names_path(),
            &serde_json::to_vec_pretty(names).expect("names serialise"),
        )
    }

    fn record_path(&self, manifest_digest: &str) -> Result<PathBuf, StoreError> {
        let hex = sha256_hex(manifest_digest).ok_or_else(|| StoreError::BadDigest {
            digest: manifest_digest.to_string(),
        })?;
        Ok(self.images_dir().join(format!("{hex}.json")))
    }

    /// `images/<hex>.<kind>.json`: metadata derived from an image (its
    /// profile), kept beside its record and removed with it.
    pub fn derived_path(&self, image: &Image, kind: &str) -> Result<PathBuf, StoreError> {
        let hex = sha256_hex(&image.manifest_digest).ok_or_else(|| StoreError::BadDigest {
            digest: image.manifest_digest.clone(),
        })?;
        Ok(self.images_dir().join(format!("{hex}.{kind}.json")))
    }

    /// Reads derived metadata of `image` (`None` when there is none).
    pub fn read_derived(&self, image: &Image, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.derived_path(image, kind)?;
        match fs::read(&path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_read(&path)(e)),
        }
    }

    /// Writes derived metadata of `image` atomically, under the store's
    /// metadata lock, and only while the image is still in the store.
    pub fn write_derived(&self, image: &Image, kind: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self.derived_path(image, kind)?;
        let _meta = self.lock_meta()?;
        if self.read_record(&image.manifest_digest)?.is_none() {
            return Err(StoreError::NotFound {
                reference: image.manifest_digest.clone(),
            });
        }
        write_atomic(&path, data)
    }

    /// The signatures kept with `image` (verified when it was pulled; to be
    /// verified again by whoever relies on them).
    pub fn signatures(
        &self,
        image: &Image,
    ) -> Result<Vec<crate::registry::sign::StoredSignature>, StoreError> {
        let path = self.derived_path(image, SIGNATURES)?;
        match self.read_derived(image, SIGNATURES)? {
            None => Ok(Vec::new()),
            Some(d) => {
                serde_json::from_slice(&d).map_err(|source| StoreError::Record { path, source })
            }
        }
    }

    /// Keeps `sig` with `image` (once).
    pub fn add_signature(
        &self,
        image: &Image,
        sig: crate::registry::sign::StoredSignature,
    ) -> Result<(), StoreError> {
        let mut all = self.signatures(image)?;
        if !all.contains(&sig) {
            all.push(sig);
        }
        let data = serde_json::to_vec_pretty(&all).expect("signatures serialise");
        self.write_derived(image, SIGNATURES, &data)
    }

    pub(crate) fn rootfs_path(&self, manifest_digest: &str) -> Result<PathBuf, StoreError> {
        let hex = sha256_hex(manifest_digest).ok_or_else(|| StoreError::BadDigest {
            digest: manifest_digest.to_string(),
        })?;
        Ok(self.rootfs_dir().join(hex))
    }

    pub(crate) fn read_record(&self, manifest_digest: &str) -> Result<Option<Record>, StoreError> {
        let path = self.record_path(manifest_digest)?;
        match fs::read(&path) {
            Ok(d) => serde_json::from_slice(&d)
                .map(Some)
                .map_err(|source| StoreError::Record { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_read(&path)(e)),
        }
    }

    pub(crate) fn write_record(&self, r: &Record) -> Result<(), StoreError> {
        write_atomic(
            &self.record_path(&r.manifest_digest)?,
            &serde_json::to_vec_pretty(r).expect("record serialises"),
        )
    }

    pub(crate) fn records(&self) -> Result<Vec<Record>, StoreError> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).map_err(io_read(&dir))? {
            let ent = ent.map_err(io_read(&dir))?;
            let name = ent.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if sha256_hex(&format!("sha256:{hex}")).is_none() {
                continue;
            }
            if let Some(r) = self.read_record(&format!("sha256:{hex}"))? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| {
            b.imported
                .cmp(&a.imported)
                .then(a.manifest_digest.cmp(&b.manifest_digest))
        });
        Ok(out)
    }

    pub(crate) fn image_of(&self, r: &Record, names: &Names) -> Result<Image, StoreError> {
        let bytes = self.read_blob(&r.config_digest)?;
        let cfg =
            oci::parse_config(&r.config_digest, &bytes, r.layers.len()).map_err(|source| {
                StoreError::Oci {
                    digest: r.manifest_digest.to_string(),
                    source,
                }
            })?;
        let names = names
            .names
            .iter()
            .filter(|(_, d)| **d == r.manifest_digest)
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Image {
            manifest_digest: r.manifest_digest.to_string(),
            config_digest: r.config_digest.to_string(),
            names,
            config: ImageConfig::from_file(&cfg),
            layers: r.layers.clone(),
            size: r.manifest_size + r.config_size + r.layers.iter().map(|l| l.size).sum::<u64>(),
            imported: r.imported.clone(),
            source: r.source.clone(),
        })
    }

    /// Every image, newest import first.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let names = self.read_names()?;
        self.records()?
            .iter()
            .map(|r| self.image_of(r, &names))
            .collect()
    }

    /// Finds an image by name[:tag], image ID (config digest), manifest
    /// digest, or a unique prefix (at least 4 hex digits) of either digest.
    pub fn resolve(&self, reference: &str) -> Result<Image, StoreError> {
        let names = self.read_names()?;
        let by_name = names.names.get(reference).or_else(|| {
            normalize_name(reference)
                .ok()
                .and_then(|n| names.names.get(&n))
        });
        if let Some(digest) = by_name {
            if let Some(r) = self.read_record(digest)? {
                return self.image_of(&r, &names);
            }
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        let is_hex =
            hex.len() >= 4 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex {
            let hex = hex.to_ascii_lowercase();
            let records = self.records()?;
            let matches: Vec<&Record> = records
                .iter()
                .filter(|r| {
                    let m = r.manifest_digest.strip_prefix("sha256:").unwrap_or("");
                    let c = r.config_digest.strip_prefix("sha256:").unwrap_or("");
                    m.starts_with(&hex) || c.starts_with(&hex)
                })
                .collect();
            match matches.len() {
                0 => {}
                1 => return self.image_of(matches[0], &names),
                _ => {
                    return Err(StoreError::Ambiguous {
                        reference: reference.to_string(),
                        candidates: matches
                            .iter()
                            .map(|r| short(&r.config_digest).to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
        Err(StoreError::NotFound {
            reference: reference.to_string(),
        })
    }

    /// The materialised rootfs of `image`, created on first use (layers
    /// verified as they are applied) and never modified afterwards.
    pub fn rootfs(&self, image: &Image) -> Result<PathBuf, StoreError> {
        let path = self.rootfs_path(&image.manifest_digest)?;
        if path.is_dir() {
            self.upgrade_mount_points(image, &path)?;
            return Ok(path);
        }
        let _shared = self.lock_shared()?;
        let record =
            self.read_record(&image.manifest_digest)?
                .ok_or_else(|| StoreError::NotFound {
                    reference: image.manifest_digest.clone(),
                })?;
        let staging = self.staging("rootfs")?;
        let staged = staging.path().join("rootfs");
        let added = self.materialise(&record, &staged, &mut |_| {})?;
        let _meta = self.lock_meta()?;
        if !path.is_dir() {
            fs::rename(&staged, &path).map_err(io_write(&path))?;
            self.note_mount_points(&image.manifest_digest, added)?;
        }
        Ok(path)
    }

    /// A rootfs materialised by an older moat may lack mount points: add
    /// them (empty directories, moat's own) and record them.
    fn upgrade_mount_points(&self, image: &Image, path: &Path) -> Result<(), StoreError> {
        let missing = crate::mountpoints::MOUNT_POINTS
            .iter()
            .any(|n| path.join(n).symlink_metadata().is_err())
            || std::fs::File::open(path)
                .is_ok_and(|d| crate::mountpoints::resolv_conf_missing(d.as_fd()));
        if !missing {
            return Ok(());
        }
        let _shared = self.lock_shared()?;
        let _meta = self.lock_meta()?;
        use rustix::fs::{Mode, OFlags};
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_read(path)(e.into()))?;
        let added = crate::mountpoints::add_missing(root.as_fd()).map_err(io_write(path))?;
        self.note_mount_points(&image.manifest_digest, added)
    }

    /// Adds `added` to the record's `mount_points` (caller holds meta.lock).
    fn note_mount_points(&self, manifest: &str, added: Vec<String>) -> Result<(), StoreError> {
        if added.is_empty() {
            return Ok(());
        }
        if let Some(mut r) = self.read_record(manifest)? {
            for a in added {
                if !r.mount_points.contains(&a) {
                    r.mount_points.push(a);
                }
            }
            self.write_record(&r)?;
        }
        Ok(())
    }

    /// Applies the record's layers in order into the new directory `dest`.
    pub(crate) fn materialise(
        &self,
        record: &Record,
        dest: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<String>, StoreError> {
        let root = unpack::create_root(dest).map_err(io_write(dest))?;
        let mut budget = Budget::default();
        for layer in &record.layers {
            let blob_path = self.blob_path(&layer.digest)?;
            let blob = match File::open(&blob_path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::MissingBlob {
                        digest: layer.digest.to_string(),
                    })
                }
                Err(e) => return Err(io_read(&blob_path)(e)),
            };
            let diff = (!layer.diff_id.is_empty()).then_some(layer.diff_id.as_str());
            unpack::apply_layer_blob(
                root.as_fd(),
                blob,
                Some(&layer.digest),
                diff,
                &record.unpack,
                &mut budget,
                progress,
            )
            .map_err(|source| StoreError::Materialise {
                image: record.manifest_digest.to_string(),
                layer: layer.digest.to_string(),
                source,
            })?;
        }
        crate::mountpoints::add_missing(root.as_fd()).map_err(io_write(dest))
    }
}
