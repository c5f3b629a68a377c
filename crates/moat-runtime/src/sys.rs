//! The few calls of the runtime core that rustix does not wrap safely.

use std::io;

/// The result of [`fork`].
pub enum Forked {
    Child,
    Parent(i32),
}

/// `fork(2)`. The caller must be single-threaded (the monitor is: it runs
/// in a process of its own, started for it).
pub fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory-safety preconditions of its own; in a
    // single-threaded caller the child's copy of the address space is
    // consistent (no lock held by another thread).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// `_exit(2)`: ends the process without running destructors or atexit
/// handlers (the forked child must not flush the parent's buffers).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Gives up every capability but `keep` (capability numbers) for good:
/// the bounding set, then the effective, permitted and inheritable sets
/// (the uid stays).
pub fn drop_capabilities(keep: &[u32]) -> io::Result<()> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in (0..=last).filter(|c| !keep.contains(c)) {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    let kept = keep
        .iter()
        .fold(rustix::thread::CapabilitySet::empty(), |set, &c| {
            set | rustix::thread::CapabilitySet::from_bits_retain(1 << c)
        });
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: kept,
            permitted: kept,
            inheritable: rustix::thread::CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

/// Sets `no_new_privs` and installs `prog` as a seccomp filter: on every
/// thread of the process when `tsync` (`SECCOMP_FILTER_FLAG_TSYNC`), else
/// on the calling thread only (and the threads it creates afterwards). The
/// one installer of the runtime, the VM supervisor, moatd and the shim.
pub fn install_seccomp(prog: &[moat_policy::plan::SockFilter], tsync: bool) -> io::Result<()> {
    rustix::thread::set_no_new_privs(true)?;
    load_seccomp(prog, tsync)
}

/// [`install_seccomp`] without setting `no_new_privs`, for a process with
/// CAP_SYS_ADMIN whose children must not inherit the bit (the containerd
/// shim: its containers' bit is the site's decision).
pub fn install_seccomp_keeping_privileges(
    prog: &[moat_policy::plan::SockFilter],
    tsync: bool,
) -> io::Result<()> {
    load_seccomp(prog, tsync)
}

fn load_seccomp(prog: &[moat_policy::plan::SockFilter], tsync: bool) -> io::Result<()> {
    let mut insns: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: u16::try_from(insns.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        filter: insns.as_mut_ptr(),
    };
    let flags: libc::c_ulong = if tsync {
        libc::SECCOMP_FILTER_FLAG_TSYNC
    } else {
        0
    };
    // SAFETY: fprog points at `insns`, which outlives the call; the kernel
    // copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    match r {
        0 => Ok(()),
        r if r < 0 => Err(io::Error::last_os_error()),
        // TSYNC: the id of a thread that could not be synchronised.
        _ => Err(io::Error::from_raw_os_error(libc::ESRCH)),
    }
}

/// Drops this process's resident copies of its program's read-only
/// pages (`MADV_DONTNEED` on the executable's `r-xp` and `r--p` mappings
/// that hold no private copy of a page, per `/proc/self/smaps`): a
/// long-running process keeps only the code and constants it uses from
/// then on (they fault back in from the file as needed). A mapping with a
/// private page (relocated data made read-only) is never touched: its
/// contents would be lost.
pub fn release_text() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut current: Option<(usize, usize)> = None;
    let mut ranges = Vec::new();
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            current = None;
            let perms = f.next().unwrap_or_default();
            let path = f.nth(3);
            if (perms == "r-xp" || perms == "r--p") && path == exe.to_str() {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    current = Some((a, b));
                }
            }
        } else if first == "Anonymous:" {
            // No private (copied-on-write) page: only file pages to drop.
            if let (Some(r), Some("0")) = (current.take(), f.next()) {
                ranges.push(r);
            }
        }
    }
    for (a, b) in ranges {
        // SAFETY: the range is a private, read-only file mapping of this
        // program holding no private page (checked above): MADV_DONTNEED
        // only drops resident file pages, which refault unchanged.
        unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED) };
    }
}

// What the `moat` binary does for itself at start and to launch the
// monitor of a detached container (see `crate::startup`).

/// Marks every descriptor from 3 up close-on-exec: whatever the calling
/// shell left open (`exec 7</etc/shadow 8</`) never reaches a program moat
/// starts (QEMU, mkfs.erofs, veritysetup, helpers), whichever crate starts
/// it (the CVE-2024-21626 class). moat itself never passes inherited
/// descriptors on.
pub fn cloexec_inherited_fds() -> io::Result<()> {
    // SAFETY: no pointers; changes only descriptor flags of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11: one descriptor at a time, those that are open.
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if fd >= 3 {
            // SAFETY: fcntl on a descriptor number; a closed one gives EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// Restores the default action of SIGPIPE (the Rust runtime ignores it),
/// so that a command whose reader went away (`moat ... | head`) ends
/// quietly, as Unix tools do, instead of failing every later write and
/// panicking in `println!`.
pub fn default_sigpipe() {
    // SAFETY: `signal` with a valid signal number and `SIG_DFL` changes
    // only this process's disposition; no handler code is installed, and
    // `main` calls this before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Starts the monitor of a detached container: `exe args...` in a session
/// of its own (no controlling terminal, out of the caller's process
/// group, so the caller's Ctrl-C never reaches it), stdio on /dev/null,
/// `ready` as its descriptor 3. Does not wait for it.
pub fn spawn_monitor(
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    ready: std::os::fd::OwnedFd,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let fd = ready.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (setsid, dup2, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()?;
    drop(ready);
    Ok(())
}

/// Takes ownership of descriptor `fd`, which the process inherited open
/// (the monitor's start-report pipe); fails if it is not open.
pub fn adopt_fd(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl on a descriptor number has no memory effects.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and nothing else in this process
    // owns it: it was inherited for this purpose and is adopted once.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
