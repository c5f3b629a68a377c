//! `egress`: the container's network namespace is made by the supervisor
//! (root on the host) before the container process exists, so that it is
//! owned by the initial user namespace and not by the container's: no
//! capability the policy can grant (CAP_NET_ADMIN, CAP_NET_RAW) counts
//! in it, and the nftables table moat installs there stays as installed
//! (DESIGN rule 11). The container is cloned into it (`setns` before
//! `clone`, no CLONE_NEWNET). See docs/network.md.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use moat_policy::plan::NetworkPlan;

use crate::{sys, SandboxConfig, SandboxError};

/// A running container's egress network; dropping it stops pasta and
/// unbinds the namespace.
pub(crate) struct Network {
    egress: moat_net::Egress,
    /// `network.dns: true`: a detached, read-only mount of the file the
    /// container gets as `/etc/resolv.conf` (the host's resolver).
    resolv: Option<OwnedFd>,
}

/// The supervisor back in its own network namespace when dropped.
pub(crate) struct Entered {
    ours: OwnedFd,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Cannot fail for a namespace we were in: we hold CAP_SYS_ADMIN.
        let _ = sys::setns(self.ours.as_fd(), libc::CLONE_NEWNET);
    }
}

fn prep(what: &str) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Prepare {
        what: what.to_string(),
        source,
    }
}

fn net_err(source: moat_net::NetError) -> SandboxError {
    SandboxError::Network {
        source: Box::new(source),
    }
}

/// Starts the egress network of `cfg` (nothing for `none` and
/// `loopback`, which the container makes itself): namespace, table,
/// pasta, jailed as the helper uid paired with the container's
/// user-namespace owner `owner` (unique among running containers). Bound
/// at `<run root>/netns/<id>`.
pub(crate) fn start(cfg: &SandboxConfig, owner: u32) -> Result<Option<Network>, SandboxError> {
    let NetworkPlan::Egress {
        rules,
        publish,
        dns,
    } = &cfg.plan.network
    else {
        return Ok(None);
    };
    // The resolver first: a grant the host cannot serve is refused before
    // anything is made.
    let resolver = if *dns {
        Some(
            moat_net::dns::host_resolver(
                Path::new(moat_net::dns::HOST_RESOLV_CONF),
                Path::new(moat_net::dns::RESOLVED_UPSTREAM),
            )
            .map_err(|e| net_err(e.into()))?,
        )
    } else {
        None
    };
    // The namespace's bind mount lives in a mount namespace of the
    // supervisor's own (host mounts still propagate in, none out): if the
    // supervisor is killed, pasta dies with it (parent-death signal) and
    // the mount goes with the last of them, never left on the host.
    // (The container's mount namespace is cloned from this one; it pivots
    // away from all of it.)
    sys::unshare(libc::CLONE_NEWNS).map_err(prep("a mount namespace for the network"))?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::DOWNSTREAM
            | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(|e| prep("making the supervisor's mounts private")(e.into()))?;
    // The bound file and pasta's log on a tmpfs of that namespace too:
    // nothing of them outlives the container on the host.
    let dir = cfg.run_root.join("netns");
    std::fs::create_dir_all(&dir).map_err(prep("the network namespace directory"))?;
    use rustix::mount::MountFlags;
    rustix::mount::mount(
        "moat-netns",
        &dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        // 0755: pasta's jail reads the directory (to notice the file's
        // removal); the mount is in this supervisor's namespace alone.
        Some(c"mode=755,size=1m"),
    )
    .map_err(|e| prep("a tmpfs for the network namespace")(e.into()))?;
    let path = dir.join(&cfg.id);
    let resolv = match &resolver {
        Some(r) => Some(resolv_conf(
            &dir.join(format!("{}.resolv.conf", cfg.id)),
            &r.conf,
        )?),
        None => None,
    };
    let egress = moat_net::Egress::start(&moat_net::EgressConfig {
        path,
        egress: rules,
        publish,
        dns: resolver.map(|r| r.address),
        routed: false,
        map_gateway: false,
        helper_uid: moat_net::helper_uid(0, owner.wrapping_sub(crate::idmap::OWNER_BASE)),
    })
    .map_err(net_err)?;
    Ok(Some(Network { egress, resolv }))
}

/// Writes the container's resolv.conf at `path` (on the supervisor's
/// private tmpfs) and returns a detached, read-only, nosuid, nodev,
/// noexec mount of it, for the container to attach over its
/// `/etc/resolv.conf`. Mode 0644: the container (its host root unmapped)
/// sees it owned by `nobody` and can read it, not change it.
fn resolv_conf(path: &Path, text: &str) -> Result<OwnedFd, SandboxError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let what = "the container's /etc/resolv.conf";
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(prep(what))?;
    f.write_all(text.as_bytes()).map_err(prep(what))?;
    drop(f);
    let p = path.to_str().ok_or_else(|| {
        prep(what)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "path is not UTF-8",
        ))
    })?;
    let mnt = sys::open_tree(sys::cwd(), p, sys::OPEN_TREE_CLONE).map_err(prep(what))?;
    sys::mount_setattr(
        mnt.as_fd(),
        sys::MOUNT_ATTR_RDONLY
            | sys::MOUNT_ATTR_NOSUID
            | sys::MOUNT_ATTR_NODEV
            | sys::MOUNT_ATTR_NOEXEC,
        0,
        false,
    )
    .map_err(prep(what))?;
    Ok(mnt)
}

impl Network {
    /// The detached mount of the container's `/etc/resolv.conf`, once.
    pub(crate) fn take_resolv(&mut self) -> Option<OwnedFd> {
        self.resolv.take()
    }

    /// Moves the calling thread into the container's namespace until the
    /// returned guard drops.
    pub(crate) fn enter(&self) -> Result<Entered, SandboxError> {
        let ours: OwnedFd = File::open("/proc/thread-self/ns/net")
            .map_err(prep("the supervisor's network namespace"))?
            .into();
        sys::setns(self.egress.netns().fd(), libc::CLONE_NEWNET)
            .map_err(prep("entering the container's network namespace"))?;
        Ok(Entered { ours })
    }
}
