//! The VMM's cgroups: memory (guest RAM plus the VMM's own overhead), a
//! pids limit and, when the policy sets one, CPU bandwidth, on cgroup v2 or
//! v1 (one controller per hierarchy, as on hybrid hosts); and a way to kill
//! everything inside at once, never by a pid read from `cgroup.procs`:
//!
//! - `cgroup.kill` (v2, Linux 5.14), on a hybrid host through the unified
//!   hierarchy, which needs no controller for it;
//! - else the v1 freezer: frozen tasks cannot exit, so the pids read while
//!   they are frozen cannot be reused before the SIGKILL lands;
//! - else (neither) by pid, racy; said in `docs/vm.md`.
//!
//! Each VM gets `<hierarchy>/moat/vm-<id>` in every hierarchy it uses; the
//! VMM joins all of them before it starts (see [`crate::jail`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::jail::JailError;

/// Tasks (threads count) the VMM may have: QEMU's main loop, RCU and
/// vCPU threads plus its I/O worker pool (up to 64 for `aio=threads`), and
/// the jail's two processes (unshare, sh). Nothing in it may fork (`-sandbox
/// spawn=deny`), so a higher count is a runaway.
pub const PIDS_BASE: u64 = 96;

/// What the VM's cgroups limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// CPU bandwidth in millicpus (1000 = one CPU), from the policy's `cpus`.
    pub cpu_millis: Option<u64>,
}

/// How the cleanup watcher kills what is in the VM's cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kill {
    /// Write `1` to `<dir>/cgroup.kill`.
    CgroupKill(PathBuf),
    /// Freeze `<dir>`, kill its tasks, thaw it.
    Freezer(PathBuf),
    /// Kill the pids in `<dir>/cgroup.procs`.
    Procs(PathBuf),
}

impl Kill {
    /// `(mode, directory)` as the cleanup watcher's script takes them.
    pub fn script_args(&self) -> (&'static str, &Path) {
        match self {
            Kill::CgroupKill(d) => ("kill", d),
            Kill::Freezer(d) => ("freeze", d),
            Kill::Procs(d) => ("procs", d),
        }
    }
}

/// The cgroups of one VM.
#[derive(Debug)]
pub struct VmCgroups {
    /// Every directory created; the VMM joins each.
    pub dirs: Vec<PathBuf>,
    pub kill: Kill,
    /// The memory cgroup's OOM counters: `memory.events` (v2) or
    /// `memory.oom_control` (v1), read by [`oom_kills`].
    pub oom_events: PathBuf,
    /// The memory cgroup's limit file: `memory.max` (v2) or
    /// `memory.limit_in_bytes` (v1).
    pub memory_limit: PathBuf,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The cgroup hierarchies of this host.
#[derive(Debug, Default)]
struct Mounts {
    v2: Option<PathBuf>,
    v2_controllers: Vec<String>,
    /// `(mount point, mount options)` of each v1 hierarchy.
    v1: Vec<(PathBuf, Vec<String>)>,
}

impl Mounts {
    fn read() -> Result<Mounts, JailError> {
        let info = fs::read_to_string("/proc/self/mountinfo").map_err(JailError::ReadMounts)?;
        Ok(Mounts::parse(&info))
    }

