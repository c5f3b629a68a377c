//! A template's guest memory: a sealed memfd that every clone maps
//! privately (copy-on-write), so clones share the template's pages.
//!
//! QEMU 7.2 opens a memory backend's file read-write even for a private
//! mapping, so the file itself must refuse writes: a memfd with
//! `F_SEAL_WRITE` (no `write`, no shared writable mapping, no hole
//! punching), `F_SEAL_GROW`, `F_SEAL_SHRINK` and `F_SEAL_SEAL`. A
//! compromised VMM can open it, but cannot change a page another clone
//! maps. A private writable mapping is still allowed, which is all a
//! clone needs.
//!
//! The memfd lives as long as something holds it: a small holder process
//! (`sh`, its stdin the memfd) started when the template is built or
//! loaded, ending after 10 minutes or once the template is removed. Later
//! starts reopen the memfd through `/proc/<holder>/fd/0` after checking
//! the holder's start time, the memfd's inode and its seals; without a
//! holder the memory is loaded again from `<template>/memory`, checked
//! against the manifest's digest, sealed, and held again.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::fs::{MemfdFlags, SealFlags, SeekFrom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sys;

/// What makes the memfd immutable for good.
pub fn seals() -> SealFlags {
    SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL
}

/// An empty (all-zero, unallocated) memfd of `bytes`, sealable.
pub fn create(bytes: u64) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "moat-template",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, bytes)?;
    Ok(fd)
}

/// Seals `fd` (fails while any shared writable mapping of it exists).
pub fn seal(fd: &OwnedFd) -> std::io::Result<()> {
    rustix::fs::fcntl_add_seals(fd, seals())?;
    Ok(())
}

fn sealed(fd: &OwnedFd, bytes: u64) -> bool {
    let full = rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(seals()));
    full && rustix::fs::fstat(fd).is_ok_and(|st| st.st_size as u64 == bytes)
}

/// sha256 of `fd`'s whole content from offset 0 (holes read as zeros).
fn digest(fd: &OwnedFd) -> std::io::Result<String> {
    let mut f = File::from(fd.try_clone()?);
    rustix::fs::seek(&f, SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Copies the data of `from` (skipping holes) to the same offsets of `to`.
fn copy_sparse(from: &OwnedFd, to: &OwnedFd, bytes: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < bytes {
        let data = match rustix::fs::seek(from, SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(from, SeekFrom::Hole(data))?;
        let mut at = data;
        while at < hole {
            let want = ((hole - at) as usize).min(buf.len());
            let n = rustix::io::pread(from, &mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            let mut done = 0;
            while done < n {
                done += rustix::io::pwrite(to, &buf[done..n], at + done as u64)?;
            }
            at += n as u64;
        }
        off = hole;
    }
    Ok(())
}

/// Writes the sealed memory to `path` (a new 0600 file, sparse) and
/// returns its digest.
pub fn save(fd: &OwnedFd, path: &Path, bytes: u64) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let out = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    out.set_len(bytes)?;
    let out = OwnedFd::from(out);
    copy_sparse(fd, &out, bytes)?;
    rustix::fs::fsync(&out)?;
    digest(fd)
}

/// The memory saved at `path`, in a new sealed memfd, and its digest.
pub fn load(path: &Path, bytes: u64) -> std::io::Result<(OwnedFd, String)> {
    let file = OwnedFd::from(File::open(path)?);
    if rustix::fs::fstat(&file)?.st_size as u64 != bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not {bytes} bytes long", path.display()),
        ));
    }
    let fd = create(bytes)?;
    copy_sparse(&file, &fd, bytes)?;
    seal(&fd)?;
    let d = digest(&fd)?;
    Ok((fd, d))
}

