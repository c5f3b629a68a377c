//! The top-level objects: header, metadata, and the specs of Deployment,
//! Secret, ConfigMap and PersistentVolumeClaim (a Pod's spec: `pod.rs`).

use base64::Engine as _;
use moat_policy::yaml::{Node, Value};

use super::walk::Cx;
use super::{
    pod, Claim, Data, Deployment, IntOrPercent, ManifestError, Meta, Object, Pod, PolicyDoc,
};

/// The (apiVersion, kind) pairs moatd accepts.
const KINDS: &[(&str, &str)] = &[
    ("apps/v1", "Deployment"),
    ("v1", "Pod"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolumeClaim"),
    ("moat.dev/v1", "Policy"),
];

pub(super) fn object(
    node: &Node,
    text: &str,
    file: &str,
    offset: usize,
) -> Result<Object, ManifestError> {
    let doc_err = |line: usize, message: String| ManifestError::Document {
        file: file.to_string(),
        line: line + offset,
        message,
    };
    let Value::Map(entries) = &node.value else {
        return Err(doc_err(
            node.pos.line,
            format!(
                "a manifest document is a mapping, found {}",
                node.describe()
            ),
        ));
    };
    let header = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k.key_text() == key)
            .and_then(|(_, v)| match &v.value {
                Value::Scalar { text, .. } => Some(text.clone()),
                _ => None,
            })
    };
    let (Some(api), Some(kind)) = (header("apiVersion"), header("kind")) else {
        return Err(doc_err(
            node.pos.line,
            "every document needs `apiVersion` and `kind`".to_string(),
        ));
    };
    if !KINDS.contains(&(api.as_str(), kind.as_str())) {
        let known: Vec<String> = KINDS.iter().map(|(a, k)| format!("{a} {k}")).collect();
        return Err(doc_err(
            node.pos.line,
            format!(
                "{api} {kind} is not supported by moatd (accepted: {})",
                known.join(", ")
            ),
        ));
    }
    if kind == "Policy" {
        // The policy parser checks its own fields, with its own messages.
        let policy = moat_policy::Policy::parse(text, &format!("{file} (Policy document)"))
            .map_err(|e| doc_err(0, e.to_string()))?;
        return Ok(Object::Policy(PolicyDoc {
            name: policy.name,
            text: text.to_string(),
        }));
    }
    let name = entries
        .iter()
        .find(|(k, _)| k.key_text() == "metadata")
        .and_then(|(_, m)| match &m.value {
            Value::Map(e) => e.iter().find(|(k, _)| k.key_text() == "name"),
            _ => None,
        })
        .and_then(|(_, v)| match &v.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => None,
        });
    let Some(name) = name else {
        return Err(doc_err(
            node.pos.line,
            format!("{kind}: metadata.name: required"),
        ));
    };
    let cx = Cx {
        file,
        line_offset: offset,
        object: format!("{kind} {name}"),
    };
    let top_keys: &[&str] = match kind.as_str() {
        "Secret" => &[
            "apiVersion",
            "kind",
            "metadata",
            "type",
            "data",
            "stringData",
        ],
        "ConfigMap" => &["apiVersion", "kind", "metadata", "data"],
        _ => &["apiVersion", "kind", "metadata", "spec"],
    };
    let top = cx.map(node, "", top_keys)?;
    let meta = metadata(&cx, top.get("metadata").unwrap_or(node), "metadata")?;
    let spec = || {
        top.get("spec")
            .ok_or_else(|| cx.err(node, "spec", "required"))
    };
    Ok(match kind.as_str() {
        "Deployment" => Object::Deployment(deployment(&cx, meta, spec()?)?),
        "Pod" => Object::Pod(Pod {
            meta,
            pod: pod::pod_spec(&cx, spec()?, "spec", true)?,
        }),
        "Secret" => Object::Secret(secret(&cx, meta, &top)?),
        "ConfigMap" => Object::ConfigMap(Data {
            meta,
            kind_type: String::new(),
            data: match top.get("data") {
                Some(d) => keys(&cx, d, "data", cx.string_map(d, "data")?)?,
                None => Default::default(),
            },
        }),
        _ => Object::Claim(claim(&cx, meta, spec()?)?),
    })
}

