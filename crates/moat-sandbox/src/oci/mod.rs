//! The sandbox under an OCI caller (podman's conmon, containerd's shim):
//! runc's process model. `create` leaves the container's first process
//! waiting at a start gate, reparented to the caller (a subreaper) with no
//! moat process beside it; `start` opens the gate; the caller reaps the
//! workload itself. The namespaces, mounts and devices come from the
//! bundle's `config.json` (already intersected with a moat policy by the
//! front end); the privilege drop is moat's one sequence.
//!
//! The creating process and the container talk over a `SOCK_SEQPACKET`
//! pair (messages in [`init`]); the start gate is a listening unix socket
//! in the container's state directory.

mod init;
mod mounts;
mod sys;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use moat_privdrop::{DropSpec, Exec};

use crate::{ChildError, SandboxError};

/// Descriptor passing over a unix socket (`SCM_RIGHTS`, one per message),
/// for front ends that hand terminals and channels around.
pub use crate::sys::{recv_fd, send_fd};
pub use init::{exec_in, ExecIn};

/// One entry of `config.json`'s `mounts`, bind sources made absolute.
#[derive(Debug, Clone)]
pub struct OciMount {
    pub destination: String,
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// A device node to create in the container.
#[derive(Debug, Clone)]
pub struct OciDevice {
    pub path: String,
    /// `c`, `b`, `u` (unbuffered char) or `p` (fifo).
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A hook: a host executable run with the container's state on stdin.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OciHook {
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<u64>,
}

/// Everything the container's first process applies, in order.
pub struct OciInit {
    pub rootfs: PathBuf,
    pub readonly_root: bool,
    /// `linux.rootfsPropagation` as mount flags (0: private).
    pub rootfs_propagation: libc::c_ulong,
    /// `CLONE_NEW*` flags of the namespaces to create, user excluded.
    pub new_namespaces: libc::c_int,
    /// uid_map and gid_map contents when a user namespace is created.
    pub new_user: Option<(String, String)>,
    /// Namespaces to join: (`CLONE_NEW*` flag, path).
    pub join: Vec<(libc::c_int, PathBuf)>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub mounts: Vec<OciMount>,
    pub masked: Vec<String>,
    pub readonly: Vec<String>,
    pub devices: Vec<OciDevice>,
    pub sysctl: Vec<(String, String)>,
    pub oom_score_adj: Option<i32>,
    pub drop: DropSpec,
    pub exec: Exec,
    pub terminal: bool,
    pub preserve_fds: u32,
    /// The container's cgroup: (v1 hierarchy name or "" for v2, directory).
    pub cgroup_dirs: Vec<(String, PathBuf)>,
    pub create_container_hooks: Vec<OciHook>,
    pub start_container_hooks: Vec<OciHook>,
    /// The state JSON given to hooks on stdin (pid filled in by the init).
    pub state_for_hooks: serde_json::Value,
}

/// What the caller of [`create`] does while the container is built.
pub trait CreateSteps {
    /// The first process exists (host pid): put it in the cgroup.
    fn join_cgroup(&mut self, pid: i32) -> Result<(), SandboxError>;
    /// `createRuntime` (and `prestart`) hooks, in the runtime namespace,
    /// before `pivot_root`.
    fn runtime_hooks(&mut self, pid: i32) -> Result<(), SandboxError>;
}

/// A container whose first process is ready: it waits for
/// [`Created::commit`] (the caller recorded it) before it waits at its
/// gate, and exits if the caller dies first, so that a create killed
/// half-way leaves no process nobody knows about.
pub struct Created {
    pub pid: i32,
    sock: std::os::fd::OwnedFd,
}

impl Created {
    /// The container is recorded: let it wait for `start`.
    pub fn commit(self) -> Result<(), SandboxError> {
        crate::sys::write_fd(std::os::fd::AsFd::as_fd(&self.sock), b"commit")
            .map(drop)
            .map_err(|source| SandboxError::Prepare {
                what: "committing the container".into(),
                source,
            })
    }
}

/// Creates the container: its first process, ready and held until
/// [`Created::commit`], then waiting at the gate `gate` (a listening
/// socket) for [`start`]. `console` is the connected console socket when
/// `process.terminal`.
pub fn create(
    init: &OciInit,
    gate: UnixListener,
    console: Option<UnixStream>,
    steps: &mut dyn CreateSteps,
) -> Result<Created, SandboxError> {
    init::create(init, gate, console, steps)
}

/// Opens the start gate of a created container: returns once the workload
/// runs (its `execve` succeeded), or the error that stopped it.
pub fn start(gate: &Path) -> Result<(), SandboxError> {
    let mut s = UnixStream::connect(gate).map_err(|source| SandboxError::Prepare {
        what: format!("opening the start gate {}", gate.display()),
        source,
    })?;
    s.write_all(b"s").map_err(|source| SandboxError::Prepare {
        what: "starting the container".into(),
        source,
    })?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    if buf.is_empty() {
        return Ok(());
    }
    Err(child_error(&buf))
}

fn child_error(buf: &[u8]) -> SandboxError {
    match serde_json::from_slice::<ChildError>(buf) {
        Ok(e) if e.kind == 127 => SandboxError::CommandNotFound {
            command: e.detail,
            path: String::new(),
        },
        Ok(e) if e.kind == 126 => SandboxError::CommandNotExecutable {
            command: e.step,
            detail: e.detail,
        },
        Ok(e) => SandboxError::Setup {
            step: e.step,
            detail: e.detail,
        },
        Err(_) => SandboxError::Setup {
            step: "container".into(),
            detail: String::from_utf8_lossy(buf).into_owned(),
        },
    }
}

/// Runs one hook with `state` on stdin, bounded by its timeout (default
/// 30 s); a non-zero exit is an error naming the hook.
pub fn run_hook(hook: &OciHook, state: &[u8]) -> Result<(), String> {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(&hook.path);
    if let Some((argv0, rest)) = hook.args.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
        cmd.args(rest);
    }
    cmd.env_clear();
    for kv in &hook.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("hook {}: cannot run: {e}", hook.path))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(state);
    }
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(hook.timeout.unwrap_or(30));
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("hook {} failed: {st}", hook.path)),
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("hook {} timed out", hook.path));
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => return Err(format!("hook {}: {e}", hook.path)),
        }
    }
}

/// Mount propagation flags of a runtime-spec name (`rslave`, `private`).
pub fn propagation(name: &str) -> libc::c_ulong {
    mounts::propagation_flag(name)
}
