//! Changes of desired state: apply, delete and `rollout undo`. Each is
//! admitted for the requester, audited, and only then stored.

use moat_policy::rbac::Principal;

use crate::admission::{self, Context};
use crate::daemon::Daemon;
use crate::manifest::Object;
use crate::store::{now_ms, Revision};

/// What an apply printed, kubectl's way.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub notices: Vec<String>,
}

fn stored_objects(d: &Daemon) -> Vec<Object> {
    ["Policy", "Secret", "ConfigMap"]
        .iter()
        .flat_map(|k| d.store.objects(k).unwrap_or_default())
        .map(|s| s.object)
        .collect()
}

/// Who applied each stored object of `kind`, by name.
fn owners(d: &Daemon, kind: &str) -> std::collections::BTreeMap<String, String> {
    d.store
        .objects(kind)
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.object.name().to_string(), s.applied_by))
        .collect()
}

/// A Secret or ConfigMap is changed or deleted only by whoever applied
/// it, or root: its data reaches that user's replicas (files follow a
/// changed ConfigMap at once).
fn owned(d: &Daemon, who: &Principal, kind: &str, name: &str) -> Result<(), String> {
    if who.uid == 0 || !matches!(kind, "Secret" | "ConfigMap") {
        return Ok(());
    }
    match owners(d, kind).get(name) {
        Some(owner) if *owner != who.name => Err(format!(
            "{kind} {name}: applied by {owner}; only {} may change or delete it",
            if owner == "root" {
                "root".to_string()
            } else {
                format!("{owner} or root")
            }
        )),
        _ => Ok(()),
    }
}

pub fn apply(d: &Daemon, who: &Principal, objects: &[Object]) -> Result<Outcome, Vec<String>> {
    let stored = stored_objects(d);
    let secret_owners = owners(d, "Secret");
    let cx = Context {
        state: &d.state,
        rbac_path: &d.rbac,
        stored: &stored,
        secret_owners: &secret_owners,
    };
    let not_owned: Vec<String> = objects
        .iter()
        .filter_map(|o| owned(d, who, o.kind(), o.name()).err())
        .collect();
    let admitted = match admission::admit(&cx, objects, who) {
        Ok(a) if not_owned.is_empty() => a,
        Ok(_) => {
            for o in objects {
                d.audit(
                    who.uid,
                    &who.name,
                    "apply",
                    &o.kubectl_name(),
                    "deny",
                    &not_owned,
                );
            }
            return Err(not_owned);
        }
        Err(reasons) => {
            for o in objects {
                d.audit(
                    who.uid,
                    &who.name,
                    "apply",
                    &o.kubectl_name(),
                    "deny",
                    &reasons,
                );
            }
            return Err(reasons);
        }
    };
    // Pods are immutable, as in Kubernetes.
    for w in &admitted.workloads {
        if let Some(name) = w.owner.strip_prefix("pod/") {
            let revs = d.store.revisions(&w.owner).unwrap_or_default();
            if revs.last().is_some_and(|r| r.hash != w.template.hash()) {
                let e = vec![format!("Pod {name}: spec: a Pod cannot be changed; delete it first (moat delete pod/{name}), or use a Deployment")];
                d.audit(who.uid, &who.name, "apply", &w.display, "deny", &e);
                return Err(e);
            }
        }
    }
    let err = |e: crate::store::StoreError| vec![format!("{e}")];
    let mut out = Outcome {
        notices: admitted.notices.clone(),
        ..Default::default()
    };
    for (name, text) in &admitted.policies {
        let path = admission::policy_file(&d.state, name, text);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&path, text)
            .map_err(|e| vec![format!("writing {}: {e}", path.display())])?;
    }
    for o in objects {
        let before = d.store.object(o.kind(), o.name()).map_err(err)?;
        d.store.put_object(o, &who.name).map_err(err)?;
        let verb = match before {
            None => "created",
            Some(b) if b.object == *o => "unchanged",
            Some(_) => "configured",
        };
        out.lines.push(format!("{} {verb}", o.kubectl_name()));
        d.audit(who.uid, &who.name, "apply", &o.kubectl_name(), "allow", &[]);
    }
    for w in &admitted.workloads {
        let rev = set_template(d, &w.owner, &w.template, w.replicas).map_err(err)?;
        let limit = objects.iter().find_map(|o| match o {
            Object::Deployment(dep) if w.owner == format!("deployment/{}", dep.meta.name) => {
                Some(dep.revision_history_limit)
            }
            _ => None,
        });
        if let Some(keep) = limit {
            d.store.prune_revisions(&w.owner, rev, keep).map_err(err)?;
        }
    }
    d.kick();
    Ok(out)
}

/// Makes `template` the target of `owner`: the same revision when it is
/// unchanged (a scale), else a new one.
fn set_template(
    d: &Daemon,
    owner: &str,
    template: &crate::template::Template,
    replicas: u32,
) -> Result<u32, crate::store::StoreError> {
    let revs = d.store.revisions(owner)?;
    let hash = template.hash();
    let current = d.store.target(owner)?.map(|t| t.0);
    let rev = match revs.iter().find(|r| Some(r.revision) == current) {
        Some(r) if r.hash == hash => r.revision,
        _ => {
            let n = revs.last().map_or(1, |r| r.revision + 1);
            d.store.add_revision(&Revision {
                owner: owner.to_string(),
                revision: n,
                hash,
                template: template.clone(),
                created: now_ms(),
            })?;
            n
        }
    };
    d.store.set_target(owner, rev, replicas)?;
    Ok(rev)
}

