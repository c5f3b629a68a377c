//! `moat inspect` and `moat stats`: what a container is, and what it uses.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use moat_runtime::record;
use serde::Serialize;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat inspect web
  moat inspect web | jq -r '.[0].State.Status'")]
pub struct InspectArgs {
    /// Output format (JSON is the only one; the flag is podman's).
    #[arg(long, default_value = "json")]
    pub format: String,
    /// Container names or IDs.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// One container as `moat inspect` shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Inspected {
    id: String,
    name: String,
    image: String,
    image_id: String,
    isolation: String,
    created: String,
    state: State,
    policy: String,
    policy_digest: String,
    log_path: String,
    process: Option<moat_policy::ProcessSpec>,
    plan: Option<moat_policy::Plan>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct State {
    status: String,
    running: bool,
    pid: i32,
    monitor_pid: i32,
    exit_code: Option<i32>,
    finished_at: Option<String>,
    error: Option<String>,
    log_notice: Option<String>,
}

pub fn inspect(global: &GlobalArgs, args: InspectArgs) -> anyhow::Result<ExitCode> {
    if args.format != "json" {
        bail!(
            "--format {:?}: moat inspect prints JSON only (--format json)",
            args.format
        );
    }
    let all = crate::cmd::container::records(global)?;
    let root = global.records_root();
    let mut out = Vec::new();
    for key in &args.names {
        let r = crate::cmd::container::find(&all, key)?;
        let spec = moat_runtime::spec::read(&root, &r.id).ok();
        out.push(Inspected {
            id: r.id.to_string(),
            name: r.name.to_string(),
            image: spec.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
            image_id: r.image_id.to_string(),
            isolation: r.isolation.to_string(),
            created: r.created.clone(),
            state: State {
                status: r.status.to_string(),
                running: r.owned() && r.status == moat_runtime::Status::Running,
                pid: r.pid,
                monitor_pid: r.monitor_pid,
                exit_code: r.exit_code,
                finished_at: r.exit_time.clone(),
                error: r.exit_error.clone(),
                log_notice: r.log_notice.clone(),
            },
            policy: spec.as_ref().map(|s| s.policy.clone()).unwrap_or_default(),
            policy_digest: r.policy_digest.clone(),
            log_path: record::container_dir(&root, &r.id)
                .join(moat_runtime::logs::LOG_FILE)
                .display()
                .to_string(),
            process: spec.as_ref().map(|s| s.process.clone()),
            plan: spec.map(|s| s.plan),
        });
    }
    println!(
        "{}",
        crate::display::json(serde_json::to_string_pretty(&out)?)
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat stats                  # refreshes every 2 s until Ctrl-C
  moat stats --no-stream web
  moat stats --no-stream --format json

Figures come from the container's cgroups (memory in use, CPU time, processes);
for a micro-VM they are those of its VMM. CPU % is over the last interval.")]
pub struct StatsArgs {
    /// Print one sample and exit.
    #[arg(long)]
    pub no_stream: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Containers (default: every running one).
    pub names: Vec<String>,
}

#[derive(Serialize)]
struct Sample {
    id: String,
    name: String,
    memory_bytes: Option<u64>,
    cpu_usec: Option<u64>,
    cpu_percent: Option<f64>,
    pids: Option<u64>,
}

pub fn stats(global: &GlobalArgs, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let interval = Duration::from_secs(if args.no_stream { 1 } else { 2 });
    let mut last = sample(global, &args.names, None, interval)?;
    loop {
        std::thread::sleep(interval);
        let now = sample(global, &args.names, Some(&last), interval)?;
        match args.format {
            Format::Json => println!(
                "{}",
                crate::display::json(serde_json::to_string_pretty(&now)?)
            ),
            Format::Table => {
                outln!(
                    "{:<12}  {:<20}  {:>10}  {:>7}  {:>6}",
                    "ID",
                    "NAME",
                    "MEM",
                    "CPU %",
                    "PIDS"
                );
                for s in &now {
                    let dash = || "--".to_string();
                    outln!(
                        "{:<12}  {:<20}  {:>10}  {:>7}  {:>6}",
                        &s.id[..12],
                        s.name,
                        s.memory_bytes.map(human).unwrap_or_else(dash),
                        s.cpu_percent
                            .map(|p| format!("{p:.1}"))
                            .unwrap_or_else(dash),
                        s.pids.map(|p| p.to_string()).unwrap_or_else(dash)
                    );
                }
            }
        }
        if args.no_stream {
            return Ok(ExitCode::SUCCESS);
        }
        last = now;
    }
}

fn sample(
    global: &GlobalArgs,
    names: &[String],
    last: Option<&Vec<Sample>>,
    interval: Duration,
) -> anyhow::Result<Vec<Sample>> {
    let all = crate::cmd::container::records(global)?;
    let chosen: Vec<_> = if names.is_empty() {
        all.iter().filter(|r| r.owned()).cloned().collect()
    } else {
        names
            .iter()
            .map(|n| crate::cmd::container::find(&all, n))
            .collect::<anyhow::Result<_>>()?
    };
    Ok(chosen
        .iter()
        .map(|r| {
            let s = crate::cmd::container::backend_for(global, r.isolation)
                .stats(r)
                .unwrap_or_default();
            let before = last
                .and_then(|l| l.iter().find(|x| x.id == r.id.as_str()))
                .and_then(|x| x.cpu_usec);
            Sample {
                id: r.id.to_string(),
                name: r.name.to_string(),
                memory_bytes: s.memory_bytes,
                cpu_usec: s.cpu_usec,
                cpu_percent: match (before, s.cpu_usec) {
                    (Some(b), Some(n)) => {
                        Some(n.saturating_sub(b) as f64 / interval.as_micros() as f64 * 100.0)
                    }
                    _ => None,
                },
                pids: s.pids,
            }
        })
        .collect())
}

fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}
