//! Booting one micro-VM: kernel, initramfs and root disk assembled into a
//! [`VmSpec`], handed to the hypervisor driver and started in the jail, with
//! the host end of the control channel returned to the caller.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::hypervisor::{Accel, Hypervisor, TemplateVm, VmSpec};
use crate::jail::{self, JailSpec, RunningVmm};
use crate::rootfs::{RootFs, RootImage};
use crate::{initramfs, kernel, sys, VmError};

/// A booting VM and the host end of its control channel.
pub struct Booted {
    pub vmm: RunningVmm,
    pub control: OwnedFd,
}

pub struct BootRequest<'a> {
    pub state_root: &'a Path,
    pub root: Option<&'a RootImage>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    /// CPU bandwidth of the VMM's cgroup, millicpus (the policy's `cpus`).
    pub cpu_millis: Option<u64>,
    /// Unique VM id (hex).
    pub id: &'a str,
    pub cleanup: Vec<std::path::PathBuf>,
    /// Ask the agent for its phase times (`moat.trace`).
    pub trace: bool,
    /// Named volumes' disks, in the plan's order.
    pub volumes: Vec<crate::volumes::VolumeDisk>,
    /// Host directories' daemons, ready to start in the VM's cgroups, and
    /// the VMM's ends of their sockets, in the plan's order.
    pub host_dirs: crate::virtiofs::Prepared,
    /// The guest's network device.
    pub net: Option<crate::net::NetDevice>,
    /// The network namespace the VMM joins (`None`: a new, empty one).
    pub netns: Option<std::os::fd::OwnedFd>,
    /// Booting a template or restoring from one ([`crate::template`]):
    /// the root disk is `placeholder` (build) or `root` (restore), the
    /// command line the template's, without the root's table.
    pub template: Option<TemplateBoot<'a>>,
}

pub enum TemplateBoot<'a> {
    Build {
        qmp: OwnedFd,
        memory: OwnedFd,
        placeholder: &'a Path,
    },
    Restore {
        qmp: OwnedFd,
        state: File,
        memory: OwnedFd,
    },
}

pub fn boot(hv: &dyn Hypervisor, mut req: BootRequest<'_>) -> Result<Booted, VmError> {
    let kernel_path = kernel::locate(req.state_root)?;
    let initrd_path = initramfs::ensure(req.state_root)?;
    let open = |p: &Path| {
        File::open(p).map_err(|source| VmError::Open {
            path: p.to_path_buf(),
            source,
        })
    };
    let (host, guest) = sys::socketpair().map_err(VmError::Channel)?;
    if let Some(t) = req.template.take() {
        return boot_template(hv, req.state_root, t, req.root, &req, host, guest);
    }
    let mut cmdline = hv.guest_cmdline(req.accel);
    if req.trace {
        cmdline.push_str(" moat.trace");
    }
    if !req.volumes.is_empty() {
        // The agent waits for this many volume disks before locking down.
        cmdline.push_str(&format!(" moat.volumes={}", req.volumes.len()));
    }
    let mut writable = false;
    match req.root.map(|r| (r, r.fs)) {
        Some((root, RootFs::Verity)) => cmdline.push_str(&format!(
            " dm-mod.create=\"{}\"",
            root.verity.dm_create("/dev/vda")
        )),
        Some((_, RootFs::Ext4 { read_only })) => {
            writable = !read_only;
            cmdline.push_str(if read_only {
                " moat.root=ext4-ro"
            } else {
                " moat.root=ext4"
            });
        }
        None => {}
    }
    let spec = VmSpec {
        kernel: open(&kernel_path)?,
        initramfs: open(&initrd_path)?,
        cmdline,
        root_disk: match req.root {
            Some(r) if writable => Some(
                File::options()
                    .read(true)
                    .write(true)
                    .open(&r.path)
                    .map_err(|source| VmError::Open {
                        path: r.path.clone(),
                        source,
                    })?,
            ),
            Some(r) => Some(open(&r.path)?),
            None => None,
        },
        root_writable: writable,
        volumes: req
            .volumes
            .into_iter()
            .map(|v| (v.file, v.read_only))
            .collect(),
        host_dirs: req.host_dirs.1,
        control: guest,
        vcpus: req.vcpus,
        memory_mib: req.memory_mib,
        accel: req.accel,
        net: req.net,
        template: None,
    };
    spawn(
        hv,
        spec,
        req.id,
        req.cpu_millis,
        req.cleanup,
        req.state_root,
        req.netns,
        req.host_dirs.0,
        host,
    )
}

