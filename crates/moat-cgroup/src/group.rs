//! One container's cgroups: creation with limits, membership, figures.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_policy::plan::CgroupLimits;

use crate::hierarchy::{Hierarchies, Version};
use crate::{CgroupError, Name};

/// The CFS period moat uses (100 ms); a quota is never below 1 ms, the
/// kernel's minimum.
const CPU_PERIOD_US: u64 = 100_000;
const CPU_MIN_QUOTA_US: u64 = 1_000;

/// A container's figures, as `moat stats` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Memory in use: v2 `memory.current`, v1 `memory.usage_in_bytes`.
    pub memory_bytes: Option<u64>,
    /// CPU time: `usage_usec` of v2 `cpu.stat` (a core file of the unified
    /// hierarchy, there even on hybrid hosts), else v1 `cpuacct.usage`.
    pub cpu_usec: Option<u64>,
    /// Processes (tasks): `pids.current`.
    pub pids: Option<u64>,
}

/// How to kill everything in the group at once, for a killer that is not
/// this process (the VM's cleanup watcher, a shell script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillMethod {
    /// Write `1` to `<dir>/cgroup.kill` (v2, Linux 5.14).
    CgroupKill(PathBuf),
    /// Freeze `<dir>` (v2 `cgroup.freeze`, v1 `freezer.state`), SIGKILL its
    /// members (frozen, they cannot fork), thaw it.
    Freeze(Version, PathBuf),
    /// SIGKILL the pids in `<dir>/cgroup.procs` (racy; no better way).
    Procs(PathBuf),
}

/// The cgroups of one container: `<hierarchy>/moat/<name>` in each
/// hierarchy it uses, each with the role it plays.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub(crate) name: Name,
    /// Every directory, in creation order.
    pub(crate) dirs: Vec<(Version, PathBuf)>,
    memory: Option<(Version, PathBuf)>,
    pids: Option<PathBuf>,
    cpu: Option<(Version, PathBuf)>,
    /// v1 `cpuacct`, for CPU time where there is no unified hierarchy.
    cpuacct: Option<PathBuf>,
    /// The unified hierarchy's group: `cgroup.kill`, `cgroup.freeze`,
    /// `cpu.stat`, whatever its controllers (none on a hybrid host).
    pub(crate) unified: Option<PathBuf>,
    /// The v1 freezer's group, where the unified one cannot freeze.
    pub(crate) v1_freezer: Option<PathBuf>,
    pub(crate) patience: Duration,
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of the `key N` line of a flat-keyed cgroup file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
}

/// The `oom_kill N` count of a v2 `memory.events` or a v1
/// `memory.oom_control` text (Linux 4.13+ has it in both); 0 without one.
pub fn oom_kill_count(text: &str) -> u64 {
    keyed(text, "oom_kill").unwrap_or(0)
}

impl Cgroup {
    fn empty(h: &Hierarchies, name: &Name) -> Cgroup {
        Cgroup {
            name: name.clone(),
            dirs: Vec::new(),
            memory: None,
            pids: None,
            cpu: None,
            cpuacct: None,
            unified: None,
            v1_freezer: None,
            patience: h.patience,
        }
    }

    /// Creates the container's groups in `h` and writes `limits`. A limit
    /// whose controller no hierarchy offers is an error. Memory and pids
    /// groups are made wherever the controller exists (for the figures);
    /// cpu only for a limit (CPU time comes from `cpu.stat`/`cpuacct`).
    /// On v2 the controllers are enabled in `cgroup.subtree_control` of
    /// the root and of `moat/` (which never holds processes itself).
    pub fn create(
        h: &Hierarchies,
        name: &Name,
        limits: &CgroupLimits,
    ) -> Result<Cgroup, CgroupError> {
        for (controller, set) in [
            ("memory", limits.memory_bytes.is_some()),
            ("pids", limits.pids.is_some()),
            ("cpu", limits.cpu_millis.is_some()),
        ] {
            if set && h.find(controller).is_none() {
                return Err(CgroupError::ControllerMissing { controller });
            }
        }
        let mut cg = Cgroup::empty(h, name);
        match cg.set_up(h, limits) {
            Ok(()) => Ok(cg),
            Err(e) => {
                for (_, d) in cg.dirs.iter().rev() {
                    let _ = fs::remove_dir(d);
                }
                Err(e)
            }
        }
    }