pub(super) fn metadata(cx: &Cx, node: &Node, path: &str) -> Result<Meta, ManifestError> {
    let f = cx.map(node, path, &["name", "namespace", "labels", "annotations"])?;
    let mut m = Meta::default();
    if let Some(n) = f.get("name") {
        m.name = cx.string(n, &format!("{path}.name"))?;
        let ok = !m.name.is_empty()
            && m.name.len() <= 40
            && m.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !m.name.starts_with('-')
            && !m.name.ends_with('-');
        if !ok {
            return Err(cx.err(
                n,
                &format!("{path}.name"),
                "must be 1-40 lower-case letters, digits and '-', starting and ending with a letter or digit",
            ));
        }
    }
    m.namespace = "default".to_string();
    if let Some(n) = f.get("namespace") {
        m.namespace = cx.string(n, &format!("{path}.namespace"))?;
        if m.namespace != "default" {
            return Err(cx.err(
                n,
                &format!("{path}.namespace"),
                format!(
                    "moatd has the one namespace `default`, not {:?}",
                    m.namespace
                ),
            ));
        }
    }
    if let Some(n) = f.get("labels") {
        m.labels = cx.string_map(n, &format!("{path}.labels"))?;
    }
    if let Some(n) = f.get("annotations") {
        m.annotations = cx.string_map(n, &format!("{path}.annotations"))?;
    }
    Ok(m)
}

fn int_or_percent(cx: &Cx, node: &Node, path: &str) -> Result<IntOrPercent, ManifestError> {
    let text = cx.string(node, path)?;
    if let Some(p) = text.strip_suffix('%') {
        if let Ok(p) = p.parse::<u32>() {
            if p <= 100 {
                return Ok(IntOrPercent::Percent(p));
            }
        }
    } else if let Ok(n) = text.parse::<u32>() {
        return Ok(IntOrPercent::Int(n));
    }
    Err(cx.err(
        node,
        path,
        format!("expected a count or a percentage (`1`, `25%`), found `{text}`"),
    ))
}

fn deployment(cx: &Cx, meta: Meta, spec: &Node) -> Result<Deployment, ManifestError> {
    let f = cx.map(
        spec,
        "spec",
        &[
            "replicas",
            "selector",
            "strategy",
            "template",
            "progressDeadlineSeconds",
            "revisionHistoryLimit",
            "minReadySeconds",
        ],
    )?;
    let mut d = Deployment {
        meta,
        replicas: 1,
        selector: Default::default(),
        max_surge: IntOrPercent::Percent(25),
        max_unavailable: IntOrPercent::Percent(25),
        progress_deadline_seconds: 600,
        revision_history_limit: 10,
        min_ready_seconds: 0,
        template_meta: Meta::default(),
        pod: Default::default(),
    };
    if let Some(n) = f.get("replicas") {
        d.replicas = cx.uint(n, "spec.replicas")?;
        if d.replicas > 1000 {
            return Err(cx.err(n, "spec.replicas", "at most 1000 replicas on one node"));
        }
    }
    if let Some(n) = f.get("progressDeadlineSeconds") {
        d.progress_deadline_seconds = cx.uint(n, "spec.progressDeadlineSeconds")?.into();
    }
    if let Some(n) = f.get("minReadySeconds") {
        d.min_ready_seconds = cx.uint(n, "spec.minReadySeconds")?.into();
        // Kubernetes' rule: a replica must be able to count as available
        // before the rollout's deadline.
        if d.min_ready_seconds >= d.progress_deadline_seconds {
            return Err(cx.err(
                n,
                "spec.minReadySeconds",
                format!(
                    "must be less than spec.progressDeadlineSeconds ({})",
                    d.progress_deadline_seconds
                ),
            ));
        }
    }
    if let Some(n) = f.get("revisionHistoryLimit") {
        d.revision_history_limit = cx.uint(n, "spec.revisionHistoryLimit")?;
    }
    if let Some(n) = f.get("strategy") {
        let s = cx.map(n, "spec.strategy", &["type", "rollingUpdate"])?;
        if let Some(t) = s.get("type") {
            let t_text = cx.string(t, "spec.strategy.type")?;
            if t_text != "RollingUpdate" {
                return Err(cx.err(
                    t,
                    "spec.strategy.type",
                    format!("only RollingUpdate is supported by moatd, not {t_text:?}"),
                ));
            }
        }
        if let Some(r) = s.get("rollingUpdate") {
            let r = cx.map(
                r,
                "spec.strategy.rollingUpdate",
                &["maxSurge", "maxUnavailable"],
            )?;
            if let Some(v) = r.get("maxSurge") {
                d.max_surge = int_or_percent(cx, v, "spec.strategy.rollingUpdate.maxSurge")?;
            }
            if let Some(v) = r.get("maxUnavailable") {
                d.max_unavailable =
                    int_or_percent(cx, v, "spec.strategy.rollingUpdate.maxUnavailable")?;
            }
        }
    }
    // Kubernetes' rule, on the values as written (a percentage of zero
    // replicas is fine).
    let zero = |v: IntOrPercent| matches!(v, IntOrPercent::Int(0) | IntOrPercent::Percent(0));
    if zero(d.max_surge) && zero(d.max_unavailable) {
        return Err(cx.err(
            spec,
            "spec.strategy.rollingUpdate",
            "maxSurge and maxUnavailable may not both be 0",
        ));
    }
    let sel = f
        .get("selector")
        .ok_or_else(|| cx.err(spec, "spec.selector", "required"))?;
    let sel_f = cx.map(sel, "spec.selector", &["matchLabels"])?;
    if let Some(m) = sel_f.get("matchLabels") {
        d.selector = cx.string_map(m, "spec.selector.matchLabels")?;
    }
    let tpl = f
        .get("template")
        .ok_or_else(|| cx.err(spec, "spec.template", "required"))?;
    let t = cx.map(tpl, "spec.template", &["metadata", "spec"])?;
    if let Some(m) = t.get("metadata") {
        d.template_meta = metadata(cx, m, "spec.template.metadata")?;
    }
    let ps = t
        .get("spec")
        .ok_or_else(|| cx.err(tpl, "spec.template.spec", "required"))?;
    d.pod = pod::pod_spec(cx, ps, "spec.template.spec", false)?;
    if d.selector.is_empty()
        || d.selector
            .iter()
            .any(|(k, v)| d.template_meta.labels.get(k) != Some(v))
    {
        return Err(cx.err(
            sel,
            "spec.selector.matchLabels",
            "must be non-empty and match spec.template.metadata.labels",
        ));
    }
    Ok(d)
}

