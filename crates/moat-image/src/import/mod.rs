//! `Store::import`: OCI layout directories, OCI archives, `docker save`
//! archives and plain rootfs tarballs, staged under `<root>/tmp` and made
//! visible in one rename of the image record.

//!
//! One module per source format: `layout` (OCI layout directories, and the
//! index of an OCI archive once extracted), `archive` (reading tar archives:
//! what kind, and their members), `docker` (`docker save`), `rootfs` (plain
//! rootfs tarballs); `commit` is the tail they share (stage, unpack, move
//! into the store, name).

mod archive;
mod commit;
mod docker;
mod layout;
mod rootfs;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::digest::{sha256_hex, Digest, HashingWriter};
use crate::layer::Compression;
use crate::oci::{self, Descriptor, OciError};
use crate::store::{normalize_name, Store, StoreError};
use crate::unpack::{UnpackError, UnpackOptions};
use crate::Image;

use archive::{extract_members, sniff_archive, ArchiveKind};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{source_path}: not found")]
    NotFound { source_path: PathBuf },
    #[error("{source_path}")]
    Store {
        source_path: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
    #[error("{source_path}")]
    Oci {
        source_path: PathBuf,
        #[source]
        source: OciError,
    },
    #[error("{source_path}: reading {what}")]
    Read {
        source_path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{source_path}: writing {what}")]
    Write {
        source_path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{source_path}: a directory, but not an OCI image layout (no oci-layout and index.json)"
    )]
    NotLayout { source_path: PathBuf },
    #[error("{source_path}: {what} is {kind}; moat reads only regular files from an image layout")]
    NotRegular {
        source_path: PathBuf,
        what: String,
        kind: &'static str,
    },
    #[error("{source_path}: entry {} is not a valid archive member name", crate::quote::quote(.entry))]
    BadMember { source_path: PathBuf, entry: String },
    #[error("{source_path}: entry {}: blob content hashes to {actual}, not the digest its name claims", crate::quote::quote(.entry))]
    MemberDigest {
        source_path: PathBuf,
        entry: String,
        actual: String,
    },
    #[error("{source_path}: {referrer} names blob {digest}, which is not in the archive")]
    MissingBlob {
        source_path: PathBuf,
        referrer: String,
        digest: String,
    },
    #[error("{source_path}: blob {digest} is {actual} bytes, the descriptor says {expected}")]
    BlobSize {
        source_path: PathBuf,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{source_path}: blob {digest} hashes to {actual}; the layout is corrupt or tampered with"
    )]
    BlobDigest {
        source_path: PathBuf,
        digest: String,
        actual: String,
    },
    #[error("{source_path}: {what} is larger than {limit} bytes")]
    TooBig {
        source_path: PathBuf,
        what: String,
        limit: u64,
    },
    #[error(
        "{source_path}: manifest.json lists {count} images; moat imports archives with exactly one"
    )]
    DockerCount { source_path: PathBuf, count: usize },
    #[error("{source_path}: layer {digest}")]
    Layer {
        source_path: PathBuf,
        digest: String,
        #[source]
        source: UnpackError,
    },
    #[error("{source_path}: the image is for {os}/{arch}; moat runs linux/amd64 images")]
    Platform {
        source_path: PathBuf,
        os: String,
        arch: String,
    },
}

/// Progress callbacks for a terminal (no-op by default).
pub trait Progress {
    /// A new phase of `total` bytes starts.
    fn phase(&self, _what: &str, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
}

/// A progress reporter that reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

pub struct ImportOptions<'a> {
    /// Name to give the image (`name[:tag]`, `:latest` when no tag).
    pub name: Option<String>,
    pub unpack: UnpackOptions,
    pub progress: &'a dyn Progress,
    /// What the image record says it came from (default: the path).
    pub source: Option<String>,
    /// Unpack the root file system now. When false only the verified
    /// blobs and the record are stored, and the rootfs is materialised at
    /// first use ([`Store::rootfs`]), where every layer's digest and diff
    /// ID are verified again as it is applied.
    pub materialise: bool,
}

impl Default for ImportOptions<'_> {
    fn default() -> Self {
        Self {
            name: None,
            unpack: UnpackOptions::default(),
            progress: &NoProgress,
            source: None,
            materialise: true,
        }
    }
}

/// Where the blobs of the source live while importing.
pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    /// Whether the blobs were extracted into staging (archives) and
    /// verified there; else they are read from the layout's
    /// `blobs/sha256`.
    pub(super) extracted: bool,
}

pub(super) fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => oci::MEDIA_OCI_LAYER_GZIP,
        Compression::Zstd => oci::MEDIA_OCI_LAYER_ZSTD,
        Compression::None => oci::MEDIA_OCI_LAYER,
    }
}

pub(super) fn file_stem_name(path: &Path) -> String {
    let base = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = base.split('.').next().unwrap_or("").to_ascii_lowercase();
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        "imported".into()
    } else {
        clean
    }
}

/// Largest metadata member (index.json, manifest.json, ...) read into memory.
pub(super) const MAX_META: u64 = oci::MAX_JSON_BYTES;

