//! Both sides of `create` (the creating process and the container's first
//! process) and of `exec` into a created container.
//!
//! Messages on the sync socket, creator ← container unless marked:
//! `go` (→, the first process is in its cgroups), `maps` (a user namespace
//! was made: write its id maps), `mapped` (→), `pid` (sent with
//! `SCM_CREDENTIALS`: the kernel gives the creator the host pid), `hooks`
//! (run createRuntime hooks), `ok` (→), `ready`, `E` + a JSON
//! [`ChildError`]. EOF on either side means the other died.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use moat_privdrop::{DropSpec, Exec, Step};

use super::sys as osys;
use super::{mounts, run_hook, CreateSteps, OciInit};
use crate::sys::{self, Forked};
use crate::{ChildError, SandboxError};

fn prep(what: &str) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Prepare {
        what: what.to_string(),
        source,
    }
}

fn send(sock: BorrowedFd<'_>, msg: &[u8]) -> std::io::Result<()> {
    sys::write_fd(sock, msg).map(drop)
}

fn recv(sock: BorrowedFd<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::io::read(sock, &mut buf).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// Creator side.
pub(super) fn create(
    init: &OciInit,
    gate: UnixListener,
    console: Option<UnixStream>,
    steps: &mut dyn CreateSteps,
) -> Result<super::Created, SandboxError> {
    let (ours, theirs) = sys::seqpacket_pair().map_err(prep("a socket pair"))?;
    osys::pass_creds(ours.as_fd()).map_err(prep("SO_PASSCRED"))?;
    // A joined PID namespace applies to this process's children only.
    for (flag, path) in &init.join {
        if *flag == libc::CLONE_NEWPID {
            let ns = osys::open_ns(path).map_err(prep("opening the PID namespace"))?;
            osys::setns(ns.as_fd(), libc::CLONE_NEWPID)
                .map_err(prep("joining the PID namespace"))?;
        }
    }
    let stage = match sys::clone_child(0).map_err(SandboxError::Clone)? {
        Forked::Child => {
            drop(ours);
            stage_one(init, theirs, gate, console)
        }
        Forked::Parent { pid, .. } => pid,
    };
    drop((theirs, gate, console));
    let result = drive(init, &ours, stage, steps);
    if result.is_err() {
        // A step that failed before "go" leaves the first stage waiting
        // for it: end it (still our unreaped child, so the pid is its).
        if let Some(p) = rustix::process::Pid::from_raw(stage) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    let _ = osys::wait_child(stage);
    match result {
        Ok(pid) => Ok(super::Created { pid, sock: ours }),
        Err((e, pid)) => {
            // The half-built container must not outlive the failed create.
            if let Some(p) = pid.and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            Err(e)
        }
    }
}

fn drive(
    init: &OciInit,
    sock: &OwnedFd,
    stage: i32,
    steps: &mut dyn CreateSteps,
) -> Result<i32, (SandboxError, Option<i32>)> {
    let fail = |e: SandboxError| (e, None);
    steps.join_cgroup(stage).map_err(fail)?;
    send(sock.as_fd(), b"go").map_err(|e| fail(prep("starting the container")(e)))?;
    let mut pid = None;
    loop {
        let mut buf = vec![0u8; 64 * 1024];
        let (n, from) = osys::recv_with_pid(sock.as_fd(), &mut buf)
            .map_err(|e| (prep("reading from the container")(e), pid))?;
        buf.truncate(n);
        match buf.as_slice() {
            b"maps" => {
                let Some((uid_map, gid_map)) = init.new_user.as_ref() else {
                    return Err((setup_err("id maps asked without a user namespace"), pid));
                };
                let write = |file: &str, text: &str| {
                    std::fs::write(format!("/proc/{stage}/{file}"), text).map_err(|source| {
                        (
                            SandboxError::WriteIdMap {
                                which: if file == "uid_map" { "uid" } else { "gid" },
                                pid: stage,
                                source,
                            },
                            pid,
                        )
                    })
                };
                write("gid_map", gid_map)?;
                write("uid_map", uid_map)?;
                send(sock.as_fd(), b"mapped").map_err(|e| (prep("id maps")(e), pid))?;
            }
            b"pid" => pid = from,
            b"hooks" => {
                let p = pid.ok_or_else(|| fail(setup_err("no pid from the container")))?;
                steps.runtime_hooks(p).map_err(|e| (e, pid))?;
                send(sock.as_fd(), format!("ok{p}").as_bytes())
                    .map_err(|e| (prep("hooks")(e), pid))?;
            }
            b"ready" => return pid.ok_or_else(|| fail(setup_err("no pid from the container"))),
            [b'E', json @ ..] => return Err((super::child_error(json), pid)),
            [] => return Err((setup_err("the container process exited during set-up"), pid)),
            other => {
                return Err((
                    setup_err(&format!(
                        "unexpected message {:?}",
                        String::from_utf8_lossy(other)
                    )),
                    pid,
                ))
            }
        }
    }
}

fn setup_err(detail: &str) -> SandboxError {
    SandboxError::Setup {
        step: "create".into(),
        detail: detail.into(),
    }
}

fn report(sock: BorrowedFd<'_>, e: &ChildError) -> ! {
    let mut msg = b"E".to_vec();
    msg.extend(serde_json::to_vec(e).unwrap_or_default());
    let _ = send(sock, &msg);
    sys::exit_now(e.kind as i32)
}

/// The process between the creator and the container: joins and makes the
/// namespaces (user first, then the rest, then PID), starts the first
/// process as the creator's child and exits.
fn stage_one(init: &OciInit, sock: OwnedFd, gate: UnixListener, console: Option<UnixStream>) -> ! {
    let r = (|| -> Result<(), ChildError> {
        sys::set_pdeathsig(libc::SIGKILL).map_err(|e| ChildError::io("PR_SET_PDEATHSIG", e))?;
        if recv(sock.as_fd()) != b"go" {
            sys::exit_now(125);
        }
        let mut joins: Vec<_> = init
            .join
            .iter()
            .filter(|(f, _)| *f != libc::CLONE_NEWPID)
            .collect();
        joins.sort_by_key(|(f, _)| *f != libc::CLONE_NEWUSER);
        for (flag, path) in joins {
            let ns = osys::open_ns(path)
                .map_err(|e| ChildError::io(format!("opening namespace {}", path.display()), e))?;
            osys::setns(ns.as_fd(), *flag)
                .map_err(|e| ChildError::io(format!("joining namespace {}", path.display()), e))?;
        }
        if init.new_user.is_some() {
            sys::unshare(libc::CLONE_NEWUSER)
                .map_err(|e| ChildError::io("unshare(CLONE_NEWUSER)", e))?;
            send(sock.as_fd(), b"maps").map_err(|e| ChildError::io("sync", e))?;
            if recv(sock.as_fd()) != b"mapped" {
                sys::exit_now(125);
            }
            sys::set_ids(0, 0, &[]).map_err(|e| ChildError::io("becoming container root", e))?;
        }
        let rest = init.new_namespaces & !libc::CLONE_NEWPID;
        if rest != 0 {
            sys::unshare(rest).map_err(|e| ChildError::io("creating namespaces (unshare)", e))?;
        }
        if init.new_namespaces & libc::CLONE_NEWPID != 0 {
            sys::unshare(libc::CLONE_NEWPID)
                .map_err(|e| ChildError::io("unshare(CLONE_NEWPID)", e))?;
        }
        // A sibling, not a child: in a joined PID namespace (a pod's) an
        // orphan of this stage would go to that namespace's init (the
        // pause process), while the creator's subreaper (containerd's
        // shim) must reap it. runc's nsexec does the same.
        match sys::clone_parent().map_err(|e| ChildError::io("fork", e))? {
            0 => first_process(init, sock.as_fd(), gate, console),
            _ => sys::exit_now(0),
        }
    })();
    match r {
        Ok(()) => sys::exit_now(0),
        Err(e) => report(sock.as_fd(), &e),
    }
}

/// The container's first process: builds its root, waits at the gate,
/// then drops privileges and becomes the workload.
fn first_process(
    init: &OciInit,
    sock: BorrowedFd<'_>,
    gate: UnixListener,
    console: Option<UnixStream>,
) -> ! {
    let r = build(init, sock, console);
    if let Err(e) = r {
        report(sock, &e);
    }
    // Held until the creator recorded the container; EOF (it died) ends it.
    if send(sock, b"ready").is_err() || recv(sock) != b"commit" {
        sys::exit_now(125);
    }
    // From here the creator is gone; the caller reaps this process.
    loop {
        let Ok((mut conn, _)) = gate.accept() else {
            sys::exit_now(125)
        };
        let mut b = [0u8; 1];
        if conn.read(&mut b).ok() != Some(1) {
            continue;
        }
        let e = run_workload(init, &conn);
        let _ = conn.write_all(&serde_json::to_vec(&e).unwrap_or_default());
        sys::exit_now(e.kind as i32)
    }
}

fn run_workload(init: &OciInit, _conn: &UnixStream) -> ChildError {
    for h in &init.start_container_hooks {
        if let Err(e) = run_hook(
            h,
            &serde_json::to_vec(&init.state_for_hooks).unwrap_or_default(),
        ) {
            return ChildError::msg("startContainer hook", e);
        }
    }
    for fd in 3..3 + init.preserve_fds as i32 {
        // SAFETY: `fd` is a descriptor the caller of create passed on purpose; borrowed for the call only.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::fcntl_setfd(b, rustix::io::FdFlags::empty());
    }
    let f = moat_privdrop::drop_and_exec(&init.drop, &init.exec, None);
    ChildError {
        step: f.step_name(&init.drop),
        detail: f.detail(&init.drop, &init.exec),
        kind: if f.step == Step::NotFound {
            127
        } else {
            f.exit_code()
        },
    }
}

fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> ChildError {
    move |e| ChildError::io(step, e)
}

fn build(
    init: &OciInit,
    sock: BorrowedFd<'_>,
    console: Option<UnixStream>,
) -> Result<(), ChildError> {
    osys::send_with_creds(sock, b"pid").map_err(io("sending the pid"))?;
    sys::setsid().map_err(io("setsid"))?;
    sys::set_dumpable(false).map_err(io("PR_SET_DUMPABLE"))?;
    osys::umask(0o022);

    // Nothing shared before pivot_root (which refuses shared mounts); the
    // propagation the bundle asks for is applied to the new root after.
    let prop = match init.rootfs_propagation & !libc::MS_REC {
        0 => libc::MS_REC | libc::MS_PRIVATE,
        libc::MS_SHARED | libc::MS_UNBINDABLE => libc::MS_REC | libc::MS_SLAVE,
        _ => init.rootfs_propagation | libc::MS_REC,
    };
    osys::mount(None, "/", None, prop, None).map_err(io("making / private"))?;
    let rootfs = init
        .rootfs
        .to_str()
        .ok_or_else(|| ChildError::msg("rootfs", "path is not UTF-8"))?;
    osys::mount(
        Some(rootfs),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(io(format!("binding the rootfs {rootfs}")))?;
    let root: OwnedFd = File::open(rootfs)
        .map_err(io(format!("opening {rootfs}")))?
        .into();

    for m in &init.mounts {
        mounts::mount_one(root.as_fd(), m, &init.cgroup_dirs)?;
    }
    mounts::create_devices(root.as_fd(), &init.devices)?;
    dev_links(root.as_fd());

    send(sock, b"hooks").map_err(io("sync"))?;
    let reply = recv(sock);
    let Some(pid) = reply.strip_prefix(b"ok") else {
        sys::exit_now(125)
    };
    let mut state = init.state_for_hooks.clone();
    state["pid"] = serde_json::json!(String::from_utf8_lossy(pid).parse::<i64>().unwrap_or(0));
    state["status"] = serde_json::json!("created");
    let state = serde_json::to_vec(&state).unwrap_or_default();
    for h in &init.create_container_hooks {
        run_hook(h, &state).map_err(|e| ChildError::msg("createContainer hook", e))?;
    }

    sys::pivot_into(root.as_fd()).map_err(io("pivot_root"))?;
    drop(root);
    if init.rootfs_propagation != 0 {
        osys::mount(None, "/", None, init.rootfs_propagation, None)
            .map_err(io("rootfs propagation"))?;
    }
    for p in &init.masked {
        mounts::mask(p)?;
    }
    for p in &init.readonly {
        mounts::make_readonly(p)?;
    }
    if init.readonly_root {
        remount_root_readonly()?;
    }
    if let Some(h) = &init.hostname {
        sys::sethostname(h).map_err(io("sethostname"))?;
    }
    if let Some(d) = &init.domainname {
        std::fs::write("/proc/sys/kernel/domainname", d).map_err(io("setdomainname"))?;
    }
    for (k, v) in &init.sysctl {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, v).map_err(io(format!("sysctl {k}")))?;
    }
    if let Some(v) = init.oom_score_adj {
        osys::set_oom_score_adj(v).map_err(io("oom_score_adj"))?;
    }
    if init.new_namespaces & libc::CLONE_NEWNET != 0 {
        moat_net::loopback_up().map_err(io("bringing up loopback"))?;
    }
    if let Some(console) = console {
        let (master, peer) = sys::open_pty().map_err(io("opening the container's /dev/ptmx"))?;
        osys::fchown(peer.as_fd(), init.drop.uid(), init.drop.gid())
            .map_err(io("the terminal's owner"))?;
        sys::send_fd(console.as_fd(), master.as_fd()).map_err(io("sending the terminal"))?;
        drop(master);
        sys::set_controlling_tty(peer.as_fd()).map_err(io("TIOCSCTTY"))?;
        for fd in 0..3 {
            sys::dup2(peer.as_fd(), fd).map_err(io("attaching the terminal"))?;
        }
    }
    Ok(())
}

/// The runtime-spec's /dev symlinks, where /dev has none of its own.
fn dev_links(root: BorrowedFd<'_>) {
    let Ok(dev) = sys::openat2(
        root,
        "/dev",
        libc::O_PATH | libc::O_DIRECTORY,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
    ) else {
        return;
    };
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = sys::symlinkat(target, dev.as_fd(), name);
    }
}

fn remount_root_readonly() -> Result<(), ChildError> {
    let st = rustix::fs::statvfs("/").map_err(|e| ChildError::io("statvfs /", e.into()))?;
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
    let f = st.f_flag;
    if f.contains(rustix::fs::StatVfsMountFlags::NOSUID) {
        flags |= libc::MS_NOSUID;
    }
    if f.contains(rustix::fs::StatVfsMountFlags::NODEV) {
        flags |= libc::MS_NODEV;
    }
    if f.contains(rustix::fs::StatVfsMountFlags::NOEXEC) {
        flags |= libc::MS_NOEXEC;
    }
    osys::mount(None, "/", None, flags, None).map_err(io("making the root read-only"))
}

/// A process to start in a created or running container (`exec`).
pub struct ExecIn {
    pub init_pid: i32,
    pub drop: DropSpec,
    pub exec: Exec,
    /// `cgroup.procs` files of the container's cgroups.
    pub cgroup_procs: Vec<PathBuf>,
    pub preserve_fds: u32,
}

/// Starts `x` in the namespaces and cgroups of the container's first
/// process. Returns its host pid; it is a child of this process (so the
/// caller may wait for it, or exit and leave it to its own subreaper).
pub fn exec_in(x: &ExecIn, console: Option<UnixStream>) -> Result<i32, SandboxError> {
    let target = sys::pidfd_open(x.init_pid).map_err(prep("opening the container's process"))?;
    let ns = differing_namespaces(x.init_pid);
    let (ours, theirs) = sys::seqpacket_pair().map_err(prep("a socket pair"))?;
    let joiner = match sys::clone_child(0).map_err(SandboxError::Clone)? {
        Forked::Child => {
            drop(ours);
            let r = (|| -> Result<(), ChildError> {
                sys::set_pdeathsig(libc::SIGKILL).map_err(io("PR_SET_PDEATHSIG"))?;
                sys::set_dumpable(false).map_err(io("PR_SET_DUMPABLE"))?;
                if recv(theirs.as_fd()) != b"go" {
                    sys::exit_now(125);
                }
                sys::setns(target.as_fd(), ns).map_err(io("joining the container's namespaces"))?;
                match sys::clone_parent().map_err(io("starting the process"))? {
                    0 => exec_process(x, theirs.as_fd(), console),
                    pid => {
                        let _ = send(theirs.as_fd(), format!("P{pid}").as_bytes());
                        sys::exit_now(0)
                    }
                }
            })();
            match r {
                Ok(()) => sys::exit_now(0),
                Err(e) => report(theirs.as_fd(), &e),
            }
        }
        Forked::Parent { pid, .. } => pid,
    };
    drop((theirs, console));
    for f in &x.cgroup_procs {
        std::fs::write(f, joiner.to_string()).map_err(prep("joining the container's cgroups"))?;
    }
    send(ours.as_fd(), b"go").map_err(prep("starting the process"))?;
    let _ = osys::wait_child(joiner);
    let mut pid = None;
    loop {
        let msg = recv(ours.as_fd());
        match msg.as_slice() {
            [b'P', n @ ..] => pid = String::from_utf8_lossy(n).parse::<i32>().ok(),
            [b'E', json @ ..] => {
                if let Some(p) = pid {
                    let _ = osys::wait_child(p);
                }
                return Err(super::child_error(json));
            }
            [] => break,
            _ => {}
        }
    }
    pid.ok_or_else(|| setup_err("the process did not start"))
}

fn exec_process(x: &ExecIn, sock: BorrowedFd<'_>, console: Option<UnixStream>) -> ! {
    let r = (|| -> Result<(), ChildError> {
        sys::setsid().map_err(io("setsid"))?;
        if let Some(console) = console {
            let (master, peer) =
                sys::open_pty().map_err(io("opening the container's /dev/ptmx"))?;
            osys::fchown(peer.as_fd(), x.drop.uid(), x.drop.gid())
                .map_err(io("the terminal's owner"))?;
            sys::send_fd(console.as_fd(), master.as_fd()).map_err(io("sending the terminal"))?;
            sys::set_controlling_tty(peer.as_fd()).map_err(io("TIOCSCTTY"))?;
            for fd in 0..3 {
                sys::dup2(peer.as_fd(), fd).map_err(io("attaching the terminal"))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        report(sock, &e);
    }
    for fd in 3..3 + x.preserve_fds as i32 {
        // SAFETY: `fd` is a descriptor the caller passed on purpose; borrowed for the call only.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::fcntl_setfd(b, rustix::io::FdFlags::empty());
    }
    let f = moat_privdrop::drop_and_exec(&x.drop, &x.exec, None);
    report(
        sock,
        &ChildError {
            step: f.step_name(&x.drop),
            detail: f.detail(&x.drop, &x.exec),
            kind: f.exit_code(),
        },
    )
}

/// `CLONE_NEW*` flags of the namespaces `pid` does not share with us.
fn differing_namespaces(pid: i32) -> libc::c_int {
    let mut flags = 0;
    for (name, flag) in [
        ("user", libc::CLONE_NEWUSER),
        ("mnt", libc::CLONE_NEWNS),
        ("pid", libc::CLONE_NEWPID),
        ("net", libc::CLONE_NEWNET),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("cgroup", libc::CLONE_NEWCGROUP),
    ] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{name}"));
        let ours = std::fs::read_link(format!("/proc/self/ns/{name}"));
        if let (Ok(t), Ok(o)) = (theirs, ours) {
            if t != o {
                flags |= flag;
            }
        }
    }
    flags
}
