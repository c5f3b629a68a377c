//! The supervisor side: create the cgroups and the state file, clone the
//! container process into its namespaces, map its ids, release it, then
//! relay stdio (for `-t`), forward signals, enforce the stop timeout and
//! collect the exit status through a pidfd (rule 5: no pid-reuse races).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

use crate::cgroup::Cgroups;
use crate::child::{self, ChildFds, ChildSetup};
use crate::state::{self, ContainerState, StateError};
use crate::sys::{self, Exit, Forked, SigSet};
use crate::{ChildError, SandboxConfig, SandboxError};
use moat_policy::plan::RootPlan;
use moat_runtime::Isolation;

const FORWARDED: [i32; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGWINCH,
];

/// The namespaces a container's first process is cloned into.
const CONTAINER_NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET;

/// Blocks the forwarded signals and SIGCHLD before a clone (the child
/// unblocks them right before `execve`); the supervisor reads them from
/// the returned signalfd. Returns the previous mask too.
fn block_forwarded() -> Result<(SigSet, OwnedFd), SandboxError> {
    let mut blocked: Vec<i32> = FORWARDED.to_vec();
    blocked.push(libc::SIGCHLD);
    let blocked = SigSet::of(&blocked);
    let old_mask = sys::block_signals(&blocked).map_err(prep("blocking signals"))?;
    let sigfd = sys::signalfd(&blocked).map_err(prep("a signalfd"))?;
    Ok((old_mask, sigfd))
}

fn prep(what: &str) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Prepare {
        what: what.to_string(),
        source,
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let (r, w) = std::io::pipe().map_err(prep("a pipe"))?;
    Ok((r.into(), w.into()))
}

/// Everything that must be undone when the container ends: its cgroups
/// go; its record says it stopped (with the exit code when known).
struct Cleanup<'a> {
    cfg: &'a SandboxConfig,
    cgroups: Cgroups,
    exit: Option<i32>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.cgroups.remove();
        let Ok(_lock) = state::lock(&self.cfg.run_root) else {
            return;
        };
        let Some(mut st) = state::read_all(&self.cfg.run_root)
            .ok()
            .and_then(|all| all.into_iter().find(|s| s.id.as_str() == self.cfg.id))
        else {
            return;
        };
        match self.exit {
            Some(code) => {
                if st.status == moat_runtime::Status::Paused {
                    st.status = moat_runtime::Status::Running;
                }
                let _ = st.stopped(code);
            }
            None => st.lost("it could not be started"),
        }
        st.supervisor_pid = 0;
        let _ = state::write(&self.cfg.run_root, &st);
    }
}

