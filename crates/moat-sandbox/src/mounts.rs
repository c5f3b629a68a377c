//! The container's filesystem view, assembled in the container's own mount
//! namespace before `pivot_root`. Defensive rule 1 in practice:
//!
//! - every mount is created detached (`fsopen`/`fsmount`, `open_tree`) and
//!   attached with `move_mount` onto a *file descriptor*, never onto a joined
//!   path string;
//! - every target inside the image root is opened with
//!   `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so a symlink in the
//!   image (`/tmp -> /etc`, `/proc -> /`) resolves inside the root and can
//!   never redirect a mount to the host (CVE-2021-30465, CVE-2025-31133);
//! - targets inside filesystems moat just created (`/dev`, `/proc`) are
//!   opened with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`;
//! - the image root itself is a read-only, nosuid, nodev bind of the
//!   store's rootfs: nothing is copied and nothing is written.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use moat_policy::plan::MountPlan;

use crate::sys::{self, FsContext};
use crate::ChildError;

const IN_ROOT: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
const BENEATH: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// The plan's mounts minus the built-in default tmpfs mounts (`optional`,
/// e.g. baseline's `/run`) whose target directory the image lacks: each
/// skipped one gets one notice line on stderr. Runs in the parent before
/// anything starts, resolving inside the root exactly as the child does. A
/// mount the policy file asks for is always kept, so that the child refuses
/// with a clear error when its target is missing.
pub(crate) fn without_absent_defaults(rootfs: &Path, mounts: &[MountPlan]) -> Vec<MountPlan> {
    let Ok(root) = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(rootfs)
    else {
        // The child reports an unusable rootfs with its own clear error.
        return mounts.to_vec();
    };
    mounts
        .iter()
        .filter(|m| match m {
            MountPlan::Tmpfs {
                destination,
                optional: true,
                ..
            } => {
                let absent = matches!(
                    sys::openat2(root.as_fd(), destination, libc::O_PATH | libc::O_DIRECTORY, IN_ROOT),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT)
                );
                if absent {
                    eprintln!("moat: notice: the image has no {destination}; skipping its tmpfs");
                }
                !absent
            }
            _ => true,
        })
        .cloned()
        .collect()
}

/// Device nodes bind-mounted from the host (a user namespace cannot mknod).
/// `/dev/tty` (5,0: "my controlling terminal") only with `-t`, where the
/// controlling terminal is the container's own pty; without `-t` the
/// container is a session without a terminal and has no `/dev/tty` (rule 11).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// Files under /proc hidden behind /dev/null.
const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "sysrq-trigger",
    "latency_stats",
    "kallsyms",
];
/// Directories under /proc hidden behind an empty read-only tmpfs.
const PROC_MASKED_DIRS: &[&str] = &["acpi", "scsi"];
/// Directories under /proc made read-only.
const PROC_READONLY: &[&str] = &["sys", "irq", "bus", "fs"];

fn tmpfs(size: u64, mode: &str, attrs: u64) -> std::io::Result<OwnedFd> {
    let fs = FsContext::open("tmpfs")?;
    fs.set_string("size", &size.to_string())?;
    fs.set_string("mode", mode)?;
    fs.mount(attrs)
}

/// Opens a directory inside the image root, following symlinks only
/// within the root.
fn dir_in_root(root: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, ChildError> {
    open_in_root(root, path, IN_ROOT)
}

/// Like [`dir_in_root`] but refuses symlinks anywhere in the path: used for
/// /dev, /proc and /sys, which no legitimate image makes symlinks.
fn real_dir_in_root(root: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, ChildError> {
    open_in_root(root, path, IN_ROOT | libc::RESOLVE_NO_SYMLINKS)
}

fn open_in_root(root: BorrowedFd<'_>, path: &str, resolve: u64) -> Result<OwnedFd, ChildError> {
    sys::openat2(root, path, libc::O_PATH | libc::O_DIRECTORY, resolve).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) && resolve & libc::RESOLVE_NO_SYMLINKS == 0 {
            ChildError::msg(
                format!("mount target {path}"),
                format!("{path} is a symlink loop in the image"),
            )
        } else if e.raw_os_error() == Some(libc::ELOOP) {
            ChildError::msg(
                format!("mount target {path}"),
                format!("{path} is a symlink in the image; moat refuses to mount over it"),
            )
        } else if e.raw_os_error() == Some(libc::ENOENT) {
            ChildError::msg(
                format!("mount target {path}"),
                format!("the image has no directory {path}; moat mounts there but never writes to the image"),
            )
        } else {
            ChildError::io(format!("opening mount target {path} inside the root"), e)
        }
    })
}

