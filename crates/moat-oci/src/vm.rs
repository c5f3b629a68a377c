//! Micro-VM containers under the OCI interface (`moat.dev/isolation: vm`).
//!
//! `create` forks one helper per container and exits once the guest is
//! booted and held before its workload. The helper is the pid written to
//! `--pid-file`: a child of the caller's subreaper (conmon, the containerd
//! shim) once `create` has exited, it supervises the VM (moat-vm's session:
//! stdio relay, signal forwarding), holds the caller's stdout and stderr
//! alone, and exits with the workload's status (128+N on signal N); once
//! QEMU runs it is an unprivileged uid under the supervisor's filter. A
//! gatekeeper process it forks answers the start gate (`<root>/<id>/gate`,
//! as in the sandbox) and hands out the exec channel to the guest agent
//! (`<root>/<id>/exec`).
//!
//! The guest's root is a per-container ext4 disk built at create from the
//! bundle's rootfs, with the files the caller bind-mounts copied into it
//! ([`moat_vm::rootdisk`]; docs/vm.md says why).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use moat_plan::{MountPlan, NetworkPlan, Plan, ProcessSpec, RlimitResource};
use moat_runtime::monitor::ready;
use moat_runtime::ContainerId;
use moat_vm::rootdisk::{self, FileCopy};

use crate::args::Create;
use crate::bundle::{Bundle, CgroupRequest, Prepared};
use crate::cgroup::Groups;
use crate::log::Logger;
use crate::state::{self, Record, VmRecord};
use crate::sys::{self, Forked};

/// How long the helper lets a workload ignore a stop signal before it
/// ends the VM itself: the caller (podman stop -t, the shim) escalates to
/// SIGKILL on its own schedule, so practically never.
const STOP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// What the gatekeeper writes to `create` once the guest is held.
const READY: u8 = 0x06;

/// moat's state root (guest kernels, the accelerator probe, VM scratch).
pub fn moat_state_root() -> PathBuf {
    crate::env_override("MOAT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/moat"))
}

/// The exec socket of a VM container.
pub fn exec_socket(root: &Path, id: &str) -> PathBuf {
    state::dir(root, id).join("exec")
}

/// What reaches the guest of the bundle's mounts: files copied into the
/// root disk, tmpfs mounts for the agent to make, and directory bind
/// mounts (volumes) as host directories, each served by its own jailed
/// virtiofsd (`moat_vm::virtiofs`; read-only on the host side too with
/// `ro`). The guest makes its own /proc, /sys, /dev, /dev/pts and
/// /dev/shm.
pub(crate) fn guest_mounts(p: &Prepared) -> anyhow::Result<(Vec<FileCopy>, Vec<MountPlan>)> {
    let mut files = Vec::new();
    let mut tmpfs = Vec::new();
    for m in &p.init.mounts {
        let dst = m.destination.trim_end_matches('/');
        let own = matches!(dst, "/proc" | "/sys" | "/dev" | "/dev/pts" | "/dev/shm")
            || dst.starts_with("/sys/")
            || dst.starts_with("/proc/");
        let is_bind = m.fstype == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
        match m.fstype.as_str() {
            _ if own => {}
            "mqueue" | "cgroup" | "cgroup2" | "devpts" | "proc" | "sysfs" if !is_bind => {}
            "tmpfs" if !is_bind => {
                let size = m
                    .options
                    .iter()
                    .find_map(|o| o.strip_prefix("size="))
                    .and_then(parse_size)
                    .unwrap_or(64 << 20);
                tmpfs.push(MountPlan::Tmpfs {
                    destination: dst.to_string(),
                    size_bytes: size,
                    optional: true,
                    mode: None,
                });
            }
            _ if is_bind => {
                let meta = std::fs::metadata(&m.source)
                    .with_context(|| format!("config.json mount {} on {dst}", m.source))?;
                if meta.is_dir() {
                    tmpfs.push(MountPlan::Volume {
                        source: m.source.clone(),
                        destination: dst.to_string(),
                        read_only: m.options.iter().any(|o| o == "ro"),
                    });
                    continue;
                }
                if !meta.is_file() {
                    bail!("config.json mount {} on {dst}: not a regular file (a socket, fifo or device) and cannot reach a micro-VM container (moat-oci copies only files into its disk); drop the mount, or run the container with --annotation moat.dev/isolation=sandbox", m.source);
                }
                files.push(FileCopy {
                    source: PathBuf::from(&m.source),
                    destination: dst.to_string(),
                });
            }
            other => bail!("config.json mount of type {other:?} on {dst}: micro-VM containers take bind mounts of files and tmpfs only; drop it, or use moat.dev/isolation=sandbox"),
        }
    }
    Ok((files, tmpfs))
}

