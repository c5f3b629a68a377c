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
    /// Where container records, specs and logs live: the state root, so
    /// that they survive a reboot (`moat ps -a` then shows them stopped).
    pub fn records_root(&self) -> PathBuf {
        self.root.clone()
    }

    /// Where running containers keep what dies with them (control sockets).
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

/// A failure of moat's own before any workload ran, in a command that
/// runs containers (`profile record`, `surface measure`): `main` exits 125
/// for it, as for every error of `moat run`, so that it never reads as a
/// workload's exit status.
#[derive(Debug)]
pub struct NotStarted(pub anyhow::Error);

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for NotStarted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Marks an error as [`NotStarted`].
pub trait BeforeStart<T> {
    fn before_start(self) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> BeforeStart<T> for Result<T, E> {
    fn before_start(self) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::Error::new(NotStarted(e.into())))
    }
}

/// Whether the command line names a command that runs containers (`run`,
/// `profile record`, `surface measure`), read from the raw arguments so
/// that it works when they do not parse.
pub fn runs_container(args: &[std::ffi::OsString]) -> bool {
    let mut words = Vec::new();
    let mut it = args.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        if a == "--root" || a == "--run-root" {
            it.next();
        } else if !a.starts_with('-') {
            words.push(a);
            if words.len() == 2 {
                break;
            }
        }
    }
    matches!(
        words.as_slice(),
        ["run" | "create" | "start" | "exec", ..] | ["profile", "record"] | ["surface", "measure"]
    )
}
