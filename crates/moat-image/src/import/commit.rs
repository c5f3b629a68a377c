//! The tail every source shares: unpack the staged layers, check the
//! config, move blobs and rootfs into the store, write the record and name.

use std::fs::{self, File};
use std::path::Path;

use crate::digest::Digest;
use crate::oci::{self, Descriptor};
use crate::store::{normalize_name, LayerInfo, Record, Store};
use crate::Image;

use super::{file_stem_name, ImportError, ImportOptions, Source};

impl Store {
    pub(super) fn unpack_staged(
        &self,
        layers: &[LayerInfo],
        staging_blobs: &Path,
        rootfs: &Path,
        sp: &Path,
        opts: &ImportOptions<'_>,
    ) -> Result<(Vec<String>, Vec<String>), ImportError> {
        use std::os::fd::AsFd;
        let root = crate::unpack::create_root(rootfs).map_err(|source| ImportError::Write {
            source_path: sp.to_path_buf(),
            what: "staging".into(),
            source,
        })?;
        let mut budget = crate::unpack::Budget::default();
        let mut diff_ids = Vec::new();
        let total: u64 = layers.iter().map(|l| l.size).sum();
        opts.progress.phase("unpacking", total);
        for layer in layers {
            let staged = staging_blobs.join(layer.digest.hex());
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
                digest: layer.digest.to_string(),
                source,
            })?;
            diff_ids.push(d.into());
        }
        let added =
            crate::mountpoints::add_missing(root.as_fd()).map_err(|source| ImportError::Write {
                source_path: sp.to_path_buf(),
                what: "staging".into(),
                source,
            })?;
        Ok((diff_ids, added))
    }

    pub(super) fn finish_import(
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
            imported: moat_plan::time::now_rfc3339(),
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
                self.unpack_staged(&record.layers, staging_blobs, &rootfs, &sp, opts)?;
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
    pub(super) fn commit(
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
        let wanted: Vec<&Digest> = std::iter::once(&record.manifest_digest)
            .chain(std::iter::once(&record.config_digest))
            .chain(record.layers.iter().map(|l| &l.digest))
            .collect();
        for d in wanted {
            let staged = staging_blobs.join(d.hex());
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
                    referrer: record.manifest_digest.to_string(),
                    digest: d.to_string(),
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
        names.names.insert(name, record.manifest_digest.to_string());
        self.write_names(&names).map_err(store_err)?;
        self.image_of(&record, &names).map_err(store_err)
    }
}
