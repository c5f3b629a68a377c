//! The micro-VM backend: each container runs in its own QEMU `microvm` with
//! moat's minimal guest kernel, the static agent as PID 1, and the image as
//! a dm-verity-checked, read-only EROFS disk. See `docs/vm.md`.
//!
//! Layers: [`kernel`] (build and cache the guest kernel), [`initramfs`]
//! (the agent as `/init`), [`rootfs`] (EROFS + verity), [`hypervisor`] (the
//! driver trait) with [`qemu`], [`jail`] (the VMM's uid, namespaces and
//! cgroup), [`accel`] (KVM probe), [`boot`] and [`session`] (the relay).

pub mod accel;
pub mod backend;
pub mod boot;
pub mod exec;
pub mod hypervisor;
pub mod initramfs;
pub mod jail;
pub mod kernel;
mod lock;
pub mod net;
pub mod pod;
pub mod qemu;
pub mod rootdisk;
pub mod rootfs;
pub mod session;
mod state;
pub mod supervisor;
mod sys;
pub mod template;
pub mod trace;
pub mod virtiofs;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_policy::plan::NetworkPlan;
use moat_policy::{Plan, ProcessSpec};
use moat_runtime::{ContainerId, ContainerName, StateError};

pub use moat_agent::audit::{self, GuestDenial, GuestReadOnly, GuestReport};

pub use crate::backend::VmBackend;
pub use crate::hypervisor::{Accel, Hypervisor};
use crate::qemu::Qemu;

/// Default VM shape when the plan leaves it at zero.
pub const DEFAULT_VCPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// How a container's micro-VM starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VmStart {
    /// From the template where the VM's shape allows (a verified EROFS
    /// root, no volumes or host directories, no network device), else a
    /// cold boot, silently.
    #[default]
    Auto,
    /// From the template; a notice, then a cold boot, where it cannot be.
    Template,
    /// Boot the guest kernel.
    Cold,
}

impl VmStart {
    pub fn parse(s: &str) -> Option<VmStart> {
        match s {
            "template" => Some(VmStart::Template),
            "cold" => Some(VmStart::Cold),
            "auto" => Some(VmStart::Auto),
            _ => None,
        }
    }
}

