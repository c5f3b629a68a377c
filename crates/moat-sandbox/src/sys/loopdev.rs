//! Loop devices for named volumes (include/uapi/linux/loop.h).

use super::*;

// Loop devices (include/uapi/linux/loop.h).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Binds `file` to a free loop device that clears itself when its last
/// user (the filesystem mounted from it) goes away; returns the device's
/// open descriptor and number. The device holds its own reference to the
/// open file (and so to any lock on it) until then.
pub fn loop_attach(file: BorrowedFd<'_>) -> io::Result<(OwnedFd, u32)> {
    let ctl: OwnedFd = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?
        .into();
    // std opens every file close-on-exec.
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    // Another process may take the free device between the two calls.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let n =
            check(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) } as libc::c_long)?
                as u32;
        let dev: OwnedFd = std::fs::File::options()
            .read(true)
            .write(true)
            .open(format!("/dev/loop{n}"))?
            .into();
        // SAFETY: plain data; all-zero is a valid value.
        let mut cfg: LoopConfig = unsafe { zeroed() };
        cfg.fd = file.as_raw_fd() as u32;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: `cfg` is a properly laid out `struct loop_config` that
        // lives for the call.
        let r = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                LOOP_CONFIGURE as _,
                &cfg as *const LoopConfig,
            )
        };
        if r == 0 {
            return Ok((dev, n));
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EBUSY) {
            return Err(last);
        }
    }
    Err(last)
}
