//! Starting the workload: a forked child that enters the verified root and
//! applies the plan (mounts, rlimits, identity, capabilities, no_new_privs,
//! seccomp) before `execve`. Failures come back over a close-on-exec pipe
//! as data, so the host sees the real reason.

use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use moat_agent::proto::{Member, Start};
use moat_plan::{MountPlan, RlimitResource};
use moat_privdrop::{DropSpec, Exec, Step};

use std::os::unix::fs::OpenOptionsExt;

use moat_plan::NetworkPlan;

use crate::{explain_io, sys, Failure, NEW_ROOT};

/// The agent's cgroup2 mount, and the workload's cgroup in it.
const CGROUP_MOUNT: &str = "/cgroup";
const CGROUP: &str = "/cgroup/workload";

/// A cgroup with `pids.max` for the workload: unlike `RLIMIT_NPROC`, it
/// binds guest uid 0 too.
fn pids_cgroup(plan: &moat_plan::Plan) -> Result<(), Failure> {
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    let limit = pids_limit(plan);
    std::fs::create_dir_all(CGROUP_MOUNT).map_err(|e| err("mkdir /cgroup", e))?;
    sys::mount(
        "cgroup2",
        CGROUP_MOUNT,
        "cgroup2",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    )
    .map_err(|e| err("mounting cgroup2", e))?;
    std::fs::write(format!("{CGROUP_MOUNT}/cgroup.subtree_control"), "+pids")
        .map_err(|e| err("enabling the pids controller", e))?;
    std::fs::create_dir(CGROUP).map_err(|e| err("creating the workload's cgroup", e))?;
    if let Some(n) = limit {
        std::fs::write(format!("{CGROUP}/pids.max"), n.to_string())
            .map_err(|e| err(&format!("setting pids.max to {n}"), e))?;
    }
    Ok(())
}

/// The running workload and the agent's ends of its stdio.
pub struct Child {
    pub pid: libc::pid_t,
    /// Pipe to its stdin, or the pty master with a terminal.
    pub stdin: OwnedFd,
    /// Pipe from its stdout, or (a clone of) the pty master.
    pub stdout: OwnedFd,
    /// Pipe from its stderr; `None` with a terminal.
    pub stderr: Option<OwnedFd>,
}

pub fn spawn(start: &Start) -> Result<Child, Failure> {
    spawn_in(start, How::Workload)
}

/// Where a process starts: the workload (new mount namespace, the
/// verified root), an exec (the mount namespace of a running container),
/// or a further container of a pod (a new mount and PID namespace, its
/// root on the pod's share).
enum How<'a> {
    Workload,
    Exec {
        mnt: std::os::fd::BorrowedFd<'a>,
        pid: std::os::fd::BorrowedFd<'a>,
        ptmx: String,
        cgroup: String,
    },
    Member(&'a Member),
}

impl How<'_> {
    fn cgroup(&self) -> String {
        match self {
            How::Workload => CGROUP.to_string(),
            How::Exec { cgroup, .. } => cgroup.clone(),
            How::Member(m) => member_cgroup(&m.name),
        }
    }
}

/// The pids cgroup of pod member `name`.
fn member_cgroup(name: &str) -> String {
    format!("{CGROUP_MOUNT}/member-{name}")
}

/// Where the agent mounts the pod's share (virtio-fs tag
/// [`moat_agent::proto::POD_TAG`]); never visible to a container.
const POD_MOUNT: &str = "/pod";

/// Mounts the pod's share once.
fn mount_pod_share() -> Result<(), Failure> {
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    if is_mounted(POD_MOUNT) {
        return Ok(());
    }
    std::fs::create_dir_all(POD_MOUNT).map_err(|e| err("mkdir /pod", e))?;
    sys::mount(
        moat_agent::proto::POD_TAG,
        POD_MOUNT,
        "virtiofs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "",
    )
    .map_err(|e| {
        err(
            "mounting the pod's share (was the VM booted as a pod's sandbox?)",
            e,
        )
    })
}

fn is_mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(path)))
        .unwrap_or(false)
}

