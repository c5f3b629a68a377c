//! `exec` into a running VM container, through the guest agent.
//!
//! The caller of [`crate::run_container_with`] may pass one end of a unix
//! `SOCK_SEQPACKET` socketpair as [`crate::VmRunOptions::control`]; the
//! supervisor then accepts exec requests on it while the workload runs.
//! [`request`] is the client: one message per request, JSON
//! `{"process": ProcessSpec, "tty": bool}`, carrying four descriptors by
//! `SCM_RIGHTS`: a reply socket (a fresh socketpair's end, so that several
//! requests, from several threads, can be in flight on one control
//! socket), then the process's stdin, stdout and stderr (with a terminal,
//! one pty peer three times). The supervisor relays the process's stdio
//! between those descriptors and the agent (frames `Exec*`, by a process
//! id it assigns), and answers on the reply socket with `{"code": N}` when
//! the process has ended and its output is written, or `{"error": "..."}`.
//!
//! In the guest, the agent starts the process under the workload's plan,
//! in its cgroup, PID and mount namespaces (see `moat-agent`'s
//! `workload::spawn_exec`): never weaker than the first process.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use moat_agent::proto::{ExecStart, Message, MAX_DATA};
pub use moat_agent::proto::{Member, MemberDir, MemberFile};
use moat_policy::ProcessSpec;
use serde::{Deserialize, Serialize};

use crate::{sys, VmError};

/// Largest request message (a process spec with its environment).
const MAX_REQUEST: usize = 256 * 1024;
/// Output held for a caller that does not read, per process, before more
/// is dropped (the channel to the guest is shared and cannot wait).
const MAX_PENDING: usize = 8 << 20;
/// Largest write to a caller's descriptor at once (PIPE_BUF: a pipe that
/// polls writable takes it without blocking).
const WRITE_CHUNK: usize = 4096;

#[derive(Serialize, Deserialize)]
struct Request {
    process: ProcessSpec,
    tty: bool,
    /// Start a further container of the pod instead of an exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    member: Option<Box<Member>>,
    /// Exec into this pod container rather than the workload's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

/// What a caller sends on its reply socket while its process runs.
#[derive(Default, Serialize, Deserialize)]
struct Control {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    /// The caller's terminal's new size (rows, columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resize: Option<(u16, u16)>,
}

/// Where a request's process runs.
#[derive(Debug, Clone, Default)]
pub enum Place {
    /// In the workload's container (an exec).
    #[default]
    Workload,
    /// In the pod container of this name (an exec).
    Member(String),
    /// As the first process of a new pod container.
    NewMember(Box<Member>),
}

/// A request in flight: [`Call::signal`] its process, [`Call::wait`] for
/// its end.
pub struct Call {
    reply: OwnedFd,
}

impl Call {
    /// Sends `sig` to the process (delivered in the guest by the agent).
    pub fn signal(&self, sig: i32) -> Result<(), VmError> {
        self.control(Control {
            signal: Some(sig),
            ..Control::default()
        })
    }

    /// Gives the process's terminal (with `tty`) a new size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), VmError> {
        self.control(Control {
            resize: Some((rows, cols)),
            ..Control::default()
        })
    }

    fn control(&self, c: Control) -> Result<(), VmError> {
        let msg = serde_json::to_vec(&c).map_err(|e| VmError::Exec(std::io::Error::other(e)))?;
        sys::send_with_fds(self.reply.as_fd(), &msg, &[]).map_err(|e| match e.raw_os_error() {
            Some(libc::EPIPE | libc::ECONNRESET) => VmError::ExecEnded,
            _ => VmError::Exec(e),
        })
    }

    /// A second handle on the same process (for a signal relay thread).
    pub fn try_clone(&self) -> std::io::Result<Call> {
        Ok(Call {
            reply: self.reply.try_clone()?,
        })
    }

