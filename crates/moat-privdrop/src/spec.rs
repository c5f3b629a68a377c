//! What the sequence applies ([`DropSpec`]) and what it runs ([`Exec`]),
//! both built before the fork so that the child only makes system calls.

use std::ffi::CString;
use std::os::fd::RawFd;

use moat_plan::{caps, Plan, ProcessSpec, RlimitResource, SeccompProgram};
use rustix::process::Resource;

/// `PATH` when the process's environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A spec that cannot be built; every variant names the offending input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("unknown capability {0:?} in the plan")]
    UnknownCapability(String),
    #[error("{resource:?} soft limit {soft} is above its hard limit {hard} in the plan")]
    RlimitOrder {
        resource: RlimitResource,
        soft: u64,
        hard: u64,
    },
    #[error("unknown resource limit number {0}")]
    UnknownRlimit(u32),
    #[error("resource limit {resource}: soft limit {soft} is above its hard limit {hard}")]
    RawRlimitOrder { resource: u32, soft: u64, hard: u64 },
    #[error("working directory {0:?} is not absolute")]
    RelativeCwd(String),
    #[error("{what} {value:?} contains a NUL byte")]
    Nul { what: &'static str, value: String },
    #[error("no command to run: the image has no entrypoint or cmd and none was given")]
    NoCommand,
}

/// One resource limit (`soft`, `hard`; `u64::MAX` is unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub resource: Resource,
    pub soft: u64,
    pub hard: u64,
}

/// One classic-BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const _: () = assert!(std::mem::size_of::<Insn>() == std::mem::size_of::<libc::sock_filter>());

/// The privileges a process keeps: built from a [`Plan`] and a
/// [`ProcessSpec`] with [`DropSpec::new`] (a container's process, its
/// first or an exec'd one), or with [`DropSpec::unprivileged`] (a helper
/// such as the jailed VMM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropSpec {
    pub(crate) rlimits: Vec<Limit>,
    /// Capability bits (kernel numbers) kept in every set: the union of
    /// `sets`, which say which set holds which.
    pub(crate) capabilities: u64,
    pub(crate) sets: CapSets,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<rustix::process::Gid>,
    pub(crate) cwd: CString,
    pub(crate) seccomp: Vec<Insn>,
    pub(crate) seccomp_log: bool,
    /// Filters installed before `seccomp` (an OCI caller's own profile):
    /// the kernel applies every filter, so each can only narrow.
    pub(crate) extra_seccomp: Vec<Vec<Insn>>,
    /// Descriptors from 3 up that survive the exec, sorted.
    pub(crate) keep_fds: Vec<RawFd>,
    /// `PR_SET_NO_NEW_PRIVS` before the exec (true unless a site lets an
    /// OCI caller turn it off).
    pub(crate) no_new_privs: bool,
}

