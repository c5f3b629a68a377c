//! Stored inventories (`<root>/scan/inventories/<hex>.json`, written at
//! image import), continuous re-matching after each advisory import, alerts
//! (`<root>/scan/alerts.log`, JSON lines) and the `moat run` gate.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use moat_image::digest::Digest;
use serde::{Deserialize, Serialize};

use crate::coverage::EcosystemCoverage;
use crate::cvss::Severity;
use crate::db::{DbError, VulnDb};
use crate::inventory::Inventory;
use crate::matcher::{match_inventory, Finding};
use crate::util;

/// Errors of the inventory store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored inventory {} is corrupt: re-import the image to rebuild it", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no stored inventory for image {image_id}: it was imported before scanning existed; re-import it with `moat image import`")]
    NoInventory { image_id: String },
    #[error("image ID {image_id:?} is not a sha256 digest (sha256:<64 hex digits>): no inventory is stored under it")]
    ImageId { image_id: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// An inventory as stored with an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredInventory {
    pub image_id: String,
    #[serde(default)]
    pub names: Vec<String>,
    pub created: String,
    pub inventory: Inventory,
    /// Keys of the findings at the last match, to report only new ones.
    #[serde(default)]
    pub last_findings: Vec<String>,
}

/// A running container (from its record, see [`ContainerImage`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// One alert line of `alerts.log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alert {
    pub time: String,
    pub image_id: String,
    pub names: Vec<String>,
    pub new_findings: Vec<AlertFinding>,
    pub containers: Vec<ContainerRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertFinding {
    pub id: String,
    pub package: String,
    pub installed: String,
    pub fixed: Option<String>,
    pub severity: Severity,
}

fn inventories_dir(root: &Path) -> PathBuf {
    root.join("scan").join("inventories")
}

/// `<root>/scan/inventories/<hex>.json`: the image ID is checked to be a
/// digest first, so it cannot name a path elsewhere.
fn inventory_path(root: &Path, image_id: &str) -> Result<PathBuf, StoreError> {
    let d = Digest::parse(image_id).map_err(|_| StoreError::ImageId {
        image_id: image_id.to_string(),
    })?;
    Ok(inventories_dir(root).join(format!("{}.json", d.hex())))
}

/// Where the alerts log lives.
pub fn alerts_log(root: &Path) -> PathBuf {
    root.join("scan").join("alerts.log")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let err = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Store the inventory of an image (called at `moat image import`). If an
/// advisory database exists, the current findings are recorded so that the
/// next advisory import reports only what is new.
pub fn save(
    root: &Path,
    image_id: &str,
    names: &[String],
    inventory: Inventory,
) -> Result<StoredInventory, StoreError> {
    let mut stored = StoredInventory {
        image_id: image_id.to_string(),
        names: names.to_vec(),
        created: moat_plan::time::now_rfc3339(),
        inventory,
        last_findings: Vec::new(),
    };
    if let Ok(db) = VulnDb::open(&root.join("vulndb")) {
        stored.last_findings = match_inventory(&db, &stored.inventory)?
            .iter()
            .map(Finding::key)
            .collect();
    }
    write(root, &stored)?;
    Ok(stored)
}

fn write(root: &Path, s: &StoredInventory) -> Result<(), StoreError> {
    let path = inventory_path(root, &s.image_id)?;
    let bytes = serde_json::to_vec(s).unwrap_or_default();
    write_atomic(&path, &bytes)
}

/// The stored inventory of `image_id`, if any (none for an ID that is not
/// a digest: nothing is stored under one).
pub fn load(root: &Path, image_id: &str) -> Result<Option<StoredInventory>, StoreError> {
    let Ok(path) = inventory_path(root, image_id) else {
        return Ok(None);
    };
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Read { path, source }),
    }
}

/// Remove the stored inventory of an image (at `moat image rm`).
pub fn remove(root: &Path, image_id: &str) -> Result<(), StoreError> {
    let Ok(path) = inventory_path(root, image_id) else {
        return Ok(()); // nothing is stored under it
    };
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::Write { path, source: e })
        }
        _ => Ok(()),
    }
}

