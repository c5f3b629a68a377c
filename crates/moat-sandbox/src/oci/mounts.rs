//! A bundle's mounts, masked and read-only paths and devices, built in the
//! container's mount namespace. Every target inside the root is opened with
//! `openat2(RESOLVE_IN_ROOT)` and mounted onto through its descriptor's
//! magic link, so a symlink in the rootfs can never move a mount to the
//! host (CVE-2021-30465).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use moat_image::fsat::{self, Access, Create, Links, Root, WalkError};

use super::sys::{self as osys, fd_path};
use super::{OciDevice, OciMount};
use crate::sys;
use crate::ChildError;

const IN_ROOT: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// Mount flags and the rest of the options (the filesystem's data).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Options {
    pub flags: libc::c_ulong,
    pub clear: libc::c_ulong,
    pub propagation: libc::c_ulong,
    pub bind: bool,
    pub recursive: bool,
    pub data: Vec<String>,
}

pub(crate) fn parse_options(opts: &[String]) -> Options {
    let mut o = Options::default();
    for opt in opts {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                continue;
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                o.propagation |= propagation_flag(opt);
                continue;
            }
            "tmpcopyup" | "defaults" | "remount" => continue,
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
        o.clear |= clear;
    }
    o
}

pub(crate) fn propagation_flag(name: &str) -> libc::c_ulong {
    let rec = if name.starts_with('r') && name != "rw" {
        libc::MS_REC
    } else {
        0
    };
    rec | match name.trim_start_matches('r') {
        "private" => libc::MS_PRIVATE,
        "shared" => libc::MS_SHARED,
        "slave" => libc::MS_SLAVE,
        "unbindable" => libc::MS_UNBINDABLE,
        _ => 0,
    }
}

fn err(what: String) -> impl FnOnce(std::io::Error) -> ChildError {
    move |e| ChildError::io(what, e)
}

/// Opens `path` inside `root`, creating it (directories, and an empty file
/// as the last component when `file`) when missing.
pub(crate) fn open_or_create(
    root: BorrowedFd<'_>,
    path: &str,
    file: bool,
) -> Result<OwnedFd, ChildError> {
    let create = match file {
        true => Create::DirsAndFile,
        false => Create::Dirs,
    };
    fsat::open_under(
        Root::Dir(root),
        path.as_bytes(),
        Links::InRoot,
        create,
        Access::Path,
    )
    .map_err(|e| match e {
        WalkError::Create { source, .. } => {
            ChildError::io(format!("creating mount target {path}"), source)
        }
        WalkError::Io {
            at: Some(dir),
            source,
        } => ChildError::io(
            format!(
                "mount target {path}: opening {}",
                String::from_utf8_lossy(&dir)
            ),
            source,
        ),
        WalkError::Io { at: None, source } => {
            ChildError::io(format!("mount target {path}"), source)
        }
        // Not returned when links resolve in the root.
        WalkError::Symlink(_) | WalkError::NotDir(_) | WalkError::Missing(_) => ChildError::io(
            format!("mount target {path}"),
            std::io::Error::from_raw_os_error(libc::EINVAL),
        ),
    })
}

