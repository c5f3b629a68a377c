//! The container process between `clone` and `execve`.
//!
//! This code runs in a fork of the supervisor that is already in the new
//! user, mount, PID, IPC, UTS and network namespaces. It never executes the
//! moat binary again (CVE-2019-5736): after `pivot_root` the host binary is
//! not reachable by path, the process is non-dumpable (so `/proc/1/exe` of
//! this process cannot be opened by anything in the container), and the
//! only `execve` it makes is the workload's, which replaces this image.
//! Errors go back to the supervisor over a pipe as JSON ([`ChildError`]).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};

use moat_policy::plan::{MountPlan, NetworkPlan};
use moat_privdrop::{DropSpec, Exec, SpecError, Step};

use crate::{check_rlimits, mounts, sys, ChildError, SandboxConfig, SandboxError};

/// Everything the child needs, computed before `clone` so that the child
/// does as little as possible.
pub(crate) struct ChildSetup {
    pub mounts: Vec<MountPlan>,
    pub hostname: String,
    pub loopback: bool,
    /// The privilege drop and the exec, shared with the guest agent.
    pub drop: DropSpec,
    pub exec: Exec,
    pub tty: bool,
    pub interactive: bool,
    /// The workload's uid inside the container (owner of its terminal).
    pub uid: u32,
}

