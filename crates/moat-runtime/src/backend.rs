//! The trait a backend implements, so that a front end runs, signals and
//! cleans up a container without knowing which backend holds it.
//!
//! This phase has no monitor process: a container lives as long as the
//! process that runs it, so create, start and wait are one call
//! ([`Backend::run_attached`]). The split into `create`/`start`/`wait`
//! comes with the monitor (issue 13, second phase).

use std::path::PathBuf;
use std::time::Duration;

use moat_policy::{Plan, ProcessSpec};

use crate::id::{ContainerId, ContainerName, Isolation};
use crate::record::Record;

/// Everything a backend needs to run one container.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: ContainerId,
    pub name: ContainerName,
    /// `sha256:<hex>`, or `rootfs:<dir>`.
    pub image_id: String,
    pub rootfs: PathBuf,
    /// Where records live (`<run_root>/containers`).
    pub run_root: PathBuf,
    pub process: ProcessSpec,
    pub plan: Plan,
    /// How long a workload may take to exit after a stop signal.
    pub stop_timeout: Duration,
}

/// A backend's error: its own error (displayed and chained exactly as
/// the backend words it) and the exit status `moat run` reports for it.
#[derive(Debug)]
pub struct BackendError {
    pub exit_code: u8,
    pub error: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Resource figures of a running container; `None` where this host does
/// not offer the figure (e.g. CPU time on a cgroup v1 `cpu` hierarchy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub memory_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
    pub pids: Option<u64>,
}

pub trait Backend {
    fn isolation(&self) -> Isolation;

    /// Creates the container, starts it with this process's stdio and
    /// waits for it: returns the workload's exit code (128+N for signal
    /// N). The record exists while the container runs.
    fn run_attached(&self, container: &Container) -> Result<i32, BackendError>;

    /// Sends `sig` to the container of `record`.
    fn signal(&self, record: &Record, sig: i32) -> Result<(), BackendError>;

    /// Removes what a container whose supervisor died left behind (its
    /// processes, cgroups and record), deriving everything from its ID.
    fn delete(&self, run_root: &std::path::Path, record: &Record) -> Result<(), BackendError>;

    /// Resource figures, where the backend has them.
    fn stats(&self, _record: &Record) -> Option<Stats> {
        None
    }
}
