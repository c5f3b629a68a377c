//! The container process between `clone` and `execve`.
//!
//! This code runs in a fork of the supervisor that is already in the new
//! user, mount, PID, IPC, UTS and network namespaces. It never executes the
//! moat binary again (CVE-2019-5736): after `pivot_root` the host binary is
//! not reachable by path, the process is non-dumpable (so `/proc/1/exe` of
//! this process cannot be opened by anything in the container), and the
//! only `execve` it makes is the workload's, which replaces this image.
//! Errors go back to the supervisor over a pipe as JSON ([`ChildError`]).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};

use moat_policy::plan::{MountPlan, NetworkPlan};

use crate::{
    capability_mask, check_rlimits, cstring, mounts, sys, ChildError, SandboxConfig, SandboxError,
};

/// Everything the child needs, computed before `clone` so that the child
/// does as little as possible.
pub(crate) struct ChildSetup {
    pub mounts: Vec<MountPlan>,
    pub hostname: String,
    pub loopback: bool,
    pub rlimits: Vec<(u32, u64, u64)>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub caps: u64,
    pub cwd_str: String,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub command: String,
    pub path_var: String,
    pub seccomp: Vec<libc::sock_filter>,
    /// Log denied calls (`audit.denied_syscalls`).
    pub seccomp_log: bool,
    pub tty: bool,
    pub interactive: bool,
}

