//! Scan reports: a table grouped by severity, JSON, SARIF 2.1.0 and
//! CycloneDX 1.5 (SBOM with a vulnerabilities section).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{json, Value};

use crate::coverage::{self, EcosystemCoverage};
use crate::cvss::Severity;
use crate::inventory::{Inventory, OsRelease};
use crate::matcher::Finding;
use crate::purl;
use crate::util;

/// The result of one scan.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was scanned (image reference, directory, SBOM file).
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<OsRelease>,
    /// Packages found / packages checked against at least one advisory of
    /// their ecosystem / packages not checked (no advisory data for their
    /// ecosystem, or an ecosystem moat cannot order): never clean.
    pub packages: usize,
    pub checked: usize,
    pub not_checked: usize,
    /// Per ecosystem: how many advisories its packages were checked against.
    pub coverage: Vec<EcosystemCoverage>,
    pub findings: Vec<Finding>,
    /// Findings left out by `--ignore-unfixed` or ignore rules.
    pub suppressed: usize,
    /// What could not be checked, in plain words.
    pub notes: Vec<String>,
    pub advisories: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advisories_imported: Option<String>,
    #[serde(skip)]
    pub inventory: Inventory,
}

impl Report {
    /// Whether any finding is at least `sev`.
    pub fn has_at_least(&self, sev: Severity) -> bool {
        self.findings.iter().any(|f| f.severity >= sev)
    }

    /// The ecosystems whose packages were not checked.
    pub fn unchecked(&self) -> Vec<&EcosystemCoverage> {
        self.coverage.iter().filter(|c| !c.checked).collect()
    }

