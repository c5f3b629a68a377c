//! A bundle's `config.json`, checked against the moat policy it runs
//! under and turned into what the sandbox applies. The policy is never
//! widened: a config that asks for more than it grants is refused with the
//! grant and the policy named; what it asks for within the policy is kept,
//! and the policy's own limits (capabilities, filter, rlimits, cgroup
//! limits) narrow the rest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moat_plan::{caps, Plan, SeccompProgram};
use moat_privdrop::{CapSets, DropSpec, Exec};
use moat_sandbox::oci::{OciDevice, OciHook, OciMount};
use oci_spec::runtime::{Capabilities, Spec};

use crate::site::{Isolation, Site};

mod limits;
mod namespaces;
#[cfg(test)]
mod tests;

use limits::{cgroup_request, plan_rlimit_number, rlimit_number};
use namespaces::{ns_file, ns_flag, same_as_host, sysctl_allowed, REQUIRED};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {msg}; fix config.json (runtime-spec 1.x)")]
    Config { path: String, msg: String },
    #[error("config.json asks for {what}, which policy {policy:?} does not grant; {fix}")]
    Refused {
        what: String,
        policy: String,
        fix: &'static str,
    },
    #[error(transparent)]
    Site(#[from] crate::site::SiteError),
    #[error("compiling policy {policy:?}: {source}")]
    Compile {
        policy: String,
        #[source]
        source: moat_policy::PolicyError,
    },
    #[error("linux.seccomp of config.json: {0}")]
    Seccomp(String),
    #[error("{0}")]
    Spec(#[from] moat_privdrop::SpecError),
}

const FIX_POLICY: &str = "run it under a policy that grants it (annotation moat.dev/policy), or drop the request (e.g. no --privileged, --cap-add, --device)";

/// A loaded bundle.
pub struct Bundle {
    pub dir: PathBuf,
    pub config: Spec,
    pub rootfs: PathBuf,
    pub annotations: HashMap<String, String>,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let dir = std::fs::canonicalize(dir).map_err(|e| BundleError::Config {
            path: dir.display().to_string(),
            msg: format!("bundle directory: {e}"),
        })?;
        let file = dir.join("config.json");
        let text = std::fs::read_to_string(&file).map_err(|e| BundleError::Config {
            path: file.display().to_string(),
            msg: e.to_string(),
        })?;
        // serde_json's own message names the field, line and column.
        let config: Spec = serde_json::from_str(&text).map_err(|e| BundleError::Config {
            path: file.display().to_string(),
            msg: e.to_string(),
        })?;
        let root = config.root().as_ref().ok_or_else(|| BundleError::Config {
            path: file.display().to_string(),
            msg: "no root".into(),
        })?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        let rootfs = std::fs::canonicalize(&rootfs).map_err(|e| BundleError::Config {
            path: file.display().to_string(),
            msg: format!("root.path {}: {e}", rootfs.display()),
        })?;
        let annotations = config.annotations().clone().unwrap_or_default();
        Ok(Bundle {
            dir,
            config,
            rootfs,
            annotations,
        })
    }

    fn err(&self, msg: impl Into<String>) -> BundleError {
        BundleError::Config {
            path: self.dir.join("config.json").display().to_string(),
            msg: msg.into(),
        }
    }
}

/// Hooks the front end runs itself (the init runs the others).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RuntimeHooks {
    pub create_runtime: Vec<OciHook>,
    pub poststart: Vec<OciHook>,
    pub poststop: Vec<OciHook>,
}

/// The cgroup of a container: where, and the limits to write.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CgroupRequest {
    pub path: String,
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub pids: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub cpuset_cpus: Option<String>,
    /// v1 device rules in order: (allow, "c 1:3 rwm").
    pub devices: Vec<(bool, String)>,
    /// Further files to write: (v1 hierarchy, v1 file, v2 file, value,
    /// required). A file the host lacks is skipped unless required.
    pub files: Vec<(String, String, String, String, bool)>,
}

