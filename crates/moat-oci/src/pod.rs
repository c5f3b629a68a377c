//! The further containers of a Kubernetes pod in a micro-VM: the pod's
//! sandbox (pause) container boots the VM with a pod share
//! ([`moat_vm::pod`]); each further container of the pod (containerd's
//! `io.kubernetes.cri.container-type: container`, with the pod's
//! `sandbox-id`) runs inside that guest, under the agent, with its own
//! root, mount, PID and pids-cgroup namespaces, plan, capabilities and
//! seccomp filters, sharing the guest's kernel, network and hostname
//! (Kata's model; docs/kubernetes.md).
//!
//! On the host such a container is one helper process (the pid of
//! `--pid-file`, the shim's child): it holds the start gate, asks the
//! sandbox's VM for the container through its exec channel when started,
//! relays stdio and forwards signals, and exits with the container's
//! status. Its root stays the caller's rootfs, bound onto the share: the
//! container's writes land in the caller's directory, as with runc.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use moat_plan::MountPlan;
use moat_vm::exec::Place;
use moat_vm::exec::{Member, MemberDir, MemberFile};

use crate::args::Create;
use crate::bundle::{Bundle, CgroupRequest, Prepared};
use crate::cgroup::Groups;
use crate::state::{self, Record, VmRecord};
use crate::sys::{self, Forked};

use crate::site::{CONTAINER_TYPE, SANDBOX_ID};

/// Largest file the caller may bind into a pod's further container (they
/// are `/etc/hosts` and the like; a larger one is a volume).
const MAX_FILE: u64 = 64 * 1024;

/// Whether `annotations` make a pod's sandbox container.
pub fn is_sandbox(annotations: &std::collections::HashMap<String, String>) -> bool {
    annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox")
}

/// The share of the pod whose sandbox container is `sandbox`.
pub fn share(root: &Path, sandbox: &str) -> moat_vm::pod::Share {
    moat_vm::pod::Share::at(&state::dir(root, sandbox).join("pod"))
}

/// The sandbox whose micro-VM this container joins: its record, when
/// `b` is a further container of a pod whose sandbox booted one with a
/// share; `None` otherwise (a container outside a pod boots its own VM).
pub fn joined_sandbox(root: &Path, b: &Bundle) -> anyhow::Result<Option<Record>> {
    if b.annotations.get(CONTAINER_TYPE).map(String::as_str) != Some("container") {
        return Ok(None);
    }
    let Some(sandbox) = b.annotations.get(SANDBOX_ID).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let Ok(rec) = state::load(root, sandbox) else {
        return Ok(None);
    };
    if !rec.vm.as_ref().is_some_and(|v| v.pod_share) {
        return Ok(None);
    }
    if !state::alive(&rec) {
        bail!("the pod's sandbox container {sandbox:?} (its micro-VM) is not running: recreate the pod");
    }
    Ok(Some(rec))
}

/// A further container of a VM pod runs in the pod's guest, never in the
/// namespaces of the host processes containerd names (the sandbox's
/// helper's): the paths are dropped, the namespaces stay asked for.
pub fn drop_namespace_paths(b: &mut Bundle) {
    let Some(linux) = b.config.linux().clone() else {
        return;
    };
    let mut linux = linux;
    if let Some(ns) = linux.namespaces().clone() {
        let fresh = ns
            .into_iter()
            .map(|mut n| {
                n.set_path(None);
                n
            })
            .collect();
        linux.set_namespaces(Some(fresh));
    }
    b.config.set_linux(Some(linux));
}

/// The caller's directory mounts, taken out of `plan` (the agent mounts
/// them from the pod's share, not as the workload's virtio-fs devices):
/// (source, destination, read-only) in order.
fn take_dirs(plan: &mut moat_plan::Plan) -> Vec<(String, MemberDir)> {
    let mut dirs = Vec::new();
    plan.mounts.retain(|m| match m {
        MountPlan::Volume {
            source,
            destination,
            read_only,
        } => {
            dirs.push((
                source.clone(),
                MemberDir {
                    destination: destination.clone(),
                    read_only: *read_only,
                },
            ));
            false
        }
        _ => true,
    });
    dirs
}