    /// Blocks until the process has ended and its output is written;
    /// its exit code.
    pub fn wait(self) -> Result<i32, VmError> {
        let mut buf = vec![0u8; 4096];
        let r = sys::recv_with_fds(self.reply.as_fd(), &mut buf).map_err(VmError::Exec)?;
        if r.len == 0 {
            return Err(VmError::ExecEnded);
        }
        let reply: Reply = serde_json::from_slice(&buf[..r.len])
            .map_err(|e| VmError::Exec(std::io::Error::other(e)))?;
        match (reply.code, reply.error) {
            (Some(code), _) => Ok(code),
            (None, Some(message)) => Err(VmError::ExecRefused { message }),
            (None, None) => Err(VmError::ExecEnded),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs `process` in the running VM container whose supervisor holds the
/// other end of `control`, with `stdin`, `stdout` and `stderr` as its stdio
/// (with `tty`, the process gets a terminal in the guest and the three are
/// normally one pty peer; the terminal starts with `stdin`'s window size).
/// Blocks until the process has ended and its output is written; returns
/// its exit code (128+N for signal N; 126 or 127 when the command cannot
/// run, with the reason written to `stderr`). The process runs under the
/// container's plan whatever `process` says about anything but its
/// command, environment, working directory and ids.
///
/// Safe to call from several threads at once on the same `control`.
pub fn request(
    control: BorrowedFd<'_>,
    process: &ProcessSpec,
    tty: bool,
    stdin: BorrowedFd<'_>,
    stdout: BorrowedFd<'_>,
    stderr: BorrowedFd<'_>,
) -> Result<i32, VmError> {
    send(
        control,
        process,
        tty,
        Place::Workload,
        [stdin, stdout, stderr],
    )?
    .wait()
}

/// Sends a request for `process` at `place` (see [`request`]) and returns
/// at once; the call ends when [`Call::wait`] returns.
pub fn send(
    control: BorrowedFd<'_>,
    process: &ProcessSpec,
    tty: bool,
    place: Place,
    [stdin, stdout, stderr]: [BorrowedFd<'_>; 3],
) -> Result<Call, VmError> {
    let mut process = process.clone();
    process.tty = tty;
    let (member, target) = match place {
        Place::Workload => (None, None),
        Place::Member(name) => (None, Some(name)),
        Place::NewMember(m) => (Some(m), None),
    };
    let msg = serde_json::to_vec(&Request {
        process,
        tty,
        member,
        target,
    })
    .map_err(|e| VmError::Exec(std::io::Error::other(e)))?;
    if msg.len() > MAX_REQUEST {
        return Err(VmError::ExecRefused {
            message: format!(
                "the request is {} bytes, more than the limit of {MAX_REQUEST}: shorten the command or its environment",
                msg.len()
            ),
        });
    }
    let (mine, theirs) = sys::seqpacket_pair().map_err(VmError::Exec)?;
    sys::send_with_fds(control, &msg, &[theirs.as_fd(), stdin, stdout, stderr]).map_err(|e| {
        match e.raw_os_error() {
            // The supervisor closed its end: the container has ended.
            Some(libc::EPIPE | libc::ECONNRESET | libc::ECONNREFUSED) => VmError::ExecEnded,
            _ => VmError::Exec(e),
        }
    })?;
    drop(theirs);
    Ok(Call { reply: mine })
}

/// The size (rows, columns) of the terminal `fd`, if it is one.
pub fn terminal_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    sys::winsize(fd.as_raw_fd())
}

/// A new exec control channel: `(caller's end, supervisor's end)`, a
/// connected unix `SOCK_SEQPACKET` pair, both close-on-exec. Give the
/// second to [`crate::VmRunOptions::control`], keep the first for
/// [`request`].
pub fn control_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    sys::seqpacket_pair()
}

/// One exec'd process, on the supervisor's side.
struct Proc {
    reply: OwnedFd,
    stdin: Option<File>,
    /// stdout, stderr; `None` once writing failed.
    outs: [Option<File>; 2],
    pending: [Vec<u8>; 2],
    exit: Option<i32>,
    /// The caller went away: the process was sent SIGKILL.
    abandoned: bool,
}

/// What a poll slot of the exec relay is.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    Control,
    Stdin(u32),
    Out(u32, usize),
    Reply(u32),
}

/// The supervisor's side of exec: the control socket and the processes
/// in flight.
pub(crate) struct Execs {
    control: Option<OwnedFd>,
    session: String,
    next_id: u32,
    procs: BTreeMap<u32, Proc>,
    /// Frames for ids that are not in flight, ignored (a hostile guest).
    pub ignored: u64,
    /// Read buffer, allocated at the first request.
    buf: Vec<u8>,
}

impl Execs {
    pub fn new(control: Option<OwnedFd>, session: &str) -> Execs {
        Execs {
            control,
            session: session.to_string(),
            next_id: 1,
            procs: BTreeMap::new(),
            ignored: 0,
            buf: Vec::new(),
        }
    }