fn attach(mnt: &OwnedFd, target: &OwnedFd, what: &str) -> Result<(), ChildError> {
    sys::move_mount_fd(mnt.as_fd(), target.as_fd())
        .map_err(|e| ChildError::io(format!("attaching {what}"), e))
}

/// The image root: a detached, read-only, nosuid, nodev clone of the
/// store's rootfs. The container process runs as an unprivileged host uid
/// from its first instruction and touches no store path (the store is
/// host root's, 0700): the supervisor started it in the rootfs directory
/// (the kernel moves the working directory into the new mount namespace),
/// and the clone, the supervisor's idmapped one or else a clone of the
/// working directory made here, is attached onto that directory.
pub(crate) struct PreparedRoot {
    mnt: OwnedFd,
    /// A sysfs made by the supervisor (see [`sysfs`]), else made here.
    sysfs: Option<OwnedFd>,
    /// The supervisor's mount of the resolver file, for /etc/resolv.conf.
    resolv: Option<OwnedFd>,
}

impl PreparedRoot {
    pub(crate) fn with_sysfs(mut self, sysfs: Option<OwnedFd>) -> Self {
        self.sysfs = sysfs;
        self
    }

    pub(crate) fn with_resolv(mut self, resolv: Option<OwnedFd>) -> Self {
        self.resolv = resolv;
        self
    }
}

/// A read-only sysfs of the calling thread's network namespace, detached.
pub(crate) fn sysfs() -> std::io::Result<OwnedFd> {
    FsContext::open("sysfs").and_then(|fs| {
        fs.mount(
            sys::MOUNT_ATTR_RDONLY
                | sys::MOUNT_ATTR_NOSUID
                | sys::MOUNT_ATTR_NODEV
                | sys::MOUNT_ATTR_NOEXEC,
        )
    })
}

/// Makes every mount private and takes the supervisor's idmapped clone,
/// or clones the working directory (no path walk, so no permission on the
/// store is needed) and makes it read-only, nosuid, nodev.
pub(crate) fn prepare_root(idmapped: Option<OwnedFd>) -> Result<PreparedRoot, ChildError> {
    sys::make_rprivate().map_err(|e| ChildError::io("making / private", e))?;
    let mnt = match idmapped {
        Some(m) => m,
        None => {
            let m = sys::open_tree(sys::cwd(), "", sys::OPEN_TREE_CLONE)
                .map_err(|e| ChildError::io("cloning the rootfs", e))?;
            sys::mount_setattr(
                m.as_fd(),
                sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                0,
                false,
            )
            .map_err(|e| ChildError::io("making the rootfs read-only", e))?;
            m
        }
    };
    Ok(PreparedRoot {
        mnt,
        sysfs: None,
        resolv: None,
    })
}

/// Builds the whole tree and returns a descriptor of the new root, ready
/// for `pivot_root`. `console` is the host path of the pty peer for `-t`.
pub(crate) fn build(
    prepared: PreparedRoot,
    mounts: &[MountPlan],
    volumes: Vec<OwnedFd>,
    console: Option<&str>,
) -> Result<OwnedFd, ChildError> {
    let mut volumes = volumes.into_iter();
    // The image root (read-only, nosuid, nodev already), attached over the
    // rootfs directory, which is this process's working directory.
    let root = prepared.mnt;
    sys::move_mount_to_cwd(root.as_fd()).map_err(|e| ChildError::io("attaching the rootfs", e))?;

    // Policy mounts (tmpfs by default at /tmp and /run, volumes).
    for m in mounts {
        match m {
            MountPlan::Tmpfs {
                destination,
                size_bytes,
                mode,
                ..
            } => {
                let mode = match mode {
                    Some(m) => format!("{m:o}"),
                    None if destination == "/tmp" => "1777".to_string(),
                    None => "755".to_string(),
                };
                let mnt = tmpfs(
                    *size_bytes,
                    &mode,
                    sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                )
                .map_err(|e| ChildError::io(format!("creating tmpfs for {destination}"), e))?;
                let t = dir_in_root(root.as_fd(), destination)?;
                attach(&mnt, &t, destination)?;
            }
            MountPlan::Volume { destination, .. } | MountPlan::Named { destination, .. } => {
                // Made, restricted and idmapped by the supervisor
                // (`volumes::prepare`), in the plan's order. The target
                // may not go through any symbolic link, even one inside
                // the root: an image (or an earlier volume) cannot
                // redirect where a volume lands.
                let mnt = volumes.next().ok_or_else(|| {
                    ChildError::msg(
                        format!("volume at {destination}"),
                        "the supervisor prepared no mount for it".to_string(),
                    )
                })?;
                let t = open_in_root(
                    root.as_fd(),
                    destination,
                    IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
                )?;
                attach(&mnt, &t, destination)?;
            }
        }
    }

    if let Some(resolv) = &prepared.resolv {
        attach_resolv(root.as_fd(), resolv)?;
    }
    build_dev(root.as_fd(), console)?;
    build_proc(root.as_fd())?;

    // /sys: a fresh sysfs of this network namespace, read-only.
    let sysfs = match prepared.sysfs {
        Some(m) => m,
        None => sysfs().map_err(|e| ChildError::io("mounting sysfs", e))?,
    };
    let t = real_dir_in_root(root.as_fd(), "/sys")?;
    attach(&sysfs, &t, "/sys")?;

    Ok(root)
}

