//! The VMM's jail: an unprivileged uid without capabilities or groups,
//! `no_new_privs`, its own mount (host state hidden), pid, ipc, uts and net
//! namespaces, a memory cgroup sized to guest memory plus overhead, and
//! death with its supervisor.
//!
//! Process tree: moat -> `unshare --pid --fork --kill-child` (parent-death
//! signal from moat) -> `sh` as PID 1 of the new pid namespace (parent-death
//! signal from unshare, still root) -> `setpriv` -> the VMM. Whatever way
//! moat ends, the chain of SIGKILLs reaches the namespace's PID 1, and the
//! kernel kills everything else in the namespace with it. (The VMM itself
//! cannot carry a parent-death signal: changing uid clears it.)

use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::hypervisor::VmmCommand;
use crate::sys;

/// First uid of the range jailed VMMs run as (each VM gets its own).
pub const UID_BASE: u32 = 0x7000_0000;

/// Host directories a VMM has no business seeing.
const HIDDEN: [&str; 8] = [
    "/root",
    "/home",
    "/tmp",
    "/var/tmp",
    "/run",
    "/var/lib/moat",
    "/srv",
    "/mnt",
];

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("no memory cgroup controller is reachable (looked for cgroup v2 at /sys/fs/cgroup and v1 at /sys/fs/cgroup/memory): mount one, or run moat where cgroups are available")]
    NoMemoryCgroup,
    #[error("setting up cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the jailed VMM ({program})")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// A memory cgroup for one VM (v2 or v1).
#[derive(Debug)]
pub struct Cgroup {
    pub dir: PathBuf,
}

impl Cgroup {
    pub fn create(name: &str, limit_bytes: u64) -> Result<Cgroup, JailError> {
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_memory = fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
        let (parent, limit_file) = if v2_memory {
            (v2.join("moat"), "memory.max")
        } else if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_file() {
            (
                PathBuf::from("/sys/fs/cgroup/memory/moat"),
                "memory.limit_in_bytes",
            )
        } else {
            return Err(JailError::NoMemoryCgroup);
        };
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JailError::Cgroup { path, source }
        };
        if !parent.is_dir() {
            match fs::create_dir(&parent) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(err(&parent)(e))
                }
                _ => {}
            }
        }
        if v2_memory {
            fs::write(v2.join("cgroup.subtree_control"), "+memory").map_err(err(v2))?;
            fs::write(parent.join("cgroup.subtree_control"), "+memory").map_err(err(&parent))?;
        }
        sweep_stale(&parent);
        let dir = parent.join(name);
        fs::create_dir(&dir).map_err(err(&dir))?;
        let cg = Cgroup { dir };
        fs::write(cg.dir.join(limit_file), limit_bytes.to_string()).map_err(err(&cg.dir))?;
        Ok(cg)
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Waits (bounded) until no process is left, then removes the group.
    pub fn remove(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// PIDs in the group.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.procs())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// Removes empty per-VM groups left by supervisors that were killed. Only
/// groups older than a minute: a younger one may belong to a VM whose VMM
/// has not joined it yet.
fn sweep_stale(parent: &Path) {
    let old = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > Duration::from_secs(60)))
    };
    if let Ok(entries) = fs::read_dir(parent) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("vm-") && old(&e.path()) {
                // Fails with EBUSY while processes are inside: then it is not stale.
                let _ = fs::remove_dir(e.path());
            }
        }
    }
}

/// A running, jailed VMM.
pub struct RunningVmm {
    child: Option<Child>,
    pub console: File,
    cgroup: Cgroup,
    /// Keeps the cleanup watcher waiting; closing it (any exit) wakes it.
    _reaper: OwnedFd,
}

