//! What a policy grants, in words a reviewer reads and in numbers, compared
//! with Docker's defaults; and the difference between two policies.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::model::{Conditions, IoctlRule, NetworkMode, Policy, RootMode, Spec};
use crate::plan::IsolationRequirement;
use crate::{args, docker, syscalls};

/// The numbers and facts `moat policy explain` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub name: String,
    pub digest: String,
    pub extends: Vec<String>,
    pub isolation: String,
    pub capabilities: Vec<String>,
    pub capabilities_count: usize,
    pub docker_capabilities_count: usize,
    pub syscalls_allowed: usize,
    pub syscalls_total: usize,
    pub docker_syscalls_allowed: usize,
    /// Allowed by Docker's default profile but not by this policy.
    pub syscalls_denied_that_docker_allows: Vec<String>,
    /// Allowed by this policy but not unconditionally by Docker's default.
    pub syscalls_allowed_that_docker_denies: Vec<String>,
    /// Families (`@group`) entirely denied.
    pub groups_denied: Vec<String>,
    pub default_action: String,
    pub conditions: Vec<String>,
    /// `read-only`, or `ephemeral (...)` with the writable layer's size.
    pub root: String,
    pub writable_paths: Vec<String>,
    pub volumes: Vec<String>,
    /// What a granted host directory adds on the host when the container
    /// runs in a micro-VM (`None`: no host directory granted, or sandbox
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_host_directories: Option<String>,
    pub network: String,
    pub devices: Vec<String>,
    pub resources: Vec<String>,
    pub exec: bool,
    pub audit_denied_syscalls: bool,
    /// The `image` trust rules, one line each (empty: any image).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust: Vec<String>,
}

fn human_bytes(b: u64) -> String {
    crate::render::k8s_quantity(b)
}