/// Starts a further container of the pod: `start.process` as PID 1 of a
/// new PID namespace (a sibling of the workload's, not inside it), in a
/// pids cgroup and mount namespace of its own, its root the member's
/// directory of the pod's share.
pub fn spawn_member(start: &Start, member: &Member) -> Result<Child, Failure> {
    if !Member::valid_name(&member.name) {
        return Err(Failure::setup(format!(
            "pod container name {:?} is not a plain name",
            member.name
        )));
    }
    mount_pod_share()?;
    let root = format!("{POD_MOUNT}/{}/rootfs", member.name);
    if !Path::new(&root).is_dir() {
        return Err(Failure::setup(format!(
            "the root of pod container {} ({root}) is not on the pod's share",
            member.name
        )));
    }
    let cgroup = member_cgroup(&member.name);
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    // A name reused after its container ended: the old group is empty.
    let _ = std::fs::remove_dir(&cgroup);
    std::fs::create_dir(&cgroup).map_err(|e| err("creating the container's pids cgroup", e))?;
    if let Some(n) = pids_limit(&start.plan) {
        std::fs::write(format!("{cgroup}/pids.max"), n.to_string())
            .map_err(|e| err(&format!("setting pids.max to {n}"), e))?;
    }
    spawn_in(start, How::Member(member))
}

/// Removes the pids cgroup of a member that ended.
pub fn forget_member(name: &str) {
    let _ = std::fs::remove_dir(member_cgroup(name));
}

/// Starts `start.process` in the container of the running workload
/// `workload` (exec): the same steps as the workload's, but it joins the
/// workload's cgroup, PID namespace (the agent's children's, since
/// [`spawn`]) and mount namespace instead of making new ones.
pub fn spawn_exec(
    start: &Start,
    workload: libc::pid_t,
    member: Option<&str>,
) -> Result<Child, Failure> {
    let open = |kind: &str| {
        let path = format!("/proc/{workload}/ns/{kind}");
        File::open(&path)
            .map_err(|e| Failure::setup(format!("the container is gone ({path}: {e})")))
    };
    let (mnt, pid) = (open("mnt")?, open("pid")?);
    // The terminal from the container's own devpts (its /dev/pts, which
    // the agent mounted): `tty` and ttyname resolve in the container.
    let ptmx = format!("/proc/{workload}/root/dev/pts/ptmx");
    let cgroup = match member {
        Some(name) => member_cgroup(name),
        None => CGROUP.to_string(),
    };
    spawn_in(
        start,
        How::Exec {
            mnt: mnt.as_fd(),
            pid: pid.as_fd(),
            ptmx,
            cgroup,
        },
    )
}

/// The pids limit of `plan`: its cgroup's, else its `RLIMIT_NPROC`.
fn pids_limit(plan: &moat_plan::Plan) -> Option<u64> {
    plan.cgroup.pids.or_else(|| {
        plan.rlimits
            .iter()
            .find(|r| r.resource == RlimitResource::Nproc)
            .map(|r| r.hard)
    })
}

/// Forks with the children's PID namespace `target` (`None`: a new one,
/// made beside the workload's), then puts the agent's children's
/// namespace back as it was: the workload's, which its execs join.
fn fork_in_pid_ns(target: Option<std::os::fd::BorrowedFd<'_>>) -> std::io::Result<sys::Fork> {
    let before = File::open("/proc/self/ns/pid_for_children")?;
    match target {
        Some(ns) => sys::setns(ns, libc::CLONE_NEWPID)?,
        None => {
            // The agent's own namespace first: a new one made from there is
            // a sibling of the workload's, which cannot see into it.
            let own = File::open("/proc/self/ns/pid")?;
            sys::setns(own.as_fd(), libc::CLONE_NEWPID)?;
            sys::unshare(libc::CLONE_NEWPID)?;
        }
    }
    let forked = sys::fork();
    if let Ok(sys::Fork::Parent(_)) | Err(_) = &forked {
        sys::setns(before.as_fd(), libc::CLONE_NEWPID)?;
    }
    forked
}