/// Everything `moat run --isolation vm` hands to the backend.
#[derive(Debug)]
pub struct VmRunOptions {
    pub state_root: PathBuf,
    pub run_root: PathBuf,
    /// The image's materialised rootfs (never modified).
    pub rootfs: PathBuf,
    /// Image ID (`sha256:<hex>` config digest: the cache key of the root
    /// disk; `rootfs:<dir>` for a directory, built afresh each time).
    pub image_id: moat_runtime::ImageId,
    /// The container's ID; `None` draws a new one.
    pub id: Option<ContainerId>,
    pub process: ProcessSpec,
    pub plan: Plan,
    /// `kvm`, `tcg`, `auto` or `None` (= auto).
    pub accel: Option<String>,
    /// The container's name; empty: its short ID.
    pub name: String,
    pub stop_timeout: Duration,
    /// Which threads the supervisor's own seccomp filter binds once QEMU
    /// runs: the whole process for the CLI, the calling thread when embedded.
    pub supervisor_seccomp: supervisor::Scope,
    /// One end of a unix `SOCK_SEQPACKET` socketpair on which the
    /// supervisor accepts exec requests while the workload runs (the
    /// caller keeps the other end for [`exec::request`]); `None`: no exec.
    pub control: Option<std::os::fd::OwnedFd>,
    /// Keep the record when the VM ends (a detached container's monitor
    /// records the exit); else the cleanup watcher removes it.
    pub keep_record: bool,
    /// Where to report that the guest's agent is up and has the workload
    /// (a detached container's monitor waits for it).
    pub started_notify: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Hold the booted guest until a byte arrives here (see
    /// `moat_runtime::backend::Container::start_gate`).
    pub start_gate: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Seccomp filters the agent installs beside the plan's (moat-oci: the
    /// caller's `linux.seccomp`).
    pub extra_seccomp: Vec<moat_policy::plan::SeccompProgram>,
    /// Connect the guest to this interface of an existing network
    /// namespace (moat-oci: the one `config.json` names); `None`: the
    /// plan's network alone decides.
    pub attach: Option<net::Attach>,
    /// Serve this pod share ([`pod::Share::served`]) to the guest: the VM
    /// of a pod's first container, which the pod's further containers join.
    pub pod_share: Option<PathBuf>,
    /// Restore the VM from a template, or boot it.
    pub vm_start: VmStart,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::HypervisorError),
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    #[error(transparent)]
    Volume(#[from] volumes::VolumeRefused),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("policy {policy:?} grants network egress, and the VM was also asked to take over an existing network namespace's interface: a guest has one network; use a policy with `network: loopback` for an attached VM")]
    TwoNetworks { policy: String },
    #[error(transparent)]
    Template(Box<template::TemplateError>),
    #[error("--accel {value:?} is not an accelerator: use kvm, tcg or auto")]
    BadAccel { value: String },
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control channel to the guest")]
    Channel(#[source] std::io::Error),
    #[error("control channel to the guest")]
    Protocol(#[source] moat_agent::proto::ProtoError),
    #[error("unexpected {kind} frame from the guest agent")]
    Unexpected { kind: &'static str },
    #[error(
        "guest agent version {agent} does not match moat {host}: rebuild the agent (`make agent`)"
    )]
    AgentVersion { agent: String, host: String },
    #[error("the guest did not answer within {seconds} s; console:\n{console}")]
    NoHello { seconds: u64, console: String },
    #[error(
        "the VM ended ({status}) before the workload reported an exit status; console:\n{console}"
    )]
    VmExited { status: String, console: String },
    #[error("the virtiofsd serving host directory {directory} ended ({status}) while the VM ran; the VM is stopped (its file requests would wait for ever); console:\n{console}")]
    DaemonExited {
        directory: String,
        status: String,
        console: String,
    },
    #[error("the container mounts {named} named volume(s) and {host} host director(ies); a micro-VM takes at most {max} in all: mount fewer (one parent directory instead of several)")]
    TooManyVolumes {
        named: usize,
        host: usize,
        max: usize,
    },
    #[error("in the guest: {message}")]
    Guest { message: String },
    #[error(transparent)]
    Record(#[from] moat_runtime::StateError),
    #[error("exec control socket")]
    Exec(#[source] std::io::Error),
    #[error("exec refused by the container's supervisor: {message}")]
    ExecRefused { message: String },
    #[error("the container is not running, or stopped before the exec'd process ended")]
    ExecEnded,
}

/// Runs one container in a micro-VM; returns the workload's exit code (or 128+signal).
pub fn run_container(opts: VmRunOptions) -> Result<i32, VmError> {
    run_container_with(opts, session::Stdio::inherit(), &mut |n| eprintln!("{n}"))
}

/// [`run_container`] with the workload's stdio and moat's notices routed
/// explicitly (tests, embedding).
pub fn run_container_with(
    opts: VmRunOptions,
    stdio: session::Stdio,
    notice: &mut dyn FnMut(&str),
) -> Result<i32, VmError> {
    run_container_on(opts, None, stdio, notice)
}

/// [`run_container_with`] on a root disk the caller built (`moat-oci`'s
/// [`rootdisk`]); `None` builds or reuses the image's cached one.
pub fn run_container_on(
    opts: VmRunOptions,
    root: Option<rootfs::RootImage>,
    stdio: session::Stdio,
    notice: &mut dyn FnMut(&str),
) -> Result<i32, VmError> {
    run_container_reporting(opts, root, stdio, notice, &mut None)
}

/// [`run_container_on`], keeping the guest's report of a failed workload
/// (writes its read-only root refused, calls its filter denied) in
/// `report`: hostile input, already bounded, advice only.
pub fn run_container_reporting(
    opts: VmRunOptions,
    root: Option<rootfs::RootImage>,
    stdio: session::Stdio,
    notice: &mut dyn FnMut(&str),
    report: &mut Option<GuestReport>,
) -> Result<i32, VmError> {
    let mut trace = trace::Trace::from_env();
    if opts.attach.is_some() && matches!(opts.plan.network, NetworkPlan::Egress { .. }) {
        return Err(VmError::TwoNetworks {
            policy: opts.plan.policy_name.clone(),
        });
    }
    // Locked before anything boots: a volume in use refuses the start; a
    // host directory is opened (never through a link) before it too.
    let volumes::Volumes {
        disks: volume_disks,
        dirs: mut host_dirs,
    } = volumes::open(&opts.plan)?;
    if let Some(share) = &opts.pod_share {
        host_dirs.push(virtiofs::pod_share(share).map_err(|e| VmError::Volume(e.into()))?);
    }
    if volume_disks.len() + host_dirs.len() > qemu::MAX_VOLUMES {
        return Err(VmError::TooManyVolumes {
            named: volume_disks.len(),
            host: host_dirs.len(),
            max: qemu::MAX_VOLUMES,
        });
    }
    let hv = Qemu::default();
    if !hv.available() {
        return Err(hypervisor::HypervisorError::NotInstalled {
            program: hv.program,
        }
        .into());
    }
    let accel = accel::select(&opts.state_root, opts.accel.as_deref(), &hv, notice)?;
    trace.mark("accelerator selected");
    let root = match root {
        Some(r) => r,
        None => rootfs::ensure(&opts.state_root, &opts.image_id, &opts.rootfs)?,
    };
    trace.mark("root image (EROFS + verity) ready");
    let id = opts.id.clone().unwrap_or_else(ContainerId::generate);
    let name = if opts.name.is_empty() {
        id.short()
    } else {
        opts.name.as_str()
    };
    let name = ContainerName::parse(name).map_err(StateError::from)?;
    let mut state = state::ContainerState::create(
        &opts.run_root,
        id.clone(),
        name,
        state::Fields {
            image_id: &opts.image_id,
            command: &opts.process.args,
            policy_digest: &opts.plan.policy_digest,
            monitored: opts.keep_record,
        },
    )?;
    trace.mark("container state written");
    let vcpus = if opts.plan.vm.vcpus == 0 {
        DEFAULT_VCPUS
    } else {
        opts.plan.vm.vcpus
    };
    let memory_mib = if opts.plan.vm.memory_mib == 0 {
        DEFAULT_MEMORY_MIB
    } else {
        opts.plan.vm.memory_mib
    };
    // The host side of the guest's network, before the VMM exists: an
    // existing namespace's interface, or the egress namespace (filtered
    // and connected before the guest boots).
    let mut egress = None;
    let mut cleanup: Vec<PathBuf> = Vec::new();
    let (net_device, guest_net, netns) = match (&opts.attach, &opts.plan.network) {
        (Some(a), _) => {
            let (d, g) = net::attach(a)?;
            (Some(d), Some(g), None)
        }
        (
            None,
            NetworkPlan::Egress {
                rules,
                publish,
                dns,
            },
        ) => {
            let e = net::egress::start(&opts.run_root, &id.to_string(), rules, publish, *dns)?;
            let net::egress::EgressNet {
                net,
                netns,
                device,
                guest,
            } = e;
            egress = Some(net);
            cleanup = egress
                .as_ref()
                .map(net::egress::cleanup_paths)
                .unwrap_or_default();
            (Some(device), Some(guest), Some(netns))
        }
        (None, _) => (None, None, None),
    };
    trace.mark("network ready");
    // Each host directory's daemon, its mount point and socket in a
    // directory of the run root that the cleanup watcher removes.
    let mut jail_dir = None;
    let host_dirs = if host_dirs.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let dir = opts.run_root.join(format!("vfs-{}", id.short()));
        cleanup.push(dir.clone());
        jail_dir = Some(dir.clone());
        virtiofs::prepare(host_dirs, &dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            VmError::Volume(e.into())
        })?
    };
    let shape = template::Shape {
        vcpus,
        memory_mib,
        accel,
    };
    let restore = start_from_template(
        &hv,
        &opts,
        shape,
        &root,
        volume_disks.is_empty() && host_dirs.0.is_empty() && net_device.is_none(),
        notice,
    )?
    .map(|(state, mut msg)| {
        msg.trace = trace.on();
        (state, msg)
    });
    trace.mark(if restore.is_some() {
        "template verified"
    } else {
        "cold boot chosen"
    });
    let (template_boot, restore, qmp) = match restore {
        Some((t, msg)) => {
            let (qmp, qmp_vmm) = sys::socketpair().map_err(VmError::Channel)?;
            let boot = boot::TemplateBoot::Restore {
                qmp: qmp_vmm,
                state: t.state,
                memory: t.memory,
            };
            (Some(boot), Some(msg), Some(qmp))
        }
        None => (None, None, None),
    };
    let booted = boot::boot(
        &hv,
        boot::BootRequest {
            state_root: &opts.state_root,
            root: Some(&root),
            vcpus,
            memory_mib,
            accel,
            cpu_millis: opts.plan.cgroup.cpu_millis,
            id: &id,
            // The per-run disk of `--rootfs DIR` too: a later run's sweep
            // would find it, but the watcher removes it at once.
            cleanup: (!opts.keep_record)
                .then(|| state.dir())
                .into_iter()
                .chain(root.per_run_dir())
                .chain(cleanup)
                .collect(),
            trace: trace.on(),
            volumes: volume_disks,
            host_dirs,
            net: net_device,
            netns,
            template: template_boot,
        },
    )
    .inspect_err(|_| {
        // Failed before the cleanup watcher took it over, or after (then
        // the watcher's removal finds nothing): never left behind.
        if let Some(d) = &jail_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    })?;
    if let Some(qmp) = qmp {
        // The VMM waits for this before it loads the template's state.
        template::start_incoming(qmp).map_err(|e| VmError::Template(Box::new(e)))?;
        trace.mark("template state loading");
    }
    // The cleanup watcher (root) unbinds the namespace, and pasta exits
    // once the file is gone (or with this thread): the supervisor, soon
    // unprivileged and under a filter that allows no kill or unlink, must
    // not try.
    std::mem::forget(egress);
    // The cleanup watcher removes the state from here on (the supervisor
    // gives up the root that removing it takes).
    state.hand_over();
    // A monitored container's monitor records `running` once the agent
    // has the workload (after a held start, if any).
    if !opts.keep_record {
        state.running()?;
    }
    trace.mark("jail set up, VMM spawned");
    let r = session::run(
        booted,
        session::SessionOptions {
            process: &opts.process,
            plan: &opts.plan,
            stop_timeout: opts.stop_timeout,
            stdio,
            confine: opts.supervisor_seccomp,
            trace: &mut trace,
            control: opts.control,
            started_notify: opts.started_notify,
            start_gate: opts.start_gate,
            extra_seccomp: opts.extra_seccomp,
            net: guest_net,
            restore,
            report,
        },
    );
    trace.mark("VMM stopped, cgroup removed");
    drop(state);
    trace.mark("container state removed");
    r
}