/// The resolver file over the image's `/etc/resolv.conf`, which must be a
/// regular file (moat adds an empty one to every rootfs it materialises;
/// it never writes to the image at run time). Resolved inside the root: a
/// symlink there stays inside the root.
fn attach_resolv(root: BorrowedFd<'_>, mnt: &OwnedFd) -> Result<(), ChildError> {
    const PATH: &str = "/etc/resolv.conf";
    let what = "mount target /etc/resolv.conf (network.dns)";
    let t = sys::openat2(root, PATH, libc::O_PATH, IN_ROOT).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOENT) {
            ChildError::msg(
                what,
                "the image has no /etc/resolv.conf; moat mounts the resolver's file over it but never writes to the image: add an empty /etc/resolv.conf to the rootfs, or drop `network.dns`".to_string(),
            )
        } else {
            ChildError::io(format!("opening {PATH} inside the root"), e)
        }
    })?;
    let st =
        rustix::fs::fstat(&t).map_err(|e| ChildError::io(format!("fstat {PATH}"), e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(ChildError::msg(
            what,
            "/etc/resolv.conf in the image is not a regular file; moat mounts the resolver's file only over one".to_string(),
        ));
    }
    attach(mnt, &t, PATH)
}

/// A minimal /dev: a small tmpfs with the standard devices bound from the
/// host, its own devpts instance, /dev/shm, the usual symlinks and, for
/// `-t`, the console. Made read-only once populated (except /dev/shm).
fn build_dev(root: BorrowedFd<'_>, console: Option<&str>) -> Result<(), ChildError> {
    let dev = tmpfs(
        256 * 1024,
        "755",
        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
    )
    .map_err(|e| ChildError::io("creating /dev", e))?;
    let t = real_dir_in_root(root, "/dev")?;
    attach(&dev, &t, "/dev")?;
    let d = dev.as_fd();
    let step = |what: &str| format!("populating /dev ({what})");

    let tty: &[&str] = if console.is_some() { &["tty"] } else { &[] };
    for name in DEVICES.iter().chain(tty) {
        sys::create_file(d, name, 0o666).map_err(|e| ChildError::io(step(name), e))?;
        let host = format!("/dev/{name}");
        let src = sys::open_tree(sys::cwd(), &host, sys::OPEN_TREE_CLONE)
            .map_err(|e| ChildError::io(step(&host), e))?;
        let tgt = sys::openat2(d, name, libc::O_PATH | libc::O_NOFOLLOW, BENEATH)
            .map_err(|e| ChildError::io(step(name), e))?;
        attach(&src, &tgt, &host)?;
    }
    if let Some(console) = console {
        sys::create_file(d, "console", 0o620).map_err(|e| ChildError::io(step("console"), e))?;
        // By path: a clone must come from this mount namespace's copy of
        // the host's devpts, not from the descriptor's original mount.
        let src = sys::open_tree(sys::cwd(), console, sys::OPEN_TREE_CLONE)
            .map_err(|e| ChildError::io(step("console"), e))?;
        let tgt = sys::openat2(d, "console", libc::O_PATH | libc::O_NOFOLLOW, BENEATH)
            .map_err(|e| ChildError::io(step("console"), e))?;
        attach(&src, &tgt, "/dev/console")?;
    }

    sys::mkdirat(d, "pts", 0o755).map_err(|e| ChildError::io(step("pts"), e))?;
    let pts = FsContext::open("devpts")
        .and_then(|fs| {
            fs.set_string("ptmxmode", "0666")?;
            fs.set_string("mode", "0620")?;
            fs.set_string("gid", "5")?;
            fs.mount(sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC)
        })
        .map_err(|e| ChildError::io("mounting /dev/pts", e))?;
    let tgt = sys::openat2(d, "pts", libc::O_PATH | libc::O_DIRECTORY, BENEATH)
        .map_err(|e| ChildError::io(step("pts"), e))?;
    attach(&pts, &tgt, "/dev/pts")?;

    sys::mkdirat(d, "shm", 0o1777).map_err(|e| ChildError::io(step("shm"), e))?;
    let shm = tmpfs(
        64 << 20,
        "1777",
        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC,
    )
    .map_err(|e| ChildError::io("creating /dev/shm", e))?;
    let tgt = sys::openat2(d, "shm", libc::O_PATH | libc::O_DIRECTORY, BENEATH)
        .map_err(|e| ChildError::io(step("shm"), e))?;
    attach(&shm, &tgt, "/dev/shm")?;

    // /dev/mqueue: the IPC namespace's own POSIX message queues, as runc
    // mounts them.
    sys::mkdirat(d, "mqueue", 0o1777).map_err(|e| ChildError::io(step("mqueue"), e))?;
    let mq = FsContext::open("mqueue")
        .and_then(|fs| {
            fs.mount(sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC)
        })
        .map_err(|e| ChildError::io("mounting /dev/mqueue", e))?;
    let tgt = sys::openat2(d, "mqueue", libc::O_PATH | libc::O_DIRECTORY, BENEATH)
        .map_err(|e| ChildError::io(step("mqueue"), e))?;
    attach(&mq, &tgt, "/dev/mqueue")?;

    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys::symlinkat(target, d, name).map_err(|e| ChildError::io(step(name), e))?;
    }
    sys::mount_setattr(d, sys::MOUNT_ATTR_RDONLY, 0, false)
        .map_err(|e| ChildError::io("making /dev read-only", e))?;
    Ok(())
}

