//! File-system operations relative to a directory fd, never following
//! symlinks: the discipline of DESIGN rule 1 and 8 for writing inside a
//! rootfs that hostile tar streams are shaping. No path is ever joined onto
//! the host path of the rootfs.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Why a path under a root could not be opened.
#[derive(Debug)]
pub enum WalkError {
    /// `prefix` (components joined by `/`) is a symlink.
    Symlink(Vec<u8>),
    /// `prefix` exists and is not a directory.
    NotDir(Vec<u8>),
    /// `prefix` does not exist (only when not creating).
    Missing(Vec<u8>),
    /// Opening failed otherwise: at the directory `at` on the way
    /// ([`Links::InRoot`], as `/a/b`), or at the path itself (`None`).
    Io {
        at: Option<Vec<u8>>,
        source: io::Error,
    },
    /// Making `prefix` (a missing directory or file) failed.
    Create { prefix: Vec<u8>, source: io::Error },
}

impl WalkError {
    fn io(source: impl Into<io::Error>) -> WalkError {
        WalkError::Io {
            at: None,
            source: source.into(),
        }
    }
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

/// What the path starts from.
#[derive(Debug, Clone, Copy)]
pub enum Root<'a> {
    /// The host's root (an absolute path; a relative one starts at the
    /// working directory): for host directories a policy grants.
    Host,
    /// A directory: the path never leaves it (an image root being
    /// unpacked, a container's rootfs).
    Dir(BorrowedFd<'a>),
}

/// How links on the way are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Every symbolic or magic link fails the open
    /// (`RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, and
    /// `RESOLVE_BENEATH` under a [`Root::Dir`]): what is opened is what the
    /// path names. Should that fail (or the kernel lack `openat2`), the
    /// path is walked one component at a time with `O_NOFOLLOW`, which
    /// names the component at fault ([`WalkError::Symlink`],
    /// [`WalkError::NotDir`], [`WalkError::Missing`]) and makes missing
    /// directories when asked.
    Refuse,
    /// Symbolic links are resolved as if the root were `/`
    /// (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`): an absolute link or
    /// `..` never leads out of it. Needs a [`Root::Dir`].
    InRoot,
}

/// What is made when missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    No,
    /// Missing directories (mode 0755, as Docker makes parents a layer
    /// omits).
    Dirs,
    /// Missing directories, and the last component as an empty regular
    /// file (mode 0644): a bind-mount target for a file.
    DirsAndFile,
}

/// How the object is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A directory, for reading and `*at` calls (`O_RDONLY | O_DIRECTORY |
    /// O_NOFOLLOW`).
    ReadDir,
    /// A directory as a handle (`O_PATH | O_DIRECTORY`): to clone its
    /// mount or mount onto it.
    PathDir,
    /// Any file type as a handle (`O_PATH`): a mount target.
    Path,
}

impl Access {
    fn flags(self) -> OFlags {
        let base = match self {
            Access::ReadDir => OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Access::PathDir => OFlags::PATH | OFlags::DIRECTORY,
            Access::Path => OFlags::PATH,
        };
        base | OFlags::CLOEXEC
    }
}

/// The one way moat opens a path below a root without following links
/// elsewhere (DESIGN rule 1): the image unpacker, the sandbox's host
/// directories and OCI mount targets, and the micro-VM's shared host
/// directories all call it, each with its mode. An empty path (no
/// component) opens the root itself.
pub fn open_under(
    root: Root<'_>,
    path: &[u8],
    links: Links,
    create: Create,
    access: Access,
) -> Result<OwnedFd, WalkError> {
    match links {
        Links::Refuse => open_refusing_links(root, path, create, access),
        Links::InRoot => match root {
            Root::Dir(root) => open_in_root(root, path, create, access),
            Root::Host => Err(WalkError::io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "links resolved in the root need a root directory",
            ))),
        },
    }
}