/// What a created container needs, all decided before anything starts.
pub struct Prepared {
    pub isolation: Isolation,
    pub policy: String,
    pub plan: Plan,
    pub init: moat_sandbox::oci::OciInit,
    pub cgroup: CgroupRequest,
    pub hooks: RuntimeHooks,
    /// The caller's own filter, stacked under the policy's.
    pub caller_seccomp: SeccompProgram,
    pub warnings: Vec<String>,
    /// Notices for --debug only.
    pub debug: Vec<String>,
}

/// The capabilities any runc caller grants by default: narrowed to the
/// policy silently. Any other one must be granted by the policy.
fn is_default_cap(name: &str) -> bool {
    caps::DOCKER_DEFAULT.contains(&name)
}

fn cap_mask(
    set: &Option<Capabilities>,
    which: &str,
    plan: &Plan,
    policy: &str,
) -> Result<u64, BundleError> {
    let mut mask = 0u64;
    for c in set.iter().flatten() {
        let full = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let name = full.trim_start_matches("CAP_").to_string();
        let granted = plan.capabilities.contains(&name);
        if !granted {
            if is_default_cap(&name) {
                continue;
            }
            return Err(BundleError::Refused {
                what: format!("capability {full} (process.capabilities.{which})"),
                policy: policy.to_string(),
                fix: FIX_POLICY,
            });
        }
        if let Some(n) = caps::number(&name) {
            mask |= 1 << n;
        }
    }
    Ok(mask)
}