/// `64m`, `65536k`, `1g` or bytes.
fn parse_size(s: &str) -> Option<u64> {
    let (num, mul) = match s.as_bytes().last()?.to_ascii_lowercase() {
        b'k' => (&s[..s.len() - 1], 1 << 10),
        b'm' => (&s[..s.len() - 1], 1 << 20),
        b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mul)
}

/// The guest's process, from config.json.
pub(crate) fn process_spec(b: &Bundle) -> anyhow::Result<ProcessSpec> {
    let p = b
        .config
        .process()
        .as_ref()
        .context("config.json has no process")?;
    let u = p.user();
    Ok(ProcessSpec {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().display().to_string(),
        uid: u.uid(),
        gid: u.gid(),
        additional_gids: u.additional_gids().clone().unwrap_or_default(),
        tty: p.terminal().unwrap_or(false),
        // As runc: the process reads the stdin `create` was given (a
        // containerd shim's pipe, or /dev/null), terminal or not.
        interactive: true,
        hostname: b.config.hostname().clone().unwrap_or_default(),
    })
}

fn plan_resource(n: u32) -> Option<RlimitResource> {
    Some(match n {
        libc::RLIMIT_NOFILE => RlimitResource::Nofile,
        libc::RLIMIT_NPROC => RlimitResource::Nproc,
        libc::RLIMIT_CORE => RlimitResource::Core,
        libc::RLIMIT_MEMLOCK => RlimitResource::Memlock,
        libc::RLIMIT_FSIZE => RlimitResource::Fsize,
        libc::RLIMIT_STACK => RlimitResource::Stack,
        _ => return None,
    })
}

/// The smallest guest a caller's memory limit may make: the guest kernel
/// and the agent need about 30 MiB before the workload.
pub const MIN_GUEST_MIB: u64 = 64;

