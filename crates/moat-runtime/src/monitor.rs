//! The monitor: the process that owns a detached container (the role
//! conmon plays for podman). `moat run -d` and `moat start` start one per
//! container, in a session of its own, and return once the workload runs;
//! the monitor lives as long as the container.
//!
//! It forks the backend's supervisor (the same code that runs a
//! foreground container: the sandbox's, or the VMM supervisor), with the
//! workload's stdout and stderr on pipes it reads into the log
//! ([`crate::logs`]), and answers front ends on its control socket
//! ([`crate::control`]). When the supervisor exits it records the exit
//! status, has the backend remove what it left, and removes the container
//! when it was started with `--rm`.
//!
//! The chain of parent-death signals makes `kill -9` of the monitor end
//! the container: the supervisor dies with the monitor, the workload (or
//! QEMU) with the supervisor; the next front end finds a record whose
//! owner is gone and says so ([`crate::record::reap_stale`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, Signal, WaitIdOptions};

use crate::backend::Backend;
use crate::control::{self, Reply, Request};
use crate::id::ContainerId;
use crate::logs::{LogWriter, Stream};
use crate::record::{self, StateError, Status};
use crate::sys::{self, Forked};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no container {0} (removed while it was being started?)")]
    NotFound(String),
    #[error("container {name} is already running (see `moat ps`)")]
    AlreadyRunning { name: String },
    #[error("monitor of container {id}: {what}")]
    Io {
        id: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What a monitor needs to know.
#[derive(Debug, Clone)]
pub struct MonitorConfig<'a> {
    /// The state root: records, specs, logs.
    pub root: &'a Path,
    /// The run root: the control socket.
    pub run_root: &'a Path,
    pub id: ContainerId,
    /// The cap of one log file.
    pub log_max_bytes: u64,
    /// Drop every capability and install [`ALLOWLIST`] once the
    /// supervisor is forked (off only for tests that embed the monitor).
    pub confine: bool,
    /// Create and hold: report once the container is created, start it on
    /// a [`Request::Start`] (runc's `create`, then `start`).
    pub hold: bool,
}

/// Drops the resident program text a long-running process used only while
/// it set up (it faults back in where needed): what a container's monitor
/// and supervisor keep in memory while idle is the code of their loops.
pub fn release_setup_pages() {
    sys::release_text();
}

/// The monitor's system calls, as data (DESIGN rule 9).
pub const ALLOWLIST: &str = include_str!("../seccomp/monitor.json");

/// The filter of [`ALLOWLIST`], compiled by the build (build.rs).
pub fn filter() -> Vec<moat_policy::plan::SockFilter> {
    moat_policy::allowlist::decode(include_bytes!(concat!(env!("OUT_DIR"), "/monitor.bpf")))
}

/// The monitor's confinement: no capability but CAP_KILL (a micro-VM's
/// supervisor runs as a uid of its own, which the monitor must be able to
/// stop; uid 0 still owns the state files it writes), `no_new_privs`, and
/// its seccomp filter.
fn confine() -> io::Result<()> {
    let prog = filter();
    const CAP_KILL: u32 = 5;
    sys::drop_capabilities(&[CAP_KILL])?;
    sys::install_seccomp(&prog, false)
}

/// How the monitor tells the front end that started it how the start
/// went: `s` once the workload runs, or `e`, the exit code (3 digits) and
/// the error message when it could not be started. EOF without either:
/// the monitor died.
pub mod ready {
    pub const STARTED: u8 = b's';
    pub const FAILED: u8 = b'e';
    /// Created and held until started (a monitor with `hold`).
    pub const CREATED: u8 = b'c';

    /// Parses what the monitor wrote: `Ok(())` (started, or created and
    /// held), or the exit code and message.
    pub fn parse(bytes: &[u8]) -> Result<(), (u8, String)> {
        match bytes.first() {
            Some(&STARTED) | Some(&CREATED) => Ok(()),
            Some(&FAILED) if bytes.len() >= 4 => {
                let code = std::str::from_utf8(&bytes[1..4])
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(125);
                Err((code, String::from_utf8_lossy(&bytes[4..]).into_owned()))
            }
            _ => Err((
                125,
                "the container's monitor ended before the container started".into(),
            )),
        }
    }

