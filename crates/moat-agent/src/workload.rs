//! Starting the workload: a forked child that enters the verified root and
//! applies the plan (mounts, rlimits, identity, capabilities, no_new_privs,
//! seccomp) before `execve`. Failures come back over a close-on-exec pipe
//! as data, so the host sees the real reason.

use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use moat_agent::proto::Start;
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
    let limit = plan.cgroup.pids.or_else(|| {
        plan.rlimits
            .iter()
            .find(|r| r.resource == RlimitResource::Nproc)
            .map(|r| r.hard)
    });
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
    spawn_in(start, None, None)
}

/// Starts `start.process` in the container of the running workload
/// `workload` (exec): the same steps as the workload's, but it joins the
/// workload's cgroup, PID namespace (the agent's children's, since
/// [`spawn`]) and mount namespace instead of making new ones.
pub fn spawn_exec(start: &Start, workload: libc::pid_t) -> Result<Child, Failure> {
    let path = format!("/proc/{workload}/ns/mnt");
    let ns = File::open(&path)
        .map_err(|e| Failure::setup(format!("the container is gone ({path}: {e})")))?;
    // The terminal from the container's own devpts (its /dev/pts, which
    // the agent mounted): `tty` and ttyname resolve in the container.
    let ptmx = format!("/proc/{workload}/root/dev/pts/ptmx");
    spawn_in(start, Some(ns.as_fd()), Some(&ptmx))
}

fn spawn_in(
    start: &Start,
    join: Option<std::os::fd::BorrowedFd<'_>>,
    ptmx: Option<&str>,
) -> Result<Child, Failure> {
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
    if join.is_none() {
        pids_cgroup(&start.plan)?;
        // The workload is PID 1 of a PID namespace of its own: the agent is
        // neither visible nor reachable (no signals, no prlimit, no /proc/1/root).
        sys::unshare(libc::CLONE_NEWPID).map_err(|e| err("unshare(CLONE_NEWPID)", e))?;
    }
    match sys::fork().map_err(|e| err("fork", e))? {
        sys::Fork::Child => {
            drop(report_r);
            let Err(f) = child(start, &child_fds, &drop_spec, &exec, join);
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
    join: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<Infallible, Failure> {
    let p = &start.process;
    let plan = &start.plan;
    let err = |what: &str, e: std::io::Error| Failure::setup(format!("{what}: {e}"));
    sys::setsid_ctty(if p.tty { Some(fds[0].as_fd()) } else { None })
        .map_err(|e| err("setsid", e))?;
    for (i, fd) in fds.iter().enumerate() {
        sys::dup2(fd.as_raw_fd(), i as i32).map_err(|e| err("dup2", e))?;
    }
    std::fs::write(format!("{CGROUP}/cgroup.procs"), "0")
        .map_err(|e| err("joining the workload's pids cgroup", e))?;
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
        // pivot_root, not chroot: the agent's root is gone from this namespace.
        sys::pivot_into(NEW_ROOT).map_err(|e| err("pivot_root into the root filesystem", e))?;
        let dns = start.net.as_ref().and_then(|n| n.dns);
        mount_container_fs(plan, console, dns)?;
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

fn mount_container_fs(
    plan: &moat_plan::Plan,
    console: Option<OwnedFd>,
    dns: Option<std::net::Ipv4Addr>,
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
                // As in the sandbox: /tmp is 1777, every other tmpfs 0755.
                let mode = if destination == "/tmp" { "1777" } else { "755" };
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
