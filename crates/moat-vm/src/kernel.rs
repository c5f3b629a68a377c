//! The guest kernel: the project's config fragment applied on `make
//! tinyconfig` of Debian's `linux-source-6.1`, built once and cached under
//! `<state root>/kernels/<key>/vmlinux`, where the key hashes the fragment
//! and the identity of the source tarball.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::lock::FileLock;

/// The config fragment (see `kernel/moat.config`).
pub const FRAGMENT: &str = include_str!("../kernel/moat.config");
/// Default source tarball (Debian's `linux-source-6.1`).
pub const DEFAULT_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";
/// The system-wide state root, searched after the caller's own root.
pub const SYSTEM_ROOT: &str = "/var/lib/moat";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel source {path} not found: install it with `apt-get install linux-source-6.1` (scripts/bootstrap does) or set MOAT_KERNEL_SOURCE")]
    SourceMissing { path: PathBuf },
    #[error("no guest kernel built for this configuration (key {key}): run `moat kernel build` once (about 5 minutes on 2 cores), or `make kernel`")]
    NotBuilt { key: String },
    #[error("MOAT_KERNEL={path} does not exist: point it at a vmlinux or unset it")]
    ExplicitMissing { path: PathBuf },
    #[error("{step} failed in {dir}: {detail}")]
    Step {
        step: String,
        dir: PathBuf,
        detail: String,
    },
    #[error("kernel config option {option} did not take effect after olddefconfig (got {got:?}): fix its dependencies in kernel/moat.config")]
    OptionLost { option: String, got: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> KernelError + 'a {
    move |source| KernelError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The source tarball in use (`MOAT_KERNEL_SOURCE` overrides).
pub fn source_path() -> PathBuf {
    std::env::var_os("MOAT_KERNEL_SOURCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOURCE))
}

fn source_identity(source: &Path) -> Result<String, KernelError> {
    let md = fs::metadata(source).map_err(|_| KernelError::SourceMissing {
        path: source.to_path_buf(),
    })?;
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(format!("{name}:{}:{}", md.len(), md.mtime()))
}

/// The cache key: sha256 over the fragment and the source tarball identity.
pub fn cache_key(source: &Path) -> Result<String, KernelError> {
    let mut h = Sha256::new();
    h.update(b"moat-kernel-1\0");
    h.update(FRAGMENT.as_bytes());
    h.update(b"\0");
    h.update(source_identity(source)?.as_bytes());
    Ok(hex::encode(&h.finalize()[..8]))
}

/// Where the kernel for `key` lives under `root`.
pub fn cached_path(root: &Path, key: &str) -> PathBuf {
    root.join("kernels").join(key).join("vmlinux")
}

/// Finds the built guest kernel: `MOAT_KERNEL`, then `<root>/kernels`, then
/// the system-wide `/var/lib/moat/kernels` (so tests with temporary roots
/// share one build).
pub fn locate(root: &Path) -> Result<PathBuf, KernelError> {
    if let Some(p) = std::env::var_os("MOAT_KERNEL") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(KernelError::ExplicitMissing { path: p })
        };
    }
    let key = cache_key(&source_path())?;
    for r in [root, Path::new(SYSTEM_ROOT)] {
        let p = cached_path(r, &key);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(KernelError::NotBuilt { key })
}

/// Build progress, for the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// `step` of `total`, with a description.
    Step { step: u32, total: u32, what: String },
    /// Objects compiled so far.
    Compiled(u64),
    /// Another build holds the cache lock: this one waits for it.
    Waiting { lock: PathBuf },
}

/// Result of [`build`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Built {
    pub key: String,
    pub path: PathBuf,
    pub release: String,
    /// False when the cached kernel was reused.
    pub built: bool,
}

