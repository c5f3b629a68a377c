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
