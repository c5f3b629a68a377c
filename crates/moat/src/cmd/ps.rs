//! `moat ps`: list running containers.

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct PsArgs {}

pub fn run(_global: &GlobalArgs, _cmd: PsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat ps` is not built yet")
}
