//! The raw system calls of the eBPF recorder: `bpf(2)` (maps, program
//! load), `perf_event_open(2)` on tracepoints and the perf ioctls that
//! attach a program. Every unsafe block of the recorder lives here.

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::asm::Insn;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;

/// `BPF_PROG_TYPE_TRACEPOINT`: the context is the tracepoint's record.
pub const PROG_TYPE_TRACEPOINT: u32 = 5;
/// `BPF_PROG_TYPE_RAW_TRACEPOINT`: the context is the tracepoint's raw
/// arguments, one u64 each.
pub const PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
/// `BPF_MAP_TYPE_HASH`.
pub const MAP_TYPE_HASH: u32 = 1;
/// `BPF_MAP_TYPE_ARRAY`.
pub const MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_F_NO_PREALLOC` is not used: preallocated maps never allocate in
/// the tracepoint.
const BPF_ANY: u64 = 0;

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_SAMPLE_RAW: u64 = 1 << 10;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
/// `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

/// `union bpf_attr` for `BPF_MAP_CREATE`, padded with zeros.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    pad: [u32; 9],
}

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad0: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_PROG_LOAD` (up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN`.
#[repr(C)]
#[derive(Default)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    pad: u32,
    cookie: u64,
}

/// `struct perf_event_attr`, `PERF_ATTR_SIZE_VER7` (128 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    rest: [u64; 9],
}

fn name16(name: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    for (d, s) in n.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    n
}

/// `bpf(cmd, attr, size)`; returns the non-negative result.
///
/// # Safety
/// `attr` must point to a valid, initialised `union bpf_attr` of `size`
/// bytes for `cmd`, and every pointer inside it must be valid for what the
/// kernel does with it during the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = std::mem::size_of::<T>();
    // SAFETY: the caller guarantees `attr` is the right attribute block
    // for `cmd`; the kernel reads (and for some commands writes) at most
    // `size` bytes of it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// Creates a map; the returned fd owns it.
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_name: name16(name),
        ..MapCreateAttr::default()
    };
    // SAFETY: a fully initialised MapCreateAttr holds no pointers.
    let fd = unsafe { bpf(BPF_MAP_CREATE, &mut attr)? };
    Ok(owned(fd))
}

/// Looks `key` up in map `fd`, writing the value into `value`. `Ok(false)`
/// when the key is absent.
pub fn map_lookup(fd: RawFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: `key` and `value` are live slices; the caller sizes them as
    // the map's key and value sizes, which is all the kernel reads/writes.
    match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets `key` to `value` in map `fd`.
pub fn map_update(fd: RawFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: BPF_ANY,
        ..ElemAttr::default()
    };
    // SAFETY: `key` and `value` are live slices of the map's key and value
    // sizes; the kernel only reads them.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(|_| ())
}

/// The key after `key` (the first key when `key` is `None`) of map `fd`,
/// written into `next`. `Ok(false)` at the end.
pub fn map_next_key(fd: RawFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        key: key.map(|k| k.as_ptr() as u64).unwrap_or(0),
        value: next.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: `key` (or NULL, meaning "first") and `next` are live slices
    // of the map's key size.
    match unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Loads a tracepoint program. On a verifier refusal the error carries the
/// tail of the verifier log.
pub fn prog_load(
    prog_type: u32,
    name: &str,
    insns: &[Insn],
    license: &CStr,
) -> Result<OwnedFd, (io::Error, String)> {
    let code: Vec<u8> = super::asm::encode(insns);
    let mut log = vec![0u8; 1 << 20];
    let load = |log_level: u32, log: &mut [u8]| {
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size: if log_level > 0 { log.len() as u32 } else { 0 },
            log_buf: if log_level > 0 {
                log.as_mut_ptr() as u64
            } else {
                0
            },
            prog_name: name16(name),
            ..ProgLoadAttr::default()
        };
        // SAFETY: `code` holds `insn_cnt` encoded instructions, `license` is
        // NUL-terminated, `log` is writable for `log_size` bytes; all outlive
        // the call.
        unsafe { bpf(BPF_PROG_LOAD, &mut attr) }
    };
    // The kernel may answer EAGAIN when the load races with a signal or
    // memory pressure: libbpf tries five times, and so does this.
    let mut first = load(0, &mut log);
    for _ in 1..5 {
        match &first {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => first = load(0, &mut log),
            _ => break,
        }
    }
    match first {
        Ok(fd) => Ok(owned(fd)),
        Err(first) => {
            // Load again with the verifier log to say why (a load that now
            // passes is used: the failure was transient).
            if let Ok(fd) = load(1, &mut log) {
                return Ok(owned(fd));
            }
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            Err((first, tail.into_iter().rev().collect::<Vec<_>>().join("\n")))
        }
    }
}

/// Attaches raw-tracepoint program `prog` to the tracepoint `name`; the
/// returned fd holds the attachment (closing it detaches).
pub fn raw_tracepoint_open(name: &CStr, prog: RawFd) -> io::Result<OwnedFd> {
    let mut attr = RawTracepointAttr {
        name: name.as_ptr() as u64,
        prog_fd: prog as u32,
        ..RawTracepointAttr::default()
    };
    // SAFETY: `name` is NUL-terminated and outlives the call; the kernel
    // only reads it.
    let fd = unsafe { bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)? };
    Ok(owned(fd))
}

/// Opens tracepoint `id` on `cpu` for every process.
pub fn perf_open_tracepoint(id: u64, cpu: u32) -> io::Result<OwnedFd> {
    let mut attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        sample_type: PERF_SAMPLE_RAW,
        wakeup_events: 1,
        ..PerfEventAttr::default()
    };
    // SAFETY: `attr` is a zero-padded perf_event_attr of the size it
    // declares; pid -1 with a cpu and group fd -1 take no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &mut attr as *mut PerfEventAttr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned(r))
}

/// Attaches program `prog` to perf event `event` and enables it.
pub fn perf_attach(event: RawFd, prog: RawFd) -> io::Result<()> {
    // SAFETY: PERF_EVENT_IOC_SET_BPF takes the program fd by value.
    if unsafe { libc::ioctl(event, PERF_EVENT_IOC_SET_BPF as _, prog) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PERF_EVENT_IOC_ENABLE takes an unused integer argument.
    if unsafe { libc::ioctl(event, PERF_EVENT_IOC_ENABLE as _, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Hands `fds` to a child (`/bin/cat` reading a pipe) that holds them
/// until its standard input is closed: when the caller has dropped its own
/// copies and closes the child's stdin, the child's exit releases the last
/// references, off the caller's path. Returns the child (stdin piped).
pub fn release_in_child(fds: &[RawFd]) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let keep: Vec<RawFd> = fds.to_vec();
    let mut cmd = std::process::Command::new("/bin/cat");
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only
    // calls fcntl(2), which is async-signal-safe; it allocates nothing
    // (`keep` was allocated before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &keep {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 128);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(std::mem::size_of::<ElemAttr>(), 32);
    }
}