fn spawn_in(start: &Start, how: How<'_>) -> Result<Child, Failure> {
    let ptmx = match &how {
        How::Exec { ptmx, .. } => Some(ptmx.as_str()),
        _ => None,
    };
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    // The privilege drop and the exec, prepared before the fork (shared
    // with the sandbox backend).
    let mut drop_spec =
        DropSpec::new(&start.plan, &start.process).map_err(|e| Failure::setup(e.to_string()))?;
    for prog in &start.extra_seccomp {
        drop_spec = drop_spec.with_extra_seccomp(prog);
    }
    // Only an OCI caller's `noNewPrivileges: false` where the site allows
    // it (moat-oci's `no_new_privileges: as-requested`): policies cannot.
    if !start.plan.process.no_new_privs {
        drop_spec = drop_spec.with_new_privileges_allowed();
    }
    let exec = Exec::from_process(&start.process).map_err(|e| Failure::setup(e.to_string()))?;
    // (parent end, child end) pairs.
    let (stdin, stdout, stderr, child_fds): (OwnedFd, OwnedFd, Option<OwnedFd>, [OwnedFd; 3]) =
        if start.process.tty {
            let (master, slave) = match ptmx {
                Some(p) => sys::openpty_in(p),
                None => sys::openpty(),
            }
            .map_err(|e| err("allocating a pseudo-terminal", e))?;
            let m2 = master.try_clone().map_err(|e| err("dup", e))?;
            let s2 = slave.try_clone().map_err(|e| err("dup", e))?;
            let s3 = slave.try_clone().map_err(|e| err("dup", e))?;
            (master, m2, None, [slave, s2, s3])
        } else {
            let (in_r, in_w) = sys::pipe().map_err(|e| err("pipe", e))?;
            let (out_r, out_w) = sys::pipe().map_err(|e| err("pipe", e))?;
            let (err_r, err_w) = sys::pipe().map_err(|e| err("pipe", e))?;
            (in_w, out_r, Some(err_r), [in_r, out_w, err_w])
        };
    let (report_r, report_w) = sys::pipe().map_err(|e| err("pipe", e))?;
    let forked = match &how {
        How::Workload => {
            pids_cgroup(&start.plan)?;
            // The workload is PID 1 of a PID namespace of its own: the agent is
            // neither visible nor reachable (no signals, no prlimit, no /proc/1/root).
            sys::unshare(libc::CLONE_NEWPID).map_err(|e| err("unshare(CLONE_NEWPID)", e))?;
            sys::fork()
        }
        How::Exec { pid, .. } => fork_in_pid_ns(Some(*pid)),
        How::Member(_) => fork_in_pid_ns(None),
    };
    match forked.map_err(|e| err("fork", e))? {
        sys::Fork::Child => {
            drop(report_r);
            let Err(f) = child(start, &child_fds, &drop_spec, &exec, &how);
            let mut w = File::from(report_w);
            let _ = write!(w, "{}\n{}", f.code, f.message);
            sys::exit_now(f.code);
        }
        sys::Fork::Parent(pid) => {
            drop(report_w);
            drop(child_fds);
            let mut report = String::new();
            let _ = File::from(report_r).read_to_string(&mut report);
            if !report.is_empty() {
                // The child failed before execve; reap it and report why.
                let (code, message) = report.split_once('\n').unwrap_or(("125", &report));
                return Err(Failure {
                    code: code.parse().unwrap_or(125),
                    message: message.to_string(),
                });
            }
            Ok(Child {
                pid,
                stdin,
                stdout,
                stderr,
            })
        }
    }
}