    fn parse(mountinfo: &str) -> Mounts {
        let mut m = Mounts::default();
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
                "cgroup2" if m.v2.is_none() => m.v2 = Some(mp),
                "cgroup" => {
                    m.v1.push((mp, opts.split(',').map(str::to_string).collect()))
                }
                _ => {}
            }
        }
        m.v2_controllers =
            m.v2.as_ref()
                .and_then(|p| fs::read_to_string(p.join("cgroup.controllers")).ok())
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
        m
    }

    /// Where `controller` lives: v2 when the unified hierarchy offers it.
    fn find(&self, controller: &str) -> Option<(Version, PathBuf)> {
        if let Some(p) = self
            .v2
            .as_ref()
            .filter(|_| self.v2_controllers.iter().any(|c| c == controller))
        {
            return Some((Version::V2, p.clone()));
        }
        self.v1
            .iter()
            .find(|(_, o)| o.iter().any(|x| x == controller))
            .map(|(p, _)| (Version::V1, p.clone()))
    }
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    fs::write(path, value).map_err(|source| JailError::CgroupWrite {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), JailError> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(JailError::Cgroup {
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

impl VmCgroups {
    /// Creates `<hierarchy>/moat/<name>` wherever needed and writes `limits`.
    pub fn create(name: &str, limits: &Limits) -> Result<VmCgroups, JailError> {
        let mounts = Mounts::read()?;
        let memory = mounts.find("memory").ok_or(JailError::NoMemoryCgroup)?;
        let pids = mounts
            .find("pids")
            .ok_or(JailError::ControllerMissing { controller: "pids" })?;
        let cpu = match limits.cpu_millis {
            Some(_) => Some(
                mounts
                    .find("cpu")
                    .ok_or(JailError::ControllerMissing { controller: "cpu" })?,
            ),
            None => None,
        };
        let mut cg = VmCgroups {
            dirs: Vec::new(),
            kill: Kill::Procs(PathBuf::new()),
            oom_events: PathBuf::new(),
            memory_limit: PathBuf::new(),
            limits: limits.clone(),
        };
        let r = cg.set_up(name, &mounts, memory, pids, cpu);
        if let Err(e) = r {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn set_up(
        &mut self,
        name: &str,
        mounts: &Mounts,
        memory: (Version, PathBuf),
        pids: (Version, PathBuf),
        cpu: Option<(Version, PathBuf)>,
    ) -> Result<(), JailError> {
        let v2_wanted: Vec<&str> = [("memory", &memory), ("pids", &pids)]
            .into_iter()
            .chain(cpu.as_ref().map(|c| ("cpu", c)))
            .filter(|(_, (v, _))| *v == Version::V2)
            .map(|(c, _)| c)
            .collect();
        let dir = self.make(name, &memory.1, &v2_wanted)?;
        match memory.0 {
            Version::V2 => {
                write(
                    &dir.join("memory.max"),
                    &self.limits.memory_bytes.to_string(),
                )?;
                let _ = fs::write(dir.join("memory.swap.max"), "0");
                self.oom_events = dir.join("memory.events");
                self.memory_limit = dir.join("memory.max");
            }
            Version::V1 => {
                write(
                    &dir.join("memory.limit_in_bytes"),
                    &self.limits.memory_bytes.to_string(),
                )?;
                self.oom_events = dir.join("memory.oom_control");
                self.memory_limit = dir.join("memory.limit_in_bytes");
            }
        }
        let dir = self.make(name, &pids.1, &v2_wanted)?;
        write(&dir.join("pids.max"), &self.limits.pids.to_string())?;
        if let (Some((version, mount)), Some(millis)) = (&cpu, self.limits.cpu_millis) {
            let dir = self.make(name, mount, &v2_wanted)?;
            let quota = (millis * 100).max(1000);
            match version {
                Version::V2 => write(&dir.join("cpu.max"), &format!("{quota} 100000"))?,
                Version::V1 => {
                    write(&dir.join("cpu.cfs_period_us"), "100000")?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        // How to kill: cgroup.kill in the unified hierarchy (whatever its
        // controllers), else the v1 freezer, else by pid.
        if let Some(v2) = &mounts.v2 {
            let dir = self.make(name, v2, &v2_wanted)?;
            if dir.join("cgroup.kill").exists() {
                self.kill = Kill::CgroupKill(dir);
                return Ok(());
            }
        }
        if let Some((Version::V1, mount)) = mounts.find("freezer") {
            let dir = self.make(name, &mount, &v2_wanted)?;
            self.kill = Kill::Freezer(dir);
            return Ok(());
        }
        self.kill = Kill::Procs(self.dirs[0].clone());
        Ok(())
    }

    /// `<mount>/moat/<name>`, created once (controllers enabled on v2).
    fn make(&mut self, name: &str, mount: &Path, v2_wanted: &[&str]) -> Result<PathBuf, JailError> {
        let parent = mount.join("moat");
        let dir = parent.join(name);
        if self.dirs.contains(&dir) {
            return Ok(dir);
        }
        create_dir(&parent)?;
        let is_v2 = fs::metadata(mount.join("cgroup.subtree_control")).is_ok();
        if is_v2 && !v2_wanted.is_empty() {
            let enable: Vec<String> = v2_wanted.iter().map(|c| format!("+{c}")).collect();
            let enable = enable.join(" ");
            write(&mount.join("cgroup.subtree_control"), &enable)?;
            write(&parent.join("cgroup.subtree_control"), &enable)?;
        }
        sweep_stale(&parent);
        fs::create_dir(&dir).map_err(|source| JailError::Cgroup {
            path: dir.clone(),
            source,
        })?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// The `cgroup.procs` file of every directory, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Removes the (empty) directories; used when the VMM never started.
    pub fn remove(&self) {
        for d in self.dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Resource figures of the VM `name` (`vm-<id>`) from its cgroups: the
/// whole micro-VM's memory (guest RAM it touched plus the VMM's own), CPU
/// time and tasks of the VMM. `None` when the VM has no memory cgroup
/// (it is gone).
pub fn figures(name: &str) -> Option<(u64, Option<u64>, Option<u64>)> {
    let mounts = Mounts::read().ok()?;
    let read = |path: PathBuf| fs::read_to_string(path).ok();
    let num = |path: PathBuf| read(path).and_then(|t| t.trim().parse::<u64>().ok());
    let dir = |(v, mount): (Version, PathBuf)| (v, mount.join("moat").join(name));
    let memory = match mounts.find("memory").map(dir)? {
        (Version::V2, d) => num(d.join("memory.current"))?,
        (Version::V1, d) => num(d.join("memory.usage_in_bytes"))?,
    };
    let cpu_usec = match mounts.find("cpu").map(dir) {
        Some((Version::V2, d)) => read(d.join("cpu.stat")).and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|n| n.trim().parse().ok())
        }),
        // v1: only where the VM has a cpuacct group (a policy with `cpus`
        // on a host that mounts cpu,cpuacct together).
        _ => mounts
            .find("cpuacct")
            .map(dir)
            .and_then(|(_, d)| num(d.join("cpuacct.usage")))
            .map(|ns| ns / 1000),
    };
    let pids = mounts
        .find("pids")
        .map(dir)
        .and_then(|(_, d)| num(d.join("pids.current")));
    Some((memory, cpu_usec, pids))
}

/// Kills what is left in the cgroups of the VM `name` and removes them:
/// what [`crate::jail`]'s cleanup watcher does, for when it did not run.
/// Every group is derived from `name`, never read from a file.
pub fn destroy(name: &str) {
    let Ok(mounts) = Mounts::read() else { return };
    let mut dirs: Vec<PathBuf> = mounts.v1.iter().map(|(m, _)| m.clone()).collect();
    dirs.extend(mounts.v2.clone());
    let dirs: Vec<PathBuf> = dirs
        .into_iter()
        .map(|m| m.join("moat").join(name))
        .filter(|d| d.is_dir())
        .collect();
    for d in &dirs {
        if d.join("cgroup.kill").exists() {
            let _ = fs::write(d.join("cgroup.kill"), "1");
        } else if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
            // v1 without cgroup.kill: by pid (racy; see the module docs).
            for pid in procs
                .lines()
                .filter_map(|p| rustix::process::Pid::from_raw(p.trim().parse().ok()?))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    for d in &dirs {
        for _ in 0..200 {
            if fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The number of OOM kills in a memory cgroup, from the text of its
/// `memory.events` (v2) or `memory.oom_control` (v1, Linux 4.13+): both
/// have a line `oom_kill N`.
pub fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Removes empty per-VM groups left by supervisors that were killed before
/// their cleanup watcher ran. Only groups older than a minute: a younger
/// one may belong to a VM whose VMM has not joined it yet.
fn sweep_stale(parent: &Path) {
    let old = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > Duration::from_secs(60)))
    };
    if let Ok(entries) = fs::read_dir(parent) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("vm-") && old(&e.path()) {
                // Fails with EBUSY while processes are inside: then it is not stale.
                let _ = fs::remove_dir(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_and_unified_mounts_are_told_apart() {
        let hybrid = "\
35 25 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
38 35 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
39 35 0:34 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
40 35 0:35 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
41 35 0:36 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,freezer
";
        let mut m = Mounts::parse(hybrid);
        m.v2_controllers.clear(); // the test host's own unified hierarchy is not read here
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            m.find("memory"),
            Some((Version::V1, PathBuf::from("/sys/fs/cgroup/memory")))
        );
        assert_eq!(
            m.find("cpu"),
            Some((Version::V1, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")))
        );
        assert_eq!(
            m.find("freezer"),
            Some((Version::V1, PathBuf::from("/sys/fs/cgroup/freezer")))
        );
        assert_eq!(m.find("hugetlb"), None);
        m.v2_controllers = vec!["memory".into(), "pids".into()];
        assert_eq!(
            m.find("memory"),
            Some((Version::V2, PathBuf::from("/sys/fs/cgroup/unified")))
        );
    }

    #[test]
    fn oom_kill_counters_of_both_versions() {
        assert_eq!(
            oom_kills("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(
            oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            3
        );
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }
}
