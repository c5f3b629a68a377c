//! A container's `resources`: limits and requests of cpu, memory and
//! ephemeral storage, as Kubernetes writes them.

use moat_policy::yaml::Node;
use serde::{Deserialize, Serialize};

use super::walk::{join, Cx};
use super::ManifestError;

/// `resources.limits` / `resources.requests` of the container: CPU in
/// millicpus, memory and ephemeral storage in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantities {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub ephemeral_storage_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub limits: Quantities,
    pub requests: Quantities,
}

/// `resources.{limits, requests}.{cpu, memory, ephemeral-storage}`, with
/// Kubernetes' rule that a request is at most its limit.
pub(super) fn resources(cx: &Cx, node: &Node, path: &str) -> Result<Resources, ManifestError> {
    let f = cx.map(node, path, &["limits", "requests"])?;
    let mut r = Resources::default();
    for (key, q) in [("limits", &mut r.limits), ("requests", &mut r.requests)] {
        let Some(n) = f.get(key) else { continue };
        let qp = join(path, key);
        let qf = cx.map(n, &qp, &["cpu", "memory", "ephemeral-storage"])?;
        if let Some(v) = qf.get("cpu") {
            let vp = join(&qp, "cpu");
            let text = cx.string(v, &vp)?;
            q.cpu_millis = Some(
                moat_policy::parse_cpus(&text)
                    .filter(|m| *m > 0)
                    .ok_or_else(|| {
                        cx.err(
                            v,
                            &vp,
                            format!(
                                "expected a CPU quantity such as 500m, 0.5 or 2, found `{text}`"
                            ),
                        )
                    })?,
            );
        }
        for (k, slot) in [
            ("memory", &mut q.memory_bytes),
            ("ephemeral-storage", &mut q.ephemeral_storage_bytes),
        ] {
            if let Some(v) = qf.get(k) {
                let vp = join(&qp, k);
                let text = cx.string(v, &vp)?;
                *slot = Some(
                    super::objects::quantity_bytes(&text)
                        .filter(|b| *b > 0)
                        .ok_or_else(|| {
                            cx.err(
                                v,
                                &vp,
                                format!(
                                    "expected a size such as 128Mi, 1Gi or 500M, found `{text}`"
                                ),
                            )
                        })?,
                );
            }
        }
    }
    let pairs = [
        ("cpu", r.requests.cpu_millis, r.limits.cpu_millis),
        ("memory", r.requests.memory_bytes, r.limits.memory_bytes),
        (
            "ephemeral-storage",
            r.requests.ephemeral_storage_bytes,
            r.limits.ephemeral_storage_bytes,
        ),
    ];
    for (k, req, lim) in pairs {
        if let (Some(q), Some(l)) = (req, lim) {
            if q > l {
                return Err(cx.err(
                    node,
                    &format!("{path}.requests.{k}"),
                    format!("must be less than or equal to {path}.limits.{k}"),
                ));
            }
        }
    }
    Ok(r)
}
