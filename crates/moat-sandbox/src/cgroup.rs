//! Cgroup limits for memory, pids and cpu, on cgroup v1 (controllers
//! mounted one per hierarchy, as on hybrid hosts) and cgroup v2. Each
//! container gets `<hierarchy>/moat/<id>` in every hierarchy that carries
//! one of the three controllers; a controller is taken from v2 when the
//! unified hierarchy offers it, else from its v1 hierarchy.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_policy::plan::CgroupLimits;

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read the cgroup mounts from /proc/self/mountinfo")]
    ReadMounts(#[source] io::Error),
    #[error("the policy sets a {controller} limit but no cgroup hierarchy (v1 or v2) offers the {controller} controller; enable it (mount it on v1, or add it to cgroup.subtree_control on v2) or remove the limit")]
    ControllerMissing { controller: &'static str },
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The cgroups of one container.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    /// `(version, directory)` of each created cgroup.
    dirs: Vec<(Version, PathBuf)>,
}

const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Where each controller lives: `(controller, version, hierarchy mount)`.
fn discover() -> Result<Vec<(&'static str, Version, PathBuf)>, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::ReadMounts)?;
    let mut v2: Option<PathBuf> = None;
    let mut v1: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for line in info.lines() {
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
    let v2_controllers: Vec<String> = v2
        .as_ref()
        .and_then(|p| fs::read_to_string(p.join("cgroup.controllers")).ok())
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for c in CONTROLLERS {
        if let Some(p) = v2
            .as_ref()
            .filter(|_| v2_controllers.iter().any(|x| x == c))
        {
            out.push((c, Version::V2, p.clone()));
        } else if let Some((p, _)) = v1.iter().find(|(_, o)| o.iter().any(|x| x == c)) {
            out.push((c, Version::V1, p.clone()));
        }
    }
    Ok(out)
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

impl Cgroups {
    /// Creates the container's cgroups and writes the limits.
    pub fn create(id: &str, limits: &CgroupLimits) -> Result<Self, CgroupError> {
        let found = discover()?;
        for (name, wanted) in [
            ("memory", limits.memory_bytes.is_some()),
            ("pids", limits.pids.is_some()),
            ("cpu", limits.cpu_millis.is_some()),
        ] {
            if wanted && !found.iter().any(|(c, _, _)| *c == name) {
                return Err(CgroupError::ControllerMissing { controller: name });
            }
        }
        let mut cg = Cgroups::default();
        for (controller, version, mount) in &found {
            let dir = mount.join("moat").join(id);
            if !cg.dirs.iter().any(|(_, d)| d == &dir) {
                if *version == Version::V2 {
                    enable_v2(mount, &found)?;
                }
                fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
                    path: dir.clone(),
                    source,
                })?;
                cg.dirs.push((*version, dir.clone()));
            }
            let r = cg.limit(controller, *version, &dir, limits);
            if r.is_err() {
                cg.remove();
                return r.map(|_| cg);
            }
        }
        Ok(cg)
    }

    fn limit(
        &self,
        controller: &str,
        version: Version,
        dir: &Path,
        limits: &CgroupLimits,
    ) -> Result<(), CgroupError> {
        match (controller, version) {
            ("memory", Version::V1) => {
                if let Some(m) = limits.memory_bytes {
                    write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                }
            }
            ("memory", Version::V2) => {
                if let Some(m) = limits.memory_bytes {
                    write(&dir.join("memory.max"), &m.to_string())?;
                    write(&dir.join("memory.swap.max"), "0").ok();
                }
            }
            ("pids", _) => {
                if let Some(p) = limits.pids {
                    write(&dir.join("pids.max"), &p.to_string())?;
                }
            }
            ("cpu", Version::V1) => {
                if let Some(c) = limits.cpu_millis {
                    write(&dir.join("cpu.cfs_period_us"), "100000")?;
                    write(&dir.join("cpu.cfs_quota_us"), &(c * 100).to_string())?;
                }
            }
            ("cpu", Version::V2) => {
                if let Some(c) = limits.cpu_millis {
                    write(&dir.join("cpu.max"), &format!("{} 100000", c * 100))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Moves `pid` into every cgroup of the container.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The cgroup directories (recorded in the state file for cleanup).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// Removes the cgroups (best effort; see [`remove_paths`]).
    pub fn remove(&self) {
        remove_paths(&self.paths());
    }
}

/// Enables the controllers in `<mount>/cgroup.subtree_control` and
/// `<mount>/moat/cgroup.subtree_control` (v2 "no internal processes": the
/// `moat` level never holds processes).
fn enable_v2(mount: &Path, found: &[(&str, Version, PathBuf)]) -> Result<(), CgroupError> {
    let moat = mount.join("moat");
    fs::create_dir_all(&moat).map_err(|source| CgroupError::Create {
        path: moat.clone(),
        source,
    })?;
    let enable: String = found
        .iter()
        .filter(|(_, v, m)| *v == Version::V2 && m == mount)
        .map(|(c, _, _)| format!("+{c} "))
        .collect();
    for dir in [mount.to_path_buf(), moat] {
        write(&dir.join("cgroup.subtree_control"), enable.trim())?;
    }
    Ok(())
}

/// Removes cgroup directories, killing whatever is still inside (leftovers
/// of a container whose supervisor was killed). Waits up to 5 s per cgroup
/// for the kernel to let go of exiting tasks.
pub fn remove_paths(paths: &[PathBuf]) {
    for dir in paths {
        if !dir.starts_with("/sys/fs/cgroup") || !dir.to_string_lossy().contains("/moat/") {
            continue; // never touch anything moat did not create
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(_) if Instant::now() < deadline => {
                    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                            let _ = sys::kill(pid, libc::SIGKILL);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => break,
            }
        }
    }
}