    fn set_up(&mut self, h: &Hierarchies, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let mut v2_wanted = Vec::new();
        for (c, wanted) in [
            ("memory", true),
            ("pids", true),
            ("cpu", limits.cpu_millis.is_some()),
        ] {
            if wanted && matches!(h.find(c), Some((Version::V2, _))) {
                v2_wanted.push(c);
            }
        }
        if let Some((v, mount)) = h.find("memory") {
            let dir = self.make(mount, v, &v2_wanted)?;
            if let Some(m) = limits.memory_bytes {
                match v {
                    Version::V2 => {
                        write(&dir.join("memory.max"), &m.to_string())?;
                        // No swap, as on v1 below (only with swap accounting).
                        if dir.join("memory.swap.max").exists() {
                            write(&dir.join("memory.swap.max"), "0")?;
                        }
                    }
                    Version::V1 => {
                        write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                        if dir.join("memory.memsw.limit_in_bytes").exists() {
                            write(&dir.join("memory.memsw.limit_in_bytes"), &m.to_string())?;
                        }
                    }
                }
            }
            self.memory = Some((v, dir));
        }
        if let Some((v, mount)) = h.find("pids") {
            let dir = self.make(mount, v, &v2_wanted)?;
            if let Some(p) = limits.pids {
                write(&dir.join("pids.max"), &p.to_string())?;
            }
            self.pids = Some(dir);
        }
        if let (Some(millis), Some((v, mount))) = (limits.cpu_millis, h.find("cpu")) {
            let dir = self.make(mount, v, &v2_wanted)?;
            let quota = (millis * (CPU_PERIOD_US / 1000)).max(CPU_MIN_QUOTA_US);
            match v {
                Version::V2 => write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?,
                Version::V1 => {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            self.cpu = Some((v, dir));
        }
        if h.v2().is_none() {
            if let Some((Version::V1, mount)) = h.find("cpuacct") {
                self.cpuacct = Some(self.make(mount, Version::V1, &v2_wanted)?);
            }
        }
        // Last, so that the controllers' groups come first in `paths`.
        if let Some(v2) = h.v2() {
            self.unified = Some(self.make(v2, Version::V2, &v2_wanted)?);
        }
        let v2_freezes = self
            .unified
            .as_ref()
            .is_some_and(|d| d.join("cgroup.freeze").exists());
        if !v2_freezes {
            if let Some((Version::V1, mount)) = h.find("freezer") {
                self.v1_freezer = Some(self.make(mount, Version::V1, &v2_wanted)?);
            }
        }
        Ok(())
    }

    /// `<mount>/moat/<name>`, created once; on v2 the wanted controllers
    /// are enabled for it first.
    fn make(
        &mut self,
        mount: &Path,
        v: Version,
        v2_wanted: &[&str],
    ) -> Result<PathBuf, CgroupError> {
        let parent = mount.join("moat");
        let dir = parent.join(self.name.as_str());
        if self.dirs.iter().any(|(_, d)| *d == dir) {
            return Ok(dir);
        }
        mkdir(&parent)?;
        if v == Version::V2 {
            for level in [mount, &parent] {
                enable(level, v2_wanted)?;
            }
        }
        mkdir(&dir)?;
        self.dirs.push((v, dir.clone()));
        Ok(dir)
    }

    /// The container's groups that exist in `h` under `name` (in the
    /// order [`Cgroup::create`] makes them, then any other hierarchy's),
    /// `None` if there are none.
    pub fn open(h: &Hierarchies, name: &Name) -> Option<Cgroup> {
        let mut cg = Cgroup::empty(h, name);
        let at = |mount: &Path| Some(mount.join("moat").join(name.as_str())).filter(|d| d.is_dir());
        let order = ["memory", "pids", "cpu", "cpuacct"]
            .iter()
            .filter_map(|c| h.find(c))
            .chain(h.v2().map(|p| (Version::V2, p)))
            .chain(h.find("freezer"))
            .chain(h.mounts());
        for (v, mount) in order {
            if let Some(d) = at(mount).filter(|d| !cg.dirs.iter().any(|(_, x)| x == d)) {
                cg.dirs.push((v, d));
            }
        }
        if cg.dirs.is_empty() {
            return None;
        }
        cg.unified = h.v2().and_then(at);
        cg.memory = h.find("memory").and_then(|(v, m)| Some((v, at(m)?)));
        cg.pids = h.find("pids").and_then(|(_, m)| at(m));
        cg.cpu = h.find("cpu").and_then(|(v, m)| Some((v, at(m)?)));
        cg.cpuacct = h
            .find("cpuacct")
            .filter(|(v, _)| *v == Version::V1)
            .and_then(|(_, m)| at(m));
        cg.v1_freezer = h
            .find("freezer")
            .filter(|(v, _)| *v == Version::V1)
            .and_then(|(_, m)| at(m));
        Some(cg)
    }

    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Every directory of the container, in creation order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The `cgroup.procs` file of every directory (for a child to join
    /// between fork and exec through descriptors opened beforehand).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Moves process `pid` into every group of the container.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for p in self.procs_files() {
            write(&p, &pid.to_string())?;
        }
        Ok(())
    }

    /// The memory group's limit file (`memory.max`, `memory.limit_in_bytes`).
    pub fn memory_limit_path(&self) -> Option<PathBuf> {
        self.memory.as_ref().map(|(v, d)| match v {
            Version::V2 => d.join("memory.max"),
            Version::V1 => d.join("memory.limit_in_bytes"),
        })
    }

    /// The memory group's OOM counters (`memory.events`,
    /// `memory.oom_control`), read with [`oom_kill_count`].
    pub fn oom_events_path(&self) -> Option<PathBuf> {
        self.memory.as_ref().map(|(v, d)| match v {
            Version::V2 => d.join("memory.events"),
            Version::V1 => d.join("memory.oom_control"),
        })
    }

    /// Processes the kernel's OOM killer killed in the container because
    /// of its memory limit.
    pub fn oom_kills(&self) -> u64 {
        self.oom_events_path()
            .and_then(|p| fs::read_to_string(p).ok())
            .map_or(0, |t| oom_kill_count(&t))
    }

    /// The container's current figures.
    pub fn stats(&self) -> Stats {
        let memory_bytes = self.memory.as_ref().and_then(|(v, d)| match v {
            Version::V2 => read_u64(&d.join("memory.current")),
            Version::V1 => read_u64(&d.join("memory.usage_in_bytes")),
        });
        let v2_cpu = self
            .unified
            .iter()
            .chain(self.cpu.iter().map(|(_, d)| d))
            .find_map(|d| keyed(&fs::read_to_string(d.join("cpu.stat")).ok()?, "usage_usec"));
        let v1_cpu = || {
            self.cpuacct
                .as_ref()
                .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                .map(|ns| ns / 1000)
        };
        Stats {
            memory_bytes,
            cpu_usec: v2_cpu.or_else(v1_cpu),
            pids: self
                .pids
                .as_ref()
                .and_then(|d| read_u64(&d.join("pids.current"))),
        }
    }

    /// How an outside killer kills the whole group at once: `cgroup.kill`
    /// where the unified group has it, else a freezer, else by pid.
    pub fn kill_method(&self) -> KillMethod {
        if let Some(d) = self
            .unified
            .as_ref()
            .filter(|d| d.join("cgroup.kill").exists())
        {
            return KillMethod::CgroupKill(d.clone());
        }
        match self.freezer() {
            Some((v, d)) => KillMethod::Freeze(v, d.to_path_buf()),
            None => KillMethod::Procs(
                self.dirs
                    .first()
                    .map(|(_, d)| d.clone())
                    .unwrap_or_default(),
            ),
        }
    }

    /// The group that freezes: the unified one where it has
    /// `cgroup.freeze`, else the v1 freezer's.
    pub(crate) fn freezer(&self) -> Option<(Version, &Path)> {
        if let Some(d) = self
            .unified
            .as_ref()
            .filter(|d| d.join("cgroup.freeze").exists())
        {
            return Some((Version::V2, d));
        }
        self.v1_freezer.as_deref().map(|d| (Version::V1, d))
    }
}

/// Adds the `wanted` controllers missing from `<dir>/cgroup.subtree_control`.
fn enable(dir: &Path, wanted: &[&str]) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let on = fs::read_to_string(&file).unwrap_or_default();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|c| !on.split_whitespace().any(|x| x == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&file, &missing.join(" "))
}

impl Hierarchies {
    /// Removes empty VM groups (`moat/vm-<id>`) older than `older_than`:
    /// left by a supervisor killed before its cleanup watcher ran. A
    /// younger one may belong to a VM whose VMM has not joined it yet; one
    /// with processes cannot be removed (EBUSY), so it is left alone.
    pub fn sweep_stale_vm_groups(&self, older_than: Duration) {
        let old = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > older_than))
        };
        for (_, mount) in self.mounts() {
            let Ok(entries) = fs::read_dir(mount.join("moat")) else {
                continue;
            };
            for e in entries.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with("vm-") && Name::is_valid(&n) && old(&e.path()) {
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keyed_counts_of_both_versions() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(v1), 2);
        assert_eq!(oom_kill_count(v2), 1);
        assert_eq!(oom_kill_count("oom 3\noom_group_kill 4\n"), 0);
        assert_eq!(
            keyed("usage_usec 17\nuser_usec 9\n", "usage_usec"),
            Some(17)
        );
    }
}