    pub fn failed(code: u8, message: &str) -> Vec<u8> {
        let mut v = format!("e{code:03}").into_bytes();
        v.extend_from_slice(message.as_bytes());
        v
    }
}

fn ioerr<'a>(
    id: &'a ContainerId,
    what: &'static str,
) -> impl FnOnce(io::Error) -> MonitorError + 'a {
    move |source| MonitorError::Io {
        id: id.to_string(),
        what,
        source,
    }
}

/// Runs the monitor of container `cfg.id` to the end of the container.
/// `ready` is the front end's end of the start report (see [`ready`]).
/// Must be called in a single-threaded process of its own.
pub fn run(
    cfg: &MonitorConfig<'_>,
    backend: &dyn Backend,
    ready: Option<OwnedFd>,
) -> Result<i32, MonitorError> {
    let mut ready = ready.map(File::from);
    let result = run_inner(cfg, backend, &mut ready);
    if let Err(e) = &result {
        if let Some(r) = ready.as_mut() {
            let _ = r.write_all(&ready::failed(125, &format!("{e}")));
        }
        settle_failed_start(cfg, &format!("{e}"));
    }
    result
}

fn run_inner(
    cfg: &MonitorConfig<'_>,
    backend: &dyn Backend,
    ready: &mut Option<File>,
) -> Result<i32, MonitorError> {
    let id = &cfg.id;
    let spec = crate::spec::read(cfg.root, id)?;
    claim(cfg)?;
    let listener = listen(cfg)?;
    let mut log = LogWriter::open(&record::container_dir(cfg.root, id), cfg.log_max_bytes)
        .map_err(ioerr(id, "opening the log"))?;

    let pipe = || -> Result<(OwnedFd, OwnedFd), MonitorError> {
        let (r, w) = io::pipe().map_err(ioerr(id, "creating a pipe"))?;
        Ok((r.into(), w.into()))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (note_r, note_w) = pipe()?;
    let (gate_r, gate_w) = match cfg.hold {
        true => {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        }
        false => (None, None),
    };
    let devnull: OwnedFd = File::open("/dev/null")
        .map_err(ioerr(id, "opening /dev/null"))?
        .into();
    let me = std::process::id() as i32;
    let exec_channel = backend.exec_channel();
    let child = match sys::fork().map_err(ioerr(id, "forking the supervisor"))? {
        Forked::Child => {
            drop((out_r, err_r, note_r, listener, exec_channel, gate_w));
            let _ = ready.take();
            drop(log);
            let stdio = [devnull, out_w, err_w];
            supervisor_main(cfg, backend, &spec, me, stdio, note_w, gate_r)
        }
        Forked::Parent(pid) => pid,
    };
    drop((out_w, err_w, note_w, devnull, gate_r));
    let pidfd = rustix::process::pidfd_open(
        Pid::from_raw(child).expect("fork returned a positive pid"),
        PidfdFlags::empty(),
    )
    .map_err(|e| ioerr(id, "opening a pidfd of the supervisor")(e.into()))?;
    if cfg.confine {
        confine().map_err(ioerr(id, "confining itself"))?;
    }
    sys::release_text();

    let mut m = Loop {
        out: [Some(File::from(out_r)), Some(File::from(err_r))],
        note: Some(File::from(note_r)),
        note_buf: Vec::new(),
        clients: Vec::new(),
        waiters: Vec::new(),
        kill_at: None,
        killed_by_monitor: false,
        exec_channel,
        gate: gate_w,
        starters: Vec::new(),
        running: false,
    };
    let exit = m.serve(cfg, &listener, &pidfd, &mut log, ready)?;
    log.flush();
    let finished = finish(cfg, backend, exit, m.killed_by_monitor, log.notice());
    let code = match &finished {
        Ok(code) => *code,
        Err(_) => exit.unwrap_or(125),
    };
    for mut w in m.waiters {
        reply(&mut w, Some(code), None);
    }
    for mut w in m.starters {
        let why = format!("the container ended (exit {code}) before it started");
        reply(&mut w, Some(code), Some(why));
    }
    finished?;
    let _ = std::fs::remove_dir_all(control::run_dir(cfg.run_root, id));
    Ok(code)
}

/// After a start that failed before the supervisor ran: the record, if
/// this monitor had claimed it, says the container stopped and why.
fn settle_failed_start(cfg: &MonitorConfig<'_>, why: &str) {
    let Ok(_lock) = record::lock(cfg.root) else {
        return;
    };
    let me = std::process::id() as i32;
    if let Some(mut r) = record::read_all(cfg.root)
        .ok()
        .and_then(|rs| rs.into_iter().find(|r| r.id == cfg.id))
        .filter(|r| r.monitor_pid == me)
    {
        r.lost(why);
        let _ = record::write(cfg.root, &r);
    }
    let _ = std::fs::remove_dir_all(control::run_dir(cfg.run_root, &cfg.id));
}

/// Takes the record over: re-armed (`created`), owned by this monitor.
fn claim(cfg: &MonitorConfig<'_>) -> Result<(), MonitorError> {
    let _lock = record::lock(cfg.root)?;
    let records = record::read_all(cfg.root)?;
    let mut r = records
        .into_iter()
        .find(|r| r.id == cfg.id)
        .ok_or_else(|| MonitorError::NotFound(cfg.id.to_string()))?;
    if r.owned() {
        return Err(MonitorError::AlreadyRunning {
            name: r.name.to_string(),
        });
    }
    r.rearm()?;
    if r.status != Status::Created {
        r.status = Status::Created;
    }
    let me = std::process::id() as i32;
    r.monitor_pid = me;
    r.monitor_start_time = record::process_start_time(me).unwrap_or(0);
    r.supervisor_pid = 0;
    r.supervisor_start_time = 0;
    r.creator_pid = 0;
    r.pid = 0;
    r.boot_id = record::boot_id();
    record::write(cfg.root, &r)?;
    Ok(())
}

/// The control socket, in a 0700 directory, mode 0600.
fn listen(cfg: &MonitorConfig<'_>) -> Result<UnixListener, MonitorError> {
    let id = &cfg.id;
    record::ensure_dirs(cfg.run_root)?;
    let dir = control::run_dir(cfg.run_root, id);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(ioerr(id, "creating its run directory"))?;
    let path = dir.join(control::SOCKET);
    let dir_fd = File::open(&dir).map_err(ioerr(id, "opening its run directory"))?;
    let listener = UnixListener::bind(control::short_path(&dir_fd, control::SOCKET))
        .map_err(ioerr(id, "binding its control socket"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(ioerr(id, "restricting its control socket"))?;
    listener
        .set_nonblocking(true)
        .map_err(ioerr(id, "configuring its control socket"))?;
    Ok(listener)
}

/// The forked supervisor: stdio on the monitor's pipes, dies with the
/// monitor, runs the container with the backend and exits with its code.
fn supervisor_main(
    cfg: &MonitorConfig<'_>,
    backend: &dyn Backend,
    spec: &crate::spec::Spec,
    monitor: i32,
    stdio: [OwnedFd; 3],
    note: OwnedFd,
    gate: Option<OwnedFd>,
) -> ! {
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    if rustix::process::getppid().map(|p| p.as_raw_pid()) != Some(monitor) {
        sys::exit_now(125);
    }
    for (fd, target) in stdio.iter().zip(0..) {
        // SAFETY-free: rustix's dup2 takes the target as an OwnedFd we must
        // not close; go through std instead.
        if dup_onto(fd, target).is_err() {
            sys::exit_now(125);
        }
    }
    drop(stdio);
    let note = Arc::new(note);
    let mut container = spec.container(cfg.root);
    container.started_notify = Some(note.clone());
    container.start_gate = gate.map(Arc::new);
    let code = match backend.run_attached(&container) {
        Ok(code) => code,
        Err(e) => {
            let code = e.exit_code;
            let msg = format!("{:#}", anyhow::Error::from(e));
            let _ = rustix::io::write(&*note, &ready::failed(code, &msg));
            code as i32
        }
    };
    let _ = std::io::stdout().flush();
    sys::exit_now(code)
}

fn dup_onto(fd: &OwnedFd, target: i32) -> io::Result<()> {
    use std::os::fd::FromRawFd;
    // SAFETY: `target` (0, 1 or 2) is replaced by dup2, never closed by us:
    // the OwnedFd is forgotten right after.
    let mut t = unsafe { OwnedFd::from_raw_fd(target) };
    let r = rustix::io::dup2(fd, &mut t);
    std::mem::forget(t);
    r.map_err(io::Error::from)
}

/// The monitor's event loop state.
struct Loop {
    /// The workload's stdout and stderr pipes, until EOF.
    out: [Option<File>; 2],
    /// The supervisor's start report, until EOF.
    note: Option<File>,
    note_buf: Vec<u8>,
    /// Connections whose request is not complete yet.
    clients: Vec<(UnixStream, Vec<u8>)>,
    /// Connections waiting for the exit.
    waiters: Vec<UnixStream>,
    kill_at: Option<Instant>,
    killed_by_monitor: bool,
    /// The caller's end of the supervisor's exec channel, if the backend
    /// has one.
    exec_channel: Option<OwnedFd>,
    /// The write end of a held container's start gate, until started.
    gate: Option<OwnedFd>,
    /// Connections waiting for a held container to have started.
    starters: Vec<UnixStream>,
    /// The backend reported that the workload runs.
    running: bool,
}

impl Loop {
    /// Serves until the supervisor has exited and its output is drained;
    /// returns the supervisor's exit code (`None` if unknown).
    fn serve(
        &mut self,
        cfg: &MonitorConfig<'_>,
        listener: &UnixListener,
        pidfd: &OwnedFd,
        log: &mut LogWriter,
        ready: &mut Option<File>,
    ) -> Result<Option<i32>, MonitorError> {
        let id = &cfg.id;
        let mut exit: Option<Option<i32>> = None;
        let mut drain_until: Option<Instant> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(notice) = log.notice() {
                note_in_record(cfg, &notice);
            }
            let done_draining = self.out.iter().all(Option::is_none)
                || drain_until.is_some_and(|t| Instant::now() >= t);
            if let (Some(code), true) = (exit, done_draining) {
                if let Some(r) = ready.take() {
                    report_start(r, &self.note_buf);
                }
                return Ok(code);
            }
            let mut fds: Vec<PollFd<'_>> = Vec::new();
            let flags = PollFlags::IN;
            fds.push(PollFd::new(pidfd, flags));
            fds.push(PollFd::new(listener, flags));
            let n_out: Vec<usize> = (0..2).filter(|&i| self.out[i].is_some()).collect();
            for &i in &n_out {
                fds.push(PollFd::new(self.out[i].as_ref().expect("open"), flags));
            }
            let note_open = self.note.is_some();
            if let Some(n) = &self.note {
                fds.push(PollFd::new(n, flags));
            }
            for (c, _) in &self.clients {
                fds.push(PollFd::new(c, flags));
            }
            let deadline = [self.kill_at, drain_until].into_iter().flatten().min();
            let timeout = deadline.map(|t| {
                let d = t.saturating_duration_since(Instant::now());
                rustix::event::Timespec {
                    tv_sec: d.as_secs() as i64,
                    tv_nsec: d.subsec_nanos() as i64,
                }
            });
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(ioerr(id, "polling")(e.into())),
            }
            let revents: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            if self.kill_at.is_some_and(|t| Instant::now() >= t) {
                let _ = rustix::process::pidfd_send_signal(pidfd, Signal::KILL);
                self.killed_by_monitor = true;
                self.kill_at = None;
            }
            let mut k = 2;
            for &i in &n_out {
                if revents[k] {
                    let stream = if i == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    match self.out[i].as_mut().expect("open").read(&mut buf) {
                        Ok(0) | Err(_) => self.out[i] = None,
                        Ok(n) => log.write(stream, &buf[..n]),
                    }
                }
                k += 1;
            }
            if note_open {
                if revents[k] {
                    let n = self
                        .note
                        .as_mut()
                        .expect("open")
                        .read(&mut buf)
                        .unwrap_or(0);
                    if n == 0 {
                        self.note = None;
                    } else {
                        self.note_buf.extend_from_slice(&buf[..n]);
                        if matches!(
                            self.note_buf.first(),
                            Some(&ready::STARTED) | Some(&ready::CREATED)
                        ) {
                            if let Some(r) = ready.take() {
                                report_start(r, &self.note_buf);
                            }
                        }
                        if self.note_buf.contains(&ready::STARTED) && !self.running {
                            self.running = true;
                            mark_running(cfg);
                            for mut c in self.starters.drain(..) {
                                reply(&mut c, None, None);
                            }
                        }
                    }
                }
                k += 1;
            }
            let mut finished = Vec::new();
            for (j, (c, req)) in self.clients.iter_mut().enumerate() {
                if revents[k + j] {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => finished.push((j, None)),
                        Ok(n) => {
                            req.extend_from_slice(&buf[..n]);
                            if let Some(nl) = req.iter().position(|&b| b == b'\n') {
                                finished.push((j, Some(control::parse_request(&req[..nl]))));
                            } else if req.len() > control::MAX_REQUEST {
                                finished.push((j, Some(Err("request too long".into()))));
                            }
                        }
                    }
                }
            }
            for (j, req) in finished.into_iter().rev() {
                let (mut c, _) = self.clients.remove(j);
                match req {
                    None => {}
                    Some(Err(e)) => reply(&mut c, None, Some(e)),
                    Some(Ok(Request::Wait)) => self.waiters.push(c),
                    Some(Ok(Request::Start)) => match self.gate.take() {
                        Some(gate) => {
                            let _ = rustix::io::write(&gate, b"g");
                            self.starters.push(c);
                        }
                        None => reply(
                            &mut c,
                            None,
                            Some("the container is not held: it has started already".into()),
                        ),
                    },
                    Some(Ok(Request::ExecChannel)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                        match (&self.exec_channel, exit.is_some()) {
                            (Some(ch), false) => {
                                let ok = Reply {
                                    exit_code: None,
                                    error: None,
                                };
                                let _ = control::send_with_fd(&c, &ok, ch.as_fd());
                            }
                            (Some(_), true) => {
                                reply(&mut c, None, Some("the container has stopped".into()))
                            }
                            (None, _) => reply(
                                &mut c,
                                None,
                                Some("this container's backend has no exec channel".into()),
                            ),
                        }
                    }
                    Some(Ok(Request::Stop { timeout_secs })) => {
                        let _ = rustix::process::pidfd_send_signal(pidfd, Signal::TERM);
                        let at = Instant::now() + Duration::from_secs(timeout_secs);
                        self.kill_at = Some(self.kill_at.map_or(at, |t| t.min(at)));
                        self.waiters.push(c);
                    }
                }
            }
            if revents[1] {
                self.accept(listener);
            }
            if revents[0] && exit.is_none() {
                if let Some(code) = wait_exit(pidfd).map_err(ioerr(id, "waiting"))? {
                    exit = Some(code);
                    self.kill_at = None;
                    drain_until = Some(Instant::now() + Duration::from_secs(2));
                }
            }
        }
    }

    /// Accepts pending connections from root (or this monitor's own uid);
    /// anyone else is hung up on.
    fn accept(&mut self, listener: &UnixListener) {
        let me = rustix::process::geteuid().as_raw();
        while let Ok((c, _)) = listener.accept() {
            let ok = rustix::net::sockopt::socket_peercred(&c)
                .is_ok_and(|cred| cred.uid.as_raw() == 0 || cred.uid.as_raw() == me);
            if ok && self.clients.len() + self.waiters.len() < 64 {
                let _ = c.set_nonblocking(true);
                self.clients.push((c, Vec::new()));
            }
        }
    }
}

