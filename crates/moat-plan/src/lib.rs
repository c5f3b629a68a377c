//! The compiled form of a policy: everything an isolation backend needs to
//! start a workload, and nothing it has to decide for itself.
//!
//! Both backends consume the same `Plan`: the sandbox applies it on the host,
//! the VM backend shapes the guest with it and the guest agent applies it
//! again inside the guest (defence in depth).
//!
//! Data only (serde, no parser, no RBAC, no renderers), so that the static
//! guest agent links it without the rest of `moat-policy`, which re-exports
//! it as `moat_policy::plan` (and [`caps`] as `moat_policy::caps`).

#![forbid(unsafe_code)]

pub mod caps;
pub mod time;

use serde::{Deserialize, Serialize};

/// Which isolation backends a policy accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationRequirement {
    Vm,
    Sandbox,
    Any,
}

/// The whole execution plan of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Name of the policy this plan was compiled from.
    pub policy_name: String,
    /// sha256 (hex) of the canonical JSON form of the effective policy.
    pub policy_digest: String,
    pub isolation: IsolationRequirement,
    pub process: ProcessPlan,
    /// Capabilities by kernel name without the `CAP_` prefix (`NET_BIND_SERVICE`).
    /// The same set is used for bounding, permitted, effective, inheritable
    /// and ambient. Empty by default.
    pub capabilities: Vec<String>,
    pub namespaces: Vec<Namespace>,
    /// The image root: read-only (the default) or with a writable layer
    /// that dies with the container.
    #[serde(default)]
    pub root: RootPlan,
    /// Extra mounts on top of the root, in order.
    pub mounts: Vec<MountPlan>,
    pub rlimits: Vec<Rlimit>,
    pub cgroup: CgroupLimits,
    pub seccomp: SeccompProgram,
    pub network: NetworkPlan,
    pub devices: Vec<DeviceRule>,
    pub vm: VmShape,
    /// Whether a process may be started in a running container.
    pub exec_allowed: bool,
    /// Log denied syscalls (SECCOMP_RET_LOG semantics for audit).
    pub audit_denied: bool,
}

/// How the image root is mounted. The stored image is never written
/// either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum RootPlan {
    /// The image, read-only.
    #[default]
    ReadOnly,
    /// An overlay: the image (read-only) below, a fresh tmpfs of
    /// `size_bytes` above, discarded with the container.
    Ephemeral { size_bytes: u64 },
}

/// User identity and process flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    /// Container uid; `None` means "what the image config says".
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub additional_gids: Vec<u32>,
    /// Always true; kept explicit so a backend can assert it.
    pub no_new_privs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    User,
    Mount,
    Pid,
    Ipc,
    Uts,
    Net,
    Cgroup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MountPlan {
    /// A writable tmpfs of `size_bytes` at `destination`.
    Tmpfs {
        destination: String,
        size_bytes: u64,
        /// A built-in default rather than a path the policy file asks for:
        /// backends skip it (with a notice) when the image has no such
        /// directory, instead of refusing to start.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        optional: bool,
        /// The tmpfs root's mode; `None`: 1777 at `/tmp`, else 0755.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// A host directory bind-mounted (sandbox only; the vm refuses it).
    Volume {
        source: String,
        destination: String,
        read_only: bool,
    },
    /// A moat named volume: an ext4 image in the volume store (`dir`, its
    /// directory), loop-mounted by the sandbox and a virtio-blk disk of the
    /// vm.
    Named {
        name: String,
        dir: String,
        destination: String,
        read_only: bool,
    },
}

impl MountPlan {
    /// Where the mount goes inside the container.
    pub fn destination(&self) -> &str {
        match self {
            MountPlan::Tmpfs { destination, .. }
            | MountPlan::Volume { destination, .. }
            | MountPlan::Named { destination, .. } => destination,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RlimitResource {
    Nofile,
    Nproc,
    Core,
    Memlock,
    Fsize,
    Stack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: RlimitResource,
    pub soft: u64,
    pub hard: u64,
}

/// Limits applied through cgroups (v1 or v2, the backend decides).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLimits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// CPU bandwidth in millicpus (1000 = one CPU).
    pub cpu_millis: Option<u64>,
}

/// One classic-BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// A complete seccomp filter program, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
/// An empty program means "no filter" and is never produced by the compiler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProgram {
    pub instructions: Vec<SockFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum NetworkPlan {
    /// A network namespace with nothing in it (not even loopback up).
    None,
    /// A network namespace with loopback only.
    Loopback,
    /// Outbound traffic allowed by `rules`, plus published ports.
    Egress {
        rules: Vec<EgressRule>,
        publish: Vec<PortPublish>,
        /// The host's resolver granted (`network.dns: true`): the backend
        /// points the container's `/etc/resolv.conf` at it and lets port
        /// 53 of that one address through.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dns: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRule {
    /// CIDR, e.g. `10.0.0.0/8`.
    pub cidr: String,
    /// Inclusive port range; `None` means all ports.
    pub ports: Option<(u16, u16)>,
    /// `tcp`, `udp` or `any`.
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPublish {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    /// Host address the port is bound to (`-p 127.0.0.1:8080:80`); `None`
    /// binds every host address, as podman does. Policies grant ports, not
    /// addresses: only `moat run -p` sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub path: String,
    /// `c` (character) or `b` (block).
    pub kind: char,
    pub major: u32,
    pub minor: u32,
    /// Any of `r`, `w`, `m`.
    pub access: String,
    /// The node's mode, owner and group where the caller gave them
    /// (OCI `linux.devices`); 0666 and root otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// The shape of the micro-VM for the `vm` backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShape {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Size of the guest's writable scratch space, MiB.
    pub disk_mib: u64,
}

/// What runs in the container (as opposed to what it may do, which is the
/// [`Plan`]). Built by the CLI from the image config and the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// argv; `args[0]` is resolved inside the container's root.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Allocate a pseudo-terminal (`-t`).
    pub tty: bool,
    /// Keep stdin open (`-i`).
    pub interactive: bool,
    pub hostname: String,
}