impl DropSpec {
    /// The spec of a container process: the plan's rlimits, capabilities
    /// (for every set, ambient included), supplementary groups (the
    /// process's and the plan's) and seccomp filter (logging denials when
    /// the plan audits them); the process's uid, gid and working directory
    /// (`/` when empty). No descriptor but stdio survives the exec.
    pub fn new(plan: &Plan, process: &ProcessSpec) -> Result<DropSpec, SpecError> {
        let mut capabilities = 0u64;
        for name in &plan.capabilities {
            let n = caps::number(name).ok_or_else(|| SpecError::UnknownCapability(name.clone()))?;
            capabilities |= 1 << n;
        }
        let rlimits = plan
            .rlimits
            .iter()
            .map(|r| {
                if r.soft > r.hard {
                    return Err(SpecError::RlimitOrder {
                        resource: r.resource,
                        soft: r.soft,
                        hard: r.hard,
                    });
                }
                Ok(Limit {
                    resource: resource(r.resource),
                    soft: r.soft,
                    hard: r.hard,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut groups = process.additional_gids.clone();
        groups.extend(&plan.process.additional_gids);
        let cwd = if process.cwd.is_empty() {
            "/"
        } else {
            &process.cwd
        };
        let mut spec = DropSpec::unprivileged(process.uid, process.gid, &groups);
        spec.rlimits = rlimits;
        spec.capabilities = capabilities;
        spec.sets = CapSets::all(capabilities);
        spec.cwd = absolute_cwd(cwd)?;
        spec.seccomp = instructions(&plan.seccomp);
        spec.seccomp_log = plan.audit_denied;
        Ok(spec)
    }

    /// A process with no privilege at all: `uid`, `gid` and `groups`, no
    /// capability in any set (bounding included), no rlimit changed, no
    /// seccomp filter, working directory `/`.
    pub fn unprivileged(uid: u32, gid: u32, groups: &[u32]) -> DropSpec {
        let mut groups = groups.to_vec();
        groups.sort_unstable();
        groups.dedup();
        DropSpec {
            rlimits: Vec::new(),
            capabilities: 0,
            sets: CapSets::all(0),
            uid,
            gid,
            groups: groups
                .into_iter()
                .map(rustix::process::Gid::from_raw)
                .collect(),
            cwd: c"/".to_owned(),
            seccomp: Vec::new(),
            seccomp_log: false,
            extra_seccomp: Vec::new(),
            keep_fds: Vec::new(),
            no_new_privs: true,
        }
    }

    /// Lets `fds` (numbers from 3 up) survive the exec: descriptors a
    /// helper is handed on purpose (a VMM's disk and control socket).
    pub fn keep_fds(mut self, fds: &[RawFd]) -> DropSpec {
        self.keep_fds = fds.iter().copied().filter(|&f| f >= 3).collect();
        self.keep_fds.sort_unstable();
        self.keep_fds.dedup();
        self
    }

    /// Distinct capability sets (an OCI `process.capabilities`), each
    /// a mask of kernel numbers. The caller narrows them first.
    pub fn with_capability_sets(mut self, sets: CapSets) -> DropSpec {
        self.capabilities = sets.bounding | sets.effective | sets.permitted | sets.ambient;
        self.sets = sets;
        self
    }

    /// Resource limits by kernel number (`RLIMIT_*`), replacing the plan's.
    pub fn with_raw_rlimits(mut self, limits: &[(u32, u64, u64)]) -> Result<DropSpec, SpecError> {
        let mut out = Vec::with_capacity(limits.len());
        for &(n, soft, hard) in limits {
            let resource = raw_resource(n).ok_or(SpecError::UnknownRlimit(n))?;
            if soft > hard {
                return Err(SpecError::RawRlimitOrder {
                    resource: n,
                    soft,
                    hard,
                });
            }
            out.push(Limit {
                resource,
                soft,
                hard,
            });
        }
        self.rlimits = out;
        Ok(self)
    }

    /// Leaves `no_new_privs` unset, so that setuid and file-capability
    /// binaries work in the workload (an OCI caller's `noNewPrivileges:
    /// false`, where the site allows it). Filters are then installed
    /// before the ids and capabilities change (the kernel requires
    /// CAP_SYS_ADMIN for a filter without `no_new_privs`), so they must
    /// allow the rest of the sequence.
    pub fn with_new_privileges_allowed(mut self) -> DropSpec {
        self.no_new_privs = false;
        self
    }

    /// Whether the sequence sets `no_new_privs`.
    pub fn no_new_privs(&self) -> bool {
        self.no_new_privs
    }

    /// Adds a filter installed before the plan's own.
    pub fn with_extra_seccomp(mut self, prog: &SeccompProgram) -> DropSpec {
        if !prog.instructions.is_empty() {
            self.extra_seccomp.push(instructions(prog));
        }
        self
    }

    /// The working directory, which must be absolute.
    pub fn with_cwd(mut self, cwd: &str) -> Result<DropSpec, SpecError> {
        self.cwd = absolute_cwd(cwd)?;
        Ok(self)
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }
    pub fn gid(&self) -> u32 {
        self.gid
    }
    /// Supplementary groups, sorted and without duplicates.
    pub fn groups(&self) -> Vec<u32> {
        self.groups.iter().map(|g| g.as_raw()).collect()
    }
    /// The five capability sets.
    pub fn capability_sets(&self) -> CapSets {
        self.sets
    }
    /// Resource limits as (kernel number, soft, hard).
    pub fn raw_rlimits(&self) -> Vec<(u32, u64, u64)> {
        self.rlimits
            .iter()
            .map(|l| (l.resource as u32, l.soft, l.hard))
            .collect()
    }
    /// Kept capabilities as a mask of kernel capability numbers.
    pub fn capabilities(&self) -> u64 {
        self.capabilities
    }
    pub fn rlimits(&self) -> &[Limit] {
        &self.rlimits
    }
    pub fn cwd(&self) -> &str {
        self.cwd.to_str().unwrap_or("?")
    }
    /// Number of seccomp instructions (0: no filter).
    pub fn seccomp_len(&self) -> usize {
        self.seccomp.len()
    }
}

fn absolute_cwd(cwd: &str) -> Result<CString, SpecError> {
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeCwd(cwd.to_string()));
    }
    cstring("working directory", cwd)
}

/// The five capability sets of a process, as masks of kernel numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl CapSets {
    /// The same mask in every set (what a moat plan grants).
    pub fn all(mask: u64) -> CapSets {
        CapSets {
            bounding: mask,
            effective: mask,
            permitted: mask,
            inheritable: mask,
            ambient: mask,
        }
    }
}

fn raw_resource(n: u32) -> Option<Resource> {
    Some(match n {
        libc::RLIMIT_CPU => Resource::Cpu,
        libc::RLIMIT_FSIZE => Resource::Fsize,
        libc::RLIMIT_DATA => Resource::Data,
        libc::RLIMIT_STACK => Resource::Stack,
        libc::RLIMIT_CORE => Resource::Core,
        libc::RLIMIT_RSS => Resource::Rss,
        libc::RLIMIT_NPROC => Resource::Nproc,
        libc::RLIMIT_NOFILE => Resource::Nofile,
        libc::RLIMIT_MEMLOCK => Resource::Memlock,
        libc::RLIMIT_AS => Resource::As,
        libc::RLIMIT_LOCKS => Resource::Locks,
        libc::RLIMIT_SIGPENDING => Resource::Sigpending,
        libc::RLIMIT_MSGQUEUE => Resource::Msgqueue,
        libc::RLIMIT_NICE => Resource::Nice,
        libc::RLIMIT_RTPRIO => Resource::Rtprio,
        libc::RLIMIT_RTTIME => Resource::Rttime,
        _ => return None,
    })
}

fn resource(r: RlimitResource) -> Resource {
    match r {
        RlimitResource::Nofile => Resource::Nofile,
        RlimitResource::Nproc => Resource::Nproc,
        RlimitResource::Core => Resource::Core,
        RlimitResource::Memlock => Resource::Memlock,
        RlimitResource::Fsize => Resource::Fsize,
        RlimitResource::Stack => Resource::Stack,
    }
}

fn instructions(prog: &SeccompProgram) -> Vec<Insn> {
    prog.instructions
        .iter()
        .map(|i| Insn {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

fn cstring(what: &'static str, s: &str) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::Nul {
        what,
        value: s.to_string(),
    })
}

/// What runs: argv, environment, and the `PATH` that `argv[0]` is looked
/// up in when it has no `/` (the environment's, else [`DEFAULT_PATH`]).
pub struct Exec {
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// NULL-terminated arrays of the addresses of `argv`'s and `envp`'s
    /// strings (whose heap buffers do not move when `Exec` does), kept as
    /// integers so that `Exec` is `Send` and `Sync`.
    argv_ptrs: Vec<usize>,
    envp_ptrs: Vec<usize>,
    path_var: CString,
}

impl Exec {
    /// `args` (`args[0]` is the command) with environment `env`
    /// (`KEY=VALUE` entries).
    pub fn new(args: &[String], env: &[String]) -> Result<Exec, SpecError> {
        if args.is_empty() {
            return Err(SpecError::NoCommand);
        }
        let argv = args
            .iter()
            .map(|a| cstring("argument", a))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = env
            .iter()
            .map(|e| cstring("environment entry", e))
            .collect::<Result<Vec<_>, _>>()?;
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let path_var = cstring("PATH", path_var)?;
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr() as usize)
                .chain([0])
                .collect::<Vec<_>>()
        };
        Ok(Exec {
            argv_ptrs: ptrs(&argv),
            envp_ptrs: ptrs(&envp),
            argv,
            envp,
            path_var,
        })
    }

