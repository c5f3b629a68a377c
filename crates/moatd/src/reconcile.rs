//! The reconcile loop: compares what was applied (targets, revisions)
//! with what runs (the runtime core's records) and acts: creates and
//! removes replicas, restarts exited ones with back-off, and rolls out a
//! new revision within maxSurge/maxUnavailable and its progress deadline.
//! All it knows is in the database and the records, so that a restarted
//! moatd carries on where the last one stopped.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::daemon::Daemon;
use crate::manifest::{IntOrPercent, Object};
use crate::runtime::Observed;
use crate::store::{now_ms, Replica, Revision, Rollout};

/// Runs forever.
pub fn run(d: &Daemon) {
    loop {
        if let Err(e) = tick(d) {
            eprintln!("moatd: reconcile: {e:#}");
        }
        d.nap(Duration::from_millis(200));
    }
}

/// Rollout parameters of a workload.
struct Shape {
    surge: u32,
    unavailable: u32,
    deadline_ms: u64,
    /// minReadySeconds.
    min_ready: Duration,
}

fn shape(d: &Daemon, owner: &str, want: u32) -> Shape {
    let dep = owner
        .strip_prefix("deployment/")
        .and_then(|n| d.store.object("Deployment", n).ok().flatten());
    match dep.map(|s| s.object) {
        Some(Object::Deployment(dep)) => Shape {
            surge: dep.max_surge.of(want, true),
            unavailable: dep.max_unavailable.of(want, false),
            deadline_ms: dep.progress_deadline_seconds * 1000,
            min_ready: Duration::from_secs(dep.min_ready_seconds),
        },
        // A Pod: replaced in place.
        _ => Shape {
            surge: IntOrPercent::Int(0).of(want, true),
            unavailable: 1,
            deadline_ms: 600_000,
            min_ready: Duration::ZERO,
        },
    }
}

pub fn tick(d: &Daemon) -> anyhow::Result<()> {
    claims(d)?;
    let observed = d.runtime.observe()?;
    for owner in d.store.owners()? {
        workload(d, &owner, &observed)?;
    }
    Ok(())
}

