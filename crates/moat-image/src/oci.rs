//! OCI (and Docker) image JSON: descriptors, manifests, indexes, configs, and
//! the choice of the linux/amd64 manifest from an index. Pure parsing: the
//! caller supplies blob bytes; nothing here touches the file system.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{sha256_hex, Digest};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Largest JSON document (index, manifest, config) we agree to parse.
pub const MAX_JSON_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{what} is not valid JSON of the expected shape")]
    Parse {
        what: String,
        /// serde_json's message, which can quote the document: cleaned.
        #[source]
        source: crate::quote::Cleaned,
    },
    #[error("{what} names {}, which is not a sha256 digest (sha256:<64 hex digits>)", crate::quote::quote(.digest))]
    BadDigest { what: String, digest: String },
    #[error("{what} has schemaVersion {version}, expected 2")]
    SchemaVersion { what: String, version: u32 },
    #[error("{what} lists no image")]
    EmptyIndex { what: String },
    #[error("{what} has no linux/amd64 image (it has: {})", crate::quote::clean(.available))]
    NoPlatform { what: String, available: String },
    #[error("{what} lists {count} images and none is marked linux/amd64; import one of them from a layout that lists only it")]
    Ambiguous { what: String, count: usize },
    #[error("{what}: indexes nest deeper than {MAX_INDEX_DEPTH} levels")]
    TooDeep { what: String },
    #[error("{what} has media type {}, which is neither a manifest nor an index", crate::quote::quote(.media_type))]
    MediaType { what: String, media_type: String },
    #[error("image config {digest} is for {}; moat runs linux/amd64 images", crate::quote::clean(&format!("{}/{}", .os, .architecture)))]
    ConfigPlatform {
        digest: String,
        os: String,
        architecture: String,
    },
    #[error("image config {digest} lists {diff_ids} layer diff IDs but the manifest has {layers} layers")]
    LayerCount {
        digest: String,
        diff_ids: usize,
        layers: usize,
    },
    #[error("reading blob {digest} for {what}")]
    ReadBlob {
        what: String,
        digest: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Maximum nesting of indexes (an index pointing to an index ...).
pub const MAX_INDEX_DEPTH: usize = 4;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    /// Checked when the descriptor is parsed (see [`Digest`]).
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The runtime part of an image config (`.config` in the JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// An image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: RuntimeConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

/// One entry of a `docker save` archive's `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerArchiveEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|source| {
        if let Some(digest) = bad_descriptor_digest(bytes) {
            return OciError::BadDigest {
                what: what.to_string(),
                digest,
            };
        }
        OciError::Parse {
            what: what.to_string(),
            source: crate::quote::Cleaned::of(&source),
        }
    })
}

