//! What one replica runs, fully resolved at admission (image digest,
//! environment from Secrets and ConfigMaps, policy, user): a revision is
//! one template, and a changed template is a new revision (a rollout).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{Probe, Projection};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// `sha256:<manifest digest>` of an image in the store.
    pub image: String,
    /// The reference as the manifest wrote it.
    pub image_written: String,
    /// Kubernetes `command` (the image's Entrypoint replaced) and `args`.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `UID:GID`.
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// A built-in policy name or the path of a stored policy file.
    pub policy: String,
    pub policy_name: String,
    pub policy_digest: String,
    /// `sandbox`, `vm`, `auto`.
    pub isolation: String,
    /// `claim:/path[:ro]`.
    pub volumes: Vec<String>,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
    /// `Always`, `OnFailure`, `Never`.
    pub restart_policy: String,
    pub grace_seconds: u64,
    /// ConfigMaps and Secrets mounted as files: references only, so that
    /// a changed ConfigMap is not a new revision (as in Kubernetes); the
    /// files of running replicas follow it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileVolume>,
    /// `resources.limits`, checked against the policy's (narrowing only).
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// `emptyDir` volumes: a tmpfs of each size at each mount path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scratch: Vec<Scratch>,
}

/// An `emptyDir` mount of a replica: a tmpfs, gone with the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scratch {
    pub path: String,
    pub size_bytes: u64,
}

/// A ConfigMap or Secret volume of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVolume {
    /// The pod's volume name.
    pub volume: String,
    /// `Secret` or `ConfigMap`.
    pub kind: String,
    pub source: String,
    pub mount_path: String,
    /// `items`, `defaultMode`, `optional`.
    #[serde(default, skip_serializing_if = "Projection::is_default")]
    pub projection: Projection,
    /// For a Secret of a requester other than root: the user who applied
    /// it, and whose Secret alone the files may show (one applied later by
    /// someone else under the same name is treated as missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader: Option<String>,
}

/// What a replica's policy is narrowed to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

impl Template {
    /// The identity of a revision: the first 10 hex digits of the hash of
    /// everything it runs.
    pub fn hash(&self) -> String {
        let body = serde_json::to_string(self).unwrap_or_default();
        hex::encode(Sha256::digest(body.as_bytes()))[..10].to_string()
    }
}