    /// Human table grouped by severity, worst first.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let os = self
            .os
            .as_ref()
            .map(|o| {
                if o.pretty_name.is_empty() {
                    format!("{} {}", o.id, o.version_id)
                } else {
                    o.pretty_name.clone()
                }
            })
            .unwrap_or_else(|| "unknown OS".into());
        let _ = writeln!(
            s,
            "{} ({os}): {} packages, {} checked, {} not checked",
            self.target, self.packages, self.checked, self.not_checked
        );
        let width = self
            .coverage
            .iter()
            .map(|c| c.label().len())
            .max()
            .unwrap_or(0);
        for c in &self.coverage {
            let what = match &c.reason {
                None => {
                    let keys: Vec<String> = c
                        .advisories
                        .iter()
                        .map(|k| format!("{} {}", k.key, k.advisories))
                        .collect();
                    format!(
                        "checked against {} advisories ({})",
                        c.total(),
                        keys.join(", ")
                    )
                }
                Some(why) => format!("NOT CHECKED: {why}"),
            };
            let _ = writeln!(
                s,
                "  {:<width$}  {:>5} packages  {what}",
                c.label(),
                c.packages
            );
        }
        let mut groups: BTreeMap<std::cmp::Reverse<Severity>, Vec<&Finding>> = BTreeMap::new();
        for f in &self.findings {
            groups
                .entry(std::cmp::Reverse(f.severity))
                .or_default()
                .push(f);
        }
        for (sev, fs) in &groups {
            let _ = writeln!(
                s,
                "\n{} ({})",
                sev.0.as_str().to_ascii_uppercase(),
                fs.len()
            );
            let rows: Vec<[String; 5]> = fs
                .iter()
                .map(|f| {
                    [
                        f.package.clone(),
                        f.installed.clone(),
                        f.fixed.clone().unwrap_or_else(|| "(no fix)".into()),
                        f.id.clone(),
                        f.layer
                            .as_deref()
                            .map(short_digest)
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            let head = ["PACKAGE", "INSTALLED", "FIXED", "ADVISORY", "LAYER"];
            let mut w = head.map(str::len);
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.len());
                }
            }
            let line = |cells: [&str; 5]| {
                let mut l = String::from("  ");
                for (i, c) in cells.iter().enumerate() {
                    if i == 4 {
                        l.push_str(c);
                    } else {
                        let _ = write!(l, "{c:<width$}  ", width = w[i]);
                    }
                }
                l
            };
            let _ = writeln!(s, "{}", line(head));
            for r in &rows {
                let _ = writeln!(s, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
            }
        }
        s.push('\n');
        if self.findings.is_empty() {
            if self.checked == 0 {
                let _ = writeln!(s, "Nothing could be checked: this is not a clean result.");
            } else if self.not_checked > 0 {
                let _ = writeln!(
                    s,
                    "No known vulnerabilities in the {} checked packages; {} packages were NOT checked: this is not a clean result for them.",
                    self.checked, self.not_checked
                );
            } else {
                let _ = writeln!(
                    s,
                    "No known vulnerabilities in the {} checked packages.",
                    self.checked
                );
            }
        } else {
            let count = |sev| self.findings.iter().filter(|f| f.severity == sev).count();
            let _ = writeln!(
                s,
                "{} findings: {} critical, {} high, {} medium, {} low, {} unknown",
                self.findings.len(),
                count(Severity::Critical),
                count(Severity::High),
                count(Severity::Medium),
                count(Severity::Low),
                count(Severity::Unknown)
            );
        }
        if self.suppressed > 0 {
            let _ = writeln!(
                s,
                "{} findings suppressed (--ignore-unfixed or ignore rules)",
                self.suppressed
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    pub fn json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    pub fn sarif(&self) -> Value {
        let mut rules: BTreeMap<&str, Value> = BTreeMap::new();
        let mut results = Vec::new();
        for f in &self.findings {
            rules.entry(&f.id).or_insert_with(|| {
                json!({
                    "id": f.id,
                    "shortDescription": {"text": if f.summary.is_empty() { f.id.clone() } else { f.summary.clone() }},
                    "helpUri": format!("https://osv.dev/vulnerability/{}", f.id),
                    "properties": {
                        "security-severity": format!("{:.1}", f.score.unwrap_or(match f.severity {
                            Severity::Critical => 9.0, Severity::High => 7.0, Severity::Medium => 5.0,
                            Severity::Low => 2.0, Severity::Unknown => 0.0 })),
                        "tags": ["security", "vulnerability"],
                    }
                })
            });
            let level = match f.severity {
                Severity::Critical | Severity::High => "error",
                Severity::Medium => "warning",
                _ => "note",
            };
            results.push(json!({
                "ruleId": f.id,
                "level": level,
                "message": {"text": format!("{} {} is affected by {} ({}); fixed in {}", f.package, f.installed, f.id, f.severity,
                    f.fixed.as_deref().unwrap_or("no released version"))},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": f.path.trim_start_matches('/')}}}],
                "properties": {"layer": f.layer, "aliases": f.aliases},
            }));
        }
        json!({
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": {"driver": {"name": "moat", "version": env!("CARGO_PKG_VERSION"),
                    "informationUri": "https://example.invalid/moat", "rules": rules.into_values().collect::<Vec<_>>()}},
                "results": results,
            }]
        })
    }

    pub fn cyclonedx(&self) -> Value {
        let os = self.inventory.os.as_ref();
        let mut components = Vec::new();
        let mut refs = BTreeMap::new();
        if let Some(o) = os {
            components.push(
                json!({"type": "operating-system", "name": o.id, "version": o.version_id,
                "bom-ref": format!("os:{}-{}", o.id, o.version_id)}),
            );
        }
        for p in &self.inventory.packages {
            let purl = purl::of(p, os);
            if refs.contains_key(&(p.name.clone(), p.version.clone(), p.ecosystem.clone())) {
                continue;
            }
            refs.insert(
                (p.name.clone(), p.version.clone(), p.ecosystem.clone()),
                purl.clone(),
            );
            let mut props = vec![
                json!({"name": "moat:kind", "value": p.kind}),
                json!({"name": "moat:path", "value": p.path}),
            ];
            if let Some(l) = &p.layer {
                props.push(json!({"name": "moat:layer", "value": l}));
            }
            if let Some(s) = &p.source_name {
                props.push(json!({"name": "moat:source_name", "value": s}));
            }
            if let Some(s) = &p.source_version {
                props.push(json!({"name": "moat:source_version", "value": s}));
            }
            components.push(
                json!({"type": "library", "bom-ref": purl, "name": p.name, "version": p.version,
                "purl": purl, "properties": props}),
            );
        }
        let mut vulns: BTreeMap<&str, Value> = BTreeMap::new();
        for f in &self.findings {
            let r = refs
                .get(&(f.package.clone(), f.installed.clone(), f.ecosystem.clone()))
                .cloned()
                .unwrap_or_default();
            let v = vulns.entry(&f.id).or_insert_with(|| {
                let mut rating = json!({"severity": f.severity.as_str(), "source": {"name": "OSV"}});
                if let Some(score) = f.score {
                    rating["score"] = json!(score);
                    rating["method"] = json!("CVSSv31");
                }
                json!({
                    "bom-ref": format!("vuln:{}", f.id),
                    "id": f.id,
                    "source": {"name": "OSV", "url": format!("https://osv.dev/vulnerability/{}", f.id)},
                    "references": f.aliases.iter().map(|a| json!({"id": a, "source": {"name": "alias"}})).collect::<Vec<_>>(),
                    "ratings": [rating],
                    "description": f.summary,
                    "affects": [],
                })
            });
            let mut affect =
                json!({"ref": r, "versions": [{"version": f.installed, "status": "affected"}]});
            if let Some(fx) = &f.fixed {
                affect["versions"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"version": fx, "status": "unaffected"}));
                v["recommendation"] = json!(format!("Upgrade {} to {fx} or later", f.package));
            }
            v["affects"].as_array_mut().unwrap().push(affect);
        }
        json!({
            "bomFormat": "CycloneDX",
            "specVersion": "1.5",
            "version": 1,
            "metadata": {
                "timestamp": moat_plan::time::now_rfc3339(),
                "tools": {"components": [{"type": "application", "name": "moat", "version": env!("CARGO_PKG_VERSION")}]},
                "component": {"type": "container", "name": self.target, "bom-ref": "target"},
                "properties": self.notes.iter().map(|n| json!({"name": "moat:note", "value": n})).collect::<Vec<_>>(),
            },
            "components": components,
            "vulnerabilities": vulns.into_values().collect::<Vec<_>>(),
        })
    }
}

fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

impl Report {
    /// Match `inventory` against `db` and build the report. Without a
    /// database (`None`, for an SBOM alone) nothing is checked.
    pub fn build(
        target: &str,
        inventory: Inventory,
        db: Option<&crate::db::VulnDb>,
        ignore_unfixed: bool,
        ignores: &[crate::store::IgnoreRule],
    ) -> Result<Report, crate::db::DbError> {
        let counts = db.map(|d| d.ecosystem_counts()).transpose()?;
        let coverage = coverage::of(&inventory, counts.as_ref());
        let checked: usize = coverage
            .iter()
            .filter(|c| c.checked)
            .map(|c| c.packages)
            .sum();
        let mut findings = match db {
            Some(db) => crate::matcher::match_inventory(db, &inventory)?,
            None => Vec::new(),
        };
        let mut notes = inventory.notes.clone();
        if db.is_none() {
            notes.push(
                "no advisory database: packages are listed, nothing was checked for vulnerabilities"
                    .to_string(),
            );
        }
        let before = findings.len();
        if ignore_unfixed {
            findings.retain(|f| f.fixed.is_some());
        }
        crate::store::apply_ignores(&mut findings, ignores, util::today());
        Ok(Report {
            target: target.to_string(),
            os: inventory.os.clone(),
            packages: inventory.packages.len(),
            checked,
            not_checked: inventory.packages.len() - checked,
            coverage,
            suppressed: before - findings.len(),
            findings,
            notes,
            advisories: db.map(|d| d.count()).transpose()?.unwrap_or(0),
            advisories_imported: db.map(|d| d.last_import()).transpose()?.flatten(),
            inventory,
        })
    }
}
