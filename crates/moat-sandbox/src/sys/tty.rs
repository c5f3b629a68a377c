//! Pseudo-terminals and terminal modes.

use super::*;

/// Opens a new pty pair from `ptmx` (the host's `/dev/ptmx`): (master, peer).
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: constant C string.
    let master = fd_from(unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    } as libc::c_long)?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } as libc::c_long)?;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let peer = fd_from(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    } as libc::c_long)?;
    Ok((master, peer))
}

/// The number N of a pty master's peer `/dev/pts/N` (`TIOCGPTN`).
pub fn pty_number(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } as libc::c_long)?;
    Ok(n)
}

/// Makes `fd` (a terminal) the controlling terminal of this session.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } as libc::c_long).map(drop)
}

pub fn dup2(from: BorrowedFd<'_>, to: RawFd) -> io::Result<()> {
    // SAFETY: `from` is valid; `to` is one of the standard descriptors.
    check(unsafe { libc::dup2(from.as_raw_fd(), to) } as libc::c_long).map(drop)
}

pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

pub fn get_winsize(fd: RawFd) -> Option<libc::winsize> {
    // SAFETY: plain data.
    let mut ws: libc::winsize = unsafe { zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (ret == 0).then_some(ws)
}

pub fn set_winsize(fd: BorrowedFd<'_>, ws: &libc::winsize) {
    // SAFETY: TIOCSWINSZ reads one winsize; failure is harmless.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws) };
}

/// Terminal attributes saved by [`make_raw`], restored by [`restore_termios`].
pub struct Termios(libc::termios);

pub fn make_raw(fd: RawFd) -> io::Result<Termios> {
    // SAFETY: plain data.
    let mut t: libc::termios = unsafe { zeroed() };
    // SAFETY: `t` is valid for writes.
    check(unsafe { libc::tcgetattr(fd, &mut t) } as libc::c_long)?;
    let saved = Termios(t);
    // SAFETY: cfmakeraw edits `t` in place.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: `t` is a valid termios.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } as libc::c_long)?;
    Ok(saved)
}

pub fn restore_termios(fd: RawFd, saved: &Termios) {
    // SAFETY: `saved` came from tcgetattr.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved.0) };
}
