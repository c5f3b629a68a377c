//! Options shared by every subcommand, the state-root convention, and who
//! moat acts for.

use std::path::{Path, PathBuf};

use clap::Args;
use moat_policy::rbac::{self, Invoker, Via};

/// Generic failure (bad input, operation failed).
pub const EXIT_FAILURE: u8 = 1;
/// A command that runs a container failed before the workload ran (bad
/// input, no such image, refused policy, set-up failed), as podman says it.
pub const EXIT_NOT_STARTED: u8 = 125;

/// The state root unless root overrides it.
pub const DEFAULT_ROOT: &str = "/var/lib/moat";

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// State root: images, caches, databases (only root acting as itself
    /// may change it; under sudo it is always the default).
    #[arg(long, global = true, env = "MOAT_ROOT", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Runtime root: running containers. Defaults to /run/moat, or
    /// ROOT/run when --root/MOAT_ROOT is set.
    #[arg(long, global = true, env = "MOAT_RUN_ROOT")]
    pub run_root: Option<PathBuf>,
    /// Whom moat acts for; set by `main` before any command runs.
    #[arg(skip = Invoker { uid: u32::MAX, via: Via::RealUid })]
    pub invoker: Invoker,
}

impl GlobalArgs {
    /// Where running containers keep their state.
    pub fn run_root(&self) -> PathBuf {
        match &self.run_root {
            Some(p) => p.clone(),
            None if self.root == Path::new(DEFAULT_ROOT) => PathBuf::from("/run/moat"),
            None => self.root.join("run"),
        }
    }

    /// For anyone but root acting as itself, drop the state-root overrides
    /// (after [`scrub_env`] the only source left is the command line).
    pub fn restrict(&mut self) {
        if self.invoker.is_root() {
            return;
        }
        if self.root != Path::new(DEFAULT_ROOT) {
            ignored(&self.invoker, &format!("--root {}", self.root.display()));
            self.root = PathBuf::from(DEFAULT_ROOT);
        }
        if let Some(rr) = self.run_root.take() {
            ignored(&self.invoker, &format!("--run-root {}", rr.display()));
        }
    }
}

/// Who runs moat (see [`rbac::invoker`]).
pub fn detect_invoker() -> Result<Invoker, rbac::RbacError> {
    let real = rustix::process::getuid().as_raw();
    rbac::invoker(real, |k| std::env::var(k).ok(), Path::new("/etc/passwd"))
}

/// Removes every `MOAT_*` variable from this process's environment when
/// moat acts for someone other than root, so that nothing (the state root,
/// the agent, the kernel, QEMU) can be redirected by the invoking user.
/// Runs first in `main`, while the process has one thread.
pub fn scrub_env(invoker: &Invoker) {
    if invoker.is_root() {
        return;
    }
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("MOAT_"))
        .collect();
    for k in &names {
        std::env::remove_var(k);
    }
    if !names.is_empty() {
        ignored(invoker, &names.join(", "));
    }
}

/// The notice for a setting moat does not take from this invoker.
pub fn ignored(invoker: &Invoker, what: &str) {
    eprintln!(
        "moat: notice: ignoring {what}: moat runs for {}, and only root acting as itself may override moat's settings",
        invoker.describe()
    );
}
