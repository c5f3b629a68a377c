//! What containerd tells the shim beyond the bundle: the runtime options
//! of a `Create` (CRI's `runtimeoptions.v1.Options`, `ctr
//! --runtime-config-path`) naming the shim's config file, and the pod a
//! container belongs to (CRI's annotations in config.json).
//!
//! The config file has the form of moat-oci's site file (docs/oci.md):
//! `policy`, `isolation`, `allow_unconfined_seccomp`, `no_new_privileges`,
//! the defaults for containers whose pod sets no `moat.dev/*` annotation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use moat_oci::site::{CONTAINER_TYPE, SANDBOX_ID};

const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("runtime options of type {0:?}: this shim takes {RUNTIME_OPTIONS} (options = {{ ConfigPath = \"FILE\" }} in containerd's runtime entry)")]
    Type(String),
    #[error("runtime options {RUNTIME_OPTIONS}: malformed protobuf at byte {0}")]
    Malformed(usize),
    #[error("shim config {path} (runtime option ConfigPath): {source}")]
    Config {
        path: String,
        #[source]
        source: moat_oci::site::SiteError,
    },
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a runtime-spec config.json ({source})")]
    Spec {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The shim's config file named by the options, checked to parse (moat-oci
/// reads it again for each container). `None`: no options, or no path.
pub fn config_path(type_url: &str, value: &[u8]) -> Result<Option<PathBuf>, OptionsError> {
    if type_url.is_empty() && value.is_empty() {
        return Ok(None);
    }
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    if name != RUNTIME_OPTIONS {
        return Err(OptionsError::Type(type_url.to_string()));
    }
    let Some(path) = string_field(value, 2)? else {
        return Ok(None);
    };
    if path.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| OptionsError::Read {
        path: path.clone(),
        source,
    })?;
    moat_oci::site::Site::parse(&text, &path).map_err(|source| OptionsError::Config {
        path: path.clone(),
        source,
    })?;
    Ok(Some(PathBuf::from(path)))
}

/// Field `want` (a length-delimited string) of a protobuf message; the
/// message has only string fields (`type_url` = 1, `config_path` = 2).
fn string_field(buf: &[u8], want: u64) -> Result<Option<String>, OptionsError> {
    let mut i = 0;
    let mut found = None;
    while i < buf.len() {
        let at = i;
        let key = varint(buf, &mut i).ok_or(OptionsError::Malformed(at))?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(buf, &mut i).ok_or(OptionsError::Malformed(at))?;
            }
            2 => {
                let len = varint(buf, &mut i).ok_or(OptionsError::Malformed(at))? as usize;
                let end = i.checked_add(len).filter(|e| *e <= buf.len());
                let end = end.ok_or(OptionsError::Malformed(at))?;
                if field == want {
                    let s = std::str::from_utf8(&buf[i..end])
                        .map_err(|_| OptionsError::Malformed(i))?;
                    found = Some(s.to_string());
                }
                i = end;
            }
            _ => return Err(OptionsError::Malformed(at)),
        }
    }
    Ok(found)
}

fn varint(buf: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*i)?;
        *i += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The annotations of a bundle's config.json.
pub fn annotations(bundle: &Path) -> Result<HashMap<String, String>, OptionsError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|source| OptionsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    #[derive(serde::Deserialize)]
    struct Partial {
        #[serde(default)]
        annotations: Option<HashMap<String, String>>,
    }
    let p: Partial = serde_json::from_slice(&text).map_err(|source| OptionsError::Spec {
        path: path.display().to_string(),
        source,
    })?;
    Ok(p.annotations.unwrap_or_default())
}

/// The shim a container belongs to: its pod's sandbox id, else its own.
pub fn grouping(id: &str, annotations: &HashMap<String, String>) -> String {
    match annotations.get(SANDBOX_ID) {
        Some(s) if !s.is_empty() => s.clone(),
        _ => id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(type_url: &str, path: &str) -> Vec<u8> {
        let mut v = vec![0x0a, type_url.len() as u8];
        v.extend(type_url.as_bytes());
        v.push(0x12);
        v.push(path.len() as u8);
        v.extend(path.as_bytes());
        v
    }

    #[test]
    fn config_path_is_read_from_runtime_options() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("moat.yaml");
        std::fs::write(&f, "isolation: vm\npolicy: baseline\n").unwrap();
        let m = message("x", f.to_str().unwrap());
        let got = config_path("runtimeoptions.v1.Options", &m).unwrap();
        assert_eq!(got.as_deref(), Some(f.as_path()));
        assert_eq!(config_path("", &[]).unwrap(), None);
    }

    #[test]
    fn bad_options_and_bad_config_are_named() {
        let e = config_path("containerd.runc.v1.Options", &[1]).unwrap_err();
        assert!(e.to_string().starts_with(
            "runtime options of type \"containerd.runc.v1.Options\": this shim takes runtimeoptions.v1.Options"
        ), "{e}");
        let e = config_path("runtimeoptions.v1.Options", &[0x12, 9, b'a']).unwrap_err();
        assert_eq!(
            e.to_string(),
            "runtime options runtimeoptions.v1.Options: malformed protobuf at byte 0"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("moat.yaml");
        std::fs::write(&f, "isolation: kvm\n").unwrap();
        let m = message("", f.to_str().unwrap());
        let e = config_path("runtimeoptions.v1.Options", &m).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("(runtime option ConfigPath)"), "{chain}");
        assert!(
            chain.contains(":1: isolation \"kvm\": use sandbox or vm"),
            "{chain}"
        );
    }

    #[test]
    fn pod_containers_group_by_sandbox_id() {
        let mut a = HashMap::new();
        assert_eq!(grouping("c1", &a), "c1");
        a.insert(SANDBOX_ID.to_string(), "pod1".to_string());
        assert_eq!(grouping("c1", &a), "pod1");
    }
}
