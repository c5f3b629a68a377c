//! Running-container state: `<run_root>/containers/<id>/state.json`, shared
//! with the vm backend, `moat ps`, `moat kill` and `moat image rm`.
//!
//! A state file is written (staged, then renamed) once the container
//! process exists and removed when it ends. If the supervisor is SIGKILLed
//! the container dies with it (PR_SET_PDEATHSIG), and the next `moat`
//! command finds the state file of a dead supervisor and removes what is
//! left ([`cleanup_stale`]). Every change happens under an exclusive lock on
//! `<run_root>/containers/.lock`.
//!
//! Nothing read from a record decides what is deleted or killed. The run
//! root and `containers/` are owned by this (root) user and mode 0700,
//! checked before anything in them is read; a record is read only from a
//! directory whose own name is a container ID, that is a real directory
//! owned by this user and not writable by group or others, holding a
//! regular `state.json` of the same kind, whose `id` equals the directory
//! name. Cleanup removes `containers/<that name>` and the cgroups derived
//! from that name ([`crate::cgroup::destroy`]); it never follows a path,
//! pid or cgroup from the file.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

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
    #[error("container name {name:?} is already in use by container {id}; choose another --name or stop that container first (moat kill {name})")]
    NameInUse { name: String, id: String },
    #[error("invalid container name {0:?}: use 1-64 characters from [a-zA-Z0-9_.-], starting with a letter or digit")]
    InvalidName(String),
    #[error("refusing to trust the runtime directory {path}: {problem}; it must be a directory owned by root with mode 0700 (fix: chown root:root {path} && chmod 0700 {path}, or remove it)")]
    Untrusted { path: PathBuf, problem: String },
}

/// The state of one running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    /// Image config digest (`sha256:<hex>`).
    pub image_id: String,
    /// Host pid of the container's first process (PID 1 inside).
    pub pid: i32,
    /// `sandbox` or `vm`.
    pub isolation: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// The command line of the workload.
    #[serde(default)]
    pub command: Vec<String>,
    /// Start time (clock ticks since boot) of `pid`, to detect pid reuse.
    #[serde(default)]
    pub pid_start_time: u64,
    /// The `moat` process that supervises the container.
    #[serde(default)]
    pub supervisor_pid: i32,
    #[serde(default)]
    pub supervisor_start_time: u64,
    /// Cgroup directories of the container (informational: cleanup
    /// derives them from the ID).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// The host uid that owns the container's user namespace (see
    /// `idmap::userns_owner`); 0 in vm records.
    #[serde(default)]
    pub userns_owner: u32,
}

pub fn containers_dir(run_root: &Path) -> PathBuf {
    run_root.join("containers")
}

