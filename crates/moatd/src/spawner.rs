//! moatd's process spawner: a separate process, started before any
//! thread of moatd is filtered, that does on request the few things the
//! filtered reconcile and advisory threads must not do themselves.
//!
//! A seccomp filter is inherited across `fork` and `execve`: a filtered
//! thread that started `moat` would hand its filter to `moat`, which
//! itself needs `mount`, `setns`, `clone` with namespace flags, `bpf` and
//! more. So the filtered threads start nothing; they ask this process,
//! over a socket pair made before filtering, and it (unfiltered, in its
//! own address space: a compromised thread of moatd cannot rewrite what
//! it runs) does one of a closed set of operations ([`Op`]): run the
//! `moat` binary or `moatd probe-net` (the programs are fixed when the
//! spawner starts, never named by a request), mount the files tmpfs,
//! create a claim's named volume (mkfs), post an event to the loopback
//! webhook fixed at start.
//!
//! Each request is its own connection: the client makes a stream socket
//! pair, passes one end over the control socket (`SCM_RIGHTS`, one
//! `SOCK_SEQPACKET` message, so concurrent threads never interleave),
//! writes the request and reads the reply to the end. The spawner serves
//! each on a thread of its own. It ends when moatd's end of the control
//! socket closes (moatd ended, even by `kill -9`).

use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};

/// Largest request or reply, bytes (a command's output is cut to fit).
const MAX_MESSAGE: usize = 4 << 20;
/// Output kept of a command, per stream.
const MAX_OUTPUT: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error("starting moatd's process spawner {}", exe.display())]
    Start {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("asking moatd's process spawner (it ended? restart moatd)")]
    Ask(#[source] std::io::Error),
    #[error("moatd's process spawner answered what moatd cannot read (restart moatd)")]
    Reply(#[source] serde_json::Error),
}

/// A program the spawner may run; paths fixed when it starts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Program {
    /// The `moat` binary (`--moat`, or beside moatd).
    Moat,
    /// moatd itself, for `probe-net` only.
    ProbeNet,
}

/// What the filtered threads may ask for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// Runs a program with these arguments (bytes), stdin from
    /// /dev/null; killed after `timeout_ms` if given.
    Run {
        program: Program,
        args: Vec<Vec<u8>>,
        timeout_ms: Option<u64>,
        output: bool,
    },
    /// [`crate::files::ensure_tmpfs`] on the files root fixed at start.
    FilesTmpfs,
    /// Creates the named volume of a claim (`moat_runtime::volume_store`).
    CreateVolume { name: String, bytes: u64 },
    /// Posts an event body to the webhook fixed at start.
    Webhook { body: String },
}

/// The answer to an [`Op`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Exit code (`None`: killed by a signal or the timeout, or never ran).
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Why it did not run (or, for the other operations, failed).
    pub error: Option<String>,
}

impl Reply {
    pub fn success(&self) -> bool {
        self.error.is_none() && self.code == Some(0)
    }
}

/// What the spawner is fixed to when it starts (its command line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub moat: PathBuf,
    pub moatd: PathBuf,
    pub state: PathBuf,
    pub files: PathBuf,
    pub webhook: Option<(std::net::SocketAddr, String)>,
}

/// moatd's end: cloneable, used from any thread.
#[derive(Debug, Clone)]
pub struct Client {
    control: std::sync::Arc<OwnedFd>,
}

