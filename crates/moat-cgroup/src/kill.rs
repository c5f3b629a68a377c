//! Freezing, killing every process and removing the groups, never by a
//! pid that may have been reused:
//!
//! - `cgroup.kill` (v2, Linux 5.14; on a hybrid host through the unified
//!   hierarchy, which needs no controller for it): the kernel kills the
//!   whole group, forks racing with it included;
//! - else freeze the group (v2 `cgroup.freeze` or the v1 freezer; frozen
//!   tasks cannot fork), SIGKILL each member through a pidfd after
//!   checking that the pinned process is still in the group, and thaw;
//! - else the same pidfd rounds without a freeze, until the group is
//!   empty.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use crate::group::{write, Cgroup};
use crate::hierarchy::{Hierarchies, Version};
use crate::{CgroupError, Name};

const POLL: Duration = Duration::from_millis(5);

impl Cgroup {
    /// Freezes every process of the container (pause).
    pub fn freeze(&self) -> Result<(), CgroupError> {
        let (v, d) = self.freezer().ok_or_else(|| CgroupError::NoFreezer {
            name: self.name.to_string(),
        })?;
        set_frozen(v, d, true, self.patience)
    }

    /// Thaws the container (resume).
    pub fn thaw(&self) -> Result<(), CgroupError> {
        let (v, d) = self.freezer().ok_or_else(|| CgroupError::NoFreezer {
            name: self.name.to_string(),
        })?;
        set_frozen(v, d, false, self.patience)
    }

    /// Whether the container is frozen now.
    pub fn is_frozen(&self) -> bool {
        self.freezer()
            .is_some_and(|(v, d)| frozen(v, d) == Some(true))
    }

    /// Kills every process of the container and waits until all are gone
    /// (see the module's notes for how).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if kill_dirs(&self.paths(), self.name.as_str(), self.patience, true) {
            return Ok(());
        }
        let path = self
            .paths()
            .into_iter()
            .find(|d| !members(std::slice::from_ref(d)).is_empty())
            .unwrap_or_default();
        Err(CgroupError::Busy {
            path,
            waited: self.patience,
        })
    }

    /// Kills whatever is left in the container and removes its groups,
    /// retrying while exiting processes still hold them. A group already
    /// gone is fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let killed = self.kill_all();
        let deadline = Instant::now() + self.patience;
        let mut first_err = None;
        for (_, dir) in self.dirs.iter().rev() {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) if Instant::now() < deadline => std::thread::sleep(POLL * 2),
                    Err(source) => {
                        first_err.get_or_insert(CgroupError::Remove {
                            path: dir.clone(),
                            source,
                        });
                        break;
                    }
                }
            }
        }
        match (killed, first_err) {
            (_, None) => Ok(()),
            (Err(busy), Some(_)) => Err(busy),
            (Ok(()), Some(e)) => Err(e),
        }
    }
}

/// Kills every process in container cgroup directories `dirs` (each
/// `<hierarchy>/moat/<name>`, see [`confined`]) and waits up to 5 s for
/// them to be gone. Returns whether the groups are empty.
pub fn kill_all(dirs: &[PathBuf]) -> bool {
    let Some(name) = dirs
        .first()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
    else {
        return true;
    };
    kill_dirs(dirs, name, Duration::from_secs(5), true)
}

/// `cgroup_kill: false` skips `cgroup.kill` (a test of the freeze path on
/// a kernel that has it).
fn kill_dirs(dirs: &[PathBuf], name: &str, patience: Duration, cgroup_kill: bool) -> bool {
    let deadline = Instant::now() + patience;
    let kill_file = dirs
        .iter()
        .find(|d| cgroup_kill && d.join("cgroup.kill").exists());
    if let Some(d) = kill_file {
        if write(&d.join("cgroup.kill"), "1").is_ok() {
            return wait_empty(dirs, deadline);
        }
    }
    let freezer = dirs.iter().find_map(|d| {
        if d.join("cgroup.freeze").exists() {
            Some((Version::V2, d.as_path()))
        } else if d.join("freezer.state").exists() {
            Some((Version::V1, d.as_path()))
        } else {
            None
        }
    });
    let suffix = format!("/moat/{name}");
    // Rounds until the groups are empty: a member forked before a freeze
    // took hold (or without one) is caught by the next round.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some((v, d)) = freezer {
            // Even a freeze that did not settle stops most forks.
            let _ = set_frozen(v, d, true, left.min(Duration::from_secs(1)));
        }
        for pid in members(dirs) {
            kill_member(pid, &suffix);
        }
        if let Some((v, d)) = freezer {
            // v1 delivers the SIGKILLs only once thawed.
            let _ = set_frozen(v, d, false, left.min(Duration::from_secs(1)));
        }
        let round = (Instant::now() + Duration::from_millis(200)).min(deadline);
        if wait_empty(dirs, round) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// SIGKILLs `pid` if, pinned by a pidfd, it is (still) in a group whose
