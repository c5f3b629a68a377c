//! The QEMU `microvm` driver: PVH boot of the uncompressed vmlinux, only a
//! serial console, one read-only virtio-blk disk and one virtio-serial port,
//! `-nodefaults -no-user-config` and QEMU's own seccomp sandbox.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::hypervisor::{Accel, Hypervisor, HypervisorError, TemplateVm, VmSpec, VmmCommand};
use crate::net::NetDevice;

/// Descriptor numbers inside the VMM process.
const FD_KERNEL: i32 = 3;
const FD_INITRD: i32 = 4;
const FD_CONTROL: i32 = 5;
const FD_DISK: i32 = 6;
/// A read-only descriptor of a writable root disk: QEMU's block layer
/// opens the image read-only first, and an fdset hands out only a
/// descriptor of the access mode asked for.
const FD_DISK_RO: i32 = 7;
/// Named volumes: two descriptors each (read-write, read-only, as for a
/// writable root disk) from here on, fdset 2 + N.
const FD_VOLUMES: i32 = 16;
/// Host directories: the connected vhost-user socket of each one's
/// virtiofsd, from here on (one each).
const FD_HOST_DIRS: i32 = 128;
/// At most this many named volumes and host directories in all: the
/// jail hands the VMM at most 64 descriptors (a dozen its own, two per
/// named volume, one per host directory), and named volumes' numbers
/// (two each from [`FD_VOLUMES`]) stay below [`FD_HOST_DIRS`].
pub const MAX_VOLUMES: usize = 24;
/// The tap queue of a [`NetDevice::Tap`].
const FD_NET: i32 = 8;
/// A template VM's monitor socket, a restore's migration stream, and the
/// template's guest memory (a sealed memfd).
pub const FD_QMP: i32 = 9;
pub const FD_MIGRATION: i32 = 10;
pub const FD_MEMORY: i32 = 11;

/// Translation cache size under TCG, MiB. QEMU's default (1 GiB) lets RSS
/// grow to ~200 MB; 32 MiB keeps a container's VMM small and costs little
/// for short-lived workloads.
pub const TCG_TB_SIZE_MIB: u64 = 32;

pub struct Qemu {
    pub program: PathBuf,
}

impl Default for Qemu {
    fn default() -> Qemu {
        Qemu {
            program: std::env::var_os("MOAT_QEMU")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-system-x86_64")),
        }
    }
}

/// The host's TSC frequency in kHz (from `/proc/cpuinfo`), for `tsc_early_khz`.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz").and_then(|r| r.split(':').nth(1)))?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0).round() as u64)
}