pub(crate) fn start_and_wait(cfg: &SandboxConfig, setup: ChildSetup) -> Result<i32, SandboxError> {
    // Name check (for a container the core has not created), state
    // directory and cgroups under the lock.
    let cleanup = {
        let _lock = state::lock(&cfg.run_root)?;
        let id = moat_runtime::ContainerId::parse(&cfg.id).map_err(StateError::from)?;
        let name = moat_runtime::ContainerName::parse(&cfg.name).map_err(StateError::from)?;
        let all = state::read_all(&cfg.run_root)?;
        let existing = all.iter().find(|s| s.id == id).cloned();
        if let Some(other) = all.iter().find(|s| s.name == name && s.id != id) {
            return Err(StateError::NameInUse {
                name: cfg.name.clone(),
                id: other.id.to_string(),
            }
            .into());
        }
        let mut owners: Vec<u32> = all
            .iter()
            .filter(|s| state::is_alive(s))
            .map(|s| s.userns_owner)
            .collect();
        // A host account in the range must never own a container's
        // namespace: its processes would hold every capability over it.
        owners.extend(crate::idmap::host_accounts(std::path::Path::new(
            "/etc/passwd",
        )));
        let userns_owner =
            crate::idmap::userns_owner(&owners).ok_or_else(|| SandboxError::Prepare {
                what: "a user-namespace owner uid (all are in use by running containers)".into(),
                source: std::io::Error::from_raw_os_error(libc::EAGAIN),
            })?;
        let mut st = match existing {
            Some(mut st) => {
                st.rearm()?;
                st
            }
            None => ContainerState::new(id, name, Isolation::Sandbox, cfg.image_id.clone()),
        };
        let cgroups = Cgroups::create(&cfg.id, &cfg.plan.cgroup)?;
        let me = std::process::id() as i32;
        st.command = cfg.process.args.clone();
        st.supervisor_pid = me;
        st.supervisor_start_time = state::process_start_time(me).unwrap_or(0);
        st.creator_pid = 0;
        st.cgroups = cgroups.paths();
        st.userns_owner = userns_owner;
        st.policy_digest = cfg.plan.policy_digest.clone();
        st.boot_id = moat_runtime::record::boot_id();
        let cleanup = Cleanup {
            cfg,
            cgroups,
            exit: None,
        };
        state::write(&cfg.run_root, &st)?;
        (cleanup, st)
    };
    let (mut cleanup, mut st) = cleanup;

    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (pty, relays) = stdio_for(cfg, &setup)?;
    let pty_path = match &pty {
        Some((m, _)) => Some(format!(
            "/dev/pts/{}",
            sys::pty_number(m.as_fd()).map_err(prep("the pseudo-terminal number"))?
        )),
        None => None,
    };

    // Image files owned by host root should look owned by container root
    // (an idmapped clone); else the container process clones its working
    // directory (the rootfs) itself.
    let rootfs_mnt = crate::idmap::idmapped_rootfs(&cfg.rootfs, &cfg.id_map).ok();
    // `root: ephemeral`: that clone becomes the lower layer of an overlay
    // on a tmpfs of the policy's size (see `ephemeral`).
    let rootfs_mnt = match cfg.plan.root {
        RootPlan::ReadOnly => rootfs_mnt,
        RootPlan::Ephemeral { size_bytes } => {
            let lower = match rootfs_mnt {
                Some(m) => m,
                None => {
                    plain_rootfs(&cfg.rootfs).map_err(prep(
                        "a read-only clone of the rootfs for `filesystem.root: ephemeral` (the supervisor needs CAP_SYS_ADMIN)",
                    ))?
                }
            };
            Some(crate::ephemeral::overlay(&lower, size_bytes).map_err(prep(
                "the ephemeral root (an overlay with a tmpfs over the image)",
            ))?)
        }
    };
    // Volumes: opened and mounted here, as host root, never by path in
    // the container (see `volumes`).
    let volumes = crate::volumes::prepare(&setup.mounts, &cfg.id_map)?;
    // The container process starts in the rootfs directory (its mount
    // point) and as the owner uid (see `idmap::userns_owner`).
    let saved_cwd: OwnedFd = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(".")
        .map_err(prep("the working directory"))?
        .into();
    std::env::set_current_dir(&cfg.rootfs).map_err(prep("entering the rootfs"))?;

    // `egress`: the namespace, its table and pasta exist before the
    // container does; the container is cloned into it (network.rs).
    let mut net = crate::network::start(cfg, st.userns_owner)?;
    let resolv_mnt = net.as_mut().and_then(|n| n.take_resolv());
    let (entered, sysfs_mnt) = match &net {
        Some(n) => {
            let entered = n.enter()?;
            let sysfs = crate::mounts::sysfs().map_err(prep("the container's sysfs"))?;
            (Some(entered), Some(sysfs))
        }
        None => (None, None),
    };

    let (old_mask, sigfd) = block_forwarded()?;

    let ns = match net {
        Some(_) => CONTAINER_NAMESPACES & !libc::CLONE_NEWNET,
        None => CONTAINER_NAMESPACES,
    };
    // Rule 7: the user namespace is owned by a per-container unprivileged
    // uid, so that the kernel's per-user counters (inotify instances and
    // watches, message queue bytes, pending signals, user namespaces) of
    // everything inside are charged to that uid, never to host root.
    // The id maps are written while this process still is that owner: a
    // root without CAP_SYS_ADMIN has capabilities over the namespace only
    // as its owner.
    let mut maps = Ok(());
    let forked = match sys::EuidSwitch::to(st.userns_owner) {
        Ok(switch) => {
            let r = sys::clone_child(ns).map_err(SandboxError::Clone);
            if let Ok(Forked::Parent { pid, .. }) = &r {
                maps = write_id_maps(cfg, *pid);
            }
            if !matches!(r, Ok(Forked::Child)) {
                let restored = switch.restore();
                let _ = sys::fchdir(saved_cwd.as_fd());
                restored.map_err(prep("restoring the effective uid"))?;
            }
            r
        }
        Err(e) => {
            let _ = sys::fchdir(saved_cwd.as_fd());
            Err(SandboxError::Clone(e))
        }
    };
    // The supervisor back in its own network namespace.
    if !matches!(forked, Ok(Forked::Child)) {
        drop(entered);
    }
    let (pid, pidfd) = match forked {
        Ok(Forked::Child) => {
            drop(go_w);
            drop(err_r);
            drop(sigfd);
            drop(saved_cwd);
            let fds = ChildFds {
                go: go_r,
                err: err_w,
                pty: pty.map(|(_, peer)| peer),
                relayed: relays.child,
                pty_path,
                rootfs_mnt,
                volumes,
                console_socket: None,
                sysfs_mnt,
                resolv_mnt,
            };
            child::main(&setup, fds);
        }
        Ok(Forked::Parent { pid, pidfd }) => (pid, pidfd),
        Err(e) => {
            let _ = sys::set_signal_mask(&old_mask);
            return Err(e);
        }
    };
    drop(go_r);
    drop(err_w);
    drop(rootfs_mnt);
    drop(sysfs_mnt);
    drop(resolv_mnt);
    drop(volumes);
    let (master, peer) = match pty {
        Some((m, p)) => (Some(m), Some(p)),
        None => (None, None),
    };
    drop(peer);
    let Relays { child, stdin, out } = relays;
    drop(child);

    let result = maps.and_then(|()| release(cfg, &cleanup, &mut st, pid, &pidfd, &go_w, err_r));
    let result = match result {
        Ok(()) => {
            if let Some(fd) = &cfg.started_notify {
                let _ = sys::write_fd(fd.as_fd(), &[moat_runtime::monitor::ready::STARTED]);
                // Detached: from here on this process only waits.
                moat_runtime::monitor::release_setup_pages();
            }
            let io = match master {
                Some(m) => Io::pty(m, cfg.process.interactive)?,
                None => Io {
                    master: None,
                    stdin,
                    out,
                },
            };
            supervise(cfg, &pidfd, &sigfd, io)
        }
        Err(e) => {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            let _ = sys::wait_pidfd(pidfd.as_fd(), false);
            Err(e)
        }
    };
    drop(go_w);
    let _ = sys::set_signal_mask(&old_mask);
    if let Ok(code) = &result {
        cleanup.exit = Some(*code);
        let kills = cleanup.cgroups.oom_kills();
        if kills > 0 {
            eprintln!(
                "{}",
                oom_message(*code, kills, cfg.plan.cgroup.memory_bytes)
            );
        }
    }
    drop(cleanup);
    // pasta and the namespace's file go once the container is gone.
    drop(net);
    result
}

