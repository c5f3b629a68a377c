//! Applies layer tar streams onto a rootfs directory. Tar streams are hostile
//! (DESIGN rule 8): every path is checked, nothing is written through a
//! symlink, links cannot leave the root, device nodes need an explicit
//! allowance, and totals are bounded. All writes are relative to directory
//! fds opened without following symlinks (see `fsat`).
//!
//! `pipeline` reads, hashes and decompresses a blob on a second thread;
//! `apply` makes each entry (in named steps per entry type); `meta` sets
//! owners, modes, times and extended attributes. Reading the tar itself is
//! `crate::layer`, shared with the scanner.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader};
use crate::layer::{self, LayerTar, PathError};

mod apply;
mod meta;
mod pipeline;

use apply::Layer;
// Kept at their old path for callers outside the workspace (fuzz/).
pub use crate::layer::{decompress, Compression};

/// Bounds on what one image may unpack to (a decompression bomb stops here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Total bytes of file content and tar headers over all layers,
    /// counting the full logical size of sparse files.
    pub max_bytes: u64,
    /// Total tar entries over all layers.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            max_entries: 2_000_000,
        }
    }
}

/// What an unpack may do beyond the safe default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackOptions {
    pub limits: Limits,
    /// Create character/block devices and FIFOs found in layers (refused
    /// otherwise).
    #[serde(default)]
    pub allow_devices: bool,
    /// Apply `security.*` and `trusted.*` extended attributes (file
    /// capabilities, SELinux labels) found in layers. Off by default: a
    /// `security.capability` in the store is a privileged binary on the host.
    #[serde(default)]
    pub keep_security_xattrs: bool,
}