impl Qemu {
    /// The argument vector for `spec` (pure, for tests).
    pub fn args(spec: &VmSpec) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &str| a.push(s.to_string());
        push("-M");
        // Guest RAM the virtio-fs daemons map: a shared memfd (a
        // template's VM has no host directories, see lib.rs).
        let shared_ram = !spec.host_dirs.is_empty() && spec.template.is_none();
        push(&format!(
            "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on,acpi=on{}",
            if spec.template.is_some() || shared_ram {
                ",memory-backend=moatmem"
            } else {
                ""
            }
        ));
        push("-accel");
        match spec.accel {
            Accel::Kvm => push("kvm"),
            Accel::Tcg => push(&format!("tcg,tb-size={TCG_TB_SIZE_MIB}")),
        }
        push("-smp");
        push(&spec.vcpus.max(1).to_string());
        push("-m");
        push(&format!("{}M", spec.memory_mib));
        for s in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ] {
            push(s);
        }
        push("-serial");
        push("stdio");
        push("-sandbox");
        push("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
        push("-kernel");
        push(&format!("/proc/self/fd/{FD_KERNEL}"));
        push("-initrd");
        push(&format!("/proc/self/fd/{FD_INITRD}"));
        push("-append");
        push(&spec.cmdline);
        if spec.root_disk.is_some() {
            push("-add-fd");
            push(&format!("fd={FD_DISK},set=1,opaque=moat-root"));
            if spec.root_writable {
                push("-add-fd");
                push(&format!("fd={FD_DISK_RO},set=1,opaque=moat-root-ro"));
            }
            push("-drive");
            push(if spec.root_writable {
                "id=root,file=/dev/fdset/1,format=raw,if=none,aio=threads"
            } else {
                "id=root,file=/dev/fdset/1,format=raw,if=none,readonly=on,aio=threads"
            });
            push("-device");
            push("virtio-blk-device,drive=root");
        }
        for (i, (_, read_only)) in spec.volumes.iter().enumerate() {
            let (rw, ro) = volume_fds(i);
            let set = 2 + i;
            push("-add-fd");
            push(&format!("fd={rw},set={set},opaque=moat-vol-{i}"));
            push("-add-fd");
            push(&format!("fd={ro},set={set},opaque=moat-vol-{i}-ro"));
            push("-drive");
            push(&format!(
                "id=vol{i},file=/dev/fdset/{set},format=raw,if=none,aio=threads{}",
                if *read_only { ",readonly=on" } else { "" }
            ));
            push("-device");
            push(&format!(
                "virtio-blk-device,drive=vol{i},serial=moat-vol-{i}"
            ));
        }
        if shared_ram {
            // virtiofsd's libvhost-user serves modern (virtio 1.0) devices
            // only; microvm's virtio-mmio transports are legacy unless told.
            push("-global");
            push("virtio-mmio.force-legacy=false");
            push("-object");
            push(&format!(
                "memory-backend-memfd,id=moatmem,size={}M,share=on",
                spec.memory_mib
            ));
        }
        for (i, (tag, _)) in spec.host_dirs.iter().enumerate() {
            push("-chardev");
            push(&format!("socket,id=vfs{i},fd={}", FD_HOST_DIRS + i as i32));
            push("-device");
            push(&format!("vhost-user-fs-device,chardev=vfs{i},tag={tag}"));
        }
        push("-device");
        push("virtio-serial-device,max_ports=2");
        push("-chardev");
        push(&format!("socket,id=moat,fd={FD_CONTROL}"));
        push("-device");
        push("virtserialport,chardev=moat,name=moat.0");
        if let Some(n) = &spec.net {
            a.extend(net_args(n));
        }
        if let Some(t) = &spec.template {
            // Guest RAM in the template's memfd, reopened through the
            // VMM's own /proc: shared while the template boots, private
            // (copy-on-write) in a clone. QEMU 7.2 opens it read-write in
            // both cases; the memfd's seals refuse every write to it.
            let share = match t {
                TemplateVm::Build { .. } => "on",
                TemplateVm::Restore { .. } => "off",
            };
            a.extend([
                "-object".into(),
                format!(
                    "memory-backend-file,id=moatmem,size={}M,mem-path=/proc/self/fd/{FD_MEMORY},share={share}",
                    spec.memory_mib
                ),
                "-chardev".into(),
                format!("socket,id=qmp,fd={FD_QMP}"),
                "-mon".into(),
                "chardev=qmp,mode=control".into(),
            ]);
            if matches!(t, TemplateVm::Restore { .. }) {
                a.extend(["-incoming".into(), "defer".into()]);
            }
        }
        a
    }
}

/// The descriptor numbers (read-write, read-only) of volume `i` in the VMM.
fn volume_fds(i: usize) -> (i32, i32) {
    let rw = FD_VOLUMES + 2 * i as i32;
    (rw, rw + 1)
}

