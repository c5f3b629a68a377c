//! Where the cgroup hierarchies are and which controller each carries:
//! read from `/proc/self/mountinfo` on a real host, or given as roots (a
//! test points them at a directory tree with the kernel's file names).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::CgroupError;

/// The two cgroup interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller (or group of controllers).
    V1,
    /// The unified hierarchy.
    V2,
}

/// The cgroup hierarchies moat works in: the unified (v2) one if mounted,
/// with the controllers it offers, and each v1 hierarchy with its
/// controllers. A controller is taken from v2 when the unified hierarchy
/// offers it, else from the v1 hierarchy that carries it: a hybrid host
/// (controllers on v1, an empty unified hierarchy) and a pure v2 host
/// both work, each controller decided on its own.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    v2: Option<PathBuf>,
    v2_controllers: Vec<String>,
    v1: Vec<(PathBuf, Vec<String>)>,
    pub(crate) patience: Duration,
}

/// How long [`crate::Cgroup`] waits for the kernel (a freeze to settle,
/// processes to exit before a group can be removed).
const PATIENCE: Duration = Duration::from_secs(5);

impl Hierarchies {
    /// The hierarchies mounted in this mount namespace.
    pub fn host() -> Result<Hierarchies, CgroupError> {
        let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::ReadMounts)?;
        Ok(Hierarchies::from_mountinfo(&info))
    }

    /// The hierarchies named by a `mountinfo` text (the unified
    /// hierarchy's controllers are read from its `cgroup.controllers`).
    pub fn from_mountinfo(mountinfo: &str) -> Hierarchies {
        let mut v2 = None;
        let mut v1 = Vec::new();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mountpoint = pre.split(' ').nth(4).unwrap_or_default();
            let mut post = post.split(' ');
            let fstype = post.next().unwrap_or_default();
            let _source = post.next();
            let opts = post.next().unwrap_or_default();
            let mp = PathBuf::from(mountpoint.replace("\\040", " "));
            match fstype {
                "cgroup2" if v2.is_none() => v2 = Some(mp),
                "cgroup" => v1.push((mp, opts.split(',').map(str::to_string).collect())),
                _ => {}
            }
        }
        Hierarchies::new(v2, v1)
    }

    /// Hierarchies at the given roots: `v2` the unified hierarchy (its
    /// controllers read from `<v2>/cgroup.controllers`), `v1` each v1
    /// hierarchy with the controllers mounted there.
    pub fn new(v2: Option<PathBuf>, v1: Vec<(PathBuf, Vec<String>)>) -> Hierarchies {
        let v2_controllers = v2
            .as_ref()
            .and_then(|p| fs::read_to_string(p.join("cgroup.controllers")).ok())
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        Hierarchies {
            v2,
            v2_controllers,
            v1,
            patience: PATIENCE,
        }
    }

    /// How long to wait for the kernel (default 5 s).
    pub fn with_patience(mut self, patience: Duration) -> Hierarchies {
        self.patience = patience;
        self
    }

    /// The unified hierarchy's mount, if any.
    pub fn v2(&self) -> Option<&Path> {
        self.v2.as_deref()
    }

    /// The v1 hierarchies: `(mount, controllers)`.
    pub fn v1(&self) -> &[(PathBuf, Vec<String>)] {
        &self.v1
    }

    /// Where `controller` lives: the unified hierarchy when it offers it,
    /// else the v1 hierarchy that carries it.
    pub fn find(&self, controller: &str) -> Option<(Version, &Path)> {
        if let Some(p) = self
            .v2
            .as_deref()
            .filter(|_| self.v2_controllers.iter().any(|c| c == controller))
        {
            return Some((Version::V2, p));
        }
        self.v1
            .iter()
            .find(|(_, o)| o.iter().any(|x| x == controller))
            .map(|(p, _)| (Version::V1, p.as_path()))
    }

    /// Every hierarchy's mount, the unified one first.
    pub fn mounts(&self) -> impl Iterator<Item = (Version, &Path)> {
        self.v2
            .iter()
            .map(|p| (Version::V2, p.as_path()))
            .chain(self.v1.iter().map(|(p, _)| (Version::V1, p.as_path())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
38 35 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
39 35 0:34 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
40 35 0:35 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
41 35 0:36 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,freezer
";

    #[test]
    fn hybrid_and_unified_mounts_are_told_apart() {
        let mut h = Hierarchies::from_mountinfo(HYBRID);
        h.v2_controllers.clear(); // the test host's own unified hierarchy is not read here
        assert_eq!(h.v2(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(
            h.find("memory"),
            Some((Version::V1, Path::new("/sys/fs/cgroup/memory")))
        );
        assert_eq!(
            h.find("cpuacct"),
            Some((Version::V1, Path::new("/sys/fs/cgroup/cpu,cpuacct")))
        );
        assert_eq!(
            h.find("freezer"),
            Some((Version::V1, Path::new("/sys/fs/cgroup/freezer")))
        );
        assert_eq!(h.find("hugetlb"), None);
        h.v2_controllers = vec!["memory".into(), "pids".into()];
        assert_eq!(
            h.find("memory"),
            Some((Version::V2, Path::new("/sys/fs/cgroup/unified")))
        );
        assert_eq!(
            h.find("pids"),
            Some((Version::V2, Path::new("/sys/fs/cgroup/unified")))
        );
    }

    #[test]
    fn unified_controllers_come_from_the_root() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let h = Hierarchies::new(Some(dir.path().to_path_buf()), Vec::new());
        assert_eq!(h.find("cpu"), Some((Version::V2, dir.path())));
        assert_eq!(h.find("freezer"), None);
    }
}
