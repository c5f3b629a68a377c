//! The guest's initramfs: a `cpio -H newc` archive written by moat with the
//! agent as `/init`, the directories it mounts on and `/dev/console`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("guest agent not found (looked in {searched}): build it with `make agent` or set MOAT_AGENT to a static moat-agent binary")]
    AgentMissing { searched: String },
    #[error("guest agent {path} is not a static binary (it has an ELF interpreter): build it with RUSTFLAGS='-C target-feature=+crt-static' (`make agent`)")]
    AgentNotStatic { path: PathBuf },
    #[error("refusing guest agent {path}: {what} {checked} is owned by uid {uid} (mode {mode:04o}); moat boots only an agent that root owns in directories only root can write to: install it as root (`install -o root -m 0755`) or point MOAT_AGENT at such a copy")]
    AgentNotRoot {
        path: PathBuf,
        what: &'static str,
        checked: PathBuf,
        uid: u32,
        mode: u32,
    },
    #[error("refusing guest agent {path}: {what} {checked} is writable by {who} (mode {mode:04o}); moat boots only an agent that nobody but root can replace: `chmod go-w {checked}`, or install the agent elsewhere and point MOAT_AGENT at it")]
    AgentWritable {
        path: PathBuf,
        what: &'static str,
        checked: PathBuf,
        who: &'static str,
        mode: u32,
    },
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

/// Where an installed agent lives (a package or an install puts it there).
pub const INSTALLED_AGENTS: [&str; 2] =
    ["/usr/local/lib/moat/moat-agent", "/usr/lib/moat/moat-agent"];

/// Finds the static agent: `MOAT_AGENT`, else the installed locations
/// ([`INSTALLED_AGENTS`]). Debug builds (the tests, `cargo run`) also look
/// in the cargo target directory they were built into (`make agent`); a
/// release build never looks beside its own executable, so a `moat` copied
/// to a directory such as `/tmp/x/` finds nothing that other users can
/// plant. Whatever is found must pass [`check_trusted`].
pub fn locate_agent() -> Result<PathBuf, InitramfsError> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("MOAT_AGENT") {
        candidates.push(PathBuf::from(p));
    } else {
        candidates.extend(INSTALLED_AGENTS.iter().map(PathBuf::from));
        #[cfg(debug_assertions)]
        candidates.extend(build_tree_agents());
    }
    for c in &candidates {
        if c.is_file() {
            let file = fs::File::open(c).map_err(|source| InitramfsError::Io {
                op: "open",
                path: c.clone(),
                source,
            })?;
            check_trusted(c, &file)?;
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

/// The agent a debug build finds in its own cargo target directory.
#[cfg(debug_assertions)]
fn build_tree_agents() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            // target/debug/moat[/deps/test] -> target/x86_64-unknown-linux-gnu/release/moat-agent
            for up in [dir.parent(), dir.parent().and_then(Path::parent)]
                .into_iter()
                .flatten()
            {
                for profile in ["release", "debug"] {
                    out.push(
                        up.join("x86_64-unknown-linux-gnu")
                            .join(profile)
                            .join("moat-agent"),
                    );
                }
            }
        }
    }
    out
}

