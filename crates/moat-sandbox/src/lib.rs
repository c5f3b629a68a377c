//! The hardened namespace sandbox backend. See docs/sandbox.md.
//!
//! [`run`] starts one container from a read-only rootfs under a compiled
//! [`Plan`], supervises it (stdio, pty, signals, stop timeout) and returns
//! its exit code. The process that runs inside the container is a fork of
//! the calling process that never re-executes anything of the host: it
//! builds the container's mounts, pivots into the rootfs, drops every
//! privilege and `execve`s the workload, which becomes PID 1 of the
//! container's PID namespace. No moat process is visible inside.

mod backend;
pub mod cgroup;
mod child;
mod ephemeral;
pub mod idmap;
mod mounts;
mod network;
pub mod oci;
pub mod state;
mod supervise;
mod sys;
pub mod user;
mod volumes;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use moat_policy::plan::{Rlimit, RlimitResource};
use moat_policy::{Plan, ProcessSpec};
use serde::{Deserialize, Serialize};

pub use crate::backend::SandboxBackend;
pub use crate::cgroup::CgroupError;
pub use crate::idmap::IdMap;
pub use crate::state::{ContainerState, StateError};

/// Everything [`run`] needs to start one container.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Container ID (64 hex digits, see [`moat_runtime::ContainerId::generate`]).
    pub id: String,
    /// Unique human name (`moat ps`, `moat kill`).
    pub name: String,
    /// Image config digest `sha256:<hex>`, or `rootfs:<dir>` for `--rootfs`.
    pub image_id: moat_runtime::ImageId,
    /// The materialised image root. Mounted read-only, never written.
    pub rootfs: PathBuf,
    /// Runtime root (`/run/moat`): state files live under `containers/`.
    pub run_root: PathBuf,
    pub process: ProcessSpec,
    pub plan: Plan,
    /// How long a workload may take to exit after a forwarded SIGTERM,
    /// SIGINT or SIGHUP before it is killed.
    pub stop_timeout: Duration,
    /// The host uid/gid range container ids are mapped to.
    pub id_map: IdMap,
    /// Where to report that the workload runs (a detached container's
    /// monitor waits for it).
    pub started_notify: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Hold the created container until a byte arrives here (see
    /// [`moat_runtime::backend::Container::start_gate`]).
    pub start_gate: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// Errors of the sandbox backend.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the policy asks for {resource} {value}, above this host's hard limit of {hard}; lower it in the policy (moat cannot raise limits without CAP_SYS_RESOURCE)")]
    RlimitAboveHard {
        resource: &'static str,
        value: u64,
        hard: u64,
    },
    #[error("cannot set up the container's network")]
    Network {
        #[source]
        source: Box<moat_net::NetError>,
    },
    #[error("unknown capability {0:?} in the plan")]
    UnknownCapability(String),
    #[error("the plan does not set no_new_privs; moat refuses to start a container without it")]
    NoNewPrivsRequired,
    #[error("container uid/gid {id} is outside the mapped range 0..{count}; choose a --user below {count}")]
    IdOutsideMap { id: u32, count: u32 },
    #[error("invalid process spec: {0}")]
    InvalidProcess(String),
    #[error("cannot prepare {what}")]
    Prepare {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the container process")]
    Clone(#[source] io::Error),
    #[error("cannot write the {which} map of container process {pid}")]
    WriteIdMap {
        which: &'static str,
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("container setup failed: {step}: {detail}")]
    Setup { step: String, detail: String },
    #[error("executable {command:?} not found in the container (PATH={path})")]
    CommandNotFound { command: String, path: String },
    #[error("cannot execute {command:?} in the container: {detail}")]
    CommandNotExecutable { command: String, detail: String },
    #[error("supervising container {id}")]
    Supervise {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("volume {what}: {why}")]
    Volume { what: String, why: String },
    #[error("volume {what}")]
    VolumeIo {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    VolumeStore(#[from] moat_runtime::volume_store::VolumeError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl SandboxError {
    /// The exit code `moat run` should use for this error (Docker's
    /// convention: 125 runtime error, 126 cannot execute, 127 not found).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::CommandNotFound { .. } => 127,
            Self::CommandNotExecutable { .. } => 126,
            _ => 125,
        }
    }
}

/// An error that happened in the container process before `execve`, sent
/// back to the supervisor over a pipe as data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChildError {
    pub step: String,
    pub detail: String,
    /// 127 not found, 126 not executable, 125 anything else.
    pub kind: u8,
}

impl ChildError {
    pub(crate) fn io(step: impl Into<String>, err: io::Error) -> Self {
        Self {
            step: step.into(),
            detail: err.to_string(),
            kind: 125,
        }
    }
    pub(crate) fn msg(step: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            detail: detail.into(),
            kind: 125,
        }
    }
}

