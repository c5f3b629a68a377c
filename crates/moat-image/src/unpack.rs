//! Applies layer tar streams onto a rootfs directory. Tar streams are hostile
//! (DESIGN rule 8): every path is checked, nothing is written through a
//! symlink, links cannot leave the root, device nodes need an explicit
//! allowance, and totals are bounded. All writes are relative to directory
//! fds opened without following symlinks (see `fsat`).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use serde::{Deserialize, Serialize};

use crate::digest::HashingReader;
use crate::fsat::{self, os, WalkError};

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
    Digest { expected: String, actual: String },
    #[error("layer's uncompressed digest is {actual}, the image config says {expected}")]
    DiffId { expected: String, actual: String },
    #[error("opening the rootfs")]
    OpenRoot(#[source] io::Error),
}

/// Running totals over the layers of one image.
#[derive(Debug, Default)]
pub struct Budget {
    pub bytes: u64,
    pub entries: u64,
}

/// Compression of a layer stream, by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps a (possibly compressed) reader into a decompressing reader.
pub fn decompress<'a, R: BufRead + 'a>(mut r: R) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let c = Compression::sniff(r.fill_buf()?);
    let out: Box<dyn Read + 'a> = match c {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::None => Box::new(r),
    };
    Ok((out, c))
}

/// Bytes tolerated after the tar end-of-archive blocks (padding).
const MAX_TRAILING: u64 = 1 << 20;
const HEADER_COST: u64 = 512;

/// Applies one layer blob (compressed or not) onto `root`, checking the
/// blob digest and, when known, the diff ID. Returns the diff ID.
///
/// Reading, hashing and decompressing run on a second thread that hands
/// 1 MiB chunks to this one, which parses the tar and writes files: the two
/// halves of the work overlap on a multi-core machine.
pub fn apply_layer_blob(
    root: BorrowedFd<'_>,
    blob: File,
    expected_digest: Option<&str>,
    expected_diff_id: Option<&str>,
    opts: &UnpackOptions,
    budget: &mut Budget,
    progress: &mut dyn FnMut(u64),
) -> Result<String, UnpackError> {
    let read_bytes = AtomicU64::new(0);
    let (digest, diff_id) = std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
        let counter = &read_bytes;
        let producer = s.spawn(move || produce(blob, counter, tx));
        let reader = ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        };
        let mut reported = 0;
        let mut report = |_: ()| {
            let now = counter.load(Ordering::Relaxed);
            progress(now - reported);
            reported = now;
        };
        let result = apply_tar(
            root,
            ProgressReader {
                inner: reader,
                tick: &mut report,
            },
            opts,
            budget,
        );
        // On error the reader is dropped, so the producer stops at its
        // next send.
        let produced = producer.join().expect("layer reader thread panicked");
        result?;
        produced.map_err(|source| UnpackError::ReadArchive {
            after: EntryName(b"(end)".to_vec()),
            source: crate::quote::clean_io(source),
        })
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

const CHUNK: usize = 1 << 20;

/// Reads, hashes and decompresses a blob into chunks; returns (blob digest,
/// diff ID). Read errors are passed on through the channel too, so that the
/// tar side reports them with the entry being read.
fn produce(
    blob: File,
    counter: &AtomicU64,
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
) -> io::Result<(String, String)> {
    let mut compressed = HashingReader::new(CountingReader {
        inner: blob,
        counter,
    });
    let diff_id = {
        let buffered = BufReader::with_capacity(256 << 10, &mut compressed);
        let (stream, _) = match decompress(buffered) {
            Ok(s) => s,
            Err(e) => {
                let kind = e.kind();
                let _ = tx.send(Err(e));
                return Err(kind.into());
            }
        };
        let mut stream = HashingReader::new(stream);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match stream.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let kind = e.kind();
                        let msg = e.to_string();
                        // Hand over what was read first, so the error is
                        // reported at the entry it cuts short.
                        buf.truncate(filled);
                        if filled > 0 {
                            let _ = tx.send(Ok(buf));
                        }
                        let _ = tx.send(Err(e));
                        return Err(io::Error::new(kind, msg));
                    }
                }
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            if tx.send(Ok(buf)).is_err() {
                return Err(io::ErrorKind::BrokenPipe.into()); // consumer gave up
            }
        }
        stream.finish()?.0
    };
    let (digest, _) = compressed.finish()?;
    Ok((digest, diff_id))
}

