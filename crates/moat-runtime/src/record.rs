//! The one state record per container:
//! `<run_root>/containers/<id>/state.json`, written by the backends and
//! read by `moat ps`, `moat kill`, `moat run` (name in use) and the
//! sandbox's stale-state cleanup through [`read_all`], the one reader.
//!
//! Every change happens under an exclusive lock on
//! `<run_root>/containers/.lock` ([`lock`]); a record is staged, then
//! renamed into place ([`write`]).
//!
//! Nothing read from a record decides what is deleted or killed. The run
//! root and `containers/` are owned by this (root) user and mode 0700,
//! checked before anything in them is read; a record is read only from a
//! directory whose own name is a container ID, that is a real directory
//! owned by this user and not writable by group or others, holding a
//! regular `state.json` of the same kind, whose `id` equals the directory
//! name. Cleanup removes `containers/<that name>` ([`remove`]) and what a
//! backend derives from that name; it never follows a path, pid or cgroup
//! from the file.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use moat_plan::time::now_rfc3339;
use serde::{Deserialize, Serialize};

use crate::id::{ContainerId, ContainerName, ImageId, Isolation};

/// The record format written by this version. Records without a
/// `version` (0) were written before it (the vm backend still writes
/// those): every field added since has a default.
pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the runtime directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write container state {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read container states in {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container name {name:?} is already in use by container {id}; choose another --name, or remove that container first (moat rm -f {name})")]
    NameInUse { name: String, id: String },
    #[error(transparent)]
    Id(#[from] crate::id::IdError),
    #[error("container {id} is {from}: it cannot become {to}")]
    Transition {
        id: String,
        from: Status,
        to: Status,
    },
    #[error("refusing to trust the runtime directory {path}: {problem}; it must be a directory owned by root with mode 0700 (fix: chown root:root {path} && chmod 0700 {path}, or remove it)")]
    Untrusted { path: PathBuf, problem: String },
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Set up, its process not yet released.
    Created,
    Running,
    Paused,
    /// Its process has exited (the exit code and time are recorded).
    Stopped,
}

impl Status {
    /// Whether a container may go from `self` to `to`.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Created, Running)
                | (Created, Stopped)
                | (Running, Paused)
                | (Paused, Running)
                | (Running, Stopped)
                | (Paused, Stopped)
                // `moat start` of a stopped container re-arms it.
                | (Stopped, Created)
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

fn running() -> Status {
    Status::Running
}

/// The state of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`RECORD_VERSION`] when written by this version; 0 before.
    #[serde(default)]
    pub version: u32,
    pub id: ContainerId,
    pub name: ContainerName,
    /// Records of version 0 are of running containers.
    #[serde(default = "running")]
    pub status: Status,
    /// Image config digest (`sha256:<hex>`), or `rootfs:<dir>`.
    pub image_id: ImageId,
    /// Host pid of the container's first process (PID 1 inside); 0 until
    /// it exists. For the vm backend, the supervising `moat` process.
    pub pid: i32,
    pub isolation: Isolation,
    /// RFC 3339, UTC.
    pub created: String,
    /// The command line of the workload.
    #[serde(default)]
    pub command: Vec<String>,
    /// Start time (clock ticks since boot) of `pid`, to detect pid reuse.
    #[serde(default)]
    pub pid_start_time: u64,
    /// The process that supervises (monitors) the container.
    #[serde(default)]
    pub supervisor_pid: i32,
    #[serde(default)]
    pub supervisor_start_time: u64,
    /// Cgroup directories of the container (informational: cleanup
    /// derives them from the ID).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// The host uid that owns the container's user namespace; 0 in vm
    /// records.
    #[serde(default)]
    pub userns_owner: u32,
    /// Digest of the policy the container runs under (`Plan::policy_digest`).
    #[serde(default)]
    pub policy_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_time: Option<String>,
    /// Why the container stopped when its workload's exit status is not
    /// known (its monitor died, the host rebooted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_error: Option<String>,
    /// The monitor that owns a detached container (0 for a container run
    /// in the foreground: its supervisor is the `moat run` process).
    #[serde(default)]
    pub monitor_pid: i32,
    #[serde(default)]
    pub monitor_start_time: u64,
    /// The host's boot ID when the container was started: a record of an
    /// earlier boot is of a container that no longer runs.
    #[serde(default)]
    pub boot_id: String,
    /// Remove the container when it stops (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// The front end creating the container, until a monitor or
    /// supervisor owns it: if it dies first (`kill -9` during `run -d`),
    /// the container was never made and its record goes.
    #[serde(default)]
    pub creator_pid: i32,
    #[serde(default)]
    pub creator_start_time: u64,
    /// Set when the container's logs could not be written (a full disk):
    /// the workload goes on, its further output is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_notice: Option<String>,
}

impl Record {
    /// A new record in status `created`, with no process yet.
    pub fn new(
        id: ContainerId,
        name: ContainerName,
        isolation: Isolation,
        image_id: ImageId,
    ) -> Record {
        Record {
            version: RECORD_VERSION,
            id,
            name,
            status: Status::Created,
            image_id,
            pid: 0,
            isolation,
            created: now_rfc3339(),
            command: Vec::new(),
            pid_start_time: 0,
            supervisor_pid: 0,
            supervisor_start_time: 0,
            cgroups: Vec::new(),
            userns_owner: 0,
            policy_digest: String::new(),
            exit_code: None,
            exit_time: None,
            exit_error: None,
            monitor_pid: 0,
            monitor_start_time: 0,
            boot_id: boot_id(),
            auto_remove: false,
            creator_pid: 0,
            creator_start_time: 0,
            log_notice: None,
        }
    }

    /// Moves the record to `to`, or says why it cannot.
    pub fn transition(&mut self, to: Status) -> Result<(), StateError> {
        if !self.status.can_become(to) {
            return Err(StateError::Transition {
                id: self.id.to_string(),
                from: self.status,
                to,
            });
        }
        self.status = to;
        Ok(())
    }

    /// Records the process that now runs: `created` becomes `running`.
    pub fn started(&mut self, pid: i32) -> Result<(), StateError> {
        self.transition(Status::Running)?;
        self.pid = pid;
        self.pid_start_time = process_start_time(pid).unwrap_or(0);
        self.boot_id = boot_id();
        Ok(())
    }

    /// Records the exit: the container becomes `stopped`.
    pub fn stopped(&mut self, code: i32) -> Result<(), StateError> {
        self.transition(Status::Stopped)?;
        self.exit_code = Some(code);
        self.exit_time = Some(now_rfc3339());
        self.pid = 0;
        Ok(())
    }

    /// Records that the container ended without a known exit status
    /// (`why`: its monitor died, the host rebooted).
    pub fn lost(&mut self, why: &str) {
        self.status = Status::Stopped;
        self.exit_code = None;
        self.exit_error = Some(why.to_string());
        self.exit_time.get_or_insert_with(now_rfc3339);
        self.pid = 0;
        self.supervisor_pid = 0;
        self.monitor_pid = 0;
    }

    /// Re-arms a stopped container for `moat start`: `created` again, the
    /// last run's exit forgotten.
    pub fn rearm(&mut self) -> Result<(), StateError> {
        if self.status == Status::Stopped {
            self.transition(Status::Created)?;
        }
        self.exit_code = None;
        self.exit_time = None;
        self.exit_error = None;
        self.log_notice = None;
        Ok(())
    }

    /// Whether the supervisor recorded here is still alive (same pid, same
    /// start time).
    pub fn supervisor_alive(&self) -> bool {
        self.same_boot()
            && self.supervisor_pid > 0
            && process_start_time(self.supervisor_pid) == Some(self.supervisor_start_time)
    }

    /// Whether the monitor recorded here is still alive.
    pub fn monitor_alive(&self) -> bool {
        self.same_boot()
            && self.monitor_pid > 0
            && process_start_time(self.monitor_pid) == Some(self.monitor_start_time)
    }

    /// Whether the front end that was creating this container died before
    /// anything took it over.
    pub fn half_created(&self) -> bool {
        self.status == Status::Created
            && self.monitor_pid == 0
            && self.supervisor_pid == 0
            && self.creator_pid > 0
            && (!self.same_boot()
                || process_start_time(self.creator_pid) != Some(self.creator_start_time))
    }

    /// Whether the record was written during this boot of the host.
    pub fn same_boot(&self) -> bool {
        self.boot_id.is_empty() || self.boot_id == boot_id()
    }

    /// Whether something still owns this container: a live monitor or
    /// supervisor. A record that is not stopped and has neither is of a
    /// container that died with its owner (see [`Record::stale_reason`]).
    pub fn owned(&self) -> bool {
        self.monitor_alive() || self.supervisor_alive()
    }

    /// Why a record that is not `stopped` no longer describes a live
    /// container, or `None` when it does (or is stopped, or merely
    /// created and waiting for `moat start`).
    pub fn stale_reason(&self) -> Option<&'static str> {
        if self.status == Status::Stopped || self.owned() {
            return None;
        }
        if !self.same_boot() {
            return Some("the host rebooted while it ran");
        }
        if self.status == Status::Created && self.monitor_pid == 0 && self.supervisor_pid == 0 {
            return self.half_created().then_some("it was never started");
        }
        Some("its monitor died (killed, or moat was upgraded under it)")
    }
}

/// The host's boot ID (`/proc/sys/kernel/random/boot_id`), empty if
/// unreadable.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn containers_dir(run_root: &Path) -> PathBuf {
    run_root.join("containers")
}

