//! The host-side system calls of the vm backend. All `unsafe` of moat-vm
//! lives here.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::fs::{FlockOperation, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::{DumpableBehavior, Gid, Pid, Signal, Uid, WaitOptions};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another holder has it.
pub fn flock_try_exclusive(f: &File) -> io::Result<bool> {
    match rustix::fs::flock(f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub fn flock_exclusive(f: &File) -> io::Result<()> {
    loop {
        match rustix::fs::flock(f, FlockOperation::LockExclusive) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return Ok(r?),
        }
    }
}

/// A connected pair of stream sockets, both close-on-exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    unix_pair(SocketType::STREAM)
}

fn unix_pair(kind: SocketType) -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        kind,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let fl = rustix::fs::fcntl_getfl(fd)?;
    let fl = if on {
        fl | OFlags::NONBLOCK
    } else {
        fl & !OFlags::NONBLOCK
    };
    Ok(rustix::fs::fcntl_setfl(fd, fl)?)
}

pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: fds is a valid slice of pollfd.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(r as usize)
}

/// Signals the session handles: blocked and delivered through a signalfd.
pub struct SignalFd {
    pub file: File,
    old: libc::sigset_t,
}

pub const HANDLED_SIGNALS: [i32; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
];

impl SignalFd {
    pub fn new() -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: set is valid.
        unsafe { libc::sigemptyset(&mut set) };
        for s in HANDLED_SIGNALS {
            // SAFETY: set is initialised; s is a valid signal.
            unsafe { libc::sigaddset(&mut set, s) };
        }
        // SAFETY: both sets are valid. pthread_sigmask: only this thread.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: set is valid; -1 requests a new fd.
        let fd =
            check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
        Ok(SignalFd {
            // SAFETY: fresh descriptor now owned.
            file: unsafe { File::from_raw_fd(fd) },
            old,
        })
    }

    /// Pending signal numbers.
    pub fn read(&mut self) -> Vec<i32> {
        use std::io::Read;
        let mut out = Vec::new();
        let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        while let Ok(n) = self.file.read(&mut buf) {
            if n < buf.len() {
                break;
            }
            out.push(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as i32);
        }
        out
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in new().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

pub fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty on an fd number.
    unsafe { libc::isatty(fd) == 1 }
}

pub fn winsize(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Puts a terminal in raw mode; restores it on drop.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    pub fn enable(fd: RawFd) -> io::Result<RawMode> {
        // SAFETY: termios is plain data.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes one termios.
        check(unsafe { libc::tcgetattr(fd, &mut t) })?;
        let saved = t;
        // SAFETY: cfmakeraw edits the struct in place.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: t is a valid termios.
        check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) })?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the saved, valid termios.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Everything the jailed child does between fork and exec, prepared before
/// the fork so that the child only makes system calls (no allocation).
pub struct PreExec {
    /// `(source fd, target fd)`: duplicated onto the target, inheritable.
    pub fds: Vec<(RawFd, RawFd)>,
    /// Open `cgroup.procs` files to join.
    pub cgroup_procs: Vec<RawFd>,
    /// Host directories hidden behind an empty read-only tmpfs.
    pub hide: Vec<CString>,
    /// `/dev/shm`, if the host has it: replaced by a small private tmpfs.
    pub private_shm: Option<CString>,
    /// `/dev/mqueue`, if the host has it: replaced by the mqueue
    /// filesystem of the VMM's own IPC namespace.
    pub private_mqueue: Option<CString>,
    /// A network namespace the host prepared (egress: filtered, pasta
    /// attached) to join instead of a new, empty one.
    pub netns: Option<RawFd>,
}