/// A template's boot, or a restore from it: no volumes, no network
/// device, a read-only root disk (the placeholder or the image).
fn boot_template(
    hv: &dyn Hypervisor,
    state_root: &Path,
    t: TemplateBoot<'_>,
    root: Option<&RootImage>,
    req: &BootRequest<'_>,
    host: OwnedFd,
    guest: OwnedFd,
) -> Result<Booted, VmError> {
    let open = |p: &Path| {
        File::open(p).map_err(|source| VmError::Open {
            path: p.to_path_buf(),
            source,
        })
    };
    let (disk, template) = match t {
        TemplateBoot::Build {
            qmp,
            memory,
            placeholder,
        } => (open(placeholder)?, TemplateVm::Build { qmp, memory }),
        TemplateBoot::Restore { qmp, state, memory } => match root {
            Some(r) => (open(&r.path)?, TemplateVm::Restore { qmp, state, memory }),
            None => {
                return Err(VmError::Guest {
                    message: "a VM restored from a template needs a root image".into(),
                })
            }
        },
    };
    let spec = VmSpec {
        kernel: open(&kernel::locate(state_root)?)?,
        initramfs: open(&initramfs::ensure(state_root)?)?,
        cmdline: crate::template::cmdline(hv, req.accel),
        root_disk: Some(disk),
        root_writable: false,
        volumes: Vec::new(),
        host_dirs: Vec::new(),
        control: guest,
        vcpus: req.vcpus,
        memory_mib: req.memory_mib,
        accel: req.accel,
        net: None,
        template: Some(template),
    };
    spawn(
        hv,
        spec,
        req.id,
        req.cpu_millis,
        req.cleanup.clone(),
        state_root,
        None,
        Vec::new(),
        host,
    )
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    hv: &dyn Hypervisor,
    spec: VmSpec,
    id: &str,
    cpu_millis: Option<u64>,
    cleanup: Vec<std::path::PathBuf>,
    state_root: &Path,
    netns: Option<OwnedFd>,
    daemons: Vec<crate::virtiofs::Daemon>,
    host: OwnedFd,
) -> Result<Booted, VmError> {
    let (memory_mib, vcpus, accel) = (spec.memory_mib, spec.vcpus, spec.accel);
    let cmd = hv.command(spec)?;
    // Each VM gets its own uid, derived from its random id.
    let n = u32::from_str_radix(&id[..4.min(id.len())], 16).unwrap_or(0);
    let vmm = jail::spawn_with_daemons(
        cmd,
        &JailSpec {
            name: format!("vm-{id}"),
            uid: jail::UID_BASE + n,
            guest_memory_mib: memory_mib,
            vcpus,
            cpu_millis,
            cleanup,
            hide: vec![state_root.to_path_buf()],
            device_group: match accel {
                Accel::Kvm => jail::kvm_group(),
                Accel::Tcg => None,
            },
            netns,
        },
        daemons,
    )?;
    Ok(Booted { vmm, control: host })
}

/// Reads what the VMM printed (console, QEMU errors), for error messages.
pub fn console_tail(console: &mut File, keep: usize) -> String {
    let _ = sys::set_nonblocking(std::os::fd::AsFd::as_fd(console), true);
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = console.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    let s = String::from_utf8_lossy(&all);
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(keep)..].join("\n")
}
