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

/// Drops this process's resident copies of its program text
/// (`MADV_DONTNEED` on the executable's read-only, executable mappings):
/// a long-running process keeps only the code it runs from then on (the
/// pages fault back in from the file as they are needed). Never touches
/// a writable or anonymous mapping, whose contents would be lost.
pub fn release_text() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(3);
        if perms != "r-xp" || path != exe.to_str() {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        // SAFETY: the range is a private, read-only, executable file
        // mapping of this program (never written): MADV_DONTNEED only drops
        // resident pages, which refault unchanged from the file.
        unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED) };
    }
}