impl ChildSetup {
    pub fn new(cfg: &SandboxConfig) -> Result<Self, SandboxError> {
        let p = &cfg.process;
        // The host's hard limits bound what the plan may ask for.
        check_rlimits(&cfg.plan.rlimits)?;
        let spec_err = |e: SpecError| match e {
            SpecError::UnknownCapability(c) => SandboxError::UnknownCapability(c),
            other => SandboxError::InvalidProcess(other.to_string()),
        };
        Ok(Self {
            mounts: mounts::without_absent_defaults(&cfg.rootfs, &cfg.plan.mounts),
            hostname: p.hostname.clone(),
            // `egress`: the supervisor made the namespace, loopback is up
            // and the container holds no capability over it.
            loopback: matches!(cfg.plan.network, NetworkPlan::Loopback),
            drop: DropSpec::new(&cfg.plan, p).map_err(spec_err)?,
            exec: Exec::from_process(p).map_err(spec_err)?,
            tty: p.tty,
            interactive: p.interactive,
            uid: p.uid,
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
    /// The volumes' detached mounts, in the plan's order (see `volumes`).
    pub volumes: Vec<OwnedFd>,
    /// `moat exec -t`: where the process sends the master of the terminal
    /// it opens in the container's own devpts (so that its name resolves
    /// there, as a first process's `/dev/console` does).
    pub console_socket: Option<OwnedFd>,
    /// `egress`: a sysfs of the container's network namespace mounted by
    /// the supervisor (the container cannot: mounting sysfs needs
    /// CAP_SYS_ADMIN over the owner of the network namespace).
    pub sysfs_mnt: Option<OwnedFd>,
    /// `network.dns: true`: the supervisor's read-only mount of the
    /// container's `/etc/resolv.conf` (see `network`).
    pub resolv_mnt: Option<OwnedFd>,
}

/// Entry point of `moat exec`'s process, already in the container's
/// namespaces (joined with `setns` by its parent, which then exited);
/// never returns.
pub(crate) fn exec_main(setup: &ChildSetup, mut fds: ChildFds) -> ! {
    let result = exec_run(setup, &mut fds);
    report_and_exit(result, &fds)
}

fn exec_run(s: &ChildSetup, fds: &mut ChildFds) -> Result<Never, ChildError> {
    sys::set_pdeathsig(libc::SIGKILL).map_err(|e| ChildError::io("PR_SET_PDEATHSIG", e))?;
    sys::set_dumpable(false).map_err(|e| ChildError::io("PR_SET_DUMPABLE", e))?;
    sys::setsid().map_err(|e| ChildError::io("setsid", e))?;
    if let Some(sock) = fds.console_socket.take() {
        // As container root: a terminal of the container's devpts, owned
        // by the workload's user and the tty group (5), mode 0620.
        sys::set_ids(0, 0, &[]).map_err(|e| ChildError::io("becoming container root", e))?;
        let (master, peer) =
            sys::open_pty().map_err(|e| ChildError::io("opening the container's /dev/ptmx", e))?;
        std::os::unix::fs::fchown(&peer, Some(s.uid), Some(5))
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                File::from(peer.try_clone()?)
                    .set_permissions(std::fs::Permissions::from_mode(0o620))
            })
            .map_err(|e| ChildError::io("the terminal's owner", e))?;
        sys::send_fd(sock.as_fd(), master.as_fd())
            .map_err(|e| ChildError::io("handing the terminal to moat exec", e))?;
        fds.pty = Some(peer);
    }
    wait_for_go(fds)?;
    // Joining the mount namespace put us at its root, the container's.
    std::env::set_current_dir("/").map_err(|e| ChildError::io("entering the root", e))?;
    enter_workload(s, fds)
}

/// Entry point of the child; never returns.
pub(crate) fn main(setup: &ChildSetup, mut fds: ChildFds) -> ! {
    let result = run(setup, &mut fds);
    report_and_exit(result, &fds)
}

/// Sends the error that stopped the process before `execve` to the
/// supervisor as JSON and exits with its code.
fn report_and_exit(result: Result<Never, ChildError>, fds: &ChildFds) -> ! {
    let err = match result {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if let Ok(json) = serde_json::to_vec(&err) {
        let _ = sys::write_fd(fds.err.as_fd(), &json);
    }
    sys::exit_now(err.kind as i32)
}

/// Waits for the supervisor's one byte on the go pipe; exits 125 at EOF
/// (the supervisor is gone before it released this process).
fn wait_for_go(fds: &ChildFds) -> Result<(), ChildError> {
    let mut byte = [0u8; 1];
    let mut go = File::from(
        fds.go
            .try_clone()
            .map_err(|e| ChildError::io("go pipe", e))?,
    );
    match go.read(&mut byte) {
        Ok(1) => Ok(()),
        _ => sys::exit_now(125),
    }
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

    wait_for_go(fds)?;

    let prepared = mounts::prepare_root(fds.rootfs_mnt.take())?
        .with_sysfs(fds.sysfs_mnt.take())
        .with_resolv(fds.resolv_mnt.take());
    // Become container root (host uid = first id of the map).
    sys::set_ids(0, 0, &[]).map_err(|e| ChildError::io("becoming container root", e))?;
    // Now that the supervisor put us into our cgroups: a cgroup namespace
    // rooted there.
    sys::unshare(libc::CLONE_NEWCGROUP)
        .map_err(|e| ChildError::io("unshare(CLONE_NEWCGROUP)", e))?;

    let volumes = std::mem::take(&mut fds.volumes);
    let root = mounts::build(prepared, &s.mounts, volumes, fds.pty_path.as_deref())?;
    sys::pivot_into(root.as_fd()).map_err(|e| ChildError::io("pivot_root", e))?;
    drop(root);

    sys::sethostname(&s.hostname).map_err(|e| ChildError::io("sethostname", e))?;
    if s.loopback {
        moat_net::loopback_up().map_err(|e| ChildError::io("bringing up loopback", e))?;
    }
    enter_workload(s, fds)
}

/// The last steps, once the process is in the container's namespaces and
/// root (the first process after `pivot_root`, `moat exec`'s after
/// `setns`): stdio, then the shared privilege-drop sequence up to `execve`.
pub(crate) fn enter_workload(s: &ChildSetup, fds: &mut ChildFds) -> Result<Never, ChildError> {
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

    // The shared sequence: rlimits, bounding set, ids, capabilities,
    // no_new_privs, parent-death signal (checked against the go pipe, which
    // the supervisor holds until the container exits), signals, fds,
    // working directory, PATH lookup, seccomp, execve.
    let f = moat_privdrop::drop_and_exec(&s.drop, &s.exec, Some(fds.go.as_fd()));
    if f.step == Step::ParentGone {
        sys::exit_now(125);
    }
    Err(ChildError {
        step: f.step_name(&s.drop),
        detail: f.detail(&s.drop, &s.exec),
        kind: f.exit_code(),
    })
}
