// The static helper of `review_sandbox.rs`: compiled by the tests with
// `rustc -C target-feature=+crt-static` (std only, no crates), copied into
// a test rootfs and also run on the host as the "other" side of a test.
// Each subcommand prints lines `<what>: <result>`, where a result is
// `ok ...` or an errno name, so the tests can assert exact outcomes.

use std::ffi::CString;
use std::io::{Error, Write};

extern "C" {
    fn syscall(n: i64, ...) -> i64;
    fn ioctl(fd: i32, req: u64, ...) -> i32;
    fn open(path: *const i8, flags: i32, ...) -> i32;
    fn getpid() -> i32;
    fn getpgrp() -> i32;
    fn getsid(pid: i32) -> i32;
    fn isatty(fd: i32) -> i32;
    fn pause() -> i32;
    fn sigprocmask(how: i32, set: *const u64, old: *mut u64) -> i32;
}

const O_RDWR: i32 = 2;
const O_CREAT: i32 = 0o100;
const O_EXCL: i32 = 0o200;
const TIOCSPGRP: u64 = 0x5410;
const TIOCSTI: u64 = 0x5412;
const SYS_INOTIFY_INIT1: i64 = 294;
const SYS_MQ_OPEN: i64 = 240;
const SYS_MQ_UNLINK: i64 = 241;
const SYS_RT_SIGQUEUEINFO: i64 = 129;
const SIGRTMIN: i32 = 34;

fn errno_name(e: &Error) -> String {
    let n = e.raw_os_error().unwrap_or(0);
    let name = match n {
        1 => "EPERM",
        2 => "ENOENT",
        6 => "ENXIO",
        9 => "EBADF",
        11 => "EAGAIN",
        13 => "EACCES",
        22 => "EINVAL",
        24 => "EMFILE",
        25 => "ENOTTY",
        28 => "ENOSPC",
        38 => "ENOSYS",
        _ => return format!("errno {n}"),
    };
    name.to_string()
}

