//! Admission of an apply: every workload's pod is checked against
//! Kubernetes Pod Security "restricted", its image must be pinned by
//! digest (unless its policy names the allowed sources) and be in the
//! store, and its moat policy (annotation `moat.dev/policy`, default
//! `auto`) with its isolation (`moat.dev/isolation`) must be granted to
//! the requester by RBAC. The outcome is one resolved [`Template`] per
//! workload. A refusal names the object, the field and the rule.
//! Secrets and ConfigMaps a pod refers to: [`refs`]; its `resources`
//! against the policy's: [`resources`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use moat_policy::rbac::{Principal, Rbac, Request};
use moat_policy::Policy;

use crate::manifest::{Handler, Object, PodSpec, VolumeSource};
use crate::template::Template;

mod refs;
mod resources;

use refs::{env, files};
use resources::limits;

pub const POLICY_ANNOTATION: &str = "moat.dev/policy";
pub const ISOLATION_ANNOTATION: &str = "moat.dev/isolation";

/// Where admission looks things up.
pub struct Context<'a> {
    pub state: &'a Path,
    pub rbac_path: &'a Path,
    /// Policies, Secrets and ConfigMaps already stored, by name.
    pub stored: &'a [Object],
    /// Who applied each stored Secret (by name): a Secret is readable by
    /// whoever applied it and by root.
    pub secret_owners: &'a BTreeMap<String, String>,
}

/// A workload ready to be stored.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `deployment/web`, `pod/x`.
    pub owner: String,
    pub replicas: u32,
    pub template: Template,
    /// `deployment.apps/web` for messages.
    pub display: String,
}

#[derive(Debug, Default)]
pub struct Admitted {
    pub workloads: Vec<Workload>,
    /// Lines for the requester (`... got the auto policy`).
    pub notices: Vec<String>,
    /// Policy documents to store as files: (name, text).
    pub policies: Vec<(String, String)>,
}