/// path ends in `suffix`: never a process that reused the pid.
fn kill_member(pid: i32, suffix: &str) {
    let Some(pid) = Pid::from_raw(pid) else {
        return;
    };
    let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) else {
        return;
    };
    let member = fs::read_to_string(format!("/proc/{}/cgroup", pid.as_raw_pid()))
        .is_ok_and(|c| c.lines().any(|l| l.ends_with(suffix)));
    if member {
        let _ = pidfd_send_signal(&fd, Signal::KILL);
    }
}

/// The processes in any of `dirs`.
fn members(dirs: &[PathBuf]) -> Vec<i32> {
    let mut out: Vec<i32> = dirs
        .iter()
        .flat_map(|d| {
            fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn wait_empty(dirs: &[PathBuf], deadline: Instant) -> bool {
    loop {
        if members(dirs).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Whether the group at `dir` is frozen: v2 `frozen` of `cgroup.events`
/// (set once every task has stopped), v1 `freezer.state` (`FREEZING`
/// until then).
fn frozen(v: Version, dir: &Path) -> Option<bool> {
    match v {
        Version::V2 => {
            let events = fs::read_to_string(dir.join("cgroup.events")).ok()?;
            events
                .lines()
                .find_map(|l| l.strip_prefix("frozen "))
                .map(|n| n.trim() == "1")
        }
        Version::V1 => match fs::read_to_string(dir.join("freezer.state")).ok()?.trim() {
            "FROZEN" => Some(true),
            "THAWED" => Some(false),
            _ => None,
        },
    }
}

/// Freezes or thaws the group at `dir` and waits until the kernel says so.
fn set_frozen(v: Version, dir: &Path, freeze: bool, patience: Duration) -> Result<(), CgroupError> {
    let (file, value, state) = match (v, freeze) {
        (Version::V2, true) => ("cgroup.freeze", "1", "frozen"),
        (Version::V2, false) => ("cgroup.freeze", "0", "thawed"),
        (Version::V1, true) => ("freezer.state", "FROZEN", "frozen"),
        (Version::V1, false) => ("freezer.state", "THAWED", "thawed"),
    };
    write(&dir.join(file), value)?;
    let deadline = Instant::now() + patience;
    while frozen(v, dir) != Some(freeze) {
        if Instant::now() >= deadline {
            return Err(CgroupError::Freeze {
                path: dir.to_path_buf(),
                state,
                waited: patience,
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// `dir` canonicalised, if it is exactly `<a cgroup hierarchy of this
/// host>/moat/<name>` for a container name ([`Name`]): the only shape
/// moat creates or removes.
pub fn confined(dir: &Path) -> Option<PathBuf> {
    let real = fs::canonicalize(dir).ok()?;
    if !Name::is_valid(real.file_name()?.to_str()?) {
        return None;
    }
    let moat = real.parent()?;
    if moat.file_name()? != "moat" {
        return None;
    }
    let mount = moat.parent()?;
    let h = Hierarchies::host().ok()?;
    let inside = h
        .mounts()
        .any(|(_, m)| fs::canonicalize(m).ok().as_deref() == Some(mount));
    inside.then_some(real)
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use moat_policy::plan::CgroupLimits;

    use super::*;

    /// The fallback for kernels without `cgroup.kill` (5.2 to 5.13), run
    /// for real on this host's unified hierarchy: freeze through
    /// `cgroup.freeze`, SIGKILL through pidfds, thaw. Needs root and a
    /// cgroup2 mount; skipped otherwise.
    #[test]
    fn without_cgroup_kill_the_v2_freezer_path_empties_a_forking_group() {
        let host = Hierarchies::host().unwrap();
        let Some(v2) = host.v2().filter(|_| rustix::process::geteuid().is_root()) else {
            eprintln!("skipped: needs root and a cgroup2 mount");
            return;
        };
        let h = Hierarchies::new(Some(v2.to_path_buf()), Vec::new());
        let id = format!("{:016x}", u64::from(std::process::id()) * 7 + 0xc0de);
        let cg =
            Cgroup::create(&h, &Name::sandbox(&id).unwrap(), &CgroupLimits::default()).unwrap();
        let dir = v2.join("moat").join(&id);
        if !dir.join("cgroup.freeze").exists() {
            eprintln!("skipped: no cgroup.freeze (Linux < 5.2)");
            cg.remove().unwrap();
            return;
        }
        let mut bystander = Command::new("sleep").arg("600").spawn().unwrap();
        let mut bomb = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs || exit 1; while :; do (sleep 600 &); sleep 0.01; done",
                dir.display()
            ))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(members(&cg.paths()).len() > 3, "the shell did not fork");
        let emptied = kill_dirs(&cg.paths(), &id, Duration::from_secs(5), false);
        let left = members(&cg.paths());
        let _ = bomb.wait();
        let bystander_alive = matches!(bystander.try_wait(), Ok(None));
        let _ = bystander.kill();
        let _ = bystander.wait();
        let thawed = !cg.is_frozen();
        cg.remove().unwrap();
        assert_eq!((emptied, left, thawed), (true, vec![], true));
        assert!(bystander_alive, "a process outside the group was killed");
    }
}