/// The plan the guest agent applies: the policy's, narrowed to what the
/// caller asked within it (bundle.rs's intersection): capabilities (the
/// permitted set), rlimits, the pids limit, the memory limit (the guest's
/// memory, never above the policy's); plus the caller's tmpfs mounts.
pub(crate) fn guest_plan(p: &Prepared, tmpfs: Vec<MountPlan>) -> anyhow::Result<Plan> {
    let mut plan = p.plan.clone();
    if let Some(bytes) = p.cgroup.memory.filter(|v| *v > 0) {
        let mib = (bytes as u64) >> 20;
        if mib < MIN_GUEST_MIB {
            bail!("linux.resources.memory.limit {bytes} is below the {MIN_GUEST_MIB} MiB a micro-VM container needs (its guest kernel and agent included); give at least --memory {MIN_GUEST_MIB}m");
        }
        let policy = match plan.vm.memory_mib {
            0 => moat_vm::DEFAULT_MEMORY_MIB,
            m => m,
        };
        plan.vm.memory_mib = policy.min(mib);
    }
    // The site's `no_new_privileges: as-requested` and the caller's
    // `noNewPrivileges: false` (bundle.rs decided): the agent honours it.
    plan.process.no_new_privs = p.init.drop.no_new_privs();
    let permitted = p.init.drop.capability_sets().permitted;
    plan.capabilities
        .retain(|c| moat_plan::caps::number(c).is_some_and(|n| permitted & (1 << n) != 0));
    for (n, soft, hard) in p.init.drop.raw_rlimits() {
        let Some(resource) = plan_resource(n) else {
            continue;
        };
        plan.rlimits.retain(|r| r.resource != resource);
        plan.rlimits.push(moat_plan::Rlimit {
            resource,
            soft,
            hard,
        });
    }
    if let Some(pids) = p.cgroup.pids.filter(|v| *v > 0) {
        plan.cgroup.pids = Some(pids as u64);
    }
    // The VMM's CPU bandwidth (its host cgroup: the vCPUs are its
    // threads): the caller's quota, which bundle.rs holds to the policy's,
    // else the policy's, else the vCPUs plus one, so that every VMM has a
    // cpu cgroup `update` can change.
    let vcpus = match plan.vm.vcpus {
        0 => moat_vm::DEFAULT_VCPUS,
        n => n,
    };
    let asked = p.cgroup.cpu_quota.filter(|q| *q > 0).map(|q| {
        let period = p.cgroup.cpu_period.filter(|p| *p > 0).unwrap_or(100_000);
        (q as u64 * 1000).div_ceil(period)
    });
    plan.cgroup.cpu_millis = asked
        .or(plan.cgroup.cpu_millis)
        .or(Some(u64::from(vcpus + 1) * 1000));
    for t in tmpfs {
        let destination = match &t {
            MountPlan::Tmpfs { destination, .. } => destination,
            MountPlan::Volume { .. } => {
                plan.mounts.push(t);
                continue;
            }
            MountPlan::Named { .. } => continue,
        };
        let exists = plan
            .mounts
            .iter()
            .any(|m| matches!(m, MountPlan::Tmpfs { destination: d, .. } if d == destination));
        if !exists {
            plan.mounts.push(t);
        }
    }
    // The device nodes of config.json (`linux.devices`, checked against
    // the policy by bundle.rs) and runtime-spec's default devices: the
    // agent makes them in the container's /dev as nodes of the guest
    // kernel; the host's devices never reach the guest.
    plan.devices = p
        .init
        .devices
        .iter()
        .map(|d| moat_plan::DeviceRule {
            path: d.path.clone(),
            kind: match d.kind {
                'b' => 'b',
                'p' => 'p',
                _ => 'c',
            },
            major: d.major as u32,
            minor: d.minor as u32,
            access: "rwm".into(),
            file_mode: Some(d.mode & 0o7777),
            uid: Some(d.uid),
            gid: Some(d.gid),
        })
        .collect();
    // The guest's network is the caller's namespace (attached by the
    // helper), never the policy's egress: loopback in the plan.
    if matches!(plan.network, NetworkPlan::Egress { .. }) {
        plan.network = NetworkPlan::Loopback;
    }
    Ok(plan)
}