/// Builds the kernel into the cache unless it is there already.
pub fn build(
    root: &Path,
    jobs: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Built, KernelError> {
    let source = source_path();
    let key = cache_key(&source)?;
    let kernels = root.join("kernels");
    fs::create_dir_all(&kernels).map_err(io("create", &kernels))?;
    let _lock = FileLock::exclusive_or_wait(&kernels.join(".lock"), || {
        progress(Progress::Waiting {
            lock: kernels.join(".lock"),
        })
    })
    .map_err(io("lock", &kernels))?;
    let out_dir = kernels.join(&key);
    let out = out_dir.join("vmlinux");
    if out.is_file() {
        let release = fs::read_to_string(out_dir.join("release")).unwrap_or_default();
        return Ok(Built {
            key,
            path: out,
            release: release.trim().to_string(),
            built: false,
        });
    }
    let total = 5;
    // One extracted tree per source tarball, reused across config changes.
    let src_key = {
        let mut h = Sha256::new();
        h.update(source_identity(&source)?.as_bytes());
        hex::encode(&h.finalize()[..8])
    };
    let build_dir = kernels.join("build").join(format!("src-{src_key}"));
    let marker = build_dir.join(".extracted");
    progress(Progress::Step {
        step: 1,
        total,
        what: format!("extracting {}", source.display()),
    });
    if !marker.is_file() {
        if build_dir.exists() {
            fs::remove_dir_all(&build_dir).map_err(io("remove", &build_dir))?;
        }
        fs::create_dir_all(&build_dir).map_err(io("create", &build_dir))?;
        run(
            Command::new("tar")
                .arg("xf")
                .arg(&source)
                .current_dir(&build_dir),
            "tar xf",
            &build_dir,
        )?;
        fs::write(&marker, b"").map_err(io("write", &marker))?;
    }
    let tree = find_tree(&build_dir)?;
    progress(Progress::Step {
        step: 2,
        total,
        what: "configuring (tinyconfig + kernel/moat.config)".into(),
    });
    let fragment = tree.join("moat.config");
    fs::write(&fragment, FRAGMENT).map_err(io("write", &fragment))?;
    run(
        Command::new("make").arg("tinyconfig").current_dir(&tree),
        "make tinyconfig",
        &tree,
    )?;
    run(
        Command::new("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config", "moat.config"])
            .current_dir(&tree),
        "merge_config.sh",
        &tree,
    )?;
    run(
        Command::new("make").arg("olddefconfig").current_dir(&tree),
        "make olddefconfig",
        &tree,
    )?;
    let config = fs::read_to_string(tree.join(".config")).map_err(io("read", &tree))?;
    check_config(FRAGMENT, &config)?;
    progress(Progress::Step {
        step: 3,
        total,
        what: format!("compiling vmlinux with {jobs} jobs (about 5 minutes on 2 cores)"),
    });
    compile(&tree, jobs, progress)?;
    progress(Progress::Step {
        step: 4,
        total,
        what: "installing into the cache".into(),
    });
    let release =
        fs::read_to_string(tree.join("include/config/kernel.release")).unwrap_or_default();
    let stage = kernels.join(format!(".stage-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).map_err(io("create", &stage))?;
    fs::copy(tree.join("vmlinux"), stage.join("vmlinux")).map_err(io("copy", &stage))?;
    fs::write(stage.join("config"), &config).map_err(io("write", &stage))?;
    fs::write(stage.join("release"), release.trim()).map_err(io("write", &stage))?;
    fs::rename(&stage, &out_dir).map_err(io("rename", &out_dir))?;
    progress(Progress::Step {
        step: 5,
        total,
        what: format!("done: {}", out.display()),
    });
    Ok(Built {
        key,
        path: out,
        release: release.trim().to_string(),
        built: true,
    })
}

fn find_tree(build_dir: &Path) -> Result<PathBuf, KernelError> {
    let entries = fs::read_dir(build_dir).map_err(io("read", build_dir))?;
    for e in entries.flatten() {
        if e.path().join("Makefile").is_file() {
            return Ok(e.path());
        }
    }
    Err(KernelError::Step {
        step: "finding the kernel tree".into(),
        dir: build_dir.to_path_buf(),
        detail: "no directory with a Makefile after extraction".into(),
    })
}

fn run(cmd: &mut Command, step: &str, dir: &Path) -> Result<(), KernelError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| KernelError::Step {
            step: step.into(),
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(15).collect();
    Err(KernelError::Step {
        step: step.into(),
        dir: dir.to_path_buf(),
        detail: format!(
            "{}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ),
    })
}

fn compile(
    tree: &Path,
    jobs: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), KernelError> {
    let log_path = tree.join("moat-build.log");
    let log = fs::File::create(&log_path).map_err(io("create", &log_path))?;
    let mut child = Command::new("make")
        .arg(format!("-j{jobs}"))
        .arg("vmlinux")
        .current_dir(tree)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| KernelError::Step {
            step: "make vmlinux".into(),
            dir: tree.to_path_buf(),
            detail: e.to_string(),
        })?;
    let mut n = 0u64;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("CC") {
                n += 1;
                progress(Progress::Compiled(n));
            }
        }
    }
    let status = child.wait().map_err(io("wait for make in", tree))?;
    if !status.success() {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        return Err(KernelError::Step {
            step: "make vmlinux".into(),
            dir: tree.to_path_buf(),
            detail: format!(
                "{status} (full log in {}): {}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        });
    }
    Ok(())
}

/// Every option of the fragment must hold in the final `.config`.
pub fn check_config(fragment: &str, config: &str) -> Result<(), KernelError> {
    for line in fragment.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((opt, want)) = line.split_once('=') else {
            continue;
        };
        let got = config
            .lines()
            .find_map(|l| {
                if let Some(v) = l.strip_prefix(opt).and_then(|r| r.strip_prefix('=')) {
                    Some(v.to_string())
                } else if l == format!("# {opt} is not set") {
                    Some("n".to_string())
                } else {
                    None
                }
            })
            .unwrap_or_else(|| "n".to_string());
        if got != want {
            return Err(KernelError::OptionLost {
                option: opt.to_string(),
                got,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_checks_catch_lost_options() {
        let frag = "# c\nCONFIG_A=y\nCONFIG_B=n\nCONFIG_N=16\n";
        assert!(check_config(frag, "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=16\n").is_ok());
        assert_eq!(
            check_config(frag, "CONFIG_N=16\n").unwrap_err().to_string(),
            "kernel config option CONFIG_A did not take effect after olddefconfig (got \"n\"): fix its dependencies in kernel/moat.config"
        );
        assert_eq!(
            check_config(frag, "CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=16\n").unwrap_err().to_string(),
            "kernel config option CONFIG_B did not take effect after olddefconfig (got \"y\"): fix its dependencies in kernel/moat.config"
        );
    }

    #[test]
    fn key_changes_with_the_source() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("linux-source-6.1.tar.xz");
        fs::write(&a, b"one").unwrap();
        let k1 = cache_key(&a).unwrap();
        assert_eq!(k1.len(), 16);
        fs::write(&a, b"other").unwrap();
        assert_ne!(cache_key(&a).unwrap(), k1);
        assert_eq!(
            cache_key(&d.path().join("nope")).unwrap_err().to_string(),
            format!(
                "kernel source {}/nope not found: install it with `apt-get install linux-source-6.1` (scripts/bootstrap does) or set MOAT_KERNEL_SOURCE",
                d.path().display()
            )
        );
    }

    #[test]
    fn the_fragment_has_what_the_guest_needs() {
        for opt in [
            "CONFIG_PVH=y",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
            "CONFIG_VIRTIO_CONSOLE=y",
            "CONFIG_DM_VERITY=y",
            "CONFIG_DM_INIT=y",
            "CONFIG_EROFS_FS=y",
            "CONFIG_SECCOMP_FILTER=y",
            "CONFIG_ACPI=y",
            "CONFIG_PCI=y",
            "CONFIG_CGROUP_PIDS=y",
            // The agent's failure report (docs/vm.md).
            "CONFIG_AUDIT=y",
            "CONFIG_AUDITSYSCALL=y",
            // Surface a guest root could use, off (second review, item 8).
            "CONFIG_USER_NS=n",
            "CONFIG_VT=n",
            "CONFIG_DEVPORT=n",
            "CONFIG_ACPI_BATTERY=n",
            "CONFIG_ACPI_FAN=n",
            "CONFIG_ACPI_THERMAL=n",
            "CONFIG_SECURITY_PERF_EVENTS_RESTRICT=y",
        ] {
            assert!(FRAGMENT.lines().any(|l| l == opt), "{opt}");
        }
    }
}
