//! Host directories in a micro-VM: one virtiofsd per granted directory per
//! VM, a virtio-fs device (`vhost-user-fs-device`, tag `moat-dir-N`, N its
//! place among the plan's host directories) that the agent mounts.
//!
//! What moat does around the daemon (Debian's C virtiofsd, its own seccomp
//! filter and `-o sandbox=namespace`: new mount, pid and net namespaces,
//! `pivot_root` into the shared directory, capabilities dropped):
//!
//! - The granted path is opened from `/` without following any link
//!   (`openat2(RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`), the same rule
//!   as the sandbox, and its mount is cloned from that descriptor
//!   (`open_tree(OPEN_TREE_CLONE)`, not recursive: mounts below the
//!   directory are not shared), `nosuid,nodev`, and **read-only on the host
//!   side** when the grant is read-only (`MOUNT_ATTR_RDONLY`): a guest
//!   kernel that ignores its own `ro` mount still gets `EROFS` from the host.
//! - The daemon starts in its own mount namespace (private propagation)
//!   where that detached mount is attached at an empty directory of moat's
//!   run root; virtiofsd shares that and `pivot_root`s into it, so the
//!   directory is all it sees.
//! - It joins the VM's cgroups (the cleanup watcher kills it with QEMU),
//!   has a parent-death signal, and exits by itself when QEMU closes the
//!   vhost-user connection; the supervisor reaps it at teardown.
//! - `CAP_MKNOD` and `CAP_SETFCAP` are dropped from its set
//!   (`-o modcaps=-mknod:-setfcap`): a guest cannot make device nodes in a
//!   host directory; no xattrs, no locks passed to the host.
//! - QEMU (jailed, unprivileged, no view of moat's run root) never sees a
//!   path: it gets the connected end of the daemon's socket as a
//!   descriptor. Guest RAM is a shared memfd so the daemon can map it.
//!
//! The guest chooses nothing on the host: the tags and the directories
//! behind them are fixed here, before the VM boots.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use moat_image::fsat::{self, WalkError};

use crate::sys;

/// The virtio-fs tag of host directory `i` (the agent mounts it).
pub fn tag(i: usize) -> String {
    format!("moat-dir-{i}")
}

/// Tasks one daemon may add to the VM's cgroup (its outer process, PID 1
/// of its pid namespace, the vhost-user loop and two queue threads; no
/// thread pool).
pub const PIDS_PER_DAEMON: u64 = 8;

/// Host memory one daemon may add to the VM's cgroup, MiB (guest RAM it
/// maps is QEMU's, already counted).
pub const MEMORY_PER_DAEMON_MIB: u64 = 32;

