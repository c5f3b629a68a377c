//! `docker save` archives: the config and layers named in manifest.json,
//! and an OCI manifest written for them.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::layer::Compression;
use crate::oci::{self, Descriptor};
use crate::store::Store;

use super::archive::{clean_member, extract_members};
use super::{layer_media_type, write_json_blob, ImportError};

impl Store {
    /// Reads a `docker save` archive: extracts the config and layers named in
    /// manifest.json, and writes an OCI manifest for them.
    pub(super) fn docker_archive(
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
                .then(|| format!("member-{}", Digest::of(name.as_bytes()).hex()))
        })?;
        let lookup = |name: &str| -> Result<(Digest, u64, PathBuf), ImportError> {
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
            let tmp_name = format!("member-{}", Digest::of(clean.as_bytes()).hex());
            let dest = blobs.join(digest.hex());
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
}
