//! What a pod refers to: Secrets and ConfigMaps, as environment or as
//! file volumes. A Secret is for whoever applied it and root.

use moat_policy::rbac::Principal;

use super::Input;
use crate::manifest::{Data, EnvSource, Object, VolumeSource};
use crate::template::FileVolume;

/// A Secret's data is for whoever applied it and root: refuses anyone
/// else, naming the owner.
fn may_read_secret(input: &Input, who: &Principal, name: &str) -> Result<(), String> {
    match input.owners.get(name) {
        Some(owner) if who.uid != 0 && *owner != who.name => Err(format!(
            "Secret {name:?} was applied by {owner}: only {} may use it",
            if owner == "root" {
                "root".to_string()
            } else {
                format!("{owner} or root")
            }
        )),
        _ => Ok(()),
    }
}

/// The ConfigMap and Secret volumes the container mounts, checked: the
/// object exists and, for a Secret, the requester may read it.
pub(super) fn files(input: &Input, who: &Principal) -> Result<Vec<FileVolume>, Vec<String>> {
    let (pod, path) = (input.pod, input.path);
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for m in &pod.container.volume_mounts {
        let Some((j, v)) = pod
            .volumes
            .iter()
            .enumerate()
            .find(|(_, v)| v.name == m.name)
        else {
            continue;
        };
        let (kind, source, field, projection) = match &v.source {
            VolumeSource::Claim { .. } | VolumeSource::EmptyDir { .. } => continue,
            VolumeSource::ConfigMap { name, projection } => {
                ("ConfigMap", name, "configMap", projection)
            }
            VolumeSource::Secret {
                secret_name,
                projection,
            } => ("Secret", secret_name, "secret", projection),
        };
        let vp = format!("{path}.volumes[{j}].{field}");
        let np = format!(
            "{vp}.{}",
            if kind == "Secret" {
                "secretName"
            } else {
                "name"
            }
        );
        let found = input.all.iter().find_map(|o| match o {
            Object::ConfigMap(d) if kind == "ConfigMap" && d.meta.name == *source => Some(d),
            Object::Secret(d) if kind == "Secret" && d.meta.name == *source => Some(d),
            _ => None,
        });
        match found {
            // An optional object may come later: an empty volume until then.
            None if projection.optional => {}
            None => {
                errs.push(format!(
                    "{np}: no {kind} named {source:?} in this apply or applied before"
                ));
                continue;
            }
            Some(d) => {
                if kind == "Secret" {
                    if let Err(e) = may_read_secret(input, who, source) {
                        errs.push(format!("{np}: {e}"));
                        continue;
                    }
                }
                if !projection.optional {
                    for (i, it) in projection.items.iter().enumerate() {
                        if !d.data.contains_key(&it.key) {
                            errs.push(format!(
                                "{vp}.items[{i}].key: {kind} {source:?} has no key {:?} (add it, or mark the volume optional: true to leave it out)",
                                it.key
                            ));
                        }
                    }
                }
            }
        }
        out.push(FileVolume {
            volume: v.name.clone(),
            kind: kind.to_string(),
            source: source.clone(),
            mount_path: m.mount_path.clone(),
            projection: projection.clone(),
            reader: (kind == "Secret" && who.uid != 0).then(|| who.name.clone()),
        });
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// The environment with Secret and ConfigMap references resolved.
pub(super) fn env(input: &Input, who: &Principal) -> Result<Vec<(String, String)>, String> {
    let (all, pod) = (input.all, input.pod);
    let data = |secret: bool, name: &str| -> Option<&Data> {
        all.iter().find_map(|o| match (o, secret) {
            (Object::Secret(d), true) | (Object::ConfigMap(d), false) if d.meta.name == name => {
                Some(d)
            }
            _ => None,
        })
    };
    let kind = |secret: bool| if secret { "Secret" } else { "ConfigMap" };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| {
        out.retain(|(n, _)| *n != k);
        out.push((k, v));
    };
    for (i, e) in pod.container.env_from.iter().enumerate() {
        let (secret, name, optional) = e.parts();
        let Some(d) = data(secret, name) else {
            if optional {
                continue;
            }
            return Err(format!("envFrom[{i}]: no {} named {name:?}", kind(secret)));
        };
        if secret {
            may_read_secret(input, who, name)
                .map_err(|e| format!("envFrom[{i}].secretRef: {e}"))?;
        }
        for (k, v) in &d.data {
            set(k.clone(), v.clone());
        }
    }
    for (i, e) in pod.container.env.iter().enumerate() {
        let v = match &e.source {
            EnvSource::Value(v) => v.clone(),
            EnvSource::SecretKey {
                name,
                key,
                optional,
            }
            | EnvSource::ConfigMapKey {
                name,
                key,
                optional,
            } => {
                // `optional`: a missing object or key leaves the variable
                // unset, as in Kubernetes.
                let secret = matches!(e.source, EnvSource::SecretKey { .. });
                let Some(d) = data(secret, name) else {
                    if *optional {
                        continue;
                    }
                    return Err(format!(
                        "env[{i}].valueFrom: no {} named {name:?}",
                        kind(secret)
                    ));
                };
                if secret {
                    may_read_secret(input, who, name)
                        .map_err(|e| format!("env[{i}].valueFrom.secretKeyRef: {e}"))?;
                }
                match d.data.get(key) {
                    Some(v) => v.clone(),
                    None if *optional => continue,
                    None => {
                        return Err(format!(
                            "env[{i}].valueFrom: {} {name} has no key {key:?}",
                            kind(secret)
                        ))
                    }
                }
            }
        };
        set(e.name.clone(), v);
    }
    Ok(out)
}
