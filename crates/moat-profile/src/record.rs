//! Turning a recording ([`crate::trace::Recorded`]) into a profile that
//! extends `restricted` and allows exactly what the workload did.

use std::collections::BTreeSet;

use moat_policy::model::IoctlRule;
use moat_policy::Policy;

use crate::profile::{IoctlGrant, Profile};
use crate::syscalls;
use crate::trace::{family_name, Recorded};

/// Kernel surface that `restricted` denies and that the recording run
/// denies too (with `EPERM`), whatever the workload does: keyrings,
/// io_uring, perf, bpf, new namespaces (a nested user namespace above all)
/// and the mount family. A recorded attempt is reported, never granted.
pub const RECORDING_FLOOR: &[&str] = &[
    "add_key",
    "keyctl",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "perf_event_open",
    "bpf",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
];

/// Calls the vDSO may serve without entering the kernel: every recorded
/// profile grants them (within its base).
pub const VDSO_CALLS: &[&str] = &[
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "time",
    "getcpu",
];

/// The policy the recording run uses: `restricted`'s network and
/// writable paths over an ephemeral root (so that a workload that writes
/// in the image goes on past its first write, and each path it writes is
/// recorded and later granted), every syscall allowed but [`RECORDING_FLOOR`], `clone` without
/// new namespaces, any socket family and any ioctl but `TIOCSTI` and
/// `TIOCLINUX`, so that the workload takes the paths it would take
/// unconfined except into the kernel surface no recorded policy grants.
/// `ephemeral_root` false keeps the read-only root (the supervisor cannot
/// build the overlay without CAP_SYS_ADMIN): the workload then stops at
/// its first write in the image.
/// What the user grants a recording up front, beyond `restricted`
/// (`moat profile record --network`, `--cap-add`): the recording runs with
/// it and the generated policy grants it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpFront {
    /// `loopback` or `none`; `None` keeps `restricted`'s (`none`).
    pub network: Option<String>,
    /// Capability names without `CAP_` (`CHOWN`, `SETUID`).
    pub capabilities: BTreeSet<String>,
}

impl UpFront {
    /// The `spec` lines granting it (empty for nothing).
    pub fn spec_lines(&self) -> String {
        let mut y = String::new();
        if !self.capabilities.is_empty() {
            let caps: Vec<&str> = self.capabilities.iter().map(String::as_str).collect();
            y.push_str(&format!("  capabilities: [{}]\n", caps.join(", ")));
        }
        if let Some(n) = &self.network {
            y.push_str(&format!("  network: {n}\n"));
        }
        y
    }
}

pub fn recording_policy(ephemeral_root: bool, up_front: &UpFront) -> String {
    let families: Vec<&str> = moat_policy::args::SOCKET_FAMILIES
        .iter()
        .map(|(n, _)| *n)
        .collect();
    let allow: Vec<&str> = moat_policy::syscalls::X86_64
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !RECORDING_FLOOR.contains(n))
        .collect();
    format!(
        "apiVersion: moat.dev/v1
kind: Policy
metadata:
  name: moat-profile-record
spec:
  extends: restricted
  isolation: sandbox
{}  filesystem:
    root: {}
  syscalls:
    default: errno
    allow: [{}]
    conditions:
      socket:
        families: [{}]
      clone:
        deny_flags: [namespaces]
      ioctl:
        deny: [{}]
",
        up_front.spec_lines(),
        if ephemeral_root {
            "ephemeral"
        } else {
            "read-only"
        },
        allow.join(", "),
        families.join(", "),
        crate::profile::NEVER_IOCTLS.join(", ")
    )
}

/// The calls of [`RECORDING_FLOOR`] the workload attempted: denied while
/// recording and left out of the profile. Seccomp refuses them before the
/// syscall-entry tracepoint, so they are seen at exit, as failures.
pub fn floor_attempts(rec: &Recorded) -> BTreeSet<String> {
    let table = syscalls::table();
    rec.syscalls
        .keys()
        .chain(rec.denied.iter().map(|(nr, _)| nr))
        .filter_map(|nr| table.name(*nr))
        .filter(|name| RECORDING_FLOOR.contains(name))
        .map(String::from)
        .collect()
}