pub fn prepare(b: &Bundle, site: &Site, id: &str) -> Result<Prepared, BundleError> {
    let c = &b.config;
    let isolation = site.isolation_for(&b.annotations)?;
    let policy = site.policy_for(&b.annotations, &b.dir, &b.rootfs)?;
    let pname = policy.name.clone();
    let plan = moat_policy::compile(&policy).map_err(|source| BundleError::Compile {
        policy: pname.clone(),
        source,
    })?;
    let refuse = |what: String| BundleError::Refused {
        what,
        policy: pname.clone(),
        fix: FIX_POLICY,
    };
    let mut warnings = Vec::new();
    let mut debug = Vec::new();

    let process = c.process().as_ref().ok_or_else(|| b.err("no process"))?;
    let linux = c.linux().clone().unwrap_or_default();

    // Namespaces.
    let mut new_ns = 0;
    let mut join = Vec::new();
    let mut new_user = None;
    for ns in linux.namespaces().iter().flatten() {
        let flag = ns_flag(ns.typ());
        if flag == 0x80 {
            return Err(b.err("time namespaces are not supported"));
        }
        match ns.path() {
            Some(p) => {
                let host = same_as_host(p, ns_file(flag)).map_err(|e| {
                    b.err(format!(
                        "linux.namespaces: {} namespace path {}: {e}",
                        ns_file(flag),
                        p.display()
                    ))
                })?;
                if host {
                    return Err(refuse(format!(
                        "the host's own {} namespace ({})",
                        ns_file(flag),
                        p.display()
                    )));
                }
                join.push((flag, p.clone()));
            }
            None if flag == libc::CLONE_NEWUSER => {
                let map = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
                    m.iter()
                        .flatten()
                        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
                        .collect::<String>()
                };
                let (u, g) = (map(linux.uid_mappings()), map(linux.gid_mappings()));
                if u.is_empty() || g.is_empty() {
                    return Err(b.err(
                        "a new user namespace needs linux.uidMappings and linux.gidMappings",
                    ));
                }
                new_user = Some((u, g));
            }
            None => new_ns |= flag,
        }
    }
    let has = |f: libc::c_int| new_ns & f != 0 || join.iter().any(|(g, _)| *g == f);
    for (flag, what) in REQUIRED {
        if !has(*flag) {
            return Err(refuse(format!("no {} namespace ({what})", ns_file(*flag))));
        }
    }

    // Capabilities: the caller's sets, never beyond the policy.
    let sets = match process.capabilities() {
        Some(cs) => {
            let e = cap_mask(cs.effective(), "effective", &plan, &pname)?;
            let p = cap_mask(cs.permitted(), "permitted", &plan, &pname)?;
            let i = cap_mask(cs.inheritable(), "inheritable", &plan, &pname)?;
            let bnd = cap_mask(cs.bounding(), "bounding", &plan, &pname)?;
            let a = cap_mask(cs.ambient(), "ambient", &plan, &pname)?;
            CapSets {
                bounding: bnd,
                effective: e & p,
                permitted: p & bnd,
                inheritable: i & bnd,
                ambient: a & p & i & bnd,
            }
        }
        None => CapSets::default(),
    };

    // Devices beyond the defaults need a policy grant.
    let mut devices = default_devices(process.terminal().unwrap_or(false));
    for d in linux.devices().iter().flatten() {
        let path = d.path().display().to_string();
        let granted = plan
            .devices
            .iter()
            .any(|g| g.path == path && g.major as i64 == d.major() && g.minor as i64 == d.minor());
        let default = devices.iter().any(|x| x.path == path);
        let kind = serde_json::to_value(d.typ())
            .ok()
            .and_then(|v| v.as_str().and_then(|s| s.chars().next()))
            .unwrap_or('c');
        // A FIFO reaches no hardware: it needs no grant.
        if !granted && !default && kind != 'p' {
            return Err(refuse(format!("device {path}")));
        }
        devices.retain(|x| x.path != path);
        devices.push(OciDevice {
            path,
            kind,
            major: d.major(),
            minor: d.minor(),
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }

    // Seccomp: the caller's filter is kept and the policy's stacked on it.
    let caller_seccomp = match linux.seccomp() {
        Some(s) => {
            let (prog, notes) =
                crate::seccomp::compile(s).map_err(|e| BundleError::Seccomp(format!("{e:#}")))?;
            if let Some(n) = notes.unknown_notice() {
                debug.push(n);
            }
            // The flags change no verdict of the filter: SPEC_ALLOW would
            // turn a speculative-execution mitigation off, so moat keeps
            // it; LOG and TSYNC (one thread here) are not needed.
            if notes.flags.spec_allow {
                warnings.push("linux.seccomp.flags SECCOMP_FILTER_FLAG_SPEC_ALLOW is ignored: moat keeps the speculative store bypass mitigation".into());
            }
            if notes.flags.log {
                debug.push("linux.seccomp.flags SECCOMP_FILTER_FLAG_LOG is not applied to the caller's filter".into());
            }
            prog
        }
        None if site.allow_unconfined_seccomp => SeccompProgram::default(),
        None => {
            return Err(BundleError::Refused {
                what: "no seccomp filter (unconfined)".into(),
                policy: pname.clone(),
                fix: "keep the caller's default profile (no --security-opt seccomp=unconfined), or set allow_unconfined_seccomp: true in /etc/moat/oci.yaml (moat's policy filter applies either way)",
            })
        }
    };

    // Sysctls: namespaced ones only.
    let mut sysctl = Vec::new();
    for (k, v) in linux.sysctl().iter().flatten() {
        if !sysctl_allowed(
            k,
            has(libc::CLONE_NEWNET),
            has(libc::CLONE_NEWIPC),
            has(libc::CLONE_NEWUTS),
        ) {
            return Err(refuse(format!(
                "sysctl {k} (not namespaced: it would change the host)"
            )));
        }
        sysctl.push((k.clone(), v.clone()));
    }

    if let Some(profile) = process.apparmor_profile() {
        if !profile.is_empty() && !std::path::Path::new("/sys/kernel/security/apparmor").exists() {
            warnings.push(format!(
                "process.apparmorProfile {profile:?} is not applied: no AppArmor on this host"
            ));
        }
    }

    // rlimits: the caller's, each at most the policy's for that resource.
    let mut rlimits: Vec<(u32, u64, u64)> = Vec::new();
    for r in process.rlimits().iter().flatten() {
        let n = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .and_then(|s| rlimit_number(&s))
            .ok_or_else(|| b.err("unknown rlimit type"))?;
        rlimits.push((n, r.soft(), r.hard()));
    }
    for pr in &plan.rlimits {
        let n = plan_rlimit_number(pr.resource);
        match rlimits.iter_mut().find(|(m, _, _)| *m == n) {
            Some(r) => {
                r.1 = r.1.min(pr.soft);
                r.2 = r.2.min(pr.hard);
            }
            None => rlimits.push((n, pr.soft, pr.hard)),
        }
    }

    // The process.
    let user = process.user();
    let uid = user.uid();
    let gid = user.gid();
    let groups: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    let args: Vec<String> = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(b.err("process.args is empty"));
    }
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let cwd = process.cwd().display().to_string();
    let drop = DropSpec::unprivileged(uid, gid, &groups)
        .with_cwd(&cwd)?
        .with_capability_sets(sets)
        .with_raw_rlimits(&rlimits)?
        .with_extra_seccomp(&caller_seccomp);
    let mut drop = with_policy_filter(drop, &plan);
    if site.honour_new_privileges && process.no_new_privileges() != Some(true) {
        drop = drop.with_new_privileges_allowed();
    }
    let exec = Exec::new(&args, &env)?;

    // Mounts.
    let mut mounts = Vec::new();
    for m in c.mounts().iter().flatten() {
        let fstype = m.typ().clone().unwrap_or_else(|| "bind".into());
        let options = m.options().clone().unwrap_or_default();
        let mut source = m
            .source()
            .as_ref()
            .map(|s| s.display().to_string())
            .unwrap_or_default();
        let is_bind = fstype == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if is_bind && !source.starts_with('/') {
            source = b.dir.join(&source).display().to_string();
        }
        mounts.push(OciMount {
            destination: m.destination().display().to_string(),
            fstype,
            source,
            options,
        });
    }

    let mut masked: Vec<String> = linux.masked_paths().clone().unwrap_or_default();
    for p in MOAT_MASKED {
        if !masked.iter().any(|m| m == p) {
            masked.push(p.to_string());
        }
    }
    let readonly = linux.readonly_paths().clone().unwrap_or_default();

    let hooks = c.hooks().clone().unwrap_or_default();
    let conv = |h: &Option<Vec<oci_spec::runtime::Hook>>| -> Vec<OciHook> {
        h.iter()
            .flatten()
            .map(|h| OciHook {
                path: h.path().display().to_string(),
                args: h.args().clone().unwrap_or_default(),
                env: h.env().clone().unwrap_or_default(),
                timeout: h.timeout().map(|t| t.max(1) as u64),
            })
            .collect()
    };
    #[allow(deprecated)]
    let mut create_runtime = conv(hooks.prestart());
    create_runtime.extend(conv(hooks.create_runtime()));
    let runtime_hooks = RuntimeHooks {
        create_runtime,
        poststart: conv(hooks.poststart()),
        poststop: conv(hooks.poststop()),
    };

    let cgroup = cgroup_request(&linux, &plan, id);
    let propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => 0,
        Some(
            p @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable"),
        ) => moat_sandbox::oci::propagation(p),
        Some(other) => return Err(b.err(format!("linux.rootfsPropagation {other:?} is unknown"))),
    };

    let init = moat_sandbox::oci::OciInit {
        rootfs: b.rootfs.clone(),
        readonly_root: c
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        rootfs_propagation: propagation,
        new_namespaces: new_ns,
        new_user,
        join,
        hostname: c.hostname().clone(),
        domainname: c.domainname().clone(),
        mounts,
        masked,
        readonly,
        devices,
        sysctl,
        oom_score_adj: process.oom_score_adj(),
        drop,
        exec,
        terminal: process.terminal().unwrap_or(false),
        preserve_fds: 0,
        cgroup_dirs: Vec::new(),
        create_container_hooks: conv(hooks.create_container()),
        start_container_hooks: conv(hooks.start_container()),
        state_for_hooks: serde_json::Value::Null,
    };
    Ok(Prepared {
        isolation,
        policy: pname,
        plan,
        init,
        cgroup,
        hooks: runtime_hooks,
        caller_seccomp,
        warnings,
        debug,
    })
}

/// The policy's filter, installed last (after the caller's).
pub fn with_policy_filter(drop: DropSpec, plan: &Plan) -> DropSpec {
    drop.with_extra_seccomp(&plan.seccomp)
}

/// Paths moat masks in every container, whatever the caller asks.
const MOAT_MASKED: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/sysrq-trigger",
    "/proc/latency_stats",
    "/proc/kallsyms",
    "/sys/firmware",
];

fn default_devices(_terminal: bool) -> Vec<OciDevice> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, ma, mi)| OciDevice {
        path: p.into(),
        kind: 'c',
        major: ma,
        minor: mi,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}
