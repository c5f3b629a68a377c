//! The sandbox's side of container state. The record, its writer and its
//! one reader (with the trust rules) are the runtime core's
//! ([`moat_runtime::record`]); what is sandbox-specific stays here:
//! cleaning up after a dead supervisor, through the cgroups derived from
//! the container's ID.
//!
//! A record is written once the container process exists and removed when
//! it ends. If the supervisor is SIGKILLed the container dies with it
//! (PR_SET_PDEATHSIG), and the next `moat` command finds the record of a
//! dead supervisor and removes what is left ([`cleanup_stale`]).

use std::path::Path;

pub use moat_runtime::id::is_valid_id;
pub use moat_runtime::record::{
    containers_dir, ensure_dirs, find, lock, now_rfc3339, process_start_time, read_all, write,
    Lock, Record as ContainerState, StateError,
};
use moat_runtime::{ContainerId, Isolation};

/// Removes a container's state directory (`id` must be a container ID).
pub fn remove(run_root: &Path, id: &str) {
    if let Ok(id) = ContainerId::parse(id) {
        moat_runtime::record::remove(run_root, &id);
    }
}

/// Whether the supervisor recorded in `state` is still alive (same pid,
/// same start time).
pub fn is_alive(state: &ContainerState) -> bool {
    state.supervisor_alive()
}

/// Removes what containers of dead supervisors left behind: their
/// processes (through their cgroups), their cgroups and their state
/// directories. Returns the ids cleaned. Takes the lock itself.
pub fn cleanup_stale(run_root: &Path) -> Result<Vec<String>, StateError> {
    if !containers_dir(run_root).exists() {
        return Ok(Vec::new());
    }
    let _lock = lock(run_root)?;
    let mut cleaned = Vec::new();
    for s in read_all(run_root)? {
        if s.isolation != Isolation::Sandbox || is_alive(&s) {
            continue;
        }
        destroy(run_root, &s.id);
        cleaned.push(s.id.to_string());
    }
    Ok(cleaned)
}

/// Kills and removes a container's cgroups and removes its record, all
/// derived from `id` (the record directory's own name, checked by the
/// core's reader): the container's processes died with their supervisor
/// (PR_SET_PDEATHSIG) or are killed through those cgroups; no pid or path
/// from the file is used.
pub(crate) fn destroy(run_root: &Path, id: &ContainerId) {
    crate::cgroup::destroy(id);
    moat_runtime::record::remove(run_root, id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_runtime::ContainerName;

    #[test]
    fn stale_states_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ContainerState::new(
            ContainerId::parse(&"deadbeef".repeat(8)).unwrap(),
            ContainerName::parse("gone").unwrap(),
            Isolation::Sandbox,
            "sha256:00",
        );
        s.supervisor_pid = i32::MAX - 1;
        s.supervisor_start_time = 1;
        write(dir.path(), &s).unwrap();
        s.id = ContainerId::parse(&"a11ce".repeat(4)).unwrap();
        s.name = ContainerName::parse("me").unwrap();
        s.supervisor_pid = std::process::id() as i32;
        s.supervisor_start_time = process_start_time(s.supervisor_pid).unwrap();
        write(dir.path(), &s).unwrap();
        // A dead vm record is not the sandbox's to clean.
        s.id = ContainerId::parse("00112233aabbccdd").unwrap();
        s.name = ContainerName::parse("v").unwrap();
        s.isolation = Isolation::Vm;
        s.supervisor_pid = 0;
        write(dir.path(), &s).unwrap();
        assert_eq!(
            cleanup_stale(dir.path()).unwrap(),
            vec!["deadbeef".repeat(8)]
        );
        let mut left: Vec<String> = read_all(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.id.to_string())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["00112233aabbccdd".to_string(), "a11ce".repeat(4)]
        );
    }
}
