//! File-system operations relative to a directory fd, never following
//! symlinks: the discipline of DESIGN rule 1 and 8 for writing inside a
//! rootfs that hostile tar streams are shaping. No path is ever joined onto
//! the host path of the rootfs.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Why a directory inside the root could not be opened.
#[derive(Debug)]
pub enum WalkError {
    /// `prefix` (components joined by `/`) is a symlink.
    Symlink(Vec<u8>),
    /// `prefix` exists and is not a directory.
    NotDir(Vec<u8>),
    /// `prefix` does not exist (only when not creating).
    Missing(Vec<u8>),
    Io(io::Error),
}

pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens the directory `comps` below `root` without following any symlink
/// and without leaving `root`. With `create`, missing directories are made
/// (mode 0755, as Docker does for parents a layer omits).
pub fn open_dir(root: BorrowedFd<'_>, comps: &[&[u8]], create: bool) -> Result<OwnedFd, WalkError> {
    // Fast path: one openat2 call that the kernel keeps beneath `root` and
    // that fails on any symlink.
    if !comps.is_empty() {
        let path = join(comps);
        match rustix::fs::openat2(
            root,
            os(&path),
            DIR_FLAGS,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        ) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::AGAIN) => {}
            Err(_) => {} // walk to find out which component is the problem
        }
    }
    let mut cur: Option<OwnedFd> = None;
    for (i, comp) in comps.iter().enumerate() {
        let dir = cur.as_ref().map(|f| f.as_fd()).unwrap_or(root);
        let prefix = || join(&comps[..=i]);
        let next = match rustix::fs::openat(dir, os(comp), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if create => {
                match rustix::fs::mkdirat(dir, os(comp), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(WalkError::Io(e.into())),
                }
                rustix::fs::openat(dir, os(comp), DIR_FLAGS, Mode::empty())
                    .map_err(|e| classify(dir, comp, prefix(), e))?
            }
            Err(e) => return Err(classify(dir, comp, prefix(), e)),
        };
        cur = Some(next);
    }
    match cur {
        Some(fd) => Ok(fd),
        None => rustix::io::dup(root).map_err(|e| WalkError::Io(e.into())),
    }
}

fn classify(dir: BorrowedFd<'_>, comp: &[u8], prefix: Vec<u8>, e: rustix::io::Errno) -> WalkError {
    match e {
        rustix::io::Errno::NOENT => WalkError::Missing(prefix),
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => match file_type(dir, comp) {
            Ok(Some(FileType::Symlink)) => WalkError::Symlink(prefix),
            _ => WalkError::NotDir(prefix),
        },
        e => WalkError::Io(e.into()),
    }
}

/// The type of `name` in `dir` (not following a symlink), or None.
pub fn file_type(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` from `dir`, recursively if it is a directory, never
/// following symlinks. Absent is fine.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match file_type(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = rustix::fs::openat(dir, os(name), DIR_FLAGS, Mode::empty())?;
            clear_dir(sub.as_fd(), &|_| false)?;
            rustix::fs::unlinkat(dir, os(name), AtFlags::REMOVEDIR)?;
            Ok(())
        }
        Some(_) => Ok(rustix::fs::unlinkat(dir, os(name), AtFlags::empty())?),
    }
}

/// Removes every child of `dir` for which `keep` returns false.
pub fn clear_dir(dir: BorrowedFd<'_>, keep: &dyn Fn(&[u8]) -> bool) -> io::Result<()> {
    let names = list_dir(dir)?;
    for name in names {
        if !keep(&name) {
            remove_all_at(dir, &name)?;
        }
    }
    Ok(())
}

/// Names in `dir` except `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let fd = rustix::fs::openat(dir, ".", DIR_FLAGS, Mode::empty())?;
    let mut d = rustix::fs::Dir::read_from(&fd)?;
    let mut names = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

/// Why a file of an input (an OCI layout directory) was not opened.
#[derive(Debug)]
pub enum InputFileError {
    Missing,
    /// It exists but is not a regular file: what it is instead.
    NotRegular(&'static str),
    Io(io::Error),
}

/// Opens `rel` below the directory `dir` for reading, only if it is a
/// regular file reached without any symlink: first `O_PATH | O_NOFOLLOW`
/// (which never blocks on a FIFO and never follows a symlink to, say,
/// `/etc/shadow`), then the type is checked, then the same inode is reopened
/// for reading through `/proc/self/fd`. `dir` itself may be a symlink (the
/// user named it).
pub fn open_input_file(dir: &std::path::Path, rel: &str) -> Result<std::fs::File, InputFileError> {
    let base = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| InputFileError::Io(e.into()))?;
    let handle = match rustix::fs::openat2(
        &base,
        rel,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(InputFileError::Missing),
        Err(rustix::io::Errno::LOOP) => {
            return Err(InputFileError::NotRegular("a symlink (or below one)"))
        }
        Err(rustix::io::Errno::NOSYS) => {
            // No openat2: the last component at least is not followed.
            match rustix::fs::openat(
                &base,
                rel,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => return Err(InputFileError::Missing),
                Err(e) => return Err(InputFileError::Io(e.into())),
            }
        }
        Err(e) => return Err(InputFileError::Io(e.into())),
    };
    let st = rustix::fs::fstat(&handle).map_err(|e| InputFileError::Io(e.into()))?;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => None,
        FileType::Symlink => Some("a symlink (or below one)"),
        FileType::Directory => Some("a directory"),
        FileType::Fifo => Some("a FIFO"),
        FileType::Socket => Some("a socket"),
        FileType::CharacterDevice | FileType::BlockDevice => Some("a device"),
        FileType::Unknown => Some("not a regular file"),
    };
    if let Some(k) = kind {
        return Err(InputFileError::NotRegular(k));
    }
    use std::os::fd::AsRawFd;
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", handle.as_raw_fd()),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| InputFileError::Io(e.into()))?;
    Ok(std::fs::File::from(fd))
}