/// The interfaces other than `lo` in the network namespace config.json
/// names, if it names one.
fn netns_interfaces(b: &Bundle) -> Option<(PathBuf, Vec<String>)> {
    let linux = b.config.linux().as_ref()?;
    let path = linux.namespaces().iter().flatten().find_map(|n| {
        (n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            .then(|| n.path().clone())
            .flatten()
    })?;
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["ip", "-o", "link", "show"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n != "lo")
        .collect();
    Some((path, names))
}

/// The interface of the caller's network namespace the guest takes over:
/// the only one, or `eth0` among several; `None` without any (podman's
/// `--network none`: loopback only).
fn guest_interface(netns: &Path, ifaces: &[String]) -> anyhow::Result<Option<String>> {
    match ifaces {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many if many.iter().any(|i| i == "eth0") => Ok(Some("eth0".to_string())),
        many => bail!(
            "network namespace {} has several interfaces ({}) and none is eth0: a micro-VM container takes over one; give it one network, or use moat.dev/isolation=sandbox",
            netns.display(),
            many.join(", ")
        ),
    }
}

/// What `create` passes to the helper.
struct Helper {
    rootfs: PathBuf,
    read_only: bool,
    files: Vec<FileCopy>,
    process: ProcessSpec,
    plan: Plan,
    vm_id: ContainerId,
    /// The container's state directory.
    dir: PathBuf,
    run_root: PathBuf,
    state_root: PathBuf,
    gate: UnixListener,
    exec: UnixListener,
    tty: Option<OwnedFd>,
    report: OwnedFd,
    extra_seccomp: Vec<moat_plan::SeccompProgram>,
    attach: Option<moat_vm::net::Attach>,
    pod_share: Option<PathBuf>,
}

pub fn create(
    root: &Path,
    dir: &Path,
    a: &Create,
    b: &Bundle,
    p: &Prepared,
    rec: &mut Record,
    log: &Logger,
) -> anyhow::Result<i32> {
    let (files, tmpfs) = guest_mounts(p)?;
    let attach = match netns_interfaces(b) {
        Some((netns, ifaces)) => guest_interface(&netns, &ifaces)?
            .map(|interface| moat_vm::net::Attach { netns, interface }),
        None => None,
    };
    if !p.init.create_container_hooks.is_empty() || !p.init.start_container_hooks.is_empty() {
        bail!("config.json has createContainer or startContainer hooks, which run in the container's namespaces: a micro-VM container has none on the host; drop the hooks, or use moat.dev/isolation=sandbox");
    }
    let process = process_spec(b)?;
    if process.args.is_empty() {
        bail!("config.json: process.args is empty");
    }
    let plan = guest_plan(p, tmpfs)?;
    let state_root = moat_state_root();
    moat_vm::kernel::locate(&state_root).context("micro-VM containers need a guest kernel")?;
    let vm_id = ContainerId::generate();
    // moat-vm's records, shared by the VM containers of this root (a
    // directory `list` skips); the cleanup watcher removes each.
    let run_root = root.join(".vm");
    let gate = UnixListener::bind(state::gate(root, &a.id))
        .with_context(|| format!("creating the start gate in {}", dir.display()))?;
    let exec = UnixListener::bind(exec_socket(root, &a.id))
        .with_context(|| format!("creating the exec socket in {}", dir.display()))?;
    let tty = console_peer(a.console_socket.as_deref(), process.tty)?;
    // A pod's sandbox container: its VM serves the pod's share, which the
    // pod's further containers join (crate::pod).
    let pod_share = if crate::pod::is_sandbox(&b.annotations) {
        let share = crate::pod::share(root, &a.id);
        share
            .make()
            .with_context(|| format!("making the share of pod {:?}", a.id))?;
        Some(share)
    } else {
        None
    };
    let (report_r, report_w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("pipe")?;
    let helper = Helper {
        pod_share: pod_share.as_ref().map(|s| s.served()),
        rootfs: b.rootfs.clone(),
        read_only: p.init.readonly_root,
        files,
        process,
        plan,
        vm_id: vm_id.clone(),
        dir: dir.to_path_buf(),
        run_root,
        state_root: state_root.clone(),
        gate,
        exec,
        tty,
        report: report_w,
        extra_seccomp: vec![p.caller_seccomp.clone()],
        attach,
    };
    let pid = match sys::fork().context("forking the VM helper")? {
        Forked::Child => {
            drop(report_r);
            std::process::exit(run_helper(helper, log));
        }
        Forked::Parent(pid) => pid,
    };
    drop(helper);
    // One byte READY from the gatekeeper, or the helper's error until EOF.
    let mut report = File::from(report_r);
    let mut first = [0u8; 1];
    let created = matches!(report.read(&mut first), Ok(1)) && first[0] == READY;
    if !created {
        let mut rest = Vec::new();
        let _ = report.read_to_end(&mut rest);
        kill_helper(pid);
        if !created && first[0] == 0 && rest.is_empty() {
            bail!("the micro-VM helper exited while creating the container");
        }
        let mut text = vec![first[0]];
        text.extend(rest);
        bail!(
            "{}",
            String::from_utf8_lossy(&text).trim_start_matches('\0')
        );
    }
    // The container's cgroup holds the helper alone (its gatekeeper and
    // the cleanup watcher stay where create ran), made only now so that a
    // create killed earlier leaves none. It gets the caller's limits, as
    // the caller reads them back (they bind the helper only: the guest's
    // memory and pids limits are in the guest, its CPU limits on the
    // VMM's cgroup), but no device rules: the guest has only the devices
    // moat gives it, and on a v1 devices hierarchy the rules would deny
    // QEMU /dev/kvm.
    let groups = Groups::create(&CgroupRequest {
        devices: Vec::new(),
        ..p.cgroup.clone()
    });
    let joined = groups.and_then(|g| match g.add(pid) {
        Ok(()) => Ok(g),
        Err(e) => {
            g.remove();
            Err(e)
        }
    });
    rec.cgroup = match joined {
        Ok(g) => g,
        Err(e) => {
            kill_helper(pid);
            return Err(e.into());
        }
    };
    rec.pid = pid;
    rec.pid_start = moat_runtime::record::process_start_time(pid).unwrap_or(0);
    let vm = VmRecord {
        vm_id: vm_id.to_string(),
        state_root,
        pod_share: pod_share.is_some(),
        member_of: None,
    };
    // The caller's exact CPU quota, period and shares on the VMM's group.
    if let Err(e) = crate::vmops::apply_cpu(rec, &vm, &p.cgroup) {
        kill_helper(pid);
        rec.cgroup.remove();
        return Err(e);
    }
    // prestart and createRuntime hooks: the guest is booted and held.
    let st = serde_json::to_vec(&crate::create::state_json(rec, "created")).unwrap_or_default();
    for h in &rec.hooks.create_runtime {
        if let Err(e) = moat_sandbox::oci::run_hook(h, &st) {
            kill_helper(pid);
            rec.cgroup.remove();
            bail!("createRuntime {e}");
        }
    }
    rec.vm = Some(vm);
    state::save(root, rec)?;
    if let Some(f) = &a.pid_file {
        crate::create::write_pid_file(f, pid)?;
    }
    Ok(pid)
}

/// With a terminal and a `--console-socket`: a new pseudo-terminal whose
/// master goes to the caller through the socket; the peer, for the
/// process's side.
pub(crate) fn console_peer(socket: Option<&Path>, tty: bool) -> anyhow::Result<Option<OwnedFd>> {
    let Some(path) = socket.filter(|_| tty) else {
        return Ok(None);
    };
    let s = UnixStream::connect(path)
        .with_context(|| format!("connecting to --console-socket {}", path.display()))?;
    let (master, peer) = sys::openpty().context("allocating a pseudo-terminal")?;
    sys::send_fd(s.as_fd(), master.as_fd()).with_context(|| {
        format!(
            "sending the terminal to --console-socket {}",
            path.display()
        )
    })?;
    Ok(Some(peer))
}

/// Kills and reaps a helper that failed during create (our child).
pub(crate) fn kill_helper(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
    }
}

/// The helper: builds the root disk, boots the VM held at its gate and
/// supervises it; returns the exit status.
fn run_helper(h: Helper, log: &Logger) -> i32 {
    let report = Arc::new(Mutex::new(Some(File::from(h.report))));
    let fail = {
        let report = report.clone();
        move |msg: &str| {
            let sent = report
                .lock()
                .map(|mut r| r.take())
                .ok()
                .flatten()
                .is_some_and(|mut f| f.write_all(msg.as_bytes()).is_ok());
            if !sent {
                // create is gone (EPIPE): the caller's stderr is the
                // container's log.
                eprintln!("moat-oci: error: {msg}");
            }
        }
    };
    let setup = match &h.tty {
        Some(t) => sys::take_terminal(t.as_fd()),
        None => rustix::process::setsid().map(drop).map_err(Into::into),
    };
    if let Err(e) = setup.and_then(|()| sys::block_session_signals()) {
        fail(&format!("setting up the VM helper: {e}"));
        return 125;
    }
    drop(h.tty);
    // The targets of directory volumes exist in the disk (the agent mounts
    // onto them, never making one).
    let mount_points: Vec<String> = h
        .plan
        .mounts
        .iter()
        .filter_map(|m| match m {
            MountPlan::Volume { destination, .. } => Some(destination.clone()),
            _ => None,
        })
        .collect();
    let disk = match rootdisk::build(
        &h.state_root,
        &h.rootfs,
        &h.files,
        &mount_points,
        h.read_only,
    ) {
        Ok(d) => d,
        Err(e) => {
            fail(&format!(
                "building the micro-VM's root disk from {}: {:#}",
                h.rootfs.display(),
                anyhow::Error::from(e)
            ));
            return 125;
        }
    };
    let pipes = (|| -> std::io::Result<_> {
        let flags = rustix::pipe::PipeFlags::CLOEXEC;
        let notify = rustix::pipe::pipe_with(flags)?;
        let gate = rustix::pipe::pipe_with(flags)?;
        let control = moat_vm::exec::control_pair()?;
        Ok((notify, gate, control))
    })();
    let ((notify_r, notify_w), (gate_r, gate_w), (caller, supervisor)) = match pipes {
        Ok(p) => p,
        Err(e) => {
            fail(&format!("setting up the VM helper: {e}"));
            return 125;
        }
    };
    // The gate and the exec socket are served by a process of their own:
    // the helper itself becomes moat-vm's supervisor, one thread, whose
    // uid drop and seccomp filter bind the whole process.
    match sys::fork() {
        Ok(Forked::Child) => {
            drop((notify_w, gate_r, supervisor));
            // The helper's: dropping it here would remove the disk.
            std::mem::forget(disk);
            gatekeeper(notify_r, gate_w, h.gate, h.exec, caller, report, h.dir);
        }
        Ok(Forked::Parent(_)) => {}
        Err(e) => {
            fail(&format!("forking the VM helper's gatekeeper: {e}"));
            return 125;
        }
    }
    drop((notify_r, gate_w, h.gate, h.exec, caller));
    let opts = moat_vm::VmRunOptions {
        state_root: h.state_root,
        run_root: h.run_root,
        rootfs: h.rootfs.clone(),
        image_id: moat_runtime::ImageId::Rootfs(h.rootfs.clone()),
        id: Some(h.vm_id),
        process: h.process,
        plan: h.plan,
        accel: None,
        name: String::new(),
        stop_timeout: STOP_TIMEOUT,
        supervisor_seccomp: moat_vm::supervisor::Scope::Process,
        control: Some(supervisor),
        keep_record: false,
        started_notify: Some(Arc::new(notify_w)),
        start_gate: Some(Arc::new(gate_r)),
        extra_seccomp: h.extra_seccomp,
        attach: h.attach,
        pod_share: h.pod_share,
        // Its root is the bundle's ext4 disk, which templates do not cover.
        vm_start: moat_vm::VmStart::Cold,
    };
    let stdio = moat_vm::session::Stdio::inherit();
    match moat_vm::run_container_on(opts, Some(disk), stdio, &mut |n| log.debug(n)) {
        Ok(code) => code,
        Err(e) => {
            fail(&format!("{:#}", anyhow::Error::from(e)));
            125
        }
    }
}

/// The helper's gatekeeper (its child, ending when it ends): the start gate
/// ([`coordinate`]) and the exec socket ([`serve_exec`]), with /dev/null as
/// stdio (the helper alone holds the caller's output).
fn gatekeeper(
    notify: OwnedFd,
    gate: OwnedFd,
    gate_listener: UnixListener,
    exec: UnixListener,
    channel: OwnedFd,
    report: Arc<Mutex<Option<File>>>,
    dir: PathBuf,
) -> ! {
    // A pidfd of the helper, not PR_SET_PDEATHSIG: the kernel does not
    // send the parent-death signal once the helper has dropped its uid.
    let parent = rustix::process::getppid()
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    let setup = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .and_then(|null| sys::onto_stdio(null.as_fd()));
    let (Some(parent), Ok(())) = (parent, setup) else {
        std::process::exit(125);
    };
    std::thread::spawn(move || serve_exec(exec, channel));
    let parent = Arc::new(parent);
    let helper = parent.clone();
    let abandon = move || {
        let _ = rustix::process::pidfd_send_signal(&*helper, rustix::process::Signal::KILL);
        let _ = std::fs::remove_dir_all(&dir);
    };
    // Dropped by the coordinator once create has its answer or the
    // abandoned container is gone: the helper's end (which `abandon`
    // itself causes) must not end this process half-way through removing
    // the state directory.
    let (settled_tx, settled) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        coordinate(notify, gate, gate_listener, report, abandon, settled_tx)
    });
    // Serve until the helper has ended (its pidfd turns readable).
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &parent,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) if fds[0].revents().is_empty() => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Ok(_) | Err(_) => {
                let _ = settled.recv_timeout(SETTLE_TIMEOUT);
                std::process::exit(0)
            }
        }
    }
}