/// The virtiofsd program (`MOAT_VIRTIOFSD`, else Debian's).
pub fn program() -> PathBuf {
    std::env::var_os("MOAT_VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/qemu/virtiofsd"))
}

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsError {
    #[error("host directory {source_dir} for {destination}: a component of the path is a symbolic link; moat never follows links in a volume's host path: name the real directory")]
    Symlink {
        source_dir: String,
        destination: String,
    },
    #[error("host directory {source_dir} for {destination}: not a directory (a volume's source is a directory)")]
    NotDirectory {
        source_dir: String,
        destination: String,
    },
    #[error("host directory {source_dir} for {destination}: {what}")]
    Io {
        source_dir: String,
        destination: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("host directory {source_dir} at {destination} needs virtiofsd ({}) to reach a micro-VM: install Debian's qemu-system-common (it ships /usr/lib/qemu/virtiofsd) or set MOAT_VIRTIOFSD; or use a named volume (`-v NAME:{destination}`) or --isolation sandbox", program.display())]
    NoDaemon {
        source_dir: String,
        destination: String,
        program: PathBuf,
    },
    #[error("preparing the virtiofsd of host directory {source_dir}: {what}")]
    Prepare {
        source_dir: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting virtiofsd ({}) for host directory {source_dir}", program.display())]
    Spawn {
        source_dir: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a daemon shares.
#[derive(Debug)]
enum Source {
    /// A granted directory's detached mount, with its attributes set,
    /// attached in the daemon's private mount namespace.
    Tree(OwnedFd),
    /// A pod's share ([`crate::pod`]): a shared mount moat made, served
    /// where it is, from a mount namespace that receives its later mounts
    /// (the pod's further containers' roots).
    PodShare(PathBuf),
}

/// A granted host directory, opened and cloned (see the module docs).
#[derive(Debug)]
pub struct HostDir {
    tree: Source,
    pub source: String,
    pub destination: String,
    pub read_only: bool,
}

/// Opens the authorised host directory `source` for `destination`.
pub fn open(source: &str, destination: &str, read_only: bool) -> Result<HostDir, VirtiofsError> {
    let program = program();
    if !program.is_file() {
        return Err(VirtiofsError::NoDaemon {
            source_dir: source.into(),
            destination: destination.into(),
            program,
        });
    }
    let dir = fsat::open_host_dir(source).map_err(|e| match e {
        WalkError::Symlink(_) => VirtiofsError::Symlink {
            source_dir: source.into(),
            destination: destination.into(),
        },
        WalkError::NotDir(_) => VirtiofsError::NotDirectory {
            source_dir: source.into(),
            destination: destination.into(),
        },
        WalkError::Missing(_) => VirtiofsError::Io {
            source_dir: source.into(),
            destination: destination.into(),
            what: "opening it",
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        },
        WalkError::Io { source: e, .. } | WalkError::Create { source: e, .. } => {
            VirtiofsError::Io {
                source_dir: source.into(),
                destination: destination.into(),
                what: "opening it",
                source: e,
            }
        }
    })?;
    let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if read_only {
        attrs |= sys::MOUNT_ATTR_RDONLY;
    }
    let tree = sys::clone_mount(dir.as_fd(), attrs).map_err(|e| VirtiofsError::Io {
        source_dir: source.into(),
        destination: destination.into(),
        what: "cloning its mount",
        source: e,
    })?;
    Ok(HostDir {
        tree: Source::Tree(tree),
        source: source.into(),
        destination: destination.into(),
        read_only,
    })
}

/// The pod share at `dir` (made by [`crate::pod::Share::make`]), for the
/// VM of a pod's first container; the guest sees it under [`POD_TAG`].
pub fn pod_share(dir: &Path) -> Result<HostDir, VirtiofsError> {
    let program = program();
    let source = dir.display().to_string();
    if !program.is_file() {
        return Err(VirtiofsError::NoDaemon {
            source_dir: source,
            destination: "(the pod's share)".into(),
            program,
        });
    }
    Ok(HostDir {
        tree: Source::PodShare(dir.to_path_buf()),
        source,
        destination: String::new(),
        read_only: true,
    })
}

/// The virtio-fs tag of a pod's share.
pub use moat_agent::proto::POD_TAG;

/// The daemons and the VMM's ends of their sockets (tag, descriptor).
pub type Prepared = (Vec<Daemon>, Vec<(String, OwnedFd)>);

/// One daemon, ready to start: its directory's mount, where it goes in
/// the daemon's namespace, and the listening vhost-user socket.
#[derive(Debug)]
pub struct Daemon {
    tree: Source,
    /// The guest's name for it.
    pub tag: String,
    mountpoint: PathBuf,
    listen: OwnedFd,
    pub source: String,
    pub read_only: bool,
}

/// Prepares the daemons of `dirs` under `jail_dir` (made here, mode 0700,
/// in moat's run root; the caller's cleanup removes it): the daemons and,
/// in the same order, the VMM's ends of their sockets (already connected).
pub fn prepare(dirs: Vec<HostDir>, jail_dir: &Path) -> Result<Prepared, VirtiofsError> {
    use std::os::unix::fs::DirBuilderExt;
    let mut daemons = Vec::new();
    let mut vmm_ends: Vec<(String, OwnedFd)> = Vec::new();
    if dirs.is_empty() {
        return Ok((daemons, vmm_ends));
    }
    for (i, d) in dirs.into_iter().enumerate() {
        let err = |what: String| {
            let source_dir = d.source.clone();
            move |source| VirtiofsError::Prepare {
                source_dir,
                what,
                source,
            }
        };
        if i == 0 {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(jail_dir)
                .map_err(err(format!("making {}", jail_dir.display())))?;
        }
        let (mountpoint, tag) = match &d.tree {
            Source::Tree(_) => {
                let m = jail_dir.join(format!("dir-{i}"));
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&m)
                    .map_err(err(format!("making {}", m.display())))?;
                (m, tag(i))
            }
            Source::PodShare(p) => (p.clone(), POD_TAG.to_string()),
        };
        // Bound through a descriptor of the jail directory: no limit on
        // the run root's path length (a socket path has 108 bytes).
        let dirfd = std::fs::File::open(jail_dir)
            .map_err(err(format!("opening {}", jail_dir.display())))?;
        let sock = format!("/proc/self/fd/{}/sock-{i}", dirfd.as_raw_fd());
        let listener = UnixListener::bind(&sock)
            .map_err(err(format!("binding its socket in {}", jail_dir.display())))?;
        // Queued until the daemon accepts it; nobody else can connect
        // (the directory is root's, and the name goes at once).
        let stream = UnixStream::connect(&sock).map_err(err("connecting to its socket".into()))?;
        let _ = std::fs::remove_file(&sock);
        drop(dirfd);
        vmm_ends.push((tag.clone(), OwnedFd::from(stream)));
        daemons.push(Daemon {
            tree: d.tree,
            tag,
            mountpoint,
            listen: OwnedFd::from(listener),
            source: d.source,
            read_only: d.read_only,
        });
    }
    Ok((daemons, vmm_ends))
}

/// virtiofsd's arguments for a daemon sharing `mountpoint` on fd 3.
pub fn args(mountpoint: &Path) -> Vec<String> {
    vec![
        "--fd=3".into(),
        "-f".into(),
        "-o".into(),
        format!("source={}", mountpoint.display()),
        "-o".into(),
        "sandbox=namespace".into(),
        "-o".into(),
        "cache=auto".into(),
        "-o".into(),
        "no_xattr".into(),
        "-o".into(),
        "no_posix_lock".into(),
        "-o".into(),
        "no_flock".into(),
        "-o".into(),
        "modcaps=-mknod:-setfcap".into(),
        "-o".into(),
        "log_level=err".into(),
        "--thread-pool-size=0".into(),
        // Leave RLIMIT_NOFILE as it is: raising it past the hard limit
        // needs CAP_SYS_RESOURCE, which moat may not have.
        "--rlimit-nofile=0".into(),
    ]
}

/// Starts `d` (see the module docs); returns its pid, a child of the
/// calling thread. `cgroup_procs`: the VM's open `cgroup.procs` files;
/// `stderr`: where its errors go (the VMM's console pipe).
pub fn spawn(
    d: Daemon,
    cgroup_procs: &[std::os::fd::RawFd],
    stderr: std::os::fd::BorrowedFd<'_>,
) -> Result<libc::pid_t, VirtiofsError> {
    let program = program();
    let spawn_err = |source| VirtiofsError::Spawn {
        source_dir: d.source.clone(),
        program: program.clone(),
        source,
    };
    let mountpoint = CString::new(d.mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| spawn_err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    let pre = sys::DaemonPreExec {
        cgroup_procs: cgroup_procs.to_vec(),
        tree: match &d.tree {
            Source::Tree(t) => Some(t.as_raw_fd()),
            Source::PodShare(_) => None,
        },
        mountpoint,
        listen: d.listen.as_raw_fd(),
    };
    let err_out = stderr.try_clone_to_owned().map_err(spawn_err)?;
    let mut cmd = Command::new(&program);
    cmd.args(args(&d.mountpoint))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err_out));
    let child = sys::spawn_daemon(&mut cmd, pre).map_err(spawn_err)?;
    // The child has its own copies of the mount and the socket now.
    drop(d);
    Ok(child.id() as libc::pid_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_arguments_are_jailed_and_minimal() {
        let a = args(Path::new("/run/moat/vfs-abc/dir-0")).join(" ");
        assert_eq!(
            a,
            "--fd=3 -f -o source=/run/moat/vfs-abc/dir-0 -o sandbox=namespace -o cache=auto -o no_xattr -o no_posix_lock -o no_flock -o modcaps=-mknod:-setfcap -o log_level=err --thread-pool-size=0 --rlimit-nofile=0"
        );
        assert_eq!(tag(1), "moat-dir-1");
    }
}
