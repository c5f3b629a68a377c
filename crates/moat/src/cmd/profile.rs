//! `moat profile`: generate least-privilege policies from an image (record, static, merge).

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// Not built yet.
    Todo,
}

pub fn run(_global: &GlobalArgs, _cmd: ProfileCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat profile` is not built yet")
}
