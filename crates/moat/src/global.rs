//! Options shared by every subcommand, and the state-root convention.

use std::path::PathBuf;

use clap::Args;

/// Generic failure (bad input, operation failed).
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// State root: images, caches, databases.
    #[arg(
        long,
        global = true,
        env = "MOAT_ROOT",
        default_value = "/var/lib/moat"
    )]
    pub root: PathBuf,
    /// Runtime root: running containers. Defaults to /run/moat, or
    /// ROOT/run when --root/MOAT_ROOT is set.
    #[arg(long, global = true, env = "MOAT_RUN_ROOT")]
    pub run_root: Option<PathBuf>,
}

impl GlobalArgs {
    /// Where running containers keep their state.
    pub fn run_root(&self) -> PathBuf {
        match &self.run_root {
            Some(p) => p.clone(),
            None if self.root == std::path::Path::new("/var/lib/moat") => {
                PathBuf::from("/run/moat")
            }
            None => self.root.join("run"),
        }
    }
}
