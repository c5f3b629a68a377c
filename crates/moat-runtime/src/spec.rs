//! What a container is to run, kept beside its record
//! (`<root>/containers/<id>/spec.json`) from `moat create` (or `run -d`)
//! on: the monitor started by `moat start` reads it, `moat exec` takes the
//! plan the first process runs under from it, `moat inspect` shows it.
//!
//! It is written by moat alone, under the same trust rules as the record
//! (root-owned directory and file, nothing group- or world-writable), and
//! read through the same checks; the policy was authorised and compiled
//! into the plan before it was written, so nothing here is trusted input
//! that widens what the container may do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_policy::{Plan, ProcessSpec};
use serde::{Deserialize, Serialize};

use crate::backend::Container;
use crate::id::{ContainerId, ContainerName, ImageId, Isolation};
use crate::record::{self, Record, StateError};

/// The format written by this version.
pub const SPEC_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub version: u32,
    pub id: ContainerId,
    pub name: ContainerName,
    pub isolation: Isolation,
    /// `sha256:<hex>`, or `rootfs:<dir>`.
    pub image_id: ImageId,
    /// The image as the user named it.
    pub image: String,
    pub rootfs: PathBuf,
    pub process: ProcessSpec,
    pub plan: Plan,
    /// The policy as the user named it (`auto`, a built-in name or a file).
    pub policy: String,
    pub stop_timeout_secs: u64,
    /// The vm backend's accelerator choice (`kvm`, `tcg`), `None` = probe.
    #[serde(default)]
    pub accel: Option<String>,
    /// How the vm backend starts the micro-VM (`template`, `cold`),
    /// `None` = the default (`--vm-start`).
    #[serde(default)]
    pub vm_start: Option<String>,
    /// Remove the container when it stops (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
}

impl Spec {
    /// The container a backend runs from this spec, its record under `root`.
    pub fn container(&self, root: &Path) -> Container {
        Container {
            id: self.id.clone(),
            name: self.name.clone(),
            image_id: self.image_id.clone(),
            rootfs: self.rootfs.clone(),
            run_root: root.to_path_buf(),
            process: self.process.clone(),
            plan: self.plan.clone(),
            stop_timeout: Duration::from_secs(self.stop_timeout_secs),
            started_notify: None,
            start_gate: None,
        }
    }
}

/// Writes the spec of a container (staged, then renamed).
pub fn write(root: &Path, spec: &Spec) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(spec).map_err(|e| StateError::Write {
        path: record::container_dir(root, &spec.id),
        source: std::io::Error::other(e),
    })?;
    record::write_file(root, &spec.id, "spec.json", &json)
}

/// Reads the spec of container `id`, under the record's trust rules.
pub fn read(root: &Path, id: &ContainerId) -> Result<Spec, StateError> {
    let dir = record::containers_dir(root);
    let missing = |detail: &str| StateError::Read {
        path: dir.join(id.as_str()).join("spec.json"),
        source: std::io::Error::other(detail.to_string()),
    };
    let bytes = record::read_trusted(&dir, id.as_str(), "spec.json")
        .ok_or_else(|| missing("missing or not trusted (not a root-owned 0600 file)"))?;
    let spec: Spec = serde_json::from_slice(&bytes).map_err(|e| missing(&e.to_string()))?;
    if spec.id != *id {
        return Err(missing("it names another container"));
    }
    Ok(spec)
}

/// Creates the container of `spec`: under the lock, checks that its name
/// is free (a stopped container keeps its name until `moat rm`, as in
/// podman), then writes its spec and its record (status `created`).
/// With `creating`, the record names this process as its creator: should
/// it die before a monitor or supervisor takes the container over, the
/// container is removed as never made.
pub fn create(root: &Path, spec: &Spec, creating: bool) -> Result<Record, StateError> {
    let _lock = record::lock(root)?;
    if let Some(other) = record::read_all(root)?
        .into_iter()
        .find(|r| r.name == spec.name || r.id == spec.id)
    {
        return Err(StateError::NameInUse {
            name: spec.name.to_string(),
            id: other.id.to_string(),
        });
    }
    let mut r = Record::new(
        spec.id.clone(),
        spec.name.clone(),
        spec.isolation,
        spec.image_id.clone(),
    );
    r.command = spec.process.args.clone();
    r.policy_digest = spec.plan.policy_digest.clone();
    r.auto_remove = spec.auto_remove;
    if creating {
        let me = std::process::id() as i32;
        r.creator_pid = me;
        r.creator_start_time = record::process_start_time(me).unwrap_or(0);
    }
    write(root, spec)?;
    record::write(root, &r)?;
    Ok(r)
}
