//! The effective policy: what a file says after `extends` has been resolved
//! and every name has been checked. This is what RBAC checks and what the
//! compiler turns into a [`crate::Plan`].

use std::collections::BTreeSet;

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use crate::plan::IsolationRequirement;

/// A loaded, validated policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// `metadata.name`.
    pub name: String,
    /// Where it came from: `builtin:baseline` or a file path.
    pub source: String,
    /// What it extends, nearest first (`["baseline"]`, `["base.yaml", "baseline"]`).
    pub extends: Vec<String>,
    pub spec: Spec,
}

impl Policy {
    /// Whether this is `auto` or extends it, and so depends on the image
    /// it runs (narrowed to the image's profile before it is compiled).
    pub fn uses_auto(&self) -> bool {
        self.source == "builtin:auto" || self.extends.iter().any(|e| e == "builtin:auto")
    }

    /// sha256 (hex) of the canonical JSON form of the effective policy
    /// (name and spec; where it was read from does not matter).
    pub fn digest(&self) -> String {
        let canonical = serde_json::json!({ "name": self.name, "spec": self.spec });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// Everything a policy grants. Defaults (see [`Spec::empty`]) grant nothing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spec {
    pub isolation: IsolationRequirement,
    pub process: Process,
    /// Canonical capability names without `CAP_`.
    pub capabilities: BTreeSet<String>,
    pub syscalls: Syscalls,
    pub filesystem: Filesystem,
    pub network: Network,
    pub devices: Vec<Device>,
    pub resources: Resources,
    pub image: ImageRules,
    pub vulnerabilities: Vulnerabilities,
    /// Whether `moat exec` may start a process in a running container.
    pub exec: bool,
    pub audit: Audit,
}

impl Spec {
    /// The starting point of a policy that extends nothing: no capabilities,
    /// no system calls, no network, no writable paths.
    pub fn empty() -> Spec {
        Spec {
            isolation: IsolationRequirement::Any,
            process: Process::default(),
            capabilities: BTreeSet::new(),
            syscalls: Syscalls {
                allow: BTreeSet::new(),
                denied: BTreeSet::new(),
                default_action: DefaultAction::Errno,
                conditions: Conditions::default(),
            },
            filesystem: Filesystem::default(),
            network: Network {
                mode: NetworkMode::None,
                egress: Vec::new(),
                publish: Vec::new(),
                dns: false,
            },
            devices: Vec::new(),
            resources: Resources::default(),
            image: ImageRules::default(),
            vulnerabilities: Vulnerabilities::default(),
            exec: false,
            audit: Audit::default(),
        }
    }
}

/// Identity of the workload. `no_new_privs` is always on and not modelled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Process {
    /// Container uid; `None`: what the image says.
    pub user: Option<u32>,
    /// Container gid; `None`: what the image says.
    pub group: Option<u32>,
    /// Supplementary gids.
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Syscalls {
    /// Allowed system calls (names from [`crate::syscalls::X86_64`]).
    pub allow: BTreeSet<String>,
    /// Calls some layer denied explicitly (kept for `explain` and `diff`).
    pub denied: BTreeSet<String>,
    pub default_action: DefaultAction,
    pub conditions: Conditions,
}

/// What happens to a system call the policy does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Fail with `EPERM`.
    Errno,
    /// Kill the whole process (`SECCOMP_RET_KILL_PROCESS`).
    Kill,
    /// Allow but log (`SECCOMP_RET_LOG`): for building a policy, not for production.
    Log,
}

impl DefaultAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultAction::Errno => "errno",
            DefaultAction::Kill => "kill",
            DefaultAction::Log => "log",
        }
    }
}

/// Argument conditions on allowed system calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Conditions {
    /// `socket(2)` only for these address families; `None`: any family.
    pub socket_families: Option<BTreeSet<u32>>,
    /// `clone(2)` fails when any of these flags is set (0: no condition).
    /// `clone3(2)` cannot be inspected, so it then fails with `ENOSYS` and
    /// the C library falls back to `clone(2)`.
    pub clone_deny_flags: u32,
    pub ioctl: IoctlRule,
}

/// An ioctl request no policy may allow, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeverAllowed {
    pub name: &'static str,
    /// The request number (x86_64); the kernel reads it as 32 bits.
    pub request: u32,
    pub why: &'static str,
}

/// Terminal input injection: whatever a policy says, these are denied
/// wherever `ioctl` is allowed, and a policy that lists them as allowed is
/// refused (when parsed, and again when compiled).
pub const NEVER_ALLOWED_IOCTLS: &[NeverAllowed] = &[
    NeverAllowed {
        name: "TIOCSTI",
        request: 0x5412,
        why: "it pushes characters into a terminal's input as if they were typed, so a workload holding a terminal could type commands into the shell that started it",
    },
    NeverAllowed {
        name: "TIOCLINUX",
        request: 0x541C,
        why: "it pastes the console selection into a terminal's input and reads or changes the Linux console's state, the same injection through the console",
    },
];

/// The never-allowed entry for `request`, if it is one.
pub fn never_allowed(request: u32) -> Option<&'static NeverAllowed> {
    NEVER_ALLOWED_IOCTLS.iter().find(|n| n.request == request)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", content = "requests", rename_all = "lowercase")]
pub enum IoctlRule {
    /// Any request.
    #[default]
    Any,
    /// Only these requests.
    Allow(BTreeSet<u32>),
    /// Any request but these.
    Deny(BTreeSet<u32>),
}