    /// The descriptors to poll, appended to `fds`. Requests are taken
    /// only once the workload runs (`accepting`); callers' stdin only
    /// while the queue to the guest has room.
    pub fn poll_fds(&self, fds: &mut Vec<libc::pollfd>, accepting: bool, room: bool) -> Vec<Slot> {
        let mut slots = Vec::new();
        let mut add = |fd: i32, events: i16, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        if let (Some(c), true) = (&self.control, accepting) {
            add(c.as_raw_fd(), libc::POLLIN, Slot::Control);
        }
        for (&id, p) in &self.procs {
            if let (Some(s), true) = (&p.stdin, room) {
                add(s.as_raw_fd(), libc::POLLIN, Slot::Stdin(id));
            }
            for (i, f) in p.outs.iter().enumerate() {
                if let (Some(f), false) = (f, p.pending[i].is_empty()) {
                    add(f.as_raw_fd(), libc::POLLOUT, Slot::Out(id, i));
                }
            }
            if !p.abandoned {
                // A signal to deliver, or POLLHUP: the caller went away.
                add(p.reply.as_raw_fd(), libc::POLLIN, Slot::Reply(id));
            }
        }
        slots
    }

    /// Services the ready descriptors, queueing frames for the guest.
    pub fn service(
        &mut self,
        fds: &[libc::pollfd],
        slots: &[Slot],
        queue: &mut dyn FnMut(Message) -> Result<(), VmError>,
    ) -> Result<(), VmError> {
        if fds.iter().any(|f| f.revents != 0) && self.buf.is_empty() {
            self.buf = vec![0u8; MAX_REQUEST.max(MAX_DATA)];
        }
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.service_with(fds, slots, &mut buf, queue);
        self.buf = buf;
        r
    }

    fn service_with(
        &mut self,
        fds: &[libc::pollfd],
        slots: &[Slot],
        buf: &mut [u8],
        queue: &mut dyn FnMut(Message) -> Result<(), VmError>,
    ) -> Result<(), VmError> {
        for (fd, slot) in fds.iter().zip(slots) {
            if fd.revents == 0 {
                continue;
            }
            match *slot {
                Slot::Control => self.accept(fd.revents, buf, queue)?,
                Slot::Stdin(id) => {
                    let Some(p) = self.procs.get_mut(&id) else {
                        continue;
                    };
                    let Some(s) = &mut p.stdin else { continue };
                    match s.read(&mut buf[..MAX_DATA]) {
                        Ok(n) if n > 0 => queue(Message::ExecStdin {
                            id,
                            data: buf[..n].to_vec(),
                        })?,
                        _ => {
                            p.stdin = None;
                            queue(Message::ExecStdinEof(id))?;
                        }
                    }
                }
                Slot::Out(id, i) => {
                    let Some(p) = self.procs.get_mut(&id) else {
                        continue;
                    };
                    let Some(f) = &mut p.outs[i] else { continue };
                    let chunk = p.pending[i].len().min(WRITE_CHUNK);
                    match f.write(&p.pending[i][..chunk]) {
                        Ok(n) => {
                            p.pending[i].drain(..n);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => {
                            p.outs[i] = None;
                            p.pending[i].clear();
                        }
                    }
                }
                Slot::Reply(id) => {
                    if fd.revents & libc::POLLIN != 0 {
                        if let Some(p) = self.procs.get(&id) {
                            let mut b = [0u8; 128];
                            // A caller's signal; anything else is dropped.
                            if let Ok(r) = sys::recv_with_fds(p.reply.as_fd(), &mut b) {
                                let c = serde_json::from_slice::<Control>(&b[..r.len]);
                                if let (Ok(c), None) = (c, p.exit) {
                                    if let Some(sig) = c.signal.filter(|s| (1..=64).contains(s)) {
                                        queue(Message::ExecSignal { id, sig })?;
                                    }
                                    if let Some((rows, cols)) = c.resize {
                                        queue(Message::ExecResize { id, rows, cols })?;
                                    }
                                }
                            }
                        }
                    }
                    if fd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                        if let Some(p) = self.procs.get_mut(&id) {
                            // Nobody waits for it: end it.
                            p.abandoned = true;
                            p.stdin = None;
                            if p.exit.is_none() {
                                queue(Message::ExecSignal {
                                    id,
                                    sig: libc::SIGKILL,
                                })?;
                            }
                        }
                    }
                }
            }
        }
        self.finish();
        Ok(())
    }

