// The static helper of the escape suite: compiled by the tests with
// `rustc -C target-feature=+crt-static` (std only, no crates) and copied
// into a test rootfs. Each subcommand makes one escape attempt from inside
// a moat container and prints one line `<attempt>: <result>` where the
// result is `ok ...` or the errno name, so the tests can assert the exact
// failure.

use std::ffi::CString;
use std::io::Error;

extern "C" {
    fn syscall(n: i64, ...) -> i64;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    fn fork() -> i32;
    fn getuid() -> u32;
    fn geteuid() -> u32;
    fn mknod(path: *const i8, mode: u32, dev: u64) -> i32;
    fn open(path: *const i8, flags: i32, ...) -> i32;
    fn pause() -> i32;
    fn sleep(s: u32) -> u32;
    fn unshare(flags: i32) -> i32;
    fn mount(src: *const i8, tgt: *const i8, fs: *const i8, flags: u64, data: *const u8) -> i32;
}

fn errno_name(e: &Error) -> String {
    let n = e.raw_os_error().unwrap_or(0);
    let name = match n {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        9 => "EBADF",
        11 => "EAGAIN",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        22 => "EINVAL",
        24 => "EMFILE",
        26 => "ETXTBSY",
        30 => "EROFS",
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("");
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match op {
        // Attempt 7 and 8: dangerous kernel interfaces and keyrings.
        "syscalls" => {
            let zeros = [0u8; 256];
            let z = zeros.as_ptr();
            let calls: [(&str, i64, [i64; 4]); 10] = [
                ("init_module", 175, [z as i64, 16, z as i64, 0]),
                ("finit_module", 313, [0, z as i64, 0, 0]),
                ("kexec_load", 246, [0, 0, 0, 0]),
                ("bpf", 321, [0, z as i64, 48, 0]),
                ("perf_event_open", 298, [z as i64, 0, -1, -1]),
                ("userfaultfd", 323, [0, 0, 0, 0]),
                ("io_uring_setup", 425, [1, z as i64, 0, 0]),
                ("keyctl", 250, [0 /* GET_KEYRING_ID */, -3, 1, 0]),
                ("add_key", 248, [c("user").into_raw() as i64, c("moat-escape").into_raw() as i64, z as i64, 4]),
                ("request_key", 249, [c("user").into_raw() as i64, c("moat-escape").into_raw() as i64, 0, 0]),
            ];
            for (name, nr, a) in calls {
                // SAFETY: the arguments are numbers or valid pointers; the kernel checks them.
                let r = unsafe { syscall(nr, a[0], a[1], a[2], a[3], 0i64, 0i64) };
                println!("{name}: {}", res(r));
            }
        }
        // Attempt 9: ptrace a process outside the container.
        "ptrace" => {
            let pid: i64 = arg(2).parse().unwrap_or(1);
            // SAFETY: PTRACE_ATTACH takes plain integers; the kernel validates them.
            let r = unsafe { syscall(101, 16 /* PTRACE_ATTACH */, pid, 0i64, 0i64) };
            println!("ptrace: {}", res(r));
        }
        // Attempt 14: a new user namespace, then a mount inside it.
        "unshare-mount" => {
            // SAFETY: unshare takes a flag word and touches no memory of ours.
            let r = unsafe { unshare(0x1000_0000 /* CLONE_NEWUSER */) };
            println!("unshare: {}", res(r as i64));
            // SAFETY: unshare takes a flag word and touches no memory of ours.
            let r = unsafe { unshare(0x0002_0000 /* CLONE_NEWNS */) };
            println!("unshare-mountns: {}", res(r as i64));
            // SAFETY: every pointer is a live NUL-terminated CString or null.
            let r = unsafe { mount(c("none").as_ptr(), c("/tmp").as_ptr(), c("tmpfs").as_ptr(), 0, std::ptr::null()) };
            println!("mount: {}", res(r as i64));
            // clone(CLONE_NEWUSER) directly, bypassing unshare.
            // SAFETY: raw clone without a new stack: the child only calls exit.
            let r = unsafe { syscall(56, 0x1000_0000i64 | 17, 0i64, 0i64, 0i64, 0i64) };
            if r == 0 {
                std::process::exit(0);
            }
            println!("clone-newuser: {}", res(r));
        }
        // Attempt 6: mknod the host's disk.
        "mknod" => {
            let (major, minor): (u64, u64) = (arg(2).parse().unwrap_or(8), arg(3).parse().unwrap_or(0));
            let dev = (major << 8) | minor;
            // SAFETY: the path is a live NUL-terminated CString.
            let r = unsafe { mknod(c("/tmp/disk").as_ptr(), 0o60600, dev) };
            println!("mknod: {}", res(r as i64));
            // SAFETY: the path is a live NUL-terminated CString.
            let r = unsafe { open(c("/tmp/disk").as_ptr(), 0) };
            println!("open-disk: {}", res(r as i64));
        }
        // Attempt 4: leaked descriptors and the working directory.
        "fds" => {
            let open: Vec<String> = (0..4096)
                // SAFETY: F_GETFD on any integer only reads the fd table.
                .filter(|&fd| unsafe { fcntl(fd, 1 /* F_GETFD */) } >= 0)
                .map(|fd| fd.to_string())
                .collect();
            println!("fds: {}", open.join(" "));
            println!("cwd: {}", std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|e| errno_name(&e)));
        }
        // Attempt 5: every /proc/PID/exe visible, opened for writing.
        "exe" => {
            let mut pids: Vec<u32> = std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            pids.sort();
            for pid in pids {
                let link = format!("/proc/{pid}/exe");
                let target = std::fs::read_link(&link).map(|p| p.display().to_string()).unwrap_or_else(|e| errno_name(&e));
                // SAFETY: the path is a live NUL-terminated CString; the fd is leaked on purpose.
                let w = unsafe { open(c(&link).as_ptr(), 1 /* O_WRONLY */) };
                println!("exe {pid} {target}: {}", res(w as i64));
            }
            // SAFETY: the path is a live NUL-terminated CString.
            let w = unsafe { open(c("/proc/self/exe").as_ptr(), 1) };
            println!("self-exe: {}", res(w as i64));
        }
        // Attempt 12: open files until failure.
        "nofile" => {
            let mut n = 0;
            let err = loop {
                // SAFETY: the path is a live NUL-terminated CString; fds are leaked on purpose.
                let fd = unsafe { open(c("/dev/null").as_ptr(), 0) };
                if fd < 0 {
                    break Error::last_os_error();
                }
                n += 1;
                if n > 1_000_000 {
                    break Error::from_raw_os_error(0);
                }
            };
            println!("nofile: opened {n} then {}", errno_name(&err));
        }
        // Attempt 11: a fork bomb (every process forks until it cannot).
        "forkbomb" => {
            let mut made = 0u32;
            let mut err = String::new();
            for _ in 0..100_000 {
                // SAFETY: this helper is single-threaded, so the child may run any code.
                let pid = unsafe { fork() };
                if pid == 0 {
                    // Children keep forking too, then wait forever.
                    loop {
                        // SAFETY: single-threaded; fork and pause take no pointers.
                        if unsafe { fork() } < 0 {
                            unsafe { pause() };
                        }
                    }
                }
                if pid < 0 {
                    err = errno_name(&Error::last_os_error());
                    break;
                }
                made += 1;
            }
            // SAFETY: sleep takes an integer.
            unsafe { sleep(1) };
            println!("forkbomb: pid 1 forked {made} then {err}");
            let procs = std::fs::read_dir("/proc")
                .unwrap()
                .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok())))
                .count();
            println!("processes: {procs}");
            // Exiting PID 1 kills the whole PID namespace.
        }
        // Attempt 10: what a setuid binary gives.
        "ids" => {
            // SAFETY: getuid and geteuid cannot fail and take no arguments.
            println!("ids: uid={} euid={}", unsafe { getuid() }, unsafe { geteuid() });
        }
        _ => {
            eprintln!("usage: escape-helper syscalls|ptrace PID|unshare-mount|mknod MAJ MIN|fds|exe|nofile|forkbomb|ids");
            std::process::exit(2);
        }
    }
}