/// The virtio-net device and its backend.
fn net_args(n: &NetDevice) -> Vec<String> {
    let netdev = match n {
        NetDevice::Tap { .. } => format!("tap,id=net0,fd={FD_NET}"),
        NetDevice::User { forwards, .. } => {
            // Addresses fixed here and in net::egress (the guest's config).
            let mut s =
                String::from("user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,ipv6=off");
            for f in forwards {
                s.push_str(&format!(
                    ",hostfwd={}::{}-:{}",
                    f.protocol, f.host_port, f.guest_port
                ));
            }
            s
        }
    };
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={}", n.mac()),
    ]
}

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu-microvm"
    }

    fn available(&self) -> bool {
        self.program.is_file()
    }

    fn guest_cmdline(&self, accel: Accel) -> String {
        let mut c = String::from("console=ttyS0 quiet panic=-1 reboot=t");
        if accel == Accel::Tcg {
            // Without a known TSC frequency, calibration under emulation can
            // hang the boot; the crypto self-tests cost ~190 ms under TCG.
            if let Some(khz) = host_tsc_khz() {
                c.push_str(&format!(" tsc_early_khz={khz}"));
            }
            c.push_str(" cryptomgr.notests");
        }
        c
    }

    fn command(&self, spec: VmSpec) -> Result<VmmCommand, HypervisorError> {
        if !self.available() {
            return Err(HypervisorError::NotInstalled {
                program: self.program.clone(),
            });
        }
        let args = Qemu::args(&spec);
        let mut fds: Vec<(OwnedFd, i32)> = vec![
            (OwnedFd::from(spec.kernel), FD_KERNEL),
            (OwnedFd::from(spec.initramfs), FD_INITRD),
            (spec.control, FD_CONTROL),
        ];
        if let Some(d) = spec.root_disk {
            if spec.root_writable {
                use std::os::fd::AsRawFd;
                let ro = std::fs::File::open(format!("/proc/self/fd/{}", d.as_raw_fd()))
                    .map_err(HypervisorError::Dup)?;
                fds.push((OwnedFd::from(ro), FD_DISK_RO));
            }
            fds.push((OwnedFd::from(d), FD_DISK));
        }
        for (i, (f, _)) in spec.volumes.into_iter().enumerate() {
            use std::os::fd::AsRawFd;
            let (rw, ro) = volume_fds(i);
            let ro_file = std::fs::File::open(format!("/proc/self/fd/{}", f.as_raw_fd()))
                .map_err(HypervisorError::Dup)?;
            fds.push((OwnedFd::from(ro_file), ro));
            fds.push((OwnedFd::from(f), rw));
        }
        for (i, (_, fd)) in spec.host_dirs.into_iter().enumerate() {
            fds.push((fd, FD_HOST_DIRS + i as i32));
        }
        if let Some(NetDevice::Tap { fd, .. }) = spec.net {
            fds.push((fd, FD_NET));
        }
        match spec.template {
            Some(TemplateVm::Build { qmp, memory }) => {
                fds.push((qmp, FD_QMP));
                fds.push((memory, FD_MEMORY));
            }
            Some(TemplateVm::Restore { qmp, state, memory }) => {
                fds.push((qmp, FD_QMP));
                fds.push((OwnedFd::from(state), FD_MIGRATION));
                fds.push((memory, FD_MEMORY));
            }
            None => {}
        }
        let overhead_mib = match spec.accel {
            Accel::Tcg => TCG_TB_SIZE_MIB * 2 + 128,
            Accel::Kvm => 128,
        };
        Ok(VmmCommand {
            program: self.program.clone(),
            args,
            fds,
            overhead_mib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(disk: bool, accel: Accel) -> VmSpec {
        let f = || std::fs::File::open("/dev/null").unwrap();
        let (a, _b) = crate::sys::socketpair().unwrap();
        VmSpec {
            kernel: f(),
            initramfs: f(),
            cmdline: "quiet".into(),
            root_disk: disk.then(f),
            root_writable: false,
            volumes: Vec::new(),
            host_dirs: Vec::new(),
            control: a,
            vcpus: 1,
            memory_mib: 128,
            accel,
            net: None,
            template: None,
        }
    }

    #[test]
    fn only_the_needed_devices() {
        let a = Qemu::args(&spec(true, Accel::Tcg)).join(" ");
        assert!(a.contains("-nodefaults -no-user-config"), "{a}");
        assert!(
            a.contains(
                "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ),
            "{a}"
        );
        assert!(a.contains("-accel tcg,tb-size=32"), "{a}");
        assert!(a.contains("readonly=on"), "{a}");
        assert_eq!(a.matches("-device ").count(), 3, "{a}");
        assert!(
            !a.contains("netdev") && !a.contains("9p") && !a.contains("virtiofs"),
            "{a}"
        );
        let k = Qemu::args(&spec(false, Accel::Kvm)).join(" ");
        assert!(k.contains("-accel kvm") && !k.contains("-drive"), "{k}");
    }

    #[test]
    fn volumes_are_disks_with_serials() {
        let mut s = spec(true, Accel::Tcg);
        let f = || std::fs::File::open("/dev/null").unwrap();
        s.volumes = vec![(f(), false), (f(), true)];
        let a = Qemu::args(&s).join(" ");
        assert!(
            a.contains("-add-fd fd=16,set=2,opaque=moat-vol-0 -add-fd fd=17,set=2"),
            "{a}"
        );
        assert!(a.contains("id=vol0,file=/dev/fdset/2,format=raw,if=none,aio=threads -device virtio-blk-device,drive=vol0,serial=moat-vol-0"), "{a}");
        assert!(
            a.contains("id=vol1,file=/dev/fdset/3,format=raw,if=none,aio=threads,readonly=on"),
            "{a}"
        );
        if !Qemu::default().available() {
            return;
        }
        let c = Qemu::default().command(s).unwrap();
        let nums: Vec<i32> = c.fds.iter().map(|(_, n)| *n).collect();
        assert!(
            nums.contains(&16) && nums.contains(&17) && nums.contains(&19),
            "{nums:?}"
        );
    }

    #[test]
    fn host_directories_are_vhost_user_fs_devices_on_shared_ram() {
        let mut s = spec(true, Accel::Tcg);
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        s.host_dirs = vec![
            (crate::virtiofs::tag(0), fd()),
            (crate::virtiofs::tag(1), fd()),
        ];
        let a = Qemu::args(&s).join(" ");
        assert!(a.contains("acpi=on,memory-backend=moatmem "), "{a}");
        assert!(
            a.contains("-global virtio-mmio.force-legacy=false -object memory-backend-memfd,id=moatmem,size=128M,share=on -chardev socket,id=vfs0,fd=128 -device vhost-user-fs-device,chardev=vfs0,tag=moat-dir-0 -chardev socket,id=vfs1,fd=129 -device vhost-user-fs-device,chardev=vfs1,tag=moat-dir-1 "),
            "{a}"
        );
        let plain = Qemu::args(&spec(true, Accel::Tcg)).join(" ");
        assert!(
            !plain.contains("memfd") && !plain.contains("vhost-user"),
            "{plain}"
        );
    }

    #[test]
    fn user_netdev_forwards_and_mac() {
        let mut s = spec(true, Accel::Tcg);
        s.net = Some(NetDevice::User {
            mac: "52:54:00:12:34:56".into(),
            forwards: vec![crate::net::Forward {
                protocol: "tcp".into(),
                host_port: 80,
                guest_port: 80,
            }],
        });
        let a = Qemu::args(&s).join(" ");
        assert!(
            a.ends_with(
                "-netdev user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,ipv6=off,hostfwd=tcp::80-:80 -device virtio-net-device,netdev=net0,mac=52:54:00:12:34:56"
            ),
            "{a}"
        );
    }

    #[test]
    fn a_template_vm_gets_its_memory_and_a_monitor() {
        let mut s = spec(true, Accel::Tcg);
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        s.template = Some(TemplateVm::Build {
            qmp: fd(),
            memory: fd(),
        });
        let a = Qemu::args(&s).join(" ");
        assert!(a.contains("acpi=on,memory-backend=moatmem "), "{a}");
        assert!(
            a.ends_with("-object memory-backend-file,id=moatmem,size=128M,mem-path=/proc/self/fd/11,share=on -chardev socket,id=qmp,fd=9 -mon chardev=qmp,mode=control"),
            "{a}"
        );
        s.template = Some(TemplateVm::Restore {
            qmp: fd(),
            state: std::fs::File::open("/dev/null").unwrap(),
            memory: fd(),
        });
        let a = Qemu::args(&s).join(" ");
        assert!(a.contains(",share=off -chardev"), "{a}");
        assert!(a.ends_with("-incoming defer"), "{a}");
        let plain = Qemu::args(&spec(true, Accel::Tcg)).join(" ");
        assert!(
            !plain.contains("moatmem") && !plain.contains("-mon"),
            "{plain}"
        );
    }

    #[test]
    fn tcg_cmdline_carries_tsc_and_notests() {
        let q = Qemu::default();
        let c = q.guest_cmdline(Accel::Tcg);
        assert!(c.contains("cryptomgr.notests"));
        assert!(c.contains("tsc_early_khz="), "{c}");
        assert!(!q.guest_cmdline(Accel::Kvm).contains("tsc_early_khz"));
    }
}