fn errno_name(e: i64) -> &'static str {
    match e {
        1 => "EPERM",
        13 => "EACCES",
        _ => "error",
    }
}

/// Whether `p` is `dir` or below it (whole path components).
fn under(p: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    p == dir || (p.starts_with(dir) && p[dir.len()..].starts_with('/')) || dir.is_empty()
}

/// Where a write to `path` lands under `base`, and whether it is allowed
/// there at all.
fn where_writes_land(path: &str, base: &Policy) -> (String, bool) {
    if !path.starts_with('/') {
        return (
            "relative to the working directory or a directory fd".into(),
            true,
        );
    }
    let fs = &base.spec.filesystem;
    if let Some(t) = fs.writable.iter().find(|t| under(path, &t.path)) {
        return (format!("writable tmpfs {}", t.path), true);
    }
    if let Some(v) = fs.volumes.iter().find(|v| under(path, &v.path)) {
        return if v.read_only {
            (format!("read-only volume {}", v.path), false)
        } else {
            (format!("volume {}", v.path), true)
        };
    }
    if under(path, "/dev") || under(path, "/proc") {
        return ("device or kernel file".into(), true);
    }
    ("read-only root file system".into(), false)
}

/// Directories a recorded write never turns into a tmpfs grant: a tmpfs
/// there would hide the image's programs, libraries or configuration.
/// Writes there are left to `filesystem.root: ephemeral`.
const SYSTEM_TREES: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev",
    "/proc", "/sys",
];
/// Top-level directories granted only below, never themselves.
/// (`/run` and `/tmp` are tmpfs in most containers, and granted whole.)
const SYSTEM_TOP: &[&str] = &[
    "/", "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/var",
];

/// `path` without trailing slashes (`/` stays `/`).
fn trim_slash(path: &str) -> &str {
    match path.trim_end_matches('/') {
        "" if path.starts_with('/') => "/",
        t => t,
    }
}

/// `path`'s parent directory (`/` for a top-level name).
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// What a recording's writes ask of the filesystem: tmpfs grants (the
/// directories of the files written, or their nearest ancestor the image
/// has, de-duplicated so that no grant lies under another) and the
/// written paths no grant can serve.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteGrants {
    pub writable: BTreeSet<String>,
    /// Grants over a directory the image has files in, which the tmpfs
    /// hides.
    pub hiding: BTreeSet<String>,
    pub ungrantable: BTreeSet<String>,
}

/// The grants for the absolute paths in `uncovered`. `entries` says how
/// many names the image has in a directory (`None`: no such directory).
pub fn write_grants(uncovered: &[&str], entries: &dyn Fn(&str) -> Option<usize>) -> WriteGrants {
    let mut g = WriteGrants::default();
    for path in uncovered {
        let mut dir = parent(path);
        while dir != "/" && entries(dir).is_none() {
            dir = parent(dir);
        }
        if SYSTEM_TOP.contains(&dir) || SYSTEM_TREES.iter().any(|t| under(dir, t)) {
            g.ungrantable.insert(path.to_string());
        } else {
            g.writable.insert(dir.to_string());
        }
    }
    let all = g.writable.clone();
    g.writable
        .retain(|d| !all.iter().any(|a| a != d && under(d, a)));
    for d in &g.writable {
        if entries(d).unwrap_or(0) > 0 {
            g.hiding.insert(d.clone());
        }
    }
    g
}

