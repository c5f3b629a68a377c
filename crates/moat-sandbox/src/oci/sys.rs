//! System calls the OCI init needs beyond the sandbox's own (`crate::sys`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The magic-link path of `fd` in this process's procfs: mounting onto it
/// mounts onto exactly the inode the descriptor holds (no path walk).
pub fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Classic `mount(2)`.
pub fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call, or NULL where mount(2) accepts NULL.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
}

/// `setns(2)` with a namespace file descriptor.
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // The same `setns(fd, nstype)`: rustix passes the CLONE_NEW* bits on.
    Ok(rustix::thread::move_into_thread_name_spaces(
        fd,
        rustix::thread::ThreadNameSpaceType::from_bits_retain(nstype as u32),
    )?)
}

/// `mknodat(2)` relative to `dir`.
pub fn mknodat(dir: BorrowedFd<'_>, name: &str, mode: u32, dev: u64) -> io::Result<()> {
    use rustix::fs::{FileType, Mode};
    Ok(rustix::fs::mknodat(
        dir,
        name,
        FileType::from_raw_mode(mode),
        Mode::from_raw_mode(mode & !libc::S_IFMT),
        dev,
    )?)
}

/// `fchownat(2)` on the descriptor itself (`AT_EMPTY_PATH`).
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    use rustix::fs::{AtFlags, Gid, Uid};
    Ok(rustix::fs::chownat(
        fd,
        c"",
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::EMPTY_PATH,
    )?)
}

pub fn umask(mask: u32) {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
}

/// Sends `msg` with this process's credentials (`SCM_CREDENTIALS`): the
/// kernel translates the pid into the receiver's PID namespace, which is
/// how the creator learns a PID 1's host pid.
pub fn send_with_creds(sock: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, UCred};
    let creds = UCred {
        pid: rustix::process::getpid(),
        uid: rustix::process::getuid(),
        gid: rustix::process::getgid(),
    };
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    cmsg.push(SendAncillaryMessage::ScmCredentials(creds));
    rustix::net::sendmsg(
        sock,
        &[io::IoSlice::new(msg)],
        &mut cmsg,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Turns on `SO_PASSCRED` so that [`recv_with_pid`] sees credentials.
pub fn pass_creds(sock: BorrowedFd<'_>) -> io::Result<()> {
    rustix::net::sockopt::set_socket_passcred(sock, true)?;
    Ok(())
}

/// Receives one message and the sender's pid (in this PID namespace).
pub fn recv_with_pid(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<i32>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(buf)];
    let r = rustix::net::recvmsg(sock, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC)?;
    let mut pid = None;
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmCredentials(c) = m {
            pid = Some(c.pid.as_raw_nonzero().get());
        }
    }
    Ok((r.bytes, pid))
}

/// Opens a namespace file (`/proc/PID/ns/net`, a bind-mounted netns).
pub fn open_ns(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(std::fs::File::open(path)?.into())
}

/// `waitpid` for a direct child; returns its exit code (128+N on signal N).
pub fn wait_child(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` outlives the call.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    })
}

/// Writes `/proc/self/oom_score_adj`.
pub fn set_oom_score_adj(v: i32) -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", v.to_string())
}
