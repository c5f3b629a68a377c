//! `moat dev`: developer helpers (test images).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TestImageFormat {
    /// A tar of an OCI layout (what `podman save --format oci-archive` writes).
    #[default]
    OciArchive,
    /// An OCI layout directory.
    OciLayout,
}

#[derive(Debug, clap::Subcommand)]
pub enum DevCommand {
    /// Write the bundled busybox test image (built from /bin/busybox of
    /// Debian's busybox-static; no network needed).
    #[command(after_help = "Example:
  moat dev test-image -o busybox.oci.tar && moat image import busybox.oci.tar")]
    TestImage(TestImageArgs),
}

#[derive(Debug, clap::Args)]
pub struct TestImageArgs {
    /// Output file (oci-archive) or directory (oci-layout).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub format: TestImageFormat,
}

pub fn run(_global: &GlobalArgs, cmd: DevCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DevCommand::TestImage(a) => {
            let image = match a.format {
                TestImageFormat::OciArchive => {
                    moat_image::testimage::write_busybox_oci_archive(&a.output)?
                }
                TestImageFormat::OciLayout => {
                    moat_image::testimage::write_busybox_layout(&a.output)?
                }
            };
            println!(
                "wrote {} ({}, manifest {})",
                a.output.display(),
                moat_image::testimage::NAME,
                image.manifest_digest
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