/// A tar entry path for messages: lossy UTF-8 in quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName(pub Vec<u8>);

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::quote::quote_bytes(&self.0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {entry}: path contains a \"..\" component")]
    DotDot { entry: EntryName },
    #[error("entry {entry}: path is absolute")]
    Absolute { entry: EntryName },
    #[error("entry {entry}: goes through symlink {symlink}; writing through a symlink is refused")]
    ThroughSymlink {
        entry: EntryName,
        symlink: EntryName,
    },
    #[error("entry {entry}: parent {parent} is not a directory")]
    ParentNotDir { entry: EntryName, parent: EntryName },
    #[error("entry {entry}: hardlink target {target} {reason}")]
    HardlinkTarget {
        entry: EntryName,
        target: EntryName,
        reason: &'static str,
    },
    #[error(
        "entry {entry}: {kind} refused (pass --allow-devices to create device nodes and FIFOs)"
    )]
    Device {
        entry: EntryName,
        kind: &'static str,
    },
    #[error("entry {entry}: appears twice in the same layer")]
    Duplicate { entry: EntryName },
    #[error("entry {entry}: unsupported tar entry type {kind}")]
    EntryType { entry: EntryName, kind: u8 },
    #[error("entry {entry}: more than {limit} entries; raise the limit with --max-entries if the image is genuine")]
    TooManyEntries { entry: EntryName, limit: u64 },
    #[error("entry {entry}: more than {limit} bytes unpacked; raise the limit with --max-bytes if the image is genuine")]
    TooLarge { entry: EntryName, limit: u64 },
    #[error("entry {entry}: bad whiteout name")]
    Whiteout { entry: EntryName },
    #[error("reading the tar stream after entry {after}")]
    ReadArchive {
        after: EntryName,
        #[source]
        source: io::Error,
    },
    #[error("entry {entry}: reading its data")]
    ReadEntry {
        entry: EntryName,
        #[source]
        source: io::Error,
    },
    #[error("entry {entry}: writing {what}")]
    Write {
        entry: EntryName,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer stream has more than {limit} bytes after the end of the tar archive")]
    TrailingData { limit: u64 },
    #[error("layer blob is {actual}, expected {expected}")]
    Digest { expected: String, actual: Digest },
    #[error("layer's uncompressed digest is {actual}, the image config says {expected}")]
    DiffId { expected: String, actual: Digest },
    #[error("opening the rootfs")]
    OpenRoot(#[source] io::Error),
}

/// Running totals over the layers of one image.
#[derive(Debug, Default)]
pub struct Budget {
    pub bytes: u64,
    pub entries: u64,
}

/// Bytes tolerated after the tar end-of-archive blocks (padding).
const MAX_TRAILING: u64 = 1 << 20;
pub(super) const HEADER_COST: u64 = 512;

/// Creates the directory a rootfs is unpacked into, mode 0755 whatever
/// the process's umask (it is the container's `/`: under moatd's
/// `UMask=0077` it was 0700, and no non-root user in the container could
/// reach `/tmp`), and opens it for [`apply_layer_blob`].
pub fn create_root(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    File::open(path)
}

/// Applies one layer blob (compressed or not) onto `root`, checking the
/// blob digest and, when known, the diff ID. Returns the diff ID.
///
/// Reading, hashing and decompressing run on a second thread
/// (`pipeline`).
pub fn apply_layer_blob(
    root: BorrowedFd<'_>,
    blob: File,
    expected_digest: Option<&str>,
    expected_diff_id: Option<&str>,
    opts: &UnpackOptions,
    budget: &mut Budget,
    progress: &mut dyn FnMut(u64),
) -> Result<Digest, UnpackError> {
    let (digest, diff_id) = pipeline::read_blob(blob, progress, |stream| {
        apply_tar(root, stream, opts, budget)
    })?;
    if let Some(expected) = expected_digest {
        if digest != expected {
            return Err(UnpackError::Digest {
                expected: expected.to_string(),
                actual: digest,
            });
        }
    }
    if let Some(expected) = expected_diff_id {
        if diff_id != expected {
            return Err(UnpackError::DiffId {
                expected: expected.to_string(),
                actual: diff_id,
            });
        }
    }
    Ok(diff_id)
}

/// Applies one uncompressed tar stream onto `root` and returns its sha256
/// (the diff ID), covering any padding after the archive's end.
pub fn apply_layer(
    root: BorrowedFd<'_>,
    stream: impl Read,
    opts: &UnpackOptions,
    budget: &mut Budget,
) -> Result<Digest, UnpackError> {
    let mut hashed = HashingReader::new(stream);
    apply_tar(root, &mut hashed, opts, budget)?;
    let (diff_id, _) = hashed.finish().map_err(|source| UnpackError::ReadArchive {
        after: EntryName(b"(end)".to_vec()),
        source: crate::quote::clean_io(source),
    })?;
    Ok(diff_id)
}

/// Applies a tar stream and reads it to its end (at most `MAX_TRAILING`
/// bytes after the end-of-archive blocks).
fn apply_tar(
    root: BorrowedFd<'_>,
    mut stream: impl Read,
    opts: &UnpackOptions,
    budget: &mut Budget,
) -> Result<(), UnpackError> {
    let mut layer = Layer {
        root,
        opts,
        budget,
        seen: HashSet::new(),
        dirs: Vec::new(),
        is_root: rustix::process::geteuid().is_root(),
    };
    let mut last = EntryName(b"(start)".to_vec());
    {
        let mut tar = LayerTar::new(&mut stream);
        let entries = tar.entries().map_err(|source| UnpackError::ReadArchive {
            after: last.clone(),
            source: crate::quote::clean_io(source),
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|source| UnpackError::ReadArchive {
                after: last.clone(),
                source: crate::quote::clean_io(source),
            })?;
            let name = EntryName(entry.path_bytes().into_owned());
            layer.entry(&mut entry, &name)?;
            last = name;
        }
    }
    layer.finish_dirs()?;
    let trailing =
        io::copy(&mut (&mut stream).take(MAX_TRAILING + 1), &mut io::sink()).map_err(|source| {
            UnpackError::ReadArchive {
                after: last.clone(),
                source: crate::quote::clean_io(source),
            }
        })?;
    if trailing > MAX_TRAILING {
        return Err(UnpackError::TrailingData {
            limit: MAX_TRAILING,
        });
    }
    Ok(())
}

/// Splits an entry path into its components (`layer::components`), the
/// refusal naming the entry.
pub fn components<'a>(raw: &'a [u8], entry: &EntryName) -> Result<Vec<&'a [u8]>, UnpackError> {
    layer::components(raw).map_err(|e| path_error(e, entry))
}

pub(super) fn path_error(e: PathError, entry: &EntryName) -> UnpackError {
    let entry = entry.clone();
    match e {
        PathError::DotDot => UnpackError::DotDot { entry },
        PathError::Absolute => UnpackError::Absolute { entry },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_dotdot_and_absolute() {
        let e = EntryName(b"x".to_vec());
        assert_eq!(
            components(b"./a//b/./c/", &e).unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(matches!(
            components(b"a/../b", &e),
            Err(UnpackError::DotDot { .. })
        ));
        assert!(matches!(
            components(b"/etc/passwd", &e),
            Err(UnpackError::Absolute { .. })
        ));
        assert!(components(b"./", &e).unwrap().is_empty());
        assert!(components(b"/", &e).unwrap().is_empty());
        assert!(matches!(
            components(b"/./x", &e),
            Err(UnpackError::Absolute { .. })
        ));
    }
}