impl PreExec {
    /// Runs in the forked child.
    ///
    /// # Safety
    /// Must only be called between fork and exec; it makes async-signal-safe
    /// system calls only and touches no allocator.
    pub unsafe fn apply(&self) -> io::Result<()> {
        // New session: Ctrl-C on moat's terminal does not reach the VMM.
        rustix::process::setsid()?;
        // Dies with its supervisor thread.
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        // The supervisor may already be gone (it was killed while we forked).
        if rustix::process::getppid() == Some(Pid::INIT) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        for &fd in &self.cgroup_procs {
            // SAFETY: writes 1 byte from a static buffer to an open fd.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        match self.netns {
            // SAFETY: setns takes a descriptor held open by the parent
            // (inherited across the fork) and a flag.
            Some(fd) => check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }).map(drop)?,
            None => flags |= libc::CLONE_NEWNET,
        }
        // SAFETY: unshare takes flags only (the namespaces to leave).
        check(unsafe { libc::unshare(flags) })?;
        // Makes our mounts private. The paths below are C strings made
        // before the fork: rustix passes them as they are (no allocation).
        make_mounts_private()?;
        let noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        for dir in &self.hide {
            // Missing dirs are skipped.
            let _ = rustix::mount::mount(
                c"tmpfs",
                dir.as_c_str(),
                c"tmpfs",
                MountFlags::RDONLY | noexec,
                c"size=4k,mode=755",
            );
        }
        if let Some(shm) = &self.private_shm {
            rustix::mount::mount(
                c"tmpfs",
                shm.as_c_str(),
                c"tmpfs",
                noexec,
                c"size=1m,nr_inodes=64,mode=1777",
            )?;
        }
        if let Some(mq) = &self.private_mqueue {
            // An mqueue filesystem mounted now belongs to the new IPC
            // namespace.
            rustix::mount::mount(c"mqueue", mq.as_c_str(), c"mqueue", noexec, None)?;
        }
        // Two phases, so that a source that happens to sit on another
        // source's target number is not overwritten before it is used.
        let mut high: [RawFd; 64] = [-1; 64];
        if self.fds.len() > high.len() {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        for (i, &(from, _)) in self.fds.iter().enumerate() {
            // SAFETY: duplicates an fd we own onto a number >= 256 (above
            // every target number), close-on-exec.
            high[i] = check(unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 256) })?;
        }
        for (i, &(_, to)) in self.fds.iter().enumerate() {
            // SAFETY: dup2 onto the target number; the new fd is inheritable.
            check(unsafe { libc::dup2(high[i], to) })?;
        }
        // Nothing else crosses the exec: whatever moat inherited or opened
        // (a caller's `exec 7</etc/shadow`, the cgroup files above) becomes
        // close-on-exec (CVE-2024-21626 class).
        let mut keep: [RawFd; 64] = [-1; 64];
        for (i, &(_, to)) in self.fds.iter().enumerate() {
            keep[i] = to;
        }
        cloexec_all_but(&mut keep[..self.fds.len()])
    }
}

/// Marks every descriptor from 3 up close-on-exec, except those in `keep`
/// (sorted in place). No allocation: safe between fork and exec.
pub fn cloexec_all_but(keep: &mut [RawFd]) -> io::Result<()> {
    keep.sort_unstable();
    moat_privdrop::cloexec_from_3_except(keep)
}

pub fn getrandom_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: fills the 8-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    if n != 8 {
        // Fall back to something unique enough for a name.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

/// Spawns `cmd` in a new session (not killed by Ctrl-C on moat's terminal).
pub fn spawn_detached(cmd: &mut std::process::Command) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid and cloexec_all_but are async-signal-safe system calls
    // that allocate nothing.
    unsafe {
        cmd.pre_exec(|| {
            check(libc::setsid())?;
            cloexec_all_but(&mut [])
        });
    }
    cmd.spawn()
}

/// `prog` as the kernel's `struct sock_filter` array.
#[cfg(test)]
fn to_kernel(prog: &[moat_policy::plan::SockFilter]) -> Vec<libc::sock_filter> {
    prog.iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// How a [`probe_filter`] child ended.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Exited(i32),
    Signaled(i32),
}

