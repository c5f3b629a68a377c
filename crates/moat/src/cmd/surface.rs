//! `moat surface`: measure the attack surface a policy or image leaves open.

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct SurfaceArgs {}

pub fn run(_global: &GlobalArgs, _cmd: SurfaceArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat surface` is not built yet")
}