/// The template's verified state and the `Restore` frame for this VM, or
/// `None` for a cold boot (asked for, a shape templates do not cover, or
/// a template that cannot be built: the last two with a notice when the
/// template was asked for explicitly, the last always).
fn start_from_template(
    hv: &Qemu,
    opts: &VmRunOptions,
    shape: template::Shape,
    root: &rootfs::RootImage,
    plain_devices: bool,
    notice: &mut dyn FnMut(&str),
) -> Result<Option<(template::Template, moat_agent::proto::Restore)>, VmError> {
    let explicit = opts.vm_start == VmStart::Template;
    if opts.vm_start == VmStart::Cold {
        return Ok(None);
    }
    if root.fs != rootfs::RootFs::Verity || !plain_devices {
        if explicit {
            notice("moat: notice: booting the micro-VM cold: templates cover a verified image root without volumes, host directories or a network device");
        }
        return Ok(None);
    }
    // A kernel or agent that cannot be used fails a cold boot the same
    // way: that error is the run's, not a notice.
    let inputs = template::Inputs::current(hv, &hv.program, &opts.state_root, shape)?;
    let t = match template::ensure(hv, &opts.state_root, &inputs, notice) {
        Ok(t) => t,
        Err(e) => {
            let mut s = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                s.push_str(&format!(": {c}"));
                cur = c.source();
            }
            notice(&format!(
                "moat: notice: booting the micro-VM cold: its template could not be used: {s}"
            ));
            return Ok(None);
        }
    };
    let mut entropy = [0u8; 64];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy));
    if read.is_err() {
        notice(
            "moat: notice: booting the micro-VM cold: no host randomness for its template clone",
        );
        return Ok(None);
    }
    let msg = moat_agent::proto::Restore {
        entropy: hex::encode(entropy),
        hostname: if opts.name.is_empty() {
            opts.id
                .as_ref()
                .map(|i| i.short().to_string())
                .unwrap_or_default()
        } else {
            opts.name.clone()
        },
        root: Some(moat_agent::proto::VerityRoot {
            data_size: root.verity.data_size,
            root_hash: root.verity.root_hash.clone(),
            salt: root.verity.salt.clone(),
        }),
        trace: false,
    };
    Ok(Some((t, msg)))
}

/// Whether a hardware accelerator really works here (cached probe). `auto`
/// isolation picks the vm backend only when this is true.
pub fn accelerator_works(state_root: &Path) -> bool {
    why_no_accelerator(state_root).is_none()
}

/// Why micro-VMs cannot run on a hardware accelerator here, in the user's
/// terms (`None`: they can); the reason `auto` isolation gives for
/// choosing the sandbox.
pub fn why_no_accelerator(state_root: &Path) -> Option<String> {
    let hv = Qemu::default();
    if !hv.available() {
        return Some(format!(
            "QEMU is not installed ({}; Debian package qemu-system-x86)",
            hv.program.display()
        ));
    }
    match accel::probe(state_root, &hv) {
        Ok((r, _)) if r.kvm => None,
        Ok((r, _)) => Some(r.reason),
        Err(VmError::Kernel(kernel::KernelError::NotBuilt { .. })) => {
            Some("no guest kernel is built yet (`moat kernel build`, about 5 minutes)".into())
        }
        Err(e) => Some(format!("the accelerator probe failed: {e}")),
    }
}