/// Mounts one entry of `config.json`'s `mounts` under `root` (the rootfs,
/// not yet the process's root). `cgroup_dirs` are the container's cgroup
/// directories, for a `cgroup` mount on a v1 host.
pub(crate) fn mount_one(
    root: BorrowedFd<'_>,
    m: &OciMount,
    cgroup_dirs: &[(String, std::path::PathBuf)],
) -> Result<(), ChildError> {
    let o = parse_options(&m.options);
    let bind = o.bind || m.fstype == "bind";
    if m.fstype == "cgroup" || m.fstype == "cgroup2" {
        return mount_cgroup(root, m, &o, cgroup_dirs);
    }
    let file_source = bind
        && std::fs::metadata(&m.source)
            .map(|md| !md.is_dir())
            .unwrap_or(false);
    let target = open_or_create(root, &m.destination, file_source)?;
    let what = || format!("mounting {} on {}", m.source, m.destination);
    if bind {
        let mut flags = libc::MS_BIND;
        if o.recursive {
            flags |= libc::MS_REC;
        }
        osys::mount(Some(&m.source), &fd_path(target.as_fd()), None, flags, None)
            .map_err(err(what()))?;
        let top = reopen(root, &m.destination)?;
        if o.flags != 0 {
            osys::mount(
                None,
                &fd_path(top.as_fd()),
                None,
                libc::MS_REMOUNT | libc::MS_BIND | o.flags,
                None,
            )
            .map_err(err(format!("applying options of {}", m.destination)))?;
        }
        if o.propagation != 0 {
            osys::mount(None, &fd_path(top.as_fd()), None, o.propagation, None)
                .map_err(err(format!("propagation of {}", m.destination)))?;
        }
        return Ok(());
    }
    let data = o.data.join(",");
    let source = if m.source.is_empty() {
        m.fstype.as_str()
    } else {
        m.source.as_str()
    };
    let r = osys::mount(
        Some(source),
        &fd_path(target.as_fd()),
        Some(&m.fstype),
        o.flags,
        (!data.is_empty()).then_some(data.as_str()),
    );
    match r {
        // sysfs and mqueue of a namespace the container's user namespace
        // does not own: a recursive read-only bind of the host's instead,
        // as runc does.
        Err(e)
            if e.raw_os_error() == Some(libc::EPERM)
                && (m.fstype == "sysfs" || m.fstype == "mqueue") =>
        {
            let host = if m.fstype == "sysfs" {
                "/sys"
            } else {
                "/dev/mqueue"
            };
            osys::mount(
                Some(host),
                &fd_path(target.as_fd()),
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )
            .map_err(err(what()))?;
            let top = reopen(root, &m.destination)?;
            osys::mount(
                None,
                &fd_path(top.as_fd()),
                None,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | o.flags,
                None,
            )
            .map_err(err(what()))
        }
        other => other.map_err(err(what())),
    }?;
    if o.propagation != 0 {
        let top = reopen(root, &m.destination)?;
        osys::mount(None, &fd_path(top.as_fd()), None, o.propagation, None)
            .map_err(err(format!("propagation of {}", m.destination)))?;
    }
    Ok(())
}