    /// The argv and environment of a container process.
    pub fn from_process(process: &ProcessSpec) -> Result<Exec, SpecError> {
        Exec::new(&process.args, &process.env)
    }

    /// `argv[0]`, as given.
    pub fn command(&self) -> &str {
        self.argv[0].to_str().unwrap_or("?")
    }
    /// The `PATH` searched.
    pub fn path_var(&self) -> &str {
        self.path_var.to_str().unwrap_or("?")
    }
    pub(crate) fn command_c(&self) -> &std::ffi::CStr {
        &self.argv[0]
    }
    pub(crate) fn path_c(&self) -> &std::ffi::CStr {
        &self.path_var
    }
    pub(crate) fn argv_ptrs(&self) -> &[usize] {
        &self.argv_ptrs
    }
    pub(crate) fn envp_ptrs(&self) -> &[usize] {
        &self.envp_ptrs
    }
    pub fn env_len(&self) -> usize {
        self.envp.len()
    }
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("argv", &self.argv)
            .field("envp", &self.envp)
            .field("path_var", &self.path_var)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use moat_plan::Rlimit;

    use super::*;

    fn process() -> ProcessSpec {
        ProcessSpec {
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["HOME=/root".into(), "PATH=/bin:/usr/bin".into()],
            cwd: "/srv".into(),
            uid: 1000,
            gid: 100,
            additional_gids: vec![27, 10],
            tty: false,
            interactive: false,
            hostname: "c".into(),
        }
    }