impl Client {
    /// Starts `moatd spawner` (`exe`) with the other end of a fresh
    /// control socket as its stdin. Call before any thread is filtered.
    pub fn start(exe: &Path, config: &Config) -> Result<Client, SpawnerError> {
        let err = |source| SpawnerError::Start {
            exe: exe.to_path_buf(),
            source,
        };
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| err(e.into()))?;
        let cfg = serde_json::to_string(config).map_err(|e| err(std::io::Error::other(e)))?;
        Command::new(exe)
            .arg("spawner")
            .arg(cfg)
            .stdin(Stdio::from(theirs))
            .spawn()
            .map_err(err)?;
        Ok(Client {
            control: std::sync::Arc::new(ours),
        })
    }

    /// Asks for `op` and waits for the reply.
    pub fn ask(&self, op: &Op) -> Result<Reply, SpawnerError> {
        let (mut mine, theirs) = UnixStream::pair().map_err(SpawnerError::Ask)?;
        let fds = [theirs.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let sent = rustix::net::sendmsg(
            &*self.control,
            &[IoSlice::new(b"r")],
            &mut control,
            SendFlags::NOSIGNAL,
        );
        if sent == Err(rustix::io::Errno::PIPE) {
            // Without its spawner moatd can start nothing: it ends, and
            // its supervisor starts it again (replicas run on and are
            // adopted).
            eprintln!("moatd: error: its process spawner ended; moatd exits to be restarted");
            std::process::exit(1);
        }
        sent.map_err(|e| SpawnerError::Ask(e.into()))?;
        drop(theirs);
        let req = serde_json::to_vec(op).map_err(SpawnerError::Reply)?;
        mine.write_all(&req).map_err(SpawnerError::Ask)?;
        mine.shutdown(std::net::Shutdown::Write)
            .map_err(SpawnerError::Ask)?;
        let mut buf = Vec::new();
        (&mut mine)
            .take(MAX_MESSAGE as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(SpawnerError::Ask)?;
        serde_json::from_slice(&buf).map_err(SpawnerError::Reply)
    }

    /// Runs `program` with `args`; see [`Op::Run`].
    pub fn run(
        &self,
        program: Program,
        args: &[OsString],
        timeout: Option<Duration>,
        output: bool,
    ) -> Result<Reply, SpawnerError> {
        self.ask(&Op::Run {
            program,
            args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
            output,
        })
    }
}

/// `moatd spawner CONFIG` with the control socket on stdin: serves until
/// moatd's end closes.
pub fn serve(config_json: &str) -> anyhow::Result<()> {
    let config: Config = serde_json::from_str(config_json)?;
    let config = std::sync::Arc::new(config);
    let control = std::io::stdin().as_fd().try_clone_to_owned()?;
    loop {
        let mut byte = [0u8; 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &control,
            &mut [IoSliceMut::new(&mut byte)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        );
        let got = match got {
            Ok(g) => g,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        // moatd ended: so does the spawner.
        if got.bytes == 0 {
            return Ok(());
        }
        let mut conn = None;
        for msg in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                for fd in fds {
                    conn.get_or_insert(fd);
                }
            }
        }
        let Some(conn) = conn else { continue };
        let config = config.clone();
        std::thread::spawn(move || {
            let mut s = UnixStream::from(conn);
            let mut buf = Vec::new();
            let reply = match (&mut s).take(MAX_MESSAGE as u64).read_to_end(&mut buf) {
                Ok(_) => match serde_json::from_slice::<Op>(&buf) {
                    Ok(op) => perform(&config, op),
                    Err(e) => Reply {
                        error: Some(format!("unreadable request: {e}")),
                        ..Reply::default()
                    },
                },
                Err(e) => Reply {
                    error: Some(format!("reading the request: {e}")),
                    ..Reply::default()
                },
            };
            if let Ok(text) = serde_json::to_vec(&reply) {
                let _ = s.write_all(&text);
            }
        });
    }
}

fn failed(e: impl std::fmt::Display) -> Reply {
    Reply {
        error: Some(e.to_string()),
        ..Reply::default()
    }
}

fn perform(config: &Config, op: Op) -> Reply {
    match op {
        Op::Run {
            program,
            args,
            timeout_ms,
            output,
        } => run(config, program, args, timeout_ms, output),
        Op::FilesTmpfs => match crate::files::ensure_tmpfs(&config.files) {
            Ok(()) => Reply {
                code: Some(0),
                ..Reply::default()
            },
            Err(e) => failed(anyhow::Error::from(e).to_string()),
        },
        Op::CreateVolume { name, bytes } => {
            let vs = moat_runtime::volume_store::Store::new(&config.state);
            match vs.create(&name, bytes) {
                Ok(_) => Reply {
                    code: Some(0),
                    ..Reply::default()
                },
                Err(e) => failed(e),
            }
        }
        Op::Webhook { body } => {
            if let Some((addr, path)) = &config.webhook {
                crate::daemon::post(*addr, path, &body);
            }
            Reply {
                code: Some(0),
                ..Reply::default()
            }
        }
    }
}

fn run(
    config: &Config,
    program: Program,
    args: Vec<Vec<u8>>,
    timeout_ms: Option<u64>,
    output: bool,
) -> Reply {
    let args: Vec<OsString> = args.into_iter().map(OsString::from_vec).collect();
    let mut c = match program {
        Program::Moat => Command::new(&config.moat),
        Program::ProbeNet => {
            // moatd itself runs `probe-net` only.
            if args.first().map(|a| a.as_bytes()) != Some(b"probe-net") {
                return failed("moatd runs itself only as `probe-net`");
            }
            Command::new(&config.moatd)
        }
    };
    c.args(&args)
        .stdin(Stdio::null())
        .env_remove("SUDO_UID")
        .env_remove("SUDO_USER")
        .env_remove("PKEXEC_UID")
        .env_remove("DOAS_USER");
    if output {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        c.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            return failed(format!(
                "cannot run {}: {e}",
                c.get_program().to_string_lossy()
            ))
        }
    };
    // Output read on threads of their own, so a full pipe never stalls
    // the child.
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(MAX_OUTPUT as u64).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = timeout_ms.map(|t| Instant::now() + Duration::from_millis(t));
    let code = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if deadline.is_none_or(|d| Instant::now() < d) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Reply {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        error: None,
    }
}