/// A read-only, nosuid, nodev clone of `rootfs`, not idmapped.
fn plain_rootfs(rootfs: &std::path::Path) -> std::io::Result<OwnedFd> {
    let path = rootfs
        .to_str()
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let m = sys::open_tree(sys::cwd(), path, sys::OPEN_TREE_CLONE)?;
    sys::mount_setattr(
        m.as_fd(),
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        0,
        false,
    )?;
    Ok(m)
}

/// `moat exec`: starts `cfg.process` in the running container of
/// `target` (its namespaces joined with `setns`, its cgroups, the same
/// privilege drop and seccomp filter as its first process) and supervises
/// it like `moat run` does its workload. Returns its exit code.
pub(crate) fn exec_and_wait(
    cfg: &SandboxConfig,
    setup: ChildSetup,
    target: &ContainerState,
) -> Result<i32, SandboxError> {
    let gone = || SandboxError::Prepare {
        what: format!("entering container {}: it is not running", target.name),
        source: std::io::Error::from_raw_os_error(libc::ESRCH),
    };
    if target.pid <= 0 || state::process_start_time(target.pid) != Some(target.pid_start_time) {
        return Err(gone());
    }
    let target_fd = sys::pidfd_open(target.pid).map_err(|_| gone())?;
    if state::process_start_time(target.pid) != Some(target.pid_start_time) {
        return Err(gone());
    }
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (pid_r, pid_w) = pipe()?;
    // -t: the process opens its terminal in the container's own devpts and
    // sends the master back; else the relays of `moat run`.
    let (pty, relays, console) = if setup.tty {
        let (ours, theirs) = sys::seqpacket_pair().map_err(prep("a socket pair"))?;
        (None, Relays::default(), Some((ours, theirs)))
    } else {
        let (pty, relays) = stdio_for(cfg, &setup)?;
        (pty, relays, None)
    };
    let (console_ours, console_theirs) = match console {
        Some((o, t)) => (Some(o), Some(t)),
        None => (None, None),
    };
    let (old_mask, sigfd) = block_forwarded()?;
    // The container's own cgroup namespace too (its first process made it
    // after joining its cgroups).
    let ns = CONTAINER_NAMESPACES | libc::CLONE_NEWCGROUP;
    let joiner = match sys::clone_child(0) {
        Ok(Forked::Child) => {
            drop((go_w, err_r, pid_r, sigfd, console_ours));
            // The joiner: into the container's namespaces, then a child of
            // our parent that is in its PID namespace too; then it exits.
            let fail = |step: &str, e: std::io::Error| -> ! {
                let err = ChildError::io(step, e);
                if let Ok(json) = serde_json::to_vec(&err) {
                    let _ = sys::write_fd(err_w.as_fd(), &json);
                }
                sys::exit_now(125)
            };
            if let Err(e) = sys::set_pdeathsig(libc::SIGKILL) {
                fail("PR_SET_PDEATHSIG", e);
            }
            if let Err(e) = sys::set_dumpable(false) {
                fail("PR_SET_DUMPABLE", e);
            }
            if let Err(e) = sys::setns(target_fd.as_fd(), ns) {
                fail("joining the container's namespaces (setns)", e);
            }
            match sys::clone_parent() {
                Ok(0) => {
                    drop(pid_w);
                    let fds = ChildFds {
                        go: go_r,
                        err: err_w,
                        pty: pty.map(|(_, peer)| peer),
                        relayed: relays.child,
                        pty_path: None,
                        rootfs_mnt: None,
                        volumes: Vec::new(),
                        console_socket: console_theirs,
                        sysfs_mnt: None,
                        resolv_mnt: None,
                    };
                    child::exec_main(&setup, fds)
                }
                Ok(pid) => {
                    let _ = sys::write_fd(pid_w.as_fd(), pid.to_string().as_bytes());
                    sys::exit_now(0)
                }
                Err(e) => fail("starting the process in the container", e),
            }
        }
        Ok(Forked::Parent { pidfd, .. }) => pidfd,
        Err(e) => {
            let _ = sys::set_signal_mask(&old_mask);
            return Err(SandboxError::Clone(e));
        }
    };
    drop((go_r, err_w, pid_w, target_fd, console_theirs));
    let _ = sys::wait_pidfd(joiner.as_fd(), false);
    let mut pid_text = String::new();
    let _ = File::from(pid_r).read_to_string(&mut pid_text);
    let (mut master, peer) = match pty {
        Some((m, p)) => (Some(m), Some(p)),
        None => (None, None),
    };
    if let (Some(sock), Ok(_)) = (&console_ours, pid_text.trim().parse::<i32>()) {
        // EOF: the process failed before it had a terminal (its error
        // pipe says why).
        master = sys::recv_fd(sock.as_fd()).ok().flatten();
    }
    drop(peer);
    let Relays { child, stdin, out } = relays;
    drop(child);
    let result = match pid_text.trim().parse::<i32>() {
        Ok(pid) => start_exec(cfg, pid, &go_w, err_r).and_then(|pidfd| {
            let io = match master {
                Some(m) => Io::pty(m, cfg.process.interactive)?,
                None => Io {
                    master: None,
                    stdin,
                    out,
                },
            };
            supervise(cfg, &pidfd, &sigfd, io)
        }),
        Err(_) => Err(child_error(cfg, err_r)),
    };
    drop(go_w);
    let _ = sys::set_signal_mask(&old_mask);
    result
}

