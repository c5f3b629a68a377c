//! `Store::import`: OCI layout directories, OCI archives, `docker save`
//! archives and plain rootfs tarballs, staged under `<root>/tmp` and made
//! visible in one rename of the image record.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use crate::digest::{sha256_hex, sha256_of, HashingWriter};
use crate::fsat::{open_input_file, InputFileError};
use crate::oci::{self, Descriptor, OciError};
use crate::store::{normalize_name, now_rfc3339, LayerInfo, Record, Store, StoreError};
use crate::unpack::{Compression, UnpackError, UnpackOptions};
use crate::Image;

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
struct Source<'a> {
    path: &'a Path,
    /// Whether the blobs were extracted into staging (archives) and
    /// verified there; else they are read from the layout's
    /// `blobs/sha256`.
    extracted: bool,
}

fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => oci::MEDIA_OCI_LAYER_GZIP,
        Compression::Zstd => oci::MEDIA_OCI_LAYER_ZSTD,
        Compression::None => oci::MEDIA_OCI_LAYER,
    }
}

fn file_stem_name(path: &Path) -> String {
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
const MAX_META: u64 = oci::MAX_JSON_BYTES;

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

    /// Reads the layout's `oci-layout` and `index.json` and picks the image.
    fn layout_manifest(
        &self,
        src: &Source<'_>,
        staging_blobs: &Path,
    ) -> Result<(Descriptor, Option<String>), ImportError> {
        let sp = src.path.to_path_buf();
        // O_PATH first, type checked, then reopened: a FIFO never blocks
        // the import and a symlink (to /etc/shadow, say) is never read.
        let open = |name: &str| match open_input_file(src.path, name) {
            Ok(f) => Ok(f),
            Err(InputFileError::Missing) => Err(ImportError::NotLayout {
                source_path: sp.clone(),
            }),
            Err(InputFileError::NotRegular(kind)) => Err(ImportError::NotRegular {
                source_path: sp.clone(),
                what: name.to_string(),
                kind,
            }),
            Err(InputFileError::Io(source)) => Err(ImportError::Read {
                source_path: sp.clone(),
                what: name.to_string(),
                source: crate::quote::clean_io(source),
            }),
        };
        open("oci-layout")?;
        let index_file = open("index.json")?;
        let mut bytes = Vec::new();
        index_file
            .take(MAX_META + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ImportError::Read {
                source_path: sp.clone(),
                what: "index.json".into(),
                source: crate::quote::clean_io(source),
            })?;
        if bytes.len() as u64 > MAX_META {
            return Err(ImportError::TooBig {
                source_path: sp.clone(),
                what: "index.json".into(),
                limit: MAX_META,
            });
        }
        let index = oci::parse_index("index.json", &bytes).map_err(|source| ImportError::Oci {
            source_path: sp.clone(),
            source,
        })?;
        self.select(src, staging_blobs, &index)
    }

    fn select(
        &self,
        src: &Source<'_>,
        staging_blobs: &Path,
        index: &oci::Index,
    ) -> Result<(Descriptor, Option<String>), ImportError> {
        let sp = src.path.to_path_buf();
        let mut err: Option<ImportError> = None;
        let result = oci::select_manifest("index.json", index, &mut |d| match self.small_blob(
            src,
            staging_blobs,
            d,
            "index.json",
        ) {
            Ok(b) => Ok(b),
            Err(e) => {
                let msg = e.to_string();
                err = Some(e);
                Err(OciError::ReadBlob {
                    what: "index".into(),
                    digest: d.digest.clone(),
                    source: msg.into(),
                })
            }
        });
        match result {
            Ok(r) => Ok(r),
            Err(_) if err.is_some() => Err(err.expect("checked")),
            Err(source) => Err(ImportError::Oci {
                source_path: sp,
                source,
            }),
        }
    }

    /// Brings blob `d` into staging (verified) and returns its content.
    fn small_blob(
        &self,
        src: &Source<'_>,
        staging_blobs: &Path,
        d: &Descriptor,
        referrer: &str,
    ) -> Result<Vec<u8>, ImportError> {
        let sp = src.path.to_path_buf();
        if d.size > MAX_META {
            return Err(ImportError::TooBig {
                source_path: sp,
                what: format!("blob {}", d.digest),
                limit: MAX_META,
            });
        }
        let p = self.stage_blob(src, staging_blobs, d, referrer)?;
        fs::read(&p).map_err(|source| ImportError::Read {
            source_path: sp,
            what: format!("blob {}", d.digest),
            source,
        })
    }

    /// Makes blob `d` available for the import: already in the store (no
    /// copy), already extracted to staging, or copied there from the layout
    /// with its digest and size checked. Returns where it now is.
    fn stage_blob(
        &self,
        src: &Source<'_>,
        staging_blobs: &Path,
        d: &Descriptor,
        referrer: &str,
    ) -> Result<PathBuf, ImportError> {
        let sp = src.path.to_path_buf();
        let hex = sha256_hex(&d.digest).expect("descriptors are checked when parsed");
        let staged = staging_blobs.join(hex);
        let check_size = |actual: u64| {
            if actual != d.size {
                Err(ImportError::BlobSize {
                    source_path: sp.clone(),
                    digest: d.digest.clone(),
                    expected: d.size,
                    actual,
                })
            } else {
                Ok(())
            }
        };
        if let Ok(m) = fs::metadata(&staged) {
            check_size(m.len())?;
            return Ok(staged);
        }
        let in_store = self
            .blob_path(&d.digest)
            .map_err(|source| ImportError::Store {
                source_path: sp.clone(),
                source: Box::new(source),
            })?;
        if let Ok(m) = fs::metadata(&in_store) {
            if m.len() == d.size {
                return Ok(in_store);
            }
        }
        if src.extracted {
            return Err(ImportError::MissingBlob {
                source_path: sp,
                referrer: referrer.to_string(),
                digest: d.digest.clone(),
            });
        }
        let input = match open_input_file(src.path, &format!("blobs/sha256/{hex}")) {
            Ok(f) => f,
            Err(InputFileError::Missing) => {
                return Err(ImportError::MissingBlob {
                    source_path: sp,
                    referrer: referrer.to_string(),
                    digest: d.digest.clone(),
                })
            }
            Err(InputFileError::NotRegular(kind)) => {
                return Err(ImportError::NotRegular {
                    source_path: sp,
                    what: format!("blob {}", d.digest),
                    kind,
                })
            }
            Err(InputFileError::Io(source)) => {
                return Err(ImportError::Read {
                    source_path: sp,
                    what: format!("blob {}", d.digest),
                    source,
                })
            }
        };
        let tmp = staging_blobs.join(format!("{hex}.partial"));
        let out = File::create(&tmp).map_err(|source| ImportError::Write {
            source_path: sp.clone(),
            what: "staging".into(),
            source,
        })?;
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, out));
        io::copy(&mut input.take(d.size.saturating_add(1)), &mut w).map_err(|source| {
            ImportError::Read {
                source_path: sp.clone(),
                what: format!("blob {}", d.digest),
                source,
            }
        })?;
        let (out, actual, n) = w.finish();
        out.into_inner().map_err(|e| ImportError::Write {
            source_path: sp.clone(),
            what: "staging".into(),
            source: e.into_error(),
        })?;
        check_size(n)?;
        if actual != d.digest {
            return Err(ImportError::BlobDigest {
                source_path: sp,
                digest: d.digest.clone(),
                actual,
            });
        }
        fs::rename(&tmp, &staged).map_err(|source| ImportError::Write {
            source_path: sp,
            what: "staging".into(),
            source,
        })?;
        Ok(staged)
    }

    /// Reads a `docker save` archive: extracts the config and layers named in
    /// manifest.json, and writes an OCI manifest for them.
    fn docker_archive(
        &self,
        f: &mut File,
        path: &Path,
        blobs: &Path,
        manifest_json: &[u8],
    ) -> Result<(Descriptor, Option<String>), ImportError> {
        let sp = path.to_path_buf();
        let entries =
            oci::parse_docker_manifest(manifest_json).map_err(|source| ImportError::Oci {
                source_path: sp.clone(),
                source,
            })?;
        if entries.len() != 1 {
            return Err(ImportError::DockerCount {
                source_path: sp,
                count: entries.len(),
            });
        }
        let e = &entries[0];
        let wanted: Vec<String> = std::iter::once(e.config.clone())
            .chain(e.layers.iter().cloned())
            .map(|n| clean_member(&n))
            .collect();
        let found = extract_members(f, path, blobs, |name| {
            wanted
                .contains(&name.to_string())
                .then(|| format!("member-{}", sha256_of(name.as_bytes()).split_at(7).1))
        })?;
        let lookup = |name: &str| -> Result<(String, u64, PathBuf), ImportError> {
            let clean = clean_member(name);
            let (digest, size) =
                found
                    .get(&clean)
                    .cloned()
                    .ok_or_else(|| ImportError::MissingBlob {
                        source_path: sp.clone(),
                        referrer: "manifest.json".into(),
                        digest: name.to_string(),
                    })?;
            let hex = sha256_hex(&digest).expect("computed");
            let tmp_name = format!("member-{}", sha256_of(clean.as_bytes()).split_at(7).1);
            let dest = blobs.join(hex);
            if !dest.exists() {
                fs::hard_link(blobs.join(&tmp_name), &dest).map_err(|source| {
                    ImportError::Write {
                        source_path: sp.clone(),
                        what: "staging".into(),
                        source,
                    }
                })?;
            }
            Ok((digest, size, dest))
        };
        let (config_digest, config_size, _) = lookup(&e.config)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let (digest, size, p) = lookup(l)?;
            let mut head = [0u8; 4];
            let n = File::open(&p)
                .and_then(|mut f| f.read(&mut head))
                .unwrap_or(0);
            layers.push(Descriptor {
                media_type: layer_media_type(Compression::sniff(&head[..n])).into(),
                digest,
                size,
                annotations: BTreeMap::new(),
                platform: None,
            });
        }
        let manifest = oci::Manifest {
            schema_version: 2,
            media_type: oci::MEDIA_OCI_MANIFEST.into(),
            config: Descriptor {
                media_type: oci::MEDIA_OCI_CONFIG.into(),
                digest: config_digest,
                size: config_size,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers,
            annotations: BTreeMap::new(),
        };
        let desc = write_json_blob(blobs, &manifest, oci::MEDIA_OCI_MANIFEST, &sp)?;
        let name = e.repo_tags.as_ref().and_then(|t| t.first().cloned());
        Ok((desc, name))
    }

    /// A plain rootfs tarball becomes a one-layer image with a minimal config.
    fn import_rootfs(
        &self,
        mut f: File,
        path: &Path,
        blobs: &Path,
        staging: &Path,
        opts: &ImportOptions<'_>,
    ) -> Result<Image, ImportError> {
        let sp = path.to_path_buf();
        f.rewind().map_err(|source| ImportError::Read {
            source_path: sp.clone(),
            what: "it".into(),
            source: crate::quote::clean_io(source),
        })?;
        let total = f.metadata().map(|m| m.len()).unwrap_or(0);
        let tmp = blobs.join("layer.partial");
        let out = File::create(&tmp).map_err(|source| ImportError::Write {
            source_path: sp.clone(),
            what: "staging".into(),
            source,
        })?;
        let w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, out));
        // An uncompressed tarball is stored gzip-compressed (fast level,
        // deterministic header): the blob is the store's long-lived copy of
        // the image, and uncompressed it doubled the image's footprint.
        let mut head = [0u8; 4];
        let n = f.read(&mut head).unwrap_or(0);
        f.rewind().map_err(|source| ImportError::Read {
            source_path: sp.clone(),
            what: "it".into(),
            source: crate::quote::clean_io(source),
        })?;
        let read_err = |source| ImportError::Read {
            source_path: sp.clone(),
            what: "it".into(),
            source: crate::quote::clean_io(source),
        };
        opts.progress.phase("copying", total);
        let w = if Compression::sniff(&head[..n]) == Compression::None {
            let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
            copy_progress(&mut f, &mut gz, opts.progress).map_err(read_err)?;
            gz.finish().map_err(|source| ImportError::Write {
                source_path: sp.clone(),
                what: "staging".into(),
                source,
            })?
        } else {
            let mut w = w;
            copy_progress(&mut f, &mut w, opts.progress).map_err(read_err)?;
            w
        };
        let (out, digest, size) = w.finish();
        out.into_inner().map_err(|e| ImportError::Write {
            source_path: sp.clone(),
            what: "staging".into(),
            source: e.into_error(),
        })?;
        let blob = blobs.join(sha256_hex(&digest).expect("computed"));
        fs::rename(&tmp, &blob).map_err(|source| ImportError::Write {
            source_path: sp.clone(),
            what: "staging".into(),
            source,
        })?;
        let mut head = [0u8; 4];
        let n = File::open(&blob)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        let media_type = layer_media_type(Compression::sniff(&head[..n])).to_string();
        // Unpack first: the diff ID is only known after.
        let rootfs = staging.join("rootfs");
        let mut record = Record {
            manifest_digest: String::new(),
            config_digest: String::new(),
            manifest_size: 0,
            config_size: 0,
            layers: vec![LayerInfo {
                digest: digest.clone(),
                diff_id: String::new(),
                size,
                media_type: media_type.clone(),
            }],
            imported: now_rfc3339(),
            source: opts
                .source
                .clone()
                .unwrap_or_else(|| sp.display().to_string()),
            unpack: opts.unpack,
            mount_points: Vec::new(),
        };
        let (diff_ids, added) = self.unpack_staged(&record, blobs, &rootfs, &sp, opts)?;
        record.layers[0].diff_id = diff_ids[0].clone();
        record.mount_points = added;
        let config = oci::ConfigFile {
            created: Some(record.imported.clone()),
            architecture: "amd64".into(),
            os: "linux".into(),
            config: oci::RuntimeConfig {
                env: Some(vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ]),
                cmd: Some(vec!["/bin/sh".into()]),
                ..Default::default()
            },
            rootfs: oci::RootFs {
                kind: "layers".into(),
                diff_ids,
            },
            history: vec![oci::History {
                created: Some(record.imported.clone()),
                created_by: Some(format!("moat image import {}", sp.display())),
                empty_layer: false,
            }],
        };
        let config_desc = write_json_blob(blobs, &config, oci::MEDIA_OCI_CONFIG, &sp)?;
        let manifest = oci::Manifest {
            schema_version: 2,
            media_type: oci::MEDIA_OCI_MANIFEST.into(),
            config: config_desc.clone(),
            layers: vec![Descriptor {
                media_type,
                digest,
                size,
                annotations: BTreeMap::new(),
                platform: None,
            }],
            annotations: BTreeMap::new(),
        };
        let manifest_desc = write_json_blob(blobs, &manifest, oci::MEDIA_OCI_MANIFEST, &sp)?;
        record.manifest_digest = manifest_desc.digest.clone();
        record.manifest_size = manifest_desc.size;
        record.config_digest = config_desc.digest;
        record.config_size = config_desc.size;
        let name = opts.name.clone().unwrap_or_else(|| file_stem_name(path));
        self.commit(record, blobs, Some(&rootfs), &name, &sp)
    }

    fn unpack_staged(
        &self,
        record: &Record,
        staging_blobs: &Path,
        rootfs: &Path,
        sp: &Path,
        opts: &ImportOptions<'_>,
    ) -> Result<(Vec<String>, Vec<String>), ImportError> {
        use std::os::fd::AsFd;
        fs::create_dir(rootfs).map_err(|source| ImportError::Write {
            source_path: sp.to_path_buf(),
            what: "staging".into(),
            source,
        })?;
        let root = File::open(rootfs).map_err(|source| ImportError::Write {
            source_path: sp.to_path_buf(),
            what: "staging".into(),
            source,
        })?;
        let mut budget = crate::unpack::Budget::default();
        let mut diff_ids = Vec::new();
        let total: u64 = record.layers.iter().map(|l| l.size).sum();
        opts.progress.phase("unpacking", total);
        for layer in &record.layers {
            let hex = sha256_hex(&layer.digest).expect("checked");
            let staged = staging_blobs.join(hex);
            let p = if staged.exists() {
                staged
            } else {
                self.blob_path(&layer.digest)
                    .map_err(|source| ImportError::Store {
                        source_path: sp.to_path_buf(),
                        source: Box::new(source),
                    })?
            };
            let blob = File::open(&p).map_err(|source| ImportError::Read {
                source_path: sp.to_path_buf(),
                what: format!("blob {}", layer.digest),
                source,
            })?;
            let diff = (!layer.diff_id.is_empty()).then_some(layer.diff_id.as_str());
            let d = crate::unpack::apply_layer_blob(
                root.as_fd(),
                blob,
                Some(&layer.digest),
                diff,
                &opts.unpack,
                &mut budget,
                &mut |n| opts.progress.advance(n),
            )
            .map_err(|source| ImportError::Layer {
                source_path: sp.to_path_buf(),
                digest: layer.digest.clone(),
                source,
            })?;
            diff_ids.push(d);
        }
        let added =
            crate::mountpoints::add_missing(root.as_fd()).map_err(|source| ImportError::Write {
                source_path: sp.to_path_buf(),
                what: "staging".into(),
                source,
            })?;
        Ok((diff_ids, added))
    }

    fn finish_import(
        &self,
        src: &Source<'_>,
        staging_blobs: &Path,
        staging: &Path,
        manifest_desc: Descriptor,
        ref_name: Option<String>,
        opts: &ImportOptions<'_>,
    ) -> Result<Image, ImportError> {
        let sp = src.path.to_path_buf();
        let mbytes = self.small_blob(src, staging_blobs, &manifest_desc, "index.json")?;
        let mwhat = format!("manifest {}", manifest_desc.digest);
        let manifest = oci::parse_manifest(&mwhat, &mbytes).map_err(|source| ImportError::Oci {
            source_path: sp.clone(),
            source,
        })?;
        let cbytes = self.small_blob(src, staging_blobs, &manifest.config, &mwhat)?;
        let config = oci::parse_config(&manifest.config.digest, &cbytes, manifest.layers.len())
            .map_err(|source| ImportError::Oci {
                source_path: sp.clone(),
                source,
            })?;
        for l in &manifest.layers {
            self.stage_blob(src, staging_blobs, l, &mwhat)?;
        }
        let record = Record {
            manifest_digest: manifest_desc.digest.clone(),
            config_digest: manifest.config.digest.clone(),
            manifest_size: manifest_desc.size,
            config_size: manifest.config.size,
            layers: manifest
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| LayerInfo {
                    digest: l.digest.clone(),
                    diff_id: config.rootfs.diff_ids.get(i).cloned().unwrap_or_default(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                })
                .collect(),
            imported: now_rfc3339(),
            source: opts
                .source
                .clone()
                .unwrap_or_else(|| sp.display().to_string()),
            unpack: opts.unpack,
            mount_points: Vec::new(),
        };
        let name = match (&opts.name, ref_name) {
            (Some(n), _) => n.clone(),
            (None, Some(r)) if r.contains(':') || r.contains('/') => r,
            (None, Some(tag)) => format!("{}:{tag}", file_stem_name(src.path)),
            (None, None) => file_stem_name(src.path),
        };
        let name = if normalize_name(&name).is_ok() {
            name
        } else {
            file_stem_name(src.path)
        };
        let existing_rootfs = self
            .rootfs_path(&record.manifest_digest)
            .map_err(|source| ImportError::Store {
                source_path: sp.clone(),
                source: Box::new(source),
            })?;
        let rootfs = staging.join("rootfs");
        let mut record = record;
        if opts.materialise && !existing_rootfs.is_dir() {
            let (diff_ids, added) =
                self.unpack_staged(&record, staging_blobs, &rootfs, &sp, opts)?;
            for (l, d) in record.layers.iter_mut().zip(diff_ids) {
                l.diff_id = d;
            }
            record.mount_points = added;
        }
        let rootfs_opt = rootfs.is_dir().then_some(rootfs.as_path());
        self.commit(record, staging_blobs, rootfs_opt, &name, &sp)
    }

    /// Moves staged blobs and rootfs into the store, then makes the image
    /// visible by writing its record and name.
    fn commit(
        &self,
        record: Record,
        staging_blobs: &Path,
        rootfs: Option<&Path>,
        name: &str,
        sp: &Path,
    ) -> Result<Image, ImportError> {
        let store_err = |source| ImportError::Store {
            source_path: sp.to_path_buf(),
            source: Box::new(source),
        };
        let name = normalize_name(name).map_err(store_err)?;
        let _meta = self.lock_meta().map_err(store_err)?;
        let wanted: Vec<&String> = std::iter::once(&record.manifest_digest)
            .chain(std::iter::once(&record.config_digest))
            .chain(record.layers.iter().map(|l| &l.digest))
            .collect();
        for d in wanted {
            let hex = sha256_hex(d).expect("checked");
            let staged = staging_blobs.join(hex);
            let dest = self.blob_path(d).map_err(store_err)?;
            if staged.exists() && !dest.exists() {
                fs::rename(&staged, &dest).map_err(|source| ImportError::Write {
                    source_path: sp.to_path_buf(),
                    what: dest.display().to_string(),
                    source,
                })?;
            } else if !dest.exists() {
                return Err(ImportError::MissingBlob {
                    source_path: sp.to_path_buf(),
                    referrer: record.manifest_digest.clone(),
                    digest: d.clone(),
                });
            }
        }
        if let Some(r) = rootfs {
            let dest = self
                .rootfs_path(&record.manifest_digest)
                .map_err(store_err)?;
            if !dest.exists() {
                fs::rename(r, &dest).map_err(|source| ImportError::Write {
                    source_path: sp.to_path_buf(),
                    what: dest.display().to_string(),
                    source,
                })?;
            }
        }
        let mut record = record;
        if let Some(old) = self
            .read_record(&record.manifest_digest)
            .map_err(store_err)?
        {
            record.imported = old.imported; // re-import: keep the original time
                                            // The same content from a file does not replace where it was
                                            // pulled from: trust rules are checked against that origin.
            if old.source.starts_with("docker://") && !record.source.starts_with("docker://") {
                record.source = old.source;
            }
            if record.mount_points.is_empty() {
                record.mount_points = old.mount_points; // the rootfs was kept
            }
        }
        self.write_record(&record).map_err(store_err)?;
        let mut names = self.read_names().map_err(store_err)?;
        names.names.insert(name, record.manifest_digest.clone());
        self.write_names(&names).map_err(store_err)?;
        self.image_of(&record, &names).map_err(store_err)
    }
}