/// Every stored inventory.
pub fn list(root: &Path) -> Result<Vec<StoredInventory>, StoreError> {
    let dir = inventories_dir(root);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Read { path: dir, source }),
    };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let b = fs::read(&path).map_err(|source| StoreError::Read {
            path: path.clone(),
            source,
        })?;
        out.push(
            serde_json::from_slice(&b).map_err(|source| StoreError::Corrupt { path, source })?,
        );
    }
    Ok(out)
}

/// A container and the image it runs, as the front end read it through
/// the runtime core's one reader (`moat_runtime::record::read_all`, which
/// keeps the trust rules): the scanner never parses container state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    pub container: ContainerRef,
    pub image_id: String,
}

/// The containers of `containers` that run `image_id`, by ID.
fn containers_of(containers: &[ContainerImage], image_id: &str) -> Vec<ContainerRef> {
    let mut out: Vec<ContainerRef> = containers
        .iter()
        .filter(|c| c.image_id == image_id)
        .map(|c| c.container.clone())
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Re-match every stored inventory against `db`, append an alert for each
/// image with findings it did not have before, and remember the new state.
pub fn rematch_all(
    root: &Path,
    containers: &[ContainerImage],
    db: &VulnDb,
) -> Result<Vec<Alert>, StoreError> {
    let mut alerts = Vec::new();
    for mut s in list(root)? {
        let findings = match_inventory(db, &s.inventory)?;
        let known: HashSet<&String> = s.last_findings.iter().collect();
        let new: Vec<&Finding> = findings
            .iter()
            .filter(|f| !known.contains(&f.key()))
            .collect();
        if !new.is_empty() {
            alerts.push(Alert {
                time: moat_plan::time::now_rfc3339(),
                image_id: s.image_id.clone(),
                names: s.names.clone(),
                new_findings: new
                    .iter()
                    .map(|f| AlertFinding {
                        id: f.id.clone(),
                        package: f.package.clone(),
                        installed: f.installed.clone(),
                        fixed: f.fixed.clone(),
                        severity: f.severity,
                    })
                    .collect(),
                containers: containers_of(containers, &s.image_id),
            });
        }
        let keys: Vec<String> = findings.iter().map(Finding::key).collect();
        if keys != s.last_findings {
            s.last_findings = keys;
            write(root, &s)?;
        }
    }
    if !alerts.is_empty() {
        let path = alerts_log(root);
        let err = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(path.parent().unwrap_or(root)).map_err(err)?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        let mut buf = Vec::new();
        for a in &alerts {
            serde_json::to_writer(&mut buf, a).unwrap_or_default();
            buf.push(b'\n');
        }
        f.write_all(&buf).map_err(err)?;
    }
    Ok(alerts)
}

/// A policy ignore entry: an advisory ID (or alias) not to act on, until
/// `expires` (`YYYY-MM-DD`, inclusive) if given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoreRule {
    pub id: String,
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl IgnoreRule {
    /// Whether the rule still applies on day `today` (days since epoch). A
    /// rule with an unreadable date never applies.
    pub fn active(&self, today: i64) -> bool {
        match &self.expires {
            None => true,
            Some(d) => util::parse_date(d).is_some_and(|day| today <= day),
        }
    }

    fn covers(&self, f: &Finding) -> bool {
        f.id == self.id || f.aliases.contains(&self.id)
    }
}

/// Drop findings covered by an active ignore rule; returns how many.
pub fn apply_ignores(findings: &mut Vec<Finding>, rules: &[IgnoreRule], today: i64) -> usize {
    let before = findings.len();
    findings.retain(|f| !rules.iter().any(|r| r.active(today) && r.covers(f)));
    before - findings.len()
}

/// The decision of the `moat run` vulnerability gate.
#[derive(Debug, Clone)]
pub struct GateDecision {
    /// Findings at or above the threshold that no active rule covers.
    pub blocking: Vec<Finding>,
    /// Rules whose expiry date has passed (they no longer apply).
    pub expired: Vec<IgnoreRule>,
    /// Ecosystems whose packages could not be checked (no advisory data,
    /// or versions moat cannot order); they block unless `allow_unchecked`.
    pub unchecked: Vec<EcosystemCoverage>,
    pub allow_unchecked: bool,
}

impl GateDecision {
    pub fn allowed(&self) -> bool {
        self.blocking.is_empty() && (self.unchecked.is_empty() || self.allow_unchecked)
    }

    /// A refusal message naming the advisories and fixed versions, or the
    /// ecosystems that could not be checked.
    pub fn refusal(&self, image: &str, fail_on: Severity) -> Option<String> {
        if self.allowed() {
            return None;
        }
        if self.blocking.is_empty() {
            let items: Vec<String> = self
                .unchecked
                .iter()
                .map(|c| {
                    format!(
                        "{} ({} packages): {}",
                        c.label(),
                        c.packages,
                        c.reason.as_deref().unwrap_or("not checked")
                    )
                })
                .collect();
            return Some(format!(
                "image {image} could not be checked against the policy's fail_on={fail_on}: {}; import advisories for them, or pass --allow-unchecked to run it anyway",
                items.join("; ")
            ));
        }
        let items: Vec<String> = self
            .blocking
            .iter()
            .map(|f| {
                format!(
                    "{} ({}) in {} {}: {}",
                    f.id,
                    f.severity,
                    f.package,
                    f.installed,
                    f.fixed
                        .as_deref()
                        .map_or("no fix available".to_string(), |v| format!("fixed in {v}"))
                )
            })
            .collect();
        let mut msg = format!(
            "image {image} has {} vulnerabilities at or above the policy's fail_on={fail_on}: {}",
            items.len(),
            items.join("; ")
        );
        if !self.expired.is_empty() {
            let ids: Vec<&str> = self.expired.iter().map(|r| r.id.as_str()).collect();
            msg.push_str(&format!(
                " (expired ignore entries no longer apply: {})",
                ids.join(", ")
            ));
        }
        Some(msg)
    }
}

/// The check `moat run` makes for a policy's `vulnerabilities.fail_on` and
/// ignore list: match the stored inventory of `image_id` against the
/// advisory database under `root`. `today` is days since the epoch
/// ([`util::today`]).
pub fn gate(
    root: &Path,
    image_id: &str,
    fail_on: Severity,
    ignores: &[IgnoreRule],
    today: i64,
    allow_unchecked: bool,
) -> Result<GateDecision, StoreError> {
    let stored = load(root, image_id)?.ok_or_else(|| StoreError::NoInventory {
        image_id: image_id.to_string(),
    })?;
    gate_inventory(
        root,
        &stored.inventory,
        fail_on,
        ignores,
        today,
        allow_unchecked,
    )
}

/// [`gate`] for an inventory at hand (`moat run --rootfs DIR`).
pub fn gate_inventory(
    root: &Path,
    inventory: &Inventory,
    fail_on: Severity,
    ignores: &[IgnoreRule],
    today: i64,
    allow_unchecked: bool,
) -> Result<GateDecision, StoreError> {
    let db = VulnDb::open(&root.join("vulndb"))?;
    let counts = db.ecosystem_counts()?;
    let unchecked = crate::coverage::of(inventory, Some(&counts))
        .into_iter()
        .filter(|c| !c.checked)
        .collect();
    let mut findings = match_inventory(&db, inventory)?;
    findings.retain(|f| f.severity >= fail_on);
    let expired = ignores
        .iter()
        .filter(|r| !r.active(today) && findings.iter().any(|f| r.covers(f)))
        .cloned()
        .collect();
    apply_ignores(&mut findings, ignores, today);
    Ok(GateDecision {
        blocking: findings,
        expired,
        unchecked,
        allow_unchecked,
    })
}
