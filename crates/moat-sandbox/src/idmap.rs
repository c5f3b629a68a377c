//! Which host uids/gids the container's ids map to. Container root becomes
//! an unprivileged host id; host root (0) is never inside the range.

use std::path::Path;

/// Default first host id when `/etc/subuid` has no entry for root: the
/// conventional first subordinate range of useradd(8).
pub const DEFAULT_BASE: u32 = 100_000;
/// Ids per container: 0..65535, like podman's default.
pub const DEFAULT_COUNT: u32 = 65_536;

/// A contiguous mapping of container ids `0..count` onto host ids
/// `host_uid..host_uid+count` (and the same for gids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub host_uid: u32,
    pub host_gid: u32,
    pub count: u32,
}

impl IdMap {
    /// The range from `/etc/subuid` and `/etc/subgid` for `root` (first
    /// entry), else `100000:65536`. A range that would contain host id 0 is
    /// rejected in favour of the default.
    pub fn for_root() -> Self {
        let uid = subordinate(Path::new("/etc/subuid"));
        let gid = subordinate(Path::new("/etc/subgid"));
        match (uid, gid) {
            (Some((u, uc)), Some((g, gc))) if u > 0 && g > 0 => Self {
                host_uid: u,
                host_gid: g,
                count: uc.min(gc).min(DEFAULT_COUNT),
            },
            _ => Self {
                host_uid: DEFAULT_BASE,
                host_gid: DEFAULT_BASE,
                count: DEFAULT_COUNT,
            },
        }
    }

    /// The `uid_map` line: `0 <host> <count>`.
    pub fn uid_map(&self) -> String {
        format!("0 {} {}\n", self.host_uid, self.count)
    }

    pub fn gid_map(&self) -> String {
        format!("0 {} {}\n", self.host_gid, self.count)
    }
}

/// First uid of the range whose members own containers' user namespaces:
/// above systemd's container range (0x00080000-0x6FFFFFFF) and the jailed
/// VMMs' uids (0x70000000 + n, moat-vm's `jail::UID_BASE`), below
/// its "foreign" range (0x7FFE0000), used by no account.
pub const OWNER_BASE: u32 = 0x7100_0000;
/// Running sandbox containers at most (one owner uid each).
pub const OWNER_COUNT: u32 = 65_536;

/// The owner uid for a new container's user namespace: the first of
/// `OWNER_BASE..OWNER_BASE+OWNER_COUNT` not in `in_use` (the owners of the
/// running containers). The kernel charges per-user counters of the
/// namespace's processes at the host level to this uid: every container
/// gets the budget of one ordinary user, and none of host root's. The
/// caller also passes the uids of host accounts ([`host_accounts`]): a
/// process running as the owner would hold every capability over the
/// namespace.
pub fn userns_owner(in_use: &[u32]) -> Option<u32> {
    let used: std::collections::HashSet<u32> = in_use.iter().copied().collect();
    (OWNER_BASE..OWNER_BASE + OWNER_COUNT).find(|u| !used.contains(u))
}

/// The uids of the accounts in a passwd file (none if it cannot be read).
pub fn host_accounts(passwd: &Path) -> Vec<u32> {
    std::fs::read_to_string(passwd)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect()
}

fn subordinate(path: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_subordinate(&text, "root")
}

/// First `user:start:count` line for `user` (or uid 0) with a usable range.
pub fn parse_subordinate(text: &str, user: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != user && who != "0" {
            return None;
        }
        let start: u32 = start.parse().ok()?;
        let count: u32 = count.parse().ok()?;
        (start > 0 && count > 0 && start.checked_add(count).is_some()).then_some((start, count))
    })
}

/// A read-only, nosuid, nodev clone of `rootfs` whose file ownership is
/// shown through `map` (an idmapped mount): files owned by host root in the
/// image appear owned by container root, as the image author meant, while
/// the kernel still sees the unprivileged host range. Fails (and the
/// caller falls back to a plain read-only bind) where the filesystem does
/// not support idmapped mounts.
pub(crate) fn idmapped_rootfs(rootfs: &Path, map: &IdMap) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;

    use crate::sys;

    let path = rootfs
        .to_str()
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mnt = sys::open_tree(sys::cwd(), path, sys::OPEN_TREE_CLONE)?;
    idmap_mount(
        mnt.as_fd(),
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        false,
        map,
    )?;
    Ok(mnt)
}

/// Makes the detached mount `mnt` (and its submounts if `recursive`) show
/// ownership through `map`, with attributes `set`: host id N on disk is
/// seen as container id N. The mapping comes from a short-lived process in
/// a new user namespace with the same maps.
pub(crate) fn idmap_mount(
    mnt: std::os::fd::BorrowedFd<'_>,
    set: u64,
    recursive: bool,
    map: &IdMap,
) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::fd::AsFd;

    use crate::sys;

    let (r, w) = std::io::pipe()?;
    let (pid, pidfd) = match sys::clone_child(libc::CLONE_NEWUSER)? {
        sys::Forked::Child => {
            drop(w);
            let mut r = r;
            let _ = r.read(&mut [0u8; 1]);
            sys::exit_now(0);
        }
        sys::Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop(r);
    let result = (|| {
        std::fs::write(format!("/proc/{pid}/uid_map"), map.uid_map())?;
        std::fs::write(format!("/proc/{pid}/gid_map"), map.gid_map())?;
        let userns = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        sys::mount_setattr_idmap(mnt, set, userns.as_fd(), recursive)
    })();
    drop(w);
    let _ = sys::wait_pidfd(pidfd.as_fd(), false);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subordinate_ranges() {
        let text = "alice:200000:65536\nroot:300000:70000\n";
        assert_eq!(parse_subordinate(text, "root"), Some((300000, 70000)));
        assert_eq!(parse_subordinate("root:0:65536\n", "root"), None);
        assert_eq!(parse_subordinate("bob:1:2\n", "root"), None);
    }

    #[test]
    fn owners_are_unique_per_running_container() {
        assert_eq!(userns_owner(&[]), Some(OWNER_BASE));
        assert_eq!(
            userns_owner(&[OWNER_BASE, OWNER_BASE + 2]),
            Some(OWNER_BASE + 1)
        );
        let all: Vec<u32> = (OWNER_BASE..OWNER_BASE + OWNER_COUNT).collect();
        assert_eq!(userns_owner(&all), None);
        let d = tempfile::tempdir().unwrap();
        let passwd = d.path().join("passwd");
        std::fs::write(
            &passwd,
            format!("root:x:0:0::/:/bin/sh\nodd:x:{OWNER_BASE}:1::/:/bin/sh\n"),
        )
        .unwrap();
        assert_eq!(host_accounts(&passwd), vec![0, OWNER_BASE]);
        assert_eq!(userns_owner(&host_accounts(&passwd)), Some(OWNER_BASE + 1));
    }

    #[test]
    fn maps_never_contain_host_root() {
        let m = IdMap::for_root();
        assert!(m.host_uid > 0 && m.host_gid > 0);
        assert_eq!(m.uid_map(), format!("0 {} {}\n", m.host_uid, m.count));
    }
}
