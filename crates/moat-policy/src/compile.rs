//! Policy -> [`Plan`].

use crate::bpf;
use crate::error::PolicyError;
use crate::model::{NetworkMode, Policy, RootMode};
use crate::plan::{
    CgroupLimits, DeviceRule, MountPlan, Namespace, NetworkPlan, Plan, ProcessPlan, Rlimit,
    RlimitResource, RootPlan, SeccompProgram, VmShape,
};

/// Open files when the policy does not say.
pub const DEFAULT_OPEN_FILES: u64 = 1024;
/// Processes (`RLIMIT_NPROC` and the pids cgroup) when the policy does not say.
pub const DEFAULT_PIDS: u64 = 1024;
/// VM memory when the policy does not limit memory.
pub const DEFAULT_VM_MEMORY_MIB: u64 = 256;
/// VM scratch disk when the policy does not say.
pub const DEFAULT_VM_DISK_MIB: u64 = 256;

/// The writable layer of `filesystem.root: ephemeral` when the policy sets
/// no `resources.disk`.
pub const DEFAULT_EPHEMERAL_ROOT_BYTES: u64 = 256 << 20;

/// Compile a validated policy into the plan both backends consume.
pub fn compile(policy: &Policy) -> Result<Plan, PolicyError> {
    let s = &policy.spec;
    let instructions = bpf::compile(&s.syscalls).map_err(|e| PolicyError::Compile {
        name: policy.name.clone(),
        message: e.to_string(),
    })?;

    let mut mounts: Vec<MountPlan> = s
        .filesystem
        .writable
        .iter()
        .map(|t| MountPlan::Tmpfs {
            destination: t.path.clone(),
            size_bytes: t.size_bytes,
            optional: t.optional,
            mode: t.mode,
        })
        .collect();
    mounts.extend(s.filesystem.volumes.iter().map(|v| MountPlan::Volume {
        source: v.source.clone(),
        destination: v.path.clone(),
        read_only: v.read_only,
    }));
    // Parents before children, so that a nested mount is not hidden.
    sort_mounts(&mut mounts);

    let pids = s.resources.pids.unwrap_or(DEFAULT_PIDS);
    let nofile = s.resources.open_files.unwrap_or(DEFAULT_OPEN_FILES);
    let rlimits = vec![
        Rlimit {
            resource: RlimitResource::Nofile,
            soft: nofile,
            hard: nofile,
        },
        Rlimit {
            resource: RlimitResource::Nproc,
            soft: pids,
            hard: pids,
        },
        Rlimit {
            resource: RlimitResource::Core,
            soft: 0,
            hard: 0,
        },
    ];

    let network = match s.network.mode {
        NetworkMode::None => NetworkPlan::None,
        NetworkMode::Loopback => NetworkPlan::Loopback,
        NetworkMode::Egress => NetworkPlan::Egress {
            rules: s.network.egress.clone(),
            publish: s.network.publish.clone(),
            dns: s.network.dns,
        },
    };

    let mib = |b: u64| b.div_ceil(1 << 20);
    let vm = VmShape {
        vcpus: s.resources.cpu_millis.map_or(1, |m| {
            u32::try_from(m.div_ceil(1000)).unwrap_or(u32::MAX).max(1)
        }),
        memory_mib: s.resources.memory_bytes.map_or(DEFAULT_VM_MEMORY_MIB, mib),
        disk_mib: s.resources.disk_bytes.map_or(DEFAULT_VM_DISK_MIB, mib),
    };

    Ok(Plan {
        policy_name: policy.name.clone(),
        policy_digest: policy.digest(),
        isolation: s.isolation,
        process: ProcessPlan {
            uid: s.process.user,
            gid: s.process.group,
            additional_gids: s.process.groups.clone(),
            no_new_privs: true,
        },
        capabilities: s.capabilities.iter().cloned().collect(),
        namespaces: vec![
            Namespace::User,
            Namespace::Mount,
            Namespace::Pid,
            Namespace::Ipc,
            Namespace::Uts,
            Namespace::Net,
            Namespace::Cgroup,
        ],
        root: match s.filesystem.root {
            RootMode::ReadOnly => RootPlan::ReadOnly,
            RootMode::Ephemeral => RootPlan::Ephemeral {
                size_bytes: s
                    .resources
                    .disk_bytes
                    .unwrap_or(DEFAULT_EPHEMERAL_ROOT_BYTES),
            },
        },
        mounts,
        rlimits,
        cgroup: CgroupLimits {
            memory_bytes: s.resources.memory_bytes,
            pids: Some(pids),
            cpu_millis: s.resources.cpu_millis,
        },
        seccomp: SeccompProgram { instructions },
        network,
        devices: s
            .devices
            .iter()
            .map(|d| DeviceRule {
                path: d.path.clone(),
                kind: d.kind,
                major: d.major,
                minor: d.minor,
                access: d.access.clone(),
                file_mode: None,
                uid: None,
                gid: None,
            })
            .collect(),
        vm,
        exec_allowed: s.exec,
        audit_denied: s.audit.denied_syscalls,
    })
}

/// Parents before children, so that a nested mount is not hidden (stable:
/// equal depths keep their order).
pub fn sort_mounts(mounts: &mut [MountPlan]) {
    mounts.sort_by_key(|m| m.destination().matches('/').count());
}