fn rlimit_resource(r: RlimitResource) -> (u32, &'static str) {
    match r {
        RlimitResource::Nofile => (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
        RlimitResource::Nproc => (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
        RlimitResource::Core => (libc::RLIMIT_CORE, "RLIMIT_CORE"),
        RlimitResource::Memlock => (libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
        RlimitResource::Fsize => (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
        RlimitResource::Stack => (libc::RLIMIT_STACK, "RLIMIT_STACK"),
    }
}

/// Checks every rlimit of the plan against this process's hard limits:
/// without CAP_SYS_RESOURCE a limit can be lowered, never raised.
pub fn check_rlimits(rlimits: &[Rlimit]) -> Result<Vec<(u32, u64, u64)>, SandboxError> {
    let mut out = Vec::with_capacity(rlimits.len());
    for r in rlimits {
        let (res, name) = rlimit_resource(r.resource);
        let (_, hard) = sys::getrlimit(res).map_err(|source| SandboxError::Prepare {
            what: format!("reading {name}"),
            source,
        })?;
        for value in [r.soft, r.hard] {
            if hard != libc::RLIM_INFINITY && value > hard {
                return Err(SandboxError::RlimitAboveHard {
                    resource: name,
                    value,
                    hard,
                });
            }
        }
        if r.soft > r.hard {
            return Err(SandboxError::InvalidProcess(format!(
                "{name} soft limit {} is above its hard limit {}",
                r.soft, r.hard
            )));
        }
        out.push((res, r.soft, r.hard));
    }
    Ok(out)
}

/// Starts the container described by `cfg`, waits for it and returns the
/// workload's exit code (or 128 + the signal that killed it). The state
/// file exists for exactly as long as the container runs.
///
/// Must be called from a single-threaded process (the `moat` CLI is).
pub fn run(cfg: &SandboxConfig) -> Result<i32, SandboxError> {
    validate(cfg)?;
    let setup = child::ChildSetup::new(cfg)?;
    supervise::start_and_wait(cfg, setup)
}

/// Runs `process` in the running container of `target` (`moat exec`),
/// never weaker than its first process: the same namespaces (user
/// namespace and mapping included), cgroups, capabilities (`plan`'s),
/// rlimits, `no_new_privs` and seccomp filter, no descriptor of the caller
/// but stdio, the working directory checked to be inside its root.
/// Supervises it like [`run`] (stdio, pty, signals); returns its exit code.
pub fn exec(
    target: &ContainerState,
    plan: &Plan,
    rootfs: &std::path::Path,
    process: ProcessSpec,
) -> Result<i32, SandboxError> {
    let cfg = SandboxConfig {
        id: target.id.to_string(),
        name: target.name.to_string(),
        image_id: target.image_id.clone(),
        rootfs: rootfs.to_path_buf(),
        run_root: PathBuf::new(),
        process,
        plan: plan.clone(),
        stop_timeout: Duration::from_secs(10),
        id_map: IdMap::for_root(),
        started_notify: None,
        start_gate: None,
    };
    validate(&cfg)?;
    let setup = child::ChildSetup::new(&cfg)?;
    supervise::exec_and_wait(&cfg, setup, target)
}

/// The checks [`run`] and [`exec`] make before anything starts.
fn validate(cfg: &SandboxConfig) -> Result<(), SandboxError> {
    if !cfg.plan.process.no_new_privs {
        return Err(SandboxError::NoNewPrivsRequired);
    }
    for id in [cfg.process.uid, cfg.process.gid]
        .iter()
        .chain(&cfg.process.additional_gids)
    {
        if *id >= cfg.id_map.count {
            return Err(SandboxError::IdOutsideMap {
                id: *id,
                count: cfg.id_map.count,
            });
        }
    }
    if cfg.process.args.is_empty() {
        return Err(SandboxError::InvalidProcess("no command to run".into()));
    }
    if !cfg.process.cwd.starts_with('/') {
        return Err(SandboxError::InvalidProcess(format!(
            "working directory {:?} is not absolute",
            cfg.process.cwd
        )));
    }
    Ok(())
}

/// Signals that the supervisor forwards to the workload (and for which it
/// starts the stop timeout): `moat kill` sends these to the supervisor, so
/// that a workload that ignores SIGTERM is still killed after the timeout.
pub const SUPERVISOR_SIGNALS: &[i32] = &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Parses a signal given as a number, `TERM` or `SIGTERM` (any case).
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        "PIPE" => libc::SIGPIPE,
        _ => return None,
    };
    Some(n)
}

/// Sends `sig` to a running container through pidfds: SIGINT, SIGTERM,
/// SIGHUP and SIGQUIT go to its supervisor (which forwards them and
/// enforces the stop timeout), everything else to the container's PID 1.
/// Both pids are checked against their recorded start times first.
pub fn signal_container(st: &ContainerState, sig: i32) -> Result<(), SandboxError> {
    let (pid, start) = if SUPERVISOR_SIGNALS.contains(&sig) && st.supervisor_pid > 0 {
        (st.supervisor_pid, st.supervisor_start_time)
    } else {
        (st.pid, st.pid_start_time)
    };
    let gone = || SandboxError::Prepare {
        what: format!("signalling container {}", st.name),
        source: io::Error::from_raw_os_error(libc::ESRCH),
    };
    if pid <= 0 || state::process_start_time(pid) != Some(start) {
        return Err(gone());
    }
    let fd = sys::pidfd_open(pid).map_err(|_| gone())?;
    // The pidfd pins the process; re-check that it is still the same one.
    if state::process_start_time(pid) != Some(start) {
        return Err(gone());
    }
    sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(&fd), sig).map_err(|source| {
        SandboxError::Prepare {
            what: format!("signalling container {}", st.name),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_above_the_hard_limit_are_refused() {
        let (_, hard) = sys::getrlimit(libc::RLIMIT_NOFILE).unwrap();
        let ok = [Rlimit {
            resource: RlimitResource::Nofile,
            soft: 16,
            hard: 16,
        }];
        assert_eq!(
            check_rlimits(&ok).unwrap(),
            vec![(libc::RLIMIT_NOFILE, 16, 16)]
        );
        if hard == libc::RLIM_INFINITY {
            return;
        }
        let too_many = [Rlimit {
            resource: RlimitResource::Nofile,
            soft: hard + 1,
            hard: hard + 1,
        }];
        assert_eq!(
            check_rlimits(&too_many).unwrap_err().to_string(),
            format!(
                "the policy asks for RLIMIT_NOFILE {}, above this host's hard limit of {hard}; lower it in the policy (moat cannot raise limits without CAP_SYS_RESOURCE)",
                hard + 1
            )
        );
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("TERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Some(libc::SIGKILL));
        assert_eq!(parse_signal("10"), Some(10));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("BOGUS"), None);
    }
}