/// The directory of one container (its record, spec and logs).
pub fn container_dir(root: &Path, id: &ContainerId) -> PathBuf {
    containers_dir(root).join(id.as_str())
}

/// Settles the records of containers that died with their owner (see
/// [`Record::stale_reason`]): `cleanup` removes what the backend left
/// (derived from the record's ID), then the record says the container
/// stopped and why, or goes when it was to be removed on exit. Takes the
/// lock itself; returns the IDs settled.
pub fn reap_stale(
    root: &Path,
    cleanup: &mut dyn FnMut(&Record),
) -> Result<Vec<ContainerId>, StateError> {
    if !containers_dir(root).exists() {
        return Ok(Vec::new());
    }
    let _lock = lock(root)?;
    let mut settled = Vec::new();
    for mut r in read_all(root)? {
        let Some(why) = r.stale_reason() else {
            continue;
        };
        cleanup(&r);
        if r.auto_remove || r.half_created() {
            remove(root, &r.id);
        } else {
            r.lost(why);
            write(root, &r)?;
        }
        settled.push(r.id);
    }
    Ok(settled)
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Creates the run root and `containers/` (mode 0700) where missing, and
/// checks both before anything in them is trusted: a real directory owned
/// by this user and not writable by group or others (a directory only
/// readable by others, as older versions made it, is narrowed to 0700).
pub fn ensure_dirs(run_root: &Path) -> Result<PathBuf, StateError> {
    let dir = containers_dir(run_root);
    for d in [run_root, dir.as_path()] {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && d == run_root => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)
                    .map_err(|source| StateError::CreateDir {
                        path: d.to_path_buf(),
                        source,
                    })?;
            }
            Err(source) => {
                return Err(StateError::CreateDir {
                    path: d.to_path_buf(),
                    source,
                })
            }
        }
        check_trusted_dir(d)?;
    }
    Ok(dir)
}