fn open_refusing_links(
    root: Root<'_>,
    path: &[u8],
    create: Create,
    access: Access,
) -> Result<OwnedFd, WalkError> {
    let comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let (dir, beneath) = match root {
        Root::Dir(fd) => (fd, ResolveFlags::BENEATH),
        Root::Host => (rustix::fs::CWD, ResolveFlags::empty()),
    };
    let flags = access.flags();
    // Fast path: one openat2 call that fails on any link (and, under a
    // directory, keeps beneath it).
    if !comps.is_empty() {
        if let Ok(fd) = rustix::fs::openat2(
            dir,
            os(path),
            flags,
            Mode::empty(),
            beneath | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            return Ok(fd);
        }
    }
    // The walk starts where the path does, and never follows a link.
    let walk_flags = flags | OFlags::NOFOLLOW;
    let start = match root {
        Root::Host if path.first() == Some(&b'/') => Some(
            rustix::fs::openat(
                rustix::fs::CWD,
                "/",
                walk_flags | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .map_err(WalkError::io)?,
        ),
        _ => None,
    };
    let base = match (&start, root) {
        (Some(fd), _) => fd.as_fd(),
        (None, Root::Dir(fd)) => fd,
        (None, Root::Host) => rustix::fs::CWD,
    };
    let mut cur: Option<OwnedFd> = None;
    for (i, comp) in comps.iter().enumerate() {
        let dir = cur.as_ref().map(|f| f.as_fd()).unwrap_or(base);
        let prefix = || join(&comps[..=i]);
        let last = i + 1 == comps.len();
        let flags = match last {
            true => walk_flags,
            false => walk_flags | OFlags::DIRECTORY,
        };
        let next = match rustix::fs::openat(dir, os(comp), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if create != Create::No => {
                match rustix::fs::mkdirat(dir, os(comp), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => {
                        return Err(WalkError::Create {
                            prefix: prefix(),
                            source: e.into(),
                        })
                    }
                }
                rustix::fs::openat(dir, os(comp), flags, Mode::empty())
                    .map_err(|e| classify(dir, comp, prefix(), e))?
            }
            Err(e) => return Err(classify(dir, comp, prefix(), e)),
        };
        // `O_PATH | O_NOFOLLOW` opens a link itself: refused all the same.
        if last && access == Access::Path {
            let st = rustix::fs::fstat(&next).map_err(WalkError::io)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                return Err(WalkError::Symlink(prefix()));
            }
        }
        cur = Some(next);
    }
    if let Some(fd) = cur {
        return Ok(fd);
    }
    // No component: the root itself.
    match (start, root) {
        (Some(fd), _) => Ok(fd),
        (None, Root::Dir(fd)) => rustix::io::dup(fd).map_err(WalkError::io),
        (None, Root::Host) => rustix::fs::openat(rustix::fs::CWD, ".", walk_flags, Mode::empty())
            .map_err(WalkError::io),
    }
}

/// `RESOLVE_IN_ROOT`: what `path` names as seen from inside `root`; with
/// [`Create`], the missing directories (and file) are made one by one,
/// each parent opened inside the root again.
fn open_in_root(
    root: BorrowedFd<'_>,
    path: &[u8],
    create: Create,
    access: Access,
) -> Result<OwnedFd, WalkError> {
    const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
    let open =
        |p: &[u8], flags: OFlags| rustix::fs::openat2(root, os(p), flags, Mode::empty(), IN_ROOT);
    let flags = access.flags();
    let err = |at: Option<Vec<u8>>| {
        move |e: rustix::io::Errno| WalkError::Io {
            at,
            source: e.into(),
        }
    };
    match open(path, flags) {
        Ok(fd) => return Ok(fd),
        Err(e) if create == Create::No => return Err(err(None)(e)),
        Err(_) => {}
    }
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    let mut sofar = b"/".to_vec();
    for (i, part) in parts.iter().enumerate() {
        let dir = open(&sofar, Access::PathDir.flags()).map_err(err(Some(sofar.clone())))?;
        let last = i + 1 == parts.len();
        let made = if last && create == Create::DirsAndFile {
            rustix::fs::openat(
                &dir,
                os(part),
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(&dir, os(part), Mode::from_raw_mode(0o755))
        };
        if !sofar.ends_with(b"/") {
            sofar.push(b'/');
        }
        sofar.extend_from_slice(part);
        match made {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(WalkError::Create {
                    prefix: sofar,
                    source: e.into(),
                })
            }
        }
    }
    open(path, flags).map_err(err(None))
}

/// Opens the host directory `path` (absolute) as an `O_PATH` handle
/// without following any symbolic or magic link on the way: the
/// directory a policy grants to a container (the sandbox clones its
/// mount, the micro-VM's virtiofsd shares it).
pub fn open_host_dir(path: &str) -> Result<OwnedFd, WalkError> {
    open_under(
        Root::Host,
        path.as_bytes(),
        Links::Refuse,
        Create::No,
        Access::PathDir,
    )
}

/// Opens the directory `comps` below `root` without following any symlink
/// and without leaving `root`. With `create`, missing directories are made
/// (mode 0755, as Docker does for parents a layer omits).
pub fn open_dir(root: BorrowedFd<'_>, comps: &[&[u8]], create: bool) -> Result<OwnedFd, WalkError> {
    let create = match create {
        true => Create::Dirs,
        false => Create::No,
    };
    open_under(
        Root::Dir(root),
        &join(comps),
        Links::Refuse,
        create,
        Access::ReadDir,
    )
}

fn classify(dir: BorrowedFd<'_>, comp: &[u8], prefix: Vec<u8>, e: rustix::io::Errno) -> WalkError {
    match e {
        rustix::io::Errno::NOENT => WalkError::Missing(prefix),
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => match file_type(dir, comp) {
            Ok(Some(FileType::Symlink)) => WalkError::Symlink(prefix),
            _ => WalkError::NotDir(prefix),
        },
        e => WalkError::io(e),
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