/// Admits `objects` for `who`; `Err` carries one line per refusal.
pub fn admit(cx: &Context, objects: &[Object], who: &Principal) -> Result<Admitted, Vec<String>> {
    let rbac = match Rbac::load(cx.rbac_path) {
        Ok(r) => Some(r),
        Err(moat_policy::rbac::RbacError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => return Err(vec![format!("{e}")]),
    };
    let mut out = Admitted::default();
    let mut refusals = Vec::new();
    let all: Vec<&Object> = objects.iter().chain(cx.stored.iter()).collect();
    // Secrets of this apply are the requester's (apply refuses replacing
    // someone else's).
    let mut owners = cx.secret_owners.clone();
    for o in objects {
        if let Object::Secret(s) = o {
            owners.insert(s.meta.name.clone(), who.name.clone());
        }
    }
    for o in objects {
        if let Object::Policy(p) = o {
            out.policies.push((p.name.clone(), p.text.clone()));
        }
        if let Object::Claim(c) = o {
            let d = moat_policy::rbac::authorize_requests(
                rbac.as_ref(),
                cx.rbac_path,
                who,
                &[Request::NamedVolume(c.meta.name.clone())],
            );
            if !d.allowed {
                refusals.extend(
                    d.reasons
                        .iter()
                        .map(|r| format!("PersistentVolumeClaim {}: {r}", c.meta.name)),
                );
            }
        }
    }
    for o in objects {
        let (kind, name, owner, replicas, pod, annotations, path) = match o {
            Object::Deployment(d) => {
                let mut ann = d.meta.annotations.clone();
                ann.extend(d.template_meta.annotations.clone());
                (
                    "Deployment",
                    &d.meta.name,
                    format!("deployment/{}", d.meta.name),
                    d.replicas,
                    &d.pod,
                    ann,
                    "spec.template.spec",
                )
            }
            Object::Pod(p) => (
                "Pod",
                &p.meta.name,
                format!("pod/{}", p.meta.name),
                1,
                &p.pod,
                p.meta.annotations.clone(),
                "spec",
            ),
            _ => continue,
        };
        let label = format!("{kind} {name}");
        let mut errs = restricted(pod, path);
        if let Object::Deployment(d) = o {
            errs.extend(single_writer(d));
        }
        let input = Input {
            all: &all,
            owners: &owners,
            pod,
            annotations: &annotations,
            path,
        };
        match workload(cx, rbac.as_ref(), who, &input) {
            Ok((template, notice)) => {
                if errs.is_empty() {
                    if let Some(n) = notice {
                        out.notices.push(format!("{}: {n}", o.kubectl_name()));
                    }
                    out.workloads.push(Workload {
                        owner,
                        replicas,
                        template,
                        display: o.kubectl_name(),
                    });
                }
            }
            Err(mut e) => errs.append(&mut e),
        }
        refusals.extend(errs.into_iter().map(|e| format!("{label}: {e}")));
    }
    if refusals.is_empty() {
        Ok(out)
    } else {
        Err(refusals)
    }
}

/// Kubernetes Pod Security Standards, level "restricted" (which includes
/// "baseline"), on the fields moatd accepts.
pub fn restricted(pod: &PodSpec, path: &str) -> Vec<String> {
    let c = &pod.container;
    let cp = format!("{path}.containers[0].securityContext");
    let rule = "(Pod Security \"restricted\")";
    let mut e = Vec::new();
    if c.security.privileged == Some(true) {
        e.push(format!("{cp}.privileged: must be false {rule}"));
    }
    if c.security.allow_privilege_escalation != Some(false) {
        e.push(format!(
            "{cp}.allowPrivilegeEscalation: must be set to false {rule}"
        ));
    }
    let non_root = c.security.run_as_non_root.or(pod.security.run_as_non_root);
    if non_root != Some(true) {
        e.push(format!(
            "{cp}.runAsNonRoot: must be true here or in {path}.securityContext {rule}"
        ));
    }
    if c.security.run_as_user == Some(0) {
        e.push(format!("{cp}.runAsUser: must not be 0 {rule}"));
    }
    if pod.security.run_as_user == Some(0) {
        e.push(format!(
            "{path}.securityContext.runAsUser: must not be 0 {rule}"
        ));
    }
    if c.security
        .run_as_user
        .or(pod.security.run_as_user)
        .is_none()
        && non_root == Some(true)
    {
        e.push(format!(
            "{cp}.runAsUser: must be set (a non-zero uid) for runAsNonRoot: moatd does not guess the image's user"
        ));
    }
    if !c.security.drop.iter().any(|d| d == "ALL") {
        e.push(format!("{cp}.capabilities.drop: must include ALL {rule}"));
    }
    for (i, a) in c.security.add.iter().enumerate() {
        if a != "NET_BIND_SERVICE" {
            e.push(format!(
                "{cp}.capabilities.add[{i}]: {a} is not allowed; only NET_BIND_SERVICE {rule}"
            ));
        }
    }
    match c.security.seccomp.as_deref().or(pod.security.seccomp.as_deref()) {
        Some("RuntimeDefault") | Some("Localhost") => {}
        Some(other) => e.push(format!(
            "{cp}.seccompProfile.type: {other} is not allowed; RuntimeDefault or Localhost {rule}"
        )),
        None => e.push(format!(
            "{cp}.seccompProfile.type: must be RuntimeDefault or Localhost here or in {path}.securityContext {rule}"
        )),
    }
    e
}

/// A moat volume has one writer at a time (its lock): a Deployment that
/// mounts a claim read-write runs one replica and replaces it without
/// surge, old one first.
fn single_writer(d: &crate::manifest::Deployment) -> Vec<String> {
    let mut e = Vec::new();
    for (i, m) in d.pod.container.volume_mounts.iter().enumerate() {
        let Some(v) = d.pod.volumes.iter().find(|v| v.name == m.name) else {
            continue;
        };
        let VolumeSource::Claim {
            claim_name,
            read_only,
        } = &v.source
        else {
            continue;
        };
        let surge = d.max_surge.of(d.replicas, true);
        if !(m.read_only || *read_only) && (d.replicas > 1 || surge > 0) {
            e.push(format!(
                "spec.template.spec.containers[0].volumeMounts[{i}]: claim {claim_name:?} is mounted read-write, and a moat volume has one writer at a time: use replicas: 1 with strategy.rollingUpdate.maxSurge: 0, or readOnly: true"
            ));
        }
    }
    e
}

type Resolved = (Template, Option<String>);

/// One workload's pod and what it may refer to.
struct Input<'a> {
    all: &'a [&'a Object],
    /// Secret name to who applied it.
    owners: &'a BTreeMap<String, String>,
    pod: &'a PodSpec,
    annotations: &'a BTreeMap<String, String>,
    path: &'a str,
}

