//! Matching an inventory against the advisory database.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::cvss::Severity;
use crate::db::{DbError, Hit, VulnDb};
use crate::ecosystem;
use crate::inventory::{Inventory, Package};
use crate::osv::{Affected, Event};
use crate::version::Scheme;

/// One vulnerable package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub summary: String,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub package: String,
    pub installed: String,
    pub ecosystem: String,
    pub kind: String,
    /// The name and version the advisory was matched on (the source package
    /// for Debian, Ubuntu and Alpine).
    pub matched_name: String,
    pub matched_version: String,
    /// Lowest fixed version above the installed one; `None`: no fix yet.
    pub fixed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    pub path: String,
}

impl Finding {
    /// Stable identity used to tell new findings from known ones.
    pub fn key(&self) -> String {
        format!(
            "{} {} {} {}",
            self.id, self.ecosystem, self.package, self.installed
        )
    }
}

fn is_zero(v: &str) -> bool {
    v == "0"
}

/// Whether `version` is inside `events` (OSV range evaluation), and the
/// fixed version that ends the affected stretch it is in.
pub fn in_range(scheme: Scheme, events: &[Event], version: &str) -> (bool, Option<String>) {
    let val = |e: &Event| -> String {
        match e {
            Event::Introduced(v) | Event::Fixed(v) | Event::LastAffected(v) | Event::Limit(v) => {
                v.clone()
            }
        }
    };
    let mut evs: Vec<&Event> = events.iter().collect();
    evs.sort_by(|a, b| {
        let (va, vb) = (val(a), val(b));
        match (is_zero(&va), is_zero(&vb)) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            _ => scheme.compare(&va, &vb),
        }
    });
    let mut affected = false;
    let mut fixed = None;
    let mut limited = false;
    for e in evs {
        match e {
            Event::Introduced(x) => {
                if is_zero(x) || scheme.compare(version, x) != Ordering::Less {
                    affected = true;
                    fixed = None;
                }
            }
            Event::Fixed(x) => {
                if scheme.compare(version, x) != Ordering::Less {
                    affected = false;
                } else if affected && fixed.is_none() {
                    fixed = Some(x.clone());
                }
            }
            Event::LastAffected(x) => {
                if scheme.compare(version, x) == Ordering::Greater {
                    affected = false;
                }
            }
            Event::Limit(x) => {
                if scheme.compare(version, x) != Ordering::Less {
                    limited = true;
                }
            }
        }
    }
    let affected = affected && !limited;
    (affected, if affected { fixed } else { None })
}

/// `Some(fixed)` if `version` is affected by this entry.
pub fn affects(scheme: Scheme, a: &Affected, version: &str) -> Option<Option<String>> {
    let mut hit = a
        .versions
        .iter()
        .any(|v| v == version || scheme.compare(v, version) == Ordering::Equal);
    let mut fixed: Option<String> = None;
    for r in &a.ranges {
        let s = if r.semver { Scheme::Semver } else { scheme };
        let (yes, f) = in_range(s, &r.events, version);
        if yes {
            hit = true;
            if let Some(f) = f {
                if fixed
                    .as_ref()
                    .is_none_or(|old| s.compare(&f, old) == Ordering::Less)
                {
                    fixed = Some(f);
                }
            }
        }
    }
    hit.then_some(fixed)
}

fn match_key(p: &Package) -> (String, String) {
    let use_source = matches!(p.kind.as_str(), "dpkg" | "apk");
    let name = match (&p.source_name, use_source) {
        (Some(s), true) => s.clone(),
        _ => p.name.clone(),
    };
    let version = match (&p.source_version, use_source) {
        (Some(s), true) => s.clone(),
        _ => p.version.clone(),
    };
    (name, version)
}

/// All findings for `inv`, sorted by severity (worst first), package, id.
pub fn match_inventory(db: &VulnDb, inv: &Inventory) -> Result<Vec<Finding>, DbError> {
    let mut cache: HashMap<(String, String), Vec<Hit>> = HashMap::new();
    let mut out = Vec::new();
    for p in &inv.packages {
        if p.ecosystem.is_empty() {
            continue;
        }
        let Some(scheme) = ecosystem::scheme_of(&p.ecosystem) else {
            continue;
        };
        let (name, version) = match_key(p);
        let name = ecosystem::normalize_name(&p.ecosystem, &name);
        let mut seen = HashSet::new();
        for key in ecosystem::lookup_keys(&p.ecosystem) {
            let ck = (key.clone(), name.clone());
            if !cache.contains_key(&ck) {
                let hits = db.lookup(&key, &name)?;
                cache.insert(ck.clone(), hits);
            }
            for h in &cache[&ck] {
                if seen.contains(&h.id) {
                    continue;
                }
                if let Some(fixed) = affects(scheme, &h.affected, &version) {
                    seen.insert(h.id.clone());
                    out.push(Finding {
                        id: h.id.clone(),
                        aliases: h.aliases.clone(),
                        summary: h.summary.clone(),
                        severity: h.severity,
                        score: h.score,
                        package: p.name.clone(),
                        installed: p.version.clone(),
                        ecosystem: p.ecosystem.clone(),
                        kind: p.kind.clone(),
                        matched_name: name.clone(),
                        matched_version: version.clone(),
                        fixed,
                        layer: p.layer.clone(),
                        path: p.path.clone(),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.package.cmp(&b.package))
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &[(&str, &str)]) -> Vec<Event> {
        s.iter()
            .map(|(k, v)| match *k {
                "i" => Event::Introduced(v.to_string()),
                "f" => Event::Fixed(v.to_string()),
                "l" => Event::LastAffected(v.to_string()),
                _ => Event::Limit(v.to_string()),
            })
            .collect()
    }

    #[test]
    fn range_events() {
        let e = ev(&[
            ("i", "1.0.0"),
            ("f", "1.5.0"),
            ("i", "2.0.0"),
            ("f", "2.3.0"),
        ]);
        assert_eq!(
            in_range(Scheme::Semver, &e, "1.2.0"),
            (true, Some("1.5.0".into()))
        );
        assert_eq!(in_range(Scheme::Semver, &e, "1.7.0"), (false, None));
        assert_eq!(
            in_range(Scheme::Semver, &e, "2.1.0"),
            (true, Some("2.3.0".into()))
        );
        assert_eq!(in_range(Scheme::Semver, &e, "0.9.0"), (false, None));
        assert_eq!(in_range(Scheme::Semver, &e, "2.3.0"), (false, None));
        let e = ev(&[("i", "0"), ("l", "1.4.2")]);
        assert_eq!(in_range(Scheme::Semver, &e, "1.4.2"), (true, None));
        assert_eq!(in_range(Scheme::Semver, &e, "1.4.3"), (false, None));
        let e = ev(&[("i", "0"), ("l", "9.9.9"), ("x", "1.2.0")]);
        assert_eq!(in_range(Scheme::Semver, &e, "1.1.0"), (true, None));
        assert_eq!(in_range(Scheme::Semver, &e, "1.3.0"), (false, None));
        let e = ev(&[("i", "0"), ("f", "1:2.38.1-5+deb12u1")]);
        assert_eq!(
            in_range(Scheme::Dpkg, &e, "2.38.1-5+deb12u3"),
            (true, Some("1:2.38.1-5+deb12u1".into()))
        );
        assert_eq!(
            in_range(Scheme::Dpkg, &e, "1:2.38.1-5+deb12u3"),
            (false, None)
        );
    }
}
