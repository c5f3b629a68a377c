//! The cgroup a caller names in `linux.cgroupsPath` (cgroupfs layout), on
//! cgroup v1 (each hierarchy) or v2, with the limits of a
//! [`CgroupRequest`].

use std::path::{Component, Path, PathBuf};

use moat_cgroup::Hierarchies;

use crate::bundle::CgroupRequest;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroupsPath {0:?} is a systemd slice path; moat-oci manages cgroupfs paths only: configure the caller with cgroup_manager = \"cgroupfs\" (podman) or SystemdCgroup = false (containerd)")]
    Systemd(String),
    #[error("linux.cgroupsPath {0:?} must not contain `..`")]
    Escape(String),
    #[error("linux.cgroupsPath {0:?} already holds processes of another container: give each container its own cgroup")]
    InUse(String),
    #[error("no cgroup hierarchy is mounted on this host")]
    NoHierarchy,
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The container's directories: (v1 hierarchy name, or "" for v2; dir).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Groups {
    pub dirs: Vec<(String, PathBuf)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path))
}

fn relative(path: &str) -> Result<PathBuf, CgroupError> {
    if path.contains(':') {
        return Err(CgroupError::Systemd(path.into()));
    }
    let p = Path::new(path.trim_start_matches('/'));
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(CgroupError::Escape(path.into()));
    }
    Ok(p.to_path_buf())
}

