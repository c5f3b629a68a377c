//! `moat image ...`

use std::process::ExitCode;

use clap::Subcommand;

use crate::global::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images in the store.
    Ls,
}

pub fn run(_global: &GlobalArgs, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Ls => Ok(ExitCode::SUCCESS),
    }
}
