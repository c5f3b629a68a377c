//! `moat vulndb`: import OSV advisories and show the advisory database status.

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum VulndbCommand {
    /// Not built yet.
    Todo,
}

pub fn run(_global: &GlobalArgs, _cmd: VulndbCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat vulndb` is not built yet")
}