/// /proc of the container's PID namespace, with the host-global files
/// masked and the tunables read-only.
fn build_proc(root: BorrowedFd<'_>) -> Result<(), ChildError> {
    let proc_mnt = FsContext::open("proc")
        .and_then(|fs| {
            fs.mount(sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC)
        })
        .map_err(|e| ChildError::io("mounting /proc", e))?;
    let t = real_dir_in_root(root, "/proc")?;
    attach(&proc_mnt, &t, "/proc")?;
    let p = proc_mnt.as_fd();
    let missing = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOENT);

    for name in PROC_READONLY {
        let tgt = match sys::openat2(p, name, libc::O_PATH | libc::O_DIRECTORY, BENEATH) {
            Ok(t) => t,
            Err(e) if missing(&e) => continue,
            Err(e) => return Err(ChildError::io(format!("opening /proc/{name}"), e)),
        };
        let mnt = sys::open_tree(p, name, sys::OPEN_TREE_CLONE)
            .map_err(|e| ChildError::io(format!("cloning /proc/{name}"), e))?;
        sys::mount_setattr(
            mnt.as_fd(),
            sys::MOUNT_ATTR_RDONLY
                | sys::MOUNT_ATTR_NOSUID
                | sys::MOUNT_ATTR_NODEV
                | sys::MOUNT_ATTR_NOEXEC,
            0,
            false,
        )
        .map_err(|e| ChildError::io(format!("making /proc/{name} read-only"), e))?;
        attach(&mnt, &tgt, &format!("/proc/{name}"))?;
    }
    for name in PROC_MASKED_FILES {
        let tgt = match sys::openat2(p, name, libc::O_PATH | libc::O_NOFOLLOW, BENEATH) {
            Ok(t) => t,
            Err(e) if missing(&e) => continue,
            Err(e) => return Err(ChildError::io(format!("opening /proc/{name}"), e)),
        };
        let null = sys::open_tree(sys::cwd(), "/dev/null", sys::OPEN_TREE_CLONE)
            .map_err(|e| ChildError::io("cloning /dev/null", e))?;
        attach(&null, &tgt, &format!("mask over /proc/{name}"))?;
    }
    for name in PROC_MASKED_DIRS {
        let tgt = match sys::openat2(p, name, libc::O_PATH | libc::O_DIRECTORY, BENEATH) {
            Ok(t) => t,
            Err(e) if missing(&e) => continue,
            Err(e) => return Err(ChildError::io(format!("opening /proc/{name}"), e)),
        };
        let empty = tmpfs(
            4096,
            "555",
            sys::MOUNT_ATTR_RDONLY
                | sys::MOUNT_ATTR_NOSUID
                | sys::MOUNT_ATTR_NODEV
                | sys::MOUNT_ATTR_NOEXEC,
        )
        .map_err(|e| ChildError::io(format!("masking /proc/{name}"), e))?;
        attach(&empty, &tgt, &format!("mask over /proc/{name}"))?;
    }
    Ok(())
}
