//! Processes exec'd into the running container (`moat exec`): started by
//! [`workload::spawn_exec`] under the workload's plan, their stdio
//! multiplexed over the control port by the id the host chose, their exit
//! reported as `ExecExit`. The agent's relay loop drives them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use moat_agent::proto::{ExecExit, ExecStart, Message, Start, MAX_DATA};

use crate::{sys, workload, Failure};

/// How long an ended process's output may stay open (held by a
/// background child) before its exit is reported anyway.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

struct Proc {
    pid: libc::pid_t,
    tty: bool,
    stdin: Option<File>,
    pending_stdin: Vec<u8>,
    stdin_eof: bool,
    /// (stdout or stderr, whether it is stderr); `None` once closed.
    outs: Vec<(Option<File>, bool)>,
    exited: Option<(i32, Instant)>,
}

/// What a poll slot of the exec'd processes is.
#[derive(Clone, Copy)]
pub enum Slot {
    Stdin(u32),
    Out(u32, usize),
}

/// A further container of the pod (see [`moat_agent::proto::Member`]):
/// its first process and the plan its execs run under.
struct Running {
    pid: libc::pid_t,
    start: Start,
}

#[derive(Default)]
pub struct Execs {
    procs: BTreeMap<u32, Proc>,
    /// The pod's further containers, by name.
    members: BTreeMap<String, Running>,
}

impl Execs {
    /// Starts `e` in the container of `workload` under `start`'s plan;
    /// the `ExecExit` to send at once if it could not start.
    pub fn start(&mut self, start: &Start, workload: libc::pid_t, e: ExecStart) -> Option<Message> {
        if self.procs.contains_key(&e.id) {
            return None; // The host reused a live id: ignore the second.
        }
        let id = e.id;
        let tty = e.process.tty;
        let fail = |code: i32, message: String| {
            Some(Message::ExecExit(ExecExit {
                id,
                code,
                message,
                session: start.session.clone(),
            }))
        };
        let spawned = if let Some(m) = e.member {
            // A further container of the pod: its own plan; the pod's
            // hostname and network.
            if self.members.contains_key(&m.name) {
                return fail(125, format!("pod container {} already runs", m.name));
            }
            let mut s = start.clone();
            s.process = e.process;
            s.process.hostname = start.process.hostname.clone();
            s.plan = m.plan.clone();
            s.extra_seccomp = m.extra_seccomp.clone();
            s.net = None;
            workload::spawn_member(&s, &m).inspect(|c| {
                self.members.insert(
                    m.name.clone(),
                    Running {
                        pid: c.pid,
                        start: s,
                    },
                );
            })
        } else {
            let (base, pid) = match &e.target {
                Some(name) => match self.members.get(name) {
                    Some(r) => (&r.start, r.pid),
                    None => return fail(125, format!("pod container {name} is not running")),
                },
                None => (start, workload),
            };
            let mut s = base.clone();
            s.process = e.process;
            // The container's hostname is the workload's: an exec cannot change it.
            s.process.hostname = base.process.hostname.clone();
            workload::spawn_exec(&s, pid, e.target.as_deref())
        };
        let child = match spawned {
            Ok(c) => c,
            Err(Failure { code, message }) => return fail(code, message),
        };
        let stdin = File::from(child.stdin);
        let _ = sys::set_nonblocking(stdin.as_fd());
        if let (true, Some((rows, cols))) = (tty, e.winsize) {
            let _ = sys::set_winsize(stdin.as_fd(), rows, cols);
        }
        let mut outs = vec![(Some(File::from(child.stdout)), false)];
        if let Some(err) = child.stderr {
            outs.push((Some(File::from(err)), true));
        }
        self.procs.insert(
            id,
            Proc {
                pid: child.pid,
                tty,
                stdin: Some(stdin),
                pending_stdin: Vec::new(),
                stdin_eof: false,
                outs,
                exited: None,
            },
        );
        None
    }

