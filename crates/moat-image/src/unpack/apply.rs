//! Applying one layer's entries onto the rootfs: each entry counted against
//! the limits, placed (path checked, parent opened without following
//! symlinks), then made according to its type; directory metadata last.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::meta::{gid_of, set_xattrs, times, uid_of, write_err, xattrs_of};
use super::{components, path_error, Budget, EntryName, UnpackError, UnpackOptions, HEADER_COST};
use crate::fsat::{self, os, WalkError};
use crate::layer::{self, Node, Whiteout};

pub(super) struct DirMeta {
    path: Vec<u8>,
    meta: Meta,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(super) struct Layer<'a> {
    pub(super) root: BorrowedFd<'a>,
    pub(super) opts: &'a UnpackOptions,
    pub(super) budget: &'a mut Budget,
    /// Paths written by this layer (duplicates and opaque whiteouts).
    pub(super) seen: HashSet<Vec<u8>>,
    /// Directory metadata, applied once the layer's entries are in.
    pub(super) dirs: Vec<DirMeta>,
    pub(super) is_root: bool,
}

/// Owner, mode (permission and set-id bits) and time from an entry's header.
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

impl Meta {
    fn of(header: &tar::Header, name: &EntryName) -> Result<Meta, UnpackError> {
        let mode = header.mode().map_err(|source| UnpackError::ReadEntry {
            entry: name.clone(),
            source: crate::quote::clean_io(source),
        })? & 0o7777;
        Ok(Meta {
            mode,
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            mtime: header.mtime().unwrap_or(0),
        })
    }
}

/// An entry being made: its parent directory (opened), its name there,
/// its header's metadata, and its name in the archive for messages.
#[derive(Clone, Copy)]
struct At<'a> {
    dir: BorrowedFd<'a>,
    file: &'a [u8],
    meta: Meta,
    name: &'a EntryName,
}

impl<'a> At<'a> {
    fn parts(self) -> (BorrowedFd<'a>, &'a [u8], Meta, &'a EntryName) {
        (self.dir, self.file, self.meta, self.name)
    }
}