impl Groups {
    /// Creates the cgroup on this host's hierarchies and writes the limits.
    pub fn create(req: &CgroupRequest) -> Result<Groups, CgroupError> {
        let h = Hierarchies::host().map_err(|e| CgroupError::Io {
            path: "/proc/self/mountinfo".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Groups::create_in(&h, req)
    }

    /// [`Groups::create`] on the hierarchies `h`: v1 when it has any v1
    /// hierarchy (each one, hybrids' v2 mount left alone), else v2.
    pub fn create_in(h: &Hierarchies, req: &CgroupRequest) -> Result<Groups, CgroupError> {
        let rel = relative(&req.path)?;
        let mut dirs = Vec::new();
        if !h.v1().is_empty() {
            for (mnt, ctrls) in h.v1() {
                let name = mnt
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let dir = mnt.join(&rel);
                if ctrls.iter().any(|c| c == "cpuset") {
                    mkdir_cpuset(mnt, &rel)?;
                } else {
                    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                }
                dirs.push((name, dir));
            }
        } else if let Some(v2) = h.v2() {
            let mut cur = v2.to_path_buf();
            for c in rel.components() {
                let _ = std::fs::write(cur.join("cgroup.subtree_control"), "+memory +pids +cpu");
                cur = cur.join(c);
                if !cur.exists() {
                    std::fs::create_dir(&cur).map_err(io(&cur))?;
                }
            }
            dirs.push((String::new(), cur));
        } else {
            return Err(CgroupError::NoHierarchy);
        }
        let g = Groups { dirs };
        if !g.pids().is_empty() {
            // Someone else's processes: never share or later kill them.
            return Err(CgroupError::InUse(req.path.clone()));
        }
        if let Err(e) = g.apply(req) {
            g.remove();
            return Err(e);
        }
        Ok(g)
    }

    fn dir(&self, v1: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(n, _)| n.is_empty() || n.split(',').any(|c| c == v1))
            .map(|(_, d)| d.as_path())
    }

    fn is_v2(&self) -> bool {
        self.dirs.iter().any(|(n, _)| n.is_empty())
    }

    /// Writes the limits `req` sets (others are left as they are).
    pub fn apply(&self, req: &CgroupRequest) -> Result<(), CgroupError> {
        let v2 = self.is_v2();
        if let (Some(m), Some(d)) = (req.memory, self.dir("memory")) {
            if v2 {
                write(&d.join("memory.max"), &m.to_string())?;
            } else {
                write(&d.join("memory.limit_in_bytes"), &m.to_string())?;
                if let Some(s) = req.memory_swap.filter(|s| *s > 0) {
                    let f = d.join("memory.memsw.limit_in_bytes");
                    if f.exists() {
                        write(&f, &s.to_string())?;
                    }
                }
            }
        }
        if let (Some(p), Some(d)) = (req.pids, self.dir("pids")) {
            let v = if p > 0 { p.to_string() } else { "max".into() };
            write(&d.join("pids.max"), &v)?;
        }
        if let Some(d) = self.dir("cpu") {
            if v2 {
                if let Some(q) = req.cpu_quota.filter(|q| *q > 0) {
                    write(
                        &d.join("cpu.max"),
                        &format!("{q} {}", req.cpu_period.unwrap_or(100_000)),
                    )?;
                }
            } else {
                if let Some(p) = req.cpu_period.filter(|p| *p > 0) {
                    write(&d.join("cpu.cfs_period_us"), &p.to_string())?;
                }
                if let Some(q) = req.cpu_quota.filter(|q| *q != 0) {
                    write(&d.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
                if let Some(s) = req.cpu_shares.filter(|s| *s > 0) {
                    write(&d.join("cpu.shares"), &s.to_string())?;
                }
            }
        }
        if let (Some(cpus), Some(d)) = (&req.cpuset_cpus, self.dir("cpuset")) {
            if !cpus.is_empty() {
                write(&d.join("cpuset.cpus"), cpus)?;
            }
        }
        for (ctl, f1, f2, value, required) in &req.files {
            let path = if v2 {
                (!f2.is_empty())
                    .then(|| self.dir("").map(|d| d.join(f2)))
                    .flatten()
            } else {
                self.dirs
                    .iter()
                    .find(|(n, _)| n.split(',').any(|c| c == ctl))
                    .map(|(_, d)| d.join(f1))
            };
            match path {
                Some(p) if p.exists() || *required => {
                    if let Err(e) = write(&p, value) {
                        if *required {
                            return Err(e);
                        }
                    }
                }
                _ => {}
            }
        }
        if !v2 && !req.devices.is_empty() {
            if let Some(d) = self.dir("devices") {
                for (allow, rule) in &req.devices {
                    let f = if *allow {
                        "devices.allow"
                    } else {
                        "devices.deny"
                    };
                    write(&d.join(f), rule)?;
                }
            }
        }
        Ok(())
    }

    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for f in self.procs_files() {
            write(&f, &pid.to_string())?;
        }
        Ok(())
    }

    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Every pid in the container's cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let Some((_, d)) = self
            .dirs
            .iter()
            .find(|(n, _)| n == "pids" || n.is_empty())
            .or(self.dirs.first())
        else {
            return Vec::new();
        };
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The memory limit in bytes, `None` when unlimited or unknown.
    pub fn memory_limit(&self) -> Option<i64> {
        let file = if self.is_v2() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let v: i64 = std::fs::read_to_string(self.dir("memory")?.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // v1 says "unlimited" with the page-rounded i64::MAX.
        (v < i64::MAX & !0xfff).then_some(v)
    }

    /// `pids.max`, `None` when `max` or unknown.
    pub fn pids_limit(&self) -> Option<i64> {
        std::fs::read_to_string(self.dir("pids")?.join("pids.max"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        if self.is_v2() {
            let d = self.dir("").ok_or(CgroupError::NoHierarchy)?;
            return write(&d.join("cgroup.freeze"), if frozen { "1" } else { "0" });
        }
        let d = self.dir("freezer").ok_or(CgroupError::NoHierarchy)?;
        write(
            &d.join("freezer.state"),
            if frozen { "FROZEN" } else { "THAWED" },
        )?;
        // v1 freezing is asynchronous: wait until it settled.
        for _ in 0..200 {
            let s = std::fs::read_to_string(d.join("freezer.state")).unwrap_or_default();
            if s.trim() == if frozen { "FROZEN" } else { "THAWED" } {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    pub fn is_frozen(&self) -> bool {
        if self.is_v2() {
            return self.dir("").is_some_and(|d| {
                std::fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
            });
        }
        self.dir("freezer").is_some_and(|d| {
            std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
        })
    }

    /// SIGKILLs every member, frozen first so that none forks meanwhile;
    /// waits up to 5 s for the group to empty.
    pub fn kill_all(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || std::time::Instant::now() > deadline {
                let _ = self.set_frozen(false);
                return;
            }
            let _ = self.set_frozen(true);
            for p in pids {
                if let Some(p) = rustix::process::Pid::from_raw(p) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            let _ = self.set_frozen(false);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Kills whatever is left and removes the directories.
    pub fn remove(&self) {
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|(_, d)| d.clone()).collect();
        self.kill_all();
        for d in dirs {
            for _ in 0..100 {
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
    }
}

/// cpuset directories start empty on v1: each new level copies its
/// parent's cpus and mems, or nothing may join it.
fn mkdir_cpuset(mnt: &Path, rel: &Path) -> Result<(), CgroupError> {
    let mut cur = mnt.to_path_buf();
    for c in rel.components() {
        let parent = cur.clone();
        cur = cur.join(c);
        if !cur.exists() {
            std::fs::create_dir(&cur).map_err(io(&cur))?;
        }
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let mine = std::fs::read_to_string(cur.join(f)).unwrap_or_default();
            if mine.trim().is_empty() {
                let theirs = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                write(&cur.join(f), theirs.trim())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str) -> CgroupRequest {
        CgroupRequest {
            path: path.into(),
            memory: Some(64 << 20),
            pids: Some(20),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            files: vec![(
                "memory".into(),
                "memory.swappiness".into(),
                "memory.low".into(),
                "7".into(),
                false,
            )],
            ..CgroupRequest::default()
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// Pure v2 (what most users run): one directory under the unified
    /// root, controllers enabled on the way down, v2 file names.
    #[test]
    fn v2_paths_and_limits() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().to_path_buf();
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let h = Hierarchies::new(Some(v2.clone()), Vec::new());
        let g = Groups::create_in(&h, &req("/libpod_parent/libpod-abc")).unwrap();
        let d = v2.join("libpod_parent/libpod-abc");
        assert_eq!(g.dirs, vec![(String::new(), d.clone())]);
        assert_eq!(read(&d.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&d.join("pids.max")), "20");
        assert_eq!(read(&d.join("cpu.max")), "50000 100000");
        assert_eq!(
            read(&v2.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        // memory.low does not exist here and is not required: skipped.
        assert!(!d.join("memory.low").exists());
    }

    /// v1: each hierarchy, v1 file names, cpuset levels seeded from their
    /// parent (or nothing could join them).
    #[test]
    fn v1_paths_limits_and_cpuset() {
        let root = tempfile::tempdir().unwrap();
        let mk = |name: &str| {
            let p = root.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (mem, pids, cpu, cpuset) = (mk("memory"), mk("pids"), mk("cpu,cpuacct"), mk("cpuset"));
        std::fs::write(cpuset.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(cpuset.join("cpuset.mems"), "0\n").unwrap();
        std::fs::write(mem.join("memory.swappiness"), "").unwrap();
        let h = Hierarchies::new(
            None,
            vec![
                (mem.clone(), vec!["memory".into()]),
                (pids.clone(), vec!["pids".into()]),
                (cpu.clone(), vec!["cpu".into(), "cpuacct".into()]),
                (cpuset.clone(), vec!["cpuset".into()]),
            ],
        );
        // The memory directory must pre-exist for the test's swappiness
        // file; the others are made.
        std::fs::create_dir_all(mem.join("default/c1")).unwrap();
        std::fs::write(mem.join("default/c1/memory.swappiness"), "").unwrap();
        let g = Groups::create_in(&h, &req("/default/c1")).unwrap();
        assert_eq!(g.dirs.len(), 4);
        assert_eq!(
            read(&mem.join("default/c1/memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(&mem.join("default/c1/memory.swappiness")), "7");
        assert_eq!(read(&pids.join("default/c1/pids.max")), "20");
        assert_eq!(read(&cpu.join("default/c1/cpu.cfs_quota_us")), "50000");
        for level in ["default", "default/c1"] {
            assert_eq!(read(&cpuset.join(level).join("cpuset.cpus")), "0-1");
            assert_eq!(read(&cpuset.join(level).join("cpuset.mems")), "0");
        }
    }

    #[test]
    fn escaping_and_systemd_paths_are_refused() {
        let h = Hierarchies::new(None, Vec::new());
        assert!(matches!(
            Groups::create_in(&h, &req("/a/../../etc")),
            Err(CgroupError::Escape(_))
        ));
        assert!(matches!(
            Groups::create_in(&h, &req("system.slice:libpod:abc")),
            Err(CgroupError::Systemd(_))
        ));
        assert!(matches!(
            Groups::create_in(&h, &req("/ok")),
            Err(CgroupError::NoHierarchy)
        ));
    }
}
