//! The sandbox's side of container state. The record, its writer and its
//! one reader (with the trust rules) are the runtime core's
//! ([`moat_runtime::record`]); what is sandbox-specific stays here:
//! cleaning up after a dead supervisor, through the cgroups derived from
//! the container's ID.
//!
//! A record is written once the container process exists and says
//! `stopped` when it ends (it goes with `moat rm`, or at once for `--rm`).
//! If the supervisor is SIGKILLed the container dies with it
//! (PR_SET_PDEATHSIG), and the next `moat` command finds the record of a
//! dead owner, removes what is left and records why it stopped
//! ([`cleanup_stale`]).

use std::path::Path;

pub use moat_runtime::id::is_valid_id;
pub use moat_runtime::record::{
    containers_dir, ensure_dirs, find, lock, process_start_time, read_all, write, Lock,
    Record as ContainerState, StateError,
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

/// Settles the records of sandbox containers whose owner (monitor or
/// supervisor) died: their processes are killed and their cgroups removed
/// (derived from the ID), and the record says they stopped and why (or
/// goes, for `--rm`). Returns the ids settled. Takes the lock itself.
pub fn cleanup_stale(run_root: &Path) -> Result<Vec<String>, StateError> {
    let settled = moat_runtime::record::reap_stale(run_root, &mut |r| {
        if r.isolation == Isolation::Sandbox {
            crate::cgroup::destroy(&r.id);
        }
    })?;
    Ok(settled.into_iter().map(|id| id.to_string()).collect())
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
            "sha256:0000000000000000000000000000000000000000000000000000000000000000"
                .parse()
                .unwrap(),
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
        // A vm record of a live supervisor is left alone too.
        s.supervisor_pid = std::process::id() as i32;
        s.supervisor_start_time = process_start_time(s.supervisor_pid).unwrap();
        write(dir.path(), &s).unwrap();
        assert_eq!(
            cleanup_stale(dir.path()).unwrap(),
            vec!["deadbeef".repeat(8)]
        );
        let all = read_all(dir.path()).unwrap();
        assert_eq!(all.len(), 3);
        let gone = find(&all, "gone").unwrap();
        assert_eq!(gone.status, moat_runtime::Status::Stopped);
        assert_eq!(gone.exit_code, None);
        assert!(gone.exit_error.as_deref().unwrap().contains("monitor died"));
        assert_eq!(
            find(&all, "me").unwrap().status,
            moat_runtime::Status::Created
        );
        // Nothing is left to settle.
        assert!(cleanup_stale(dir.path()).unwrap().is_empty());
    }
}
