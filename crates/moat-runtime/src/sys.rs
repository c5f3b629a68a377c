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

/// Sets `no_new_privs` and installs `prog` on this (single-threaded)
/// process.
pub fn install_seccomp(prog: &[moat_policy::plan::SockFilter]) -> io::Result<()> {
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
    rustix::thread::set_no_new_privs(true)?;
    // SAFETY: fprog points at `insns`, which outlives the call; the kernel
    // copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