/// Explain a policy.
pub fn explain(policy: &Policy) -> Explanation {
    let s = &policy.spec;
    let allow = &s.syscalls.allow;
    let docker: BTreeSet<&str> = docker::SYSCALLS.iter().copied().collect();
    let ordered = |set: Vec<&str>| -> Vec<String> { set.into_iter().map(str::to_string).collect() };
    let denied_docker = ordered(
        syscalls::names()
            .filter(|n| docker.contains(n) && !allow.contains(*n))
            .collect(),
    );
    let extra = ordered(
        syscalls::names()
            .filter(|n| !docker.contains(n) && allow.contains(*n))
            .collect(),
    );
    let groups_denied: Vec<String> = syscalls::GROUPS
        .iter()
        .filter(|g| g.members.iter().all(|m| !allow.contains(*m)))
        .map(|g| g.name.to_string())
        .collect();

    let c = &s.syscalls.conditions;
    let mut conditions = Vec::new();
    if allow.contains("socket") {
        if let Some(f) = &c.socket_families {
            let names: Vec<String> = f
                .iter()
                .map(|v| args::name_of(args::SOCKET_FAMILIES, *v))
                .collect();
            conditions.push(format!("socket: only {}", names.join(", ")));
        }
    }
    if c.clone_deny_flags != 0 && allow.contains("clone") {
        let names: Vec<&str> = args::CLONE_FLAGS
            .iter()
            .filter(|(_, v)| c.clone_deny_flags & v != 0)
            .map(|(n, _)| *n)
            .collect();
        conditions.push(format!(
            "clone: refused with {}; clone3 answers ENOSYS so the C library falls back to clone",
            names.join(", ")
        ));
    }
    if allow.contains("ioctl") {
        match &c.ioctl.enforced() {
            IoctlRule::Any => {}
            IoctlRule::Allow(r) => conditions.push(format!(
                "ioctl: only {}",
                r.iter()
                    .map(|v| args::name_of(args::IOCTL_REQUESTS, *v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            IoctlRule::Deny(r) => conditions.push(format!(
                "ioctl: all but {}",
                r.iter()
                    .map(|v| args::name_of(args::IOCTL_REQUESTS, *v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    let network = match s.network.mode {
        NetworkMode::None => "none: an empty network namespace, no interface up".to_string(),
        NetworkMode::Loopback => "loopback only".to_string(),
        NetworkMode::Egress => {
            let mut parts: Vec<String> = s
                .network
                .egress
                .iter()
                .map(|r| {
                    let ports = match r.ports {
                        None => "all ports".to_string(),
                        Some((a, b)) if a == b => format!("port {a}"),
                        Some((a, b)) => format!("ports {a}-{b}"),
                    };
                    format!("to {} {} {}", r.cidr, r.protocol, ports)
                })
                .collect();
            if s.network.dns {
                parts.push("DNS to the host's resolver (port 53)".to_string());
            }
            if parts.is_empty() {
                parts.push("no outbound destinations".to_string());
            }
            for p in &s.network.publish {
                parts.push(format!(
                    "publish host {} -> container {}/{}",
                    p.host_port, p.container_port, p.protocol
                ));
            }
            format!("egress: {}", parts.join("; "))
        }
    };
    let mut resources = Vec::new();
    let r = &s.resources;
    if let Some(m) = r.memory_bytes {
        resources.push(format!("memory {}", human_bytes(m)));
    }
    if let Some(c) = r.cpu_millis {
        resources.push(format!("cpus {}", c as f64 / 1000.0));
    }
    resources.push(format!("pids {}", r.pids.unwrap_or(crate::DEFAULT_PIDS)));
    resources.push(format!(
        "open files {}",
        r.open_files.unwrap_or(crate::DEFAULT_OPEN_FILES)
    ));
    if let Some(d) = r.disk_bytes {
        resources.push(format!("vm disk {}", human_bytes(d)));
    }

    Explanation {
        name: policy.name.clone(),
        digest: policy.digest(),
        extends: policy.extends.clone(),
        isolation: match s.isolation {
            IsolationRequirement::Vm => "vm: only in a micro-VM with its own kernel",
            IsolationRequirement::Sandbox => "sandbox: the namespace sandbox",
            IsolationRequirement::Any => {
                "any: a micro-VM where an accelerator works, else the sandbox"
            }
        }
        .to_string(),
        capabilities: s.capabilities.iter().cloned().collect(),
        capabilities_count: s.capabilities.len(),
        docker_capabilities_count: docker::CAPABILITIES.len(),
        syscalls_allowed: allow.len(),
        syscalls_total: syscalls::X86_64.len(),
        docker_syscalls_allowed: docker::SYSCALLS.len(),
        syscalls_denied_that_docker_allows: denied_docker,
        syscalls_allowed_that_docker_denies: extra,
        groups_denied,
        default_action: s.syscalls.default_action.as_str().to_string(),
        conditions,
        root: match s.filesystem.root {
            RootMode::ReadOnly => "read-only".to_string(),
            RootMode::Ephemeral => format!(
                "ephemeral (a writable layer over the image, {} in memory, discarded with the container; the stored image is never written)",
                human_bytes(
                    s.resources
                        .disk_bytes
                        .unwrap_or(crate::compile::DEFAULT_EPHEMERAL_ROOT_BYTES)
                )
            ),
        },
        writable_paths: s
            .filesystem
            .writable
            .iter()
            .map(|t| format!("{} (tmpfs, {})", t.path, human_bytes(t.size_bytes)))
            .collect(),
        volumes: s
            .filesystem
            .volumes
            .iter()
            .map(|v| {
                format!(
                    "{} -> {} ({})",
                    v.source,
                    v.path,
                    if v.read_only { "ro" } else { "rw" }
                )
            })
            .chain(s.filesystem.volume_grants.iter().map(volume_grant))
            .chain(s.filesystem.named_volumes.iter().map(named_volume))
            .collect(),
        vm_host_directories: vm_host_directories(s),
        network,
        devices: s
            .devices
            .iter()
            .map(|d| {
                format!(
                    "{} ({} {}:{}, {})",
                    d.path, d.kind, d.major, d.minor, d.access
                )
            })
            .collect(),
        resources,
        exec: s.exec,
        audit_denied_syscalls: s.audit.denied_syscalls,
        trust: trust_lines(&s.image),
    }
}

/// The line on host directories in a micro-VM, where the policy grants
/// any and may run in one.
fn vm_host_directories(s: &Spec) -> Option<String> {
    let n = s.filesystem.volumes.len() + s.filesystem.volume_grants.len();
    if n == 0 || s.isolation == IsolationRequirement::Sandbox {
        return None;
    }
    Some(HOST_DIRECTORY_IN_VM.to_string())
}

/// What one host directory costs a micro-VM (docs/volumes.md).
pub const HOST_DIRECTORY_IN_VM: &str = "in a micro-VM each mounted host directory adds a virtiofsd process on the host (root, its own mount, pid and net namespaces where only that directory is visible, read-only there when granted ro, no device nodes, its own seccomp filter) that serves the guest's file requests";

/// `spec.image` as lines for `explain`.
fn trust_lines(i: &crate::model::ImageRules) -> Vec<String> {
    let mut v = Vec::new();
    if !i.allowed.is_empty() {
        v.push(format!("only images named {}", i.allowed.join(", ")));
    }
    if i.require_digest {
        v.push("images must be named by digest (tags refused)".to_string());
    }
    if !i.digests.is_empty() {
        v.push(format!("only digests {}", i.digests.join(", ")));
    }
    for r in &i.signers {
        v.push(format!(
            "{} must be signed by the key in {}",
            r.repository, r.key
        ));
    }
    v
}

impl Explanation {
    /// The text form.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let ext = if self.extends.is_empty() {
            String::new()
        } else {
            format!(" (extends {})", self.extends.join(" <- "))
        };
        o.push_str(&format!("policy {}{ext}\n", self.name));
        o.push_str(&format!("  digest        sha256:{}\n", self.digest));
        o.push_str(&format!("  isolation     {}\n", self.isolation));
        o.push_str(&format!(
            "  process       root file system {}, no_new_privs, all namespaces (user, mount, pid, ipc, uts, net, cgroup)\n",
            self.root
        ));
        let caps = if self.capabilities.is_empty() {
            "none".to_string()
        } else {
            self.capabilities.join(", ")
        };
        o.push_str(&format!(
            "  capabilities  {} of 41 ({caps}); Docker's default grants {}\n",
            self.capabilities_count, self.docker_capabilities_count
        ));
        o.push_str(&format!(
            "  syscalls      {} of {} allowed; Docker's default allows {} unconditionally\n",
            self.syscalls_allowed, self.syscalls_total, self.docker_syscalls_allowed
        ));
        o.push_str(&format!(
            "                {} that Docker allows are denied here; {} allowed here that Docker does not allow unconditionally\n",
            self.syscalls_denied_that_docker_allows.len(),
            self.syscalls_allowed_that_docker_denies.len()
        ));
        if !self.groups_denied.is_empty() {
            o.push_str(&format!(
                "                families denied: {}\n",
                self.groups_denied.join(" ")
            ));
        }
        o.push_str(&format!(
            "                anything else: {}\n",
            match self.default_action.as_str() {
                "errno" => "fails with EPERM",
                "kill" => "kills the process (SIGSYS)",
                _ => "allowed and logged (log mode, for building a policy)",
            }
        ));
        for c in &self.conditions {
            o.push_str(&format!("                {c}\n"));
        }
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        o.push_str(&format!("  writable      {}\n", list(&self.writable_paths)));
        o.push_str(&format!("  volumes       {}\n", list(&self.volumes)));
        if let Some(v) = &self.vm_host_directories {
            o.push_str(&format!("                {v}\n"));
        }
        o.push_str(&format!("  network       {}\n", self.network));
        o.push_str(&format!(
            "  devices       {} (plus the standard /dev/null, zero, full, random, urandom, tty, pts)\n",
            list(&self.devices)
        ));
        o.push_str(&format!("  resources     {}\n", self.resources.join(", ")));
        o.push_str(&format!(
            "  exec          {}\n",
            if self.exec {
                "allowed: processes may be started in a running container"
            } else {
                "denied: running containers are immutable"
            }
        ));
        o.push_str(&format!(
            "  audit         {}\n",
            if self.audit_denied_syscalls {
                "denied system calls are logged"
            } else {
                "denied system calls are not logged"
            }
        ));
        for (n, t) in self.trust.iter().enumerate() {
            let head = if n == 0 {
                "  images        "
            } else {
                "                "
            };
            o.push_str(&format!("{head}{t}\n"));
        }
        o
    }
}

/// One changed grant between two policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `+` added, `-` removed, `~` changed.
    pub sign: char,
    pub what: String,
    pub detail: String,
}

/// A list of names as a policy writes it: `[A, B]`.
fn names<S: AsRef<str>>(it: impl Iterator<Item = S>) -> String {
    let v: Vec<String> = it.map(|s| s.as_ref().to_string()).collect();
    format!("[{}]", v.join(", "))
}

/// Which grants `b` adds to or removes from `a`, each in the words of the
/// policy file (keys as written there, names instead of numbers).
pub fn diff(a: &Policy, b: &Policy) -> Vec<Change> {
    let mut out = Vec::new();
    let (sa, sb) = (&a.spec, &b.spec);
    fn sets<T: Ord + Clone + ToString>(
        out: &mut Vec<Change>,
        what: &str,
        a: &BTreeSet<T>,
        b: &BTreeSet<T>,
    ) {
        for x in b.difference(a) {
            out.push(Change {
                sign: '+',
                what: what.into(),
                detail: x.to_string(),
            });
        }
        for x in a.difference(b) {
            out.push(Change {
                sign: '-',
                what: what.into(),
                detail: x.to_string(),
            });
        }
    }
    fn changed(out: &mut Vec<Change>, what: &str, x: String, y: String) {
        if x != y {
            out.push(Change {
                sign: '~',
                what: what.into(),
                detail: format!("{x} -> {y}"),
            });
        }
    }
    let isolation = |i: IsolationRequirement| match i {
        IsolationRequirement::Vm => "vm",
        IsolationRequirement::Sandbox => "sandbox",
        IsolationRequirement::Any => "any",
    };
    changed(
        &mut out,
        "isolation",
        isolation(sa.isolation).into(),
        isolation(sb.isolation).into(),
    );
    changed(
        &mut out,
        "syscalls.default",
        sa.syscalls.default_action.as_str().into(),
        sb.syscalls.default_action.as_str().into(),
    );
    // Argument conditions, in the policy's own words.
    let (ca, cb) = (&sa.syscalls.conditions, &sb.syscalls.conditions);
    let families = |c: &Conditions| match &c.socket_families {
        None => "any".to_string(),
        Some(f) => names(f.iter().map(|v| args::name_of(args::SOCKET_FAMILIES, *v))),
    };
    changed(
        &mut out,
        "syscalls.conditions.socket.families",
        families(ca),
        families(cb),
    );
    let clone_flags = |c: &Conditions| -> BTreeSet<String> {
        args::CLONE_FLAGS
            .iter()
            .filter(|(_, v)| c.clone_deny_flags & v != 0)
            .map(|(n, _)| n.to_string())
            .collect()
    };
    sets(
        &mut out,
        "syscalls.conditions.clone.deny_flags",
        &clone_flags(ca),
        &clone_flags(cb),
    );
    let ioctl = |c: &Conditions| match c.ioctl.enforced() {
        IoctlRule::Any => "any".to_string(),
        IoctlRule::Allow(r) => format!(
            "allow {}",
            names(r.iter().map(|v| args::name_of(args::IOCTL_REQUESTS, *v)))
        ),
        IoctlRule::Deny(r) => format!(
            "deny {}",
            names(r.iter().map(|v| args::name_of(args::IOCTL_REQUESTS, *v)))
        ),
    };
    changed(&mut out, "syscalls.conditions.ioctl", ioctl(ca), ioctl(cb));
    changed(
        &mut out,
        "network",
        sa.network.mode.as_str().into(),
        sb.network.mode.as_str().into(),
    );
    let egress = |p: &Spec| -> BTreeSet<String> {
        p.network
            .egress
            .iter()
            .map(|r| {
                let ports = match r.ports {
                    None => String::new(),
                    Some((x, y)) if x == y => format!(", ports: {x}"),
                    Some((x, y)) => format!(", ports: {x}-{y}"),
                };
                format!("{{to: {}{ports}, protocol: {}}}", r.cidr, r.protocol)
            })
            .collect()
    };
    changed(
        &mut out,
        "network.dns",
        sa.network.dns.to_string(),
        sb.network.dns.to_string(),
    );
    sets(&mut out, "network.egress", &egress(sa), &egress(sb));
    let publish = |p: &Spec| -> BTreeSet<String> {
        p.network
            .publish
            .iter()
            .map(|x| {
                format!(
                    "{{host: {}, container: {}, protocol: {}}}",
                    x.host_port, x.container_port, x.protocol
                )
            })
            .collect()
    };
    sets(&mut out, "network.publish", &publish(sa), &publish(sb));
    let (ra, rb) = (&sa.resources, &sb.resources);
    let bytes = |v: Option<u64>, none: &str| v.map_or(none.to_string(), human_bytes);
    let count = |v: Option<u64>, default: u64| v.unwrap_or(default).to_string();
    let cpus =
        |v: Option<u64>| v.map_or("unlimited".to_string(), |m| (m as f64 / 1000.0).to_string());
    changed(
        &mut out,
        "resources.memory",
        bytes(ra.memory_bytes, "unlimited"),
        bytes(rb.memory_bytes, "unlimited"),
    );
    changed(
        &mut out,
        "resources.cpus",
        cpus(ra.cpu_millis),
        cpus(rb.cpu_millis),
    );
    changed(
        &mut out,
        "resources.pids",
        count(ra.pids, crate::DEFAULT_PIDS),
        count(rb.pids, crate::DEFAULT_PIDS),
    );
    changed(
        &mut out,
        "resources.open_files",
        count(ra.open_files, crate::DEFAULT_OPEN_FILES),
        count(rb.open_files, crate::DEFAULT_OPEN_FILES),
    );
    changed(
        &mut out,
        "resources.disk",
        bytes(ra.disk_bytes, "256Mi"),
        bytes(rb.disk_bytes, "256Mi"),
    );
    let id = |v: Option<u32>| v.map_or("the image's".to_string(), |x| x.to_string());
    changed(
        &mut out,
        "process.user",
        id(sa.process.user),
        id(sb.process.user),
    );
    changed(
        &mut out,
        "process.group",
        id(sa.process.group),
        id(sb.process.group),
    );
    let gids = |p: &Spec| -> BTreeSet<u32> { p.process.groups.iter().copied().collect() };
    sets(&mut out, "process.groups", &gids(sa), &gids(sb));
    let strings = |v: &[String]| -> BTreeSet<String> { v.iter().cloned().collect() };
    sets(
        &mut out,
        "image.allowed",
        &strings(&sa.image.allowed),
        &strings(&sb.image.allowed),
    );
    sets(
        &mut out,
        "image.digests",
        &strings(&sa.image.digests),
        &strings(&sb.image.digests),
    );
    changed(
        &mut out,
        "image.require_digest",
        sa.image.require_digest.to_string(),
        sb.image.require_digest.to_string(),
    );
    let fail_on = |p: &Spec| {
        p.vulnerabilities
            .fail_on
            .map_or("none".to_string(), |s| format!("{s:?}").to_lowercase())
    };
    changed(
        &mut out,
        "vulnerabilities.fail_on",
        fail_on(sa),
        fail_on(sb),
    );
    let ignores = |p: &Spec| -> BTreeSet<String> {
        p.vulnerabilities
            .ignore
            .iter()
            .map(|i| {
                format!(
                    "{{id: {}, expires: {}, reason: {}}}",
                    i.id, i.expires, i.reason
                )
            })
            .collect()
    };
    sets(
        &mut out,
        "vulnerabilities.ignore",
        &ignores(sa),
        &ignores(sb),
    );
    changed(&mut out, "exec", sa.exec.to_string(), sb.exec.to_string());
    changed(
        &mut out,
        "audit.denied_syscalls",
        sa.audit.denied_syscalls.to_string(),
        sb.audit.denied_syscalls.to_string(),
    );
    sets(&mut out, "capability", &sa.capabilities, &sb.capabilities);
    sets(&mut out, "syscall", &sa.syscalls.allow, &sb.syscalls.allow);
    let w = |p: &Policy| -> BTreeSet<String> {
        p.spec
            .filesystem
            .writable
            .iter()
            .map(|t| format!("{} ({})", t.path, human_bytes(t.size_bytes)))
            .collect()
    };
    changed(
        &mut out,
        "filesystem.root",
        sa.filesystem.root.as_str().to_string(),
        sb.filesystem.root.as_str().to_string(),
    );
    sets(&mut out, "writable", &w(a), &w(b));
    let v = |p: &Policy| -> BTreeSet<String> {
        p.spec
            .filesystem
            .volumes
            .iter()
            .map(|v| {
                format!(
                    "{} -> {} ({})",
                    v.source,
                    v.path,
                    if v.read_only { "ro" } else { "rw" }
                )
            })
            .chain(p.spec.filesystem.volume_grants.iter().map(volume_grant))
            .chain(p.spec.filesystem.named_volumes.iter().map(named_volume))
            .collect()
    };
    sets(&mut out, "volume", &v(a), &v(b));
    let d = |p: &Policy| -> BTreeSet<String> {
        p.spec
            .devices
            .iter()
            .map(|d| format!("{} {} {}:{} {}", d.path, d.kind, d.major, d.minor, d.access))
            .collect()
    };
    sets(&mut out, "device", &d(a), &d(b));
    out
}

/// A named-volume grant as `explain` and `diff` show it.
fn named_volume(g: &crate::model::NamedVolumeGrant) -> String {
    format!(
        "named volume {} (moat run -v NAME:DIR, {})",
        g.name,
        if g.read_only { "ro" } else { "rw" }
    )
}

/// A host-directory grant for `-v` only, as `explain` and `diff` show it.
fn volume_grant(g: &crate::model::VolumeGrant) -> String {
    format!(
        "{} and below (moat run -v HOSTDIR:DIR only, {})",
        g.source,
        if g.read_only { "ro" } else { "rw" }
    )
}
