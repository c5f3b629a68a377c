//! The host side of a running container: relays stdio, window size and
//! signals over the control channel and returns the workload's exit status.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use moat_agent::audit::GuestReport;
use moat_agent::proto::{Decoder, Message, Start, WallClock, MAX_DATA};
use moat_policy::{Plan, ProcessSpec};

use crate::boot::{console_tail, Booted};
use crate::{sys, VmError};

/// Signals the supervisor forwards to the workload (`moat kill`, or sent
/// to `moat run` itself). The first four also start the stop timeout;
/// SIGKILL ends the supervisor and with it the VM.
pub const FORWARDED_SIGNALS: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// How long a guest may take to say hello (TCG on a busy 2-core machine is slow).
pub const HELLO_DEADLINE: Duration = Duration::from_secs(90);

pub struct SessionOptions<'a> {
    pub process: &'a ProcessSpec,
    pub plan: &'a Plan,
    pub stop_timeout: Duration,
    pub stdio: Stdio,
    /// Where the supervisor's seccomp filter goes (see [`crate::supervisor`]).
    pub confine: crate::supervisor::Scope,
    pub trace: &'a mut crate::trace::Trace,
    /// Exec requests (see [`crate::exec`]).
    pub control: Option<OwnedFd>,
    /// Told (one byte) once the agent has the workload.
    pub started_notify: Option<std::sync::Arc<OwnedFd>>,
    /// With a gate, the booted guest waits for one byte here before its
    /// workload starts (EOF: the start is abandoned).
    pub start_gate: Option<std::sync::Arc<OwnedFd>>,
    /// Filters the agent installs beside the plan's.
    pub extra_seccomp: Vec<moat_policy::plan::SeccompProgram>,
    /// The guest's network configuration (with a network device).
    pub net: Option<crate::net::GuestNet>,
    /// A VM restored from a template: its first frame (entropy, identity,
    /// root); the agent's `Hello` follows it.
    pub restore: Option<moat_agent::proto::Restore>,
    /// Set to the guest's report of the workload's failure, bounded.
    pub report: &'a mut Option<GuestReport>,
}

/// Where the workload's stdio goes on the host.
pub struct Stdio {
    /// Read for `-i`; `None` is moat's own stdin.
    pub stdin: Option<OwnedFd>,
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
}

impl Stdio {
    /// moat's own stdin, stdout and stderr.
    pub fn inherit() -> Stdio {
        Stdio {
            stdin: None,
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
        }
    }
}

