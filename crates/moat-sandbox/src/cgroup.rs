//! Cgroup limits for memory, pids and cpu, on cgroup v1 (controllers
//! mounted one per hierarchy, as on hybrid hosts) and cgroup v2. Each
//! container gets `<hierarchy>/moat/<id>` in every hierarchy that carries
//! one of the three controllers; a controller is taken from v2 when the
//! unified hierarchy offers it, else from its v1 hierarchy. The container
//! is also put in the unified hierarchy (even one without controllers, as
//! on hybrid hosts) and in the v1 freezer where they exist, so that it can
//! be killed as a whole ([`kill_all`]): `cgroup.kill` on v2, else freeze,
//! kill and thaw on the v1 freezer, else pidfds.
//!
//! Cleanup never trusts a path it is given: [`destroy`] takes a container
//! ID and derives `<hierarchy>/moat/<id>` itself, and [`remove_paths`]
//! acts only on paths that canonicalise to exactly that shape.

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
    // For killing the container as a whole: the unified hierarchy
    // (cgroup.kill), else the v1 freezer.
    if let Some(p) = v2 {
        out.push(("kill", Version::V2, p));
    } else if let Some((p, _)) = v1.iter().find(|(_, o)| o.iter().any(|x| x == "freezer")) {
        out.push(("freezer", Version::V1, p.clone()));
    }
    Ok(out)
}

/// The directories `<hierarchy>/moat/<id>` of container `id` in every
/// hierarchy moat uses on this host (whether they exist or not). `None`
/// for anything that is not a container ID.
pub fn paths_for(id: &str) -> Option<Vec<PathBuf>> {
    if !crate::state::is_valid_id(id) {
        return None;
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for (_, _, mount) in discover().ok()? {
        let dir = mount.join("moat").join(id);
        if !out.contains(&dir) {
            out.push(dir);
        }
    }
    Some(out)
}

/// `dir` canonicalised, if it is exactly `<a cgroup hierarchy>/moat/<id>`
/// for a container ID: the only shape moat ever creates or removes.
pub fn confined(dir: &Path) -> Option<PathBuf> {
    let real = fs::canonicalize(dir).ok()?;
    let id = real.file_name()?.to_str()?;
    if !crate::state::is_valid_id(id) {
        return None;
    }
    let moat = real.parent()?;
    if moat.file_name()? != "moat" {
        return None;
    }
    let mount = moat.parent()?;
    cgroup_mounts()
        .iter()
        .any(|m| fs::canonicalize(m).ok().as_deref() == Some(mount))
        .then_some(real)
}

/// Every cgroup (v1) and cgroup2 mount point of this mount namespace.
fn cgroup_mounts() -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let mp = pre.split(' ').nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mp.replace("\\040", " ")))
        })
        .collect()
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
            ("freezer", Version::V1) | ("kill", Version::V2) => {}
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

    /// How many processes the kernel's OOM killer killed in the container
    /// because of its memory limit: `oom_kill` of v2 `memory.events`, or
    /// of v1 `memory.oom_control`.
    pub fn oom_kills(&self) -> u64 {
        self.dirs
            .iter()
            .filter_map(|(v, d)| {
                let file = match v {
                    Version::V2 => "memory.events",
                    Version::V1 => "memory.oom_control",
                };
                fs::read_to_string(d.join(file)).ok()
            })
            .map(|text| oom_kill_count(&text))
            .sum()
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

/// Current figures of container `id`, from the cgroups derived from its
/// ID: memory in use (v2 `memory.current`, v1 `memory.usage_in_bytes`),
/// processes (`pids.current`) and CPU time (v2 `cpu.stat` `usage_usec`;
/// v1's `cpu` hierarchy has none). `None` when it has no cgroup.
pub fn stats(id: &str) -> Option<moat_runtime::backend::Stats> {
    let dirs: Vec<PathBuf> = paths_for(id)?.into_iter().filter(|d| d.is_dir()).collect();
    if dirs.is_empty() {
        return None;
    }
    let read = |file: &str| {
        dirs.iter()
            .find_map(|d| fs::read_to_string(d.join(file)).ok())
    };
    let num = |file: &str| read(file).and_then(|t| t.trim().parse::<u64>().ok());
    Some(moat_runtime::backend::Stats {
        memory_bytes: num("memory.current").or_else(|| num("memory.usage_in_bytes")),
        pids: num("pids.current"),
        cpu_usec: read("cpu.stat").and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|n| n.trim().parse().ok())
        }),
    })
}