fn workload(d: &Daemon, owner: &str, observed: &HashMap<String, Observed>) -> anyhow::Result<()> {
    let revisions = d.store.revisions(owner)?;
    let target = d.store.target(owner)?;
    let mut replicas = d.store.replicas(Some(owner))?;
    for r in &mut replicas {
        refresh(d, r, observed.get(&r.name), &revisions)?;
    }
    let Some((rev, want)) = target else {
        // Deleted: every replica goes, then the workload.
        for r in &replicas {
            remove(d, r, &revisions);
        }
        d.store.drop_workload(owner)?;
        return Ok(());
    };
    let Some(target_rev) = revisions.iter().find(|r| r.revision == rev).cloned() else {
        return Ok(());
    };
    // Replicas of any revision with the target's template count as new
    // (`rollout undo` makes a new revision of an old template).
    let same: HashSet<u32> = revisions
        .iter()
        .filter(|r| r.hash == target_rev.hash)
        .map(|r| r.revision)
        .collect();
    let shape = shape(d, owner, want);
    let ready = |r: &Replica| r.phase == "Running" && d.probes.ready(&r.name);
    // Available: ready for minReadySeconds; what surge, unavailability
    // and completion count, as in Kubernetes.
    let available =
        |r: &Replica| r.phase == "Running" && d.probes.available(&r.name, shape.min_ready);
    let (new, old): (Vec<&Replica>, Vec<&Replica>) = replicas
        .iter()
        .filter(|r| r.phase != "Terminating")
        .partition(|r| same.contains(&r.revision));
    let now = now_ms();
    let mut rollout = match d.store.rollout(owner)? {
        Some(r) if r.revision == rev => r,
        _ => {
            let r = Rollout {
                owner: owner.to_string(),
                revision: rev,
                started: now,
                state: "Progressing".to_string(),
                message: String::new(),
            };
            d.store.put_rollout(&r)?;
            r
        }
    };
    if rollout.state == "Failed" {
        // The old replicas stay; new ones that never became ready go.
        if !old.is_empty() {
            for r in new.iter().filter(|r| !ready(r)) {
                remove(d, r, &revisions);
            }
            return Ok(());
        }
    }
    let new_ready = new.iter().filter(|r| available(r)).count() as u32;
    let old_ready = old.iter().filter(|r| available(r)).count() as u32;
    let live_new: Vec<&&Replica> = new.iter().filter(|r| r.phase != "Failed").collect();
    let total = (live_new.len() + old.len()) as u32;
    // Scale up the new revision within the surge.
    // An advisory update may have blocked this template, or decided to
    // stop its replicas.
    let block = d.store.blocked(&target_rev.hash)?;
    if let Some(b) = &block {
        if b.stop_at.is_some_and(|t| now >= t) {
            for r in replicas.iter().filter(|r| same.contains(&r.revision)) {
                if r.phase != "Terminating" {
                    remove(d, r, &revisions);
                }
            }
            return Ok(());
        }
    }
    let after = d
        .create_after
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(owner)
        .map_or(0, |a| a.0);
    if (live_new.len() as u32) < want
        && rollout.state != "Failed"
        && now >= after
        && block.is_none()
    {
        let room = (want + shape.surge).saturating_sub(total);
        let n = (want - live_new.len() as u32).min(room);
        create(d, owner, &target_rev, n)?;
    }
    // Remove old replicas while enough stay available.
    let min_available = want.saturating_sub(shape.unavailable);
    let mut removable = (old_ready + new_ready).saturating_sub(min_available);
    let mut old_sorted = old.clone();
    old_sorted.sort_by_key(|r| available(r));
    for r in old_sorted {
        if !ready(r) {
            remove(d, r, &revisions);
        } else if removable > 0 {
            remove(d, r, &revisions);
            removable -= 1;
        }
    }
    // Scale down: extra replicas of the target, unready and newest first.
    if old.is_empty() && live_new.len() as u32 > want {
        let mut extra: Vec<&&Replica> = live_new.clone();
        extra.sort_by_key(|r| (ready(r), std::cmp::Reverse(r.created)));
        for r in extra.iter().take(live_new.len() - want as usize) {
            remove(d, r, &revisions);
        }
    }
    // Progress.
    if rollout.state == "Progressing" {
        if old.is_empty() && new_ready >= want {
            rollout.state = "Complete".to_string();
            rollout.message = format!("{owner} successfully rolled out revision {rev}");
            d.store.put_rollout(&rollout)?;
            d.event("Normal", owner, "RolloutComplete", &rollout.message);
        } else if now.saturating_sub(rollout.started) > shape.deadline_ms {
            rollout.state = "Failed".to_string();
            rollout.message = format!(
                "revision {rev} did not become ready within progressDeadlineSeconds ({} s): the old replicas are kept (moat rollout undo {owner})",
                shape.deadline_ms / 1000
            );
            d.store.put_rollout(&rollout)?;
            d.event(
                "Warning",
                owner,
                "ProgressDeadlineExceeded",
                &rollout.message,
            );
        }
    }
    Ok(())
}

/// Makes the named volume of every claim that has none yet (here, not in
/// the API threads: creating one runs mkfs).
fn claims(d: &Daemon) -> anyhow::Result<()> {
    let vs = moat_runtime::volume_store::Store::new(&d.state);
    for s in d.store.objects("PersistentVolumeClaim")? {
        let Object::Claim(c) = s.object else { continue };
        let key = format!("persistentvolumeclaim/{}", c.meta.name);
        if vs.get(&c.meta.name).is_ok() {
            continue;
        }
        let mut after = d.create_after.lock().unwrap_or_else(|e| e.into_inner());
        if after.get(&key).is_some_and(|a| now_ms() < a.0) {
            continue;
        }
        // A failure is tried again after 5 s, not on every pass.
        after.insert(key, (now_ms() + 5000, 5000));
        drop(after);
        match d.create_volume(&vs, &c.meta.name, c.storage) {
            Ok(()) => d.event(
                "Normal",
                &format!("persistentvolumeclaim/{}", c.meta.name),
                "Provisioned",
                &format!("volume {} of {}", c.meta.name, c.storage_text),
            ),
            Err(e) => d.event(
                "Warning",
                &format!("persistentvolumeclaim/{}", c.meta.name),
                "ProvisioningFailed",
                &e.to_string(),
            ),
        }
    }
    Ok(())
}