impl Store {
    /// Imports the image at `path` (layout directory, OCI archive, docker
    /// archive, rootfs tarball), materialises its rootfs, and names it.
    pub fn import(&self, path: &Path, opts: &ImportOptions<'_>) -> Result<Image, ImportError> {
        let sp = path.to_path_buf();
        let store_err = |source| ImportError::Store {
            source_path: sp.clone(),
            source: Box::new(source),
        };
        if let Some(n) = &opts.name {
            normalize_name(n).map_err(store_err)?;
        }
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImportError::NotFound {
                source_path: sp.clone(),
            },
            _ => ImportError::Read {
                source_path: sp.clone(),
                what: "it".into(),
                source: e,
            },
        })?;
        let _shared = self.lock_shared().map_err(store_err)?;
        let staging = self.staging("import").map_err(store_err)?;
        let blobs = staging.path().join("blobs");
        fs::create_dir(&blobs).map_err(|source| ImportError::Write {
            source_path: sp.clone(),
            what: "staging".into(),
            source,
        })?;

        let (manifest_desc, ref_name, source) = if meta.is_dir() {
            let src = Source {
                path,
                extracted: false,
            };
            let (d, n) = self.layout_manifest(&src, &blobs)?;
            (d, n, src)
        } else {
            let mut f = File::open(path).map_err(|source| ImportError::Read {
                source_path: sp.clone(),
                what: "it".into(),
                source: crate::quote::clean_io(source),
            })?;
            match sniff_archive(&mut f, path)? {
                ArchiveKind::Oci(meta) => {
                    extract_members(&mut f, path, &blobs, |name| {
                        name.strip_prefix("blobs/sha256/")
                            .filter(|h| sha256_hex(&format!("sha256:{h}")).is_some())
                            .map(str::to_string)
                    })?;
                    let src = Source {
                        path,
                        extracted: true,
                    };
                    let index = oci::parse_index("index.json", &meta.index).map_err(|source| {
                        ImportError::Oci {
                            source_path: sp.clone(),
                            source,
                        }
                    })?;
                    let (d, n) = self.select(&src, &blobs, &index)?;
                    (d, n, src)
                }
                ArchiveKind::Docker(bytes) => {
                    let (d, n) = self.docker_archive(&mut f, path, &blobs, &bytes)?;
                    (
                        d,
                        n,
                        Source {
                            path,
                            extracted: true,
                        },
                    )
                }
                ArchiveKind::Rootfs => {
                    return self.import_rootfs(f, path, &blobs, staging.path(), opts);
                }
            }
        };
        self.finish_import(
            &source,
            &blobs,
            staging.path(),
            manifest_desc,
            ref_name,
            opts,
        )
    }

    /// Imports what a pull downloaded: `blobs` holds the manifest, config
    /// and layers the store lacks, each verified against its digest as it
    /// arrived, so they are moved into the store, not copied and hashed
    /// again. `staging` is the pull's staging directory.
    pub(crate) fn import_downloaded(
        &self,
        staging: &Path,
        blobs: &Path,
        manifest_desc: Descriptor,
        opts: &ImportOptions<'_>,
    ) -> Result<Image, ImportError> {
        let store_err = |source| ImportError::Store {
            source_path: staging.to_path_buf(),
            source: Box::new(source),
        };
        let _shared = self.lock_shared().map_err(store_err)?;
        let src = Source {
            path: staging,
            extracted: true,
        };
        self.finish_import(&src, blobs, staging, manifest_desc, None, opts)
    }
}

pub(super) fn copy_progress(
    r: &mut impl Read,
    w: &mut impl io::Write,
    p: &dyn Progress,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        p.advance(n as u64);
        total += n as u64;
    }
}

/// A file in staging that hashes what is written to it.
pub(super) type Staged = HashingWriter<io::BufWriter<File>>;

/// Creates the staging file `tmp` for a blob being copied in.
pub(super) fn create_staged(tmp: &Path, sp: &Path) -> Result<Staged, ImportError> {
    let out = File::create(tmp).map_err(|source| ImportError::Write {
        source_path: sp.to_path_buf(),
        what: "staging".into(),
        source,
    })?;
    Ok(HashingWriter::new(io::BufWriter::with_capacity(
        1 << 20,
        out,
    )))
}

/// Flushes a staging file; returns the digest and size of what it holds.
pub(super) fn finish_staged(w: Staged, sp: &Path) -> Result<(Digest, u64), ImportError> {
    let (out, digest, size) = w.finish();
    out.into_inner().map_err(|e| ImportError::Write {
        source_path: sp.to_path_buf(),
        what: "staging".into(),
        source: e.into_error(),
    })?;
    Ok((digest, size))
}

pub(super) fn write_json_blob<T: serde::Serialize>(
    blobs: &Path,
    value: &T,
    media_type: &str,
    sp: &Path,
) -> Result<Descriptor, ImportError> {
    let bytes = serde_json::to_vec(value).expect("OCI JSON serialises");
    let digest = Digest::of(&bytes);
    let p = blobs.join(digest.hex());
    fs::write(&p, &bytes).map_err(|source| ImportError::Write {
        source_path: sp.to_path_buf(),
        what: "staging".into(),
        source,
    })?;
    Ok(Descriptor {
        media_type: media_type.into(),
        digest,
        size: bytes.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    })
}
