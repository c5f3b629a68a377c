//! Advisory file locks, so two `moat` processes never build the same cache
//! entry at once.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::sys;

/// An exclusive `flock`, released on drop (when the file closes).
pub struct FileLock {
    _file: File,
}

impl FileLock {
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        Self::exclusive_or_wait(path, || {})
    }

    /// The lock if nobody holds it now, without waiting.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        Ok(sys::flock_try_exclusive(&file)?.then_some(FileLock { _file: file }))
    }

    /// Like [`FileLock::exclusive`], calling `waiting` once first when
    /// another process holds the lock.
    pub fn exclusive_or_wait(path: &Path, waiting: impl FnOnce()) -> io::Result<FileLock> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        if !sys::flock_try_exclusive(&file)? {
            waiting();
            sys::flock_exclusive(&file)?;
        }
        Ok(FileLock { _file: file })
    }
}
