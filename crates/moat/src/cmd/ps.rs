//! `moat ps`: list containers (running ones, or all with `-a`).

use std::process::ExitCode;

use crate::global::GlobalArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat ps
  moat ps -a                  # stopped and created containers too
  moat ps --format json | jq -r '.[].name'

Containers whose monitor or supervising moat process died are recorded as
stopped first (`moat ps -a` shows why).")]
pub struct PsArgs {
    /// Show every container, not only running ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Output format: a table, or a JSON array of state objects (id, name,
    /// image_id, pid, isolation, created, command, ...).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

pub fn run(global: &GlobalArgs, cmd: PsArgs) -> anyhow::Result<ExitCode> {
    // The core's one reader (it keeps the trust rules).
    let states: Vec<_> = crate::cmd::container::records(global)?
        .into_iter()
        .filter(|s| cmd.all || s.owned())
        .collect();
    match cmd.format {
        Format::Json => println!(
            "{}",
            crate::display::json(serde_json::to_string_pretty(&states)?)
        ),
        Format::Table => {
            println!(
                "{:<12}  {:<20}  {:<19}  {:<9}  {:>8}  {:<20}  {:<16}  COMMAND",
                "CONTAINER ID", "NAME", "IMAGE", "ISOLATION", "PID", "CREATED", "STATUS"
            );
            for s in &states {
                let image_id = s.image_id.to_string();
                let image = image_id.strip_prefix("sha256:").unwrap_or(&image_id);
                // Name, image and command come from the image or the
                // command line: one line each, escaped.
                let command = s
                    .command
                    .iter()
                    .map(|a| crate::display::line(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ");
                outln!(
                    "{:<12}  {:<20}  {:<19}  {:<9}  {:>8}  {:<20}  {:<16}  {}",
                    s.id.short(),
                    s.name,
                    &image[..image.len().min(19)],
                    s.isolation,
                    s.pid,
                    s.created,
                    crate::cmd::container::status_text(s),
                    command
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
