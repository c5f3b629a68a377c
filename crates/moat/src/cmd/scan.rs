//! `moat scan`: scan an image, a rootfs or an SBOM for known vulnerabilities.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use moat_scan::cvss::Severity;
use moat_scan::db::VulnDb;
use moat_scan::inventory::{self, Inventory};
use moat_scan::report::Report;

use crate::cmd::vulndb;
use crate::global::GlobalArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    moat scan busybox:latest\n  \
    moat scan --rootfs /srv/rootfs --fail-on high\n  \
    moat scan --sbom app.cdx.json --format sarif > results.sarif\n  \
    moat scan alpine --format cyclonedx > sbom.cdx.json\n  \
    moat scan --watch ~/osv            # re-import and re-match on change, until stopped\n\n\
    Advisories come from `moat vulndb import`. The report says, per ecosystem and\n\
    release, how many advisories its packages were checked against; packages with\n\
    no advisory data (or in an image without a package database) are reported as\n\
    not checked, never as clean. `--format cyclonedx` works without a database.\n\
    Exit status: 0 done, 1 findings at or above --fail-on (or, with --fail-on,\n\
    packages not checked, unless --allow-unchecked), or an error.")]
pub struct ScanArgs {
    /// Image to scan (name[:tag], image ID, or a unique prefix).
    #[arg(conflicts_with_all = ["rootfs", "sbom", "watch"], required_unless_present_any = ["rootfs", "sbom", "watch"])]
    pub image: Option<String>,
    /// Scan an unpacked root filesystem directory instead of an image.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["sbom", "watch"])]
    pub rootfs: Option<PathBuf>,
    /// Scan the components of a CycloneDX JSON SBOM.
    #[arg(long, value_name = "FILE", conflicts_with = "watch")]
    pub sbom: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Exit with status 1 if a finding has this severity or worse
    /// (low, medium, high, critical).
    #[arg(long, value_name = "SEVERITY")]
    pub fail_on: Option<Severity>,
    /// With --fail-on: do not fail because some packages could not be
    /// checked (no advisory data for their ecosystem).
    #[arg(long, requires = "fail_on")]
    pub allow_unchecked: bool,
    /// Leave out findings for which no fixed version exists yet.
    #[arg(long)]
    pub ignore_unfixed: bool,
    /// Watch an advisory directory: re-import when it changes and re-match
    /// every stored image inventory, until stopped.
    #[arg(long, value_name = "DIR")]
    pub watch: Option<PathBuf>,
    /// Seconds between checks of the watched directory.
    #[arg(long, default_value_t = 10, value_name = "SECS", requires = "watch")]
    pub interval: u64,
    /// Stop after this many checks (for tests and cron-like use).
    #[arg(long, hide = true, requires = "watch")]
    pub rounds: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Sarif,
    Cyclonedx,
}

