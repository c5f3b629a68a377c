//! `moat ps`: list running containers.

use std::process::ExitCode;

use anyhow::Context;
use moat_runtime::record;
use moat_sandbox::state;

use crate::global::GlobalArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat ps
  moat ps --format json | jq -r '.[].name'

Containers whose supervising moat process died are cleaned up first.")]
pub struct PsArgs {
    /// Output format: a table, or a JSON array of state objects (id, name,
    /// image_id, pid, isolation, created, command, ...).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

pub fn run(global: &GlobalArgs, cmd: PsArgs) -> anyhow::Result<ExitCode> {
    let run_root = global.run_root();
    state::cleanup_stale(&run_root).context("cleaning up after dead containers")?;
    // The core's one reader (it keeps the trust rules).
    let states: Vec<_> = record::read_all(&run_root)?
        .into_iter()
        .filter(|s| s.isolation != moat_runtime::Isolation::Sandbox || s.supervisor_alive())
        .collect();
    match cmd.format {
        Format::Json => println!(
            "{}",
            crate::display::json(serde_json::to_string_pretty(&states)?)
        ),
        Format::Table => {
            println!(
                "{:<12}  {:<20}  {:<19}  {:<9}  {:>8}  {:<20}  COMMAND",
                "CONTAINER ID", "NAME", "IMAGE", "ISOLATION", "PID", "CREATED"
            );
            for s in &states {
                let image = s.image_id.strip_prefix("sha256:").unwrap_or(&s.image_id);
                // Name, image and command come from the image or the
                // command line: one line each, escaped.
                let command = s
                    .command
                    .iter()
                    .map(|a| crate::display::line(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ");
                outln!(
                    "{:<12}  {:<20}  {:<19}  {:<9}  {:>8}  {:<20}  {}",
                    s.id.short(),
                    s.name,
                    &image[..image.len().min(19)],
                    s.isolation,
                    s.pid,
                    s.created,
                    command
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