fn child(
    start: &Start,
    fds: &[OwnedFd; 3],
    drop_spec: &DropSpec,
    exec: &Exec,
    how: &How<'_>,
) -> Result<Infallible, Failure> {
    let join = match how {
        How::Exec { mnt, .. } => Some(*mnt),
        _ => None,
    };
    let p = &start.process;
    let plan = &start.plan;
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    sys::setsid_ctty(if p.tty { Some(fds[0].as_fd()) } else { None })
        .map_err(|e| err("setsid", e))?;
    for (i, fd) in fds.iter().enumerate() {
        sys::dup2(fd.as_raw_fd(), i as i32).map_err(|e| err("dup2", e))?;
    }
    std::fs::write(format!("{}/cgroup.procs", how.cgroup()), "0")
        .map_err(|e| err("joining the container's pids cgroup", e))?;
    // The terminal (in the agent's devpts) becomes the container's
    // /dev/console, as in the sandbox.
    let console_path = if p.tty && join.is_none() {
        Some(std::fs::read_link("/proc/self/fd/0").map_err(|e| err("finding the terminal", e))?)
    } else {
        None
    };
    if let Some(ns) = join {
        // exec: the workload's mounts; setns moves root and cwd to its root.
        sys::setns(ns, libc::CLONE_NEWNS).map_err(|e| err("entering the container's mounts", e))?;
    } else {
        // Own mount namespace, nothing propagates back to the agent's.
        sys::unshare(libc::CLONE_NEWNS).map_err(|e| err("unshare(CLONE_NEWNS)", e))?;
        sys::mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE, "")
            .map_err(|e| err("making the mounts private", e))?;
        let console = match &console_path {
            Some(path) => Some(
                sys::open_tree_clone(&path.to_string_lossy())
                    .map_err(|e| err(&format!("cloning the terminal {}", path.display()), e))?,
            ),
            None => None,
        };
        let (root, files, dirs) = match how {
            How::Member(m) => (member_root(m)?, member_files(m)?, member_dirs(m)?),
            _ => (NEW_ROOT.to_string(), Vec::new(), Vec::new()),
        };
        // pivot_root, not chroot: the agent's root is gone from this namespace.
        sys::pivot_into(&root).map_err(|e| err("pivot_root into the root filesystem", e))?;
        let dns = start.net.as_ref().and_then(|n| n.dns);
        mount_container_fs(plan, console, dns, files)?;
        bind_dirs(dirs)?;
    }
    if p.tty && join.is_none() {
        // stdio by the container's own path of the terminal.
        let c = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/console")
            .map_err(|e| err("opening /dev/console", e))?;
        for i in 0..3 {
            sys::dup2(c.as_raw_fd(), i).map_err(|e| err("dup2", e))?;
        }
    }
    if matches!(plan.network, NetworkPlan::Loopback) {
        sys::loopback_up().map_err(|e| err("bringing up loopback", e))?;
    }
    if !p.hostname.is_empty() {
        sys::sethostname(&p.hostname).map_err(|e| err("sethostname", e))?;
    }
    // The shared sequence: rlimits, bounding set, ids, capabilities,
    // no_new_privs, signals, fds, working directory (as the workload's own
    // identity, inside the root), PATH lookup, seccomp last, execve.
    let f = moat_privdrop::drop_and_exec(drop_spec, exec, None);
    if f.step == Step::Execve && f.errno == libc::EIO {
        // A block of the binary failed dm-verity: say so.
        let e = std::io::Error::from_raw_os_error(f.errno);
        return Err(explain_io(format!("exec {}", exec.command()), &e));
    }
    Err(Failure {
        code: i32::from(f.exit_code()),
        message: f.message(drop_spec, exec),
    })
}

/// `network.dns: true`: a read-only file naming `resolver` over the
/// image's `/etc/resolv.conf`, which must be a regular file (not a link:
/// the image decides nothing about where the mount lands). The file is
/// written on the container's /dev tmpfs (still writable here), bound,
/// and unlinked there.
fn resolv_conf(resolver: std::net::Ipv4Addr) -> Result<(), Failure> {
    const TARGET: &str = "/etc/resolv.conf";
    const STAGE: &str = "/dev/.moat-resolv.conf";
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    match std::fs::symlink_metadata(TARGET) {
        Ok(m) if m.file_type().is_file() => {}
        _ => {
            return Err(Failure::setup(format!(
                "network.dns: {TARGET} in the image is not a regular file; moat mounts the resolver's file over it but never writes to the image: add an empty {TARGET} to the image, or drop `network.dns`"
            )))
        }
    }
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(STAGE)
        .and_then(|mut f| {
            std::io::Write::write_all(
                &mut f,
                format!("# moat: slirp's DNS relay (network.dns: true)\nnameserver {resolver}\n")
                    .as_bytes(),
            )
        })
        .map_err(|e| err("writing the resolver's file", e))?;
    sys::chmod(STAGE, 0o644).map_err(|e| err("chmod the resolver's file", e))?;
    sys::mount(STAGE, TARGET, "", libc::MS_BIND, "")
        .map_err(|e| err(&format!("mounting the resolver's file on {TARGET}"), e))?;
    sys::mount(
        "",
        TARGET,
        "",
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        "",
    )
    .map_err(|e| err(&format!("making {TARGET} read-only"), e))?;
    std::fs::remove_file(STAGE).map_err(|e| err("removing the resolver's staging file", e))
}