/// Runs the session to completion: `Ok(exit code)`.
pub fn run(mut booted: Booted, opts: SessionOptions<'_>) -> Result<i32, VmError> {
    let mut sock = File::from(booted.control.try_clone().map_err(VmError::Channel)?);
    sys::set_nonblocking(sock.as_fd(), true).map_err(VmError::Channel)?;
    let mut signals = sys::SignalFd::new().map_err(VmError::Channel)?;
    let tty = opts.process.tty;
    let Stdio {
        stdin: stdin_fd,
        stdout: mut host_out,
        stderr: mut host_err,
    } = opts.stdio;
    let stdin_fd = match stdin_fd {
        Some(fd) => fd,
        None => std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(VmError::Channel)?,
    };
    let _raw = if tty && sys::isatty(0) {
        sys::RawMode::enable(0).ok()
    } else {
        None
    };
    let mut stdin: Option<File> = None;
    let mut decoder = Decoder::new();
    let mut out: Vec<u8> = Vec::new();
    let queue = |out: &mut Vec<u8>, m: Message| -> Result<(), VmError> {
        out.extend(m.encode().map_err(VmError::Protocol)?);
        Ok(())
    };
    if let Some(r) = opts.restore {
        queue(&mut out, Message::Restore(Box::new(r)))?;
    }
    let started_at = Instant::now();
    let mut started = false;
    let mut stop_deadline: Option<(Instant, i32)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    // What the VMM prints (kernel warnings, QEMU errors), last 16 KiB, for error messages.
    let mut console: Vec<u8> = Vec::new();
    sys::set_nonblocking(booted.vmm.console.as_fd(), true).map_err(VmError::Channel)?;
    // Start goes out in reply to Hello, stamped with the host's wall-clock
    // time (the guest has no clock of its own under TCG), and carries this
    // run's session token: only an Exit or Error frame that echoes it ends
    // the session. Drawn before the filter, which allows no open.
    let session = session_token().map_err(VmError::Channel)?;
    let mut execs = crate::exec::Execs::new(opts.control, &session);
    // Everything the relay and the teardown need is open: from here on the
    // supervisor is an unprivileged uid under its own filter.
    let uid = crate::jail::supervisor_uid(booted.vmm.uid);
    crate::supervisor::confine(opts.confine, uid)?;
    opts.trace.mark("supervisor seccomp filter installed");
    let console_text = |console: &[u8], more: String| {
        let mut t = String::from_utf8_lossy(console).into_owned();
        t.push_str(&more);
        let lines: Vec<&str> = t.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    loop {
        if !started && started_at.elapsed() > HELLO_DEADLINE {
            let tail = console_tail(&mut booted.vmm.console, 20);
            return Err(VmError::NoHello {
                seconds: HELLO_DEADLINE.as_secs(),
                console: console_text(&console, tail),
            });
        }
        if let Some((at, sig)) = stop_deadline {
            if Instant::now() > at {
                // The workload ignored the signal for stop_timeout: end the VM.
                return Ok(128 + sig);
            }
        }
        if let Some(status) = booted.vmm.try_wait() {
            // Drain what the agent managed to send before the VMM ended.
            if let Some(code) = drain(
                &session,
                started,
                &mut sock,
                &mut decoder,
                &mut buf,
                &mut host_out,
                &mut host_err,
                opts.report,
            )? {
                return Ok(code);
            }
            if booted.vmm.oom_kills() > 0 {
                // The host killed the VMM at its cgroup's memory limit: the
                // workload is gone with it, as if killed by SIGKILL.
                let limit = booted.vmm.memory_limit_now();
                let _ = writeln!(host_err, "{}", memory_limit_notice(limit, opts.plan));
                return Ok(128 + libc::SIGKILL);
            }
            let tail = console_tail(&mut booted.vmm.console, 20);
            return Err(VmError::VmExited {
                status: status.to_string(),
                console: console_text(&console, tail),
            });
        }
        if let Some((directory, status)) = booted.vmm.daemon_exited() {
            // QEMU ending first ends its daemons too: that is the VM's
            // exit, reported above on the next round.
            std::thread::sleep(Duration::from_millis(200));
            if booted.vmm.try_wait().is_none() {
                // The guest's requests to it would wait for ever.
                let tail = console_tail(&mut booted.vmm.console, 20);
                return Err(VmError::DaemonExited {
                    directory,
                    status: status.to_string(),
                    console: console_text(&console, tail),
                });
            }
            continue;
        }
        let mut fds = vec![
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN | if out.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
            libc::pollfd {
                fd: signals.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: match &stdin {
                    Some(s) if out.len() < (1 << 20) => s.as_raw_fd(),
                    _ => -1,
                },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: booted.vmm.console.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let exec_base = fds.len();
        let exec_slots = execs.poll_fds(&mut fds, started, out.len() < (1 << 20));
        sys::poll(&mut fds, 100).map_err(VmError::Channel)?;
        execs.service(&fds[exec_base..], &exec_slots, &mut |m| queue(&mut out, m))?;
        if fds[3].revents != 0 {
            if let Ok(n) = booted.vmm.console.read(&mut buf) {
                console.extend_from_slice(&buf[..n]);
                if console.len() > 16 * 1024 {
                    console.drain(..console.len() - 16 * 1024);
                }
            }
        }
        if fds[1].revents != 0 {
            for sig in signals.read() {
                match sig {
                    libc::SIGCHLD => {}
                    libc::SIGWINCH => {
                        if let (true, Some((rows, cols))) = (tty && started, sys::winsize(0)) {
                            queue(&mut out, Message::Resize { rows, cols })?;
                        }
                    }
                    sig @ (libc::SIGUSR1 | libc::SIGUSR2) => {
                        // Not a request to stop: forwarded once the workload runs.
                        if started {
                            queue(&mut out, Message::Signal(sig))?;
                        }
                    }
                    sig => {
                        if !started {
                            return Ok(128 + sig);
                        }
                        queue(&mut out, Message::Signal(sig))?;
                        if stop_deadline.is_none() {
                            stop_deadline = Some((Instant::now() + opts.stop_timeout, sig));
                        }
                    }
                }
            }
        }
        if fds[2].revents != 0 {
            if let Some(s) = &mut stdin {
                let n = s.read(&mut buf[..MAX_DATA]).unwrap_or(0);
                if n == 0 {
                    stdin = None;
                    queue(&mut out, Message::StdinEof)?;
                } else {
                    queue(&mut out, Message::Stdin(buf[..n].to_vec()))?;
                }
            }
        }
        if fds[0].revents & libc::POLLOUT != 0 && !out.is_empty() {
            match sock.write(&out) {
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(VmError::Channel(e)),
            }
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            let n = match sock.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(VmError::Channel(e)),
            };
            if n == 0 {
                // Wait for the VMM's exit to report it with its console.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            decoder.push(&buf[..n]);
            while let Some(m) = decoder.next_message().map_err(VmError::Protocol)? {
                if execs.on_frame(&m) {
                    continue;
                }
                match m {
                    Message::Hello(h) => {
                        if started {
                            return Err(VmError::Unexpected { kind: "Hello" });
                        }
                        if h.agent_version != env!("CARGO_PKG_VERSION") {
                            return Err(VmError::AgentVersion {
                                agent: h.agent_version,
                                host: env!("CARGO_PKG_VERSION").to_string(),
                            });
                        }
                        started = true;
                        opts.trace.mark("agent said hello");
                        if let Some(gate) = &opts.start_gate {
                            if let Some(fd) = &opts.started_notify {
                                let _ = rustix::io::write(
                                    &**fd,
                                    &[moat_runtime::monitor::ready::CREATED],
                                );
                            }
                            let mut byte = [0u8; 1];
                            if !matches!(rustix::io::read(&**gate, &mut byte), Ok(1)) {
                                return Err(VmError::Guest {
                                    message: "the created container's start was abandoned".into(),
                                });
                            }
                        }
                        if let Some(fd) = &opts.started_notify {
                            let _ =
                                rustix::io::write(&**fd, &[moat_runtime::monitor::ready::STARTED]);
                        }
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default();
                        queue(
                            &mut out,
                            Message::Start(Box::new(Start {
                                process: opts.process.clone(),
                                plan: crate::volumes::for_guest(opts.plan),
                                host_version: env!("CARGO_PKG_VERSION").to_string(),
                                session: session.clone(),
                                wall_clock: Some(WallClock {
                                    secs: now.as_secs() as i64,
                                    nanos: now.subsec_nanos(),
                                }),
                                extra_seccomp: opts.extra_seccomp.clone(),
                                net: opts.net.clone(),
                            })),
                        )?;
                        if tty {
                            if let Some((rows, cols)) = sys::winsize(0) {
                                queue(&mut out, Message::Resize { rows, cols })?;
                            }
                        }
                        if !opts.process.interactive {
                            queue(&mut out, Message::StdinEof)?;
                        }
                        if opts.process.interactive {
                            stdin =
                                Some(File::from(stdin_fd.try_clone().map_err(VmError::Channel)?));
                        }
                    }
                    Message::Stdout(d) => {
                        let _ = host_out.write_all(&d);
                        let _ = host_out.flush();
                    }
                    Message::Stderr(d) => {
                        let _ = host_err.write_all(&d);
                        let _ = host_err.flush();
                    }
                    Message::Exit(e) if e.session != session => {
                        forged(&mut host_err, "an exit");
                    }
                    Message::Error(f) if f.session != session && started => {
                        forged(&mut host_err, "an error");
                    }
                    Message::Exit(e) => {
                        opts.trace.mark("workload exit status received");
                        // What the guest kernel printed so far: its OOM
                        // killer's lines, and the agent's trace.
                        let mut rest = Vec::new();
                        let _ = booted.vmm.console.read_to_end(&mut rest);
                        console.extend_from_slice(&rest);
                        if opts.trace.on() {
                            opts.trace.guest_lines(&String::from_utf8_lossy(&console));
                        }
                        let kills = guest_oom_kills(&console);
                        if kills > 0 {
                            let _ = writeln!(
                                host_err,
                                "{}",
                                memory_limit_message(e.code, kills, guest_memory_mib(opts.plan))
                            );
                        }
                        *opts.report = e.report.map(GuestReport::bounded);
                        return Ok(e.code);
                    }
                    Message::Error(f) => return guest_failure(f, &mut host_err),
                    other => {
                        return Err(VmError::Unexpected {
                            kind: kind_name(&other),
                        })
                    }
                }
            }
        }
    }
}

fn guest_memory_mib(plan: &Plan) -> u64 {
    match plan.vm.memory_mib {
        0 => crate::DEFAULT_MEMORY_MIB,
        m => m,
    }
}

/// Processes the guest kernel's OOM killer killed, from its lines on the
/// serial console (`Out of memory: Killed process N (comm) ...`, printed at
/// KERN_ERR, which `quiet` keeps). A guest root process could print such a
/// line itself; that changes nothing but this message about its own exit.
fn guest_oom_kills(console: &[u8]) -> usize {
    String::from_utf8_lossy(console)
        .lines()
        .filter(|l| l.trim_start().starts_with("Out of memory: Killed process "))
        .count()
}

/// What moat says when the container's memory limit (the guest's memory)
/// killed processes of the workload; the sandbox's wording.
fn memory_limit_message(code: i32, kills: usize, guest_mib: u64) -> String {
    if code == 128 + libc::SIGKILL {
        format!(
            "moat: the workload was killed by the container's memory limit of {guest_mib} MiB (exit {code}); raise resources.memory in the policy"
        )
    } else {
        format!(
            "moat: notice: the container's memory limit of {guest_mib} MiB killed {kills} of its process(es); raise resources.memory in the policy"
        )
    }
}

/// What moat says when the VMM's host cgroup ran out of memory.
fn memory_limit_notice(limit_bytes: u64, plan: &Plan) -> String {
    let guest = guest_memory_mib(plan);
    let limit = limit_bytes >> 20;
    format!(
        "moat: the workload was killed by the container's memory limit of {guest} MiB (exit {}: its micro-VM reached the host limit of {limit} MiB, guest memory plus the VMM's own); raise resources.memory in the policy",
        128 + libc::SIGKILL
    )
}

/// This run's session token: 128 random bits, hex.
fn session_token() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

/// A final frame without this run's token came from something in the guest
/// other than the agent: say so, and keep waiting for the agent's.
fn forged(err: &mut dyn Write, what: &str) {
    let _ = writeln!(
        err,
        "moat: warning: ignored {what} frame that did not come from the agent's session (a process in the guest wrote to the control channel)"
    );
}

fn kind_name(m: &Message) -> &'static str {
    match m {
        Message::Start(_) => "Start",
        Message::Stdin(_) => "Stdin",
        Message::StdinEof => "StdinEof",
        Message::Resize { .. } => "Resize",
        Message::Signal(_) => "Signal",
        _ => "control",
    }
}

fn guest_failure(f: moat_agent::proto::AgentFailure, err: &mut dyn Write) -> Result<i32, VmError> {
    if f.code == 126 || f.code == 127 {
        // Like docker: the command could not run; say why (worded and
        // prefixed as the sandbox backend's error), exit 126/127.
        let _ = writeln!(err, "moat: error: {}", f.message);
        return Ok(f.code);
    }
    Err(VmError::Guest { message: f.message })
}

/// After the VMM ended: decode whatever is left for an Exit or Error of
/// this session (or, before the agent said hello, an Error without one).
#[allow(clippy::too_many_arguments)]
fn drain(
    session: &str,
    started: bool,
    sock: &mut File,
    decoder: &mut Decoder,
    buf: &mut [u8],
    out: &mut dyn Write,
    err: &mut dyn Write,
    report: &mut Option<GuestReport>,
) -> Result<Option<i32>, VmError> {
    loop {
        let n = sock.read(buf).unwrap_or(0);
        if n > 0 {
            decoder.push(&buf[..n]);
        }
        while let Ok(Some(m)) = decoder.next_message() {
            match m {
                Message::Exit(e) if e.session == session => {
                    *report = e.report.map(GuestReport::bounded);
                    return Ok(Some(e.code));
                }
                Message::Error(f) if f.session == session || (f.session.is_empty() && !started) => {
                    return guest_failure(f, err).map(Some)
                }
                Message::Exit(_) | Message::Error(_) => forged(err, "a final"),
                Message::Stdout(d) => {
                    let _ = out.write_all(&d);
                }
                Message::Stderr(d) => {
                    let _ = err.write_all(&d);
                }
                _ => {}
            }
        }
        if n == 0 {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use moat_agent::proto::{AgentFailure, Exit};

    use super::*;

    #[test]
    fn the_guest_oom_killer_is_read_from_the_console() {
        let console = b"Unable to read current time from RTC\n\
Out of memory: Killed process 34 (busybox) total-vm:87256kB, anon-rss:69976kB, file-rss:8kB\n\
moat-agent: trace 2.6 hello sent\n";
        assert_eq!(guest_oom_kills(console), 1);
        assert_eq!(
            guest_oom_kills(b"the workload said Out of memory: Killed process\n"),
            0
        );
        assert_eq!(
            memory_limit_message(137, 1, 96),
            "moat: the workload was killed by the container's memory limit of 96 MiB (exit 137); raise resources.memory in the policy"
        );
        assert_eq!(
            memory_limit_message(0, 2, 256),
            "moat: notice: the container's memory limit of 256 MiB killed 2 of its process(es); raise resources.memory in the policy"
        );
    }

    /// Frames as a process in the guest that reached the control port would
    /// write them (no session token, or a wrong one), then the agent's.
    fn channel(frames: &[Message]) -> File {
        let f = tempfile::tempfile().unwrap();
        let mut w = f.try_clone().unwrap();
        for m in frames {
            w.write_all(&m.encode().unwrap()).unwrap();
        }
        use std::io::Seek;
        let mut r = f;
        r.rewind().unwrap();
        r
    }

    fn exit(code: i32, session: &str) -> Message {
        Message::Exit(Exit {
            code,
            session: session.into(),
            report: None,
        })
    }

    fn report(n: u32) -> GuestReport {
        GuestReport {
            denied: (0..n)
                .map(|nr| moat_agent::audit::GuestDenial {
                    nr,
                    exe: "/bin/x\u{1b}]0;pwned\u{7}".into(),
                    count: 1,
                })
                .collect(),
            read_only: Vec::new(),
            omitted: 0,
        }
    }

    #[test]
    fn only_the_agents_session_ends_the_run() {
        let mut sock = channel(&[
            Message::Exit(Exit {
                code: 42,
                session: String::new(),
                report: Some(report(1)),
            }),
            exit(42, "0123"),
            Message::Error(AgentFailure {
                code: 127,
                message: "forged".into(),
                session: String::new(),
            }),
            Message::Stdout(b"out".to_vec()),
            Message::Exit(Exit {
                code: 1,
                session: "s3cr3t".into(),
                report: Some(report(100)),
            }),
        ]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; 4096];
        let mut got = None;
        let code = drain(
            "s3cr3t",
            true,
            &mut sock,
            &mut Decoder::new(),
            &mut buf,
            &mut out,
            &mut err,
            &mut got,
        )
        .unwrap();
        assert_eq!(code, Some(1));
        // The agent's report, cut to its limits.
        let got = got.unwrap();
        assert_eq!(got.denied.len(), moat_agent::audit::MAX_ENTRIES);
        assert_eq!(got.omitted, 100 - moat_agent::audit::MAX_ENTRIES as u64);
        assert_eq!(got.denied[0].exe, "/bin/x]0;pwned");
        assert_eq!(out, b"out");
        let err = String::from_utf8(err).unwrap();
        assert_eq!(err.lines().count(), 3, "{err}");
        assert!(err.lines().all(|l| l == "moat: warning: ignored a final frame that did not come from the agent's session (a process in the guest wrote to the control channel)"), "{err}");
    }

    #[test]
    fn before_hello_an_agent_error_has_no_session_yet() {
        let mut sock = channel(&[Message::Error(AgentFailure {
            code: 125,
            message: "the verified root device /dev/dm-0 did not appear".into(),
            session: String::new(),
        })]);
        let mut buf = vec![0u8; 4096];
        let r = drain(
            "s3cr3t",
            false,
            &mut sock,
            &mut Decoder::new(),
            &mut buf,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut None,
        );
        assert_eq!(
            r.unwrap_err().to_string(),
            VmError::Guest {
                message: "the verified root device /dev/dm-0 did not appear".into()
            }
            .to_string()
        );
    }
}
