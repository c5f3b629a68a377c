//! `moat policy`: check, explain, compile, export and diff security policies.

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Not built yet.
    Todo,
}

pub fn run(_global: &GlobalArgs, _cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat policy` is not built yet")
}
