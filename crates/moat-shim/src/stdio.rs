//! A process's stdio from the paths containerd gives: FIFOs it reads and
//! writes (or `file://` log paths), and with a terminal the pty master
//! that moat-oci sends to the console socket.
//!
//! Without a terminal, stdout and stderr FIFOs are handed to the process
//! as they are; stdin goes through a pipe so that `CloseIO` can end it.
//! With a terminal, threads copy between the FIFOs and the master.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("opening {what} {path}")]
    Open {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{what} {0:?}: only FIFO paths and file:// URIs are supported (not binary:// loggers)",
        what = "stdio"
    )]
    Scheme(String),
    #[error("making the stdin pipe")]
    Pipe(#[source] std::io::Error),
    #[error("console socket {path}")]
    Console {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The stdio paths of a process as containerd gives them.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The shim's side of a process's stdio, kept while it runs.
#[derive(Default)]
pub struct Io {
    /// Where stdin is written (the pipe, or the pty master); `CloseIO`
    /// drops it.
    stdin: Arc<Mutex<Option<File>>>,
    /// The pty master, for `ResizePty`.
    pub console: Option<OwnedFd>,
    /// Copies that must finish before the exit is reported (output).
    outputs: Vec<JoinHandle<()>>,
}

/// What the child gets: stdin, stdout, stderr (`None`: /dev/null).
#[derive(Default)]
pub struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl ChildStdio {
    pub fn apply(self, cmd: &mut std::process::Command) {
        let s = |fd: Option<OwnedFd>| match fd {
            Some(fd) => std::process::Stdio::from(fd),
            None => std::process::Stdio::null(),
        };
        cmd.stdin(s(self.stdin))
            .stdout(s(self.stdout))
            .stderr(s(self.stderr));
    }
}

fn output(path: &str, what: &'static str) -> Result<Option<File>, StdioError> {
    if path.is_empty() {
        return Ok(None);
    }
    let (p, append) = match path.split_once("://") {
        None => (path, false),
        Some(("file", rest)) => (rest, true),
        Some(("fifo", rest)) => (rest, false),
        Some(_) => return Err(StdioError::Scheme(path.to_string())),
    };
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if append {
        o.append(true).create(true).mode(0o600);
        if let Some(d) = Path::new(p).parent() {
            let _ = std::fs::create_dir_all(d);
        }
    }
    // A FIFO: blocks until containerd has its reading end open.
    o.open(p).map(Some).map_err(|source| StdioError::Open {
        what,
        path: p.to_string(),
        source,
    })
}

/// Copies `from` into the writer in `to` until EOF, an error, or `to` is
/// taken away (`CloseIO`); then drops the writer.
fn pump_stdin(path: String, to: Arc<Mutex<Option<File>>>) {
    std::thread::spawn(move || {
        // Blocks until containerd opens its writing end.
        let Ok(mut from) = File::open(&path) else {
            to.lock().unwrap().take();
            return;
        };
        let mut buf = [0u8; 8192];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut guard = to.lock().unwrap();
            let written = guard.as_mut().map(|w| w.write_all(&buf[..n]).is_ok());
            if written != Some(true) {
                break;
            }
        }
        to.lock().unwrap().take();
    });
}

fn copy_out(mut from: File, mut to: File) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                // EIO: every holder of the pty's peer is gone.
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

impl Io {
    /// Stdio for a process without a terminal.
    pub fn plain(p: &Paths) -> Result<(Io, ChildStdio), StdioError> {
        let mut io = Io::default();
        let stdin = if p.stdin.is_empty() {
            None
        } else {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| StdioError::Pipe(e.into()))?;
            io.stdin = Arc::new(Mutex::new(Some(File::from(w))));
            pump_stdin(p.stdin.clone(), Arc::clone(&io.stdin));
            Some(r)
        };
        let out = |path: &str, what| -> Result<Option<OwnedFd>, StdioError> {
            Ok(output(path, what)?.map(OwnedFd::from))
        };
        let child = ChildStdio {
            stdin,
            stdout: out(&p.stdout, "stdout")?,
            stderr: out(&p.stderr, "stderr")?,
        };
        Ok((io, child))
    }

    /// Stdio for a process on the terminal `master` (from the console
    /// socket): stdin is copied in, the output copied to stdout.
    pub fn terminal(p: &Paths, master: OwnedFd) -> Result<Io, StdioError> {
        let mut io = Io::default();
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|source| StdioError::Console {
                path: "pty master".into(),
                source,
            })
        };
        if let Some(out) = output(&p.stdout, "stdout")? {
            io.outputs.push(copy_out(File::from(dup(&master)?), out));
        }
        if !p.stdin.is_empty() {
            io.stdin = Arc::new(Mutex::new(Some(File::from(dup(&master)?))));
            pump_stdin(p.stdin.clone(), Arc::clone(&io.stdin));
        }
        io.console = Some(master);
        Ok(io)
    }

    /// `CloseIO`: the process reads EOF from stdin (without a terminal).
    pub fn close_stdin(&self) {
        if self.console.is_none() {
            self.stdin.lock().unwrap().take();
        }
    }

    /// `ResizePty`.
    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let Some(m) = &self.console else {
            return Err(std::io::Error::other("the process has no terminal"));
        };
        let ws = rustix::termios::Winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(m.as_fd(), ws).map_err(Into::into)
    }

    /// Waits (up to `limit`) for the output copies to finish, so that
    /// containerd has all the output before it hears of the exit.
    pub fn drain(&mut self, limit: Duration) {
        let end = std::time::Instant::now() + limit;
        for h in self.outputs.drain(..) {
            while !h.is_finished() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.stdin.lock().unwrap().take();
    }
}

/// A listening console socket in a private directory (0700, short path:
/// socket paths are limited to 108 bytes).
pub struct ConsoleSocket {
    dir: tempfile::TempDir,
    listener: std::os::unix::net::UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket, StdioError> {
        let err = |source| StdioError::Console {
            path: "/run/moat-shim-*".into(),
            source,
        };
        let dir = tempfile::Builder::new()
            .prefix("moat-shim-")
            .tempdir_in("/run")
            .map_err(err)?;
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("c")).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(ConsoleSocket { dir, listener })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("c")
    }

    /// The pty master, once the runtime sends it; gives up when `gone()`
    /// says the runtime ended without sending one.
    pub fn receive(&self, mut gone: impl FnMut() -> bool) -> Result<OwnedFd, StdioError> {
        let err = |source| StdioError::Console {
            path: self.path().display().to_string(),
            source,
        };
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(err)?;
                    s.set_read_timeout(Some(Duration::from_secs(30)))
                        .map_err(err)?;
                    return moat_sandbox::oci::recv_fd(s.as_fd())
                        .map_err(err)?
                        .ok_or_else(|| err(std::io::Error::other("no descriptor was sent")));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if gone() {
                        return Err(err(std::io::Error::other(
                            "the runtime ended without sending a terminal",
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loggers_other_than_files_are_refused_by_name() {
        let e = output("binary:///usr/bin/logger?x=1", "stdout").unwrap_err();
        assert_eq!(
            e.to_string(),
            "stdio \"binary:///usr/bin/logger?x=1\": only FIFO paths and file:// URIs are supported (not binary:// loggers)"
        );
    }

    #[test]
    fn close_io_ends_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let p = Paths {
            stdin: fifo.display().to_string(),
            ..Paths::default()
        };
        let (io, child) = Io::plain(&p).unwrap();
        // The containerd side of the FIFO stays open: only CloseIO ends it.
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"hello").unwrap();
        let mut r = File::from(child.stdin.unwrap());
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        io.close_stdin();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
}
