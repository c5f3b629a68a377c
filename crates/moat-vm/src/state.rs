//! `<run_root>/containers/<id>/state.json` for a running VM container, so
//! `moat ps`, `moat kill` and `moat image rm` see it. Removed by the jail's
//! cleanup watcher when the VM ends (however moat ended).
//!
//! The container's "first process" on the host is its supervisor (the
//! workload runs in the guest): `pid` and `supervisor_pid` both name it,
//! with its start time, so that `moat kill` reaches it through a pidfd
//! and never a reused pid. The supervisor forwards the signals it relays
//! (see [`crate::session::FORWARDED_SIGNALS`]) to the workload.

use std::fs;
use std::path::{Path, PathBuf};

use crate::VmError;

pub struct ContainerState {
    pub dir: PathBuf,
    /// Whether the jail's cleanup watcher removes `dir` (then drop does not).
    handed_over: bool,
}

impl ContainerState {
    pub fn write(
        run_root: &Path,
        id: &str,
        name: &str,
        image_id: &str,
        command: &[String],
    ) -> Result<ContainerState, VmError> {
        let containers = run_root.join("containers");
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| VmError::State { path, source }
        };
        fs::create_dir_all(&containers).map_err(err(&containers))?;
        let dir = containers.join(id);
        let stage = containers.join(format!(".{id}.tmp"));
        fs::create_dir(&stage).map_err(err(&stage))?;
        let pid = std::process::id();
        let start = process_start_time(pid).unwrap_or(0);
        let state = serde_json::json!({
            "id": id,
            "name": if name.is_empty() { id } else { name },
            "image_id": image_id,
            "pid": pid,
            "pid_start_time": start,
            "supervisor_pid": pid,
            "supervisor_start_time": start,
            "isolation": "vm",
            "created": rfc3339_now(),
            "command": command,
        });
        let file = stage.join("state.json");
        fs::write(&file, serde_json::to_vec_pretty(&state).unwrap_or_default())
            .map_err(err(&file))?;
        fs::rename(&stage, &dir).map_err(err(&dir))?;
        Ok(ContainerState {
            dir,
            handed_over: false,
        })
    }

    /// From now on the jail's cleanup watcher removes the state.
    pub fn hand_over(&mut self) {
        self.handed_over = true;
    }
}

impl Drop for ContainerState {
    fn drop(&mut self) {
        if !self.handed_over {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Clock ticks since boot at which `pid` started (field 22 of
/// `/proc/<pid>/stat`), the value `moat kill` checks before it signals.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(19)?.parse().ok()
}

/// Current UTC time as RFC 3339 (seconds precision).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn records_the_supervisor_with_its_start_time() {
        let d = tempfile::tempdir().unwrap();
        let st = super::ContainerState::write(d.path(), "ab12", "web", "sha256:00", &["sh".into()])
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(st.dir.join("state.json")).unwrap()).unwrap();
        let me = u64::from(std::process::id());
        let start = super::process_start_time(std::process::id()).unwrap();
        assert!(start > 0);
        assert_eq!(v["pid"], me);
        assert_eq!(v["supervisor_pid"], me);
        assert_eq!(v["pid_start_time"], start);
        assert_eq!(v["supervisor_start_time"], start);
        assert_eq!(v["isolation"], "vm");
        assert_eq!(v["command"], serde_json::json!(["sh"]));
        drop(st);
        assert!(!d.path().join("containers/ab12").exists());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_764_079_200), "2025-11-25T14:00:00Z");
        assert_eq!(super::rfc3339(951_825_600), "2000-02-29T12:00:00Z");
    }
}