impl Layer<'_> {
    /// Applies one entry: count, place, make.
    pub(super) fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &EntryName,
    ) -> Result<(), UnpackError> {
        self.count(name)?;
        let raw = name.0.clone();
        let node = match layer::classify(&raw).map_err(|e| path_error(e, name))? {
            Node::Root => return Ok(()), // the root directory itself ("./")
            Node::Whiteout { dir, target } => return self.whiteout(&dir, target, name),
            Node::Path(p) => p,
        };
        let path = node.joined();
        if !self.seen.insert(path.clone()) {
            return Err(UnpackError::Duplicate {
                entry: name.clone(),
            });
        }
        let dir = self.open_parent(node.parent(), name, true)?;
        let at = At {
            dir: dir.as_fd(),
            file: node.file_name(),
            meta: Meta::of(entry.header(), name)?,
            name,
        };
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Directory => self.make_dir(at, path, entry),
            T::Regular | T::Continuous | T::GNUSparse => self.write_file(at, entry),
            T::Symlink => self.make_symlink(at, entry),
            T::Link => self.make_hardlink(at, node.components(), entry),
            kind @ (T::Char | T::Block | T::Fifo) => self.make_device(at, kind, entry),
            other => Err(UnpackError::EntryType {
                entry: name.clone(),
                kind: other.as_byte(),
            }),
        }
    }

    /// Counts the entry and its header against the image's limits.
    fn count(&mut self, name: &EntryName) -> Result<(), UnpackError> {
        self.budget.entries += 1;
        if self.budget.entries > self.opts.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                entry: name.clone(),
                limit: self.opts.limits.max_entries,
            });
        }
        self.charge(HEADER_COST, name)
    }

    /// A directory: kept if one is there, made (0700 until its metadata is
    /// applied in `finish_dirs`) otherwise.
    fn make_dir<R: Read>(
        &mut self,
        at: At<'_>,
        path: Vec<u8>,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let (dir, file, meta, name) = at.parts();
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
        self.dirs.push(DirMeta { path, meta, xattrs });
        Ok(())
    }

    /// A regular (or sparse) file, its size checked against the limit before
    /// any byte is written.
    fn write_file<R: Read>(
        &mut self,
        at: At<'_>,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let (dir, file, meta, name) = at.parts();
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
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(write_err(name, "the file"))?;
        let mut f = File::from(fd);
        self.copy_sparse(entry, &mut f, name)?;
        self.finish_node(f.as_fd(), meta, &xattrs, name)?;
        Ok(())
    }

    /// A symlink, made as it is: nothing is ever written through one.
    fn make_symlink<R: Read>(
        &mut self,
        at: At<'_>,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let (dir, file, meta, name) = at.parts();
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
                Some(uid_of(meta.uid)),
                Some(gid_of(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(write_err(name, "the symlink owner"))?;
        }
        rustix::fs::utimensat(dir, os(file), &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(write_err(name, "the symlink times"))?;
        Ok(())
    }

    /// A hardlink to an existing non-directory inside the root, reached
    /// without symlinks.
    fn make_hardlink<R: Read>(
        &mut self,
        at: At<'_>,
        comps: &[&[u8]],
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let (dir, file, _, name) = at.parts();
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
        let tcomps = components(&target_raw, name).map_err(|_| bad("leaves the image root"))?;
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
        Ok(())
    }

    /// A device node or FIFO, only with `allow_devices`.
    fn make_device<R: Read>(
        &mut self,
        at: At<'_>,
        kind: tar::EntryType,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        use tar::EntryType as T;
        let (dir, file, meta, name) = at.parts();
        let header = entry.header();
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
            Mode::from_raw_mode(meta.mode & 0o777),
            rustix::fs::makedev(major, minor),
        )
        .map_err(write_err(name, "the device node"))?;
        if self.is_root {
            rustix::fs::chownat(
                dir,
                os(file),
                Some(uid_of(meta.uid)),
                Some(gid_of(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(write_err(name, "the device owner"))?;
        }
        rustix::fs::chmodat(
            dir,
            os(file),
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )
        .map_err(write_err(name, "the device mode"))?;
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
            WalkError::Io { source, .. } | WalkError::Create { source, .. } => UnpackError::Write {
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
        target: Whiteout<'_>,
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
            Err(WalkError::Io { source, .. } | WalkError::Create { source, .. }) => {
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
        let target = match target {
            Whiteout::Opaque => {
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
            Whiteout::Invalid => {
                return Err(UnpackError::Whiteout {
                    entry: name.clone(),
                })
            }
            Whiteout::Name(t) => t,
        };
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

    fn finish_node(
        &self,
        fd: BorrowedFd<'_>,
        meta: Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        name: &EntryName,
    ) -> Result<(), UnpackError> {
        if self.is_root {
            rustix::fs::fchown(fd, Some(uid_of(meta.uid)), Some(gid_of(meta.gid)))
                .map_err(write_err(name, "the owner"))?;
        }
        // After chown, which clears setuid/setgid: the image's bits are kept.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
            .map_err(write_err(name, "the mode"))?;
        set_xattrs(fd, xattrs, self.opts.keep_security_xattrs, name)?;
        rustix::fs::futimens(fd, &times(meta.mtime)).map_err(write_err(name, "the times"))?;
        Ok(())
    }

    pub(super) fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let name = EntryName(d.path.clone());
            let comps: Vec<&[u8]> = d.path.split(|&b| b == b'/').collect();
            // A later entry of this layer may have replaced the directory.
            let Ok(fd) = fsat::open_dir(self.root, &comps, false) else {
                continue;
            };
            self.finish_node(fd.as_fd(), d.meta, &d.xattrs, &name)?;
        }
        Ok(())
    }
}
