//! `moat vulndb update`: download OSV's per-ecosystem exports
//! (`<base>/<Ecosystem>/all.zip`) only when they changed (ETag /
//! Last-Modified kept in `ROOT/vulndb/feeds.json`), then import and
//! re-match exactly as `moat vulndb import` does. A corrupt or truncated
//! zip fails the import, which leaves the database as it was.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cmd::vulndb::{db_dir, import_and_rematch, print_import};
use crate::global::GlobalArgs;

/// OSV's public bucket.
pub const DEFAULT_SOURCE: &str = "https://osv-vulnerabilities.storage.googleapis.com";
/// Largest export downloaded.
const MAX_ZIP: u64 = 4 << 30;

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// Base URL of the per-ecosystem exports.
    #[arg(long, default_value = DEFAULT_SOURCE, value_name = "URL")]
    pub source: String,
    /// Ecosystems to fetch (OSV names: Debian, Alpine, PyPI, npm, Go, ...).
    /// Default: the ecosystems of the packages of the stored images.
    #[arg(long = "ecosystem", value_name = "NAME")]
    pub ecosystems: Vec<String>,
    /// Keep updating every INTERVAL (e.g. 30m, 6h, 90s).
    #[arg(long, value_name = "INTERVAL", value_parser = parse_interval)]
    pub watch: Option<Duration>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m or h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: expected a number with s, m or h")),
    };
    if secs == 0 {
        return Err("the interval must be at least 1s".into());
    }
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Feeds {
    /// URL -> (ETag, Last-Modified).
    feeds: BTreeMap<String, Validators>,
}
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
}

/// OSV export names (`Debian` for `Debian:12`) of the stored images' packages.
fn stored_ecosystems(global: &GlobalArgs) -> anyhow::Result<Vec<String>> {
    let mut set = std::collections::BTreeSet::new();
    for s in moat_scan::store::list(&global.root)? {
        for p in &s.inventory.packages {
            let base = p.ecosystem.split(':').next().unwrap_or("");
            if !base.is_empty() {
                set.insert(base.to_string());
            }
        }
    }
    Ok(set.into_iter().collect())
}

pub fn update(global: &GlobalArgs, a: UpdateArgs) -> anyhow::Result<()> {
    for e in &a.ecosystems {
        if e.is_empty() || e.contains(['/', '?', '#']) || e.contains("..") {
            bail!("--ecosystem {e:?}: not an OSV ecosystem name");
        }
    }
    let Some(interval) = a.watch else {
        return update_all(global, &a);
    };
    // Watching: a failed round (the server down, a corrupt export) is
    // reported and retried at the next interval; the database keeps what
    // it had, and the watcher keeps running.
    loop {
        if let Err(e) = update_all(global, &a) {
            eprintln!("moat: error: {e:#}; retrying in {}s", interval.as_secs());
        }
        std::thread::sleep(interval);
    }
}

/// One round: every ecosystem, the first failure ends it.
fn update_all(global: &GlobalArgs, a: &UpdateArgs) -> anyhow::Result<()> {
    let ecosystems = if a.ecosystems.is_empty() {
        let found = stored_ecosystems(global)?;
        if found.is_empty() {
            bail!("no stored image has packages of a known ecosystem; name the advisories to fetch with --ecosystem (Debian, Alpine, PyPI, npm, Go, ...)");
        }
        found
    } else {
        a.ecosystems.clone()
    };
    for e in &ecosystems {
        let url = format!("{}/{e}/all.zip", a.source.trim_end_matches('/'));
        update_one(global, &url)?;
    }
    Ok(())
}

fn update_one(global: &GlobalArgs, url: &str) -> anyhow::Result<()> {
    let dir = db_dir(global);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: creating", dir.display()))?;
    let state_path = dir.join("feeds.json");
    let mut feeds: Feeds = match std::fs::read(&state_path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => Feeds::default(),
    };
    let old = feeds.feeds.get(url).cloned().unwrap_or_default();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(e) = &old.etag {
        req = req.header("If-None-Match", e);
    }
    if let Some(m) = &old.last_modified {
        req = req.header("If-Modified-Since", m);
    }
    let resp = req
        .call()
        .with_context(|| format!("{url}: request failed"))?;
    match resp.status().as_u16() {
        304 => {
            println!("{url}: unchanged");
            return Ok(());
        }
        200 => {}
        s => bail!("{url}: the server answered HTTP {s}"),
    }
    let header = |k: &str| {
        resp.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let new = Validators {
        etag: header("etag"),
        last_modified: header("last-modified"),
    };
    let declared = resp.body().content_length();
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .suffix(".zip")
        .tempfile_in(&dir)
        .with_context(|| format!("{}: creating a download file", dir.display()))?;
    let mut out = tmp.as_file();
    let mut body = resp.into_body().into_reader().take(MAX_ZIP + 1);
    let mut buf = vec![0u8; 1 << 20];
    let mut got: u64 = 0;
    loop {
        let n = body.read(&mut buf).with_context(|| {
            format!("{url}: download cut off after {got} bytes; the database is unchanged")
        })?;
        if n == 0 {
            break;
        }
        got += n as u64;
        if got > MAX_ZIP {
            bail!("{url}: larger than {MAX_ZIP} bytes; refused");
        }
        out.write_all(&buf[..n]).context("writing the download")?;
    }
    if declared.is_some_and(|d| d != got) {
        bail!(
            "{url}: {got} bytes arrived of {} announced; the database is unchanged",
            declared.unwrap_or(0)
        );
    }
    let outcome = import_and_rematch(global, tmp.path()).with_context(|| {
        format!("{url}: importing the download failed; the database is unchanged")
    })?;
    print_import(&outcome);
    feeds.feeds.insert(url.to_string(), new);
    write_state(&state_path, &feeds)
}

fn write_state(path: &Path, feeds: &Feeds) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(feeds)?)
        .with_context(|| format!("{}: writing", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: writing", path.display()))
}