/// Forks a child that installs `prog` on itself and makes system call `nr`
/// with arguments `(-1, FIONREAD, 0)`, then exits 0. Test helper.
#[cfg(test)]
pub fn probe_filter(prog: &[moat_policy::plan::SockFilter], nr: i64) -> io::Result<ProbeOutcome> {
    let mut insns = to_kernel(prog);
    let fprog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_mut_ptr(),
    };
    // SAFETY: the child only makes raw system calls on data prepared before
    // the fork (no allocation, no locks) and ends with _exit.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: raw system calls in the forked child; see above. No core
        // dump for the SIGSYS (not dumpable).
        unsafe {
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(101);
            }
            let f: libc::c_ulong = 0;
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                f,
                &fprog as *const libc::sock_fprog,
            ) != 0
            {
                libc::_exit(102);
            }
            libc::syscall(nr, -1i64, libc::FIONREAD as i64, 0i64);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; status is a valid int.
        match check(unsafe { libc::waitpid(pid, &mut status, 0) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => {
                r?;
                break;
            }
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        ProbeOutcome::Signaled(libc::WTERMSIG(status))
    } else {
        ProbeOutcome::Exited(libc::WEXITSTATUS(status))
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's `(effective, permitted, inheritable)` capability sets.
fn capget() -> io::Result<(u64, u64, u64)> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data words (version 3 layout) live for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &header as *const CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

/// Gives up root for good: the capability bounding set emptied, no
/// supplementary groups, real, effective and saved gid and uid all `uid`
/// (which empties the permitted, effective and ambient sets), the
/// inheritable set emptied, not dumpable (its `/proc` entries stay root's).
/// Then checks that this is what the kernel holds.
///
/// With `whole_process`, glibc's wrappers change the ids of every thread;
/// otherwise raw system calls change only the calling thread (a host that
/// embeds the backend and keeps its other threads). The bounding set is
/// always the calling thread's (nothing here execs again: its seccomp
/// filter forbids `execve`).
pub fn drop_privileges(uid: u32, whole_process: bool) -> io::Result<()> {
    // A credential change clears the parent-death signal: a detached
    // container's supervisor must still die with its monitor.
    let pdeathsig = rustix::process::parent_process_death_signal().unwrap_or(None);
    let parent = rustix::process::getppid();
    for cap in 0..64 {
        // SAFETY: integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return Err(e);
        }
    }
    let (u, g) = (uid as libc::uid_t, uid as libc::gid_t);
    if whole_process {
        // SAFETY: zero groups with a NULL list; then integer arguments.
        unsafe {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(g, g, g))?;
            check(libc::setresuid(u, u, u))?;
        }
    } else {
        // Raw system calls: this thread only.
        let (u, g) = (Uid::from_raw(u), Gid::from_raw(g));
        rustix::thread::set_thread_groups(&[])?;
        rustix::thread::set_thread_res_gid(g, g, g)?;
        rustix::thread::set_thread_res_uid(u, u, u)?;
    }
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and two data words (version 3 layout) live for the call.
    check_long(unsafe {
        libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr())
    })?;
    rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    if pdeathsig.is_some() {
        rustix::process::set_parent_process_death_signal(pdeathsig)?;
        if rustix::process::getppid() != parent {
            // The parent died before the signal was armed again.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    check(unsafe { libc::getresuid(&mut r, &mut e, &mut s) })?;
    let caps = capget()?;
    if [r, e, s].iter().any(|&x| x != u) || caps != (0, 0, 0) {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

fn check_long(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A connected pair of `SOCK_SEQPACKET` unix sockets, both close-on-exec
/// (the exec control channel: one message per request, boundaries kept).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    unix_pair(SocketType::SEQPACKET)
}

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// Sends `data` as one message with `fds` attached (`SCM_RIGHTS`).
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    assert!(fds.len() <= MAX_FDS);
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    loop {
        match rustix::net::sendmsg(
            sock,
            &[io::IoSlice::new(data)],
            &mut cmsg,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One received message: its length, the descriptors it carried (owned,
/// close-on-exec), and whether data or descriptors were cut off.
pub struct Received {
    pub len: usize,
    pub fds: Vec<OwnedFd>,
    pub truncated: bool,
}

/// Receives one message into `buf` with up to [`MAX_FDS`] descriptors
/// (`len` 0 with no descriptors: the peer closed).
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let r = loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        match rustix::net::recvmsg(sock, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => break r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    Ok(Received {
        len: r.bytes,
        fds,
        truncated: r.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC),
    })
}

/// What failed in the jail before the VMM ran, as the report pipe of
/// [`spawn_jailed`] carries it: a tag byte, then an errno (4 bytes) or an
/// [`moat_privdrop::ExecFailure`] (12 bytes).
pub const JAIL_NAMESPACES: u8 = 1;
pub const JAIL_PROC: u8 = 2;
pub const JAIL_PID_NAMESPACE: u8 = 3;
pub const JAIL_EXEC: u8 = 4;

/// Starts the jailed VMM without any helper program: a fork (the outer
/// process) puts itself into the VMM's cgroups and new mount, IPC, UTS and
/// network namespaces (`pre`), unshares a PID namespace and forks its
/// PID 1, a root process that mounts the namespace's own procfs
/// (`hidepid=2`) and forks the VMM's process, which drops every privilege
/// (`spec`, the shared sequence) and executes `exec`. The outer process
/// and PID 1 only wait and pass the exit status up (128 + signal for a
/// signal); each dies with its parent (parent-death signal), and PID 1's
/// death ends the namespace. Returns the outer pid and the read end of the
/// report pipe: end of file without a byte once the VMM executes.
///
/// Nothing in the children allocates: safe from a multi-threaded process.
pub fn spawn_jailed(
    pre: &PreExec,
    stdio: [BorrowedFd<'_>; 3],
    spec: &moat_privdrop::DropSpec,
    exec: &moat_privdrop::Exec,
) -> io::Result<(libc::pid_t, OwnedFd)> {
    let (report_r, report_w) = pipe()?;
    let stdio = stdio.map(|f| f.as_raw_fd());
    // SAFETY: the child runs only `jail_outer`, which makes system calls on
    // data prepared before the fork (no allocation, no lock) and never
    // returns, so no destructor of the parent's state runs in it.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: this is the child of the fork above.
        unsafe { jail_outer(pre, stdio, report_w.as_raw_fd(), spec, exec) }
    }
    drop(report_w);
    Ok((pid, report_r))
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Writes a report (tag and payload) and exits 125.
///
/// # Safety
/// Only in a child of [`spawn_jailed`].
unsafe fn jail_fail(report: RawFd, tag: u8, errno: i32) -> ! {
    let mut b = [0u8; 5];
    b[0] = tag;
    b[1..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writes 5 bytes from a stack buffer; then leaves at once.
    unsafe {
        libc::write(report, b.as_ptr().cast(), b.len());
        libc::_exit(125)
    }
}

/// Closes every descriptor from 3 up (the outer process and PID 1 keep
/// nothing of moat's once their child runs).
fn close_from_3() {
    // SAFETY: no pointers; closes this process's own descriptors, none of
    // which is used afterwards.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// Waits for `child` (reaping any other child meanwhile: PID 1 inherits
/// orphans) and exits with its status, 128 + signal for a signal.
///
/// # Safety
/// Only in a child of [`spawn_jailed`].
unsafe fn exit_with(child: libc::pid_t) -> ! {
    loop {
        let mut status = 0;
        // SAFETY: waits for our own children into a valid int.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == child {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            // SAFETY: leaves without running any destructor.
            unsafe { libc::_exit(code) }
        }
        if r < 0 && errno() != libc::EINTR {
            // SAFETY: as above.
            unsafe { libc::_exit(125) }
        }
    }
}

/// The outer process of the jail.
///
/// # Safety
/// Only in the child of the fork in [`spawn_jailed`].
unsafe fn jail_outer(
    pre: &PreExec,
    stdio: [RawFd; 3],
    report: RawFd,
    spec: &moat_privdrop::DropSpec,
    exec: &moat_privdrop::Exec,
) -> ! {
    // The report pipe above the numbers `pre` moves descriptors to.
    // SAFETY: duplicates a descriptor we own, close-on-exec.
    let report = unsafe { libc::fcntl(report, libc::F_DUPFD_CLOEXEC, 200) };
    if report < 0 {
        // SAFETY: leaves at once.
        unsafe { libc::_exit(125) }
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"moat-jail".as_ptr(), 0, 0, 0) };
    // No transparent huge pages for the jail and what it executes (kept
    // across execve): QEMU asks for them on its TCG code buffer, and each
    // touched 4 KiB of it would otherwise cost a whole 2 MiB per VM.
    // SAFETY: integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    for (to, &from) in stdio.iter().enumerate() {
        // SAFETY: dup2 of a descriptor we own onto a standard one.
        if unsafe { libc::dup2(from, to as RawFd) } < 0 {
            // SAFETY: in a child of spawn_jailed.
            unsafe { jail_fail(report, JAIL_NAMESPACES, errno()) }
        }
    }
    // SAFETY: between fork and exec, as `apply` requires.
    if let Err(e) = unsafe { pre.apply() } {
        let n = e.raw_os_error().unwrap_or(libc::EIO);
        // SAFETY: in a child of spawn_jailed.
        unsafe { jail_fail(report, JAIL_NAMESPACES, n) }
    }
    // SAFETY: flags only; this process is single-threaded (a fork).
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        // SAFETY: in a child of spawn_jailed.
        unsafe { jail_fail(report, JAIL_PID_NAMESPACE, errno()) }
    }
    // SAFETY: the child runs only `jail_init`, which never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // SAFETY: in a child of spawn_jailed.
        unsafe { jail_fail(report, JAIL_PID_NAMESPACE, errno()) }
    }
    if pid == 0 {
        // SAFETY: the child of the fork above.
        unsafe { jail_init(report, spec, exec) }
    }
    close_from_3();
    // SAFETY: in a child of spawn_jailed.
    unsafe { exit_with(pid) }
}

/// PID 1 of the VMM's PID namespace: root, hidden from the VMM's uid.
///
/// # Safety
/// Only in the child of the second fork of [`spawn_jailed`].
unsafe fn jail_init(
    report: RawFd,
    spec: &moat_privdrop::DropSpec,
    exec: &moat_privdrop::Exec,
) -> ! {
    // Dies with the outer process (and so with moat).
    // SAFETY: integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        // SAFETY: in a child of spawn_jailed.
        unsafe { jail_fail(report, JAIL_PID_NAMESPACE, errno()) }
    }
    // The namespace's own procfs: host processes invisible; hidepid=2:
    // the VMM sees only its own uid's.
    // SAFETY: constant C strings.
    let r = unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"hidepid=2".as_ptr().cast(),
        )
    };
    if r != 0 {
        // SAFETY: in a child of spawn_jailed.
        unsafe { jail_fail(report, JAIL_PROC, errno()) }
    }
    // SAFETY: the child runs the privilege drop, which does not allocate,
    // and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // SAFETY: in a child of spawn_jailed.
        unsafe { jail_fail(report, JAIL_PID_NAMESPACE, errno()) }
    }
    if pid == 0 {
        let f = moat_privdrop::drop_and_exec(spec, exec, None);
        let mut b = [0u8; 13];
        b[0] = JAIL_EXEC;
        b[1..].copy_from_slice(&f.to_bytes());
        // SAFETY: writes 13 bytes from a stack buffer, then leaves.
        unsafe {
            libc::write(report, b.as_ptr().cast(), b.len());
            libc::_exit(i32::from(f.exit_code()))
        }
    }
    close_from_3();
    // SAFETY: in a child of spawn_jailed.
    unsafe { exit_with(pid) }
}