/// Whether `file` (opened from `path`) may become a guest's PID 1: owned by
/// root (or by the user running moat), not writable by group or others,
/// and every directory above it owned likewise and not writable by group
/// or others unless sticky (where only a file's owner may replace it).
pub fn check_trusted(path: &Path, file: &fs::File) -> Result<(), InitramfsError> {
    let me = crate::sys::geteuid();
    let check = |what: &'static str, checked: &Path, md: &fs::Metadata, dir: bool| {
        let mode = md.mode() & 0o7777;
        if md.uid() != 0 && md.uid() != me {
            return Err(InitramfsError::AgentNotRoot {
                path: path.to_path_buf(),
                what,
                checked: checked.to_path_buf(),
                uid: md.uid(),
                mode,
            });
        }
        let sticky = dir && mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !sticky {
            return Err(InitramfsError::AgentWritable {
                path: path.to_path_buf(),
                what,
                checked: checked.to_path_buf(),
                who: if mode & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                },
                mode,
            });
        }
        Ok(())
    };
    let md = file.metadata().map_err(|source| InitramfsError::Io {
        op: "stat",
        path: path.to_path_buf(),
        source,
    })?;
    check("the file", path, &md, false)?;
    let abs = fs::canonicalize(path).map_err(|source| InitramfsError::Io {
        op: "resolve",
        path: path.to_path_buf(),
        source,
    })?;
    for dir in abs.ancestors().skip(1) {
        let md = fs::metadata(dir).map_err(|source| InitramfsError::Io {
            op: "stat",
            path: dir.to_path_buf(),
            source,
        })?;
        check("its directory", dir, &md, true)?;
    }
    Ok(())
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
    use std::io::Read;
    let agent = locate_agent()?;
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| InitramfsError::Io { op, path, source }
    };
    // Checked and read through one descriptor: what was checked is what boots.
    let mut file = fs::File::open(&agent).map_err(io("open", &agent))?;
    check_trusted(&agent, &file)?;
    let md = file.metadata().map_err(io("stat", &agent))?;
    let mut h = Sha256::new();
    h.update(agent.as_os_str().as_encoded_bytes());
    h.update(format!(":{}:{}:{}", md.len(), md.mtime(), md.mtime_nsec()).as_bytes());
    let key = hex::encode(&h.finalize()[..8]);
    let dir = root.join("vm").join("initramfs");
    let out = dir.join(format!("{key}.cpio"));
    if out.is_file() {
        return Ok(out);
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io("read", &agent))?;
    if !is_static(&bytes) {
        return Err(InitramfsError::AgentNotStatic { path: agent });
    }
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let stage = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    fs::write(&stage, image(&bytes)).map_err(io("write", &stage))?;
    // Mode 0644 whatever the umask (moatd's unit sets 0077): the jailed,
    // unprivileged QEMU reopens it through /proc/self/fd, which checks
    // the mode. It holds the agent alone, no secret.
    fs::set_permissions(&stage, fs::Permissions::from_mode(0o644)).map_err(io("chmod", &stage))?;
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
    fn only_an_agent_nobody_else_can_replace_is_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("x");
        fs::create_dir(&dir).unwrap();
        let agent = dir.join("moat-agent");
        fs::write(&agent, b"\x7fELF").unwrap();
        let mode =
            |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        let check = || check_trusted(&agent, &fs::File::open(&agent).unwrap());
        mode(&dir, 0o755);
        mode(&agent, 0o755);
        check().unwrap();
        mode(&agent, 0o775);
        assert_eq!(
            check().unwrap_err().to_string(),
            format!(
                "refusing guest agent {a}: the file {a} is writable by its group (mode 0775); moat boots only an agent that nobody but root can replace: `chmod go-w {a}`, or install the agent elsewhere and point MOAT_AGENT at it",
                a = agent.display()
            )
        );
        mode(&agent, 0o755);
        // A directory where anyone may plant or replace files (as /tmp/x/ of
        // a copied moat binary would be).
        mode(&dir, 0o777);
        assert_eq!(
            check().unwrap_err().to_string(),
            format!(
                "refusing guest agent {a}: its directory {d} is writable by others (mode 0777); moat boots only an agent that nobody but root can replace: `chmod go-w {d}`, or install the agent elsewhere and point MOAT_AGENT at it",
                a = agent.display(),
                d = dir.display()
            )
        );
        // Sticky (like /tmp itself): only the owner of a file may replace it.
        mode(&dir, 0o1777);
        check().unwrap();
        mode(&dir, 0o755);
        if crate::sys::geteuid() == 0 {
            std::os::unix::fs::chown(&agent, Some(4242), None).unwrap();
            assert_eq!(
                check().unwrap_err().to_string(),
                format!(
                    "refusing guest agent {a}: the file {a} is owned by uid 4242 (mode 0755); moat boots only an agent that root owns in directories only root can write to: install it as root (`install -o root -m 0755`) or point MOAT_AGENT at such a copy",
                    a = agent.display()
                )
            );
        }
    }

    #[test]
    fn static_detection() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are dynamically linked.
        assert!(!is_static(&me));
        assert!(!is_static(b"not an elf"));
    }
}