/// After a failed parse: the first descriptor digest that is not a
/// [`Digest`], so that the error names it rather than the JSON shape.
fn bad_descriptor_digest(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Raw {
        digest: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Descriptors {
        #[serde(default)]
        manifests: Vec<Raw>,
        config: Option<Raw>,
        #[serde(default)]
        layers: Vec<Raw>,
    }
    let d: Descriptors = serde_json::from_slice(bytes).ok()?;
    d.manifests
        .into_iter()
        .chain(d.config)
        .chain(d.layers)
        .filter_map(|r| match r.digest? {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        })
        .find(|s| Digest::parse(s).is_err())
}

/// Parses an index (`index.json` or a manifest list blob); every
/// descriptor's digest is checked as it is parsed.
pub fn parse_index(what: &str, bytes: &[u8]) -> Result<Index, OciError> {
    let index: Index = parse(what, bytes)?;
    if index.schema_version != 2 {
        return Err(OciError::SchemaVersion {
            what: what.to_string(),
            version: index.schema_version,
        });
    }
    Ok(index)
}

/// Parses an image manifest; every descriptor's digest is checked as it
/// is parsed.
pub fn parse_manifest(what: &str, bytes: &[u8]) -> Result<Manifest, OciError> {
    let m: Manifest = parse(what, bytes)?;
    if m.schema_version != 2 {
        return Err(OciError::SchemaVersion {
            what: what.to_string(),
            version: m.schema_version,
        });
    }
    Ok(m)
}

/// Parses an image config and checks that it is runnable here and agrees
/// with the manifest's layer count.
pub fn parse_config(digest: &str, bytes: &[u8], layers: usize) -> Result<ConfigFile, OciError> {
    let c: ConfigFile = parse(&format!("image config {digest}"), bytes)?;
    let os_ok = c.os.is_empty() || c.os == "linux";
    let arch_ok = c.architecture.is_empty() || c.architecture == "amd64";
    if !os_ok || !arch_ok {
        return Err(OciError::ConfigPlatform {
            digest: digest.to_string(),
            os: c.os,
            architecture: c.architecture,
        });
    }
    if !c.rootfs.diff_ids.is_empty() && c.rootfs.diff_ids.len() != layers {
        return Err(OciError::LayerCount {
            digest: digest.to_string(),
            diff_ids: c.rootfs.diff_ids.len(),
            layers,
        });
    }
    for d in &c.rootfs.diff_ids {
        if sha256_hex(d).is_none() {
            return Err(OciError::BadDigest {
                what: format!("image config {digest}"),
                digest: d.clone(),
            });
        }
    }
    Ok(c)
}

/// Parses a `docker save` archive's `manifest.json`.
pub fn parse_docker_manifest(bytes: &[u8]) -> Result<Vec<DockerArchiveEntry>, OciError> {
    parse("manifest.json", bytes)
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

fn is_manifest(media_type: &str) -> bool {
    media_type.is_empty() || media_type == MEDIA_OCI_MANIFEST || media_type == MEDIA_DOCKER_MANIFEST
}

fn is_amd64(p: &Platform) -> bool {
    p.os == "linux" && p.architecture == "amd64"
}

/// Chooses the linux/amd64 image manifest from an index, following nested
/// indexes through `read_blob`. Returns the manifest's descriptor and the
/// `org.opencontainers.image.ref.name` annotation found on the way, if any.
pub fn select_manifest(
    what: &str,
    index: &Index,
    read_blob: &mut dyn FnMut(&Descriptor) -> Result<Vec<u8>, OciError>,
) -> Result<(Descriptor, Option<String>), OciError> {
    select_inner(what, index, read_blob, 0)
}

fn select_inner(
    what: &str,
    index: &Index,
    read_blob: &mut dyn FnMut(&Descriptor) -> Result<Vec<u8>, OciError>,
    depth: usize,
) -> Result<(Descriptor, Option<String>), OciError> {
    if depth >= MAX_INDEX_DEPTH {
        return Err(OciError::TooDeep {
            what: what.to_string(),
        });
    }
    if index.manifests.is_empty() {
        return Err(OciError::EmptyIndex {
            what: what.to_string(),
        });
    }
    for d in &index.manifests {
        if !is_index(&d.media_type) && !is_manifest(&d.media_type) {
            return Err(OciError::MediaType {
                what: what.to_string(),
                media_type: d.media_type.clone(),
            });
        }
    }
    let with_platform = index
        .manifests
        .iter()
        .filter(|d| d.platform.is_some())
        .count();
    let chosen = if with_platform > 0 {
        match index
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(is_amd64))
        {
            Some(d) => d,
            None if with_platform == index.manifests.len() => {
                let mut available: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| match &p.variant {
                        Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect();
                available.dedup();
                return Err(OciError::NoPlatform {
                    what: what.to_string(),
                    available: available.join(", "),
                });
            }
            None => {
                let unmarked: Vec<&Descriptor> = index
                    .manifests
                    .iter()
                    .filter(|d| d.platform.is_none())
                    .collect();
                if unmarked.len() != 1 {
                    return Err(OciError::Ambiguous {
                        what: what.to_string(),
                        count: unmarked.len(),
                    });
                }
                unmarked[0]
            }
        }
    } else if index.manifests.len() == 1 {
        &index.manifests[0]
    } else {
        return Err(OciError::Ambiguous {
            what: what.to_string(),
            count: index.manifests.len(),
        });
    };
    let name = chosen.annotations.get(ANNOTATION_REF_NAME).cloned();
    if is_index(&chosen.media_type) {
        let inner_what = format!("index {}", chosen.digest);
        let bytes = read_blob(chosen)?;
        let inner = parse_index(&inner_what, &bytes)?;
        let (d, inner_name) = select_inner(&inner_what, &inner, read_blob, depth + 1)?;
        return Ok((d, name.or(inner_name)));
    }
    Ok((chosen.clone(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(digest_char: char, platform: Option<(&str, &str)>) -> Descriptor {
        Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: Digest::parse(&format!("sha256:{}", digest_char.to_string().repeat(64)))
                .unwrap(),
            size: 1,
            annotations: BTreeMap::new(),
            platform: platform.map(|(os, arch)| Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
        }
    }

    fn index(manifests: Vec<Descriptor>) -> Index {
        Index {
            schema_version: 2,
            media_type: MEDIA_OCI_INDEX.into(),
            manifests,
            annotations: BTreeMap::new(),
        }
    }

    fn no_blobs(_: &Descriptor) -> Result<Vec<u8>, OciError> {
        panic!("no blob expected")
    }

    #[test]
    fn picks_linux_amd64() {
        let idx = index(vec![
            desc('a', Some(("linux", "arm64"))),
            desc('b', Some(("linux", "amd64"))),
        ]);
        let (d, _) = select_manifest("index.json", &idx, &mut no_blobs).unwrap();
        assert_eq!(d.digest, format!("sha256:{}", "b".repeat(64)));
    }

    #[test]
    fn refuses_index_without_amd64() {
        let idx = index(vec![
            desc('a', Some(("linux", "arm64"))),
            desc('b', Some(("linux", "s390x"))),
        ]);
        let err = select_manifest("index.json", &idx, &mut no_blobs).unwrap_err();
        assert_eq!(
            err.to_string(),
            "index.json has no linux/amd64 image (it has: linux/arm64, linux/s390x)"
        );
    }

    #[test]
    fn refuses_bad_digest_in_index_and_layers() {
        let json = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:x/../y","size":1}]}"#;
        assert_eq!(
            parse_index("index.json", json).unwrap_err().to_string(),
            "index.json names \"sha256:x/../y\", which is not a sha256 digest (sha256:<64 hex digits>)"
        );
        let good = format!("sha256:{}", "a".repeat(64));
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{good}","size":1}},"layers":[{{"digest":"{good}","size":1}},{{"digest":"md5:00","size":1}}]}}"#
        );
        assert_eq!(
            parse_manifest("manifest m", json.as_bytes())
                .unwrap_err()
                .to_string(),
            "manifest m names \"md5:00\", which is not a sha256 digest (sha256:<64 hex digits>)"
        );
        let m = parse_manifest("manifest m", json.replace("md5:00", &good).as_bytes()).unwrap();
        assert_eq!(m.layers[1].digest.hex(), "a".repeat(64));
    }

    #[test]
    fn refuses_bad_digest_in_manifest() {
        let json =
            br#"{"schemaVersion":2,"config":{"digest":"sha256:../../etc","size":1},"layers":[]}"#;
        let err = parse_manifest("manifest m", json).unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest m names \"sha256:../../etc\", which is not a sha256 digest (sha256:<64 hex digits>)"
        );
    }

    #[test]
    fn nested_index_is_followed() {
        let inner = index(vec![desc('c', Some(("linux", "amd64")))]);
        let inner_bytes = serde_json::to_vec(&inner).unwrap();
        let mut outer_d = desc('d', None);
        outer_d.media_type = MEDIA_OCI_INDEX.into();
        outer_d
            .annotations
            .insert(ANNOTATION_REF_NAME.into(), "latest".into());
        let outer = index(vec![outer_d]);
        let (d, name) =
            select_manifest("index.json", &outer, &mut |_| Ok(inner_bytes.clone())).unwrap();
        assert_eq!(d.digest, format!("sha256:{}", "c".repeat(64)));
        assert_eq!(name.as_deref(), Some("latest"));
    }

    #[test]
    fn config_for_other_arch_is_refused() {
        let json =
            br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let err = parse_config("sha256:x", json, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image config sha256:x is for linux/arm64; moat runs linux/amd64 images"
        );
    }
}