/// Brings one replica's phase up to date; restarts it when it exited.
fn refresh(
    d: &Daemon,
    r: &mut Replica,
    o: Option<&Observed>,
    revisions: &[Revision],
) -> anyhow::Result<()> {
    let Some(t) = revisions
        .iter()
        .find(|v| v.revision == r.revision)
        .map(|v| &v.template)
    else {
        return Ok(());
    };
    let before = r.phase.clone();
    let now = now_ms();
    if !t.files.is_empty() && r.phase != "Terminating" && r.phase != "Creating" {
        // Files follow their ConfigMap or Secret, as with the kubelet.
        let lookup = |v: &crate::template::FileVolume| d.file_source(v);
        match crate::files::sync(&d.files, &r.name, t, &lookup) {
            Ok(true) => d.event(
                "Normal",
                &format!("pod/{}", r.name),
                "FilesUpdated",
                "ConfigMap or Secret volumes updated in place",
            ),
            Ok(false) => {}
            Err(e) => eprintln!("moatd: {}: {e}", r.name),
        }
    }
    if r.phase == "Terminating" {
        let busy = d
            .removing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&r.name);
        if !busy {
            remove(d, r, revisions);
        }
        return Ok(());
    }
    match o {
        None if r.phase == "Creating" && now.saturating_sub(r.created) < 120_000 => {}
        None => {
            // Gone from the runtime (removed behind moatd's back, or moatd
            // died before creating it): replaced by the next pass.
            d.probes.forget(&r.name);
            d.store.remove_replica(&r.name)?;
            crate::files::remove(&d.state, &d.files, &r.name);
            r.phase = "Failed".to_string();
            return Ok(());
        }
        Some(o) if o.running => {
            r.phase = "Running".to_string();
            d.probes
                .observe(&d.runtime, &r.name, t, true, d.runtime.netns(o));
        }
        Some(o) => {
            d.probes.observe(&d.runtime, &r.name, t, false, None);
            let code = o.exit_code.unwrap_or(-1);
            let restart = match t.restart_policy.as_str() {
                "Always" => true,
                "OnFailure" => code != 0,
                _ => false,
            };
            if r.phase == "Failed" || r.phase == "Creating" {
            } else if !restart {
                r.phase = if code == 0 { "Succeeded" } else { "Exited" }.to_string();
            } else if now >= r.next_restart {
                let lim = d.limits;
                r.restart_times
                    .retain(|t| now.saturating_sub(*t) < lim.interval.as_millis() as u64);
                if r.restart_times.len() >= lim.attempts {
                    r.phase = "Failed".to_string();
                    r.message = format!(
                        "restarted {} times within {} s: giving up (exit code {code})",
                        lim.attempts,
                        lim.interval.as_secs()
                    );
                    d.event(
                        "Warning",
                        &format!("pod/{}", r.name),
                        "BackOffLimitExceeded",
                        &r.message,
                    );
                } else {
                    let delay = lim
                        .delay
                        .saturating_mul(1 << r.restart_times.len().min(16))
                        .min(lim.max_delay);
                    r.restart_times.push(now);
                    r.restarts += 1;
                    r.next_restart = now + delay.as_millis() as u64;
                    match d.runtime.restart(&r.name) {
                        Ok(()) => {
                            r.phase = "Running".to_string();
                            d.event(
                                "Normal",
                                &format!("pod/{}", r.name),
                                "Restarted",
                                &format!(
                                    "exited with code {code}; restart {} (next back-off {} ms)",
                                    r.restarts,
                                    delay.as_millis()
                                ),
                            );
                        }
                        Err(e) => {
                            r.phase = "BackOff".to_string();
                            r.message = e.to_string();
                        }
                    }
                }
            } else {
                r.phase = "BackOff".to_string();
            }
        }
    }
    if r.phase != before || o.is_some() {
        d.store.put_replica(r)?;
    }
    Ok(())
}

