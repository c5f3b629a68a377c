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
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        sys::flock_exclusive(&file)?;
        Ok(FileLock { _file: file })
    }
}
