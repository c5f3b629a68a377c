//! What `get`, `describe`, `rollout status|history` and `logs` show, as
//! JSON rows with kubectl's column names (the client renders them).

use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::manifest::Object;
use crate::store::now_ms;

type Answer = (u16, Value);

fn err(e: impl std::fmt::Display) -> Answer {
    (500, json!({"error": e.to_string()}))
}

fn age(ms: u64) -> String {
    let s = now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn counts(d: &Daemon, owner: &str) -> (u32, u32, u32, u32) {
    let (rev, want) = d.store.target(owner).ok().flatten().unwrap_or((0, 0));
    let revs = d.store.revisions(owner).unwrap_or_default();
    let hash = revs
        .iter()
        .find(|r| r.revision == rev)
        .map(|r| r.hash.clone());
    let reps = d.store.replicas(Some(owner)).unwrap_or_default();
    let ready = |r: &crate::store::Replica| r.phase == "Running" && d.probes.ready(&r.name);
    let is_new = |r: &crate::store::Replica| {
        revs.iter()
            .any(|v| v.revision == r.revision && Some(&v.hash) == hash.as_ref())
    };
    let min_ready = match owner
        .strip_prefix("deployment/")
        .and_then(|n| d.store.object("Deployment", n).ok().flatten())
        .map(|s| s.object)
    {
        Some(Object::Deployment(dep)) => std::time::Duration::from_secs(dep.min_ready_seconds),
        _ => std::time::Duration::ZERO,
    };
    let n_ready = reps.iter().filter(|r| ready(r)).count() as u32;
    let available = reps
        .iter()
        .filter(|r| r.phase == "Running" && d.probes.available(&r.name, min_ready))
        .count() as u32;
    let up_to_date = reps.iter().filter(|r| is_new(r)).count() as u32;
    (n_ready, want, up_to_date, available)
}

pub fn deployments(d: &Daemon) -> Answer {
    let objs = match d.store.objects("Deployment") {
        Ok(o) => o,
        Err(e) => return err(e),
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|s| {
            let name = s.object.name();
            let owner = format!("deployment/{name}");
            let (ready, want, up, avail) = counts(d, &owner);
            let (rev, _) = d.store.target(&owner).ok().flatten().unwrap_or((0, 0));
            let tpl = d
                .store
                .revisions(&owner)
                .unwrap_or_default()
                .into_iter()
                .find(|r| r.revision == rev)
                .map(|r| r.template);
            json!({
                "NAME": name, "READY": format!("{ready}/{want}"), "UP-TO-DATE": up,
                "AVAILABLE": avail, "AGE": age(s.applied_at),
                "REVISION": rev,
                "POLICY": tpl.as_ref().map(|t| t.policy_name.clone()),
                "ISOLATION": tpl.as_ref().map(|t| t.isolation.clone()),
                "IMAGE": tpl.as_ref().map(|t| t.image_written.clone()),
            })
        })
        .collect();
    (200, json!(rows))
}

pub fn pods(d: &Daemon) -> Answer {
    let reps = match d.store.replicas(None) {
        Ok(r) => r,
        Err(e) => return err(e),
    };
    let rows: Vec<Value> = reps
        .iter()
        .map(|r| {
            let ready = r.phase == "Running" && d.probes.ready(&r.name);
            json!({
                "NAME": r.name, "READY": if ready { "1/1" } else { "0/1" },
                "STATUS": r.phase, "RESTARTS": r.restarts, "AGE": age(r.created),
                "OWNER": r.owner, "REVISION": r.revision, "MESSAGE": r.message,
            })
        })
        .collect();
    (200, json!(rows))
}

pub fn volumes(d: &Daemon) -> Answer {
    let objs = match d.store.objects("PersistentVolumeClaim") {
        Ok(o) => o,
        Err(e) => return err(e),
    };
    let rows: Vec<Value> = objs
        .iter()
        .filter_map(|s| match &s.object {
            Object::Claim(c) => Some(json!({
                "NAME": c.meta.name, "STATUS": "Bound", "VOLUME": c.meta.name,
                "CAPACITY": c.storage_text, "ACCESS MODES": c.access_modes.iter().map(|m| match m.as_str() {
                    "ReadWriteOnce" => "RWO", _ => "RWOP" }).collect::<Vec<_>>().join(","),
                "AGE": age(s.applied_at),
            })),
            _ => None,
        })
        .collect();
    (200, json!(rows))
}

/// Names, types and key counts: never the values.
pub fn secrets(d: &Daemon) -> Answer {
    let objs = match d.store.objects("Secret") {
        Ok(o) => o,
        Err(e) => return err(e),
    };
    let rows: Vec<Value> = objs
        .iter()
        .filter_map(|s| match &s.object {
            Object::Secret(x) => Some(json!({
                "NAME": x.meta.name, "TYPE": x.kind_type, "DATA": x.data.len(), "AGE": age(s.applied_at),
            })),
            _ => None,
        })
        .collect();
    (200, json!(rows))
}

pub fn describe(d: &Daemon, kind: &str, name: &str) -> Answer {
    let (k, owner) = match kind {
        "deployment" | "deployments" | "deploy" => {
            ("Deployment", Some(format!("deployment/{name}")))
        }
        "pod" | "pods" => ("Pod", Some(format!("pod/{name}"))),
        "secret" | "secrets" => ("Secret", None),
        "configmap" | "configmaps" => ("ConfigMap", None),
        "pvc" | "volume" | "volumes" | "persistentvolumeclaim" => ("PersistentVolumeClaim", None),
        other => return (404, json!({"error": format!("unknown kind {other:?}")})),
    };
    // A pod of a deployment is described from its replica row.
    if k == "Pod" {
        if let Some(r) = d
            .store
            .replicas(None)
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.name == name)
        {
            return (
                200,
                json!({"kind": "Pod", "replica": r, "ready": d.probes.ready(name)}),
            );
        }
    }
    let Ok(Some(s)) = d.store.object(k, name) else {
        return (
            404,
            json!({"error": format!("{}/{name}: not found", crate::apply::kubectl_kind(k))}),
        );
    };
    let mut obj = serde_json::to_value(&s.object).unwrap_or_default();
    if let Object::Secret(_) = s.object {
        // Values stay in the daemon.
        if let Some(data) = obj
            .pointer_mut("/Secret/data")
            .and_then(|v| v.as_object_mut())
        {
            for v in data.values_mut() {
                *v = json!(format!("<{} bytes>", v.as_str().map_or(0, str::len)));
            }
        }
    }
    let mut out = json!({"kind": k, "name": name, "appliedBy": s.applied_by, "object": obj});
    if let Some(owner) = owner {
        let (ready, want, up, _) = counts(d, &owner);
        out["replicas"] = json!({"ready": ready, "desired": want, "upToDate": up});
        out["rollout"] = json!(d.store.rollout(&owner).ok().flatten());
        out["pods"] = json!(d.store.replicas(Some(&owner)).unwrap_or_default());
        let events: Vec<_> = d
            .store
            .events(0)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.object == owner || e.object.starts_with(&format!("pod/{name}-")))
            .collect();
        out["events"] = json!(events.iter().rev().take(20).rev().collect::<Vec<_>>());
    }
    (200, out)
}

