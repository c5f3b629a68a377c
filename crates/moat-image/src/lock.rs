//! Advisory file locks (flock) and staging directories.
//!
//! Imports and rootfs materialisation hold the store lock shared for their
//! whole run; `rm` and `prune` hold it exclusively, so a blob an import has
//! decided to reuse cannot disappear under it. Metadata updates (records,
//! names) take the short exclusive metadata lock. Each staging directory
//! holds its own lock for as long as its creator lives, so any later command
//! can tell an abandoned staging directory (creator killed) from a live one.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::FlockOperation;

/// A held flock; released on drop (when the file is closed).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

pub fn lock_shared(path: &Path) -> io::Result<LockGuard> {
    let file = open_lock_file(path)?;
    rustix::fs::flock(&file, FlockOperation::LockShared)?;
    Ok(LockGuard { _file: file })
}

pub fn lock_exclusive(path: &Path) -> io::Result<LockGuard> {
    let file = open_lock_file(path)?;
    rustix::fs::flock(&file, FlockOperation::LockExclusive)?;
    Ok(LockGuard { _file: file })
}

/// A directory under `<root>/tmp` owned by this process; removed on drop
/// unless it was emptied by renames.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    _lock: LockGuard,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Staging {
    pub fn new(tmp: &Path, kind: &str) -> io::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{kind}-{}-{nanos}-{n}", std::process::id());
        // Made under a `.init-` name and renamed once locked, so that a
        // concurrent clean_stale never sees it unlocked.
        let init = tmp.join(format!(".init-{name}"));
        fs::create_dir(&init)?;
        let file = open_lock_file(&init.join(".lock"))?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive)?;
        let path = tmp.join(name);
        fs::rename(&init, &path)?;
        Ok(Self {
            path,
            _lock: LockGuard { _file: file },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The pid in a `.init-{kind}-{pid}-{nanos}-{n}` name.
fn init_owner(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(4, '-');
    parts.next()?;
    parts.next()?;
    parts.next()?.parse().ok()
}

/// Removes staging directories whose creator is gone (its lock can be
/// taken). A directory still being set up (`.init-*`) is removed once its
/// creator (the pid in its name) is gone, or once it is a minute old; one
/// without a lock file once it is a minute old.
pub fn clean_stale(tmp: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(tmp) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for ent in entries {
        let ent = ent?;
        let path = ent.path();
        if !ent.file_type()?.is_dir() {
            continue;
        }
        let young = || {
            ent.metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|m| m.elapsed().ok())
                .is_none_or(|age| age < Duration::from_secs(60))
        };
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with(".init-") {
            // Being set up, or its creator died during set-up (a reused
            // pid only delays the removal to the minute).
            let owner_gone =
                init_owner(&name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if (owner_gone || !young()) && remove_racy(&path) {
                removed += 1;
            }
            continue;
        }
        let stale = match File::open(path.join(".lock")) {
            Ok(f) => rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => !young(),
            Err(e) => return Err(e),
        };
        if stale && remove_racy(&path) {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes a stale directory; another command may be removing it at the
/// same time, so vanishing entries are not an error. Returns whether it is
/// gone.
fn remove_racy(path: &Path) -> bool {
    for _ in 0..3 {
        match fs::remove_dir_all(path) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return !path.exists(),
            Err(_) => {}
        }
    }
    !path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stage whose creator was killed while setting it up goes at the
    /// next sweep, not a minute later; a live creator's stays.
    #[test]
    fn a_dead_creators_init_stage_is_swept_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let gone = tmp.path().join(format!(".init-run-{dead}-1-0"));
        let alive = tmp
            .path()
            .join(format!(".init-run-{}-1-0", std::process::id()));
        fs::create_dir(&gone).unwrap();
        fs::create_dir(&alive).unwrap();
        assert_eq!(
            init_owner(".init-run-29171-1796626638142913449-0"),
            Some(29171)
        );
        assert_eq!(init_owner(".init-x"), None);
        assert_eq!(clean_stale(tmp.path()).unwrap(), 1);
        assert!(!gone.exists() && alive.exists());
    }
}