/// The supervisor's exit code (128+N for signal N), once it exited.
fn wait_exit(pidfd: &OwnedFd) -> io::Result<Option<Option<i32>>> {
    let st = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    )?;
    Ok(st.map(|s| {
        s.exit_status()
            .or_else(|| s.terminating_signal().map(|n| 128 + n))
    }))
}

fn report_start(mut r: File, note: &[u8]) {
    let msg: Vec<u8> = match note.first() {
        Some(&ready::STARTED) => vec![ready::STARTED],
        Some(&ready::CREATED) => vec![ready::CREATED],
        Some(&ready::FAILED) => note.to_vec(),
        _ => ready::failed(
            125,
            "the container's supervisor ended before its workload started",
        ),
    };
    let _ = r.write_all(&msg);
}

fn reply(c: &mut UnixStream, exit_code: Option<i32>, error: Option<String>) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
    let mut line = serde_json::to_vec(&Reply { exit_code, error }).unwrap_or_default();
    line.push(b'\n');
    let _ = c.write_all(&line);
}

/// Records `running` when the backend reported the start but could not
/// write it itself (a micro-VM's supervisor has given up root by then).
fn mark_running(cfg: &MonitorConfig<'_>) {
    let Ok(_lock) = record::lock(cfg.root) else {
        return;
    };
    if let Some(mut r) = record::read_all(cfg.root)
        .ok()
        .and_then(|rs| rs.into_iter().find(|r| r.id == cfg.id))
        .filter(|r| r.status == Status::Created)
    {
        let pid = if r.pid > 0 { r.pid } else { r.supervisor_pid };
        if r.started(pid).is_ok() {
            let _ = record::write(cfg.root, &r);
        }
    }
}

