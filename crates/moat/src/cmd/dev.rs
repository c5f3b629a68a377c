//! `moat dev`: developer helpers (test images).

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum DevCommand {
    /// Not built yet.
    Todo,
}

pub fn run(_global: &GlobalArgs, _cmd: DevCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat dev` is not built yet")
}