impl RunningVmm {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the VMM is gone; its exit status if so.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills the VMM and everything in its namespace, and waits until the
    /// cgroup is empty and removed.
    pub fn shutdown(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.cgroup.pids() {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        self.cgroup.remove();
    }
}

impl Drop for RunningVmm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Options of the jail.
pub struct JailSpec {
    /// Unique name (`vm-<id>`), used for the cgroup.
    pub name: String,
    pub uid: u32,
    pub guest_memory_mib: u64,
    /// Extra paths the cleanup watcher removes if moat dies abruptly.
    pub cleanup: Vec<PathBuf>,
    /// Extra host directories to hide from the VMM (moat's state root).
    pub hide: Vec<PathBuf>,
    /// The one supplementary group the VMM keeps: the group that owns
    /// `/dev/kvm` when KVM is used (Debian: `kvm`, mode 0660). `None` clears
    /// all groups.
    pub device_group: Option<u32>,
}

/// Starts `cmd` in the jail.
pub fn spawn(cmd: VmmCommand, spec: &JailSpec) -> Result<RunningVmm, JailError> {
    let limit = (spec.guest_memory_mib + cmd.overhead_mib) * 1024 * 1024;
    let cgroup = Cgroup::create(&spec.name, limit)?;
    let procs = File::options()
        .write(true)
        .open(cgroup.procs())
        .map_err(|source| JailError::Cgroup {
            path: cgroup.procs(),
            source,
        })?;
    let reaper = spawn_reaper(&cgroup.dir, &spec.cleanup).map_err(|source| JailError::Spawn {
        program: "cleanup watcher (/bin/sh)".into(),
        source,
    })?;
    let (console_r, console_w) = sys::pipe().map_err(|source| JailError::Spawn {
        program: "pipe".into(),
        source,
    })?;
    let console_w2 = console_w.try_clone().map_err(|source| JailError::Spawn {
        program: "pipe".into(),
        source,
    })?;
    let hide: Vec<CString> = HIDDEN
        .iter()
        .map(PathBuf::from)
        // Never hide a top-level directory the VMM itself needs (--root /usr...).
        .chain(
            spec.hide
                .iter()
                .filter(|p| p.components().count() >= 3)
                .cloned(),
        )
        .filter(|d| d.is_dir())
        .filter_map(|d| CString::new(d.into_os_string().into_encoded_bytes()).ok())
        .collect();
    let pre = sys::PreExec {
        fds: cmd.fds.iter().map(|(fd, n)| (fd.as_raw_fd(), *n)).collect(),
        cgroup_procs: Some(procs.as_raw_fd()),
        hide,
    };
    let uid = spec.uid.to_string();
    let groups = match spec.device_group {
        Some(g) => format!("--groups={g}"),
        None => "--clear-groups".to_string(),
    };
    let script = r#"u=$1; g=$2; shift 2; setpriv --reuid="$u" --regid="$u" "$g" --bounding-set=-all --inh-caps=-all --no-new-privs -- "$@" & wait $!"#;
    let mut command = Command::new("unshare");
    command
        .args([
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--",
            "/bin/sh",
            "-c",
            script,
            "moat-jail",
        ])
        .arg(&uid)
        .arg(&groups)
        .arg(&cmd.program)
        .args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(console_w))
        .stderr(Stdio::from(console_w2))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let child = sys::spawn_with(&mut command, pre).map_err(|source| JailError::Spawn {
        program: cmd.program.display().to_string(),
        source,
    })?;
    // The child has its own copies now.
    drop(cmd.fds);
    drop(procs);
    Ok(RunningVmm {
        child: Some(child),
        console: File::from(console_r),
        cgroup,
        _reaper: reaper,
    })
}

/// A watcher in its own session that removes the cgroup and `paths` once
/// moat's end of its stdin closes, however moat ended (even `kill -9`).
fn spawn_reaper(cgroup: &Path, paths: &[PathBuf]) -> std::io::Result<OwnedFd> {
    let (r, w) = sys::pipe()?;
    // The outer shell backgrounds the watcher and exits at once, so the
    // watcher is re-parented to init and moat needs no reaping thread (a
    // thread would make the process unfit to start a sandbox afterwards,
    // e.g. after the accelerator probe of `--isolation auto`). An
    // asynchronous list gets /dev/null as stdin, hence the pipe on fd 3.
    let script = r#"exec 3<&0; (cat <&3 >/dev/null; exec 3<&-; cg=$1; shift; i=0
while [ -d "$cg" ] && ! rmdir "$cg" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
rm -rf -- "$@") >/dev/null 2>&1 &"#;
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script, "moat-reaper"])
        .arg(cgroup)
        .args(paths)
        .stdin(Stdio::from(r))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = sys::spawn_detached(&mut cmd)?;
    // The outer shell exits as soon as the watcher is in the background.
    child.wait()?;
    Ok(w)
}

/// The group of `/dev/kvm` when that group may read and write it (the
/// jailed VMM keeps it so KVM works without any other privilege).
pub fn kvm_group() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/dev/kvm").ok()?;
    (m.mode() & 0o060 == 0o060 && m.gid() != 0).then_some(m.gid())
}
