//! `moat logs`: what a detached container wrote to stdout and stderr.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use moat_runtime::logs::{self, Filter, LogLine, Stream};
use moat_runtime::record;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat logs web
  moat logs -f --tail 20 web
  moat logs --since 10m web
  moat logs --since 2026-12-06T10:00:00Z web

Lines are kept as JSON in the container's directory (ctr.log, capped at 10 MiB,
one older file kept) until `moat rm`. Containers run in the foreground are
not logged: their output went to the terminal.")]
pub struct LogsArgs {
    /// Follow: keep printing new output until the container stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only output since a time: RFC 3339 (2026-12-06T10:00:00Z) or a
    /// duration before now (30s, 10m, 2h).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Container name or ID, or deployment/NAME (one of its pods, from moatd).
    pub name: String,
}

pub fn run(global: &GlobalArgs, args: LogsArgs) -> anyhow::Result<ExitCode> {
    if args.name.starts_with("deployment/") {
        if args.follow || args.since.is_some() {
            bail!(
                "moat logs {}: -f and --since take a pod (moat get pods), not a deployment",
                args.name
            );
        }
        return crate::cmd::moatd::logs(&args.name, args.tail);
    }
    let since_nanos = match &args.since {
        Some(s) => Some(parse_since(s)?),
        None => None,
    };
    let all = crate::cmd::container::records(global)?;
    let r = crate::cmd::container::find(&all, &args.name)?;
    let dir = record::container_dir(&global.records_root(), &r.id);
    let (lines, mut follower) = logs::read(
        &dir,
        Filter {
            since_nanos,
            tail: args.tail,
        },
    )?;
    for l in &lines {
        print_line(l);
    }
    if args.follow {
        loop {
            let owned = record::read_all(&global.records_root())?
                .into_iter()
                .find(|x| x.id == r.id)
                .is_some_and(|x| x.owned());
            for l in follower.poll()? {
                print_line(&l);
            }
            if !owned {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes one logged line to the stream it came from, as the workload
/// wrote it.
pub fn print_line(l: &LogLine) {
    let _ = match l.stream {
        Stream::Stdout => {
            let mut o = std::io::stdout().lock();
            o.write_all(l.log.as_bytes()).and_then(|()| o.flush())
        }
        Stream::Stderr => std::io::stderr().write_all(l.log.as_bytes()),
    };
}

/// `--since`: an RFC 3339 time in UTC or a duration before now.
fn parse_since(s: &str) -> anyhow::Result<i128> {
    if let Some(t) = logs::parse_rfc3339_nanos(s) {
        return Ok(t);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let secs: u64 = match (num.parse::<u64>(), unit) {
        (Ok(n), "s") => n,
        (Ok(n), "m") => n * 60,
        (Ok(n), "h") => n * 3600,
        _ => bail!(
            "--since {s:?}: use an RFC 3339 time in UTC (2026-12-06T10:00:00Z) or a duration like 30s, 10m, 2h"
        ),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i128;
    Ok(now - secs as i128 * 1_000_000_000)
}
