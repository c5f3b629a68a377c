//! The `Hypervisor` trait: what the rest of moat-vm needs from a VMM. A
//! driver turns a [`VmSpec`] into a process command line plus the
//! descriptors it inherits; the jail ([`crate::jail`]) starts that process.
//! Nothing outside a driver knows QEMU's flags.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The accelerator a VM runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's binary translator (no hardware support needed, slower).
    Tcg,
}

impl Accel {
    pub fn parse(s: &str) -> Option<Accel> {
        match s {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Everything that defines one micro-VM.
#[derive(Debug)]
pub struct VmSpec {
    pub kernel: File,
    pub initramfs: File,
    /// Kernel command line (without what the driver adds for its devices).
    pub cmdline: String,
    /// The read-only root disk, if any (the accelerator probe boots without).
    pub root_disk: Option<File>,
    /// The root disk is writable (an OCI container's ext4 disk).
    pub root_writable: bool,
    /// Named volumes' images (open read-write) and whether the guest gets
    /// them read-only: virtio-blk disks with serial `moat-vol-N`.
    pub volumes: Vec<(File, bool)>,
    /// Host directories: the VMM's connected end of each virtiofsd's
    /// vhost-user socket with its tag, in the plan's order (`moat-dir-N`),
    /// then a pod's share (`moat-pod`). Guest RAM is then shared memory
    /// the daemons map.
    pub host_dirs: Vec<(String, OwnedFd)>,
    /// Guest end of the control channel (a connected stream socket).
    pub control: OwnedFd,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    /// The guest's network device, if any.
    pub net: Option<crate::net::NetDevice>,
    /// Booting a template, or restoring a VM from one ([`crate::template`]).
    pub template: Option<TemplateVm>,
}

/// The template side of a [`VmSpec`]. Both keep the device layout of the
/// template (a read-only root disk, the serial port) and its command line;
/// guest RAM is `memory`, a sealed memfd ([`crate::template`]), and the
/// VMM gets a monitor (QMP) on `qmp`.
#[derive(Debug)]
pub enum TemplateVm {
    /// Booting a template: RAM is `memory`, mapped shared, so the guest's
    /// pages land in it; the builder saves the device state through the
    /// monitor (migration with `x-ignore-shared`: RAM stays out of it).
    Build { qmp: OwnedFd, memory: OwnedFd },
    /// Restoring: RAM is a private (copy-on-write) mapping of the
    /// template's sealed `memory`; the VMM waits (`-incoming defer`) until
    /// the monitor tells it to load `state`.
    Restore {
        qmp: OwnedFd,
        state: File,
        memory: OwnedFd,
    },
}

/// A process to start: program, arguments, and descriptors it must inherit
/// at fixed numbers.
#[derive(Debug)]
pub struct VmmCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// `(descriptor, number in the child)`.
    pub fds: Vec<(OwnedFd, i32)>,
    /// Host memory the VMM needs beyond guest RAM (for its cgroup limit).
    pub overhead_mib: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error(
        "{program} not found: install qemu-system-x86 (scripts/bootstrap does) or set MOAT_QEMU"
    )]
    NotInstalled { program: PathBuf },
    #[error("duplicating a descriptor for the VMM")]
    Dup(#[source] std::io::Error),
}

/// A virtual machine monitor driver.
pub trait Hypervisor {
    /// Short name for messages (`qemu-microvm`).
    fn name(&self) -> &'static str;
    /// Whether the VMM binary is present.
    fn available(&self) -> bool;
    /// Extra kernel command line the guest needs on this accelerator.
    fn guest_cmdline(&self, accel: Accel) -> String;
    /// The command that runs `spec`.
    fn command(&self, spec: VmSpec) -> Result<VmmCommand, HypervisorError>;
}