/// How long the gatekeeper waits, once the helper has ended, for the
/// coordinator to finish: the notify pipe's EOF comes with the helper's
/// end, so this bounds only a wedged removal.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The start gate's side of the helper: tells `create` the guest is held
/// (the session wrote CREATED), then waits for `start`, releases the
/// guest and answers `start` once the agent has the workload (EOF: ok; any
/// text: the error, as the sandbox's gate answers).
fn coordinate(
    notify: OwnedFd,
    gate: OwnedFd,
    listener: UnixListener,
    report: Arc<Mutex<Option<File>>>,
    abandon: impl FnOnce(),
    settled: std::sync::mpsc::Sender<()>,
) {
    let mut byte = [0u8; 1];
    if !matches!(rustix::io::read(&notify, &mut byte), Ok(1)) || byte[0] != ready::CREATED {
        // The guest was never held (the helper ended first, with a create
        // that was killed or that reports the error and cleans up itself):
        // nothing can start it, so its state must not stay either.
        abandon();
        return;
    }
    let told = report
        .lock()
        .map(|mut r| r.take())
        .ok()
        .flatten()
        .is_some_and(|mut f| f.write_all(&[READY]).is_ok());
    if !told {
        // create died before the container was recorded: nobody can
        // start or delete it, so it must not stay held.
        abandon();
        return;
    }
    drop(settled);
    let Ok((mut conn, _)) = listener.accept() else {
        return;
    };
    drop(listener);
    let mut s = [0u8; 1];
    let _ = conn.read(&mut s);
    if rustix::io::write(&gate, b"s").is_err() {
        let _ = conn.write_all(b"the micro-VM ended before its workload started");
        return;
    }
    match rustix::io::read(&notify, &mut byte) {
        Ok(1) if byte[0] == ready::STARTED => {}
        _ => {
            let _ = conn.write_all(b"the micro-VM ended before its workload started");
        }
    }
}