pub fn rollout_status(d: &Daemon, name: &str) -> Answer {
    let owner = format!("deployment/{name}");
    let Ok(Some((rev, want))) = d.store.target(&owner) else {
        return (
            404,
            json!({"error": format!("deployment.apps/{name}: not found")}),
        );
    };
    let (_, _, up, available) = counts(d, &owner);
    let r = d.store.rollout(&owner).ok().flatten();
    let state = r.as_ref().map_or("Progressing", |r| r.state.as_str());
    let total = d.store.replicas(Some(&owner)).unwrap_or_default().len() as u32;
    let message = match state {
        "Complete" => format!("deployment \"{name}\" successfully rolled out"),
        "Failed" => format!("error: deployment \"{name}\" exceeded its progress deadline"),
        _ if up < want => format!("Waiting for deployment \"{name}\" rollout to finish: {up} out of {want} new replicas have been updated..."),
        _ if total > want => format!("Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...", total - want),
        _ => format!("Waiting for deployment \"{name}\" rollout to finish: {available} of {want} updated replicas are available..."),
    };
    (
        200,
        json!({"state": state, "revision": rev, "message": message}),
    )
}

pub fn history(d: &Daemon, name: &str) -> Answer {
    let owner = format!("deployment/{name}");
    let revs = match d.store.revisions(&owner) {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => {
            return (
                404,
                json!({"error": format!("deployment.apps/{name}: not found")}),
            )
        }
        Err(e) => return err(e),
    };
    let rows: Vec<Value> = revs
        .iter()
        .map(|r| json!({
            "REVISION": r.revision,
            "CHANGE-CAUSE": format!("image {} policy {} isolation {}", r.template.image_written, r.template.policy_name, r.template.isolation),
        }))
        .collect();
    (200, json!(rows))
}

pub fn logs(d: &Daemon, name: &str, tail: Option<usize>) -> Answer {
    let owner = format!("deployment/{name}");
    let reps = d.store.replicas(Some(&owner)).unwrap_or_default();
    let Some(r) = reps.iter().find(|r| r.phase == "Running").or(reps.first()) else {
        return (
            404,
            json!({"error": format!("deployment.apps/{name}: no pods")}),
        );
    };
    match d.runtime.logs(&r.name, tail, 4 << 20) {
        Ok(text) => (200, json!({"pod": r.name, "text": text})),
        Err(e) => err(e),
    }
}