fn reopen(root: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, ChildError> {
    sys::openat2(root, path, libc::O_PATH, IN_ROOT).map_err(err(format!("reopening {path}")))
}

/// `cgroup` mounts: cgroup2 where the host has a unified hierarchy only;
/// otherwise a tmpfs with a bind of the container's own directory of each
/// v1 hierarchy (what the container sees through its cgroup namespace).
fn mount_cgroup(
    root: BorrowedFd<'_>,
    m: &OciMount,
    o: &Options,
    dirs: &[(String, std::path::PathBuf)],
) -> Result<(), ChildError> {
    let target = open_or_create(root, &m.destination, false)?;
    let ro = o.flags & libc::MS_RDONLY;
    let base = o.flags & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
    let only_v2 = dirs.iter().all(|(name, _)| name.is_empty());
    if only_v2 {
        return osys::mount(
            Some("cgroup2"),
            &fd_path(target.as_fd()),
            Some("cgroup2"),
            base | ro,
            None,
        )
        .map_err(err(format!("mounting cgroup2 on {}", m.destination)));
    }
    osys::mount(
        Some("tmpfs"),
        &fd_path(target.as_fd()),
        Some("tmpfs"),
        base,
        Some("mode=755,size=64k"),
    )
    .map_err(err(format!("mounting a tmpfs on {}", m.destination)))?;
    for (name, dir) in dirs {
        let sub = if name.is_empty() { "unified" } else { name };
        let dest = format!("{}/{sub}", m.destination.trim_end_matches('/'));
        let t = open_or_create(root, &dest, false)?;
        osys::mount(
            dir.to_str(),
            &fd_path(t.as_fd()),
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )
        .map_err(err(format!("binding cgroup {} on {dest}", dir.display())))?;
        let top = reopen(root, &dest)?;
        osys::mount(
            None,
            &fd_path(top.as_fd()),
            None,
            libc::MS_REMOUNT | libc::MS_BIND | base | ro,
            None,
        )
        .map_err(err(format!("restricting {dest}")))?;
    }
    if ro != 0 {
        let top = reopen(root, &m.destination)?;
        osys::mount(
            None,
            &fd_path(top.as_fd()),
            None,
            libc::MS_REMOUNT | base | ro,
            None,
        )
        .map_err(err(format!("making {} read-only", m.destination)))?;
    }
    Ok(())
}

/// The devices of `linux.devices` and runtime-spec's default devices.
/// With a user namespace (no mknod) each is a bind of the host's node.
pub(crate) fn create_devices(
    root: BorrowedFd<'_>,
    devices: &[OciDevice],
) -> Result<(), ChildError> {
    for d in devices {
        let (parent, name) = match d.path.rsplit_once('/') {
            Some((p, n)) if !n.is_empty() => (if p.is_empty() { "/" } else { p }, n),
            _ => {
                return Err(ChildError::msg(
                    "device",
                    format!("bad device path {:?}", d.path),
                ))
            }
        };
        let dir = open_or_create(root, parent, false)?;
        let dir = sys::openat2(dir.as_fd(), ".", libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(err(format!("opening {parent}")))?;
        if sys::openat2(dir.as_fd(), name, libc::O_PATH, libc::RESOLVE_BENEATH).is_ok() {
            continue; // already there (a bind from the config)
        }
        let kind = match d.kind {
            'b' => libc::S_IFBLK,
            'p' => libc::S_IFIFO,
            _ => libc::S_IFCHR,
        };
        let dev = libc::makedev(d.major as u32, d.minor as u32);
        match osys::mknodat(dir.as_fd(), name, kind | (d.mode & 0o7777), dev) {
            Ok(()) => {
                let node = sys::openat2(dir.as_fd(), name, libc::O_PATH, libc::RESOLVE_BENEATH)
                    .map_err(err(format!("opening device {}", d.path)))?;
                osys::fchown(node.as_fd(), d.uid, d.gid)
                    .map_err(err(format!("owner of device {}", d.path)))?;
                // mknod applied the umask; the config's mode is exact.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    fd_path(node.as_fd()),
                    std::fs::Permissions::from_mode(d.mode & 0o7777),
                )
                .map_err(err(format!("mode of device {}", d.path)))?;
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                sys::create_file(dir.as_fd(), name, 0o644)
                    .map_err(err(format!("creating {}", d.path)))?;
                let node = sys::openat2(dir.as_fd(), name, libc::O_PATH, libc::RESOLVE_BENEATH)
                    .map_err(err(format!("opening device {}", d.path)))?;
                osys::mount(
                    Some(&d.path),
                    &fd_path(node.as_fd()),
                    None,
                    libc::MS_BIND,
                    None,
                )
                .map_err(err(format!("binding host device {}", d.path)))?;
            }
            Err(e) => return Err(ChildError::io(format!("creating device {}", d.path), e)),
        }
    }
    Ok(())
}

/// `linux.maskedPaths`, inside the new root: files behind /dev/null,
/// directories behind an empty read-only tmpfs; absent paths are skipped.
pub(crate) fn mask(path: &str) -> Result<(), ChildError> {
    let root = std::fs::File::open("/").map_err(err("opening /".into()))?;
    let fd = match sys::openat2(root.as_fd(), path, libc::O_PATH, IN_ROOT) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(ChildError::io(format!("masking {path}"), e)),
    };
    let is_dir = std::fs::metadata(fd_path(fd.as_fd()))
        .map(|m| m.is_dir())
        .unwrap_or(false);
    let r = if is_dir {
        osys::mount(
            Some("tmpfs"),
            &fd_path(fd.as_fd()),
            Some("tmpfs"),
            libc::MS_RDONLY,
            Some("size=0"),
        )
    } else {
        osys::mount(
            Some("/dev/null"),
            &fd_path(fd.as_fd()),
            None,
            libc::MS_BIND,
            None,
        )
    };
    r.map_err(err(format!("masking {path}")))
}

/// `linux.readonlyPaths`: a read-only bind of each onto itself.
pub(crate) fn make_readonly(path: &str) -> Result<(), ChildError> {
    let root = std::fs::File::open("/").map_err(err("opening /".into()))?;
    let fd = match sys::openat2(root.as_fd(), path, libc::O_PATH, IN_ROOT) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(ChildError::io(format!("read-only {path}"), e)),
    };
    osys::mount(
        Some(&fd_path(fd.as_fd())),
        &fd_path(fd.as_fd()),
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(err(format!("binding {path}")))?;
    let top = sys::openat2(root.as_fd(), path, libc::O_PATH, IN_ROOT)
        .map_err(err(format!("reopening {path}")))?;
    osys::mount(
        None,
        &fd_path(top.as_fd()),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
    .or_else(|_| {
        osys::mount(
            None,
            &fd_path(top.as_fd()),
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )
    })
    .map_err(err(format!("making {path} read-only")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_options(&[
            "rbind".into(),
            "ro".into(),
            "nosuid".into(),
            "rprivate".into(),
            "size=65536k".into(),
            "mode=755".into(),
        ]);
        assert!(o.bind && o.recursive);
        assert_eq!(o.flags, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(o.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(o.data, vec!["size=65536k", "mode=755"]);
        let rw = parse_options(&["ro".into(), "rw".into()]);
        assert_eq!(rw.flags, 0);
    }
}