/// The caller's file mounts, read for the guest (see [`Member::files`]).
fn member_files(files: &[moat_vm::rootdisk::FileCopy]) -> anyhow::Result<Vec<MemberFile>> {
    files
        .iter()
        .map(|f| {
            let what = || format!("config.json mount {} on {}", f.source.display(), f.destination);
            let len = std::fs::metadata(&f.source).with_context(what)?.len();
            if len > MAX_FILE {
                bail!("{}: {len} bytes, more than the {MAX_FILE} a file mount of a pod's further container may have in a micro-VM; mount its directory, or use moat.dev/isolation=sandbox", what());
            }
            let contents = std::fs::read_to_string(&f.source)
                .with_context(|| format!("{}: reading it (text files only)", what()))?;
            Ok(MemberFile {
                destination: f.destination.clone(),
                contents,
            })
        })
        .collect()
}

/// What the helper needs.
struct Helper {
    root: PathBuf,
    sandbox: String,
    member: Member,
    process: moat_plan::ProcessSpec,
    gate: UnixListener,
    tty: Option<OwnedFd>,
}

/// `create` of a further container of the pod of `sandbox` (a record
/// [`joined_sandbox`] returned).
pub fn create(
    root: &Path,
    a: &Create,
    b: &Bundle,
    p: &Prepared,
    rec: &mut Record,
    sandbox: &Record,
) -> anyhow::Result<i32> {
    if !p.init.create_container_hooks.is_empty() || !p.init.start_container_hooks.is_empty() {
        bail!("config.json has createContainer or startContainer hooks, which run in the container's namespaces: a micro-VM container has none on the host; drop the hooks, or use moat.dev/isolation=sandbox");
    }
    let (files, tmpfs) = crate::vm::guest_mounts(p)?;
    let process = crate::vm::process_spec(b)?;
    if process.args.is_empty() {
        bail!("config.json: process.args is empty");
    }
    let mut plan = crate::vm::guest_plan(p, tmpfs)?;
    let files = member_files(&files)?;
    let (sources, dirs): (Vec<String>, Vec<MemberDir>) = take_dirs(&mut plan).into_iter().unzip();
    let member = Member {
        name: a.id.clone(),
        plan,
        extra_seccomp: vec![p.caller_seccomp.clone()],
        read_only: p.init.readonly_root,
        files,
        dirs,
    };
    let Some(vm) = sandbox.vm.clone() else {
        bail!("the pod's sandbox {:?} is not a micro-VM", sandbox.id);
    };
    let share = share(root, &sandbox.id);
    share
        .join(&a.id, &b.rootfs)
        .with_context(|| format!("putting the root of {:?} on its pod's share", a.id))?;
    for (n, (source, d)) in sources.iter().zip(&member.dirs).enumerate() {
        if let Err(e) = share.join_dir(&a.id, n, source, d.read_only) {
            share.leave(&a.id);
            return Err(anyhow::Error::from(e)
                .context(format!("config.json mount {source} on {}", d.destination)));
        }
    }
    let made = (|| {
        let gate = UnixListener::bind(state::gate(root, &a.id))
            .with_context(|| format!("creating the start gate of {:?}", a.id))?;
        let tty = crate::vm::console_peer(a.console_socket.as_deref(), process.tty)?;
        let helper = Helper {
            root: root.to_path_buf(),
            sandbox: sandbox.id.clone(),
            member,
            process,
            gate,
            tty,
        };
        let pid = match sys::fork().context("forking the pod container's helper")? {
            Forked::Child => std::process::exit(run_helper(helper)),
            Forked::Parent(pid) => pid,
        };
        // The helper alone in the container's cgroup, with the caller's
        // limits as it reads them back (the guest applies the plan's).
        let groups = Groups::create(&CgroupRequest {
            devices: Vec::new(),
            ..p.cgroup.clone()
        })
        .and_then(|g| match g.add(pid) {
            Ok(()) => Ok(g),
            Err(e) => {
                g.remove();
                Err(e)
            }
        });
        match groups {
            Ok(g) => Ok((pid, g)),
            Err(e) => {
                crate::vm::kill_helper(pid);
                Err(anyhow::Error::from(e))
            }
        }
    })();
    let (pid, groups) = match made {
        Ok(v) => v,
        Err(e) => {
            share.leave(&a.id);
            return Err(e);
        }
    };
    rec.cgroup = groups;
    rec.pid = pid;
    rec.pid_start = moat_runtime::record::process_start_time(pid).unwrap_or(0);
    rec.vm = Some(VmRecord {
        vm_id: vm.vm_id,
        state_root: vm.state_root,
        pod_share: false,
        member_of: Some(sandbox.id.clone()),
    });
    state::save(root, rec)?;
    if let Some(f) = &a.pid_file {
        crate::create::write_pid_file(f, pid)?;
    }
    Ok(pid)
}

