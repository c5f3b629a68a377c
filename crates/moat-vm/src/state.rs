//! The record of a VM container, written through the runtime core
//! ([`moat_runtime::record`]: one shape, staged then renamed under the
//! lock), so that `moat ps`, `moat kill` and `moat image rm` read it with
//! the one reader. Removed by the jail's cleanup watcher when the VM ends
//! (however moat ended).
//!
//! The container's "first process" on the host is its supervisor (the
//! workload runs in the guest): `pid` and `supervisor_pid` both name it,
//! with its start time, so that `moat kill` reaches it through a pidfd
//! and never a reused pid. The supervisor forwards the signals it relays
//! (see [`crate::session::FORWARDED_SIGNALS`]) to the workload.
//!
//! Status: `created` when written (before the boot), `running` once the
//! VMM runs. The supervisor gives up root right after (see
//! [`crate::supervisor`]), so it cannot write `stopped`: the record goes
//! with the VM, removed by the cleanup watcher.

use std::path::{Path, PathBuf};

use moat_runtime::record::{self, Record, StateError};
use moat_runtime::{ContainerId, ContainerName, ImageId, Isolation};

use crate::VmError;

/// What the record says about the container, besides its identity.
pub struct Fields<'a> {
    pub image_id: &'a ImageId,
    pub command: &'a [String],
    pub policy_digest: &'a str,
    /// A monitor owns the container and records its end: a start that
    /// fails leaves the record to it.
    pub monitored: bool,
}

pub struct ContainerState {
    run_root: PathBuf,
    pub record: Record,
    /// Whether the jail's cleanup watcher removes the record (then drop
    /// does not).
    handed_over: bool,
}

impl ContainerState {
    /// Writes the record (`created`), supervised by this process, unless a
    /// live container already has `name`.
    pub fn create(
        run_root: &Path,
        id: ContainerId,
        name: ContainerName,
        fields: Fields<'_>,
    ) -> Result<ContainerState, VmError> {
        let _lock = record::lock(run_root)?;
        let all = record::read_all(run_root)?;
        if let Some(other) = all
            .iter()
            .find(|r| r.name == name && r.id != id && r.supervisor_alive())
        {
            return Err(StateError::NameInUse {
                name: name.to_string(),
                id: other.id.to_string(),
            }
            .into());
        }
        // A container the runtime core created (and a monitor may own)
        // keeps its record: this run updates it.
        let existed = all.into_iter().find(|r| r.id == id);
        let kept = existed.is_some();
        let mut rec = match existed {
            Some(mut r) => {
                r.rearm()?;
                r.creator_pid = 0;
                r
            }
            None => Record::new(id, name, Isolation::Vm, fields.image_id.clone()),
        };
        let me = std::process::id() as i32;
        rec.command = fields.command.to_vec();
        rec.policy_digest = fields.policy_digest.to_string();
        rec.supervisor_pid = me;
        rec.supervisor_start_time = record::process_start_time(me).unwrap_or(0);
        record::write(run_root, &rec)?;
        Ok(ContainerState {
            run_root: run_root.to_path_buf(),
            record: rec,
            handed_over: kept && fields.monitored,
        })
    }

    /// The record's directory (what the cleanup watcher removes).
    pub fn dir(&self) -> PathBuf {
        record::containers_dir(&self.run_root).join(self.record.id.as_str())
    }

    /// The VM runs: `created` becomes `running`, its first process on the
    /// host being this supervisor.
    pub fn running(&mut self) -> Result<(), VmError> {
        let _lock = record::lock(&self.run_root)?;
        self.record.started(std::process::id() as i32)?;
        record::write(&self.run_root, &self.record)?;
        Ok(())
    }

    /// From now on the jail's cleanup watcher removes the record.
    pub fn hand_over(&mut self) {
        self.handed_over = true;
    }
}

impl Drop for ContainerState {
    fn drop(&mut self) {
        if !self.handed_over {
            let _lock = record::lock(&self.run_root);
            record::remove(&self.run_root, &self.record.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(run: &Path, id: &str, name: &str) -> Result<ContainerState, VmError> {
        ContainerState::create(
            run,
            ContainerId::parse(id).unwrap(),
            ContainerName::parse(name).unwrap(),
            Fields {
                image_id:
                    &"sha256:0000000000000000000000000000000000000000000000000000000000000000"
                        .parse()
                        .unwrap(),
                command: &["sh".into()],
                policy_digest: "ab",
                monitored: false,
            },
        )
    }

    #[test]
    fn records_the_supervisor_through_the_core() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let mut st = create(&run, "ab12ab12ab12ab12", "web").unwrap();
        let read = || record::read_all(&run).unwrap();
        let r = &read()[0];
        let me = std::process::id() as i32;
        let start = record::process_start_time(me).unwrap();
        assert!(start > 0);
        assert_eq!(r.status, moat_runtime::Status::Created);
        assert_eq!(r.version, record::RECORD_VERSION);
        assert_eq!(r.supervisor_pid, me);
        assert_eq!(r.supervisor_start_time, start);
        assert_eq!(r.isolation, Isolation::Vm);
        assert_eq!(r.command, vec!["sh".to_string()]);
        assert_eq!(r.policy_digest, "ab");
        assert!(r.supervisor_alive());
        st.running().unwrap();
        let r = &read()[0];
        assert_eq!(r.status, moat_runtime::Status::Running);
        assert_eq!((r.pid, r.pid_start_time), (me, start));
        assert_eq!(st.dir(), run.join("containers/ab12ab12ab12ab12"));

        // A second container of the same name is refused while this one lives.
        let e = create(&run, "cd34cd34cd34cd34", "web").err().unwrap();
        assert_eq!(
            e.to_string(),
            "container name \"web\" is already in use by container ab12ab12ab12ab12; choose another --name, or remove that container first (moat rm -f web)"
        );
        drop(st);
        assert!(read().is_empty());
        assert!(!run.join("containers/ab12ab12ab12ab12").exists());
    }

    #[test]
    fn a_handed_over_record_stays_for_the_watcher() {
        let d = tempfile::tempdir().unwrap();
        let mut st = create(d.path(), "ef56ef56ef56ef56", "db").unwrap();
        st.hand_over();
        drop(st);
        assert_eq!(record::read_all(d.path()).unwrap().len(), 1);
    }
}