/// Files under /proc hidden behind /dev/null (as in the sandbox).
const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "sysrq-trigger",
    "latency_stats",
    "kallsyms",
];
/// Directories under /proc made read-only (as in the sandbox).
const PROC_READONLY: &[&str] = &["sys", "irq", "bus", "fs", "acpi", "scsi"];

/// /proc, a minimal /dev, read-only /sys and the plan's tmpfs mounts, all
/// made after `pivot_root`, so every path resolves inside the root.
/// The plan's device nodes (the policy's `devices`, or an OCI caller's
/// `linux.devices` and default devices) in the container's fresh `/dev`.
/// They are nodes of the guest kernel: a grant names what the guest's
/// drivers serve, never a host device. A node that exists (the standard
/// ones, `/dev/tty` with a terminal) is kept; paths outside `/dev`, with
/// `.` or `..`, or through anything but a directory are refused.
fn make_devices(devices: &[moat_plan::DeviceRule]) -> Result<(), Failure> {
    use std::path::{Component, Path};
    for d in devices {
        let refuse = |why: &str| Failure::setup(format!("device {}: {why}", d.path));
        let path = Path::new(&d.path);
        let rel = path
            .strip_prefix("/dev")
            .map_err(|_| refuse("not under /dev"))?;
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(refuse("not a plain path below /dev"));
        }
        let mut dir = Path::new("/dev").to_path_buf();
        let mut parts = rel.components().peekable();
        while let Some(c) = parts.next() {
            if parts.peek().is_none() {
                break;
            }
            dir.push(c);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(refuse(&format!("{} is not a directory", dir.display()))),
                Err(_) => std::fs::create_dir(&dir)
                    .map_err(|e| refuse(&format!("mkdir {}: {e}", dir.display())))?,
            }
        }
        if std::fs::symlink_metadata(path).is_ok() {
            continue;
        }
        let kind = match d.kind {
            'b' => libc::S_IFBLK,
            'p' => libc::S_IFIFO,
            _ => libc::S_IFCHR,
        };
        let mode = d.file_mode.unwrap_or(0o666) & 0o7777;
        sys::mknod(&d.path, kind | mode, d.major, d.minor)
            .map_err(|e| refuse(&format!("mknod: {e}")))?;
        // mknod's mode is cut by the umask; the owner is root unless given.
        sys::chmod(&d.path, mode).map_err(|e| refuse(&format!("chmod: {e}")))?;
        std::os::unix::fs::lchown(path, d.uid, d.gid)
            .map_err(|e| refuse(&format!("chown: {e}")))?;
    }
    Ok(())
}

/// A member's root: its directory of the pod's share, bound onto itself
/// (pivot_root needs a mount point), read-only with `read_only`.
fn member_root(m: &Member) -> Result<String, Failure> {
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    let root = format!("{POD_MOUNT}/{}/rootfs", m.name);
    sys::mount(&root, &root, "", libc::MS_BIND | libc::MS_REC, "")
        .map_err(|e| err(&format!("binding the root {root}"), e))?;
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
    if m.read_only {
        flags |= libc::MS_RDONLY;
    }
    // nosuid, nodev as on the host side: the share is the host's files.
    sys::mount("", &root, "", flags, "").map_err(|e| err("setting the root's flags", e))?;
    Ok(root)
}

/// A member's files, written to a tmpfs of this namespace (before the
/// pivot: the container never sees it) and cloned as mounts to bind after
/// it, inside the container's own root.
fn member_files(m: &Member) -> Result<Vec<(String, OwnedFd)>, Failure> {
    const STAGE: &str = "/pod-files";
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    if m.files.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(STAGE).map_err(|e| err("mkdir the files' stage", e))?;
    sys::mount(
        "tmpfs",
        STAGE,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755,size=4m",
    )
    .map_err(|e| err("mounting the files' stage", e))?;
    let mut out = Vec::new();
    for (i, f) in m.files.iter().enumerate() {
        let path = format!("{STAGE}/{i}");
        std::fs::write(&path, &f.contents)
            .and_then(|()| sys::chmod(&path, 0o644))
            .map_err(|e| err(&format!("staging {}", f.destination), e))?;
        let tree = sys::open_tree_clone(&path)
            .map_err(|e| err(&format!("cloning {}", f.destination), e))?;
        out.push((f.destination.clone(), tree));
    }
    Ok(out)
}