    /// Takes one request from the control socket.
    fn accept(
        &mut self,
        revents: i16,
        buf: &mut [u8],
        queue: &mut dyn FnMut(Message) -> Result<(), VmError>,
    ) -> Result<(), VmError> {
        let Some(control) = &self.control else {
            return Ok(());
        };
        let r = match sys::recv_with_fds(control.as_fd(), buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(_) => {
                self.control = None;
                return Ok(());
            }
        };
        if r.len == 0 && r.fds.is_empty() {
            if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                // The caller closed its end: no more requests.
                self.control = None;
            }
            return Ok(());
        }
        let mut fds = r.fds.into_iter();
        let Some(reply) = fds.next() else {
            return Ok(()); // Nowhere to answer.
        };
        let refuse = |reply: &OwnedFd, message: &str| {
            send_reply(
                reply,
                &Reply {
                    code: None,
                    error: Some(message.to_string()),
                },
            );
        };
        let stdio: Vec<OwnedFd> = fds.collect();
        if r.truncated || stdio.len() != 3 {
            refuse(
                &reply,
                "malformed exec request: expected one JSON message with a reply socket, stdin, stdout and stderr",
            );
            return Ok(());
        }
        let req: Request = match serde_json::from_slice(&buf[..r.len]) {
            Ok(q) => q,
            Err(e) => {
                refuse(&reply, &format!("malformed exec request: {e}"));
                return Ok(());
            }
        };
        let [stdin, stdout, stderr]: [OwnedFd; 3] = match stdio.try_into() {
            Ok(a) => a,
            Err(_) => return Ok(()),
        };
        let winsize = if req.tty {
            sys::winsize(stdin.as_raw_fd())
        } else {
            None
        };
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let mut process = req.process;
        process.tty = req.tty;
        queue(Message::Exec(Box::new(ExecStart {
            id,
            process,
            winsize,
            member: req.member,
            target: req.target,
        })))?;
        self.procs.insert(
            id,
            Proc {
                reply,
                stdin: Some(File::from(stdin)),
                outs: [Some(File::from(stdout)), Some(File::from(stderr))],
                pending: [Vec::new(), Vec::new()],
                exit: None,
                abandoned: false,
            },
        );
        Ok(())
    }

