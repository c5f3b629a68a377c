//! Namespaces and sysctls a bundle may ask for.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxNamespaceType;

pub(super) fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => 0x80,
    }
}

pub(super) fn ns_file(flag: libc::c_int) -> &'static str {
    match flag {
        libc::CLONE_NEWNS => "mnt",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWNET => "net",
        _ => "time",
    }
}

/// Namespaces a container may not share with the host: without them the
/// workload reaches host processes, mounts, IPC or the hostname.
pub(super) const REQUIRED: &[(libc::c_int, &str)] = &[
    (libc::CLONE_NEWPID, "--pid=host"),
    (libc::CLONE_NEWNS, "the host's mount namespace"),
    (libc::CLONE_NEWIPC, "--ipc=host"),
    (libc::CLONE_NEWUTS, "--uts=host"),
    (libc::CLONE_NEWNET, "--network=host"),
];

/// Whether the namespace at `path` is the host's: moat-oci's own (its
/// caller's) or PID 1's where that is readable.
pub(super) fn same_as_host(path: &Path, file: &str) -> Result<bool, std::io::Error> {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let theirs = ino(path)?;
    Ok(["self", "1"]
        .iter()
        .any(|who| ino(&PathBuf::from(format!("/proc/{who}/ns/{file}"))).ok() == Some(theirs)))
}

/// Sysctls a container may set: the namespaced ones (runc's rule).
pub(super) fn sysctl_allowed(key: &str, has_netns: bool, has_ipcns: bool, has_uts: bool) -> bool {
    let ipc = matches!(
        key,
        "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
            | "kernel.sem"
            | "kernel.shmall"
            | "kernel.shmmax"
            | "kernel.shmmni"
            | "kernel.shm_rmid_forced"
    ) || key.starts_with("fs.mqueue.");
    (ipc && has_ipcns)
        || (key.starts_with("net.") && has_netns)
        || (matches!(key, "kernel.hostname" | "kernel.domainname") && has_uts)
}