fn res(ret: i64) -> String {
    if ret < 0 {
        errno_name(&Error::last_os_error())
    } else {
        format!("ok {ret}")
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn say(line: String) {
    let mut o = std::io::stdout();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// Tries every way the review used to reach the host terminal: a session
/// shared with the host, `/dev/tty`, a terminal on stdio, `tcsetpgrp`, and
/// `TIOCSTI` of `cmd` followed by a newline.
fn tty_attack(cmd: &str) {
    // SAFETY: plain libc calls on this process.
    let (pid, sid, pgrp) = unsafe { (getpid(), getsid(0), getpgrp()) };
    say(format!(
        "session: {}",
        if sid == pid { "own" } else { "shared" }
    ));
    let path = c("/dev/tty");
    // SAFETY: valid C string.
    let tty = unsafe { open(path.as_ptr(), O_RDWR) };
    say(format!("open /dev/tty: {}", res(tty as i64)));
    let mut fds: Vec<i32> = Vec::new();
    for fd in 0..3 {
        // SAFETY: isatty only inspects the descriptor.
        let t = unsafe { isatty(fd) } == 1;
        say(format!(
            "fd {fd}: {}",
            if t { "a terminal" } else { "not a terminal" }
        ));
        if t {
            fds.push(fd);
        }
    }
    if tty >= 0 {
        fds.push(tty);
    }
    for fd in fds {
        // SAFETY: TIOCSPGRP reads one pid_t.
        let r = unsafe { ioctl(fd, TIOCSPGRP, &pgrp as *const i32) };
        say(format!("tcsetpgrp fd {fd}: {}", res(r as i64)));
        let mut first = String::from("ok");
        for b in cmd.bytes().chain(std::iter::once(b'\n')) {
            // SAFETY: TIOCSTI reads one byte.
            let r = unsafe { ioctl(fd, TIOCSTI, &b as *const u8) };
            if r < 0 {
                first = errno_name(&Error::last_os_error());
                break;
            }
        }
        say(format!("TIOCSTI fd {fd}: {first}"));
    }
}

/// Holds as many inotify instances as the kernel gives, then waits.
fn inotify_hog() {
    let mut n = 0;
    let last = loop {
        // SAFETY: no pointers.
        let r = unsafe { syscall(SYS_INOTIFY_INIT1, 0) };
        if r < 0 {
            break errno_name(&Error::last_os_error());
        }
        n += 1;
        if n >= 100_000 {
            break "limit of the helper".into();
        }
    };
    say(format!("inotify instances held: {n} (then {last})"));
}

/// Creates message queues `/<prefix>-N` until the kernel refuses.
fn mqueue_hog(prefix: &str) {
    let mut n = 0;
    let last = loop {
        let name = c(&format!("{prefix}-{n}"));
        // SAFETY: valid C string; NULL attributes select the defaults.
        let r = unsafe {
            syscall(
                SYS_MQ_OPEN,
                name.as_ptr(),
                O_RDWR | O_CREAT | O_EXCL,
                0o600,
                std::ptr::null::<u8>(),
            )
        };
        if r < 0 {
            break errno_name(&Error::last_os_error());
        }
        n += 1;
        if n >= 100_000 {
            break "limit of the helper".into();
        }
    };
    say(format!("message queues held: {n} (then {last})"));
}

/// Queues real-time signals to itself (blocked) until the kernel refuses.
fn sigqueue_hog(limit: usize) -> usize {
    // A glibc sigset_t (128 bytes) with SIGRTMIN set.
    let mut full = [0u64; 16];
    full[0] = 1 << (SIGRTMIN - 1);
    // SAFETY: `full` is as large as glibc's sigset_t.
    unsafe { sigprocmask(0, full.as_ptr(), std::ptr::null_mut()) };
    // SAFETY: plain call.
    let pid = unsafe { getpid() };
    let mut n = 0;
    let last = loop {
        // siginfo_t: 128 bytes; si_signo, si_errno, si_code = SI_QUEUE (-1).
        let mut info = [0i32; 32];
        info[0] = SIGRTMIN;
        info[2] = -1;
        // SAFETY: `info` is a 128-byte siginfo.
        let r = unsafe { syscall(SYS_RT_SIGQUEUEINFO, pid, SIGRTMIN, info.as_ptr()) };
        if r < 0 {
            break errno_name(&Error::last_os_error());
        }
        n += 1;
        if n >= limit {
            break "limit of the helper".into();
        }
    };
    say(format!("pending signals queued: {n} (then {last})"));
    n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("");
    let arg = args.get(2).map(String::as_str).unwrap_or("");
    match op {
        "tty-attack" => tty_attack(arg),
        "inotify-hog" => inotify_hog(),
        "inotify-probe" => {
            // SAFETY: no pointers.
            let r = unsafe { syscall(SYS_INOTIFY_INIT1, 0) };
            say(format!("inotify_init1: {}", res(r)));
        }
        "mqueue-hog" => mqueue_hog(arg),
        "mqueue-probe" => {
            let name = c(arg);
            // SAFETY: valid C string; NULL attributes select the defaults.
            let r = unsafe {
                syscall(
                    SYS_MQ_OPEN,
                    name.as_ptr(),
                    O_RDWR | O_CREAT | O_EXCL,
                    0o600,
                    std::ptr::null::<u8>(),
                )
            };
            say(format!("mq_open: {}", res(r)));
            // SAFETY: valid C string.
            unsafe { syscall(SYS_MQ_UNLINK, name.as_ptr()) };
            return;
        }
        "sigqueue-hog" => {
            sigqueue_hog(10_000_000);
        }
        "sigqueue-probe" => {
            sigqueue_hog(1);
            return;
        }
        _ => {
            eprintln!("usage: helper tty-attack CMD | inotify-hog | inotify-probe | mqueue-hog P | mqueue-probe P | sigqueue-hog | sigqueue-probe");
            std::process::exit(2);
        }
    }
    if op.ends_with("-hog") {
        say("holding".into());
        loop {
            // SAFETY: waits for a signal.
            unsafe { pause() };
        }
    }
}