/// Puts the exec'd process `pid` (our child) into the container's
/// cgroups, releases it and waits for its verdict.
fn start_exec(
    cfg: &SandboxConfig,
    pid: i32,
    go_w: &OwnedFd,
    err_r: OwnedFd,
) -> Result<OwnedFd, SandboxError> {
    let pidfd = sys::pidfd_open(pid).map_err(prep("a pidfd of the exec'd process"))?;
    let joined = crate::cgroup::paths_for(&cfg.id)
        .unwrap_or_default()
        .iter()
        .try_for_each(|dir| std::fs::write(dir.join("cgroup.procs"), pid.to_string()));
    if let Err(e) = joined {
        let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        let _ = sys::wait_pidfd(pidfd.as_fd(), false);
        return Err(prep("joining the container's cgroups")(e));
    }
    sys::write_fd(go_w.as_fd(), b"g").map_err(prep("releasing the exec'd process"))?;
    let mut buf = Vec::new();
    File::from(err_r)
        .read_to_end(&mut buf)
        .map_err(prep("reading the exec'd process's start result"))?;
    if buf.is_empty() {
        return Ok(pidfd);
    }
    let _ = sys::wait_pidfd(pidfd.as_fd(), false);
    Err(parse_child_error(cfg, &buf))
}

/// The error the joiner reported (it could not enter the container).
fn child_error(cfg: &SandboxConfig, err_r: OwnedFd) -> SandboxError {
    let mut buf = Vec::new();
    let _ = File::from(err_r).read_to_end(&mut buf);
    parse_child_error(cfg, &buf)
}