fn secret(cx: &Cx, meta: Meta, top: &super::walk::Fields) -> Result<Data, ManifestError> {
    let mut d = Data {
        meta,
        kind_type: "Opaque".to_string(),
        data: Default::default(),
    };
    if let Some(t) = top.get("type") {
        d.kind_type = cx.string(t, "type")?;
        if d.kind_type != "Opaque" {
            return Err(cx.err(
                t,
                "type",
                format!(
                    "only Opaque secrets are supported by moatd, not {:?}",
                    d.kind_type
                ),
            ));
        }
    }
    if let Some(n) = top.get("data") {
        for (k, v) in keys(cx, n, "data", cx.string_map(n, "data")?)? {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .map_err(|_| cx.err(n, &format!("data.{k}"), "not valid base64"))?;
            let text = String::from_utf8(bytes).map_err(|_| {
                cx.err(
                    n,
                    &format!("data.{k}"),
                    "moatd keeps text secrets only (UTF-8)",
                )
            })?;
            d.data.insert(k, text);
        }
    }
    if let Some(n) = top.get("stringData") {
        d.data
            .extend(keys(cx, n, "stringData", cx.string_map(n, "stringData")?)?);
    }
    Ok(d)
}

/// Keys of a ConfigMap or Secret are file names in its volumes:
/// Kubernetes' rule, `[-._a-zA-Z0-9]+`.
fn keys(
    cx: &Cx,
    node: &Node,
    path: &str,
    map: std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>, ManifestError> {
    if let Some(k) = map.keys().find(|k| !crate::files::valid_key(k)) {
        return Err(cx.err(
            node,
            &format!("{path}.{k}"),
            "a key is letters, digits, '-', '_' and '.' (not `.` nor starting with `..`), as in Kubernetes",
        ));
    }
    Ok(map)
}

fn claim(cx: &Cx, meta: Meta, spec: &Node) -> Result<Claim, ManifestError> {
    let f = cx.map(spec, "spec", &["accessModes", "resources"])?;
    let mut c = Claim {
        meta,
        access_modes: vec!["ReadWriteOnce".to_string()],
        storage: 1 << 30,
        storage_text: "1Gi".to_string(),
    };
    if let Some(n) = f.get("accessModes") {
        c.access_modes = cx.strings(n, "spec.accessModes")?;
        for (i, m) in c.access_modes.iter().enumerate() {
            if m != "ReadWriteOnce" && m != "ReadWriteOncePod" {
                return Err(cx.err(
                    n,
                    &format!("spec.accessModes[{i}]"),
                    format!(
                        "{m} is not supported by moatd (one node: ReadWriteOnce, ReadWriteOncePod)"
                    ),
                ));
            }
        }
    }
    if let Some(r) = f.get("resources") {
        let r = cx.map(r, "spec.resources", &["requests"])?;
        if let Some(q) = r.get("requests") {
            let q = cx.map(q, "spec.resources.requests", &["storage"])?;
            if let Some(s) = q.get("storage") {
                c.storage_text = cx.string(s, "spec.resources.requests.storage")?;
                c.storage = quantity_bytes(&c.storage_text).ok_or_else(|| {
                    cx.err(
                        s,
                        "spec.resources.requests.storage",
                        format!(
                            "expected a size such as 1Gi or 500M, found `{}`",
                            c.storage_text
                        ),
                    )
                })?;
            }
        }
    }
    Ok(c)
}

/// A Kubernetes quantity in bytes: `128Mi`, `1G`, `512`.
pub fn quantity_bytes(text: &str) -> Option<u64> {
    let units: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (u, mul) in units {
        if let Some(n) = text.strip_suffix(u) {
            return n.parse::<u64>().ok()?.checked_mul(*mul);
        }
    }
    text.parse().ok()
}