/// Builds the profile of a recording. `base` is the policy the profile
/// extends (`restricted`); `entries` says how many names the image has
/// in a directory (`None`: no such directory). Returns the profile and
/// the syscalls of `base` to deny because the workload did not use them.
pub fn to_profile(
    rec: &Recorded,
    base: &Policy,
    entries: &dyn Fn(&str) -> Option<usize>,
) -> (Profile, Vec<String>) {
    let table = syscalls::table();
    let mut p = Profile {
        name: "recorded".into(),
        ..Profile::default()
    };
    for (nr, count) in &rec.syscalls {
        let name = table
            .name(*nr)
            .map(String::from)
            .unwrap_or_else(|| nr.to_string());
        if RECORDING_FLOOR.contains(&name.as_str()) {
            continue;
        }
        let reason = if *count == 1 {
            "recorded 1 call".to_string()
        } else {
            format!("recorded {count} calls")
        };
        p.allow(&name, reason);
    }
    // The vDSO answers these in user space on this host, so the recording
    // never sees them; where the clock source has no vDSO (a micro-VM's
    // guest under TCG) they are system calls, and a policy without them
    // breaks `sleep` and `date` there.
    for name in VDSO_CALLS {
        if base.spec.syscalls.allow.contains(*name) {
            p.allow(
                name,
                "served by the vDSO here, a system call where the clock has no vDSO",
            );
        }
    }
    p.socket_families = rec
        .socket_families
        .iter()
        .map(|f| family_name(*f))
        .collect();
    let base_c = &base.spec.syscalls.conditions;
    if let Some(base_fams) = &base_c.socket_families {
        if rec
            .socket_families
            .iter()
            .any(|f| !base_fams.contains(&(*f as u32)))
        {
            let mut fams: BTreeSet<String> = base_fams
                .iter()
                .map(|f| moat_policy::args::name_of(moat_policy::args::SOCKET_FAMILIES, *f))
                .collect();
            for f in &rec.socket_families {
                fams.insert(moat_policy::args::name_of(
                    moat_policy::args::SOCKET_FAMILIES,
                    *f as u32,
                ));
            }
            p.socket_condition = Some(fams);
        }
    }
    if let IoctlRule::Allow(allowed) = &base_c.ioctl {
        let extra: Vec<u32> = rec
            .ioctls
            .iter()
            .map(|r| *r as u32)
            .filter(|r| !allowed.contains(r))
            .filter(|r| {
                let name = moat_policy::args::name_of(moat_policy::args::IOCTL_REQUESTS, *r);
                !crate::profile::is_never_ioctl(&name)
            })
            .collect();
        if !extra.is_empty() {
            let names = allowed
                .iter()
                .chain(&extra)
                .map(|r| moat_policy::args::name_of(moat_policy::args::IOCTL_REQUESTS, *r))
                .collect();
            p.ioctl_condition = IoctlGrant::Allow(names);
        }
    }
    for name in floor_attempts(rec) {
        p.failed_privileged.insert(format!(
            "{name}: attempted, denied while recording (outside `restricted`)"
        ));
    }
    for (nr, errno) in &rec.denied {
        let name = table.name(*nr).unwrap_or("?");
        if RECORDING_FLOOR.contains(&name) {
            continue;
        }
        p.failed_privileged
            .insert(format!("{name}: {}", errno_name(*errno)));
    }
    // A directory the image already has was not written: `mkdir -p` asks
    // for each ancestor, which fails with EEXIST (seen at entry only).
    let write_paths: BTreeSet<String> = rec
        .write_paths
        .iter()
        .filter(|p| !(p.starts_with('/') && entries(trim_slash(p)).is_some()))
        .map(|p| trim_slash(p).to_string())
        .collect();
    let mut outside = Vec::new();
    for path in &write_paths {
        let (note, covered) = where_writes_land(path, base);
        let shown = crate::profile::quote(path);
        if !covered {
            outside.push(shown.clone());
        }
        p.written.insert(format!("{shown} ({note})"));
    }
    let uncovered: Vec<&str> = write_paths
        .iter()
        .filter(|p| p.starts_with('/') && !where_writes_land(p, base).1)
        .map(String::as_str)
        .collect();
    let grants = write_grants(&uncovered, entries);
    p.writable.extend(grants.writable.iter().cloned());
    if !grants.writable.is_empty() {
        p.warnings.push(format!(
            "opened for writing outside the writable paths of `{}`: {}; granted as writable tmpfs directories (discarded with the container): {}",
            base.name,
            outside.join(", "),
            grants.writable.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if !grants.hiding.is_empty() {
        p.warnings.push(format!(
            "the tmpfs at {} hides the image's files there; if the workload needs them, replace the entry with `filesystem.root: ephemeral`",
            grants.hiding.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if !grants.ungrantable.is_empty() {
        let shown: Vec<String> = grants
            .ungrantable
            .iter()
            .map(|p| crate::profile::quote(p))
            .collect();
        p.warnings.push(format!(
            "opened for writing in the image's system directories, where a tmpfs would hide its files: {}; not granted: add `filesystem.root: ephemeral` if the workload needs them",
            shown.join(", ")
        ));
    }

    if rec.path_faults > 0 {
        p.warnings.push(format!(
            "the names of {} path(s) opened for writing could not be read (not paged in at the call); the list below may be incomplete",
            rec.path_faults
        ));
    }
    if rec.out_of_range > 0 {
        p.warnings.push(format!(
            "{} call(s) with a syscall number outside 0..{} (x32 or invalid) were seen and are not in this policy",
            rec.out_of_range,
            crate::ebpf::NR_MAX
        ));
    }
    if rec.read_only_writes > 0 {
        p.warnings.push(format!(
            "{} open(s) for writing failed on the read-only root; add writable paths if the workload needs them",
            rec.read_only_writes
        ));
    }
    let deny: Vec<String> = base
        .spec
        .syscalls
        .allow
        .iter()
        .filter(|n| !p.syscalls.contains_key(*n))
        .cloned()
        .collect();
    (p, deny)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_allowlist_with_denies_and_widened_conditions() {
        let mut rec = Recorded::default();
        rec.syscalls.insert(0, 3); // read
        rec.syscalls.insert(1, 1); // write
        rec.syscalls.insert(41, 1); // socket
        rec.syscalls.insert(16, 2); // ioctl
        rec.socket_families.insert(2);
        rec.ioctls.insert(0x5401);
        rec.ioctls.insert(0x8912); // SIOCGIFCONF
        rec.denied.insert((165, 1));
        let base = Policy::builtin("restricted").unwrap();
        let (p, deny) = to_profile(&rec, &base, &|_| Some(0));
        let vdso: Vec<&str> = VDSO_CALLS
            .iter()
            .copied()
            .filter(|c| base.spec.syscalls.allow.contains(*c))
            .collect();
        assert!(vdso.contains(&"clock_gettime"), "{vdso:?}");
        let mut want = vec!["ioctl", "read", "socket", "write"];
        want.extend(&vdso);
        want.sort_unstable();
        assert_eq!(p.syscall_names(), want);
        assert_eq!(
            p.syscalls["read"].iter().next().map(String::as_str),
            Some("recorded 3 calls")
        );
        assert!(deny.contains(&"openat".to_string()));
        assert!(!deny.contains(&"read".to_string()));
        assert_eq!(
            p.socket_condition,
            Some(["AF_INET".to_string(), "AF_UNIX".to_string()].into())
        );
        match &p.ioctl_condition {
            IoctlGrant::Allow(set) => {
                assert!(set.contains("TCGETS") && set.contains("0x8912"), "{set:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(p
            .failed_privileged
            .contains("mount: attempted, denied while recording (outside `restricted`)"));
        // The result is a policy moat accepts, and it allows exactly that.
        let yaml = p.to_policy_yaml(&deny);
        let policy = Policy::parse(&yaml, "recorded").unwrap();
        let allowed: Vec<&str> = policy
            .spec
            .syscalls
            .allow
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(allowed, want);
        moat_policy::compile(&policy).unwrap();
    }

    #[test]
    fn write_paths_become_writable_grants_and_comments() {
        let mut rec = Recorded::default();
        rec.syscalls.insert(257, 2);
        for p in [
            "/tmp/f",
            "/dev/null",
            "/etc/app.conf",
            "out.log",
            "/tmpfoo",
            "/var/lib/app/db/x.db",
            "/var/lib/app/lock",
            "/srv/web/cache/a/b",
            "/data/f",
        ] {
            rec.write_paths.insert(p.to_string());
        }
        // The image has /var/lib/app (empty), /srv/web (with files), /data.
        let entries = |d: &str| match d {
            "/var" | "/var/lib" | "/srv" => Some(3),
            "/var/lib/app" => Some(0),
            "/srv/web" => Some(2),
            "/data" => Some(0),
            _ => None,
        };
        let base = Policy::builtin("restricted").unwrap();
        let (p, deny) = to_profile(&rec, &base, &entries);
        // Directory level (the nearest the image has), de-duplicated.
        assert_eq!(
            p.writable.iter().map(String::as_str).collect::<Vec<_>>(),
            vec!["/data", "/srv/web", "/var/lib/app"]
        );
        let yaml = p.to_policy_yaml(&deny);
        for line in [
            "  filesystem:\n    writable:\n      - path: /data\n      - path: /srv/web\n      - path: /var/lib/app\n",
            "  # opened for writing: /tmp/f (writable tmpfs /tmp)\n",
            "  # opened for writing: /dev/null (device or kernel file)\n",
            "  # opened for writing: /etc/app.conf (read-only root file system)\n",
            "  # opened for writing: out.log (relative to the working directory or a directory fd)\n",
            "# warning: opened for writing outside the writable paths of `restricted`: /data/f, /etc/app.conf, /srv/web/cache/a/b, /tmpfoo, /var/lib/app/db/x.db, /var/lib/app/lock; granted as writable tmpfs directories (discarded with the container): /data, /srv/web, /var/lib/app\n",
            "# warning: the tmpfs at /srv/web hides the image's files there; if the workload needs them, replace the entry with `filesystem.root: ephemeral`\n",
            "# warning: opened for writing in the image's system directories, where a tmpfs would hide its files: /etc/app.conf, /tmpfoo; not granted: add `filesystem.root: ephemeral` if the workload needs them\n",
        ] {
            assert!(yaml.contains(line), "{line} missing in:\n{yaml}");
        }
        // A policy moat accepts, with exactly those tmpfs mounts; the
        // grants and comments survive a merge.
        let policy = Policy::parse(&yaml, "recorded").unwrap();
        let paths: Vec<&str> = policy
            .spec
            .filesystem
            .writable
            .iter()
            .map(|t| t.path.as_str())
            .collect();
        assert_eq!(paths, vec!["/tmp", "/data", "/srv/web", "/var/lib/app"]);
        moat_policy::compile(&policy).unwrap();
        let back = Profile::from_policy_yaml("p.yaml", &yaml).unwrap();
        assert_eq!(back.written, p.written);
        assert_eq!(back.writable, p.writable);
    }

    #[test]
    fn recording_policy_compiles() {
        let policy = Policy::parse(&recording_policy(true, &UpFront::default()), "record").unwrap();
        let plan = moat_policy::compile(&policy).unwrap();
        let s = crate::surface::of_plan(&plan).unwrap();
        let floor = RECORDING_FLOOR
            .iter()
            .filter(|n| crate::syscalls::table().number(n).is_some())
            .count();
        assert_eq!(
            floor,
            RECORDING_FLOOR.len(),
            "a floor name is not a syscall"
        );
        // Seccomp refuses them before the entry tracepoint: their failures
        // must be watched for the attempts to be reported.
        for name in RECORDING_FLOOR {
            assert!(crate::trace::WATCHED_EXITS.contains(name), "{name}");
        }
        // clone3 answers ENOSYS (its flags cannot be checked; the C
        // library falls back to clone, whose flags are).
        assert_eq!(
            s.syscalls.allowed_count,
            crate::syscalls::table().len() - floor - 1
        );
        for name in RECORDING_FLOOR {
            assert!(
                !s.syscalls.allowed.iter().any(|a| a == name),
                "{name} allowed while recording"
            );
        }
        // clone without new namespaces, ioctl without TIOCSTI/TIOCLINUX.
        let cond = &s.syscalls.conditional;
        assert!(cond.iter().any(|c| c == "clone"), "{cond:?}");
        match &policy.spec.syscalls.conditions.ioctl {
            IoctlRule::Deny(set) => assert!(set.contains(&0x5412) && set.contains(&0x541C)),
            other => panic!("{other:?}"),
        }
    }
}
