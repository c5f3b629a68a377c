//! Ownership, modes, times and extended attributes of what a layer makes.

use std::io::Read;
use std::os::fd::BorrowedFd;

use rustix::fs::{Timespec, Timestamps, XattrFlags};

use super::{EntryName, UnpackError};
use crate::fsat::os;

pub(super) fn write_err<'e>(
    entry: &'e EntryName,
    what: &'static str,
) -> impl FnOnce(rustix::io::Errno) -> UnpackError + 'e {
    move |e| UnpackError::Write {
        entry: entry.clone(),
        what,
        source: e.into(),
    }
}

pub(super) fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    out
}

/// Extended attributes that give or label privilege on the host
/// (`security.capability`, `security.selinux`, `trusted.overlay.*`).
pub(super) fn is_privileged_xattr(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"trusted.")
}

pub(super) fn set_xattrs(
    fd: BorrowedFd<'_>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    keep_privileged: bool,
    entry: &EntryName,
) -> Result<(), UnpackError> {
    for (name, value) in xattrs {
        if !keep_privileged && is_privileged_xattr(name) {
            continue;
        }
        match rustix::fs::fsetxattr(fd, os(name), value, XattrFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::PERM) => {}
            Err(e) => {
                return Err(UnpackError::Write {
                    entry: entry.clone(),
                    what: "an extended attribute",
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

pub(super) fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

pub(super) fn uid_of(id: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id.min(u32::MAX as u64 - 1) as u32)
}

pub(super) fn gid_of(id: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id.min(u32::MAX as u64 - 1) as u32)
}