/// The container's stdio on the host side: a pty (`-t`), owned by the
/// workload's user and the tty group; or, without `-t`, relay pipes for
/// whichever of stdin (with -i), stdout and stderr is a host terminal
/// (rule 11).
#[allow(clippy::type_complexity)]
fn stdio_for(
    cfg: &SandboxConfig,
    setup: &ChildSetup,
) -> Result<(Option<(OwnedFd, OwnedFd)>, Relays), SandboxError> {
    let pty = if setup.tty {
        let (master, peer) = sys::open_pty().map_err(prep("a pseudo-terminal"))?;
        // As runc leaves it: the console belongs to the workload's user and
        // the tty group (5), mode 0620 (crw--w----).
        std::os::unix::fs::fchown(
            &peer,
            Some(cfg.id_map.host_uid + cfg.process.uid),
            Some(cfg.id_map.host_gid + 5),
        )
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            File::from(peer.try_clone()?).set_permissions(std::fs::Permissions::from_mode(0o620))
        })
        .map_err(prep("the pseudo-terminal's owner"))?;
        Some((master, peer))
    } else {
        None
    };
    // Rule 11 without `-t`: a host terminal on stdin (with -i), stdout or
    // stderr is replaced by a pipe that the supervisor relays.
    let relays = if setup.tty {
        Relays::default()
    } else {
        Relays::new(setup.interactive)?
    };
    Ok((pty, relays))
}

/// What `moat run` says when the memory limit killed processes of the
/// container (the exit code alone, 137, does not say why).
pub(crate) fn oom_message(code: i32, kills: u64, limit: Option<u64>) -> String {
    let limit = match limit {
        Some(b) if b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        Some(b) => format!("{b} bytes"),
        None => "(none set)".into(),
    };
    if code == 128 + libc::SIGKILL {
        format!(
            "moat: the workload was killed by the container's memory limit of {limit} (exit {code}); raise resources.memory in the policy"
        )
    } else {
        format!(
            "moat: notice: the container's memory limit of {limit} killed {kills} of its process(es); raise resources.memory in the policy"
        )
    }
}

/// Writes the uid and gid maps of the container process.
fn write_id_maps(cfg: &SandboxConfig, pid: i32) -> Result<(), SandboxError> {
    for (which, file, map) in [
        ("uid", "uid_map", cfg.id_map.uid_map()),
        ("gid", "gid_map", cfg.id_map.gid_map()),
    ] {
        std::fs::write(format!("/proc/{pid}/{file}"), map)
            .map_err(|source| SandboxError::WriteIdMap { which, pid, source })?;
    }
    Ok(())
}

/// Joins cgroups, records the pid, lets the child go and waits
/// for its verdict: EOF on the error pipe means `execve` succeeded.
fn release(
    cfg: &SandboxConfig,
    cleanup: &Cleanup<'_>,
    st: &mut ContainerState,
    pid: i32,
    pidfd: &OwnedFd,
    go_w: &OwnedFd,
    err_r: OwnedFd,
) -> Result<(), SandboxError> {
    cleanup.cgroups.add(pid)?;
    if let Some(gate) = &cfg.start_gate {
        // Created: the process exists, in its namespaces and cgroups, and
        // waits; it starts when the gate opens (a byte), never at EOF.
        st.pid = pid;
        st.pid_start_time = state::process_start_time(pid).unwrap_or(0);
        state::write(&cfg.run_root, st)?;
        if let Some(fd) = &cfg.started_notify {
            let _ = sys::write_fd(fd.as_fd(), &[moat_runtime::monitor::ready::CREATED]);
        }
        let mut byte = [0u8; 1];
        match File::from(gate.try_clone().map_err(prep("the start gate"))?).read(&mut byte) {
            Ok(1) => {}
            _ => {
                return Err(SandboxError::Prepare {
                    what: "starting the created container: its start was abandoned".into(),
                    source: std::io::Error::from_raw_os_error(libc::ECANCELED),
                })
            }
        }
    }
    st.started(pid)?;
    state::write(&cfg.run_root, st)?;

    sys::write_fd(go_w.as_fd(), b"g").map_err(prep("releasing the container process"))?;
    let mut buf = Vec::new();
    File::from(err_r)
        .read_to_end(&mut buf)
        .map_err(prep("reading the container's start result"))?;
    if buf.is_empty() {
        return Ok(());
    }
    let _ = sys::wait_pidfd(pidfd.as_fd(), false);
    Err(parse_child_error(cfg, &buf))
}

