//! The trait a backend implements, so that a front end runs, signals and
//! cleans up a container without knowing which backend holds it.
//!
//! A backend runs a container in the calling process, which supervises
//! it to its end ([`Backend::run_attached`]): a foreground `moat run`
//! is that process; a detached container's monitor ([`crate::monitor`])
//! forks one for it.

use std::path::PathBuf;
use std::time::Duration;

use moat_policy::{Plan, ProcessSpec};

use crate::id::{ContainerId, ContainerName, ImageId, Isolation};
use crate::record::Record;

/// Everything a backend needs to run one container.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: ContainerId,
    pub name: ContainerName,
    /// `sha256:<hex>`, or `rootfs:<dir>`.
    pub image_id: ImageId,
    pub rootfs: PathBuf,
    /// Where records live (`<run_root>/containers`).
    pub run_root: PathBuf,
    pub process: ProcessSpec,
    pub plan: Plan,
    /// How long a workload may take to exit after a stop signal.
    pub stop_timeout: Duration,
    /// Where the backend writes one byte ([`crate::monitor::ready::STARTED`])
    /// once the workload runs, for a monitor waiting to report the start.
    pub started_notify: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Create, then hold: with a gate, the backend creates the container
    /// (the sandbox: its process in its namespaces and cgroups, recorded
    /// `created` with its pid; the vm backend: the guest booted and its
    /// agent answering), reports [`crate::monitor::ready::CREATED`] on
    /// `started_notify`, and starts the workload only once a byte arrives
    /// on the gate (EOF abandons it). runc's `create` then `start`.
    pub start_gate: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl Container {
    /// Tells a waiting monitor that the workload runs.
    pub fn notify_started(&self) {
        if let Some(fd) = &self.started_notify {
            let _ = rustix::io::write(&**fd, &[crate::monitor::ready::STARTED]);
        }
    }
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

/// What [`Backend::exec`] needs.
#[derive(Debug, Clone, Copy)]
pub struct ExecRequest<'a> {
    pub record: &'a Record,
    /// The plan the container's first process runs under.
    pub plan: &'a Plan,
    /// The container's root filesystem on the host.
    pub rootfs: &'a std::path::Path,
    pub process: &'a ProcessSpec,
    /// The run root (where a monitor's control socket is).
    pub run_root: &'a std::path::Path,
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

    /// Creates the container (held until its start gate opens, if it has
    /// one), starts it with this process's stdio and waits for it: returns
    /// the workload's exit code (128+N for signal N).
    fn run_attached(&self, container: &Container) -> Result<i32, BackendError>;

    /// Sends `sig` to the container of `record`.
    fn signal(&self, record: &Record, sig: i32) -> Result<(), BackendError>;

    /// Removes what a container whose supervisor died left behind (its
    /// processes, cgroups and record), deriving everything from its ID.
    fn delete(&self, run_root: &std::path::Path, record: &Record) -> Result<(), BackendError>;

    /// Removes what a stopped container left on the host (cgroups),
    /// deriving everything from its ID; keeps the record.
    fn cleanup(&self, _record: &Record) {}

    /// Runs `req.process` in the running container of `req.record` with
    /// this process's stdio, never weaker than its first process (the same
    /// plan); returns its exit code. Front ends check the policy's `exec`
    /// grant first.
    fn exec(&self, req: &ExecRequest<'_>) -> Result<i32, BackendError>;

    /// Where exec requests reach the next container this backend runs,
    /// for backends whose exec goes through the supervisor (the vm
    /// backend: through the guest agent). `None`: exec joins the running
    /// container directly (the sandbox).
    fn exec_channel(&self) -> Option<std::os::fd::OwnedFd> {
        None
    }

    /// Resource figures, where the backend has them.
    fn stats(&self, _record: &Record) -> Option<Stats> {
        None
    }
}
