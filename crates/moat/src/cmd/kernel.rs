//! `moat kernel`: build and inspect the minimal guest kernel of the vm backend.

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum KernelCommand {
    /// Not built yet.
    Todo,
}

pub fn run(_global: &GlobalArgs, _cmd: KernelCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat kernel` is not built yet")
}