    fn plan() -> Plan {
        moat_policy::compile(&moat_policy::Policy::builtin("baseline").unwrap()).unwrap()
    }

    #[test]
    fn a_spec_is_built_from_the_plan_and_the_process() {
        let mut plan = plan();
        plan.capabilities = vec!["NET_BIND_SERVICE".into(), "cap_chown".into()];
        plan.process.additional_gids = vec![10, 5];
        plan.rlimits = vec![Rlimit {
            resource: RlimitResource::Nofile,
            soft: 64,
            hard: 128,
        }];
        plan.audit_denied = true;
        let spec = DropSpec::new(&plan, &process()).unwrap();
        assert_eq!(spec.uid(), 1000);
        assert_eq!(spec.gid(), 100);
        assert_eq!(spec.groups(), vec![5, 10, 27]);
        assert_eq!(spec.capabilities(), (1 << 10) | 1);
        assert_eq!(
            spec.rlimits(),
            &[Limit {
                resource: Resource::Nofile,
                soft: 64,
                hard: 128
            }]
        );
        assert_eq!(spec.cwd(), "/srv");
        assert_eq!(spec.seccomp_len(), plan.seccomp.instructions.len());
        assert!(spec.seccomp_len() > 0);
        assert!(spec.seccomp_log);
        assert!(spec.keep_fds.is_empty());
        let kept = spec.keep_fds(&[2, 9, 7, 9]);
        assert_eq!(kept.keep_fds, vec![7, 9]);
    }

    #[test]
    fn bad_plans_and_processes_are_refused_by_name() {
        let mut plan = plan();
        plan.capabilities = vec!["FLY".into()];
        assert_eq!(
            DropSpec::new(&plan, &process()).unwrap_err().to_string(),
            "unknown capability \"FLY\" in the plan"
        );
        let mut plan = self::plan();
        plan.rlimits = vec![Rlimit {
            resource: RlimitResource::Nproc,
            soft: 10,
            hard: 5,
        }];
        assert_eq!(
            DropSpec::new(&plan, &process()).unwrap_err().to_string(),
            "Nproc soft limit 10 is above its hard limit 5 in the plan"
        );
        let mut p = process();
        p.cwd = "srv".into();
        assert_eq!(
            DropSpec::new(&self::plan(), &p).unwrap_err().to_string(),
            "working directory \"srv\" is not absolute"
        );
        p.cwd = String::new();
        assert_eq!(DropSpec::new(&self::plan(), &p).unwrap().cwd(), "/");
        p.args = vec![];
        assert_eq!(
            Exec::from_process(&p).unwrap_err().to_string(),
            "no command to run: the image has no entrypoint or cmd and none was given"
        );
        p.args = vec!["a\0b".into()];
        assert_eq!(
            Exec::from_process(&p).unwrap_err().to_string(),
            "argument \"a\\0b\" contains a NUL byte"
        );
    }

    #[test]
    fn unprivileged_keeps_nothing() {
        let s = DropSpec::unprivileged(7, 8, &[9, 9]);
        assert_eq!((s.uid(), s.gid(), s.groups()), (7, 8, vec![9]));
        assert_eq!(s.capabilities(), 0);
        assert!(s.rlimits().is_empty());
        assert_eq!(s.seccomp_len(), 0);
        assert_eq!(s.cwd(), "/");
    }

    #[test]
    fn exec_arrays_are_null_terminated_and_path_comes_from_env() {
        let e = Exec::from_process(&process()).unwrap();
        assert_eq!(e.command(), "sh");
        assert_eq!(e.path_var(), "/bin:/usr/bin");
        assert_eq!(e.argv_ptrs().len(), 4);
        assert_eq!(e.argv_ptrs()[3], 0);
        assert_eq!(e.envp_ptrs().len(), 3);
        assert_eq!(e.envp_ptrs()[2], 0);
        fn send_sync<T: Send + Sync>(_: &T) {}
        send_sync(&e);
        let e = Exec::new(&["x".into()], &[]).unwrap();
        assert_eq!(e.path_var(), DEFAULT_PATH);
        assert_eq!(e.envp_ptrs(), &[0]);
    }
}