fn copy_progress(r: &mut impl Read, w: &mut impl io::Write, p: &dyn Progress) -> io::Result<u64> {
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

fn write_json_blob<T: serde::Serialize>(
    blobs: &Path,
    value: &T,
    media_type: &str,
    sp: &Path,
) -> Result<Descriptor, ImportError> {
    let bytes = serde_json::to_vec(value).expect("OCI JSON serialises");
    let digest = sha256_of(&bytes);
    let p = blobs.join(sha256_hex(&digest).expect("computed"));
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

struct OciMeta {
    index: Vec<u8>,
}

enum ArchiveKind {
    Oci(OciMeta),
    Docker(Vec<u8>),
    Rootfs,
}

/// `./a/b` -> `a/b`.
fn clean_member(name: &str) -> String {
    let mut s = name;
    while let Some(r) = s.strip_prefix("./") {
        s = r;
    }
    s.trim_start_matches('/').to_string()
}

/// Decides what kind of tar file this is from its member names (one pass
/// over the headers, seeking over data). Compressed files are rootfs
/// tarballs: OCI and docker archives are plain tars.
fn sniff_archive(f: &mut File, path: &Path) -> Result<ArchiveKind, ImportError> {
    let sp = path.to_path_buf();
    let read_err = |source| ImportError::Read {
        source_path: sp.clone(),
        what: "the archive".into(),
        source: crate::quote::clean_io(source),
    };
    let mut head = [0u8; 4];
    let n = f.read(&mut head).map_err(read_err)?;
    f.rewind().map_err(read_err)?;
    if Compression::sniff(&head[..n]) != Compression::None {
        return Ok(ArchiveKind::Rootfs);
    }
    let mut has_layout = false;
    let mut index = None;
    let mut docker = None;
    {
        let mut ar = tar::Archive::new(BufReader::new(&mut *f));
        let entries = ar.entries_with_seek().map_err(read_err)?;
        for e in entries {
            let mut e = match e {
                Ok(e) => e,
                // Not a tar at all, or damaged: the rootfs path reports it
                // with the entry.
                Err(_) => return Ok(ArchiveKind::Rootfs),
            };
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = clean_member(&String::from_utf8_lossy(&e.path_bytes()));
            let slot = match name.as_str() {
                "oci-layout" => {
                    has_layout = true;
                    continue;
                }
                "index.json" => &mut index,
                "manifest.json" => &mut docker,
                _ => continue,
            };
            if e.size() > MAX_META {
                return Err(ImportError::TooBig {
                    source_path: sp.clone(),
                    what: name,
                    limit: MAX_META,
                });
            }
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).map_err(read_err)?;
            *slot = Some(buf);
        }
    }
    f.rewind().map_err(read_err)?;
    Ok(match (has_layout, index, docker) {
        (true, Some(index), _) => ArchiveKind::Oci(OciMeta { index }),
        (_, _, Some(m)) if oci::parse_docker_manifest(&m).is_ok() => ArchiveKind::Docker(m),
        _ => ArchiveKind::Rootfs,
    })
}

/// Extracts the regular-file members for which `target` returns a file
/// name into `dir`, hashing each. Members named after a digest
/// (`blobs/sha256/<hex>`) must hash to it. Returns member -> (digest, size).
fn extract_members(
    f: &mut File,
    path: &Path,
    dir: &Path,
    target: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, (String, u64)>, ImportError> {
    let sp = path.to_path_buf();
    let read_err = |source| ImportError::Read {
        source_path: sp.clone(),
        what: "the archive".into(),
        source: crate::quote::clean_io(source),
    };
    f.rewind().map_err(read_err)?;
    let mut found = HashMap::new();
    let mut ar = tar::Archive::new(BufReader::with_capacity(1 << 20, &mut *f));
    let mut links = Vec::new();
    for e in ar.entries_with_seek().map_err(read_err)? {
        let mut e = e.map_err(read_err)?;
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let name = clean_member(&raw);
        let kind = e.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Some(t) = e.link_name_bytes() {
                let t = String::from_utf8_lossy(&t).into_owned();
                links.push((name, t, kind.is_symlink()));
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let Some(file) = target(&name) else { continue };
        if name.split('/').any(|c| c == "..") {
            return Err(ImportError::BadMember {
                source_path: sp.clone(),
                entry: raw,
            });
        }
        let tmp = dir.join(format!("{file}.partial"));
        let out = File::create(&tmp).map_err(|source| ImportError::Write {
            source_path: sp.clone(),
            what: "staging".into(),
            source,
        })?;
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, out));
        io::copy(&mut e, &mut w).map_err(read_err)?;
        let (out, digest, size) = w.finish();
        out.into_inner().map_err(|e| ImportError::Write {
            source_path: sp.clone(),
            what: "staging".into(),
            source: e.into_error(),
        })?;
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            if digest != format!("sha256:{hex}") {
                return Err(ImportError::MemberDigest {
                    source_path: sp.clone(),
                    entry: raw,
                    actual: digest,
                });
            }
        }
        fs::rename(&tmp, dir.join(&file)).map_err(|source| ImportError::Write {
            source_path: sp.clone(),
            what: "staging".into(),
            source,
        })?;
        found.insert(name, (digest, size));
    }
    // docker save deduplicates layers with links between members.
    for (name, t, symlink) in links {
        let resolved = if symlink {
            let base = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let mut parts: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
            for c in t.split('/') {
                match c {
                    "" | "." => {}
                    ".." => {
                        parts.pop();
                    }
                    c => parts.push(c),
                }
            }
            parts.join("/")
        } else {
            clean_member(&t)
        };
        if let Some(v) = found.get(&resolved).cloned() {
            if target(&name).is_some() {
                let (src_file, dst_file) = (target(&resolved), target(&name));
                if let (Some(s), Some(d)) = (src_file, dst_file) {
                    let _ = fs::hard_link(dir.join(s), dir.join(d));
                }
            }
            found.insert(name, v);
        }
    }
    Ok(found)
}
