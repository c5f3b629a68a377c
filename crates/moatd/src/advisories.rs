//! The security loop: when an advisory update (`moat vulndb import` or
//! `update`) finds something new in a stored image, the scanner appends
//! an alert to its log (`moat_scan::store::alerts_log`). moatd follows
//! that log and applies, to every workload whose current template runs
//! the image, what its policy's `vulnerabilities.on_new_advisory` says:
//! `alert` (an event and an audit entry), `block` (no new replicas of
//! the template) or `stop` (blocked, and the running replicas stopped
//! after `stop_after` seconds, 60 by default).

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use moat_policy::model::{OnNewAdvisory, Severity};
use serde_json::Value;

use crate::daemon::Daemon;
use crate::store::{now_ms, Block};

const OFFSET_KEY: &str = "alerts_offset";

/// Runs forever.
pub fn run(d: &Daemon) {
    loop {
        if let Err(e) = tick(d) {
            eprintln!("moatd: advisories: {e:#}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn tick(d: &Daemon) -> anyhow::Result<()> {
    let path = moat_scan::store::alerts_log(&d.state);
    let len = std::fs::metadata(&path).map_or(0, |m| m.len());
    let Some(offset) = d
        .store
        .get_kv(OFFSET_KEY)?
        .and_then(|o| o.parse::<u64>().ok())
    else {
        // First start: what was logged before moatd ran is not news.
        d.store.set_kv(OFFSET_KEY, &len.to_string())?;
        return Ok(());
    };
    // A shorter log was replaced: read it from the start.
    let offset = if len < offset { 0 } else { offset };
    if len == offset {
        return Ok(());
    }
    let mut f = std::fs::File::open(&path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut text = String::new();
    f.take(len - offset).read_to_string(&mut text)?;
    // Only whole lines; a line being written is read next time.
    let used = text.rfind('\n').map_or(0, |i| i + 1);
    for line in text[..used].lines() {
        if let Ok(alert) = serde_json::from_str::<Value>(line) {
            act(d, &alert)?;
        }
    }
    d.store
        .set_kv(OFFSET_KEY, &(offset + used as u64).to_string())?;
    d.kick();
    Ok(())
}

fn severity_rank(s: &str) -> u8 {
    match s {
        "low" => 1,
        "medium" => 2,
        "high" => 3,
        "critical" => 4,
        _ => 0,
    }
}

fn policy_rank(s: Severity) -> u8 {
    match s {
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

fn act(d: &Daemon, alert: &Value) -> anyhow::Result<()> {
    let image_id = alert["image_id"].as_str().unwrap_or("");
    let store = moat_image::Store::open(&d.state)?;
    let today = moat_scan::util::today();
    for owner in d.store.owners()? {
        let Some((rev, _)) = d.store.target(&owner)? else {
            continue;
        };
        let Some(r) = d
            .store
            .revisions(&owner)?
            .into_iter()
            .find(|r| r.revision == rev)
        else {
            continue;
        };
        let t = &r.template;
        let Ok(img) = store.resolve(&t.image) else {
            continue;
        };
        if img.config_digest != image_id && img.manifest_digest != image_id {
            continue;
        }
        let widest = moat_policy::auto::ImageSyscalls::widest(&t.image_written);
        let v = match moat_policy::Policy::resolve_for_image(&t.policy, &widest) {
            Ok(p) => p.spec.vulnerabilities,
            Err(_) => Default::default(),
        };
        // What the policy acts on: at or above fail_on, not ignored.
        let ids: Vec<String> = alert["new_findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| {
                v.fail_on.is_none_or(|min| {
                    severity_rank(f["severity"].as_str().unwrap_or("")) >= policy_rank(min)
                })
            })
            .filter_map(|f| f["id"].as_str().map(str::to_string))
            .filter(|id| {
                !v.ignore.iter().any(|i| {
                    i.id == *id
                        && moat_scan::store::IgnoreRule {
                            id: i.id.clone(),
                            expires: Some(i.expires.clone()),
                            reason: None,
                        }
                        .active(today)
                })
            })
            .collect();
        if ids.is_empty() {
            continue;
        }
        let action = v.on_new_advisory;
        let word = match action {
            OnNewAdvisory::Alert => "alert",
            OnNewAdvisory::Block => "block",
            OnNewAdvisory::Stop => "stop",
        };
        let reason = format!(
            "image {} of revision {rev}: {} new advisor{} ({}); policy {} says {word}",
            t.image_written,
            ids.len(),
            if ids.len() == 1 { "y" } else { "ies" },
            ids.join(", "),
            t.policy_name
        );
        d.event("Warning", &owner, "VulnerabilityAlert", &reason);
        let stop_after = v.stop_after.unwrap_or(60);
        match action {
            OnNewAdvisory::Alert => {}
            OnNewAdvisory::Block | OnNewAdvisory::Stop => {
                let stop = action == OnNewAdvisory::Stop;
                d.store.block(&Block {
                    hash: r.hash.clone(),
                    owner: owner.clone(),
                    action: word.to_string(),
                    stop_at: stop.then(|| now_ms() + stop_after * 1000),
                    reason: reason.clone(),
                })?;
                let what = if stop {
                    format!("no new replicas of revision {rev}; its replicas stop in {stop_after} s (apply a fixed image, or moat rollout undo)")
                } else {
                    format!("no new replicas of revision {rev} (apply a fixed image, or moat rollout undo)")
                };
                d.event(
                    "Warning",
                    &owner,
                    if stop {
                        "VulnerabilityStop"
                    } else {
                        "VulnerabilityBlock"
                    },
                    &what,
                );
            }
        }
    }
    Ok(())
}