/// The error a container process reported over its error pipe.
fn parse_child_error(cfg: &SandboxConfig, buf: &[u8]) -> SandboxError {
    let err: ChildError = serde_json::from_slice(buf).unwrap_or_else(|_| ChildError {
        step: "container setup".into(),
        detail: String::from_utf8_lossy(buf).into_owned(),
        kind: 125,
    });
    match err.kind {
        127 => SandboxError::CommandNotFound {
            command: cfg.process.args[0].clone(),
            path: cfg
                .process
                .env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or("(default)")
                .to_string(),
        },
        126 => SandboxError::CommandNotExecutable {
            command: cfg.process.args[0].clone(),
            detail: err.detail,
        },
        _ => SandboxError::Setup {
            step: err.step,
            detail: err.detail,
        },
    }
}

/// The pipes of the stdio relay (no `-t`): the child's ends, and the
/// supervisor's.
#[derive(Default)]
struct Relays {
    /// Given to the child as its fd 0, 1, 2 (where set).
    child: [Option<OwnedFd>; 3],
    /// Write end of the stdin pipe.
    stdin: Option<File>,
    /// Read ends of the stdout and stderr pipes with the host fd they go to.
    out: Vec<(File, i32)>,
}

impl Relays {
    fn new(interactive: bool) -> Result<Self, SandboxError> {
        let mut r = Relays::default();
        if interactive && sys::is_tty(0) {
            let (rd, wr) = pipe()?;
            r.child[0] = Some(rd);
            r.stdin = Some(File::from(wr));
        }
        let (out_tty, err_tty) = (sys::is_tty(1), sys::is_tty(2));
        if out_tty && err_tty && same_file(1, 2) {
            // One terminal for both: one pipe, so that the order of the
            // workload's stdout and stderr writes is kept.
            let (rd, wr) = pipe()?;
            r.child[2] = Some(wr.try_clone().map_err(prep("a pipe"))?);
            r.child[1] = Some(wr);
            r.out.push((File::from(rd), 1));
            return Ok(r);
        }
        for (fd, tty) in [(1, out_tty), (2, err_tty)] {
            if tty {
                let (rd, wr) = pipe()?;
                r.child[fd as usize] = Some(wr);
                r.out.push((File::from(rd), fd));
            }
        }
        Ok(r)
    }
}

/// Whether two of this process's descriptors are the same file.
fn same_file(a: i32, b: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let meta = |fd: i32| std::fs::metadata(format!("/proc/self/fd/{fd}")).ok();
    match (meta(a), meta(b)) {
        (Some(x), Some(y)) => (x.dev(), x.ino(), x.rdev()) == (y.dev(), y.ino(), y.rdev()),
        _ => false,
    }
}

/// What the supervision loop copies: the pty master (`-t`), or the relay
/// pipes.
struct Io {
    master: Option<File>,
    /// Where host stdin goes (the master or the stdin pipe); `None` once
    /// host stdin reached EOF (the pipe is then closed: EOF for the workload).
    stdin: Option<File>,
    /// Sources of output and the host fd each goes to.
    out: Vec<(File, i32)>,
}

impl Io {
    fn pty(master: OwnedFd, interactive: bool) -> Result<Self, SandboxError> {
        let m = File::from(master);
        let clone = |f: &File| f.try_clone().map_err(prep("the pseudo-terminal"));
        Ok(Io {
            stdin: if interactive { Some(clone(&m)?) } else { None },
            out: vec![(clone(&m)?, 1)],
            master: Some(m),
        })
    }
}