    /// A frame from the guest about an exec'd process. Frames for an id not
    /// in flight, and an `ExecExit` without this run's session token, are
    /// ignored (counted in `ignored`): only the agent can end a process.
    /// Returns whether `m` was an exec frame.
    pub fn on_frame(&mut self, m: &Message) -> bool {
        let (id, stream, data) = match m {
            Message::ExecStdout { id, data } => (*id, 0, data),
            Message::ExecStderr { id, data } => (*id, 1, data),
            Message::ExecExit(e) => {
                match self.procs.get_mut(&e.id) {
                    Some(p) if e.session == self.session && p.exit.is_none() => {
                        if !e.message.is_empty() {
                            // Worded as `moat run` words a workload that cannot start.
                            let line = format!("moat: error: {}\n", e.message);
                            push(&mut p.pending[1], line.as_bytes());
                        }
                        p.exit = Some(e.code);
                    }
                    _ => self.ignored += 1,
                }
                self.finish();
                return true;
            }
            _ => return false,
        };
        match self.procs.get_mut(&id) {
            Some(p) if p.exit.is_none() => {
                if p.outs[stream].is_some() {
                    push(&mut p.pending[stream], data);
                }
            }
            _ => self.ignored += 1,
        }
        true
    }

    /// Answers and forgets every process that ended and whose output is
    /// written (or cannot be).
    fn finish(&mut self) {
        let done: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| {
                p.exit.is_some() && (0..2).all(|i| p.pending[i].is_empty() || p.outs[i].is_none())
            })
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            if let Some(p) = self.procs.remove(&id) {
                if !p.abandoned {
                    send_reply(
                        &p.reply,
                        &Reply {
                            code: p.exit,
                            error: None,
                        },
                    );
                }
            }
        }
    }

    /// How many processes are in flight.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.procs.len()
    }
}

fn push(pending: &mut Vec<u8>, data: &[u8]) {
    if pending.len() + data.len() <= MAX_PENDING {
        pending.extend_from_slice(data);
    }
}

fn send_reply(reply: &OwnedFd, r: &Reply) {
    if let Ok(bytes) = serde_json::to_vec(r) {
        // The caller may be gone already (EPIPE; SIGPIPE is ignored, as
        // for every write of the relay): nothing to do then.
        let _ = rustix::io::write(reply, &bytes);
    }
}

#[cfg(test)]
mod tests {
    use moat_agent::proto::ExecExit;

    use super::*;