/// Who holds a template's memfd (`<template>/holder.json`).
#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: tells a reused pid apart.
    start: u64,
    dev: u64,
    ino: u64,
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Starts the holder of `fd` for the template in `dir` and records it.
pub fn hold(dir: &Path, fd: &OwnedFd) -> std::io::Result<()> {
    // The inner shell is orphaned at once (the outer one exits after
    // printing its pid): nobody has to reap it.
    // (An asynchronous list's stdin is /dev/null unless redirected: the
    // memfd goes through fd 3.)
    let script = r#"exec 3<&0; (exec sh -c 'i=0; while [ -e "$1" ] && [ "$i" -lt 120 ]; do sleep 5; i=$((i+1)); done' moat-template-memory "$1" <&3 3<&- >/dev/null 2>&1) & echo $!"#;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .arg("sh")
        .arg(dir.join("manifest.json"))
        .stdin(Stdio::from(File::from(fd.try_clone()?)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = sys::spawn_detached(&mut cmd)?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    child.wait()?;
    let pid: u32 = line.trim().parse().map_err(|_| {
        std::io::Error::other(format!("the memory holder printed {line:?}, not its pid"))
    })?;
    let st = rustix::fs::fstat(fd)?;
    // The pid is the subshell's, printed before it has moved the memfd to
    // its stdin: wait (bounded) until it holds it, so that [`held`] finds
    // it at once. Past the bound a caller finds nothing held and loads
    // the saved memory instead.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let holds = std::fs::metadata(format!("/proc/{pid}/fd/0"))
            .is_ok_and(|m| m.dev() == st.st_dev && m.ino() == st.st_ino);
        if holds {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let h = Holder {
        pid,
        start: start_time(pid).unwrap_or(0),
        dev: st.st_dev,
        ino: st.st_ino,
    };
    let path = dir.join("holder.json");
    let stage = dir.join(format!(".holder.{}", std::process::id()));
    std::fs::write(&stage, serde_json::to_vec(&h).unwrap_or_default())?;
    std::fs::rename(&stage, &path)
}

/// The held memfd of the template in `dir`, if its holder still runs and
/// holds a sealed memfd of `bytes` with the recorded inode.
pub fn held(dir: &Path, bytes: u64) -> Option<OwnedFd> {
    let h: Holder = serde_json::from_slice(&std::fs::read(dir.join("holder.json")).ok()?).ok()?;
    if start_time(h.pid)? != h.start {
        return None;
    }
    let f = File::open(format!("/proc/{}/fd/0", h.pid)).ok()?;
    let md = f.metadata().ok()?;
    if md.dev() != h.dev || md.ino() != h.ino {
        return None;
    }
    let fd = OwnedFd::from(f);
    sealed(&fd, bytes).then_some(fd)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// The attack of a compromised VMM on its siblings: change the pages of
    /// the template they map. Every way to write is refused once sealed,
    /// and a private mapping (what a clone uses) still works.
    #[test]
    fn a_sealed_template_memory_refuses_every_write() {
        let fd = create(1 << 20).unwrap();
        rustix::io::pwrite(&fd, b"kernel text", 4096).unwrap();
        seal(&fd).unwrap();
        assert!(sealed(&fd, 1 << 20));
        let eperm = |r: std::io::Result<usize>| {
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPERM));
        };
        eperm(rustix::io::pwrite(&fd, b"evil", 4096).map_err(Into::into));
        // Reopened read-write, as QEMU does through /proc/self/fd.
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let mut again = File::options().read(true).write(true).open(&path).unwrap();
        eperm(std::io::Write::write(&mut again, b"evil"));
        assert!(rustix::fs::ftruncate(&fd, 0).is_err());
        // A shared writable mapping is refused, a private one (a clone's) works.
        let e = sys::try_map(fd.as_fd(), 1 << 20, true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        sys::try_map(fd.as_fd(), 1 << 20, false).unwrap();
        let mut buf = [0u8; 11];
        rustix::io::pread(&fd, &mut buf, 4096).unwrap();
        assert_eq!(&buf, b"kernel text");
    }

    #[test]
    fn saved_memory_loads_with_the_same_digest_and_is_held() {
        let d = tempfile::tempdir().unwrap();
        let fd = create(1 << 20).unwrap();
        rustix::io::pwrite(&fd, b"page", 8192).unwrap();
        seal(&fd).unwrap();
        let path = d.path().join("memory");
        let saved = save(&fd, &path, 1 << 20).unwrap();
        let (loaded, digest) = load(&path, 1 << 20).unwrap();
        assert_eq!(saved, digest);
        assert!(sealed(&loaded, 1 << 20));
        assert!(load(&path, 2 << 20).is_err(), "another size");
        std::fs::write(d.path().join("manifest.json"), b"{}").unwrap();
        hold(d.path(), &loaded).unwrap();
        let h = held(d.path(), 1 << 20).expect("held");
        assert_eq!(
            rustix::fs::fstat(&h).unwrap().st_ino,
            rustix::fs::fstat(&loaded).unwrap().st_ino
        );
        assert!(held(d.path(), 2 << 20).is_none(), "another size");
    }
}