impl ChildSetup {
    pub fn new(cfg: &SandboxConfig) -> Result<Self, SandboxError> {
        let p = &cfg.process;
        let argv = p
            .args
            .iter()
            .map(|a| cstring("argument", a))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = p
            .env
            .iter()
            .map(|e| cstring("environment entry", e))
            .collect::<Result<Vec<_>, _>>()?;
        let path_var = p
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .to_string();
        let mut groups = p.additional_gids.clone();
        groups.extend(&cfg.plan.process.additional_gids);
        Ok(Self {
            mounts: mounts::without_absent_defaults(&cfg.rootfs, &cfg.plan.mounts),
            hostname: p.hostname.clone(),
            loopback: !matches!(cfg.plan.network, NetworkPlan::None),
            rlimits: check_rlimits(&cfg.plan.rlimits)?,
            uid: p.uid,
            gid: p.gid,
            groups,
            caps: capability_mask(&cfg.plan.capabilities)?,
            cwd_str: p.cwd.clone(),
            argv,
            envp,
            command: p.args[0].clone(),
            path_var,
            seccomp_log: cfg.plan.audit_denied,
            seccomp: cfg
                .plan
                .seccomp
                .instructions
                .iter()
                .map(|i| libc::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect(),
            tty: p.tty,
            interactive: p.interactive,
        })
    }
}

/// Descriptors the child receives.
pub(crate) struct ChildFds {
    /// Read end of the "go" pipe: one byte once id maps and cgroups are set;
    /// EOF means the supervisor died.
    pub go: OwnedFd,
    /// Write end of the error pipe (close-on-exec: EOF means exec worked).
    pub err: OwnedFd,
    /// pty peer for `-t`, and its host path `/dev/pts/N`.
    pub pty: Option<OwnedFd>,
    /// Without `-t`: pipe ends that replace stdin, stdout and stderr where
    /// those are a host terminal (the supervisor relays them), so that the
    /// workload never holds a descriptor of a host terminal.
    pub relayed: [Option<OwnedFd>; 3],
    pub pty_path: Option<String>,
    /// The read-only rootfs clone made by the supervisor (idmapped if the
    /// filesystem supports it).
    pub rootfs_mnt: Option<OwnedFd>,
}

/// The highest capability number this kernel knows.
pub(crate) fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Entry point of `moat exec`'s process, already in the container's
/// namespaces (joined with `setns` by its parent, which then exited);
/// never returns.
pub(crate) fn exec_main(setup: &ChildSetup, mut fds: ChildFds, last_cap: u32) -> ! {
    let err = match exec_run(setup, &mut fds, last_cap) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let kind = err.kind;
    if let Ok(json) = serde_json::to_vec(&err) {
        let _ = sys::write_fd(fds.err.as_fd(), &json);
    }
    sys::exit_now(kind as i32)
}

fn exec_run(s: &ChildSetup, fds: &mut ChildFds, last_cap: u32) -> Result<Never, ChildError> {
    sys::set_pdeathsig(libc::SIGKILL).map_err(|e| ChildError::io("PR_SET_PDEATHSIG", e))?;
    sys::set_dumpable(false).map_err(|e| ChildError::io("PR_SET_DUMPABLE", e))?;
    sys::setsid().map_err(|e| ChildError::io("setsid", e))?;
    let mut byte = [0u8; 1];
    let mut go = File::from(
        fds.go
            .try_clone()
            .map_err(|e| ChildError::io("go pipe", e))?,
    );
    match go.read(&mut byte) {
        Ok(1) => {}
        _ => sys::exit_now(125),
    }
    drop(go);
    // Joining the mount namespace put us at its root, the container's.
    std::env::set_current_dir("/").map_err(|e| ChildError::io("entering the root", e))?;
    enter_workload(s, fds, last_cap)
}

/// Entry point of the child; never returns.
pub(crate) fn main(setup: &ChildSetup, mut fds: ChildFds) -> ! {
    let err = match run(setup, &mut fds) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let kind = err.kind;
    if let Ok(json) = serde_json::to_vec(&err) {
        let _ = sys::write_fd(fds.err.as_fd(), &json);
    }
    sys::exit_now(kind as i32)
}

pub(crate) enum Never {}

fn run(s: &ChildSetup, fds: &mut ChildFds) -> Result<Never, ChildError> {
    // Die with the supervisor from the very start; nothing in the container
    // may ptrace or open /proc/<pid>/exe of this (moat) image.
    sys::set_pdeathsig(libc::SIGKILL).map_err(|e| ChildError::io("PR_SET_PDEATHSIG", e))?;
    sys::set_dumpable(false).map_err(|e| ChildError::io("PR_SET_DUMPABLE", e))?;
    // Rule 11: a session of its own, so that no host terminal is the
    // container's controlling terminal (no /dev/tty, no tcsetpgrp, no
    // TIOCSTI through it, no SIGTTOU/SIGHUP from the host's job control).
    sys::setsid().map_err(|e| ChildError::io("setsid", e))?;

    let mut byte = [0u8; 1];
    let mut go = File::from(
        fds.go
            .try_clone()
            .map_err(|e| ChildError::io("go pipe", e))?,
    );
    match go.read(&mut byte) {
        Ok(1) => {}
        _ => sys::exit_now(125), // supervisor gone before we were released
    }
    drop(go);

    let prepared = mounts::prepare_root(fds.rootfs_mnt.take())?;
    // Become container root (host uid = first id of the map).
    sys::set_ids(0, 0, &[]).map_err(|e| ChildError::io("becoming container root", e))?;
    // Now that the supervisor put us into our cgroups: a cgroup namespace
    // rooted there.
    sys::unshare(libc::CLONE_NEWCGROUP)
        .map_err(|e| ChildError::io("unshare(CLONE_NEWCGROUP)", e))?;

    let last_cap = last_cap();

    let root = mounts::build(prepared, &s.mounts, fds.pty_path.as_deref())?;
    sys::pivot_into(root.as_fd()).map_err(|e| ChildError::io("pivot_root", e))?;
    drop(root);

    sys::sethostname(&s.hostname).map_err(|e| ChildError::io("sethostname", e))?;
    if s.loopback {
        sys::loopback_up().map_err(|e| ChildError::io("bringing up loopback", e))?;
    }
    enter_workload(s, fds, last_cap)
}

/// The last steps, once the process is in the container's namespaces and
/// root (the first process after `pivot_root`, `moat exec`'s after
/// `setns`): rlimits, stdio, working directory, privileges, seccomp,
/// `execve`.
pub(crate) fn enter_workload(
    s: &ChildSetup,
    fds: &mut ChildFds,
    last_cap: u32,
) -> Result<Never, ChildError> {
    for &(res, soft, hard) in &s.rlimits {
        sys::setrlimit(res, soft, hard)
            .map_err(|e| ChildError::io(format!("setrlimit({res})"), e))?;
    }

    // stdio
    if let Some(pty) = &fds.pty {
        sys::set_controlling_tty(pty.as_fd()).map_err(|e| ChildError::io("TIOCSCTTY", e))?;
        for fd in 0..3 {
            sys::dup2(pty.as_fd(), fd).map_err(|e| ChildError::io("attaching the pty", e))?;
        }
    } else if !s.interactive {
        let null: OwnedFd = File::open("/dev/null")
            .map_err(|e| ChildError::io("opening /dev/null for stdin", e))?
            .into();
        sys::dup2(null.as_fd(), 0).map_err(|e| ChildError::io("stdin", e))?;
    }
    if fds.pty.is_none() {
        for (fd, pipe) in fds.relayed.iter().enumerate() {
            if let Some(pipe) = pipe {
                sys::dup2(pipe.as_fd(), fd as i32)
                    .map_err(|e| ChildError::io("attaching the stdio relay", e))?;
            }
        }
    }

    // Working directory, then rule 3: it must resolve inside the root.
    if let Err(e) = std::env::set_current_dir(&s.cwd_str) {
        return Err(ChildError::msg(
            "working directory",
            format!(
                "{} does not exist in the container or is not a directory ({e})",
                s.cwd_str
            ),
        ));
    }
    match std::env::current_dir() {
        Ok(p) if p.is_absolute() && !p.to_string_lossy().starts_with("(unreachable)") => {}
        other => {
            return Err(ChildError::msg(
                "working directory",
                format!(
                    "{} resolves outside the container root ({other:?})",
                    s.cwd_str
                ),
            ))
        }
    }

    let exe = resolve_command(&s.command, &s.path_var)?;

    // Privileges: bounding set, ids, then exactly the plan's capabilities.
    for cap in 0..=last_cap {
        if s.caps & (1 << cap) == 0 {
            sys::capbset_drop(cap).map_err(|e| {
                ChildError::io(
                    format!("dropping capability {cap} from the bounding set"),
                    e,
                )
            })?;
        }
    }
    if s.caps != 0 {
        sys::set_keepcaps(true).map_err(|e| ChildError::io("PR_SET_KEEPCAPS", e))?;
    }
    sys::set_ids(s.uid, s.gid, &s.groups)
        .map_err(|e| ChildError::io(format!("switching to uid {} gid {}", s.uid, s.gid), e))?;
    sys::capset(s.caps).map_err(|e| ChildError::io("capset", e))?;
    sys::ambient_clear_all().map_err(|e| ChildError::io("clearing ambient capabilities", e))?;
    for cap in 0..=last_cap {
        if s.caps & (1 << cap) != 0 {
            sys::ambient_raise(cap)
                .map_err(|e| ChildError::io(format!("raising ambient capability {cap}"), e))?;
        }
    }
    sys::set_keepcaps(false).map_err(|e| ChildError::io("PR_SET_KEEPCAPS", e))?;
    sys::set_no_new_privs().map_err(|e| ChildError::io("PR_SET_NO_NEW_PRIVS", e))?;
    // Changing credentials cleared the parent-death signal: set it again and
    // then make sure the supervisor did not die in between (it holds the
    // write end of the go pipe until the container exits).
    sys::set_pdeathsig(libc::SIGKILL).map_err(|e| ChildError::io("PR_SET_PDEATHSIG", e))?;
    if let Ok(ready) = sys::poll_readable(&[fds.go.as_fd()], 0) {
        if ready[0] {
            sys::exit_now(125);
        }
    }

    sys::reset_signal_dispositions();
    sys::set_signal_mask(&sys::SigSet::of(&[]))
        .map_err(|e| ChildError::io("unblocking signals", e))?;
    // Rule 3: nothing but 0, 1, 2 survives the execve (the error pipe is
    // close-on-exec too, which is how the supervisor learns exec worked).
    sys::close_range_cloexec(3).map_err(|e| ChildError::io("close_range", e))?;

    // Last: the seccomp filter, immediately before execve.
    if !s.seccomp.is_empty() {
        sys::seccomp_install(&s.seccomp, s.seccomp_log)
            .map_err(|e| ChildError::io("installing the seccomp filter", e))?;
    }
    let err = sys::execve(&exe, &s.argv, &s.envp);
    Err(ChildError {
        step: "execve".into(),
        detail: format!("{}: {err}", s.command),
        kind: if err.raw_os_error() == Some(libc::ENOENT) {
            127
        } else {
            126
        },
    })
}

/// `execvp` semantics, inside the container root (we are after pivot_root).
fn resolve_command(command: &str, path_var: &str) -> Result<CString, ChildError> {
    let not_found = || ChildError {
        step: "command".into(),
        detail: command.to_string(),
        kind: 127,
    };
    if command.contains('/') {
        let c = CString::new(command).map_err(|_| not_found())?;
        return Ok(c);
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let cand = format!("{dir}/{command}");
        let c = CString::new(cand).map_err(|_| not_found())?;
        if sys::is_executable(&c) {
            return Ok(c);
        }
    }
    Err(not_found())
}