    fn process(args: &[&str]) -> ProcessSpec {
        ProcessSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            tty: false,
            interactive: false,
            hostname: String::new(),
        }
    }

    /// A supervisor-side relay with one request taken from a real control
    /// socket; the caller's ends of its stdout and reply.
    struct Harness {
        execs: Execs,
        frames: Vec<Message>,
        out_r: File,
        reply_thread: std::thread::JoinHandle<Result<i32, VmError>>,
    }

    fn one_request() -> Harness {
        let (ours, theirs) = sys::seqpacket_pair().unwrap();
        let (out_r, out_w) = sys::pipe().unwrap();
        let devnull = File::open("/dev/null").unwrap();
        let t = std::thread::spawn(move || {
            let dn = devnull;
            request(
                ours.as_fd(),
                &process(&["id"]),
                false,
                dn.as_fd(),
                out_w.as_fd(),
                out_w.as_fd(),
            )
        });
        let mut execs = Execs::new(Some(theirs), "s3cr3t");
        let mut frames = Vec::new();
        while execs.in_flight() == 0 {
            let mut fds = Vec::new();
            let slots = execs.poll_fds(&mut fds, true, true);
            sys::poll(&mut fds, 1000).unwrap();
            execs
                .service(&fds, &slots, &mut |m| {
                    frames.push(m);
                    Ok(())
                })
                .unwrap();
        }
        Harness {
            execs,
            frames,
            out_r: File::from(out_r),
            reply_thread: t,
        }
    }

    /// Runs the relay until nothing is left in flight.
    fn pump(execs: &mut Execs) {
        for _ in 0..100 {
            if execs.in_flight() == 0 {
                return;
            }
            let mut fds = Vec::new();
            let slots = execs.poll_fds(&mut fds, true, true);
            sys::poll(&mut fds, 100).unwrap();
            execs.service(&fds, &slots, &mut |_| Ok(())).unwrap();
        }
        panic!("the relay did not finish");
    }

    #[test]
    fn a_request_becomes_an_exec_frame_and_its_exit_the_reply() {
        let mut h = one_request();
        let Message::Exec(e) = &h.frames[0] else {
            panic!("{:?}", h.frames)
        };
        assert_eq!(e.id, 1);
        assert_eq!(e.process.args, vec!["id".to_string()]);
        assert!(h.execs.on_frame(&Message::ExecStdout {
            id: 1,
            data: b"uid=0\n".to_vec(),
        }));
        assert!(h.execs.on_frame(&Message::ExecExit(ExecExit {
            id: 1,
            code: 3,
            message: String::new(),
            session: "s3cr3t".into(),
        })));
        pump(&mut h.execs);
        assert_eq!(h.reply_thread.join().unwrap().unwrap(), 3);
        drop(h.execs);
        let mut out = String::new();
        h.out_r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "uid=0\n");
    }

    /// Frames a hostile guest could send: for ids never started, an exit
    /// without this run's session, stdout after the exit. None of them
    /// ends or feeds the process in flight, and none panics.
    #[test]
    fn hostile_frames_from_the_guest_are_ignored() {
        let mut h = one_request();
        let exit = |id, session: &str| {
            Message::ExecExit(ExecExit {
                id,
                code: 0,
                message: "forged".into(),
                session: session.into(),
            })
        };
        for m in [
            Message::ExecStdout {
                id: 99,
                data: b"x".to_vec(),
            },
            Message::ExecStderr {
                id: u32::MAX,
                data: vec![0; MAX_DATA],
            },
            exit(99, "s3cr3t"),
            exit(1, ""),
            exit(1, "wrong"),
        ] {
            assert!(h.execs.on_frame(&m));
        }
        assert_eq!(h.execs.ignored, 5);
        assert_eq!(h.execs.in_flight(), 1);
        assert!(!h.execs.on_frame(&Message::Stdout(b"workload".to_vec())));
        // The agent's exit, then stdout for the ended process: ignored.
        assert!(h.execs.on_frame(&Message::ExecExit(ExecExit {
            id: 1,
            code: 127,
            message: "executable \"nope\" not found in the container (PATH=/bin)".into(),
            session: "s3cr3t".into(),
        })));
        assert!(h.execs.on_frame(&Message::ExecStdout {
            id: 1,
            data: b"late".to_vec(),
        }));
        pump(&mut h.execs);
        assert_eq!(h.reply_thread.join().unwrap().unwrap(), 127);
        drop(h.execs);
        let mut out = String::new();
        h.out_r.read_to_string(&mut out).unwrap();
        assert_eq!(
            out,
            "moat: error: executable \"nope\" not found in the container (PATH=/bin)\n"
        );
    }

    #[test]
    fn malformed_requests_are_answered_with_an_error() {
        let (ours, theirs) = sys::seqpacket_pair().unwrap();
        let (mine, reply) = sys::seqpacket_pair().unwrap();
        // A reply socket and no stdio.
        sys::send_with_fds(ours.as_fd(), b"{}", &[reply.as_fd()]).unwrap();
        drop(reply);
        let mut execs = Execs::new(Some(theirs), "s");
        let mut fds = Vec::new();
        let slots = execs.poll_fds(&mut fds, true, true);
        sys::poll(&mut fds, 1000).unwrap();
        let mut frames = 0;
        execs
            .service(&fds, &slots, &mut |_| {
                frames += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(frames, 0);
        let mut buf = [0u8; 512];
        let r = sys::recv_with_fds(mine.as_fd(), &mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..r.len]).unwrap(),
            r#"{"error":"malformed exec request: expected one JSON message with a reply socket, stdin, stdout and stderr"}"#
        );
        // A supervisor that ended answers nothing: the client says so.
        drop(execs);
        let dn = File::open("/dev/null").unwrap();
        let e = request(
            ours.as_fd(),
            &process(&["true"]),
            false,
            dn.as_fd(),
            dn.as_fd(),
            dn.as_fd(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the container is not running, or stopped before the exec'd process ended"
        );
    }
}