/// May `who` act on `owner` at all: root, or anyone the RBAC file allows
/// its current policy.
fn may_change(d: &Daemon, who: &Principal, owner: &str) -> Result<(), Vec<String>> {
    if who.uid == 0 {
        return Ok(());
    }
    let Some((rev, _)) = d.store.target(owner).ok().flatten() else {
        return Ok(());
    };
    let revs = d.store.revisions(owner).unwrap_or_default();
    let Some(r) = revs.iter().find(|r| r.revision == rev) else {
        return Ok(());
    };
    let policy = match moat_policy::Policy::resolve(&r.template.policy) {
        Ok(p) => p,
        Err(e) => return Err(vec![e.to_string()]),
    };
    let rbac = moat_policy::rbac::Rbac::load(&d.rbac).ok();
    let dec = moat_policy::rbac::authorize(rbac.as_ref(), &d.rbac, who, &policy);
    if dec.allowed {
        Ok(())
    } else {
        Err(dec.reasons)
    }
}

pub fn delete(
    d: &Daemon,
    who: &Principal,
    objects: &[(String, String)],
) -> Result<Outcome, Vec<String>> {
    let mut out = Outcome::default();
    for (kind, name) in objects {
        let owner = match kind.as_str() {
            "Deployment" => Some(format!("deployment/{name}")),
            "Pod" => Some(format!("pod/{name}")),
            _ => None,
        };
        let display = format!("{}/{name}", kubectl_kind(kind));
        if let Err(e) = owned(d, who, kind, name) {
            d.audit(
                who.uid,
                &who.name,
                "delete",
                &display,
                "deny",
                std::slice::from_ref(&e),
            );
            return Err(vec![e]);
        }
        if let Some(o) = &owner {
            if let Err(e) = may_change(d, who, o) {
                d.audit(who.uid, &who.name, "delete", &display, "deny", &e);
                return Err(e
                    .into_iter()
                    .map(|e| format!("{kind} {name}: {e}"))
                    .collect());
            }
        }
        let existed = d
            .store
            .delete_object(kind, name)
            .map_err(|e| vec![e.to_string()])?;
        if let Some(o) = &owner {
            let _ = d.store.set_target_deleted(o);
        }
        d.audit(who.uid, &who.name, "delete", &display, "allow", &[]);
        if existed {
            out.lines.push(format!("{display} deleted"));
        } else {
            return Err(vec![format!("{display}: not found")]);
        }
    }
    d.kick();
    Ok(out)
}

pub fn kubectl_kind(kind: &str) -> &'static str {
    match kind {
        "Deployment" => "deployment.apps",
        "Pod" => "pod",
        "Secret" => "secret",
        "ConfigMap" => "configmap",
        "PersistentVolumeClaim" => "persistentvolumeclaim",
        _ => "policy.moat.dev",
    }
}

/// `rollout undo deployment/NAME [--to-revision N]`.
pub fn undo(
    d: &Daemon,
    who: &Principal,
    name: &str,
    to: Option<u32>,
) -> Result<Outcome, Vec<String>> {
    let owner = format!("deployment/{name}");
    let display = format!("deployment.apps/{name}");
    let Some((current, replicas)) = d.store.target(&owner).map_err(|e| vec![e.to_string()])? else {
        return Err(vec![format!("{display}: not found")]);
    };
    let revs = d.store.revisions(&owner).map_err(|e| vec![e.to_string()])?;
    let cur_hash = revs
        .iter()
        .find(|r| r.revision == current)
        .map(|r| r.hash.clone());
    let back = match to {
        Some(n) => revs.iter().find(|r| r.revision == n),
        None => revs
            .iter()
            .rev()
            .find(|r| r.revision < current && Some(&r.hash) != cur_hash.as_ref()),
    };
    let Some(back) = back.cloned() else {
        return Err(vec![format!(
            "{display}: no revision to go back to (moat rollout history {display})"
        )]);
    };
    // Going back is a deployment like any other: the old template's
    // policy must be granted to whoever asks now.
    let policy =
        moat_policy::Policy::resolve(&back.template.policy).map_err(|e| vec![e.to_string()])?;
    let rbac = moat_policy::rbac::Rbac::load(&d.rbac).ok();
    let dec = moat_policy::rbac::authorize(rbac.as_ref(), &d.rbac, who, &policy);
    if !dec.allowed {
        d.audit(
            who.uid,
            &who.name,
            "rollout-undo",
            &display,
            "deny",
            &dec.reasons,
        );
        return Err(dec.reasons);
    }
    let rev = set_template(d, &owner, &back.template, replicas).map_err(|e| vec![e.to_string()])?;
    d.audit(
        who.uid,
        &who.name,
        "rollout-undo",
        &display,
        "allow",
        &[format!("to revision {} as revision {rev}", back.revision)],
    );
    d.kick();
    Ok(Outcome {
        lines: vec![format!("{display} rolled back")],
        notices: Vec::new(),
    })
}
