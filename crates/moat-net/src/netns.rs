//! A network namespace made by the host side for one container: owned by
//! the caller's user namespace (the initial one when moat runs as root),
//! loopback up, bound to a file so that pasta can name it and quits when
//! the file goes.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot create a network namespace ({step})")]
    Create {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind the network namespace to {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot return to the caller's network namespace; this thread is now in another one")]
    Return(#[source] std::io::Error),
}

/// A network namespace bound at [`NetNs::path`]. Dropping it unmounts and
/// removes the file (the namespace lives on while a process or descriptor
/// holds it).
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
    /// The user namespace owning it, for [`NetNs::create_owned`].
    userns: Option<OwnedFd>,
}

impl NetNs {
    /// Creates a network namespace owned by the calling thread's user
    /// namespace, brings its loopback up, lets unprivileged processes in it
    /// bind ports below 1024 (`net.ipv4.ip_unprivileged_port_start = 0`,
    /// Docker's default too: the namespace is the container's alone) and
    /// binds it at `path` (its directory is created mode 0755 under the
    /// caller's private parents: pasta's jail reads it). The calling thread
    /// ends in its own namespace again. The caller must be root
    /// (CAP_SYS_ADMIN) in its user namespace.
    pub fn create(path: &Path) -> Result<NetNs, NetnsError> {
        let create = |step| move |source| NetnsError::Create { step, source };
        Self::make_dir(path)?;
        let ours: OwnedFd = File::open("/proc/thread-self/ns/net")
            .map_err(create("opening the caller's namespace"))?
            .into();
        sys::unshare_net().map_err(create("unshare(CLONE_NEWNET)"))?;
        let made = Self::set_up_current(path);
        sys::setns_net(ours.as_fd()).map_err(NetnsError::Return)?;
        made
    }

    /// Like [`create`](Self::create), but the namespace is owned by a new
    /// user namespace whose owner is the unprivileged host `uid` (mapped
    /// as its root, `0 uid 1`): a helper running as `uid` (pasta, jailed)
    /// can enter and configure it without any capability on the host,
    /// while a container in a user namespace of its own still holds none
    /// over it (the kernel grants capabilities in a namespace only to its
    /// own members, to an ancestor's, and to its owner uid from the
    /// parent). Nothing else may run as `uid`. The caller must be root.
    pub fn create_owned(path: &Path, uid: u32) -> Result<NetNs, NetnsError> {
        let create = |step| move |source| NetnsError::Create { step, source };
        Self::make_dir(path)?;
        let holder =
            sys::UsernsHolder::spawn(uid).map_err(create("forking the namespace holder"))?;
        holder.ready().map_err(create(
            "unshare(CLONE_NEWUSER | CLONE_NEWNET) as the helper's uid",
        ))?;
        let proc = PathBuf::from(format!("/proc/{}", holder.pid()));
        let map = format!("0 {uid} 1\n");
        std::fs::write(proc.join("uid_map"), &map).map_err(create("writing uid_map"))?;
        std::fs::write(proc.join("setgroups"), "deny").map_err(create("writing setgroups"))?;
        std::fs::write(proc.join("gid_map"), &map).map_err(create("writing gid_map"))?;
        let userns: OwnedFd = File::open(proc.join("ns/user"))
            .map_err(create("opening the helper's user namespace"))?
            .into();
        let netns: OwnedFd = File::open(proc.join("ns/net"))
            .map_err(create("opening the new namespace"))?
            .into();
        drop(holder);
        let ours: OwnedFd = File::open("/proc/thread-self/ns/net")
            .map_err(create("opening the caller's namespace"))?
            .into();
        sys::setns_net(netns.as_fd()).map_err(create("entering the new namespace"))?;
        let made = Self::set_up_current(path);
        sys::setns_net(ours.as_fd()).map_err(NetnsError::Return)?;
        let mut made = made?;
        made.userns = Some(userns);
        Ok(made)
    }

    /// The namespace's directory, mode 0755 (pasta's jail reads it to
    /// notice the file's removal; its parents keep it from other users).
    fn make_dir(path: &Path) -> Result<(), NetnsError> {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(dir) = path.parent() {
            let bind = |source| NetnsError::Bind {
                path: path.to_path_buf(),
                source,
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(bind)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(bind)?;
        }
        Ok(())
    }

    /// The part of [`create`](Self::create) that runs inside the new
    /// namespace.
    fn set_up_current(path: &Path) -> Result<NetNs, NetnsError> {
        let create = |step| move |source| NetnsError::Create { step, source };
        sys::loopback_up().map_err(create("bringing loopback up"))?;
        File::options()
            .write(true)
            .open("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .and_then(|mut f| f.write_all(b"0"))
            .map_err(create("setting ip_unprivileged_port_start"))?;
        let fd: OwnedFd = File::open("/proc/thread-self/ns/net")
            .map_err(create("opening the new namespace"))?
            .into();
        let bind = |source| NetnsError::Bind {
            path: path.to_path_buf(),
            source,
        };
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(bind)?;
        if let Err(e) = rustix::mount::mount_bind("/proc/thread-self/ns/net", path) {
            let _ = std::fs::remove_file(path);
            return Err(bind(e.into()));
        }
        Ok(NetNs {
            fd,
            path: path.to_path_buf(),
            userns: None,
        })
    }

    /// The namespace, for `setns` or [`crate::nft::apply`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The user namespace owning it ([`NetNs::create_owned`]).
    pub fn userns(&self) -> Option<BorrowedFd<'_>> {
        self.userns.as_ref().map(|f| f.as_fd())
    }

    /// Where the namespace is bound (what `pasta --netns` gets).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Unmounts and removes a namespace file left by a process that could not
/// clean up (killed); a missing file is not an error.
pub fn remove_bound(path: &Path) {
    let _ = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_file(path);
}

impl Drop for NetNs {
    fn drop(&mut self) {
        remove_bound(&self.path);
    }
}