/// `waitpid(pid, WNOHANG)`: the wait status once `pid` ended.
pub fn wait_nohang(pid: libc::pid_t) -> io::Result<Option<i32>> {
    let child = Pid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::ECHILD))?;
    Ok(
        match rustix::process::waitpid(Some(child), WaitOptions::NOHANG)? {
            Some((p, status)) if p == child => Some(status.as_raw()),
            _ => None,
        },
    )
}

/// Stops glibc from trimming the heaps of thread arenas. Trimming one
/// (`heap_trim` -> `shrink_heap`) reads `/proc/sys/vm/overcommit_memory`
/// the first time, an `openat` the supervisor's filter answers by killing
/// the process; freed memory simply stays with the process instead.
pub fn keep_freed_heap() {
    // SAFETY: mallopt takes two integers and only changes a malloc setting.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) };
}

/// Maps `len` bytes of `fd` read-write, shared or private, and unmaps them
/// again: whether the kernel allows such a mapping (the template memory's
/// seals refuse a shared writable one).
#[cfg(test)]
pub fn try_map(fd: BorrowedFd<'_>, len: usize, shared: bool) -> io::Result<()> {
    let flags = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    // SAFETY: a new mapping at an address the kernel chooses; nothing
    // reads or writes it, and it is unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `p` is the live mapping of `len` bytes made above.
    check(unsafe { libc::munmap(p, len) }).map(drop)
}