pub fn run(global: &GlobalArgs, cmd: ScanArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &cmd.watch {
        return watch(global, dir, cmd.interval, cmd.rounds);
    }
    let (target, inv) = if let Some(dir) = &cmd.rootfs {
        let inv =
            inventory::from_rootfs(dir).with_context(|| format!("scanning {}", dir.display()))?;
        (dir.display().to_string(), inv)
    } else if let Some(file) = &cmd.sbom {
        (file.display().to_string(), moat_scan::sbom::read(file)?)
    } else {
        image_inventory(global, cmd.image.as_deref().unwrap_or_default())?
    };
    let db = match VulnDb::open(&vulndb::db_dir(global)) {
        Ok(db) => Some(db),
        // An SBOM needs no advisories.
        Err(moat_scan::db::DbError::Missing { .. }) if cmd.format == Format::Cyclonedx => None,
        Err(e) => return Err(e.into()),
    };
    let report = Report::build(&target, inv, db.as_ref(), cmd.ignore_unfixed, &[])?;
    match cmd.format {
        // Package names and versions come from the image: escaped.
        Format::Table => print!("{}", crate::display::text(&report.table())),
        Format::Json => println!("{}", json(&report.json())?),
        Format::Sarif => println!("{}", json(&report.sarif())?),
        Format::Cyclonedx => println!("{}", json(&report.cyclonedx())?),
    }
    if let Some(sev) = cmd.fail_on {
        if report.has_at_least(sev) {
            return Ok(ExitCode::from(1));
        }
        if report.not_checked > 0 && !cmd.allow_unchecked {
            let items: Vec<String> = report
                .unchecked()
                .iter()
                .map(|c| format!("{} ({})", c.label(), c.packages))
                .collect();
            eprintln!(
                "moat: {} packages were not checked ({}): --fail-on {sev} fails; import advisories for them, or pass --allow-unchecked",
                report.not_checked,
                items.join(", ")
            );
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The inventory of a stored image: the one stored at import, or read from
/// its layers (and stored) for an image imported before scanning existed.
fn image_inventory(global: &GlobalArgs, reference: &str) -> anyhow::Result<(String, Inventory)> {
    let store = moat_image::Store::open(&global.root)?;
    let image = store.resolve(reference)?;
    let shown = match image.names.first() {
        Some(n) => format!("{n} ({})", image.short_id()),
        None => image.config_digest.clone(),
    };
    if let Some(s) = moat_scan::store::load(&global.root, &image.config_digest)? {
        return Ok((shown, s.inventory));
    }
    let stored = inventory_from_store(&store, &image)?;
    Ok((shown, stored.inventory))
}

/// Read an image's layers, bottom first, into an inventory and store it
/// under `<root>/scan/inventories/`.
pub fn inventory_from_store(
    store: &moat_image::Store,
    image: &moat_image::Image,
) -> anyhow::Result<moat_scan::store::StoredInventory> {
    let mut c = inventory::Collector::new();
    for layer in &image.layers {
        let r = store.open_layer(&layer.digest).with_context(|| {
            format!("opening layer {} of {}", layer.digest, image.config_digest)
        })?;
        c.add_layer(&layer.digest, r)?;
    }
    let inv = c.finish()?;
    Ok(moat_scan::store::save(
        store.root(),
        &image.config_digest,
        &image.names,
        inv,
    )?)
}

/// Called by `moat image import`: store the new image's inventory so that
/// advisory imports can re-match it without reading layers again. A failure
/// here does not undo the import; it is reported as a warning.
pub fn record_inventory(store: &moat_image::Store, image: &moat_image::Image) {
    if let Err(err) = inventory_from_store(store, image) {
        eprintln!(
            "moat: warning: image {} imported, but its package inventory failed ({err:#}); `moat scan` and the run gate will report it as not checked",
            image.config_digest
        );
    }
}

fn watch(
    global: &GlobalArgs,
    dir: &std::path::Path,
    interval: u64,
    rounds: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let mut last: Option<Vec<u8>> = None;
    let mut round = 0u64;
    loop {
        round += 1;
        let fp = moat_scan::db::input_fingerprint(dir).with_context(|| {
            format!(
                "cannot read the watched advisory directory {}",
                dir.display()
            )
        })?;
        if last.as_ref() != Some(&fp) {
            let out = vulndb::import_and_rematch(global, dir)?;
            vulndb::print_import(&out);
            last = Some(fp);
        }
        if rounds.is_some_and(|n| round >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(interval.max(1)));
    }
}

/// The vulnerability check of `moat run`: when `policy` (the very object
/// the run was authorised under, never reloaded) sets `vulnerabilities.fail_on`, refuse an image
/// with findings at or above it that no unexpired ignore entry covers,
/// naming the advisories and fixed versions. `image_id` is the config digest
/// of a stored image, or anything else for a `--rootfs` directory (then the
/// directory is inventoried). Without an advisory database the check
/// refuses: a policy that asks for it is not silently skipped. Packages that
/// could not be checked (no advisory data for their ecosystem) refuse too,
/// unless `allow_unchecked` (`moat run --allow-unchecked`).
pub fn vulnerability_gate(
    global: &GlobalArgs,
    policy: &moat_policy::Policy,
    image_id: &str,
    rootfs: &std::path::Path,
    allow_unchecked: bool,
) -> anyhow::Result<()> {
    let v = &policy.spec.vulnerabilities;
    let Some(fail_on) = v.fail_on else {
        return Ok(());
    };
    use moat_policy::model::Severity as P;
    let fail_on = match fail_on {
        P::Low => Severity::Low,
        P::Medium => Severity::Medium,
        P::High => Severity::High,
        P::Critical => Severity::Critical,
    };
    let ignores: Vec<moat_scan::store::IgnoreRule> = v
        .ignore
        .iter()
        .map(|i| moat_scan::store::IgnoreRule {
            id: i.id.clone(),
            expires: Some(i.expires.clone()).filter(|e| !e.is_empty()),
            reason: Some(i.reason.clone()),
        })
        .collect();
    let today = moat_scan::util::today();
    let root = &global.root;
    let context = || {
        format!(
            "policy {:?} sets vulnerabilities.fail_on={fail_on}, so the image must be checked",
            policy.name
        )
    };
    let decision = if image_id.starts_with("sha256:") {
        if moat_scan::store::load(root, image_id)?.is_none() {
            let store = moat_image::Store::open(root)?;
            let image = store.resolve(image_id)?;
            inventory_from_store(&store, &image)?;
        }
        moat_scan::store::gate(root, image_id, fail_on, &ignores, today, allow_unchecked)
            .with_context(context)?
    } else {
        let inv = inventory::from_rootfs(rootfs)?;
        moat_scan::store::gate_inventory(root, &inv, fail_on, &ignores, today, allow_unchecked)
            .with_context(context)?
    };
    if let Some(msg) = decision.refusal(image_id, fail_on) {
        if decision.blocking.is_empty() {
            anyhow::bail!("{msg}");
        }
        anyhow::bail!("{msg}; fix the image or add time-limited ignore entries to the policy");
    }
    if allow_unchecked && !decision.unchecked.is_empty() {
        let items: Vec<String> = decision
            .unchecked
            .iter()
            .map(|c| format!("{} ({} packages)", c.label(), c.packages))
            .collect();
        eprintln!(
            "moat: warning: not checked for vulnerabilities (--allow-unchecked): {}",
            items.join(", ")
        );
    }
    Ok(())
}

/// Pretty JSON, with the characters a terminal would act on escaped.
fn json(v: &serde_json::Value) -> anyhow::Result<String> {
    Ok(crate::display::json(serde_json::to_string_pretty(v)?))
}
