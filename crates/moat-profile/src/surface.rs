//! The attack surface a compiled policy leaves open, as numbers, and one
//! score that combines them (weights documented in `docs/surface.md`).

use moat_policy::plan::{IsolationRequirement, MountPlan, NetworkPlan, Plan, RootPlan};
use serde::Serialize;

use crate::bpf::{self, BpfError, Verdict};
use crate::syscalls;

/// Docker's default seccomp profile: syscalls allowed unconditionally on
/// amd64, of how many (moby `profiles/seccomp/default.json`, ~44 blocked).
pub const DOCKER_ALLOWED: usize = 300;
pub const DOCKER_TOTAL: usize = 383;
/// Confine (RAID 2020): at least 145 of 326 syscalls disabled for most images.
pub const CONFINE_DISABLED: usize = 145;
pub const CONFINE_TOTAL: usize = 326;
/// Docker's default capability set.
pub const DOCKER_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
/// Capabilities the kernel defines (CAP_LAST_CAP = 40).
pub const ALL_CAPABILITIES: usize = 41;
/// Device nodes every container gets (not counted as grants).
pub const STANDARD_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// Weights of the score (sum 100). See `docs/surface.md`.
pub const W_SYSCALLS: f64 = 35.0;
pub const W_CAPABILITIES: f64 = 20.0;
pub const W_DEVICES: f64 = 10.0;
pub const W_WRITABLE: f64 = 10.0;
pub const W_NETWORK: f64 = 10.0;
pub const W_ISOLATION: f64 = 15.0;
/// How much of the syscall surface counts when the syscalls reach a guest
/// kernel rather than the host's.
pub const VM_SYSCALL_FACTOR: f64 = 0.25;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SyscallSurface {
    pub allowed_count: usize,
    pub allowed: Vec<String>,
    /// Allowed only for some argument values (subset of `allowed`).
    pub conditional: Vec<String>,
    pub total: usize,
    pub docker_default_allowed: usize,
    pub docker_default_total: usize,
    pub confine_disabled_at_least: usize,
    pub confine_total: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CapabilitySurface {
    pub count: usize,
    pub names: Vec<String>,
    pub docker_default_count: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Surface {
    pub policy: String,
    /// `sandbox`, `vm` or `any`.
    pub isolation: String,
    /// What the tenant's syscalls reach.
    pub kernel: String,
    /// What of the host the tenant reaches besides syscalls.
    pub host_reach: Vec<String>,
    pub syscalls: SyscallSurface,
    pub capabilities: CapabilitySurface,
    /// Device nodes granted beyond the standard ones.
    pub devices: Vec<String>,
    pub writable_paths: Vec<String>,
    /// `none`, `loopback` or `egress`.
    pub network: String,
    pub egress_rules: usize,
    pub published_ports: usize,
    /// 0 (nothing reachable) .. 100 (everything); lower is better.
    pub score: f64,
    /// The same score for Docker's defaults, for comparison.
    pub docker_default_score: f64,
}

/// The host process a host directory adds to a micro-VM. Its system calls
/// are not counted in the score (no helper's are: QEMU's, pasta's); it
/// runs under the allowlist virtiofsd installs itself.
fn virtiofsd_reach(
    source: &str,
    destination: &str,
    read_only: bool,
    isolation: IsolationRequirement,
) -> String {
    format!(
        "a virtiofsd process for host directory {source} at {destination} ({}){}: root on the host, its own mount, pid and net namespaces with only that directory visible{}, no device nodes, its own seccomp filter; it parses the guest's FUSE requests",
        if read_only { "ro" } else { "rw" },
        if isolation == IsolationRequirement::Any {
            " when the container runs in a micro-VM"
        } else {
            ""
        },
        if read_only {
            ", mounted read-only on the host side"
        } else {
            ""
        }
    )
}

/// Computes the surface of a compiled plan.
pub fn of_plan(plan: &Plan) -> Result<Surface, BpfError> {
    let table = syscalls::table();
    let prog = &plan.seccomp.instructions;
    let mut allowed = Vec::new();
    let mut conditional = Vec::new();
    for (nr, name) in table.iter() {
        let v = if prog.is_empty() {
            Verdict::Allowed
        } else {
            bpf::verdict(prog, nr)?
        };
        match v {
            Verdict::Allowed => allowed.push(name.to_string()),
            Verdict::Conditional => {
                allowed.push(name.to_string());
                conditional.push(name.to_string());
            }
            Verdict::Denied => {}
        }
    }
    let (isolation, kernel, host_reach) = match plan.isolation {
        IsolationRequirement::Vm => (
            "vm",
            "the guest's own kernel (one per container)",
            vec![
                "the QEMU process (jailed: own namespaces, cgroup, -sandbox on)".to_string(),
                "/dev/kvm when an accelerator is used".to_string(),
                "virtio block and serial devices emulated by QEMU".to_string(),
            ],
        ),
        IsolationRequirement::Sandbox => (
            "sandbox",
            "the shared host kernel",
            vec!["the host kernel through the allowed syscalls".to_string()],
        ),
        IsolationRequirement::Any => (
            "any",
            "the guest kernel with a working accelerator, else the shared host kernel",
            vec![
                "the host kernel through the allowed syscalls when it falls back to the sandbox"
                    .to_string(),
            ],
        ),
    };
    let mut host_reach = host_reach;
    // A host directory reaches a micro-VM through a virtiofsd of its own.
    if plan.isolation != IsolationRequirement::Sandbox {
        for m in &plan.mounts {
            if let MountPlan::Volume {
                source,
                destination,
                read_only,
            } = m
            {
                host_reach.push(virtiofsd_reach(
                    source,
                    destination,
                    *read_only,
                    plan.isolation,
                ));
            }
        }
    }
    let mut writable = Vec::new();
    // An ephemeral root: every path is writable, as in Docker's default.
    let ephemeral = matches!(plan.root, RootPlan::Ephemeral { .. });
    if ephemeral {
        writable.push("/ (ephemeral layer, discarded with the container)".to_string());
    }
    for m in &plan.mounts {
        match m {
            MountPlan::Tmpfs { destination, .. } => writable.push(destination.clone()),
            MountPlan::Volume {
                destination,
                read_only: false,
                ..
            }
            | MountPlan::Named {
                destination,
                read_only: false,
                ..
            } => writable.push(destination.clone()),
            MountPlan::Volume { .. } | MountPlan::Named { .. } => {}
        }
    }
    let (network, egress_rules, published_ports) = match &plan.network {
        NetworkPlan::None => ("none", 0, 0),
        NetworkPlan::Loopback => ("loopback", 0, 0),
        NetworkPlan::Egress { rules, publish, .. } => ("egress", rules.len(), publish.len()),
    };
    let devices: Vec<String> = plan
        .devices
        .iter()
        .map(|d| {
            format!(
                "{} ({} {}:{} {})",
                d.path, d.kind, d.major, d.minor, d.access
            )
        })
        .collect();
    let inputs = ScoreInputs {
        syscalls_allowed: allowed.len() as f64 - conditional.len() as f64 / 2.0,
        syscalls_total: table.len() as f64,
        capabilities: plan.capabilities.len(),
        devices: devices.len(),
        writable: if ephemeral {
            docker_default().writable.max(writable.len())
        } else {
            writable.len()
        },
        network: match network {
            "none" => 0.0,
            "loopback" => 0.2,
            _ => {
                if egress_rules == 0 && published_ports > 0 {
                    0.6
                } else {
                    1.0
                }
            }
        },
        vm: plan.isolation == IsolationRequirement::Vm,
    };
    Ok(Surface {
        policy: plan.policy_name.clone(),
        isolation: isolation.to_string(),
        kernel: kernel.to_string(),
        host_reach,
        syscalls: SyscallSurface {
            allowed_count: allowed.len(),
            allowed,
            conditional,
            total: table.len(),
            docker_default_allowed: DOCKER_ALLOWED,
            docker_default_total: DOCKER_TOTAL,
            confine_disabled_at_least: CONFINE_DISABLED,
            confine_total: CONFINE_TOTAL,
        },
        capabilities: CapabilitySurface {
            count: plan.capabilities.len(),
            names: plan.capabilities.clone(),
            docker_default_count: DOCKER_CAPABILITIES.len(),
        },
        devices,
        writable_paths: writable,
        network: network.to_string(),
        egress_rules,
        published_ports,
        score: round1(score(&inputs)),
        docker_default_score: round1(score(&docker_default())),
    })
}

/// The inputs of [`score`].
#[derive(Debug, Clone, Copy)]
pub struct ScoreInputs {
    /// Conditionally allowed syscalls count half.
    pub syscalls_allowed: f64,
    pub syscalls_total: f64,
    pub capabilities: usize,
    pub devices: usize,
    pub writable: usize,
    /// 0 none, 0.2 loopback, 0.6 published ports only, 1 egress.
    pub network: f64,
    pub vm: bool,
}

/// Docker's defaults as score inputs: ~300 of 383 syscalls, 14
/// capabilities, standard devices only, a writable root, bridge egress,
/// shared kernel.
pub fn docker_default() -> ScoreInputs {
    ScoreInputs {
        syscalls_allowed: DOCKER_ALLOWED as f64,
        syscalls_total: DOCKER_TOTAL as f64,
        capabilities: DOCKER_CAPABILITIES.len(),
        devices: 0,
        writable: 5,
        network: 1.0,
        vm: false,
    }
}

/// The documented weighted score: 0 (nothing reachable) to 100.
///
/// `35·S·k + 20·C + 10·D + 10·W + 10·N + 15·I` where S is the allowed share
/// of syscalls, C capabilities/41, D devices/5 (capped at 1), W writable
/// paths/5 (capped), N the network reach, I 1 for a shared kernel and 0.2
/// for a VM, and k 1 for a shared kernel and 0.25 for a VM.
pub fn score(i: &ScoreInputs) -> f64 {
    let s = if i.syscalls_total > 0.0 {
        (i.syscalls_allowed / i.syscalls_total).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let k = if i.vm { VM_SYSCALL_FACTOR } else { 1.0 };
    let c = (i.capabilities as f64 / ALL_CAPABILITIES as f64).min(1.0);
    let d = (i.devices as f64 / 5.0).min(1.0);
    let w = (i.writable as f64 / 5.0).min(1.0);
    let iso = if i.vm { 0.2 } else { 1.0 };
    W_SYSCALLS * s * k
        + W_CAPABILITIES * c
        + W_DEVICES * d
        + W_WRITABLE * w
        + W_NETWORK * i.network
        + W_ISOLATION * iso
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use moat_policy::plan::*;

    use super::*;

    pub(crate) fn plan_with(prog: Vec<SockFilter>, isolation: IsolationRequirement) -> Plan {
        Plan {
            policy_name: "t".into(),
            policy_digest: String::new(),
            isolation,
            process: ProcessPlan {
                uid: None,
                gid: None,
                additional_gids: vec![],
                no_new_privs: true,
            },
            capabilities: vec!["NET_BIND_SERVICE".into()],
            namespaces: vec![],
            root: Default::default(),
            mounts: vec![MountPlan::Tmpfs {
                destination: "/tmp".into(),
                size_bytes: 1 << 20,
                optional: false,
                mode: None,
            }],
            rlimits: vec![],
            cgroup: CgroupLimits::default(),
            seccomp: SeccompProgram { instructions: prog },
            network: NetworkPlan::None,
            devices: vec![],
            vm: VmShape {
                vcpus: 1,
                memory_mib: 128,
                disk_mib: 64,
            },
            exec_allowed: false,
            audit_denied: false,
        }
    }

    #[test]
    fn surface_of_a_small_filter() {
        let plan = plan_with(crate::bpf::tests::sample(), IsolationRequirement::Sandbox);
        let s = of_plan(&plan).unwrap();
        assert_eq!(s.syscalls.allowed, vec!["read", "write", "socket"]);
        assert_eq!(s.syscalls.allowed_count, 3);
        assert_eq!(s.syscalls.conditional, vec!["socket"]);
        assert_eq!(s.capabilities.count, 1);
        assert_eq!(s.writable_paths, vec!["/tmp"]);
        let mut eph = plan.clone();
        eph.root = RootPlan::Ephemeral {
            size_bytes: 1 << 20,
        };
        let e = of_plan(&eph).unwrap();
        assert!(
            e.writable_paths[0].starts_with("/ (ephemeral"),
            "{:?}",
            e.writable_paths
        );
        assert!(e.score > s.score, "{} > {}", e.score, s.score);
        assert_eq!(s.network, "none");
        // 35*(2.5/382) + 20/41 + 0 + 10/5 + 0 + 15 = 17.7
        assert_eq!(s.score, 17.7);
        assert_eq!(s.docker_default_score, 69.2);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["syscalls"]["allowed_count"], 3);
        assert_eq!(json["syscalls"]["allowed"][0], "read");
    }

    #[test]
    fn vm_counts_syscalls_less() {
        let sandbox = of_plan(&plan_with(vec![], IsolationRequirement::Sandbox)).unwrap();
        let vm = of_plan(&plan_with(vec![], IsolationRequirement::Vm)).unwrap();
        assert_eq!(sandbox.syscalls.allowed_count, 382);
        assert!(vm.score < sandbox.score);
        assert_eq!(vm.kernel, "the guest's own kernel (one per container)");
    }

    #[test]
    fn a_host_directory_in_a_vm_adds_a_virtiofsd() {
        let dir = MountPlan::Volume {
            source: "/srv/data".into(),
            destination: "/data".into(),
            read_only: true,
        };
        let mut vm = plan_with(vec![], IsolationRequirement::Vm);
        vm.mounts.push(dir.clone());
        let s = of_plan(&vm).unwrap();
        let line = s
            .host_reach
            .iter()
            .find(|l| l.contains("virtiofsd"))
            .expect("a virtiofsd line");
        assert!(
            line.starts_with("a virtiofsd process for host directory /srv/data at /data (ro): root on the host, its own mount, pid and net namespaces with only that directory visible, mounted read-only on the host side"),
            "{line}"
        );
        let mut any = plan_with(vec![], IsolationRequirement::Any);
        any.mounts.push(dir.clone());
        let a = of_plan(&any).unwrap();
        assert!(
            a.host_reach
                .iter()
                .any(|l| l.contains("(ro) when the container runs in a micro-VM")),
            "{:?}",
            a.host_reach
        );
        let mut sandbox = plan_with(vec![], IsolationRequirement::Sandbox);
        sandbox.mounts.push(dir);
        let b = of_plan(&sandbox).unwrap();
        assert!(!b.host_reach.iter().any(|l| l.contains("virtiofsd")));
    }
}