/// `mount --make-rprivate /`: no mount made from now on propagates to
/// the host. No allocation (between fork and exec).
fn make_mounts_private() -> io::Result<()> {
    Ok(rustix::mount::mount_change(
        c"/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )?)
}

/// `MOUNT_ATTR_*` of `mount_setattr(2)`.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

/// A detached copy of the mount at `dir` (`open_tree(OPEN_TREE_CLONE)`,
/// not recursive: mounts below `dir` are not part of it) with `attrs`
/// (`MOUNT_ATTR_*`) set on it.
pub fn clone_mount(dir: BorrowedFd<'_>, attrs: u64) -> io::Result<OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    let tree = rustix::mount::open_tree(
        dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` is a `struct mount_attr` (VER0 size) that lives for
    // the call; the path is an empty C string used with AT_EMPTY_PATH.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(tree)
}

/// What a virtiofsd's process does between fork and exec: its own session,
/// death with the supervisor, the VM's cgroups, its own mount namespace
/// (private propagation) with the granted directory's detached mount
/// `tree` attached at `mountpoint`, the vhost-user listening socket on
/// descriptor 3 and nothing else inherited.
pub struct DaemonPreExec {
    pub cgroup_procs: Vec<RawFd>,
    /// The detached mount to attach at `mountpoint`; `None`: share
    /// `mountpoint` as it is, receiving the host's later mounts below it.
    pub tree: Option<RawFd>,
    pub mountpoint: CString,
    pub listen: RawFd,
}

/// Spawns `cmd` with `pre` applied between fork and exec.
pub fn spawn_daemon(
    cmd: &mut std::process::Command,
    pre: DaemonPreExec,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child, between fork and exec,
    // as `apply` requires; `apply` makes async-signal-safe system calls on
    // data prepared before the fork and allocates nothing.
    unsafe {
        cmd.pre_exec(move || pre.apply());
    }
    cmd.spawn()
}

impl DaemonPreExec {
    /// # Safety
    /// Only between fork and exec: system calls on data prepared before
    /// the fork, no allocation.
    unsafe fn apply(&self) -> io::Result<()> {
        const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
        rustix::process::setsid()?;
        // Dies with its supervisor thread.
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        if rustix::process::getppid() == Some(Pid::INIT) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        for &fd in &self.cgroup_procs {
            // SAFETY: writes 1 byte from a static buffer to an open fd.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: flags only.
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
        let Some(tree) = self.tree else {
            // A pod's share: mounts made on the host below it later (the
            // pod's further containers' roots) must reach the daemon, and
            // nothing it mounts may reach the host.
            rustix::mount::mount_change(
                c"/",
                MountPropagationFlags::REC | MountPropagationFlags::DOWNSTREAM,
            )?;
            return self.listen_on_3();
        };
        make_mounts_private()?;
        // SAFETY: `tree` is a detached mount held by the parent (inherited
        // across the fork); `mountpoint` is a C string prepared before it.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree,
                c"".as_ptr(),
                libc::AT_FDCWD,
                self.mountpoint.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        })?;
        self.listen_on_3()
    }

    /// The listening socket on descriptor 3, every other one closed.
    fn listen_on_3(&self) -> io::Result<()> {
        if self.listen == 3 {
            // SAFETY: clears close-on-exec on our own descriptor.
            check(unsafe { libc::fcntl(3, libc::F_SETFD, 0) })?;
        } else {
            // SAFETY: dup2 of a descriptor we own onto 3; the copy is
            // inheritable.
            check(unsafe { libc::dup2(self.listen, 3) })?;
        }
        cloexec_all_but(&mut [3])
    }
}
