//! The few system calls the `moat` binary makes itself. All its `unsafe`
//! lives here.

use std::io;

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
