//! `moat run`: run a command in a new container from an image.

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct RunArgs {}

pub fn run(_global: &GlobalArgs, _cmd: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat run` is not built yet")
}