/// The checks of [`ensure_dirs`] on one directory (repairing group/other
/// read access, refusing anything else).
fn check_trusted_dir(d: &Path) -> Result<(), StateError> {
    let untrusted = |problem: String| StateError::Untrusted {
        path: d.to_path_buf(),
        problem,
    };
    let m = fs::symlink_metadata(d).map_err(|source| StateError::Read {
        path: d.to_path_buf(),
        source,
    })?;
    if !m.file_type().is_dir() {
        return Err(untrusted("it is not a directory (a symlink?)".into()));
    }
    if m.uid() != euid() {
        return Err(untrusted(format!("it is owned by uid {}", m.uid())));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(untrusted(format!(
            "it has mode {mode:04o}, writable by group or others"
        )));
    }
    if mode & 0o077 != 0 {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(|source| {
            StateError::CreateDir {
                path: d.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

/// An exclusive lock on the containers directory (released on drop).
pub struct Lock(#[allow(dead_code)] File);

pub fn lock(run_root: &Path) -> Result<Lock, StateError> {
    let dir = ensure_dirs(run_root)?;
    let path = dir.join(".lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|source| StateError::Lock {
            path: path.clone(),
            source,
        })?;
    f.lock()
        .map_err(|source| StateError::Lock { path, source })?;
    Ok(Lock(f))
}

/// Writes `record` atomically (stage, then rename). The caller holds the
/// [`lock`] for any change that must not race another (names, owners).
pub fn write(run_root: &Path, record: &Record) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| StateError::Write {
        path: container_dir(run_root, &record.id),
        source: io::Error::other(e),
    })?;
    write_file(run_root, &record.id, "state.json", &json)
}

/// Removes a container's state directory.
pub fn remove(run_root: &Path, id: &ContainerId) {
    let _ = fs::remove_dir_all(containers_dir(run_root).join(id.as_str()));
}

/// The one reader: every trusted record under `run_root` (dead ones
/// included), oldest first. Refuses an untrusted run root or
/// `containers/` (see the module documentation); skips any record that
/// cannot be trusted.
pub fn read_all(run_root: &Path) -> Result<Vec<Record>, StateError> {
    let dir = containers_dir(run_root);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    ensure_dirs(run_root)?;
    let entries = fs::read_dir(&dir).map_err(|source| StateError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if let Some(s) = read_record(&dir, &name) {
            out.push(s);
        }
    }
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    Ok(out)
}

/// The record in `containers/<name>`, if it can be trusted (see the
/// module documentation); `None` for anything else.
fn read_record(dir: &Path, name: &str) -> Option<Record> {
    parse_record(&read_trusted(dir, name, "state.json")?, name)
}

/// The bytes of `containers/<name>/<file>` if the directory and the file
/// can be trusted (see the module documentation) and the file is at most
/// [`MAX_RECORD`] bytes.
pub(crate) fn read_trusted(dir: &Path, name: &str, file: &str) -> Option<Vec<u8>> {
    if !crate::id::is_valid_id(name) {
        return None;
    }
    let me = euid();
    let trusted = |m: &fs::Metadata| m.uid() == me && m.mode() & 0o022 == 0;
    let rec = dir.join(name);
    let m = fs::symlink_metadata(&rec).ok()?;
    if !m.file_type().is_dir() || !trusted(&m) {
        return None;
    }
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(rec.join(file))
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.file_type().is_file() || !trusted(&m) || m.len() > MAX_RECORD {
        return None;
    }
    let mut bytes = Vec::with_capacity(m.len() as usize);
    f.take(MAX_RECORD + 1).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Writes `bytes` as `<root>/containers/<id>/<file>` (mode 0600), staged
/// then renamed into place.
pub(crate) fn write_file(
    root: &Path,
    id: &ContainerId,
    file: &str,
    bytes: &[u8],
) -> Result<(), StateError> {
    let dir = container_dir(root, id);
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Write { path, source }
    };
    ensure_dirs(root)?;
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(werr(&dir)(e)),
    }
    let tmp = dir.join(format!(".{file}.tmp"));
    let _ = fs::remove_file(&tmp);
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| io::Write::write_all(&mut f, bytes))
        .map_err(werr(&tmp))?;
    let path = dir.join(file);
    fs::rename(&tmp, &path).map_err(werr(&path))?;
    Ok(())
}

/// Largest `state.json` the reader accepts.
const MAX_RECORD: u64 = 1 << 20;

/// Parses the bytes of `containers/<name>/state.json`: `None` unless they
/// are at most [`MAX_RECORD`] bytes of a valid record whose id is `name`.
/// The only parser of records read back from disk (fuzzed by
/// `fuzz/fuzz_targets/state_record.rs`).
pub fn parse_record(bytes: &[u8], name: &str) -> Option<Record> {
    if bytes.len() as u64 > MAX_RECORD {
        return None;
    }
    let s: Record = serde_json::from_slice(bytes).ok()?;
    (s.id.as_str() == name).then_some(s)
}

/// Finds a container by exact name, exact id or unique id prefix (at
/// least 4 digits).
pub fn find<'a>(records: &'a [Record], key: &str) -> Option<&'a Record> {
    if let Some(s) = records
        .iter()
        .find(|s| s.name.as_str() == key || s.id.as_str() == key)
    {
        return Some(s);
    }
    let mut m = records
        .iter()
        .filter(|s| key.len() >= 4 && s.id.starts_with(key));
    match (m.next(), m.next()) {
        (Some(s), None) => Some(s),
        _ => None,
    }
}

/// Clock ticks since boot at which `pid` started (field 22 of
/// `/proc/<pid>/stat`), or `None` if there is no such process.
/// A zombie (exited, not yet reaped) has none: it runs no more.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    if after_comm.starts_with(['Z', 'X']) {
        return None;
    }
    after_comm.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests;