impl IoctlRule {
    /// The first request of an allow list that no policy may allow.
    pub fn allows_never_allowed(&self) -> Option<&'static NeverAllowed> {
        match self {
            IoctlRule::Allow(set) => set.iter().find_map(|r| never_allowed(*r)),
            _ => None,
        }
    }

    /// The rule as it is enforced: [`NEVER_ALLOWED_IOCTLS`] are denied
    /// whatever the policy says (`Any` becomes a deny list of them).
    pub fn enforced(&self) -> IoctlRule {
        let never = NEVER_ALLOWED_IOCTLS.iter().map(|n| n.request);
        match self {
            IoctlRule::Any => IoctlRule::Deny(never.collect()),
            IoctlRule::Deny(set) => IoctlRule::Deny(set.iter().copied().chain(never).collect()),
            IoctlRule::Allow(set) => IoctlRule::Allow(
                set.iter()
                    .copied()
                    .filter(|r| never_allowed(*r).is_none())
                    .collect(),
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    /// `filesystem.root`. Left out of the canonical form when read-only,
    /// so that the digests of existing policies do not change.
    #[serde(skip_serializing_if = "RootMode::is_read_only")]
    pub root: RootMode,
    /// Writable tmpfs mounts, by path.
    pub writable: Vec<Tmpfs>,
    pub volumes: Vec<Volume>,
    /// Host directories `moat run -v HOSTDIR:DIR` may mount (at or under
    /// `source`) that are not mounted by default: `filesystem.volumes`
    /// entries without a `path`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_grants: Vec<VolumeGrant>,
    /// Which of moat's named volumes `moat run -v NAME:DIR` may mount.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub named_volumes: Vec<NamedVolumeGrant>,
}

/// `filesystem.root`: the image read-only, or with a writable layer over
/// it that lives in memory and dies with the container (the stored image
/// is never written either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootMode {
    #[default]
    ReadOnly,
    Ephemeral,
}

impl RootMode {
    pub fn is_read_only(&self) -> bool {
        *self == RootMode::ReadOnly
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RootMode::ReadOnly => "read-only",
            RootMode::Ephemeral => "ephemeral",
        }
    }
}

/// A host directory granted to `moat run -v` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeGrant {
    pub source: String,
    pub read_only: bool,
}

/// A grant of named volumes: an exact name, a prefix ending in `*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedVolumeGrant {
    pub name: String,
    pub read_only: bool,
}

impl NamedVolumeGrant {
    /// Whether this grant's pattern covers `name` (itself a name or a
    /// pattern: a grant covers a narrower pattern).
    pub fn covers(&self, name: &str) -> bool {
        name_pattern_covers(&self.name, name)
    }
}

/// Whether the pattern `pattern` (a name, `prefix*` or `*`) covers `name`
/// (a name or a pattern).
pub fn name_pattern_covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether `name` is a valid volume name: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at
/// most 64 characters (podman's rule, shorter).
pub fn valid_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tmpfs {
    pub path: String,
    pub size_bytes: u64,
    /// A built-in policy's default (e.g. baseline's `/run`): skipped with a
    /// notice when the image lacks the directory. Paths a policy file lists
    /// itself are never optional.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// The tmpfs root's mode (`mode: 1777`, octal); unset: 1777 at `/tmp`,
    /// else 0755 (root's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// Host path.
    pub source: String,
    /// Container path.
    pub path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub mode: NetworkMode,
    pub egress: Vec<crate::plan::EgressRule>,
    pub publish: Vec<crate::plan::PortPublish>,
    /// `network.dns: true` (egress only): the container's
    /// `/etc/resolv.conf` names the host's resolver, and port 53 of that
    /// one address is reachable.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dns: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    None,
    Loopback,
    Egress,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Loopback => "loopback",
            NetworkMode::Egress => "egress",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub path: String,
    /// `c` or `b`.
    pub kind: char,
    pub major: u32,
    pub minor: u32,
    /// Any of `r`, `w`, `m`.
    pub access: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    /// Millicpus (1000 = one CPU).
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
    pub open_files: Option<u64>,
    /// Writable layer of the VM (the guest's scratch disk).
    pub disk_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageRules {
    /// Allowed image names; `*` at the end matches any suffix. Empty: any.
    pub allowed: Vec<String>,
    /// Only these config or manifest digests (`sha256:<hex>`). Empty: any.
    pub digests: Vec<String>,
    /// Refuse references that are not pinned by digest.
    pub require_digest: bool,
    /// Images whose name matches a rule must carry a signature by its key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<SignerRule>,
}

/// `spec.image.signers[]`: a repository pattern (`*` suffix) and the
/// public key (PEM file) whose signature it requires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SignerRule {
    pub repository: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Vulnerabilities {
    pub fail_on: Option<Severity>,
    pub ignore: Vec<IgnoredVulnerability>,
    /// What moatd does when an advisory update finds something new in a
    /// deployed image (omitted from the canonical form when `alert`, so
    /// that digests of existing policies do not change).
    #[serde(skip_serializing_if = "OnNewAdvisory::is_alert")]
    pub on_new_advisory: OnNewAdvisory,
    /// Seconds between `stop` being decided and the replicas stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_after: Option<u64>,
}

/// `spec.vulnerabilities.on_new_advisory`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNewAdvisory {
    /// An event and an audit entry.
    #[default]
    Alert,
    /// No new replicas of the image.
    Block,
    /// No new replicas, and the running ones stopped after `stop_after`.
    Stop,
}

impl OnNewAdvisory {
    pub fn is_alert(&self) -> bool {
        *self == OnNewAdvisory::Alert
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IgnoredVulnerability {
    pub id: String,
    pub reason: String,
    /// `YYYY-MM-DD`; the entry stops applying after this day.
    pub expires: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Log denied system calls to the kernel audit log.
    pub denied_syscalls: bool,
}