/// The supervision loop. Returns the exit code (128 + signal when killed).
fn supervise(
    cfg: &SandboxConfig,
    pidfd: &OwnedFd,
    sigfd: &OwnedFd,
    mut io: Io,
) -> Result<i32, SandboxError> {
    let serr = |source| SandboxError::Supervise {
        id: cfg.id.clone(),
        source,
    };
    let stdin_tty = sys::is_tty(0);
    let raw = match &io.master {
        Some(m) => {
            if let Some(ws) = sys::get_winsize(0).or_else(|| sys::get_winsize(1)) {
                sys::set_winsize(m.as_fd(), &ws);
            }
            if stdin_tty {
                sys::make_raw(0).ok()
            } else {
                None
            }
        }
        None => None,
    };
    let mut kill_at: Option<Instant> = None;
    let mut buf = vec![0u8; 16 * 1024];
    let stdin = std::io::stdin();
    let exit = loop {
        let mut fds = vec![pidfd.as_fd(), sigfd.as_fd()];
        fds.extend(io.out.iter().map(|(f, _)| f.as_fd()));
        let stdin_idx = io.stdin.as_ref().map(|_| {
            fds.push(stdin.as_fd());
            fds.len() - 1
        });
        let timeout = match kill_at {
            Some(t) => t
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(60_000) as i32,
            None => -1,
        };
        let ready = sys::poll_readable(&fds, timeout).map_err(serr)?;
        if let Some(t) = kill_at {
            if Instant::now() >= t {
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                kill_at = None;
            }
        }
        if ready[1] {
            while let Some(sig) = sys::read_signal(sigfd.as_fd()).map_err(serr)? {
                match sig {
                    libc::SIGCHLD => {}
                    libc::SIGWINCH if io.master.is_some() => {
                        if let (Some(m), Some(ws)) = (&io.master, sys::get_winsize(0)) {
                            sys::set_winsize(m.as_fd(), &ws);
                        }
                    }
                    sig => {
                        let _ = sys::pidfd_send_signal(pidfd.as_fd(), sig);
                        if sig != libc::SIGWINCH && kill_at.is_none() {
                            kill_at = Some(Instant::now() + cfg.stop_timeout);
                        }
                    }
                }
            }
        }
        let ready_out: Vec<bool> = ready[2..2 + io.out.len()].to_vec();
        relay_out(&mut io.out, &ready_out, &mut buf);
        if let Some(i) = stdin_idx {
            if ready[i] {
                let n = (&stdin).read(&mut buf).unwrap_or(0);
                let sent = n > 0
                    && io
                        .stdin
                        .as_ref()
                        .is_some_and(|w| sys::write_fd(w.as_fd(), &buf[..n]).is_ok());
                if !sent {
                    // EOF on host stdin: close the pipe (EOF for the
                    // workload), or stop reading for the pty.
                    io.stdin = None;
                }
            }
        }
        if ready[0] {
            if let Some(exit) = sys::wait_pidfd(pidfd.as_fd(), true).map_err(serr)? {
                break exit;
            }
        }
    };
    // Drain what the workload wrote just before it exited. Every process of
    // the container died with its PID 1, so the write ends close promptly;
    // the deadline only bounds a stuck host terminal.
    io.stdin = None;
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    while !io.out.is_empty() && Instant::now() < deadline {
        let fds: Vec<_> = io.out.iter().map(|(f, _)| f.as_fd()).collect();
        let Ok(ready) = sys::poll_readable(&fds, 100) else {
            break;
        };
        relay_out(&mut io.out, &ready, &mut buf);
    }
    if let Some(saved) = raw {
        sys::restore_termios(0, &saved);
    }
    let _ = std::io::stdout().flush();
    Ok(match exit {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
    })
}

/// Copies one read from each ready output source to its host fd; drops the
/// sources at EOF (or EIO: the pty's last peer closed).
fn relay_out(out: &mut Vec<(File, i32)>, ready: &[bool], buf: &mut [u8]) {
    let mut i = 0;
    out.retain_mut(|(src, dst)| {
        let is_ready = ready.get(i).copied().unwrap_or(false);
        i += 1;
        if !is_ready {
            return true;
        }
        match src.read(buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                if *dst == 1 {
                    let mut o = std::io::stdout();
                    let _ = o.write_all(&buf[..n]);
                    let _ = o.flush();
                } else {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
                true
            }
        }
    });
}