/// A member's host directories on the share, cloned as mounts (before
/// the pivot) to bind at their destinations after it.
fn member_dirs(m: &Member) -> Result<Vec<(String, bool, OwnedFd)>, Failure> {
    m.dirs
        .iter()
        .enumerate()
        .map(|(n, d)| {
            let path = format!("{POD_MOUNT}/{}/vol-{n}", m.name);
            let tree = sys::open_tree_clone(&path).map_err(|e| {
                Failure::setup(format!("the volume for {} ({path}): {e}", d.destination))
            })?;
            Ok((d.destination.clone(), d.read_only, tree))
        })
        .collect()
}

/// An absolute path of plain components only (no `.` or `..`).
fn clean_absolute(p: &Path) -> bool {
    use std::path::Component;
    p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Binds a member's host directories at their destinations, resolved
/// inside its root; a missing destination is made, as runc makes a bind
/// mount's target.
fn bind_dirs(dirs: Vec<(String, bool, OwnedFd)>) -> Result<(), Failure> {
    for (dest, read_only, tree) in dirs {
        let refuse = |why: String| Failure::setup(format!("volume {dest}: {why}"));
        let p = Path::new(&dest);
        if !clean_absolute(p) {
            return Err(refuse("not a clean absolute path".into()));
        }
        std::fs::create_dir_all(p).map_err(|e| refuse(format!("mkdir: {e}")))?;
        sys::move_mount_to(tree.as_fd(), &dest).map_err(|e| refuse(format!("mounting: {e}")))?;
        let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        sys::mount("", &dest, "", flags, "")
            .map_err(|e| refuse(format!("setting its flags: {e}")))?;
    }
    Ok(())
}

/// Binds the staged `files` over their destinations, resolved inside the
/// container's root; a missing destination is made (an empty file), as
/// runc makes a bind mount's target.
fn bind_files(files: Vec<(String, OwnedFd)>) -> Result<(), Failure> {
    for (dest, tree) in files {
        let refuse = |why: String| Failure::setup(format!("file mount {dest}: {why}"));
        let p = Path::new(&dest);
        if !clean_absolute(p) {
            return Err(refuse("not a clean absolute path".into()));
        }
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| refuse(format!("mkdir: {e}")))?;
        }
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(refuse(
                    "the image has something other than a file there".into(),
                ))
            }
            Err(_) => {
                File::options()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(p)
                    .map_err(|e| refuse(format!("creating the mount point: {e}")))?;
            }
        }
        sys::move_mount_to(tree.as_fd(), &dest).map_err(|e| refuse(format!("mounting: {e}")))?;
        sys::mount(
            "",
            &dest,
            "",
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            "",
        )
        .map_err(|e| refuse(format!("making it read-only: {e}")))?;
    }
    Ok(())
}