struct CountingReader<'c, R> {
    inner: R,
    counter: &'c AtomicU64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // producer done
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct ProgressReader<'p, R> {
    inner: R,
    tick: &'p mut dyn FnMut(()),
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.tick)(());
        Ok(n)
    }
}

/// Applies one uncompressed tar stream onto `root` and returns its sha256
/// (the diff ID), covering any padding after the archive's end.
pub fn apply_layer(
    root: BorrowedFd<'_>,
    stream: impl Read,
    opts: &UnpackOptions,
    budget: &mut Budget,
) -> Result<String, UnpackError> {
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
        let mut archive = tar::Archive::new(&mut stream);
        let entries = archive
            .entries()
            .map_err(|source| UnpackError::ReadArchive {
                after: last.clone(),
                source: crate::quote::clean_io(source),
            })?;
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                // Some writers (umoci 0.4) end the archive right after the
                // last file's data: no padding, no end-of-archive blocks.
                // With that file read completely, this is the end.
                Err(e) if is_eof(&e) && last.0 != b"(start)" => break,
                Err(source) => {
                    return Err(UnpackError::ReadArchive {
                        after: last.clone(),
                        source: crate::quote::clean_io(source),
                    })
                }
            };
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

/// The tar crate reports a stream that ends inside padding as an
/// `Other` error with this text.
fn is_eof(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof || e.to_string() == "unexpected EOF during skip"
}

/// Splits an entry path into its components: `.` and empty components are
/// dropped, `..` and absolute paths refused.
pub fn components<'a>(raw: &'a [u8], entry: &EntryName) -> Result<Vec<&'a [u8]>, UnpackError> {
    // `/` alone is the root directory itself (umoci writes it); any other
    // absolute path is refused.
    let only_root = raw.split(|&b| b == b'/').all(|c| c.is_empty() || c == b".");
    if raw.first() == Some(&b'/') && !only_root {
        return Err(UnpackError::Absolute {
            entry: entry.clone(),
        });
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(UnpackError::DotDot {
                    entry: entry.clone(),
                })
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

struct DirMeta {
    path: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Layer<'a> {
    root: BorrowedFd<'a>,
    opts: &'a UnpackOptions,
    budget: &'a mut Budget,
    /// Paths written by this layer (duplicates and opaque whiteouts).
    seen: HashSet<Vec<u8>>,
    /// Directory metadata, applied once the layer's entries are in.
    dirs: Vec<DirMeta>,
    is_root: bool,
}

fn write_err<'e>(
    entry: &'e EntryName,
    what: &'static str,
) -> impl FnOnce(rustix::io::Errno) -> UnpackError + 'e {
    move |e| UnpackError::Write {
        entry: entry.clone(),
        what,
        source: e.into(),
    }
}

fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    out
}

/// Extended attributes that give or label privilege on the host
/// (`security.capability`, `security.selinux`, `trusted.overlay.*`).
fn is_privileged_xattr(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"trusted.")
}

