//! A Pod's spec: its one container, security contexts, probes, volumes.

use moat_policy::yaml::Node;
use serde::{Deserialize, Serialize};

use super::resources::{resources, Resources};
use super::walk::{join, Cx};
use super::ManifestError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodSpec {
    pub container: Container,
    /// `Always` (the only value a Deployment takes), `OnFailure`, `Never`.
    pub restart_policy: String,
    pub security: PodSecurity,
    pub volumes: Vec<Volume>,
    pub termination_grace_period_seconds: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodSecurity {
    pub run_as_non_root: Option<bool>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    /// `RuntimeDefault`, `Localhost`, `Unconfined`.
    pub seccomp: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSecurity {
    pub privileged: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub run_as_non_root: Option<bool>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub read_only_root_filesystem: Option<bool>,
    pub drop: Vec<String>,
    pub add: Vec<String>,
    pub seccomp: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub env: Vec<EnvVar>,
    pub env_from: Vec<EnvFrom>,
    pub ports: Vec<Port>,
    pub volume_mounts: Vec<Mount>,
    pub security: ContainerSecurity,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
    #[serde(default)]
    pub resources: Resources,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub source: EnvSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnvSource {
    Value(String),
    SecretKey {
        name: String,
        key: String,
        /// `optional: true`: a missing object or key leaves the
        /// variable unset.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        optional: bool,
    },
    ConfigMapKey {
        name: String,
        key: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        optional: bool,
    },
}

/// `envFrom[]`; the `Optional` ones (`optional: true`) add nothing when
/// the object is missing (separate variants: stored objects written
/// before keep their shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnvFrom {
    ConfigMap(String),
    Secret(String),
    OptionalConfigMap(String),
    OptionalSecret(String),
}

impl EnvFrom {
    /// (is a Secret, name, optional).
    pub fn parts(&self) -> (bool, &str, bool) {
        match self {
            EnvFrom::ConfigMap(n) => (false, n, false),
            EnvFrom::Secret(n) => (true, n, false),
            EnvFrom::OptionalConfigMap(n) => (false, n, true),
            EnvFrom::OptionalSecret(n) => (true, n, true),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    pub name: String,
    pub mount_path: String,
    pub read_only: bool,
    /// `readOnly` as written (`None`: not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_written: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VolumeSource {
    Claim {
        claim_name: String,
        read_only: bool,
    },
    /// `configMap.name`: one file per key (or per `items` entry).
    ConfigMap {
        name: String,
        #[serde(default, skip_serializing_if = "Projection::is_default")]
        projection: Projection,
    },
    /// `secret.secretName`: one file per key (or per `items` entry),
    /// mode 0400 unless `defaultMode` says otherwise, on a tmpfs.
    Secret {
        secret_name: String,
        #[serde(default, skip_serializing_if = "Projection::is_default")]
        projection: Projection,
    },
    /// `emptyDir`: scratch space for the pod's life, a tmpfs of
    /// `size_limit` bytes (`sizeLimit`, else [`EMPTY_DIR_DEFAULT_BYTES`]);
    /// `medium` `""` or `Memory` (both are memory here).
    EmptyDir {
        size_limit: u64,
    },
}

/// An `emptyDir` without `sizeLimit`: as big as a policy's writable tmpfs
/// is by default.
pub const EMPTY_DIR_DEFAULT_BYTES: u64 = 64 << 20;

/// `items`, `defaultMode` and `optional` of a ConfigMap or Secret volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// Only these keys, at these paths (empty: every key, at its name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<u32>,
    /// A missing object is an empty volume; a missing listed key is
    /// left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

impl Projection {
    pub fn is_default(&self) -> bool {
        *self == Projection::default()
    }
}

/// `items[]`: a key projected at a relative path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyToPath {
    pub key: String,
    /// Relative, `/`-separated, no `..` (checked by the parser).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Handler {
    Exec(Vec<String>),
    HttpGet { path: String, port: u16 },
    TcpSocket { port: u16 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub handler: Handler,
    pub initial_delay_seconds: u64,
    pub period_seconds: u64,
    pub timeout_seconds: u64,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

pub(super) fn pod_spec(
    cx: &Cx,
    node: &Node,
    path: &str,
    is_pod: bool,
) -> Result<PodSpec, ManifestError> {
    let f = cx.map(
        node,
        path,
        &[
            "containers",
            "restartPolicy",
            "securityContext",
            "volumes",
            "terminationGracePeriodSeconds",
        ],
    )?;
    let mut p = PodSpec {
        restart_policy: "Always".to_string(),
        termination_grace_period_seconds: 30,
        ..Default::default()
    };
    if let Some(n) = f.get("restartPolicy") {
        let rp = join(path, "restartPolicy");
        p.restart_policy = cx.string(n, &rp)?;
        let ok = match is_pod {
            true => ["Always", "OnFailure", "Never"].contains(&p.restart_policy.as_str()),
            false => p.restart_policy == "Always",
        };
        if !ok {
            return Err(cx.err(
                n,
                &rp,
                format!(
                    "{:?} is not allowed here (a Deployment's pods restart Always; a Pod's: Always, OnFailure, Never)",
                    p.restart_policy
                ),
            ));
        }
    }
    if let Some(n) = f.get("terminationGracePeriodSeconds") {
        p.termination_grace_period_seconds = cx
            .uint(n, &join(path, "terminationGracePeriodSeconds"))?
            .into();
    }
    if let Some(n) = f.get("securityContext") {
        let sp = join(path, "securityContext");
        let s = cx.map(
            n,
            &sp,
            &["runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"],
        )?;
        if let Some(v) = s.get("runAsNonRoot") {
            p.security.run_as_non_root = Some(cx.bool(v, &join(&sp, "runAsNonRoot"))?);
        }
        if let Some(v) = s.get("runAsUser") {
            p.security.run_as_user = Some(cx.uint(v, &join(&sp, "runAsUser"))?);
        }
        if let Some(v) = s.get("runAsGroup") {
            p.security.run_as_group = Some(cx.uint(v, &join(&sp, "runAsGroup"))?);
        }
        if let Some(v) = s.get("seccompProfile") {
            p.security.seccomp = Some(seccomp(cx, v, &join(&sp, "seccompProfile"))?);
        }
    }
    if let Some(n) = f.get("volumes") {
        let vp = join(path, "volumes");
        for (i, v) in cx.seq(n, &vp)?.iter().enumerate() {
            let ip = format!("{vp}[{i}]");
            let vf = cx.map(
                v,
                &ip,
                &[
                    "name",
                    "persistentVolumeClaim",
                    "configMap",
                    "secret",
                    "emptyDir",
                ],
            )?;
            let name = required_string(cx, &vf, v, &ip, "name")?;
            // A DNS label, as in Kubernetes: it also names a directory.
            let label = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !label {
                return Err(cx.err(
                    v,
                    &join(&ip, "name"),
                    format!("{name:?}: a volume name is 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit"),
                ));
            }
            if p.volumes.iter().any(|o| o.name == name) {
                return Err(cx.err(v, &join(&ip, "name"), format!("{name:?} is named twice")));
            }
            p.volumes.push(Volume {
                name,
                source: volume_source(cx, &vf, v, &ip)?,
            });
        }
    }
    let cp = join(path, "containers");
    let cs = f
        .get("containers")
        .ok_or_else(|| cx.err(node, &cp, "required"))?;
    let items = cx.seq(cs, &cp)?;
    match items.len() {
        0 => return Err(cx.err(cs, &cp, "required: one container")),
        1 => {}
        _ => {
            return Err(cx.err(
                &items[1],
                &format!("{cp}[1]"),
                "moatd runs one container per pod; make it its own Deployment",
            ))
        }
    }
    p.container = container(cx, &items[0], &format!("{cp}[0]"))?;
    for (i, m) in p.container.volume_mounts.iter().enumerate() {
        let mp = format!("{cp}[0].volumeMounts[{i}]");
        let Some(v) = p.volumes.iter().find(|v| v.name == m.name) else {
            return Err(cx.err(
                &items[0],
                &join(&mp, "name"),
                format!("no volume named {:?} in {path}.volumes", m.name),
            ));
        };
        if matches!(v.source, VolumeSource::Claim { .. }) {
            continue;
        }
        let scratch = matches!(v.source, VolumeSource::EmptyDir { .. });
        if scratch && m.read_only {
            return Err(cx.err(
                &items[0],
                &join(&mp, "readOnly"),
                format!("volume {:?} is an emptyDir, which starts empty: mounted read-only it stays so; drop readOnly", m.name),
            ));
        }
        // As in Kubernetes, ConfigMap and Secret volumes are read-only.
        if !scratch && m.read_only_written == Some(false) {
            return Err(cx.err(
                &items[0],
                &join(&mp, "readOnly"),
                format!("volume {:?} is a ConfigMap or Secret, always mounted read-only: drop readOnly: false", m.name),
            ));
        }
        let safe = m.mount_path.split('/').skip(1).all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
        if !safe {
            return Err(cx.err(
                &items[0],
                &join(&mp, "mountPath"),
                format!("{:?}: a ConfigMap, Secret or emptyDir is mounted at a plain absolute directory, not `/` (letters, digits, '.', '_', '-'; no `..`)", m.mount_path),
            ));
        }
    }
    Ok(p)
}

/// A volume's one source: a claim, a ConfigMap or a Secret.
fn volume_source(
    cx: &Cx,
    vf: &super::walk::Fields,
    v: &Node,
    ip: &str,
) -> Result<VolumeSource, ManifestError> {
    let given: Vec<&str> = ["persistentVolumeClaim", "configMap", "secret", "emptyDir"]
        .into_iter()
        .filter(|k| vf.get(k).is_some())
        .collect();
    if given.len() != 1 {
        return Err(cx.err(
            v,
            ip,
            "a volume needs exactly one of persistentVolumeClaim, configMap, secret, emptyDir (the sources moatd supports)",
        ));
    }
    let key = given[0];
    let (n, sp) = (vf.get(key).unwrap_or(v), join(ip, key));
    Ok(match key {
        "persistentVolumeClaim" => {
            let cf = cx.map(n, &sp, &["claimName", "readOnly"])?;
            VolumeSource::Claim {
                claim_name: required_string(cx, &cf, n, &sp, "claimName")?,
                read_only: match cf.get("readOnly") {
                    Some(b) => cx.bool(b, &join(&sp, "readOnly"))?,
                    None => false,
                },
            }
        }
        "emptyDir" => {
            let cf = cx.map(n, &sp, &["medium", "sizeLimit"])?;
            if let Some(m) = cf.get("medium") {
                let mp = join(&sp, "medium");
                let medium = cx.string(m, &mp)?;
                if !medium.is_empty() && medium != "Memory" {
                    return Err(cx.err(
                        m,
                        &mp,
                        format!(
                            "{medium:?}: moatd's emptyDir is memory (a tmpfs): use \"\" or Memory"
                        ),
                    ));
                }
            }
            let size_limit = match cf.get("sizeLimit") {
                Some(q) => {
                    let qp = join(&sp, "sizeLimit");
                    let text = cx.string(q, &qp)?;
                    super::objects::quantity_bytes(&text)
                        .filter(|b| *b > 0)
                        .ok_or_else(|| {
                            cx.err(
                                q,
                                &qp,
                                format!("expected a size such as 64Mi or 1Gi, found `{text}`"),
                            )
                        })?
                }
                None => EMPTY_DIR_DEFAULT_BYTES,
            };
            VolumeSource::EmptyDir { size_limit }
        }
        "configMap" => {
            let cf = cx.map(n, &sp, &["name", "items", "defaultMode", "optional"])?;
            VolumeSource::ConfigMap {
                name: required_string(cx, &cf, n, &sp, "name")?,
                projection: projection(cx, &cf, &sp)?,
            }
        }
        _ => {
            let cf = cx.map(n, &sp, &["secretName", "items", "defaultMode", "optional"])?;
            VolumeSource::Secret {
                secret_name: required_string(cx, &cf, n, &sp, "secretName")?,
                projection: projection(cx, &cf, &sp)?,
            }
        }
    })
}

/// `items`, `defaultMode`, `optional` of a ConfigMap or Secret volume at
/// `sp`, checked as Kubernetes checks them.
fn projection(cx: &Cx, cf: &super::walk::Fields, sp: &str) -> Result<Projection, ManifestError> {
    let mut p = Projection::default();
    if let Some(m) = cf.get("defaultMode") {
        p.default_mode = Some(file_mode(cx, m, &join(sp, "defaultMode"))?);
    }
    if let Some(o) = cf.get("optional") {
        p.optional = cx.bool(o, &join(sp, "optional"))?;
    }
    let Some(items) = cf.get("items") else {
        return Ok(p);
    };
    let ip = join(sp, "items");
    for (i, it) in cx.seq(items, &ip)?.iter().enumerate() {
        let ep = format!("{ip}[{i}]");
        let f = cx.map(it, &ep, &["key", "path", "mode"])?;
        let key = required_string(cx, &f, it, &ep, "key")?;
        if !crate::files::valid_key(&key) {
            return Err(cx.err(
                it,
                &join(&ep, "key"),
                format!("{key:?}: a key is letters, digits, '-', '_' and '.' (not `.` nor starting with `..`), as in Kubernetes"),
            ));
        }
        let pp = join(&ep, "path");
        let path = required_string(cx, &f, it, &ep, "path")?;
        let pnode = f.get("path").unwrap_or(it);
        if let Err(why) = crate::files::valid_item_path(&path) {
            return Err(cx.err(pnode, &pp, format!("{path:?}: {why}")));
        }
        // Two files at one path, or a file where another needs a
        // directory, cannot both be written.
        if let Some(j) = p.items.iter().position(|o| {
            o.path == path
                || path.starts_with(&format!("{}/", o.path))
                || o.path.starts_with(&format!("{path}/"))
        }) {
            return Err(cx.err(
                pnode,
                &pp,
                format!("{path:?} collides with {ip}[{j}].path {:?}: each item needs a path of its own, not inside another's", p.items[j].path),
            ));
        }
        let mode = f
            .get("mode")
            .map(|m| file_mode(cx, m, &join(&ep, "mode")))
            .transpose()?;
        p.items.push(KeyToPath { key, path, mode });
    }
    Ok(p)
}

/// A file mode as Kubernetes takes it: YAML octal (`0440`, `0o440`) or
/// decimal (`288`, JSON's only form), 0 to 0777.
fn file_mode(cx: &Cx, node: &Node, path: &str) -> Result<u32, ManifestError> {
    let text = match &node.value {
        moat_policy::yaml::Value::Scalar {
            text,
            quoted: false,
        } => text.as_str(),
        _ => {
            return Err(cx.err(
                node,
                path,
                format!(
                    "expected a file mode such as 0440 (octal) or 288 (decimal), found {}",
                    node.describe()
                ),
            ))
        }
    };
    let parsed = if let Some(o) = text.strip_prefix("0o") {
        u32::from_str_radix(o, 8).ok()
    } else if text.len() > 1 && text.starts_with('0') {
        u32::from_str_radix(&text[1..], 8).ok()
    } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u32>().ok()
    } else {
        None
    };
    match parsed {
        Some(m) if m <= 0o777 => Ok(m),
        _ => Err(cx.err(
            node,
            path,
            format!("expected a file mode between 0 and 0777 (octal, as 0440 in YAML) or 0 and 511 (decimal, as in JSON), found `{text}`"),
        )),
    }
}

fn required_string(
    cx: &Cx,
    f: &super::walk::Fields,
    node: &Node,
    path: &str,
    key: &str,
) -> Result<String, ManifestError> {
    let p = join(path, key);
    match f.get(key) {
        Some(v) => cx.string(v, &p),
        None => Err(cx.err(node, &p, "required")),
    }
}

fn seccomp(cx: &Cx, node: &Node, path: &str) -> Result<String, ManifestError> {
    let f = cx.map(node, path, &["type", "localhostProfile"])?;
    let t = required_string(cx, &f, node, path, "type")?;
    if !["RuntimeDefault", "Localhost", "Unconfined"].contains(&t.as_str()) {
        return Err(cx.err(
            node,
            &join(path, "type"),
            format!("expected RuntimeDefault, Localhost or Unconfined, found {t:?}"),
        ));
    }
    if let Some(l) = f.get("localhostProfile") {
        return Err(cx.err(
            l,
            &join(path, "localhostProfile"),
            "not supported by moatd: the moat policy (annotation moat.dev/policy) is the seccomp profile",
        ));
    }
    Ok(t)
}

fn container(cx: &Cx, node: &Node, path: &str) -> Result<Container, ManifestError> {
    let f = cx.map(
        node,
        path,
        &[
            "name",
            "image",
            "imagePullPolicy",
            "command",
            "args",
            "workingDir",
            "env",
            "envFrom",
            "ports",
            "volumeMounts",
            "securityContext",
            "livenessProbe",
            "readinessProbe",
            "resources",
        ],
    )?;
    let p = |k: &str| join(path, k);
    let mut c = Container {
        name: required_string(cx, &f, node, path, "name")?,
        image: required_string(cx, &f, node, path, "image")?,
        ..Default::default()
    };
    if let Some(n) = f.get("imagePullPolicy") {
        let v = cx.string(n, &p("imagePullPolicy"))?;
        if v != "Never" && v != "IfNotPresent" {
            return Err(cx.err(
                n,
                &p("imagePullPolicy"),
                format!("{v:?} is not supported by moatd: images come from the local store (moat pull), IfNotPresent or Never"),
            ));
        }
    }
    if let Some(n) = f.get("command") {
        c.command = cx.strings(n, &p("command"))?;
    }
    if let Some(n) = f.get("args") {
        c.args = cx.strings(n, &p("args"))?;
    }
    if let Some(n) = f.get("workingDir") {
        c.working_dir = Some(cx.string(n, &p("workingDir"))?);
    }
    if let Some(n) = f.get("env") {
        for (i, e) in cx.seq(n, &p("env"))?.iter().enumerate() {
            c.env.push(env_var(cx, e, &format!("{}[{i}]", p("env")))?);
        }
    }
    if let Some(n) = f.get("envFrom") {
        for (i, e) in cx.seq(n, &p("envFrom"))?.iter().enumerate() {
            let ep = format!("{}[{i}]", p("envFrom"));
            let ef = cx.map(e, &ep, &["configMapRef", "secretRef"])?;
            let from_ref = |r: &Node, rp: &str| -> Result<(String, bool), ManifestError> {
                let rf = cx.map(r, rp, &["name", "optional"])?;
                let optional = rf
                    .get("optional")
                    .map(|o| cx.bool(o, &join(rp, "optional")))
                    .transpose()?
                    .unwrap_or(false);
                Ok((required_string(cx, &rf, r, rp, "name")?, optional))
            };
            if let Some(r) = ef.get("configMapRef") {
                c.env_from
                    .push(match from_ref(r, &join(&ep, "configMapRef"))? {
                        (n, false) => EnvFrom::ConfigMap(n),
                        (n, true) => EnvFrom::OptionalConfigMap(n),
                    });
            } else if let Some(r) = ef.get("secretRef") {
                c.env_from
                    .push(match from_ref(r, &join(&ep, "secretRef"))? {
                        (n, false) => EnvFrom::Secret(n),
                        (n, true) => EnvFrom::OptionalSecret(n),
                    });
            } else {
                return Err(cx.err(e, &ep, "needs configMapRef or secretRef"));
            }
        }
    }
    if let Some(n) = f.get("ports") {
        for (i, e) in cx.seq(n, &p("ports"))?.iter().enumerate() {
            let pp = format!("{}[{i}]", p("ports"));
            let pf = cx.map(e, &pp, &["name", "containerPort", "protocol"])?;
            let port = pf
                .get("containerPort")
                .ok_or_else(|| cx.err(e, &join(&pp, "containerPort"), "required"))?;
            let protocol = match pf.get("protocol") {
                Some(v) => cx.string(v, &join(&pp, "protocol"))?,
                None => "TCP".to_string(),
            };
            c.ports.push(Port {
                container_port: port_number(cx, port, &join(&pp, "containerPort"))?,
                protocol,
            });
        }
    }
    if let Some(n) = f.get("volumeMounts") {
        for (i, e) in cx.seq(n, &p("volumeMounts"))?.iter().enumerate() {
            let mp = format!("{}[{i}]", p("volumeMounts"));
            let mf = cx.map(e, &mp, &["name", "mountPath", "readOnly"])?;
            let mount_path = required_string(cx, &mf, e, &mp, "mountPath")?;
            if !mount_path.starts_with('/') {
                return Err(cx.err(e, &join(&mp, "mountPath"), "must be an absolute path"));
            }
            let read_only_written = mf
                .get("readOnly")
                .map(|b| cx.bool(b, &join(&mp, "readOnly")))
                .transpose()?;
            c.volume_mounts.push(Mount {
                name: required_string(cx, &mf, e, &mp, "name")?,
                mount_path,
                read_only: read_only_written.unwrap_or(false),
                read_only_written,
            });
        }
    }
    if let Some(n) = f.get("securityContext") {
        c.security = container_security(cx, n, &p("securityContext"))?;
    }
    if let Some(n) = f.get("livenessProbe") {
        c.liveness = Some(probe(cx, n, &p("livenessProbe"))?);
    }
    if let Some(n) = f.get("readinessProbe") {
        c.readiness = Some(probe(cx, n, &p("readinessProbe"))?);
    }
    if let Some(n) = f.get("resources") {
        c.resources = resources(cx, n, &p("resources"))?;
    }
    Ok(c)
}

fn env_var(cx: &Cx, node: &Node, path: &str) -> Result<EnvVar, ManifestError> {
    let f = cx.map(node, path, &["name", "value", "valueFrom"])?;
    let name = required_string(cx, &f, node, path, "name")?;
    if let Some(v) = f.get("value") {
        return Ok(EnvVar {
            name,
            source: EnvSource::Value(cx.string(v, &join(path, "value"))?),
        });
    }
    let Some(vf) = f.get("valueFrom") else {
        return Ok(EnvVar {
            name,
            source: EnvSource::Value(String::new()),
        });
    };
    let vp = join(path, "valueFrom");
    let vff = cx.map(vf, &vp, &["secretKeyRef", "configMapKeyRef"])?;
    let key_ref = |n: &Node, p: &str| -> Result<(String, String, bool), ManifestError> {
        let rf = cx.map(n, p, &["name", "key", "optional"])?;
        Ok((
            required_string(cx, &rf, n, p, "name")?,
            required_string(cx, &rf, n, p, "key")?,
            rf.get("optional")
                .map(|o| cx.bool(o, &join(p, "optional")))
                .transpose()?
                .unwrap_or(false),
        ))
    };
    let source = if let Some(r) = vff.get("secretKeyRef") {
        let (name, key, optional) = key_ref(r, &join(&vp, "secretKeyRef"))?;
        EnvSource::SecretKey {
            name,
            key,
            optional,
        }
    } else if let Some(r) = vff.get("configMapKeyRef") {
        let (name, key, optional) = key_ref(r, &join(&vp, "configMapKeyRef"))?;
        EnvSource::ConfigMapKey {
            name,
            key,
            optional,
        }
    } else {
        return Err(cx.err(vf, &vp, "needs secretKeyRef or configMapKeyRef"));
    };
    Ok(EnvVar { name, source })
}

fn container_security(
    cx: &Cx,
    node: &Node,
    path: &str,
) -> Result<ContainerSecurity, ManifestError> {
    let f = cx.map(
        node,
        path,
        &[
            "privileged",
            "allowPrivilegeEscalation",
            "runAsNonRoot",
            "runAsUser",
            "runAsGroup",
            "readOnlyRootFilesystem",
            "capabilities",
            "seccompProfile",
        ],
    )?;
    let p = |k: &str| join(path, k);
    let ob = |k: &str| -> Result<Option<bool>, ManifestError> {
        f.get(k).map(|v| cx.bool(v, &p(k))).transpose()
    };
    let ou = |k: &str| -> Result<Option<u32>, ManifestError> {
        f.get(k).map(|v| cx.uint(v, &p(k))).transpose()
    };
    let mut s = ContainerSecurity {
        privileged: ob("privileged")?,
        allow_privilege_escalation: ob("allowPrivilegeEscalation")?,
        run_as_non_root: ob("runAsNonRoot")?,
        run_as_user: ou("runAsUser")?,
        run_as_group: ou("runAsGroup")?,
        read_only_root_filesystem: ob("readOnlyRootFilesystem")?,
        ..Default::default()
    };
    if let (Some(false), Some(n)) = (s.read_only_root_filesystem, f.get("readOnlyRootFilesystem")) {
        return Err(cx.err(
            n,
            &p("readOnlyRootFilesystem"),
            "moat's root file system is read-only; for a writable layer that dies with the container use a policy with filesystem.root: ephemeral",
        ));
    }
    if let Some(c) = f.get("capabilities") {
        let cf = cx.map(c, &p("capabilities"), &["drop", "add"])?;
        if let Some(d) = cf.get("drop") {
            s.drop = cx.strings(d, &join(&p("capabilities"), "drop"))?;
        }
        if let Some(a) = cf.get("add") {
            s.add = cx.strings(a, &join(&p("capabilities"), "add"))?;
        }
    }
    if let Some(v) = f.get("seccompProfile") {
        s.seccomp = Some(seccomp(cx, v, &p("seccompProfile"))?);
    }
    Ok(s)
}

fn port_number(cx: &Cx, node: &Node, path: &str) -> Result<u16, ManifestError> {
    let v = cx.int(node, path)?;
    u16::try_from(v)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| cx.err(node, path, format!("expected a port 1-65535, found {v}")))
}

fn probe(cx: &Cx, node: &Node, path: &str) -> Result<Probe, ManifestError> {
    let f = cx.map(
        node,
        path,
        &[
            "exec",
            "httpGet",
            "tcpSocket",
            "initialDelaySeconds",
            "periodSeconds",
            "timeoutSeconds",
            "failureThreshold",
            "successThreshold",
        ],
    )?;
    let p = |k: &str| join(path, k);
    let handler = if let Some(e) = f.get("exec") {
        let ef = cx.map(e, &p("exec"), &["command"])?;
        let cmd = ef
            .get("command")
            .ok_or_else(|| cx.err(e, &join(&p("exec"), "command"), "required"))?;
        Handler::Exec(cx.strings(cmd, &join(&p("exec"), "command"))?)
    } else if let Some(h) = f.get("httpGet") {
        let hp = p("httpGet");
        let hf = cx.map(h, &hp, &["path", "port", "scheme"])?;
        if let Some(s) = hf.get("scheme") {
            if cx.string(s, &join(&hp, "scheme"))? != "HTTP" {
                return Err(cx.err(s, &join(&hp, "scheme"), "only HTTP is supported by moatd"));
            }
        }
        let port = hf
            .get("port")
            .ok_or_else(|| cx.err(h, &join(&hp, "port"), "required"))?;
        Handler::HttpGet {
            path: match hf.get("path") {
                Some(v) => cx.string(v, &join(&hp, "path"))?,
                None => "/".to_string(),
            },
            port: port_number(cx, port, &join(&hp, "port"))?,
        }
    } else if let Some(t) = f.get("tcpSocket") {
        let tp = p("tcpSocket");
        let tf = cx.map(t, &tp, &["port"])?;
        let port = tf
            .get("port")
            .ok_or_else(|| cx.err(t, &join(&tp, "port"), "required"))?;
        Handler::TcpSocket {
            port: port_number(cx, port, &join(&tp, "port"))?,
        }
    } else {
        return Err(cx.err(node, path, "needs exec, httpGet or tcpSocket"));
    };
    let num = |k: &str, default: u32| -> Result<u32, ManifestError> {
        f.get(k).map_or(Ok(default), |v| cx.uint(v, &p(k)))
    };
    Ok(Probe {
        handler,
        initial_delay_seconds: num("initialDelaySeconds", 0)?.into(),
        period_seconds: num("periodSeconds", 10)?.max(1).into(),
        timeout_seconds: num("timeoutSeconds", 1)?.max(1).into(),
        failure_threshold: num("failureThreshold", 3)?.max(1),
        success_threshold: num("successThreshold", 1)?.max(1),
    })
}