/// Hands the exec channel to the guest's supervisor to each `exec`.
fn serve_exec(listener: UnixListener, channel: OwnedFd) {
    for conn in listener.incoming().flatten() {
        let _ = sys::send_fd(conn.as_fd(), channel.as_fd());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::site::Site;

    fn config(mounts: Value, memory: Option<i64>) -> Value {
        let mut c = json!({
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 1000, "gid": 1000},
                "args": ["sh"], "env": ["PATH=/bin"], "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_KILL", "CAP_CHOWN"],
                    "effective": ["CAP_KILL"],
                    "permitted": ["CAP_KILL"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}]
            },
            "root": {"path": "rootfs"},
            "mounts": mounts,
            "annotations": {
                "moat.dev/isolation": "vm",
                "moat.dev/policy": format!("{}/tests/clients/podman-defaults.yaml", env!("CARGO_MANIFEST_DIR"))
            },
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "resources": {"pids": {"limit": 30}, "cpu": {"quota": 25000, "period": 50000}},
                "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}
            }
        });
        if let Some(m) = memory {
            c["linux"]["resources"]["memory"] = json!({"limit": m});
        }
        c
    }

    fn prepared(c: Value) -> Prepared {
        let config: oci_spec::runtime::Spec = serde_json::from_value(c).unwrap();
        let b = Bundle {
            dir: "/nonexistent-bundle".into(),
            rootfs: "/nonexistent-bundle/rootfs".into(),
            annotations: config.annotations().clone().unwrap_or_default(),
            config,
        };
        crate::bundle::prepare(&b, &Site::default(), "t").unwrap()
    }

    #[test]
    fn the_guest_plan_is_the_policys_narrowed_to_the_callers_asks() {
        let p = prepared(config(json!([]), Some(128 << 20)));
        let plan = guest_plan(&p, Vec::new()).unwrap();
        // The permitted set only: CHOWN is in the bounding set alone.
        assert_eq!(plan.capabilities, vec!["KILL".to_string()]);
        let nofile = plan
            .rlimits
            .iter()
            .find(|r| r.resource == RlimitResource::Nofile)
            .unwrap();
        // Within the policy's 4096: the caller's own ask.
        assert_eq!((nofile.soft, nofile.hard), (512, 1024));
        assert_eq!(plan.cgroup.pids, Some(30));
        assert_eq!(plan.vm.memory_mib, 128);
        // The VMM's CPU bandwidth: the caller's 25 ms per 50 ms, within
        // the policy's one CPU.
        assert_eq!(plan.cgroup.cpu_millis, Some(500));
        assert!(!matches!(plan.network, NetworkPlan::Egress { .. }));
    }

    #[test]
    fn a_memory_limit_too_small_for_a_guest_is_refused() {
        let p = prepared(config(json!([]), Some(32 << 20)));
        assert_eq!(
            guest_plan(&p, Vec::new()).unwrap_err().to_string(),
            "linux.resources.memory.limit 33554432 is below the 64 MiB a micro-VM container needs (its guest kernel and agent included); give at least --memory 64m"
        );
    }

    #[test]
    fn files_are_copied_tmpfs_kept_and_a_volume_served_by_virtiofs() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "x").unwrap();
        let mounts = json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/shm", "type": "bind", "source": dir.path(), "options": ["rbind"]},
            {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["size=65536k"]}
        ]);
        let p = prepared(config(mounts, None));
        let (files, tmpfs) = guest_mounts(&p).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].destination, "/etc/hosts");
        assert_eq!(files[0].source, hosts);
        assert!(matches!(
            &tmpfs[..],
            [MountPlan::Tmpfs { destination, size_bytes: 67108864, optional: true, mode: None }] if destination == "/run"
        ));
        let v = json!([
            {"destination": "/data", "type": "bind", "source": dir.path(), "options": ["rbind"]},
            {"destination": "/ro/", "type": "bind", "source": dir.path(), "options": ["rbind", "ro"]}
        ]);
        let (_, mounts) = guest_mounts(&prepared(config(v, None))).unwrap();
        let src = dir.path().display().to_string();
        assert_eq!(
            mounts,
            vec![
                MountPlan::Volume {
                    source: src.clone(),
                    destination: "/data".into(),
                    read_only: false,
                },
                MountPlan::Volume {
                    source: src,
                    destination: "/ro".into(),
                    read_only: true,
                },
            ]
        );
    }

    #[test]
    fn sizes_parse_as_tmpfs_takes_them() {
        assert_eq!(parse_size("65536k"), Some(64 << 20));
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
    }
}
