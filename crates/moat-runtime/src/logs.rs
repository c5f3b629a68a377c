//! Container logs: what a detached container writes to stdout and stderr,
//! kept as JSON lines beside its record (`<root>/containers/<id>/ctr.log`,
//! Docker's `json-file` shape: `{"time": RFC 3339 with nanoseconds,
//! "stream": "stdout"|"stderr", "log": text}`, where `log` ends with a
//! newline unless the line was cut: longer than [`MAX_LINE`] or the last
//! bytes before the stream closed).
//!
//! The file is capped: when the next line would take it past the cap it is
//! renamed to `ctr.log.1` (replacing the previous one) and a new file is
//! begun, so a container never holds more than twice the cap on disk. A
//! write that fails (a full disk) stops logging for the rest of the run,
//! never the container: [`LogWriter::notice`] says why, for the record.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use moat_plan::time::now_rfc3339_nanos;
pub use moat_plan::time::parse_rfc3339_nanos;
use serde::{Deserialize, Serialize};

/// The log file's name in the container directory.
pub const LOG_FILE: &str = "ctr.log";
/// The rotated file.
pub const LOG_FILE_OLD: &str = "ctr.log.1";
/// The default cap of one log file.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
/// A line longer than this is written in pieces.
pub const MAX_LINE: usize = 16 * 1024;
/// Logging stops when less than this is left on the log's file system,
/// so that the container's record can still be written.
pub const RESERVE_BYTES: u64 = 512 * 1024;
/// How much is written between two checks of the free space.
const CHECK_EVERY: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One logged line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub time: String,
    pub stream: Stream,
    pub log: String,
}

/// Writes a container's output as it comes, line by line.
pub struct LogWriter {
    dir: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    /// Bytes of an unfinished line, per stream.
    pending: [Vec<u8>; 2],
    failed: Option<String>,
    notice_taken: bool,
    /// Bytes written since the free space was last checked.
    unchecked: u64,
}

impl LogWriter {
    /// Opens (appending) the log of the container whose directory is `dir`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<LogWriter> {
        let file = open_append(&dir.join(LOG_FILE))?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file: Some(file),
            size,
            max_bytes: max_bytes.max(1024),
            pending: [Vec::new(), Vec::new()],
            failed: None,
            notice_taken: false,
            unchecked: CHECK_EVERY,
        })
    }

    /// Takes output of `stream`: complete lines are written now, the rest
    /// when its line ends (or grows past [`MAX_LINE`]).
    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        let i = stream as usize;
        let mut pending = std::mem::take(&mut self.pending[i]);
        pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl + 1;
            self.emit(stream, &pending[start..end]);
            start = end;
        }
        while pending.len() - start >= MAX_LINE {
            self.emit(stream, &pending[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        pending.drain(..start);
        self.pending[i] = pending;
    }

    /// Writes what is left of unfinished lines (the streams closed).
    pub fn flush(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.pending[stream as usize]);
            if !rest.is_empty() {
                self.emit(stream, &rest);
            }
        }
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
    }

    /// Why logging stopped, once (for the record); `None` while it works.
    pub fn notice(&mut self) -> Option<String> {
        match (&self.failed, self.notice_taken) {
            (Some(why), false) => {
                self.notice_taken = true;
                Some(why.clone())
            }
            _ => None,
        }
    }

    fn emit(&mut self, stream: Stream, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let line = LogLine {
            time: now_rfc3339_nanos(),
            stream,
            log: String::from_utf8_lossy(bytes).into_owned(),
        };
        let mut json = serde_json::to_vec(&line).unwrap_or_default();
        json.push(b'\n');
        if let Err(e) = self.append(&json) {
            self.failed = Some(format!(
                "logging stopped at {}: writing {}: {e}; the container goes on, its further output is dropped",
                line.time,
                self.dir.join(LOG_FILE).display()
            ));
            self.file = None;
        }
    }

    fn append(&mut self, json: &[u8]) -> io::Result<()> {
        if self.unchecked >= CHECK_EVERY {
            self.unchecked = 0;
            if let Some(f) = &self.file {
                let st = rustix::fs::fstatvfs(f)?;
                let free = st.f_bavail.saturating_mul(st.f_frsize);
                if free < RESERVE_BYTES {
                    return Err(io::Error::other(format!(
                        "the file system is nearly full ({} KiB left, {} KiB kept for the container's record)",
                        free / 1024,
                        RESERVE_BYTES / 1024
                    )));
                }
            }
        }
        self.unchecked += json.len() as u64;
        if self.size > 0 && self.size + json.len() as u64 > self.max_bytes {
            self.file = None;
            fs::rename(self.dir.join(LOG_FILE), self.dir.join(LOG_FILE_OLD))?;
            self.file = Some(open_append(&self.dir.join(LOG_FILE))?);
            self.size = 0;
        }
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("closed"))?;
        f.write_all(json)?;
        self.size += json.len() as u64;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    File::options()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Which lines [`read`] returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    /// Only lines at or after this time (nanoseconds since the epoch).
    pub since_nanos: Option<i128>,
    /// Only the last N lines.
    pub tail: Option<usize>,
}

/// The logged lines of the container whose directory is `dir`, oldest
/// first; lines that do not parse (a torn last line) are skipped.
/// Returns the lines and where the current file ended (for [`Follower`]).
pub fn read(dir: &Path, filter: Filter) -> io::Result<(Vec<LogLine>, Follower)> {
    let mut lines = Vec::new();
    if let Ok(f) = File::open(dir.join(LOG_FILE_OLD)) {
        read_lines(f, &mut lines)?;
    }
    let mut follower = Follower {
        path: dir.join(LOG_FILE),
        ino: 0,
        offset: 0,
    };
    match File::open(&follower.path) {
        Ok(f) => {
            follower.ino = f.metadata()?.ino();
            follower.offset = read_lines(f, &mut lines)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(since) = filter.since_nanos {
        lines.retain(|l| parse_rfc3339_nanos(&l.time).is_some_and(|t| t >= since));
    }
    if let Some(n) = filter.tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    Ok((lines, follower))
}

/// Reads complete lines from `f`; returns the offset after the last one.
fn read_lines(f: File, out: &mut Vec<LogLine>) -> io::Result<u64> {
    let mut r = BufReader::new(f);
    let mut offset = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Ok(offset);
        }
        offset += n as u64;
        if let Ok(line) = serde_json::from_slice::<LogLine>(&buf) {
            out.push(line);
        }
    }
}

/// Follows the log file from where [`read`] stopped (`moat logs -f`),
/// across rotation.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    ino: u64,
    offset: u64,
}

impl Follower {
    /// Lines written since the last call.
    pub fn poll(&mut self) -> io::Result<Vec<LogLine>> {
        let mut out = Vec::new();
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        let ino = f.metadata()?.ino();
        if ino != self.ino {
            // Rotated: finish the old file (now ctr.log.1), then the new one.
            if self.ino != 0 {
                if let Ok(mut old) = File::open(self.path.with_extension("log.1")) {
                    if old.metadata()?.ino() == self.ino {
                        old.seek(SeekFrom::Start(self.offset))?;
                        read_lines(old, &mut out)?;
                    }
                }
            }
            self.ino = ino;
            self.offset = 0;
        }
        f.seek(SeekFrom::Start(self.offset))?;
        self.offset += read_lines(f, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
