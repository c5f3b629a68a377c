//! Policies in other tools' formats: the seccomp JSON profile of Docker and
//! podman, an OCI runtime-spec fragment, an AppArmor profile and Kubernetes
//! objects. All pure text generation.

use serde_json::{json, Map, Value};

use crate::model::{DefaultAction, IoctlRule, NetworkMode, Policy};
use crate::plan::{MountPlan, Plan};
use crate::{args, bpf, syscalls};

fn scmp_default(action: DefaultAction) -> (&'static str, Option<u32>) {
    match action {
        DefaultAction::Errno => ("SCMP_ACT_ERRNO", Some(bpf::EPERM)),
        DefaultAction::Kill => ("SCMP_ACT_KILL_PROCESS", None),
        DefaultAction::Log => ("SCMP_ACT_LOG", None),
    }
}

/// The seccomp profile in the JSON format Docker, podman and the OCI
/// runtime spec (`linux.seccomp`) read.
pub fn seccomp_json(policy: &Policy) -> Value {
    let s = &policy.spec.syscalls;
    let c = &s.conditions;
    let (default, errno) = scmp_default(s.default_action);
    let conditioned = |name: &str| match name {
        "socket" => c.socket_families.is_some(),
        "clone" => c.clone_deny_flags != 0,
        "clone3" => bpf::clone3_enosys(s),
        // Never `Any` once enforced: TIOCSTI and TIOCLINUX are always denied.
        "ioctl" => true,
        _ => false,
    };
    // Table order, so the output is stable and reads like the kernel's list.
    let plain: Vec<&str> = syscalls::names()
        .filter(|n| s.allow.contains(*n) && !conditioned(n))
        .collect();
    let mut rules = vec![json!({ "names": plain, "action": "SCMP_ACT_ALLOW" })];
    // The kernel reads an ioctl request as 32 bits: compare the low word
    // only, or a request with high bits set would pass a deny rule.
    let deny_rule = |name: &str, arg: u32, value: u32| {
        let mut r = json!({
            "names": [name],
            "action": default,
            "args": [{ "index": arg, "value": u32::MAX, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ" }],
            "comment": args::name_of(args::IOCTL_REQUESTS, value),
        });
        if let Some(e) = errno {
            r["errnoRet"] = json!(e);
        }
        r
    };
    if s.allow.contains("socket") {
        if let Some(families) = &c.socket_families {
            for f in families {
                rules.push(json!({
                    "names": ["socket"],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [{ "index": 0, "value": f, "op": "SCMP_CMP_EQ" }],
                    "comment": args::name_of(args::SOCKET_FAMILIES, *f),
                }));
            }
        }
    }
    if c.clone_deny_flags != 0 && s.allow.contains("clone") {
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": c.clone_deny_flags, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
    }
    if bpf::clone3_enosys(s) {
        rules.push(
            json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": bpf::ENOSYS }),
        );
    }
    if s.allow.contains("ioctl") {
        match &c.ioctl.enforced() {
            IoctlRule::Any => {}
            IoctlRule::Allow(reqs) => {
                for r in reqs {
                    rules.push(json!({
                        "names": ["ioctl"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{ "index": 1, "value": r, "op": "SCMP_CMP_EQ" }],
                        "comment": args::name_of(args::IOCTL_REQUESTS, *r),
                    }));
                }
            }
            IoctlRule::Deny(reqs) => {
                // Allowed unless the request is one of these: one rule per
                // request with the default action, plus the plain allow.
                rules.push(json!({ "names": ["ioctl"], "action": "SCMP_ACT_ALLOW" }));
                for r in reqs {
                    rules.push(deny_rule("ioctl", 1, *r));
                }
            }
        }
    }
    let mut profile = json!({
        "defaultAction": default,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules,
    });
    if let Some(e) = errno {
        profile["defaultErrnoRet"] = json!(e);
    }
    profile
}

/// An OCI runtime-spec (1.0) fragment: process, root, mounts and `linux`.
pub fn oci(policy: &Policy, plan: &Plan) -> Value {
    let caps: Vec<String> = plan
        .capabilities
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    let mut process = json!({
        "noNewPrivileges": true,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": [], "ambient": [],
        },
        "rlimits": plan.rlimits.iter().map(|r| json!({
            "type": format!("RLIMIT_{}", format!("{:?}", r.resource).to_ascii_uppercase()),
            "soft": r.soft, "hard": r.hard,
        })).collect::<Vec<_>>(),
    });
    if let Some(uid) = plan.process.uid {
        process["user"] = json!({
            "uid": uid,
            "gid": plan.process.gid.unwrap_or(uid),
            "additionalGids": plan.process.additional_gids,
        });
    }
    let mounts: Vec<Value> = plan
        .mounts
        .iter()
        .map(|m| match m {
            MountPlan::Tmpfs {
                destination,
                size_bytes,
                ..
            } => json!({
                "destination": destination, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", format!("size={size_bytes}")],
            }),
            MountPlan::Volume {
                source,
                destination,
                read_only,
            } => json!({
                "destination": destination, "type": "bind", "source": source,
                "options": ["rbind", if *read_only { "ro" } else { "rw" }, "nosuid", "nodev"],
            }),
            MountPlan::Named {
                name,
                destination,
                read_only,
                ..
            } => json!({
                "destination": destination, "type": "volume", "source": name,
                "options": [if *read_only { "ro" } else { "rw" }, "nosuid", "nodev"],
            }),
        })
        .collect();
    let mut namespaces: Vec<Value> = plan
        .namespaces
        .iter()
        .map(|n| {
            let t = match n {
                crate::plan::Namespace::Net => "network",
                other => match other {
                    crate::plan::Namespace::User => "user",
                    crate::plan::Namespace::Mount => "mount",
                    crate::plan::Namespace::Pid => "pid",
                    crate::plan::Namespace::Ipc => "ipc",
                    crate::plan::Namespace::Uts => "uts",
                    _ => "cgroup",
                },
            };
            json!({ "type": t })
        })
        .collect();
    namespaces.sort_by_key(|v| v["type"].as_str().map(str::to_string));
    let mut device_rules = vec![json!({ "allow": false, "access": "rwm" })];
    let mut devices = Vec::new();
    for d in &plan.devices {
        device_rules.push(json!({
            "allow": true, "type": d.kind.to_string(), "major": d.major, "minor": d.minor, "access": d.access,
        }));
        devices.push(json!({ "path": d.path, "type": d.kind.to_string(), "major": d.major, "minor": d.minor }));
    }
    let mut resources = json!({ "devices": device_rules });
    if let Some(m) = plan.cgroup.memory_bytes {
        resources["memory"] = json!({ "limit": m, "swap": m });
    }
    if let Some(p) = plan.cgroup.pids {
        resources["pids"] = json!({ "limit": p });
    }
    if let Some(c) = plan.cgroup.cpu_millis {
        resources["cpu"] = json!({ "quota": c * 100, "period": 100_000 });
    }
    let mut seccomp = seccomp_json(policy);
    // Log denied calls (runc 1.1 refuses flags; crun and newer runc accept them).
    if policy.spec.audit.denied_syscalls {
        seccomp["flags"] = json!(["SECCOMP_FILTER_FLAG_LOG"]);
    }
    json!({
        "ociVersion": "1.0.2",
        "annotations": {
            "dev.moat.policy.name": plan.policy_name,
            "dev.moat.policy.digest": format!("sha256:{}", plan.policy_digest),
        },
        "process": process,
        "root": { "readonly": plan.root == crate::plan::RootPlan::ReadOnly },
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "uidMappings": [],
            "gidMappings": [],
            "seccomp": seccomp,
            "resources": resources,
            "devices": devices,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}

/// The AppArmor family name of an address family.
fn apparmor_family(f: u32) -> Option<String> {
    let name = args::SOCKET_FAMILIES.iter().find(|(_, v)| *v == f)?.0;
    Some(name.trim_start_matches("AF_").to_ascii_lowercase())
}

/// An AppArmor profile enforcing the file, capability, network and mount
/// parts of the policy (`apparmor_parser -Q` parses it).
pub fn apparmor(policy: &Policy) -> String {
    let s = &policy.spec;
    let name = format!("moat-{}", policy.name);
    let mut o = String::new();
    o.push_str(&format!(
        "# AppArmor profile generated by `moat policy compile --format apparmor` from policy `{}`.\n",
        policy.name
    ));
    o.push_str("#include <tunables/global>\n\n");
    o.push_str(&format!(
        "profile {name} flags=(attach_disconnected,mediate_deleted) {{\n"
    ));
    o.push_str("  #include <abstractions/base>\n\n");
    o.push_str("  # capabilities granted by the policy (none means none)\n");
    for c in &s.capabilities {
        o.push_str(&format!("  capability {},\n", c.to_ascii_lowercase()));
    }
    o.push_str("\n  # network: socket families the policy allows\n");
    if s.syscalls.allow.contains("socket") {
        match &s.syscalls.conditions.socket_families {
            None => o.push_str("  network,\n"),
            Some(fams) => {
                for f in fams {
                    if let Some(n) = apparmor_family(*f) {
                        o.push_str(&format!("  network {n},\n"));
                    }
                }
            }
        }
    }
    if !s.capabilities.contains("NET_RAW") {
        o.push_str("  deny network raw,\n  deny network packet,\n");
    }
    if s.filesystem.root == crate::model::RootMode::Ephemeral {
        // The whole root is writable (a layer discarded with the
        // container), so written files can be executed too.
        o.push_str(
            "\n  # files: the root is an ephemeral writable layer (`filesystem.root: ephemeral`)\n",
        );
        o.push_str("  / rw,\n  /** rwlkmix,\n");
    } else {
        o.push_str("\n  # files: the root is read-only; writes only where the policy allows,\n");
        o.push_str("  # and nothing written can be executed or mapped executable\n");
        o.push_str("  / r,\n  /** rmkix,\n");
    }
    for t in &s.filesystem.writable {
        o.push_str(&format!("  {}/ rw,\n  {}/** rwlk,\n", t.path, t.path));
    }
    for v in &s.filesystem.volumes {
        if v.read_only {
            o.push_str(&format!("  {}/ r,\n  {}/** rmkix,\n", v.path, v.path));
        } else {
            o.push_str(&format!("  {}/ rw,\n  {}/** rwlk,\n", v.path, v.path));
        }
    }
    o.push_str("  /dev/null rw,\n  /dev/zero rw,\n  /dev/full rw,\n  /dev/random r,\n  /dev/urandom r,\n  /dev/tty rw,\n  /dev/pts/* rw,\n  /dev/ptmx rw,\n");
    for d in &s.devices {
        let mut perm = String::new();
        if d.access.contains('r') {
            perm.push('r');
        }
        if d.access.contains('w') {
            perm.push('w');
        }
        if !perm.is_empty() {
            o.push_str(&format!("  {} {perm},\n", d.path));
        }
    }
    o.push_str("  @{PROC}/** r,\n  @{PROC}/@{pid}/attr/** rw,\n");
    o.push_str("  deny @{PROC}/sysrq-trigger rwklx,\n  deny @{PROC}/kcore rwklx,\n  deny @{PROC}/sys/kernel/** w,\n");
    o.push_str(
        "  deny /sys/firmware/** rwklx,\n  deny /sys/kernel/security/** rwklx,\n  /sys/** r,\n",
    );
    o.push_str("\n  # never: mounts, pivot_root, tracing other processes\n");
    o.push_str("  deny mount,\n  deny umount,\n  deny pivot_root,\n  deny ptrace (trace),\n");
    o.push_str(&format!(
        "\n  signal (send, receive) peer={name},\n  ptrace (read) peer={name},\n}}\n"
    ));
    o
}

/// Kubernetes objects: a Pod with the policy's securityContext, a ConfigMap
/// carrying the Localhost seccomp profile, the RuntimeClass and a
/// NetworkPolicy. Returned as separate documents.
pub fn k8s(policy: &Policy, plan: &Plan, runtime_class: &str) -> Vec<Value> {
    let s = &policy.spec;
    let name = &policy.name;
    let profile_file = format!("moat/{name}.json");
    let labels = json!({ "app.kubernetes.io/name": name, "moat.dev/policy": name });

    let mut pod_sc = json!({
        "runAsNonRoot": s.process.user.is_some_and(|u| u != 0),
        "seccompProfile": { "type": "Localhost", "localhostProfile": profile_file },
    });
    if let Some(u) = s.process.user {
        pod_sc["runAsUser"] = json!(u);
        pod_sc["runAsGroup"] = json!(s.process.group.unwrap_or(u));
    }
    if !s.process.groups.is_empty() {
        pod_sc["supplementalGroups"] = json!(s.process.groups);
    }
    let mut volume_mounts = Vec::new();
    let mut volumes = Vec::new();
    for (i, t) in s.filesystem.writable.iter().enumerate() {
        let vname = format!("writable-{i}");
        volume_mounts.push(json!({ "name": vname, "mountPath": t.path }));
        volumes.push(json!({ "name": vname, "emptyDir": { "medium": "Memory", "sizeLimit": k8s_quantity(t.size_bytes) } }));
    }
    for (i, v) in s.filesystem.volumes.iter().enumerate() {
        let vname = format!("volume-{i}");
        volume_mounts.push(json!({ "name": vname, "mountPath": v.path, "readOnly": v.read_only }));
        volumes
            .push(json!({ "name": vname, "hostPath": { "path": v.source, "type": "Directory" } }));
    }
    let mut limits = Map::new();
    if let Some(m) = s.resources.memory_bytes {
        limits.insert("memory".into(), json!(k8s_quantity(m)));
    }
    if let Some(c) = s.resources.cpu_millis {
        limits.insert("cpu".into(), json!(format!("{c}m")));
    }
    if let Some(d) = s.resources.disk_bytes {
        limits.insert("ephemeral-storage".into(), json!(k8s_quantity(d)));
    }
    let container = json!({
        "name": name,
        "image": "REPLACE-ME",
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": plan.root == crate::plan::RootPlan::ReadOnly,
            "capabilities": { "drop": ["ALL"], "add": plan.capabilities },
            "seccompProfile": { "type": "Localhost", "localhostProfile": profile_file },
            "procMount": "Default",
        },
        "resources": { "limits": limits },
        "volumeMounts": volume_mounts,
    });
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": { "moat.dev/policy-digest": format!("sha256:{}", plan.policy_digest) },
        },
        "spec": {
            "runtimeClassName": runtime_class,
            "automountServiceAccountToken": false,
            "hostNetwork": false, "hostPID": false, "hostIPC": false,
            "enableServiceLinks": false,
            "securityContext": pod_sc,
            "containers": [container],
            "volumes": volumes,
        },
    });
    let profile = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("moat-seccomp-{name}"),
            "annotations": { "moat.dev/install-path": format!("/var/lib/kubelet/seccomp/{profile_file}") },
        },
        "data": { format!("{name}.json"): serde_json::to_string_pretty(&seccomp_json(policy)).unwrap_or_default() },
    });
    let runtime = json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": { "name": runtime_class },
        "handler": runtime_class,
    });
    let egress: Vec<Value> = match s.network.mode {
        NetworkMode::Egress => s
            .network
            .egress
            .iter()
            .map(|r| {
                let mut rule = json!({ "to": [{ "ipBlock": { "cidr": r.cidr } }] });
                if let Some((a, b)) = r.ports {
                    let protos: Vec<&str> = match r.protocol.as_str() {
                        "any" => vec!["TCP", "UDP"],
                        "udp" => vec!["UDP"],
                        _ => vec!["TCP"],
                    };
                    let ports: Vec<Value> = protos
                        .iter()
                        .map(|p| {
                            let mut v = json!({ "protocol": p, "port": a });
                            if b != a {
                                v["endPort"] = json!(b);
                            }
                            v
                        })
                        .collect();
                    rule["ports"] = json!(ports);
                }
                rule
            })
            .collect(),
        _ => Vec::new(),
    };
    let ingress: Vec<Value> = s
        .network
        .publish
        .iter()
        .map(|p| json!({ "ports": [{ "protocol": p.protocol.to_ascii_uppercase(), "port": p.container_port }] }))
        .collect();
    let netpol = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": format!("moat-{name}") },
        "spec": {
            "podSelector": { "matchLabels": { "moat.dev/policy": name } },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    });
    vec![pod, profile, runtime, netpol]
}

