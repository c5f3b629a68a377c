//! Named volumes in the guest: virtio-blk disks whose serial is
//! `moat-vol-N` (N: the volume's place among the plan's named volumes; the
//! kernel command line says how many with `moat.volumes=`). The agent opens
//! them while its devtmpfs still exists (before `lock_down`), and the
//! workload's process mounts each from that descriptor after `pivot_root`,
//! onto a target opened without following any symbolic link. The same ext4
//! image is mounted by the sandbox with an idmapped mount, so a file's
//! owner is the same id in both backends.
//!
//! Host directories are virtio-fs devices whose tags (`moat-dir-N`, N: the
//! directory's place among the plan's host directories) the host fixes;
//! each is mounted the same way onto a target opened without following
//! links. The guest names no host path: the host's daemon shares exactly
//! the granted directory.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{sys, Failure};

static DISKS: OnceLock<Vec<File>> = OnceLock::new();

/// How many volume disks the command line announces.
fn count(cmdline: &str) -> usize {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("moat.volumes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The block device (`vdX`) whose serial is `serial`.
fn find(serial: &str) -> Option<String> {
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let s = std::fs::read_to_string(e.path().join("serial")).ok()?;
            (s.trim() == serial).then_some(name)
        })
}

/// Opens the announced volume disks (waiting for them to appear).
pub fn open_disks(cmdline: &str) -> Result<(), Failure> {
    let mut disks = Vec::new();
    for i in 0..count(cmdline) {
        let serial = format!("moat-vol-{i}");
        let start = Instant::now();
        let name = loop {
            if let Some(n) = find(&serial) {
                let dev = format!("/dev/{n}");
                if std::path::Path::new(&dev).exists() {
                    break n;
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(Failure::setup(format!(
                    "the disk of named volume {i} (serial {serial}) did not appear"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let f = File::options()
            .read(true)
            .write(true)
            .open(format!("/dev/{name}"))
            .or_else(|_| File::open(format!("/dev/{name}")))
            .map_err(|e| Failure::setup(format!("opening /dev/{name} ({serial}): {e}")))?;
        disks.push(f);
    }
    let _ = DISKS.set(disks);
    Ok(())
}

/// The mount target `destination` (in the container's root), opened
/// without following any symbolic link.
fn target(destination: &str) -> Result<std::os::fd::OwnedFd, Failure> {
    sys::open_dir_no_symlinks(destination).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => Failure::setup(format!(
            "mount target {destination}: a component is a symlink in the image; moat refuses to mount a volume through it"
        )),
        Some(libc::ENOENT) => Failure::setup(format!(
            "mount target {destination}: the image has no directory {destination}; moat mounts there but never writes to the image"
        )),
        _ => Failure::setup(format!("mount target {destination}: {e}")),
    })
}

/// Mounts host directory `index` (virtio-fs tag `moat-dir-N`, fixed by the
/// host) at `destination`; read-only here when the grant is (the host's
/// daemon shares a read-only mount then, whatever the guest does).
pub fn mount_host_dir(index: usize, destination: &str, read_only: bool) -> Result<(), Failure> {
    let target = target(destination)?;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    let tag = format!("moat-dir-{index}");
    sys::mount(
        &tag,
        &format!("/proc/self/fd/{}", target.as_raw_fd()),
        "virtiofs",
        flags,
        "",
    )
    .map_err(|e| {
        crate::explain_io(
            format!("mounting host directory {index} (virtio-fs tag {tag}) on {destination}"),
            &e,
        )
    })
}

/// Mounts named volume `index` at `destination` (in the container's root).
pub fn mount(index: usize, name: &str, destination: &str, read_only: bool) -> Result<(), Failure> {
    let disk = DISKS.get().and_then(|d| d.get(index)).ok_or_else(|| {
        Failure::setup(format!(
            "named volume {name:?}: the host attached no disk for it"
        ))
    })?;
    let target = target(destination)?;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    sys::mount(
        &format!("/proc/self/fd/{}", disk.as_raw_fd()),
        &format!("/proc/self/fd/{}", target.as_raw_fd()),
        "ext4",
        flags,
        "errors=remount-ro",
    )
    .map_err(|e| {
        crate::explain_io(
            format!("mounting named volume {name:?} on {destination}"),
            &e,
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_announced_volumes() {
        assert_eq!(super::count("quiet moat.volumes=2 panic=-1"), 2);
        assert_eq!(super::count("quiet"), 0);
    }
}
