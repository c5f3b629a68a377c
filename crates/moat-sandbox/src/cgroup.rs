//! The sandbox's side of the cgroup layer ([`moat_cgroup`], shared with
//! the VM backend): a sandbox container's groups are named by its
//! container ID (`<hierarchy>/moat/<id>`), and everything here derives
//! them from the ID, never from a path in a record.

use std::path::PathBuf;

pub use moat_cgroup::{confined, kill_all, Cgroup, CgroupError};
use moat_cgroup::{Hierarchies, Name};
use moat_policy::plan::CgroupLimits;

/// A running sandbox container's groups, as its supervisor holds them.
#[derive(Debug)]
pub struct Cgroups(Cgroup);

impl Cgroups {
    /// Creates container `id`'s groups on this host with `limits`.
    pub fn create(id: &str, limits: &CgroupLimits) -> Result<Cgroups, CgroupError> {
        create(id, limits).map(Cgroups)
    }

    /// Moves `pid` into every group of the container.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        self.0.add(pid)
    }

    /// Processes the memory limit's OOM killer killed in the container.
    pub fn oom_kills(&self) -> u64 {
        self.0.oom_kills()
    }

    /// The group directories (shown in the record).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.0.paths()
    }

    /// Kills what is left and removes the groups. Best effort, when the
    /// container ends: what cannot be removed now is removed by the next
    /// cleanup by ID ([`destroy`]).
    pub fn remove(&self) {
        let _ = self.0.remove();
    }
}

/// Creates container `id`'s groups on this host with `limits`.
pub fn create(id: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
    Cgroup::create(&Hierarchies::host()?, &Name::sandbox(id)?, limits)
}

/// The existing group directories of container `id` (none for anything
/// that is not a container ID).
pub fn paths_for(id: &str) -> Option<Vec<PathBuf>> {
    Some(moat_cgroup::find(id).ok()??.paths())
}

/// Kills every process of container `id` and removes its groups. Best
/// effort: a group that cannot be removed now is retried by the next
/// cleanup, which derives it from the same ID.
pub fn destroy(id: &str) {
    let _ = moat_cgroup::cleanup(id);
}

/// Current figures of container `id`, `None` when it has no cgroup.
pub fn stats(id: &str) -> Option<moat_runtime::backend::Stats> {
    let s = moat_cgroup::stats_for(id)?;
    Some(moat_runtime::backend::Stats {
        memory_bytes: s.memory_bytes,
        cpu_usec: s.cpu_usec,
        pids: s.pids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_from_the_cgroups_of_the_id() {
        let id = moat_runtime::ContainerId::generate();
        assert_eq!(stats(&id), None);
        assert_eq!(paths_for(&id), None);
        let cg = Cgroups::create(&id, &CgroupLimits::default()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        cg.add(child.id() as i32).unwrap();
        let s = stats(&id).unwrap();
        assert_eq!(paths_for(&id), Some(cg.paths()));
        cg.remove();
        let _ = child.wait();
        assert_eq!(s.pids, Some(1), "{s:?}");
        assert!(s.memory_bytes.is_some(), "{s:?}");
        assert_eq!(stats(&id), None);
        assert_eq!(paths_for(&id), None);
        assert_eq!(stats("../../x"), None);
        // Cleanup by ID alone, as after a dead supervisor.
        let cg = Cgroups::create(&id, &CgroupLimits::default()).unwrap();
        assert!(paths_for(&id).is_some());
        destroy(&id);
        assert_eq!(paths_for(&id), None);
        assert!(cg.paths().iter().all(|d| !d.exists()));
    }
}