/// Bytes as a Kubernetes quantity (`16Mi`), exact.
pub fn k8s_quantity(bytes: u64) -> String {
    let units: [(&str, u64); 8] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("T", 1_000_000_000_000),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("Ki", 1 << 10),
        ("k", 1000),
    ];
    for (suffix, unit) in units {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Emit JSON values as a YAML stream (block style, one `---` per document).
pub fn to_yaml_stream(docs: &[Value]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        emit(d, 0, &mut out);
    }
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("null".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(yaml_string(s)),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(o) if o.is_empty() => Some("{}".into()),
        _ => None,
    }
}

fn yaml_string(s: &str) -> String {
    if s.contains('\n') {
        // JSON strings are valid YAML double-quoted scalars.
        return serde_json::to_string(s).unwrap_or_default();
    }
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !s.starts_with(['-', '.'])
        && !matches!(
            s,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
        )
        && s.parse::<f64>().is_err();
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                let key = yaml_string(k);
                match scalar(val) {
                    Some(s) => out.push_str(&format!("{pad}{key}: {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        emit(val, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match scalar(item) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        let mut inner = String::new();
                        emit(item, indent + 2, &mut inner);
                        // Replace the first line's indentation with "- ".
                        let trimmed = &inner[indent + 2..];
                        out.push_str(&format!("{pad}- {trimmed}"));
                    }
                }
            }
        }
        other => {
            if let Some(s) = scalar(other) {
                out.push_str(&format!("{pad}{s}\n"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    #[test]
    fn yaml_stream_round_trips_through_the_parser() {
        let v = json!({
            "a": 1, "b": "x y", "c": [1, "two", {"d": true, "e": [], "f": {"g": "yes"}}],
            "h": {"i": null, "j": "multi\nline"}, "k": "10.0.0.0/8", "l": "-x",
        });
        let text = to_yaml_stream(std::slice::from_ref(&v));
        let doc = text.strip_prefix("---\n").unwrap();
        let node = yaml::parse(doc).unwrap();
        let yaml::Value::Map(items) = node.value else {
            panic!("not a map: {text}")
        };
        assert_eq!(items.len(), 6, "{text}");
        assert!(text.contains("b: \"x y\"\n"), "{text}");
        assert!(text.contains("  - two\n"), "{text}");
        assert!(text.contains("f:\n      g: \"yes\"\n"), "{text}");
    }

    #[test]
    fn an_ephemeral_root_is_writable_in_every_export() {
        let text = "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: e\nspec:\n  extends: baseline\n  filesystem:\n    root: ephemeral\n";
        let read_only = text.replace("  filesystem:\n    root: ephemeral\n", "");
        for (text, writable) in [(text, true), (read_only.as_str(), false)] {
            let p = Policy::parse(text, "e.yaml").unwrap();
            let plan = crate::compile(&p).unwrap();
            assert_eq!(oci(&p, &plan)["root"]["readonly"], !writable);
            let pod = &k8s(&p, &plan, "moat")[0];
            let sc = &pod["spec"]["containers"][0]["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], !writable, "{pod}");
            assert_eq!(apparmor(&p).contains("  /** rwlkmix,\n"), writable);
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(k8s_quantity(16 << 20), "16Mi");
        assert_eq!(k8s_quantity(1 << 30), "1Gi");
        assert_eq!(k8s_quantity(1000), "1k");
        assert_eq!(k8s_quantity(2_000_000_000), "2G");
        assert_eq!(k8s_quantity(999), "999");
    }
}
