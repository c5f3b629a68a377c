//! What a scan was checked against: for each ecosystem of the inventory,
//! how many advisories the database holds under each key its packages are
//! looked up by (`Debian:12` and `Debian`). Packages of an ecosystem with no
//! advisory data, or one moat cannot order, are not checked: never clean.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ecosystem;
use crate::inventory::Inventory;

/// Advisories stored under one lookup key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyCount {
    pub key: String,
    pub advisories: u64,
}

/// One ecosystem of an inventory and what its packages were checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EcosystemCoverage {
    /// The OSV ecosystem of the packages (`Debian:12`, `npm`); empty when no
    /// advisory source covers them.
    pub ecosystem: String,
    pub packages: usize,
    /// Advisories per lookup key (the release, then the release-less base).
    pub advisories: Vec<KeyCount>,
    /// Whether the packages were checked against at least one advisory.
    pub checked: bool,
    /// Why not, in plain words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl EcosystemCoverage {
    /// Advisories over all lookup keys.
    pub fn total(&self) -> u64 {
        self.advisories.iter().map(|k| k.advisories).sum()
    }

    /// How the ecosystem is named in messages.
    pub fn label(&self) -> &str {
        if self.ecosystem.is_empty() {
            "(no ecosystem)"
        } else {
            &self.ecosystem
        }
    }
}

/// The coverage of `inv` by a database holding `counts` advisories per
/// ecosystem key ([`crate::db::VulnDb::ecosystem_counts`]); `None`: no
/// database at all.
pub fn of(inv: &Inventory, counts: Option<&BTreeMap<String, u64>>) -> Vec<EcosystemCoverage> {
    let mut packages: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &inv.packages {
        *packages.entry(p.ecosystem.as_str()).or_default() += 1;
    }
    packages
        .into_iter()
        .map(|(eco, n)| {
            let keys = if eco.is_empty() {
                Vec::new()
            } else {
                ecosystem::lookup_keys(eco)
            };
            let advisories: Vec<KeyCount> = keys
                .iter()
                .map(|k| KeyCount {
                    key: k.clone(),
                    advisories: counts.and_then(|c| c.get(k)).copied().unwrap_or(0),
                })
                .collect();
            let total: u64 = advisories.iter().map(|k| k.advisories).sum();
            let reason = if eco.is_empty() {
                Some("no advisory source covers these packages (an OS or package kind moat does not know)".to_string())
            } else if ecosystem::scheme_of(eco).is_none() {
                Some(format!("moat cannot order {eco} versions"))
            } else if counts.is_none() {
                Some("no advisory database: run `moat vulndb import PATH` with OSV data".to_string())
            } else if total == 0 {
                Some(format!(
                    "the advisory database has no {} advisories: import OSV data for {}",
                    keys.join(" or "),
                    keys.last().map(String::as_str).unwrap_or(eco)
                ))
            } else {
                None
            };
            EcosystemCoverage {
                ecosystem: eco.to_string(),
                packages: n,
                advisories,
                checked: reason.is_none(),
                reason,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Package;

    fn pkg(eco: &str) -> Package {
        Package {
            name: "p".into(),
            version: "1".into(),
            kind: "dpkg".into(),
            ecosystem: eco.into(),
            source_name: None,
            source_version: None,
            layer: None,
            path: "/x".into(),
        }
    }

    #[test]
    fn per_ecosystem_and_release() {
        let inv = Inventory {
            os: None,
            packages: vec![pkg("Debian:12"), pkg("Debian:12"), pkg("npm"), pkg("")],
            notes: Vec::new(),
        };
        let counts: BTreeMap<String, u64> =
            [("Alpine:v3.18".to_string(), 40), ("npm".to_string(), 3)].into();
        let c = of(&inv, Some(&counts));
        assert_eq!(c.len(), 3);
        let deb = c.iter().find(|e| e.ecosystem == "Debian:12").unwrap();
        assert_eq!(deb.packages, 2);
        assert!(!deb.checked);
        assert_eq!(
            deb.reason.as_deref(),
            Some("the advisory database has no Debian:12 or Debian advisories: import OSV data for Debian")
        );
        assert_eq!(deb.advisories.len(), 2);
        let npm = c.iter().find(|e| e.ecosystem == "npm").unwrap();
        assert!(npm.checked && npm.total() == 3);
        assert!(!c.iter().find(|e| e.ecosystem.is_empty()).unwrap().checked);
        assert!(of(&inv, None).iter().all(|e| !e.checked));
    }
}
