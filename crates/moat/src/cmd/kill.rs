//! `moat kill`: send a signal to a running container.

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct KillArgs {}

pub fn run(_global: &GlobalArgs, _cmd: KillArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat kill` is not built yet")
}