fn set_xattrs(
    fd: BorrowedFd<'_>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    keep_privileged: bool,
    entry: &EntryName,
) -> Result<(), UnpackError> {
    for (name, value) in xattrs {
        if !keep_privileged && is_privileged_xattr(name) {
            continue;
        }
        match rustix::fs::fsetxattr(fd, os(name), value, XattrFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::PERM) => {}
            Err(e) => {
                return Err(UnpackError::Write {
                    entry: entry.clone(),
                    what: "an extended attribute",
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Layer<'_> {
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &EntryName,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        self.budget.entries += 1;
        if self.budget.entries > self.opts.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                entry: name.clone(),
                limit: self.opts.limits.max_entries,
            });
        }
        self.charge(HEADER_COST, name)?;
        let raw = name.0.clone();
        let comps = components(&raw, name)?;
        let Some((&file, parent)) = comps.split_last() else {
            return Ok(()); // the root directory itself ("./")
        };
        let path = comps.join(&b'/');

        if let Some(target) = file.strip_prefix(b".wh.") {
            return self.whiteout(parent, target, name);
        }
        if !self.seen.insert(path.clone()) {
            return Err(UnpackError::Duplicate {
                entry: name.clone(),
            });
        }
        let dir = self.open_parent(parent, name, true)?;
        let dir = dir.as_fd();
        let header = entry.header();
        let mode = header.mode().map_err(|source| UnpackError::ReadEntry {
            entry: name.clone(),
            source: crate::quote::clean_io(source),
        })? & 0o7777;
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match fsat::file_type(dir, file).map_err(|e| UnpackError::Write {
                    entry: name.clone(),
                    what: "the directory",
                    source: e,
                })? {
                    Some(FileType::Directory) => {}
                    other => {
                        if other.is_some() {
                            self.remove(dir, file, name)?;
                        }
                        rustix::fs::mkdirat(dir, os(file), Mode::from_raw_mode(0o700))
                            .map_err(write_err(name, "the directory"))?;
                    }
                }
                let xattrs = xattrs_of(entry);
                self.dirs.push(DirMeta {
                    path,
                    mode,
                    uid,
                    gid,
                    mtime,
                    xattrs,
                });
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let size = entry.size();
                self.charge(0, name)?;
                if self.budget.bytes.saturating_add(size) > self.opts.limits.max_bytes {
                    return Err(UnpackError::TooLarge {
                        entry: name.clone(),
                        limit: self.opts.limits.max_bytes,
                    });
                }
                let xattrs = xattrs_of(entry);
                self.remove(dir, file, name)?;
                let fd = rustix::fs::openat(
                    dir,
                    os(file),
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(write_err(name, "the file"))?;
                let mut f = File::from(fd);
                self.copy_sparse(entry, &mut f, name)?;
                self.finish_node(f.as_fd(), mode, uid, gid, mtime, &xattrs, name)?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::ReadEntry {
                        entry: name.clone(),
                        source: io::Error::other("symlink without target"),
                    })?
                    .into_owned();
                self.remove(dir, file, name)?;
                rustix::fs::symlinkat(os(&target), dir, os(file))
                    .map_err(write_err(name, "the symlink"))?;
                if self.is_root {
                    rustix::fs::chownat(
                        dir,
                        os(file),
                        Some(uid_of(uid)),
                        Some(gid_of(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(write_err(name, "the symlink owner"))?;
                }
                rustix::fs::utimensat(dir, os(file), &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(write_err(name, "the symlink times"))?;
            }
            T::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::ReadEntry {
                        entry: name.clone(),
                        source: io::Error::other("hardlink without target"),
                    })?
                    .into_owned();
                let target = EntryName(target_raw.clone());
                let bad = |reason| UnpackError::HardlinkTarget {
                    entry: name.clone(),
                    target: target.clone(),
                    reason,
                };
                if target_raw.first() == Some(&b'/') {
                    return Err(bad("is absolute (outside the image)"));
                }
                let tcomps =
                    components(&target_raw, name).map_err(|_| bad("leaves the image root"))?;
                let Some((&tfile, tparent)) = tcomps.split_last() else {
                    return Err(bad("is the root directory"));
                };
                if tcomps == comps {
                    return Err(bad("is the entry itself"));
                }
                let tdir = match fsat::open_dir(self.root, tparent, false) {
                    Ok(fd) => fd,
                    Err(WalkError::Symlink(_)) => return Err(bad("goes through a symlink")),
                    Err(_) => return Err(bad("does not exist in the image")),
                };
                match fsat::file_type(tdir.as_fd(), tfile) {
                    Ok(Some(FileType::Directory)) => return Err(bad("is a directory")),
                    Ok(Some(_)) => {}
                    _ => return Err(bad("does not exist in the image")),
                }
                self.remove(dir, file, name)?;
                rustix::fs::linkat(tdir.as_fd(), os(tfile), dir, os(file), AtFlags::empty())
                    .map_err(write_err(name, "the hardlink"))?;
            }
            T::Char | T::Block | T::Fifo => {
                let kind_name = match kind {
                    T::Char => "character device",
                    T::Block => "block device",
                    _ => "FIFO",
                };
                if !self.opts.allow_devices {
                    return Err(UnpackError::Device {
                        entry: name.clone(),
                        kind: kind_name,
                    });
                }
                let ft = match kind {
                    T::Char => FileType::CharacterDevice,
                    T::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                self.remove(dir, file, name)?;
                rustix::fs::mknodat(
                    dir,
                    os(file),
                    ft,
                    Mode::from_raw_mode(mode & 0o777),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(write_err(name, "the device node"))?;
                if self.is_root {
                    rustix::fs::chownat(
                        dir,
                        os(file),
                        Some(uid_of(uid)),
                        Some(gid_of(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(write_err(name, "the device owner"))?;
                }
                rustix::fs::chmodat(dir, os(file), Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(write_err(name, "the device mode"))?;
            }
            other => {
                return Err(UnpackError::EntryType {
                    entry: name.clone(),
                    kind: other.as_byte(),
                })
            }
        }
        Ok(())
    }

    fn charge(&mut self, bytes: u64, name: &EntryName) -> Result<(), UnpackError> {
        self.budget.bytes = self.budget.bytes.saturating_add(bytes);
        if self.budget.bytes > self.opts.limits.max_bytes {
            return Err(UnpackError::TooLarge {
                entry: name.clone(),
                limit: self.opts.limits.max_bytes,
            });
        }
        Ok(())
    }

    fn open_parent(
        &self,
        parent: &[&[u8]],
        name: &EntryName,
        create: bool,
    ) -> Result<OwnedFd, UnpackError> {
        fsat::open_dir(self.root, parent, create).map_err(|e| match e {
            WalkError::Symlink(p) => UnpackError::ThroughSymlink {
                entry: name.clone(),
                symlink: EntryName(p),
            },
            WalkError::NotDir(p) | WalkError::Missing(p) => UnpackError::ParentNotDir {
                entry: name.clone(),
                parent: EntryName(p),
            },
            WalkError::Io(source) => UnpackError::Write {
                entry: name.clone(),
                what: "the parent directory",
                source,
            },
        })
    }

    fn remove(
        &self,
        dir: BorrowedFd<'_>,
        file: &[u8],
        name: &EntryName,
    ) -> Result<(), UnpackError> {
        fsat::remove_all_at(dir, file).map_err(|source| UnpackError::Write {
            entry: name.clone(),
            what: "over the existing path",
            source,
        })
    }

    fn whiteout(
        &mut self,
        parent: &[&[u8]],
        target: &[u8],
        name: &EntryName,
    ) -> Result<(), UnpackError> {
        let dir = match fsat::open_dir(self.root, parent, false) {
            Ok(d) => d,
            Err(WalkError::Missing(_)) => return Ok(()),
            Err(WalkError::Symlink(p)) => {
                return Err(UnpackError::ThroughSymlink {
                    entry: name.clone(),
                    symlink: EntryName(p),
                })
            }
            Err(WalkError::NotDir(p)) => {
                return Err(UnpackError::ParentNotDir {
                    entry: name.clone(),
                    parent: EntryName(p),
                })
            }
            Err(WalkError::Io(source)) => {
                return Err(UnpackError::Write {
                    entry: name.clone(),
                    what: "the whiteout",
                    source,
                })
            }
        };
        let prefix = parent.join(&b'/');
        let child = |n: &[u8]| {
            let mut p = prefix.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(n);
            p
        };
        if target == b".wh..opq" {
            let seen = &self.seen;
            fsat::clear_dir(dir.as_fd(), &|n| seen.contains(&child(n))).map_err(|source| {
                UnpackError::Write {
                    entry: name.clone(),
                    what: "the opaque whiteout",
                    source,
                }
            })?;
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." || target.starts_with(b".wh.") {
            return Err(UnpackError::Whiteout {
                entry: name.clone(),
            });
        }
        if self.seen.contains(&child(target)) {
            return Ok(()); // whiteouts hide lower layers only
        }
        self.remove(dir.as_fd(), target, name)
    }

    /// Copies file data, leaving holes for runs of zeros so that sparse
    /// files stay sparse on disk.
    fn copy_sparse<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        f: &mut File,
        name: &EntryName,
    ) -> Result<(), UnpackError> {
        const CHUNK: usize = 128 << 10;
        let mut buf = vec![0u8; CHUNK];
        let mut total: u64 = 0;
        let mut hole = false;
        loop {
            let mut filled = 0;
            while filled < CHUNK {
                let n =
                    entry
                        .read(&mut buf[filled..])
                        .map_err(|source| UnpackError::ReadEntry {
                            entry: name.clone(),
                            source: crate::quote::clean_io(source),
                        })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            self.charge(filled as u64, name)?;
            total += filled as u64;
            let chunk = &buf[..filled];
            if filled == CHUNK && chunk.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(filled as i64))
                    .map_err(|source| UnpackError::Write {
                        entry: name.clone(),
                        what: "the file",
                        source,
                    })?;
                hole = true;
            } else {
                f.write_all(chunk).map_err(|source| UnpackError::Write {
                    entry: name.clone(),
                    what: "the file",
                    source,
                })?;
                hole = false;
            }
            if filled < CHUNK {
                break;
            }
        }
        if total != entry.size() {
            return Err(UnpackError::ReadEntry {
                entry: name.clone(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("archive ends after {total} of {} bytes", entry.size()),
                ),
            });
        }
        if hole {
            f.set_len(total).map_err(|source| UnpackError::Write {
                entry: name.clone(),
                what: "the file",
                source,
            })?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_node(
        &self,
        fd: BorrowedFd<'_>,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        name: &EntryName,
    ) -> Result<(), UnpackError> {
        if self.is_root {
            rustix::fs::fchown(fd, Some(uid_of(uid)), Some(gid_of(gid)))
                .map_err(write_err(name, "the owner"))?;
        }
        // After chown, which clears setuid/setgid: the image's bits are kept.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(write_err(name, "the mode"))?;
        set_xattrs(fd, xattrs, self.opts.keep_security_xattrs, name)?;
        rustix::fs::futimens(fd, &times(mtime)).map_err(write_err(name, "the times"))?;
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let name = EntryName(d.path.clone());
            let comps: Vec<&[u8]> = d.path.split(|&b| b == b'/').collect();
            // A later entry of this layer may have replaced the directory.
            let Ok(fd) = fsat::open_dir(self.root, &comps, false) else {
                continue;
            };
            self.finish_node(fd.as_fd(), d.mode, d.uid, d.gid, d.mtime, &d.xattrs, &name)?;
        }
        Ok(())
    }
}

fn uid_of(id: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id.min(u32::MAX as u64 - 1) as u32)
}

fn gid_of(id: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id.min(u32::MAX as u64 - 1) as u32)
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

    #[test]
    fn sniffs_compression() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"usr/"), Compression::None);
    }
}
