//! `moat scan`: scan an image, a rootfs or an SBOM for known vulnerabilities.

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct ScanArgs {}

pub fn run(_global: &GlobalArgs, _cmd: ScanArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`moat scan` is not built yet")
}