fn workload(
    cx: &Context,
    rbac: Option<&Rbac>,
    who: &Principal,
    input: &Input,
) -> Result<Resolved, Vec<String>> {
    let (all, pod, annotations, path) = (input.all, input.pod, input.annotations, input.path);
    let c = &pod.container;
    let cpath = format!("{path}.containers[0]");
    let mut errs = Vec::new();
    let mut notice = None;
    let policy_name = match annotations.get(POLICY_ANNOTATION) {
        Some(p) => p.clone(),
        None => {
            notice = Some("no moat.dev/policy annotation: runs under the `auto` policy (baseline narrowed to the system calls the image's programs can make)".to_string());
            "auto".to_string()
        }
    };
    let isolation = annotations
        .get(ISOLATION_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| "auto".to_string());
    if !["auto", "sandbox", "vm"].contains(&isolation.as_str()) {
        return Err(vec![format!(
            "metadata.annotations.{ISOLATION_ANNOTATION}: {isolation:?} is not one of auto, sandbox, vm"
        )]);
    }
    // The policy: a Policy document (in this apply or stored) or a built-in.
    let doc = all.iter().find_map(|o| match o {
        Object::Policy(p) if p.name == policy_name => Some(p.clone()),
        _ => None,
    });
    let (policy, policy_arg) = match &doc {
        Some(d) => match Policy::parse(&d.text, &format!("Policy {}", d.name)) {
            Ok(p) => {
                let file = policy_file(cx.state, &d.name, &d.text);
                (p, file.display().to_string())
            }
            Err(e) => return Err(vec![format!("Policy {}: {e}", d.name)]),
        },
        None if moat_policy::builtin::text(&policy_name).is_some() => {
            let widest = moat_policy::auto::ImageSyscalls::widest(&c.image);
            match Policy::resolve_for_image(&policy_name, &widest) {
                Ok(p) => (p, policy_name.clone()),
                Err(e) => return Err(vec![format!("policy {policy_name}: {e}")]),
            }
        }
        None => {
            return Err(vec![format!(
                "metadata.annotations.{POLICY_ANNOTATION}: no Policy named {policy_name:?} in this apply or applied before, and no built-in policy of that name (auto, baseline, restricted)"
            )])
        }
    };
    // RBAC: the policy, the isolation asked for, the claims mounted.
    let mut extra = Vec::new();
    if isolation != "auto" {
        extra.push(Request::Isolation(isolation.clone()));
    }
    let mut volumes = Vec::new();
    let files = match files(input, who) {
        Ok(f) => f,
        Err(mut e) => {
            errs.append(&mut e);
            Vec::new()
        }
    };
    let limits = match limits(&c.resources, &policy, &cpath) {
        Ok(l) => l,
        Err(mut e) => {
            errs.append(&mut e);
            Default::default()
        }
    };
    let mut scratch = Vec::new();
    for m in &c.volume_mounts {
        let Some(v) = pod.volumes.iter().find(|v| v.name == m.name) else {
            continue;
        };
        if let VolumeSource::EmptyDir { size_limit } = &v.source {
            scratch.push(crate::template::Scratch {
                path: m.mount_path.clone(),
                size_bytes: *size_limit,
            });
            continue;
        }
        let VolumeSource::Claim {
            claim_name,
            read_only,
        } = &v.source
        else {
            continue;
        };
        extra.push(Request::NamedVolume(claim_name.clone()));
        let ro = if *read_only || m.read_only { ":ro" } else { "" };
        volumes.push(format!("{claim_name}:{}{ro}", m.mount_path));
    }
    let d = moat_policy::rbac::authorize_with(rbac, cx.rbac_path, who, &policy, &extra);
    if !d.allowed {
        errs.extend(d.reasons.iter().map(|r| {
            format!(
                "policy {}: {r} (RBAC {})",
                policy.name,
                cx.rbac_path.display()
            )
        }));
    }
    // Probes that enter the container need the policy's exec grant.
    for (field, p) in [
        ("readinessProbe", &c.readiness),
        ("livenessProbe", &c.liveness),
    ] {
        let vm = isolation == "vm"
            || policy.spec.isolation == moat_policy::plan::IsolationRequirement::Vm;
        let net_port = match p.as_ref().map(|p| &p.handler) {
            Some(Handler::HttpGet { port, .. }) => Some(("httpGet", *port)),
            Some(Handler::TcpSocket { port }) => Some(("tcpSocket", *port)),
            _ => None,
        };
        if let (true, Some((how, port))) = (vm, net_port) {
            // slirp listens in the VMM's namespace on published ports only.
            let n = &policy.spec.network;
            let published = n.mode == moat_policy::model::NetworkMode::Egress
                && n.publish
                    .iter()
                    .any(|p| p.container_port == port && p.protocol != "udp");
            if !published {
                errs.push(format!(
                    "{cpath}.{field}.{how}.port: {port} is not a TCP port policy {} publishes (network: egress with publish), and a micro-VM is reached from the host only through published ports; publish it, or use an exec probe",
                    policy.name
                ));
            }
        }
        if let Some(Handler::Exec(_)) = p.as_ref().map(|p| &p.handler) {
            if !policy.spec.exec {
                errs.push(format!(
                    "{cpath}.{field}.exec: policy {} does not allow exec (`exec: true`); use an httpGet or tcpSocket probe or a policy that allows exec",
                    policy.name
                ));
            }
        }
    }
    let image = match image(cx.state, &c.image, &policy) {
        Ok(i) => i,
        Err(e) => {
            errs.push(format!("{cpath}.image: {e}"));
            String::new()
        }
    };
    let env = match env(input, who) {
        Ok(e) => e,
        Err(e) => {
            errs.push(format!("{cpath}.{e}"));
            Vec::new()
        }
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    let uid = c.security.run_as_user.or(pod.security.run_as_user);
    let gid = c
        .security
        .run_as_group
        .or(pod.security.run_as_group)
        .or(uid);
    Ok((
        Template {
            image,
            image_written: c.image.clone(),
            command: c.command.clone(),
            args: c.args.clone(),
            env,
            user: uid.map(|u| format!("{u}:{}", gid.unwrap_or(u))),
            workdir: c.working_dir.clone(),
            policy: policy_arg,
            policy_name: policy.name.clone(),
            policy_digest: policy.digest(),
            isolation,
            volumes,
            readiness: c.readiness.clone(),
            liveness: c.liveness.clone(),
            restart_policy: pod.restart_policy.clone(),
            grace_seconds: pod.termination_grace_period_seconds,
            files,
            limits,
            scratch,
        },
        notice,
    ))
}

/// Where a Policy document is kept for `moat run --policy`: named by its
/// content, so that a changed policy is a new file (and a new revision).
pub fn policy_file(state: &Path, name: &str, text: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let h = hex::encode(Sha256::digest(text.as_bytes()));
    state
        .join("moatd")
        .join("policies")
        .join(format!("{name}-{}.yaml", &h[..16]))
}

/// The image as `sha256:<manifest digest>` of the store.
fn image(state: &Path, written: &str, policy: &Policy) -> Result<String, String> {
    let store =
        moat_image::Store::open(state).map_err(|e| format!("opening the image store: {e}"))?;
    let pinned = written
        .split_once("@sha256:")
        .map(|(_, h)| h.to_string())
        .or_else(|| written.strip_prefix("sha256:").map(str::to_string));
    let reference = match &pinned {
        Some(h) => {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{written}: a digest is sha256: and 64 hex digits"));
            }
            format!("sha256:{h}")
        }
        None => {
            let rules = &policy.spec.image;
            let covered = rules.allowed.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => written.starts_with(prefix),
                None => p == written,
            });
            if rules.require_digest || rules.allowed.is_empty() || !covered {
                return Err(format!(
                    "{written} is not pinned by digest; name it as NAME@sha256:<digest> (moat image ls shows it), or use a policy whose image.allowed lists it (policy {})",
                    policy.name
                ));
            }
            written.to_string()
        }
    };
    let img = store
        .resolve(&reference)
        .map_err(|e| format!("{e} (moat pull or moat image import it first)"))?;
    if let Some(h) = &pinned {
        let m = img.manifest_digest.strip_prefix("sha256:").unwrap_or("");
        let c = img.config_digest.strip_prefix("sha256:").unwrap_or("");
        if m != h && c != h {
            return Err(format!(
                "{written}: no image with exactly this digest in the store"
            ));
        }
    }
    Ok(img.manifest_digest.clone())
}
