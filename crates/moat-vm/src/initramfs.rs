//! The guest's initramfs: a `cpio -H newc` archive written by moat with the
//! agent as `/init`, the directories it mounts on and `/dev/console`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("guest agent not found (looked in {searched}): build it with `make agent` or set MOAT_AGENT to a static moat-agent binary")]
    AgentMissing { searched: String },
    #[error("guest agent {path} is not a static binary (it has an ELF interpreter): build it with RUSTFLAGS='-C target-feature=+crt-static' (`make agent`)")]
    AgentNotStatic { path: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One entry of a newc archive.
pub enum Entry<'a> {
    Dir {
        path: &'a str,
        mode: u32,
    },
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    CharDev {
        path: &'a str,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// Writes a complete newc archive (with trailer) of `entries`.
pub fn write_newc(out: &mut Vec<u8>, entries: &[Entry<'_>]) {
    for (ino, e) in (1u32..).zip(entries.iter()) {
        let (path, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match e {
            Entry::Dir { path, mode } => (path, 0o040000 | mode, &[], (0, 0)),
            Entry::File { path, mode, data } => (path, 0o100000 | mode, data, (0, 0)),
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => (path, 0o020000 | mode, &[], (*major, *minor)),
        };
        let nlink = if matches!(e, Entry::Dir { .. }) { 2 } else { 1 };
        header(out, ino, mode, nlink, data.len() as u32, rdev, path);
        out.extend_from_slice(data);
        pad4(out);
    }
    header(out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) {
    let namesize = name.len() as u32 + 1;
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    let _ = write!(out, "070701");
    for f in fields {
        let _ = write!(out, "{f:08x}");
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The initramfs around `agent` (bytes of the static binary).
pub fn image(agent: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(agent.len() + 4096);
    write_newc(
        &mut out,
        &[
            Entry::Dir {
                path: "dev",
                mode: 0o755,
            },
            Entry::CharDev {
                path: "dev/console",
                mode: 0o600,
                major: 5,
                minor: 1,
            },
            Entry::Dir {
                path: "proc",
                mode: 0o555,
            },
            Entry::Dir {
                path: "sys",
                mode: 0o555,
            },
            Entry::Dir {
                path: "mnt",
                mode: 0o755,
            },
            Entry::Dir {
                path: "mnt/root",
                mode: 0o755,
            },
            Entry::File {
                path: "init",
                mode: 0o755,
                data: agent,
            },
        ],
    );
    out
}

/// Finds the static agent: `MOAT_AGENT`, next to the running executable, or
/// in the cargo target directory it was built into (`make agent`).
pub fn locate_agent() -> Result<PathBuf, InitramfsError> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("MOAT_AGENT") {
        candidates.push(PathBuf::from(p));
    } else if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("moat-agent.static"));
            // target/{debug,release}/moat[/deps/test] -> target/x86_64-unknown-linux-gnu/release/moat-agent
            for up in [dir.parent(), dir.parent().and_then(Path::parent)]
                .into_iter()
                .flatten()
            {
                for profile in ["release", "debug"] {
                    candidates.push(
                        up.join("x86_64-unknown-linux-gnu")
                            .join(profile)
                            .join("moat-agent"),
                    );
                }
            }
        }
    }
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    Err(InitramfsError::AgentMissing {
        searched: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn is_static(elf: &[u8]) -> bool {
    // Walk the program headers for PT_INTERP (3).
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u64at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap_or([0; 8])) as usize;
    let u16at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let (phoff, phentsize, phnum) = (u64at(32), u16at(54), u16at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 > elf.len() || u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]]) != 3
    })
}

/// The cached initramfs for the current agent, written on first use.
pub fn ensure(root: &Path) -> Result<PathBuf, InitramfsError> {
    let agent = locate_agent()?;
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| InitramfsError::Io { op, path, source }
    };
    let md = fs::metadata(&agent).map_err(io("stat", &agent))?;
    let mut h = Sha256::new();
    h.update(agent.as_os_str().as_encoded_bytes());
    h.update(format!(":{}:{}:{}", md.len(), md.mtime(), md.mtime_nsec()).as_bytes());
    let key = hex::encode(&h.finalize()[..8]);
    let dir = root.join("vm").join("initramfs");
    let out = dir.join(format!("{key}.cpio"));
    if out.is_file() {
        return Ok(out);
    }
    let bytes = fs::read(&agent).map_err(io("read", &agent))?;
    if !is_static(&bytes) {
        return Err(InitramfsError::AgentNotStatic { path: agent });
    }
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let stage = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    fs::write(&stage, image(&bytes)).map_err(io("write", &stage))?;
    fs::rename(&stage, &out).map_err(io("rename", &out))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_what_cpio_reads() {
        let img = image(b"#!agent");
        assert_eq!(&img[..6], b"070701");
        assert_eq!(img.len() % 4, 0);
        // Round-trip through the real cpio tool.
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("i.cpio");
        fs::write(&f, &img).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&f)
            .output();
        let Ok(out) = out else {
            println!("SKIP: cpio not installed");
            return;
        };
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("init"), "{listing}");
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("crw-------") && l.ends_with("dev/console")),
            "{listing}"
        );
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.contains(" 7 ")),
            "{listing}"
        );
    }

    #[test]
    fn static_detection() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are dynamically linked.
        assert!(!is_static(&me));
        assert!(!is_static(b"not an elf"));
    }
}
