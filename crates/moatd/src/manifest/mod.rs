//! Manifests: the Kubernetes subset moatd accepts, with Kubernetes' own
//! field names. A stream of YAML documents (`---`) holds Deployments,
//! Pods, Secrets, ConfigMaps, PersistentVolumeClaims and moat Policies.
//! A field moatd does not implement is refused with its path, never
//! ignored: a manifest means on moatd what it says, or nothing.

mod objects;
mod pod;
mod resources;
mod walk;

use std::collections::BTreeMap;

use moat_policy::yaml;
use serde::{Deserialize, Serialize};

pub use pod::{
    Container, ContainerSecurity, EnvFrom, EnvSource, EnvVar, Handler, KeyToPath, Mount,
    PodSecurity, PodSpec, Port, Probe, Projection, Volume, VolumeSource,
};
pub use resources::{Quantities, Resources};

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A field of a known object: `Deployment web: spec.replicas: ...`.
    #[error("{file}:{line}: {object}: {path}: {message}")]
    Field {
        file: String,
        line: usize,
        object: String,
        path: String,
        message: String,
    },
    /// The document as a whole (syntax, kind).
    #[error("{file}:{line}: {message}")]
    Document {
        file: String,
        line: usize,
        message: String,
    },
}

/// `metadata` of every object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// `maxSurge` / `maxUnavailable`: a count or a percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntOrPercent {
    Int(u32),
    Percent(u32),
}

impl IntOrPercent {
    /// The count for `total` replicas, rounding up (surge) or down
    /// (unavailable) as Kubernetes does.
    pub fn of(self, total: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let x = total * p;
                if round_up {
                    x.div_ceil(100)
                } else {
                    x / 100
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub meta: Meta,
    pub replicas: u32,
    pub selector: BTreeMap<String, String>,
    pub max_surge: IntOrPercent,
    pub max_unavailable: IntOrPercent,
    pub progress_deadline_seconds: u64,
    pub revision_history_limit: u32,
    /// A new replica counts as available once ready this long.
    #[serde(default)]
    pub min_ready_seconds: u64,
    /// `spec.template.metadata`.
    pub template_meta: Meta,
    pub pod: PodSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    pub meta: Meta,
    pub pod: PodSpec,
}

/// A Secret or ConfigMap: decoded data by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Data {
    pub meta: Meta,
    /// `Opaque` for a Secret without `type`; empty for a ConfigMap.
    pub kind_type: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub meta: Meta,
    pub access_modes: Vec<String>,
    /// `resources.requests.storage` in bytes.
    pub storage: u64,
    /// As written, for `moat get volumes`.
    pub storage_text: String,
}

/// A `moat.dev/v1 Policy` document, kept as text: the policy parser is
/// the one every other front end uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDoc {
    pub name: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Object {
    Deployment(Deployment),
    Pod(Pod),
    Secret(Data),
    ConfigMap(Data),
    Claim(Claim),
    Policy(PolicyDoc),
}

impl Object {
    /// `Deployment`, `Pod`, ... as Kubernetes spells the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Deployment(_) => "Deployment",
            Object::Pod(_) => "Pod",
            Object::Secret(_) => "Secret",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Claim(_) => "PersistentVolumeClaim",
            Object::Policy(_) => "Policy",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Object::Deployment(d) => &d.meta.name,
            Object::Pod(p) => &p.meta.name,
            Object::Secret(d) | Object::ConfigMap(d) => &d.meta.name,
            Object::Claim(c) => &c.meta.name,
            Object::Policy(p) => &p.name,
        }
    }

    /// `deployment.apps/web`, kubectl's way of naming what it changed.
    pub fn kubectl_name(&self) -> String {
        let k = match self {
            Object::Deployment(_) => "deployment.apps",
            Object::Pod(_) => "pod",
            Object::Secret(_) => "secret",
            Object::ConfigMap(_) => "configmap",
            Object::Claim(_) => "persistentvolumeclaim",
            Object::Policy(_) => "policy.moat.dev",
        };
        format!("{k}/{}", self.name())
    }
}

/// Parses a stream of YAML documents; `file` names it in errors.
pub fn parse_stream(text: &str, file: &str) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    for (offset, doc) in split_documents(text) {
        let node = yaml::parse(&doc).map_err(|e| ManifestError::Document {
            file: file.to_string(),
            line: e.pos.line + offset,
            message: e.message,
        })?;
        if node.value == yaml::Value::Null {
            continue;
        }
        out.push(objects::object(&node, &doc, file, offset)?);
    }
    Ok(out)
}

/// Splits at lines that are `---` (optionally followed by a comment):
/// each document with the number of lines before it.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- #") {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 1;
            continue;
        }
        if t == "..." {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start, cur));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_files;