/// The helper: waits for `start`, asks the sandbox's VM for the
/// container, forwards signals; returns its exit status.
fn run_helper(h: Helper) -> i32 {
    let setup = match &h.tty {
        Some(t) => sys::take_terminal(t.as_fd()).and_then(|()| sys::raw_mode(t.as_fd())),
        None => rustix::process::setsid().map(drop).map_err(Into::into),
    };
    if let Err(e) = setup.and_then(|()| sys::block_session_signals()) {
        eprintln!("moat-oci: error: setting up the pod container's helper: {e}");
        return 125;
    }
    drop(h.tty);
    // Signals before start end the container as they would a process.
    let (tx, rx) = std::sync::mpsc::channel::<i32>();
    std::thread::spawn(move || loop {
        match sys::wait_session_signal() {
            Ok(libc::SIGCHLD) => {}
            Ok(sig) => {
                if tx.send(sig).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    });
    let Ok((mut conn, _)) = h.gate.accept() else {
        return 125;
    };
    drop(h.gate);
    let mut byte = [0u8; 1];
    let _ = conn.read(&mut byte);
    // A window change before start is taken at start.
    if let Some(sig) = rx.try_iter().find(|s| *s != libc::SIGWINCH) {
        let _ = conn.write_all(b"the container was signalled before it started");
        return 128 + sig;
    }
    let call = crate::vmops::channel(&h.root, &h.sandbox).and_then(|control| {
        let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        moat_vm::exec::send(
            control.as_fd(),
            &h.process,
            h.process.tty,
            Place::NewMember(Box::new(h.member)),
            [i.as_fd(), o.as_fd(), e.as_fd()],
        )
        .map_err(anyhow::Error::from)
    });
    let call = match call {
        Ok(c) => c,
        Err(e) => {
            let _ = conn.write_all(format!("{e:#}").as_bytes());
            return 125;
        }
    };
    drop(conn);
    let tty = h.process.tty;
    if let Ok(relay) = call.try_clone() {
        std::thread::spawn(move || {
            for sig in rx {
                let sent = match sig {
                    // The caller resized the terminal (ResizePty).
                    libc::SIGWINCH if tty => {
                        match moat_vm::exec::terminal_size(std::io::stdin().as_fd()) {
                            Some((rows, cols)) => relay.resize(rows, cols),
                            None => Ok(()),
                        }
                    }
                    libc::SIGWINCH => Ok(()),
                    sig => relay.signal(sig),
                };
                if sent.is_err() {
                    return;
                }
            }
        });
    }
    match call.wait() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("moat-oci: error: {:#}", anyhow::Error::from(e));
            // The pod's VM ended under the container.
            137
        }
    }
}

/// `delete` of a pod's further container: its helper ended (the guest
/// kills the container when the helper goes), its root off the share.
pub fn delete(root: &Path, rec: &Record, sandbox: &str) {
    if state::alive(rec) {
        if let Some(p) = rustix::process::Pid::from_raw(rec.pid) {
            if let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
                if state::alive(rec) {
                    let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
                }
            }
        }
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while state::alive(rec) && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    share(root, sandbox).leave(&rec.id);
}
