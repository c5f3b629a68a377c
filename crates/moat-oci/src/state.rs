//! Container records under the state root (`/run/moat-oci/<id>/`): what
//! `state`, `start`, `kill`, `exec` and `delete` need after `create`
//! exited. Written staged then renamed; the directory is root's, 0700.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moat_plan::SeccompProgram;
use moat_privdrop::CapSets;
use serde::{Deserialize, Serialize};

use crate::bundle::{CgroupRequest, RuntimeHooks};
use crate::cgroup::Groups;
use crate::site::Isolation;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container ID {0:?} is invalid: use letters, digits, `_`, `-`, `.` and `+` (not starting with `.`)")]
    BadId(String),
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: the record is damaged ({source}); delete the directory to forget the container"
    )]
    Damaged {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What `exec` applies to a new process (the container's own defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecDefaults {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub env: Vec<String>,
    pub cwd: String,
    pub caps: [u64; 5],
    pub rlimits: Vec<(u32, u64, u64)>,
    pub caller_seccomp: SeccompProgram,
    pub policy_seccomp: SeccompProgram,
    /// Capabilities the policy grants (for `exec --cap`, `--process`).
    pub policy_caps: Vec<String>,
    pub exec_allowed: bool,
    #[serde(default = "yes")]
    pub no_new_privs: bool,
}

fn yes() -> bool {
    true
}

impl ExecDefaults {
    pub fn cap_sets(&self) -> CapSets {
        let [bounding, effective, permitted, inheritable, ambient] = self.caps;
        CapSets {
            bounding,
            effective,
            permitted,
            inheritable,
            ambient,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub pid: i32,
    pub pid_start: u64,
    pub created: String,
    pub owner: String,
    pub annotations: HashMap<String, String>,
    pub started: bool,
    pub isolation: Isolation,
    pub policy: String,
    pub cgroup: Groups,
    /// The policy's cgroup ceiling (`update` never goes above it).
    pub cgroup_ceiling: CgroupRequest,
    pub hooks: RuntimeHooks,
    pub exec: ExecDefaults,
    /// Set for a micro-VM container (`pid` is then its helper's).
    #[serde(default)]
    pub vm: Option<VmRecord>,
}

/// What `delete` needs to remove of a micro-VM container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VM's own id (its jail uid, cgroups and moat-vm record).
    pub vm_id: String,
    /// moat's state root it ran under (its root disk's staging directory).
    pub state_root: PathBuf,
    /// A pod's sandbox container: its VM serves the pod's share.
    #[serde(default)]
    pub pod_share: bool,
    /// A pod's further container, running in the VM of this sandbox
    /// container (`vm_id` is that VM's; `pid` the container's helper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_of: Option<String>,
}

pub fn check_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.into()))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

pub fn gate(root: &Path, id: &str) -> PathBuf {
    dir(root, id).join("gate")
}

/// Creates the root (0700) and the container's directory, which must not
/// exist yet.
pub fn make_dir(root: &Path, id: &str) -> Result<PathBuf, StateError> {
    use std::os::unix::fs::DirBuilderExt;
    check_id(id)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io(root))?;
    let d = dir(root, id);
    match std::fs::DirBuilder::new().mode(0o700).create(&d) {
        Ok(()) => Ok(d),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(StateError::Exists(id.into()))
        }
        Err(e) => Err(io(&d)(e)),
    }
}

pub fn save(root: &Path, rec: &Record) -> Result<(), StateError> {
    let d = dir(root, &rec.id);
    let tmp = d.join(".state.json.tmp");
    let text = serde_json::to_vec_pretty(rec).expect("records serialise");
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    let dst = d.join("state.json");
    std::fs::rename(&tmp, &dst).map_err(io(&dst))
}

pub fn load(root: &Path, id: &str) -> Result<Record, StateError> {
    check_id(id)?;
    let path = dir(root, id).join("state.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StateError::NotFound(id.into()))
        }
        Err(e) => return Err(io(&path)(e)),
    };
    serde_json::from_slice(&text).map_err(|source| StateError::Damaged {
        path: path.display().to_string(),
        source,
    })
}

pub fn remove(root: &Path, id: &str) -> Result<(), StateError> {
    let d = dir(root, id);
    match std::fs::remove_dir_all(&d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&d)(e)),
        _ => Ok(()),
    }
}

pub fn ids(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_id(n).is_ok())
        .collect();
    out.sort();
    out
}

/// Whether the recorded first process still runs (not a zombie, and the
/// same process: its start time matches).
pub fn alive(rec: &Record) -> bool {
    if rec.pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", rec.pid)) else {
        return false;
    };
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start())
        .unwrap_or("");
    if after.starts_with('Z') || after.starts_with('X') {
        return false;
    }
    moat_runtime::record::process_start_time(rec.pid) == Some(rec.pid_start)
}

/// runtime-spec status: created, running, paused or stopped.
pub fn status(rec: &Record) -> &'static str {
    if !alive(rec) {
        "stopped"
    } else if rec.cgroup.is_frozen() {
        "paused"
    } else if !rec.started {
        "created"
    } else {
        "running"
    }
}