/// Whether `s` is a container ID: 16 to 64 lowercase hex digits (64 for
/// the sandbox, 16 for the vm backend). An ID is always one plain path
/// component.
pub fn is_valid_id(s: &str) -> bool {
    (16..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
    if m.uid() != crate::sys::geteuid() {
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

/// A new random container ID: 64 hex digits.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    let ok = File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes));
    if ok.is_err() {
        // Fall back to time and pid: unique enough on one host.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let seed = t.as_nanos() ^ ((std::process::id() as u128) << 64);
        bytes[..16].copy_from_slice(&seed.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a user-supplied container name.
pub fn validate_name(name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidName(name.to_string()))
    }
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

/// Writes the state file of `state` atomically (stage, then rename).
pub fn write(run_root: &Path, state: &ContainerState) -> Result<(), StateError> {
    let dir = containers_dir(run_root).join(&state.id);
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Write { path, source }
    };
    if !is_valid_id(&state.id) {
        return Err(StateError::Write {
            path: dir,
            source: io::Error::other("not a container ID"),
        });
    }
    ensure_dirs(run_root)?;
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(werr(&dir)(e)),
    }
    let tmp = dir.join(".state.json.tmp");
    let json = serde_json::to_vec_pretty(state).map_err(|e| StateError::Write {
        path: tmp.clone(),
        source: io::Error::other(e),
    })?;
    let _ = fs::remove_file(&tmp);
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| io::Write::write_all(&mut f, &json))
        .map_err(werr(&tmp))?;
    let path = dir.join("state.json");
    fs::rename(&tmp, &path).map_err(werr(&path))?;
    Ok(())
}

/// Removes a container's state directory (`id` must be a container ID).
pub fn remove(run_root: &Path, id: &str) {
    if is_valid_id(id) {
        let _ = fs::remove_dir_all(containers_dir(run_root).join(id));
    }
}

/// Every state file under `run_root`, unfiltered (dead ones included).
pub fn read_all(run_root: &Path) -> Result<Vec<ContainerState>, StateError> {
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
fn read_record(dir: &Path, name: &str) -> Option<ContainerState> {
    use std::os::unix::fs::MetadataExt;
    if !is_valid_id(name) {
        return None;
    }
    let me = crate::sys::geteuid();
    let trusted = |m: &fs::Metadata| m.uid() == me && m.mode() & 0o022 == 0;
    let rec = dir.join(name);
    let m = fs::symlink_metadata(&rec).ok()?;
    if !m.file_type().is_dir() || !trusted(&m) {
        return None;
    }
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(rec.join("state.json"))
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.file_type().is_file() || !trusted(&m) || m.len() > 1 << 20 {
        return None;
    }
    let s: ContainerState = serde_json::from_reader(io::BufReader::new(f)).ok()?;
    (s.id == name).then_some(s)
}

/// Clock ticks since boot at which `pid` started (field 22 of
/// `/proc/<pid>/stat`), or `None` if there is no such process.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(19)?.parse().ok()
}

/// Whether the supervisor recorded in `state` is still alive (same pid,
/// same start time).
pub fn is_alive(state: &ContainerState) -> bool {
    state.supervisor_pid > 0
        && process_start_time(state.supervisor_pid) == Some(state.supervisor_start_time)
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
        if s.isolation != "sandbox" || is_alive(&s) {
            continue;
        }
        // `s.id` is the directory's own name (checked by `read_record`).
        // The container's processes died with their supervisor
        // (PR_SET_PDEATHSIG) or are killed through the cgroups derived
        // from that name; no pid or path from the file is used.
        crate::cgroup::destroy(&s.id);
        remove(run_root, &s.id);
        cleaned.push(s.id);
    }
    Ok(cleaned)
}

/// Finds a running container by exact name, exact id or unique id prefix.
pub fn find<'a>(states: &'a [ContainerState], key: &str) -> Option<&'a ContainerState> {
    if let Some(s) = states.iter().find(|s| s.name == key || s.id == key) {
        return Some(s);
    }
    let mut m = states
        .iter()
        .filter(|s| key.len() >= 4 && s.id.starts_with(key));
    match (m.next(), m.next()) {
        (Some(s), None) => Some(s),
        _ => None,
    }
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    rfc3339(secs)
}

fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn validates_names() {
        validate_name("web-1.a_b").unwrap();
        assert_eq!(
            validate_name("../x").unwrap_err().to_string(),
            "invalid container name \"../x\": use 1-64 characters from [a-zA-Z0-9_.-], starting with a letter or digit"
        );
    }

    #[test]
    fn finds_by_name_id_and_prefix() {
        let mk = |id: &str, name: &str| ContainerState {
            id: id.into(),
            name: name.into(),
            image_id: String::new(),
            pid: 1,
            isolation: "sandbox".into(),
            created: String::new(),
            command: vec![],
            pid_start_time: 0,
            supervisor_pid: 0,
            supervisor_start_time: 0,
            cgroups: vec![],
            userns_owner: 0,
        };
        let v = vec![mk("abcdef01", "web"), mk("abcd9999", "db")];
        assert_eq!(find(&v, "web").unwrap().id, "abcdef01");
        assert_eq!(find(&v, "abcd9").unwrap().name, "db");
        assert!(find(&v, "abcd").is_none()); // ambiguous
    }

    #[test]
    fn stale_states_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ContainerState {
            id: "deadbeef".repeat(8),
            name: "gone".into(),
            image_id: "sha256:00".into(),
            pid: i32::MAX - 1,
            isolation: "sandbox".into(),
            created: now_rfc3339(),
            command: vec![],
            pid_start_time: 1,
            supervisor_pid: i32::MAX - 1,
            supervisor_start_time: 1,
            cgroups: vec![],
            userns_owner: 0,
        };
        write(dir.path(), &s).unwrap();
        s.id = "a11ce".repeat(4);
        s.name = "me".into();
        s.supervisor_pid = std::process::id() as i32;
        s.supervisor_start_time = process_start_time(s.supervisor_pid).unwrap();
        write(dir.path(), &s).unwrap();
        assert_eq!(
            cleanup_stale(dir.path()).unwrap(),
            vec!["deadbeef".repeat(8)]
        );
        let left: Vec<String> = read_all(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(left, vec!["a11ce".repeat(4)]);
    }

    #[test]
    fn only_trusted_records_are_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mk = |id: &str| ContainerState {
            id: id.into(),
            name: "n".into(),
            image_id: String::new(),
            pid: 0,
            isolation: "sandbox".into(),
            created: String::new(),
            command: vec![],
            pid_start_time: 0,
            supervisor_pid: 0,
            supervisor_start_time: 0,
            cgroups: vec![],
            userns_owner: 0,
        };
        let good = "0123456789abcdef";
        write(dir.path(), &mk(good)).unwrap();
        let containers = containers_dir(dir.path());
        let m = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m(dir.path()), 0o700);
        assert_eq!(m(&containers), 0o700);
        assert_eq!(m(&containers.join(good)), 0o700);
        assert_eq!(m(&containers.join(good).join("state.json")), 0o600);
        // A record whose id is not its directory's name, one in a
        // directory that is not an ID, one writable by others.
        let plant = |name: &str, st: &ContainerState, mode: u32| {
            let d = containers.join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("state.json"), serde_json::to_vec(st).unwrap()).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        };
        plant("fedcba9876543210", &mk("/etc"), 0o700);
        plant("..x", &mk("..x"), 0o700);
        plant("1111111111111111", &mk("1111111111111111"), 0o777);
        let ids: Vec<String> = read_all(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, vec![good.to_string()]);
        // A run root writable by others is refused, naming the fix.
        fs::set_permissions(&containers, fs::Permissions::from_mode(0o777)).unwrap();
        let err = read_all(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "refusing to trust the runtime directory {p}: it has mode 0777, writable by group or others; it must be a directory owned by root with mode 0700 (fix: chown root:root {p} && chmod 0700 {p}, or remove it)",
                p = containers.display()
            )
        );
        // A vm record as moat-vm writes it (directory 0755, file 0644,
        // fewer fields, a 16-digit ID) is read.
        fs::set_permissions(&containers, fs::Permissions::from_mode(0o700)).unwrap();
        let vm = "00112233aabbccdd";
        let stage = containers.join(format!(".{vm}.tmp"));
        fs::create_dir(&stage).unwrap();
        fs::set_permissions(&stage, fs::Permissions::from_mode(0o755)).unwrap();
        let json = format!(
            r#"{{"id":"{vm}","name":"v","image_id":"sha256:00","pid":1,"isolation":"vm","created":"x"}}"#
        );
        fs::write(stage.join("state.json"), json).unwrap();
        fs::set_permissions(stage.join("state.json"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&stage, containers.join(vm)).unwrap();
        let mut ids: Vec<String> = read_all(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        ids.sort();
        assert_eq!(ids, vec![vm.to_string(), good.to_string()]);
        fs::remove_dir_all(containers.join(vm)).unwrap();
        // Only readable by others (older versions): narrowed to 0700.
        fs::set_permissions(&containers, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(read_all(dir.path()).unwrap().len(), 1);
        assert_eq!(m(&containers), 0o700);
    }
}
