//! TaskOOM: the kernel's OOM kills in a container's memory cgroup, as
//! containerd's runc shim reports them. cgroup v1: an eventfd registered
//! on `memory.oom_control` (`cgroup.event_control`); v2: inotify on
//! `memory.events`, where the `oom_kill` count decides (other counts
//! change the file too). The watch ends with the group.
//!
//! A micro-VM container's group holds its helper on the host: an OOM of
//! the guest's own processes happens in the guest and is not reported
//! (docs/kubernetes.md).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use moat_cgroup::{Hierarchies, Version};

/// The memory group of process `pid`: its version and its OOM counter
/// file (`memory.events` or `memory.oom_control`).
pub fn memory_group(pid: i32) -> Option<(Version, PathBuf)> {
    let hierarchies = Hierarchies::host().ok()?;
    let (version, mount) = hierarchies.find("memory")?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = group_path(&text, version)?;
    let dir = mount.join(path.trim_start_matches('/'));
    Some(match version {
        Version::V2 => (version, dir.join("memory.events")),
        Version::V1 => (version, dir.join("memory.oom_control")),
    })
}

/// The memory group's path in a `/proc/PID/cgroup` text.
fn group_path(text: &str, version: Version) -> Option<String> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let ours = match version {
            Version::V2 => id == "0" && controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
        };
        ours.then(|| path.to_string())
    })
}

fn kills(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()
        .map(|t| moat_cgroup::oom_kill_count(&t))
}

/// Watches the memory group of `pid` on a thread of its own, calling
/// `on_oom` for each OOM in it; `false` when the process has no memory
/// group to watch.
pub fn watch(pid: i32, on_oom: impl Fn() + Send + 'static) -> bool {
    let Some((version, file)) = memory_group(pid) else {
        return false;
    };
    let Some(mut seen) = kills(&file) else {
        return false;
    };
    let waiter = match version {
        Version::V1 => v1_eventfd(&file),
        Version::V2 => v2_inotify(&file),
    };
    let Ok(fd) = waiter else {
        log::warn!("watching {} for OOM kills failed", file.display());
        return false;
    };
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = [0u8; 4096];
        loop {
            match f.read(&mut buf) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                _ => return,
            }
            // The group is gone: so is the container.
            let Some(now) = kills(&file) else { return };
            // v1 signals when the group goes under OOM, before the kill is
            // counted (and at its removal, when the file is gone); v2 marks
            // the file modified for every count, the kill's included.
            let oom = match version {
                Version::V1 => true,
                Version::V2 => now > seen,
            };
            seen = seen.max(now);
            if oom {
                on_oom();
            }
        }
    });
    true
}

/// v1: an eventfd the kernel signals on each OOM in the group (and once
/// at its removal).
fn v1_eventfd(oom_control: &Path) -> std::io::Result<OwnedFd> {
    let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
    let control = std::fs::File::open(oom_control)?;
    let dir = oom_control.parent().unwrap_or(Path::new("/"));
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
    )?;
    // The registration holds its own reference to the control file.
    drop(control);
    Ok(efd)
}

/// v2: inotify on `memory.events`, which the kernel marks modified when a
/// count changes (and ignored when the group is removed).
fn v2_inotify(events: &Path) -> std::io::Result<OwnedFd> {
    use rustix::fs::inotify;
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC)?;
    inotify::add_watch(fd.as_fd(), events, inotify::WatchFlags::MODIFY)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_group_is_found_in_either_hierarchy() {
        let text = "12:pids:/moat/a\n5:memory:/moat/sandbox-x\n0::/user.slice\n";
        assert_eq!(
            group_path(text, Version::V1).as_deref(),
            Some("/moat/sandbox-x")
        );
        assert_eq!(
            group_path(text, Version::V2).as_deref(),
            Some("/user.slice")
        );
        let text = "4:cpu,memory:/a/b\n";
        assert_eq!(group_path(text, Version::V1).as_deref(), Some("/a/b"));
        assert_eq!(group_path("0::/x\n", Version::V1), None);
    }
}
