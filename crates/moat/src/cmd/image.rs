//! `moat image`: import, list, inspect, export and remove images.

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Not built yet.
    Todo,
}

pub fn run(_global: &GlobalArgs, _cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat image` is not built yet")
}
