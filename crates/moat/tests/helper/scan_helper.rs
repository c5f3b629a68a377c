// The static helper of review_scan.rs: compiled by the test with
// `rustc -C target-feature=+crt-static` (std only, no crates) and copied
// into a test rootfs. `ioctls` tries the two terminal-injection ioctls on
// its stdout, prints `<name>: <result>` for each and exits 0 only when both
// were refused with EPERM (what seccomp answers when the policy denies
// them; a regular file or pipe would answer ENOTTY).

extern "C" {
    fn ioctl(fd: i32, req: u64, ...) -> i32;
}

fn main() {
    let mut all_eperm = true;
    let byte = b'x';
    for (name, req) in [("TIOCSTI", 0x5412u64), ("TIOCLINUX", 0x541c)] {
        // SAFETY: the argument points to a live byte; the kernel checks it.
        let r = unsafe { ioctl(1, req, &byte as *const u8) };
        let err = std::io::Error::last_os_error();
        let result = if r == 0 {
            "ok".to_string()
        } else if err.raw_os_error() == Some(1) {
            "EPERM".to_string()
        } else {
            format!("errno {}", err.raw_os_error().unwrap_or(0))
        };
        all_eperm &= result == "EPERM";
        eprintln!("{name}: {result}");
    }
    std::process::exit(if all_eperm { 0 } else { 3 });
}