/// The `oom_kill N` line of `memory.events` / `memory.oom_control`.
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
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
        .filter(|(c, v, m)| *v == Version::V2 && m == mount && *c != "kill")
        .map(|(c, _, _)| format!("+{c} "))
        .collect();
    if enable.is_empty() {
        return Ok(());
    }
    for dir in [mount.to_path_buf(), moat] {
        write(&dir.join("cgroup.subtree_control"), enable.trim())?;
    }
    Ok(())
}

/// Kills every process of the container and removes its cgroups, by ID
/// (the paths are derived here, never read from a record).
pub fn destroy(id: &str) {
    if let Some(paths) = paths_for(id) {
        remove_paths(&paths);
    }
}

/// Removes cgroup directories of containers, killing whatever is still
/// inside first ([`kill_all`]). A path that does not canonicalise to
/// `<hierarchy>/moat/<id>` is left alone. Waits up to 5 s per cgroup for
/// the kernel to let go of exiting tasks.
pub fn remove_paths(paths: &[PathBuf]) {
    let real: Vec<PathBuf> = paths.iter().filter_map(|p| confined(p)).collect();
    kill_all(&real);
    for dir in &real {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(_) if Instant::now() < deadline => {
                    // A process that raced into the group: kill again.
                    kill_all(std::slice::from_ref(dir));
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => break,
            }
        }
    }
}

/// Kills every process in the container cgroups `dirs` (already confined)
/// without pid-reuse races: `cgroup.kill` where a v2 directory has it (the
/// kernel kills the whole group, new forks included); else, with a v1
/// freezer directory, freeze the group, SIGKILL each member (a frozen task
/// cannot fork or exit, so its pid cannot be reused meanwhile) and thaw;
/// else through pidfds, re-checking after `pidfd_open` that the pid is
/// still a member.
pub fn kill_all(dirs: &[PathBuf]) {
    let members = |d: &Path| -> Vec<i32> {
        fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    if let Some(d) = dirs.iter().find(|d| d.join("cgroup.kill").exists()) {
        if fs::write(d.join("cgroup.kill"), "1").is_ok() {
            wait_empty(d, &members);
            return;
        }
    }
    if let Some(d) = dirs.iter().find(|d| d.join("freezer.state").exists()) {
        if freeze(d, true) {
            for pid in members(d) {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            freeze(d, false);
            wait_empty(d, &members);
            return;
        }
    }
    for d in dirs {
        let Some(rel) = d
            .parent()
            .and_then(|m| m.file_name())
            .zip(d.file_name())
            .map(|(m, id)| format!("/{}/{}", m.to_string_lossy(), id.to_string_lossy()))
        else {
            continue;
        };
        // Rounds until the group is empty: members forked meanwhile are
        // caught by the next round.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = members(d);
            if pids.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in pids {
                let Ok(fd) = sys::pidfd_open(pid) else {
                    continue;
                };
                // The pidfd pins this process, so /proc/<pid> is the same
                // one: signal it only if it is still in this group (not a
                // new process that reused the pid).
                let member = fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.lines().any(|l| l.ends_with(&rel)));
                if member {
                    let _ = sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(&fd), libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Writes FROZEN or THAWED to a v1 freezer and waits (up to 2 s) until the
/// kernel reports that state.
fn freeze(dir: &Path, frozen: bool) -> bool {
    let want = if frozen { "FROZEN" } else { "THAWED" };
    if fs::write(dir.join("freezer.state"), want).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() == want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn wait_empty(dir: &Path, members: &dyn Fn(&Path) -> Vec<i32>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !members(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_from_the_cgroups_of_the_id() {
        let id = moat_runtime::ContainerId::generate();
        assert_eq!(stats(&id), None);
        let cg = Cgroups::create(&id, &CgroupLimits::default()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        cg.add(child.id() as i32).unwrap();
        let s = stats(&id).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        cg.remove();
        assert_eq!(s.pids, Some(1), "{s:?}");
        assert!(s.memory_bytes.is_some(), "{s:?}");
        assert_eq!(stats(&id), None);
        assert_eq!(stats("../../x"), None);
    }

    #[test]
    fn reads_oom_kill_counts_of_both_versions() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(v1), 2);
        assert_eq!(oom_kill_count(v2), 1);
        assert_eq!(oom_kill_count("oom 3\n"), 0);
    }
}