    /// A frame from the host for an exec'd process; frames for an id that
    /// is not running are dropped.
    pub fn on_message(&mut self, m: Message) {
        match m {
            Message::ExecStdin { id, data } => {
                if let Some(p) = self.procs.get_mut(&id) {
                    if p.stdin.is_some() && p.pending_stdin.len() < (1 << 20) {
                        p.pending_stdin.extend_from_slice(&data);
                    }
                }
            }
            Message::ExecStdinEof(id) => {
                if let Some(p) = self.procs.get_mut(&id) {
                    p.stdin_eof = true;
                    if p.tty {
                        p.pending_stdin.push(4);
                    }
                }
            }
            Message::ExecResize { id, rows, cols } => {
                if let Some(p) = self.procs.get(&id).filter(|p| p.tty) {
                    if let Some(s) = &p.stdin {
                        let _ = sys::set_winsize(s.as_fd(), rows, cols);
                    }
                }
            }
            Message::ExecSignal { id, sig } => {
                if let Some(p) = self.procs.get(&id).filter(|p| p.exited.is_none()) {
                    let _ = sys::kill(p.pid, sig);
                }
            }
            _ => {}
        }
    }

    /// Records the exit of `pid` if it is an exec'd process.
    pub fn reaped(&mut self, pid: libc::pid_t, status: libc::c_int) -> bool {
        // A member's first process: its PID namespace ends with it.
        let ended: Vec<String> = self
            .members
            .iter()
            .filter(|(_, r)| r.pid == pid)
            .map(|(n, _)| n.clone())
            .collect();
        for name in ended {
            self.members.remove(&name);
            workload::forget_member(&name);
        }
        let Some(p) = self.procs.values_mut().find(|p| p.pid == pid) else {
            return false;
        };
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        p.exited = Some((code, Instant::now()));
        true
    }

    /// Whether some process has ended and waits for its output to drain.
    pub fn draining(&self) -> bool {
        self.procs.values().any(|p| p.exited.is_some())
    }

    /// The descriptors to poll, appended to `fds`, and what each is.
    pub fn poll_fds(&self, fds: &mut Vec<libc::pollfd>) -> Vec<Slot> {
        let mut slots = Vec::new();
        for (&id, p) in &self.procs {
            if let (Some(s), false) = (&p.stdin, p.pending_stdin.is_empty()) {
                fds.push(libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                });
                slots.push(Slot::Stdin(id));
            }
            for (i, (f, _)) in p.outs.iter().enumerate() {
                if let Some(f) = f {
                    fds.push(libc::pollfd {
                        fd: f.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    slots.push(Slot::Out(id, i));
                }
            }
        }
        slots
    }

    /// Services the ready descriptors; returns the frames to send.
    pub fn service(
        &mut self,
        fds: &[libc::pollfd],
        slots: &[Slot],
        buf: &mut [u8],
    ) -> Vec<Message> {
        let mut out = Vec::new();
        for (fd, slot) in fds.iter().zip(slots) {
            if fd.revents == 0 {
                continue;
            }
            match *slot {
                Slot::Stdin(id) => {
                    let Some(p) = self.procs.get_mut(&id) else {
                        continue;
                    };
                    let Some(s) = &mut p.stdin else { continue };
                    match s.write(&p.pending_stdin) {
                        Ok(n) => {
                            p.pending_stdin.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => {
                            p.pending_stdin.clear();
                            p.stdin = None;
                        }
                    }
                }
                Slot::Out(id, i) => {
                    let Some(p) = self.procs.get_mut(&id) else {
                        continue;
                    };
                    let (slot, is_err) = &mut p.outs[i];
                    let Some(f) = slot else { continue };
                    match f.read(&mut buf[..MAX_DATA]) {
                        // EIO on a pty master: the slave side closed.
                        Ok(0) | Err(_) => *slot = None,
                        Ok(n) => {
                            let data = buf[..n].to_vec();
                            out.push(if *is_err {
                                Message::ExecStderr { id, data }
                            } else {
                                Message::ExecStdout { id, data }
                            });
                        }
                    }
                }
            }
        }
        for p in self.procs.values_mut() {
            if p.stdin_eof && p.pending_stdin.is_empty() && !p.tty {
                p.stdin = None;
            }
        }
        out
    }

    /// The `ExecExit` of every process that ended and whose output is
    /// drained (or held open past the grace period by a background child).
    pub fn finished(&mut self, session: &str) -> Vec<Message> {
        let done: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| {
                p.exited.is_some_and(|(_, at)| {
                    p.outs.iter().all(|(f, _)| f.is_none()) || at.elapsed() > OUTPUT_GRACE
                })
            })
            .map(|(&id, _)| id)
            .collect();
        done.into_iter()
            .filter_map(|id| {
                let p = self.procs.remove(&id)?;
                let (code, _) = p.exited?;
                Some(Message::ExecExit(ExecExit {
                    id,
                    code,
                    message: String::new(),
                    session: session.to_string(),
                }))
            })
            .collect()
    }
}