/// Creates `n` replicas of `rev`, in parallel.
fn create(d: &Daemon, owner: &str, rev: &Revision, n: u32) -> anyhow::Result<()> {
    let base = owner.rsplit('/').next().unwrap_or(owner);
    let mut made = Vec::new();
    for _ in 0..n {
        let id = moat_runtime::ContainerId::generate();
        let suffix = &id.as_str()[..5];
        // A bare Pod's one container has the Pod's name, as in Kubernetes.
        let name = match owner.starts_with("pod/") {
            true => base.to_string(),
            false => format!("{base}-{}-{suffix}", rev.hash),
        };
        let r = Replica {
            name,
            owner: owner.to_string(),
            revision: rev.revision,
            phase: "Creating".to_string(),
            restarts: 0,
            restart_times: Vec::new(),
            next_restart: 0,
            created: now_ms(),
            message: String::new(),
        };
        // Recorded before it exists: a moatd killed in between finds the
        // row, and the container (if made) by its name.
        d.store.put_replica(&r)?;
        made.push(r);
    }
    std::thread::scope(|s| {
        for r in &mut made {
            s.spawn(|| {
                let lookup = |v: &crate::template::FileVolume| d.file_source(v);
                let tmpfs = || d.files_tmpfs();
                match crate::files::prepare(
                    &d.state,
                    &d.files,
                    &r.name,
                    &rev.template,
                    &lookup,
                    &tmpfs,
                )
                .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
                .and_then(|policy| {
                    d.runtime
                        .create(&r.name, &rev.template, policy.as_deref())
                        .map_err(|e| e.to_string())
                }) {
                    Ok(_) => {
                        r.phase = "Running".to_string();
                        d.event(
                            "Normal",
                            &format!("pod/{}", r.name),
                            "Started",
                            &format!("revision {} of {owner}", rev.revision),
                        );
                    }
                    Err(e) => {
                        r.phase = "Failed".to_string();
                        r.message = e;
                        d.event(
                            "Warning",
                            &format!("pod/{}", r.name),
                            "FailedCreate",
                            &r.message,
                        );
                    }
                }
            });
        }
    });
    let failed = made.iter().any(|r| r.phase == "Failed");
    {
        // A create that fails is retried with a back-off (1 s doubling to
        // 30 s), not on every pass.
        let mut m = d.create_after.lock().unwrap_or_else(|e| e.into_inner());
        if failed {
            let delay = m.get(owner).map_or(1000, |a| (a.1 * 2).min(30_000));
            m.insert(owner.to_string(), (now_ms() + delay, delay));
        } else {
            m.remove(owner);
        }
    }
    for r in &made {
        if r.phase == "Failed" {
            // Not kept: the next pass tries again (a fixed apply, or an
            // image imported meanwhile).
            d.store.remove_replica(&r.name)?;
            let _ = d.runtime.remove(&r.name, 0);
            crate::files::remove(&d.state, &d.files, &r.name);
        } else {
            d.store.put_replica(r)?;
        }
    }
    Ok(())
}

/// Stops and removes a replica in its own thread (a stop waits out the
/// grace period); until it is gone its row says `Terminating`, so that a
/// restarted moatd finishes the job.
fn remove(d: &Daemon, r: &Replica, revisions: &[Revision]) {
    let grace = revisions
        .iter()
        .find(|v| v.revision == r.revision)
        .map_or(10, |v| v.template.grace_seconds);
    if !d
        .removing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(r.name.clone())
    {
        return;
    }
    d.probes.forget(&r.name);
    if r.phase != "Terminating" {
        let mut t = r.clone();
        t.phase = "Terminating".to_string();
        let _ = d.store.put_replica(&t);
        d.event(
            "Normal",
            &format!("pod/{}", r.name),
            "Killing",
            &format!("stopping (grace period {grace} s)"),
        );
    }
    let (rt, name) = (d.runtime.clone(), r.name.clone());
    let done = RemoveDone {
        store_path: d.state.clone(),
        files: d.files.clone(),
        name: name.clone(),
    };
    std::thread::spawn(move || {
        let _ = rt.remove(&name, grace);
        done.finish();
    });
}

/// Forgets a removed replica: its row goes (through a connection of its
/// own, as the thread outlives the borrow of the daemon).
struct RemoveDone {
    store_path: std::path::PathBuf,
    files: std::path::PathBuf,
    name: String,
}

impl RemoveDone {
    fn finish(self) {
        crate::files::remove(&self.store_path, &self.files, &self.name);
        if let Ok(s) = crate::store::Store::open(&self.store_path) {
            let _ = s.remove_replica(&self.name);
        }
    }
}
