//! Booting one micro-VM: kernel, initramfs and root disk assembled into a
//! [`VmSpec`], handed to the hypervisor driver and started in the jail, with
//! the host end of the control channel returned to the caller.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::hypervisor::{Accel, Hypervisor, VmSpec};
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
    /// The guest's network device.
    pub net: Option<crate::net::NetDevice>,
    /// The network namespace the VMM joins (`None`: a new, empty one).
    pub netns: Option<std::os::fd::OwnedFd>,
}

pub fn boot(hv: &dyn Hypervisor, req: BootRequest<'_>) -> Result<Booted, VmError> {
    let kernel_path = kernel::locate(req.state_root)?;
    let initrd_path = initramfs::ensure(req.state_root)?;
    let open = |p: &Path| {
        File::open(p).map_err(|source| VmError::Open {
            path: p.to_path_buf(),
            source,
        })
    };
    let (host, guest) = sys::socketpair().map_err(VmError::Channel)?;
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
        control: guest,
        vcpus: req.vcpus,
        memory_mib: req.memory_mib,
        accel: req.accel,
        net: req.net,
    };
    let cmd = hv.command(spec)?;
    // Each VM gets its own uid, derived from its random id.
    let n = u32::from_str_radix(&req.id[..4.min(req.id.len())], 16).unwrap_or(0);
    let vmm = jail::spawn(
        cmd,
        &JailSpec {
            name: format!("vm-{}", req.id),
            uid: jail::UID_BASE + n,
            guest_memory_mib: req.memory_mib,
            vcpus: req.vcpus,
            cpu_millis: req.cpu_millis,
            cleanup: req.cleanup,
            hide: vec![req.state_root.to_path_buf()],
            device_group: match req.accel {
                Accel::Kvm => jail::kvm_group(),
                Accel::Tcg => None,
            },
            netns: req.netns,
        },
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
