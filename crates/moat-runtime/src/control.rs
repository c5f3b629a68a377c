//! The monitor's control socket: how a front end talks to the monitor of
//! a detached container (`<run_root>/containers/<id>/monitor.sock`, mode
//! 0600 in a 0700 directory; the monitor also checks each peer's
//! credentials). One JSON request per connection, one JSON reply.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::ContainerId;

/// The socket's name in the container's run directory.
pub const SOCKET: &str = "monitor.sock";

/// Where the control socket of container `id` is.
pub fn socket_path(run_root: &Path, id: &ContainerId) -> PathBuf {
    run_dir(run_root, id).join(SOCKET)
}

/// The container's directory under the run root (sockets, nothing that
/// must survive a reboot).
pub fn run_dir(run_root: &Path, id: &ContainerId) -> PathBuf {
    crate::record::containers_dir(run_root).join(id.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Answer once the container has stopped.
    Wait,
    /// Send SIGTERM (through the supervisor, which forwards it), SIGKILL
    /// after `timeout_secs`; answer once the container has stopped.
    Stop { timeout_secs: u64 },
    /// Start a container created and held by its monitor; answer once its
    /// workload runs.
    Start,
    /// Send (SCM_RIGHTS) the exec channel of a container whose backend
    /// execs through its supervisor (a micro-VM's).
    ExecChannel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The workload's exit status (128+N for signal N), if known.
    pub exit_code: Option<i32>,
    /// Why the request failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the monitor of container {id} at {path}")]
    Connect {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the monitor of container {id}")]
    Io {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the monitor of container {id} answered {answer:?}, which is not a reply")]
    BadReply { id: String, answer: String },
    #[error("the monitor of container {id}: {message}")]
    Refused { id: String, message: String },
}

/// A path to `file` in `dir` short enough for a socket address (108
/// bytes, which a deep run root with a 64-digit ID can pass): through the
/// descriptor `dir_fd` of the directory, `/proc/self/fd/N/file`.
pub fn short_path(dir_fd: &std::fs::File, file: &str) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}/{file}", dir_fd.as_raw_fd()))
}

/// Connects to the control socket of container `id`.
fn connect(run_root: &Path, id: &ContainerId) -> Result<UnixStream, ControlError> {
    let path = socket_path(run_root, id);
    let connect_err = |source| ControlError::Connect {
        id: id.to_string(),
        path: path.clone(),
        source,
    };
    let dir = std::fs::File::open(run_dir(run_root, id)).map_err(connect_err)?;
    UnixStream::connect(short_path(&dir, SOCKET)).map_err(connect_err)
}

/// Sends `req` to the monitor of container `id` and waits for its reply.
pub fn request(
    run_root: &Path,
    id: &ContainerId,
    req: &Request,
) -> Result<Option<i32>, ControlError> {
    let io = |source| ControlError::Io {
        id: id.to_string(),
        source,
    };
    let mut s = connect(run_root, id)?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new((&s).take(64 * 1024))
        .read_line(&mut answer)
        .map_err(io)?;
    let reply: Reply = serde_json::from_str(&answer).map_err(|_| ControlError::BadReply {
        id: id.to_string(),
        answer: answer.chars().take(200).collect(),
    })?;
    match reply.error {
        Some(message) => Err(ControlError::Refused {
            id: id.to_string(),
            message,
        }),
        None => Ok(reply.exit_code),
    }
}

/// Parses one request line (at most [`MAX_REQUEST`] bytes).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice(line).map_err(|e| format!("not a request: {e}"))
}

/// The longest request line the monitor reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Asks the monitor of container `id` for its exec channel (see
/// [`Request::ExecChannel`]).
pub fn exec_channel(
    run_root: &Path,
    id: &ContainerId,
) -> Result<std::os::fd::OwnedFd, ControlError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let io = |source| ControlError::Io {
        id: id.to_string(),
        source,
    };
    let mut s = connect(run_root, id)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line =
        serde_json::to_vec(&Request::ExecChannel).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut buf = [0u8; 4096];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = rustix::net::recvmsg(&s, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| io(e.into()))?;
    let mut fd = None;
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    let answer = String::from_utf8_lossy(&buf[..msg.bytes]).into_owned();
    let reply: Reply =
        serde_json::from_str(answer.trim_end()).map_err(|_| ControlError::BadReply {
            id: id.to_string(),
            answer: answer.chars().take(200).collect(),
        })?;
    if let Some(message) = reply.error {
        return Err(ControlError::Refused {
            id: id.to_string(),
            message,
        });
    }
    fd.ok_or_else(|| ControlError::BadReply {
        id: id.to_string(),
        answer: "a reply without the channel".into(),
    })
}

/// Sends `reply` with `fd` attached (SCM_RIGHTS) on `s`.
pub fn send_with_fd(
    s: &UnixStream,
    reply: &Reply,
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let fds = [fd];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("ancillary buffer too small"));
    }
    rustix::net::sendmsg(
        s,
        &[std::io::IoSlice::new(&line)],
        &mut cmsg,
        SendFlags::empty(),
    )?;
    Ok(())
}
