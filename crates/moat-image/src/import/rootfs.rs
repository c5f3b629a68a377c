//! Plain rootfs tarballs: a one-layer image with a minimal config.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek};
use std::path::Path;

use crate::layer::Compression;
use crate::oci::{self, Descriptor};
use crate::store::{LayerInfo, Record, Store};
use crate::Image;

use super::{
    copy_progress, create_staged, file_stem_name, finish_staged, layer_media_type, write_json_blob,
    ImportError, ImportOptions,
};

impl Store {
    /// A plain rootfs tarball becomes a one-layer image with a minimal config.
    pub(super) fn import_rootfs(
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
        let w = create_staged(&tmp, &sp)?;
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
        let (digest, size) = finish_staged(w, &sp)?;
        let blob = blobs.join(digest.hex());
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
        let mut layers = vec![LayerInfo {
            digest: digest.clone(),
            diff_id: String::new(),
            size,
            media_type: media_type.clone(),
        }];
        let imported = moat_plan::time::now_rfc3339();
        let (diff_ids, added) = self.unpack_staged(&layers, blobs, &rootfs, &sp, opts)?;
        layers[0].diff_id = diff_ids[0].clone();
        let config = oci::ConfigFile {
            created: Some(imported.clone()),
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
                created: Some(imported.clone()),
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
        let record = Record {
            manifest_digest: manifest_desc.digest,
            config_digest: config_desc.digest,
            manifest_size: manifest_desc.size,
            config_size: config_desc.size,
            layers,
            imported,
            source: opts
                .source
                .clone()
                .unwrap_or_else(|| sp.display().to_string()),
            unpack: opts.unpack,
            mount_points: added,
        };
        let name = opts.name.clone().unwrap_or_else(|| file_stem_name(path));
        self.commit(record, blobs, Some(&rootfs), &name, &sp)
    }
}
