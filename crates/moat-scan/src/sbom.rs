//! CycloneDX JSON SBOMs as scan input (`moat scan --sbom FILE`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::ecosystem;
use crate::inventory::{Inventory, OsRelease, Package};
use crate::purl;

/// Errors reading an SBOM.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("cannot read SBOM {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not JSON: --sbom takes a CycloneDX JSON document", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is not a CycloneDX document (no \"bomFormat\": \"CycloneDX\"): --sbom takes CycloneDX JSON", path.display())]
    NotCycloneDx { path: PathBuf },
}

fn split_distro(d: &str) -> Option<(String, String)> {
    let (id, ver) = d.split_once('-')?;
    Some((id.to_ascii_lowercase(), ver.to_string()))
}

fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    if let Some(cs) = v.get("components").and_then(Value::as_array) {
        for c in cs {
            out.push(c);
            walk(c, out);
        }
    }
}

fn property<'a>(c: &'a Value, names: &[&str]) -> Option<&'a str> {
    c.get("properties")?.as_array()?.iter().find_map(|p| {
        let n = p.get("name")?.as_str()?;
        names.contains(&n).then(|| p.get("value")?.as_str())?
    })
}

/// Read the packages of a CycloneDX JSON SBOM.
pub fn read(path: &Path) -> Result<Inventory, SbomError> {
    let bytes = std::fs::read(path).map_err(|source| SbomError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|source| SbomError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if doc.get("bomFormat").and_then(Value::as_str) != Some("CycloneDX") {
        return Err(SbomError::NotCycloneDx {
            path: path.to_path_buf(),
        });
    }
    let mut comps = Vec::new();
    if let Some(m) = doc.get("metadata").and_then(|m| m.get("component")) {
        comps.push(m);
        walk(m, &mut comps);
    }
    walk(&doc, &mut comps);
    let mut inv = Inventory::default();
    for c in &comps {
        if c.get("type").and_then(Value::as_str) == Some("operating-system") {
            inv.os = Some(OsRelease {
                id: c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_ascii_lowercase(),
                version_id: c
                    .get("version")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                pretty_name: String::new(),
            });
        }
    }
    let shown = path.display().to_string();
    let mut unknown = 0;
    for c in &comps {
        let Some(p) = c.get("purl").and_then(Value::as_str).and_then(purl::parse) else {
            continue;
        };
        let distro = p.qualifier("distro").and_then(split_distro).or_else(|| {
            inv.os
                .as_ref()
                .map(|o| (o.id.clone(), o.version_id.clone()))
        });
        let os_eco = |default: &str| {
            distro
                .as_ref()
                .and_then(|(id, v)| ecosystem::from_os_release(id, v))
                .unwrap_or_else(|| default.to_string())
        };
        let full_name = match &p.namespace {
            Some(ns) => format!("{ns}/{}", p.name),
            None => p.name.clone(),
        };
        let (kind, eco, name) = match p.ty.as_str() {
            "deb" => {
                let base = match p.namespace.as_deref() {
                    Some("ubuntu") => "Ubuntu",
                    _ => "Debian",
                };
                ("dpkg", os_eco(base), p.name.clone())
            }
            "apk" => ("apk", os_eco("Alpine"), p.name.clone()),
            "rpm" => ("rpm", os_eco(""), p.name.clone()),
            "cargo" => ("cargo", "crates.io".to_string(), p.name.clone()),
            "golang" => ("go", "Go".to_string(), full_name),
            "npm" => ("npm", "npm".to_string(), full_name),
            "pypi" => ("python", "PyPI".to_string(), p.name.clone()),
            _ => {
                unknown += 1;
                continue;
            }
        };
        let source_name = property(c, &["moat:source_name", "aquasecurity:trivy:SrcName"])
            .map(str::to_string)
            .or_else(|| {
                p.qualifier("upstream")
                    .map(|u| u.split('@').next().unwrap_or(u).to_string())
            });
        let source_version = property(c, &["moat:source_version", "aquasecurity:trivy:SrcVersion"])
            .map(str::to_string)
            .or_else(|| source_name.as_ref().map(|_| p.version.clone()));
        inv.packages.push(Package {
            name,
            version: p.version.clone(),
            kind: kind.into(),
            ecosystem: eco,
            source_name,
            source_version,
            layer: property(c, &["moat:layer", "aquasecurity:trivy:LayerDigest"])
                .map(str::to_string),
            path: shown.clone(),
        });
    }
    if unknown > 0 {
        inv.notes.push(format!(
            "{unknown} SBOM components have package URL types moat has no advisories for and were not checked"
        ));
    }
    if inv.packages.is_empty() {
        inv.notes.push(format!(
            "{shown} lists no components with a package URL moat can check: nothing was checked"
        ));
    }
    Ok(inv)
}