fn mount_container_fs(
    plan: &moat_plan::Plan,
    console: Option<OwnedFd>,
    dns: Option<std::net::Ipv4Addr>,
    files: Vec<(String, OwnedFd)>,
) -> Result<(), Failure> {
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    let hard = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount("proc", "/proc", "proc", hard, "").map_err(|e| err("mounting /proc", e))?;
    // /dev as runc and the sandbox make it: a 0755 tmpfs, 0666 nodes.
    sys::mount(
        "tmpfs",
        "/dev",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=755,size=65536k",
    )
    .map_err(|e| err("mounting /dev", e))?;
    // /dev/tty only with a terminal of the container's own (-t), as in the
    // sandbox: without one there is no terminal for it to name.
    let tty = console.as_ref().map(|_| ("tty", 5, 0));
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
    ]
    .into_iter()
    .chain(tty)
    {
        let path = format!("/dev/{name}");
        sys::mknod(&path, libc::S_IFCHR | 0o666, major, minor)
            .map_err(|e| err(&format!("mknod {path}"), e))?;
        // mknod's mode is cut by the umask.
        sys::chmod(&path, 0o666).map_err(|e| err(&format!("chmod {path}"), e))?;
    }
    if let Some(c) = console {
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o620)
            .open("/dev/console")
            .map_err(|e| err("creating /dev/console", e))?;
        sys::move_mount_to(c.as_fd(), "/dev/console")
            .map_err(|e| err("mounting the terminal on /dev/console", e))?;
    }
    for (d, mode) in [
        ("/dev/pts", 0o755),
        ("/dev/shm", 0o1777),
        ("/dev/mqueue", 0o1777),
    ] {
        std::fs::create_dir(d).map_err(|e| err(&format!("mkdir {d}"), e))?;
        sys::chmod(d, mode).map_err(|e| err(&format!("chmod {d}"), e))?;
    }
    // A devpts instance of the container's own.
    sys::mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "ptmxmode=0666,mode=620",
    )
    .map_err(|e| err("mounting /dev/pts", e))?;
    sys::mount("shm", "/dev/shm", "tmpfs", hard, "mode=1777,size=65536k")
        .map_err(|e| err("mounting /dev/shm", e))?;
    // POSIX message queues as runc and the sandbox give them: the guest's
    // own, so a workload filling them reaches no other container.
    sys::mount("mqueue", "/dev/mqueue", "mqueue", hard, "")
        .map_err(|e| err("mounting /dev/mqueue", e))?;
    make_devices(&plan.devices)?;
    // Files the caller binds (`/dev/termination-log` among them) while
    // /dev is still writable.
    bind_files(files)?;
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, link).map_err(|e| err(&format!("symlink {link}"), e))?;
    }
    if let Some(resolver) = dns {
        resolv_conf(resolver)?;
    }
    sys::mount(
        "",
        "/dev",
        "",
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        "",
    )
    .map_err(|e| err("making /dev read-only", e))?;
    // After /dev, in the order runc and OCI configs list them.
    sys::mount("sysfs", "/sys", "sysfs", hard | libc::MS_RDONLY, "")
        .map_err(|e| err("mounting /sys", e))?;
    for name in PROC_READONLY {
        let path = format!("/proc/{name}");
        if !Path::new(&path).exists() {
            continue;
        }
        sys::mount(&path, &path, "", libc::MS_BIND | libc::MS_REC, "")
            .map_err(|e| err(&format!("binding {path}"), e))?;
        sys::mount(
            "",
            &path,
            "",
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | hard,
            "",
        )
        .map_err(|e| err(&format!("making {path} read-only"), e))?;
    }
    for name in PROC_MASKED_FILES {
        let path = format!("/proc/{name}");
        if !Path::new(&path).exists() {
            continue;
        }
        sys::mount("/dev/null", &path, "", libc::MS_BIND, "")
            .map_err(|e| err(&format!("masking {path}"), e))?;
    }
    // Named volumes are numbered in the plan's order (their disks'
    // serials), host directories too (their virtio-fs tags).
    let mut named = 0;
    let mut host_dirs = 0;
    for m in &plan.mounts {
        match m {
            MountPlan::Tmpfs {
                destination,
                size_bytes,
                optional,
                mode,
            } => {
                if *optional && !Path::new(destination).exists() {
                    // A built-in default (baseline's /run) the image lacks.
                    eprintln!("moat: notice: the image has no {destination}; skipping its tmpfs");
                    continue;
                }
                if !Path::new(destination).is_dir() {
                    return Err(Failure::setup(format!(
                        "tmpfs destination {destination} is not a directory in the image: create it in the image or change the policy's tmpfs path"
                    )));
                }
                // As in the sandbox: the plan's mode, else /tmp is 1777
                // and every other tmpfs 0755.
                let mode = match mode {
                    Some(m) => format!("{m:o}"),
                    None if destination == "/tmp" => "1777".to_string(),
                    None => "755".to_string(),
                };
                sys::mount(
                    "tmpfs",
                    destination,
                    "tmpfs",
                    libc::MS_NOSUID | libc::MS_NODEV,
                    &format!("mode={mode},size={size_bytes}"),
                )
                .map_err(|e| err(&format!("mounting tmpfs on {destination}"), e))?;
            }
            MountPlan::Volume {
                destination,
                read_only,
                ..
            } => {
                // By tag, in the plan's order; the plan's source (blanked
                // by the host anyway) is never read in the guest.
                crate::volumes::mount_host_dir(host_dirs, destination, *read_only)?;
                host_dirs += 1;
            }
            MountPlan::Named {
                name,
                destination,
                read_only,
                ..
            } => {
                crate::volumes::mount(named, name, destination, *read_only)?;
                named += 1;
            }
        }
    }
    Ok(())
}