/// Puts a logging notice into the record.
fn note_in_record(cfg: &MonitorConfig<'_>, notice: &str) {
    let Ok(_lock) = record::lock(cfg.root) else {
        return;
    };
    if let Some(mut r) = record::read_all(cfg.root)
        .ok()
        .and_then(|rs| rs.into_iter().find(|r| r.id == cfg.id))
    {
        r.log_notice = Some(notice.to_string());
        let _ = record::write(cfg.root, &r);
    }
}

/// Records the end: the exit status, the backend's leftovers removed, the
/// record removed for `--rm`. Returns the exit code the monitor reports.
fn finish(
    cfg: &MonitorConfig<'_>,
    backend: &dyn Backend,
    exit: Option<i32>,
    killed_by_monitor: bool,
    notice: Option<String>,
) -> Result<i32, MonitorError> {
    let _lock = record::lock(cfg.root)?;
    let Some(mut r) = record::read_all(cfg.root)?
        .into_iter()
        .find(|r| r.id == cfg.id)
    else {
        return Ok(exit.unwrap_or(125));
    };
    let code = match (killed_by_monitor, exit) {
        (true, _) => 128 + libc::SIGKILL,
        (false, Some(c)) => c,
        (false, None) => 125,
    };
    if r.status != Status::Stopped {
        r.status = match r.status {
            Status::Paused => Status::Running,
            s => s,
        };
        r.stopped(code)?;
    }
    if let Some(n) = notice {
        r.log_notice = Some(n);
    }
    r.monitor_pid = 0;
    r.supervisor_pid = 0;
    backend.cleanup(&r);
    if r.auto_remove {
        record::remove(cfg.root, &r.id);
    } else {
        record::write(cfg.root, &r)?;
    }
    Ok(r.exit_code.unwrap_or(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_compiles_and_leaves_out_what_an_attacker_wants() {
        let calls = moat_policy::allowlist::parse("monitor.json", ALLOWLIST).unwrap();
        for never in [
            "execve",
            "execveat",
            "ptrace",
            "socket",
            "connect",
            "bind",
            "mount",
            "setns",
            "unshare",
            "clone",
            "clone3",
            "fork",
            "setuid",
            "setresuid",
            "capset",
            "bpf",
            "process_vm_writev",
            "open_by_handle_at",
            "init_module",
            "keyctl",
        ] {
            assert!(!calls.allow.contains(never), "{never}");
        }
        // The build's program is the list's.
        assert_eq!(
            filter(),
            moat_policy::allowlist::compile("monitor.json", ALLOWLIST).unwrap()
        );
    }

    #[test]
    fn start_reports_parse() {
        assert_eq!(ready::parse(b"s"), Ok(()));
        assert_eq!(
            ready::parse(&ready::failed(127, "not found")),
            Err((127, "not found".to_string()))
        );
        assert_eq!(ready::parse(b"").unwrap_err().0, 125);
        assert_eq!(ready::parse(b"e12").unwrap_err().0, 125);
    }
}
