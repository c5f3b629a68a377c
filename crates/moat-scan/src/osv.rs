//! OSV records (https://ossf.github.io/osv-schema/) parsed into what the
//! matcher needs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cvss::{base_score_v3, Severity};
use crate::ecosystem;

#[derive(Debug, Deserialize)]
struct RawRecord {
    id: String,
    #[serde(default)]
    modified: String,
    #[serde(default)]
    withdrawn: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    details: Option<String>,
    #[serde(default)]
    severity: Vec<RawSeverity>,
    #[serde(default)]
    affected: Vec<RawAffected>,
    #[serde(default)]
    database_specific: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RawSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Debug, Deserialize)]
struct RawAffected {
    #[serde(default)]
    package: Option<RawPackage>,
    #[serde(default)]
    severity: Vec<RawSeverity>,
    #[serde(default)]
    ranges: Vec<RawRange>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    ecosystem_specific: Option<Value>,
    #[serde(default)]
    database_specific: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RawPackage {
    ecosystem: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct RawRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<serde_json::Map<String, Value>>,
}

/// One range event (OSV `ranges[].events[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Introduced(String),
    Fixed(String),
    LastAffected(String),
    Limit(String),
}

/// A range to evaluate: `semver` ranges use semver order whatever the
/// ecosystem, `ecosystem` ranges the ecosystem's own order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub semver: bool,
    pub events: Vec<Event>,
}

/// What an advisory says about one package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Affected {
    #[serde(skip)]
    pub ecosystem: String,
    #[serde(skip)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Range>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

/// A parsed advisory.
#[derive(Debug, Clone, PartialEq)]
pub struct Advisory {
    pub id: String,
    pub modified: String,
    pub withdrawn: bool,
    pub aliases: Vec<String>,
    pub summary: String,
    pub severity: Severity,
    pub score: Option<f64>,
    pub vector: Option<String>,
    pub affected: Vec<Affected>,
    /// `GIT` ranges, which cannot be evaluated against package versions.
    pub git_ranges: u64,
    /// Affected entries in ecosystems moat cannot order.
    pub unsupported: u64,
}

fn label_in(v: &Option<Value>) -> Option<Severity> {
    let v = v.as_ref()?;
    ["severity", "urgency", "priority"]
        .iter()
        .filter_map(|k| v.get(k)?.as_str())
        .find_map(Severity::from_label)
        .filter(|s| *s != Severity::Unknown)
}

/// Parse one OSV JSON record.
pub fn parse(bytes: &[u8]) -> Result<Advisory, serde_json::Error> {
    let raw: RawRecord = serde_json::from_slice(bytes)?;
    let mut best: Option<(f64, String)> = None;
    let mut label = None;
    let all_sev = raw
        .severity
        .iter()
        .chain(raw.affected.iter().flat_map(|a| a.severity.iter()));
    for s in all_sev {
        if s.kind.starts_with("CVSS_V3") {
            if let Some(score) = base_score_v3(&s.score) {
                if best.as_ref().is_none_or(|(b, _)| score > *b) {
                    best = Some((score, s.score.clone()));
                }
            }
        } else if let Some(l) = Severity::from_label(&s.score) {
            label = label.max(Some(l));
        }
    }
    let label = label
        .or_else(|| label_in(&raw.database_specific))
        .or_else(|| {
            raw.affected
                .iter()
                .filter_map(|a| {
                    label_in(&a.ecosystem_specific).or_else(|| label_in(&a.database_specific))
                })
                .max()
        });
    let (severity, score, vector) = match best {
        Some((score, v)) => (Severity::from_score(score), Some(score), Some(v)),
        None => (label.unwrap_or(Severity::Unknown), None, None),
    };
    let mut git_ranges = 0;
    let mut unsupported = 0;
    let mut affected = Vec::new();
    for a in raw.affected {
        let Some(pkg) = a.package else { continue };
        if ecosystem::scheme_of(&pkg.ecosystem).is_none() {
            unsupported += 1;
            continue;
        }
        let mut ranges = Vec::new();
        for r in a.ranges {
            let semver = match r.kind.as_str() {
                "SEMVER" => true,
                "ECOSYSTEM" => false,
                _ => {
                    git_ranges += 1;
                    continue;
                }
            };
            let events = r
                .events
                .iter()
                .flat_map(|e| e.iter())
                .filter_map(|(k, v)| {
                    let v = v.as_str()?.to_string();
                    Some(match k.as_str() {
                        "introduced" => Event::Introduced(v),
                        "fixed" => Event::Fixed(v),
                        "last_affected" => Event::LastAffected(v),
                        "limit" => Event::Limit(v),
                        _ => return None,
                    })
                })
                .collect();
            ranges.push(Range { semver, events });
        }
        if ranges.is_empty() && a.versions.is_empty() {
            continue;
        }
        let eco = ecosystem::normalize(&pkg.ecosystem);
        affected.push(Affected {
            name: ecosystem::normalize_name(&eco, &pkg.name),
            ecosystem: eco,
            ranges,
            versions: a.versions,
        });
    }
    let summary = raw
        .summary
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            raw.details
                .map(|d| d.lines().next().unwrap_or("").chars().take(200).collect())
        })
        .unwrap_or_default();
    Ok(Advisory {
        id: raw.id,
        modified: raw.modified,
        withdrawn: raw.withdrawn.is_some_and(|w| !w.is_empty()),
        aliases: raw.aliases,
        summary,
        severity,
        score,
        vector,
        affected,
        git_ranges,
        unsupported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_debian_record_with_cvss_and_git_range() {
        let rec = br#"{
          "id": "DSA-5678-1", "modified": "2024-05-01T00:00:00Z",
          "aliases": ["CVE-2024-0001"],
          "summary": "glibc security update",
          "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"}],
          "affected": [
            {"package": {"ecosystem": "Debian:12", "name": "glibc"},
             "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.36-9+deb12u7"}]},
                        {"type": "GIT", "repo": "https://x", "events": [{"introduced": "abc"}]}]},
            {"package": {"ecosystem": "Hackage", "name": "x"}, "versions": ["1"]}
          ]}"#;
        let a = parse(rec).unwrap();
        assert_eq!(a.severity, Severity::High);
        assert_eq!(a.score, Some(7.8));
        assert_eq!(a.git_ranges, 1);
        assert_eq!(a.unsupported, 1);
        assert_eq!(a.affected.len(), 1);
        assert_eq!(
            a.affected[0].ranges[0].events,
            [
                Event::Introduced("0".into()),
                Event::Fixed("2.36-9+deb12u7".into())
            ]
        );
    }

    #[test]
    fn severity_from_record_fields_when_no_vector() {
        let rec = br#"{"id": "GHSA-x", "database_specific": {"severity": "MODERATE"},
          "affected": [{"package": {"ecosystem": "npm", "name": "lodash"}, "versions": ["4.17.20"]}]}"#;
        assert_eq!(parse(rec).unwrap().severity, Severity::Medium);
        let rec = br#"{"id": "UBUNTU-CVE-1", "severity": [{"type": "Ubuntu", "score": "high"}],
          "affected": [{"package": {"ecosystem": "Ubuntu:22.04:LTS", "name": "openssl"}, "versions": ["3.0.2-0ubuntu1"]}]}"#;
        let a = parse(rec).unwrap();
        assert_eq!(a.severity, Severity::High);
        assert_eq!(a.affected[0].ecosystem, "Ubuntu:22.04");
    }
}
