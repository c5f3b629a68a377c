//! Resumable blob downloads. A blob streams into
//! `ROOT/downloads/<hex>.partial` (root-only, locked while written); an
//! interrupted transfer leaves the bytes it got, and the next pull asks
//! for the rest with `Range`. The digest is checked over the whole blob
//! before it moves into the pull's staging layout, so a resumed prefix from
//! a lying server cannot slip through: a mismatch deletes the partial.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::fs::FlockOperation;
use sha2::{Digest, Sha256};

use super::client::Client;
use super::RegistryError;
use crate::import::Progress;
use crate::oci::Descriptor;
use crate::store::Store;

/// Partial downloads nobody resumed for this long are removed.
const ABANDONED: Duration = Duration::from_secs(7 * 24 * 3600);

/// `ROOT/downloads`, created 0700; abandoned partials are removed.
pub(crate) fn dir(store: &Store, reference: &str) -> Result<PathBuf, RegistryError> {
    let d = store.root().join("downloads");
    let werr = |source| RegistryError::Write {
        reference: reference.to_string(),
        path: d.clone(),
        source,
    };
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&d)
        .map_err(werr)?;
    if let Ok(entries) = fs::read_dir(&d) {
        for e in entries.flatten() {
            let old = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ABANDONED);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(d)
}

/// Opens and locks `path` (created 0600), making sure the locked file is
/// still the one at `path` (a concurrent pull may have renamed it away).
fn open_locked(path: &Path) -> io::Result<File> {
    loop {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        rustix::fs::flock(&f, FlockOperation::LockExclusive)?;
        let same = match fs::metadata(path) {
            Ok(m) => {
                let mine = f.metadata()?;
                m.ino() == mine.ino() && m.dev() == mine.dev()
            }
            Err(_) => false,
        };
        if same {
            return Ok(f);
        }
    }
}

/// Hashes the first `len` bytes of `f` and leaves it positioned at `len`.
fn hash_prefix(f: &mut File, len: u64) -> io::Result<Sha256> {
    let mut h = Sha256::new();
    f.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = f.read(&mut buf[..left.min(1 << 20) as usize])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h)
}

/// Downloads blob `d` (resuming a partial one), verifies it, and moves it
/// to `dest`. Nothing reaches `dest` unless it verified.
pub(crate) fn fetch_blob(
    client: &Client,
    d: &Descriptor,
    downloads: &Path,
    dest: &Path,
    progress: &(dyn Progress + Sync),
    cancel: &AtomicBool,
) -> Result<(), RegistryError> {
    let reference = client.reference().to_string();
    let what = format!("blob {}", d.digest);
    let hex = d.digest.hex();
    let partial = downloads.join(format!("{hex}.partial"));
    let werr = |source| RegistryError::Write {
        reference: reference.clone(),
        path: partial.clone(),
        source,
    };
    let mut file = open_locked(&partial).map_err(werr)?;
    let mut have = file.metadata().map_err(werr)?.len();
    if have > d.size {
        file.set_len(0).map_err(werr)?;
        have = 0;
    }
    let mut hasher = hash_prefix(&mut file, have).map_err(werr)?;
    progress.advance(have);
    if have < d.size {
        let url = client.repo_url(&format!("blobs/{}", d.digest));
        let range = format!("bytes={have}-");
        let headers: Vec<(&str, &str)> = if have > 0 {
            vec![("Range", range.as_str())]
        } else {
            vec![]
        };
        let reply = client.send("GET", &url, &headers, None)?;
        match reply.status.as_u16() {
            200 if have > 0 => {
                // The server ignored the range: start over.
                file.set_len(0).map_err(werr)?;
                file.seek(SeekFrom::Start(0)).map_err(werr)?;
                hasher = Sha256::new();
                have = 0;
            }
            200 => {}
            206 if have > 0 => {
                let cr = reply
                    .response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !cr.starts_with(&format!("bytes {have}-")) {
                    file.set_len(0).map_err(werr)?;
                    return Err(RegistryError::Protocol {
                        reference,
                        what: format!("{what}: asked for bytes {have}- and got range {cr:?}"),
                    });
                }
            }
            404 => {
                return Err(RegistryError::Protocol {
                    reference,
                    what: format!("{what} is not in the registry (HTTP 404)"),
                })
            }
            _ => return Err(client.status_error(&what, reply.status, reply.response)),
        }
        let left = d.size - have;
        if let Some(len) = reply.response.body().content_length() {
            if len > left {
                drop(file);
                let _ = fs::remove_file(&partial);
                return Err(RegistryError::Size {
                    reference,
                    what,
                    expected: d.size,
                    actual: have + len,
                });
            }
        }
        let mut body = reply.response.into_body().into_reader().take(left + 1);
        let mut buf = vec![0u8; 256 << 10];
        let mut got = have;
        loop {
            if cancel.load(Ordering::Relaxed) {
                let _ = file.sync_data();
                return Err(RegistryError::Protocol {
                    reference,
                    what: format!("{what}: cancelled after another transfer failed"),
                });
            }
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    // Keep what arrived: the next pull resumes from here.
                    let _ = file.sync_data();
                    let at = format!("{what} after {got} of {} bytes", d.size);
                    return Err(client.read_error(&at, source));
                }
            };
            if got + n as u64 > d.size {
                drop(file);
                let _ = fs::remove_file(&partial);
                return Err(RegistryError::Size {
                    reference,
                    what,
                    expected: d.size,
                    actual: got + n as u64,
                });
            }
            file.write_all(&buf[..n]).map_err(werr)?;
            hasher.update(&buf[..n]);
            got += n as u64;
            progress.advance(n as u64);
        }
        have = got;
    }
    if have != d.size {
        let _ = file.sync_data();
        return Err(RegistryError::Size {
            reference,
            what,
            expected: d.size,
            actual: have,
        });
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != d.digest {
        drop(file);
        let _ = fs::remove_file(&partial);
        return Err(RegistryError::Digest {
            reference,
            what,
            expected: d.digest.to_string(),
            actual,
        });
    }
    file.sync_all().map_err(werr)?;
    // Renamed while still locked: a waiting pull sees the path gone and
    // starts its own file.
    fs::rename(&partial, dest).map_err(werr)?;
    Ok(())
}
