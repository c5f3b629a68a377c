//! `moat-agent`: PID 1 inside a moat micro-VM. See `docs/vm.md`.
//!
//! It mounts the guest's pseudo filesystems, says hello over the
//! virtio-serial port, receives the workload and its plan, mounts the
//! dm-verity-checked EROFS root read-only, starts the workload under the
//! plan, relays stdio, window size and signals, reports the exit status and
//! powers the VM off. It never exits (PID 1 must not).

mod auditd;
mod exec;
mod net;
mod sys;
mod volumes;
mod workload;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moat_agent::proto::{AgentFailure, Decoder, Exit, Hello, Message, Start, MAX_DATA};

/// Name of the control port (`virtserialport,name=moat.0` on the host).
const PORT_NAME: &str = "moat.0";
/// For messages; the device node is found by name (`/dev/vportNpM`, N
/// depends on how many virtio devices precede the serial device).
const PORT: &str = "the moat.0 virtio-serial port";
const ROOT_DEVICE: &str = "/dev/dm-0";
pub const NEW_ROOT: &str = "/mnt/root";

/// A failure the host should see: exit code and message.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn setup(message: impl Into<String>) -> Failure {
        Failure {
            code: 125,
            message: message.into(),
        }
    }
}

fn main() {
    if sys::getpid() != 1 {
        eprintln!("moat-agent: must run as /init (PID 1) inside a moat micro-VM");
        std::process::exit(2);
    }
    if let Err(e) = leave_initramfs().and_then(|()| mount_basics()) {
        console(&format!("mounting pseudo filesystems: {e}"));
        sys::power_off();
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    TRACE.store(
        cmdline.split_whitespace().any(|w| w == "moat.trace"),
        Ordering::Relaxed,
    );
    trace("init started, pseudo filesystems mounted");
    let port = match open_port() {
        Ok(p) => p,
        Err(e) => {
            console(&format!("opening {PORT}: {e}"));
            sys::power_off();
        }
    };
    let mut agent = Agent {
        port,
        decoder: Decoder::new(),
        session: String::new(),
        // The accelerator probe boots without a root disk: no waiting for one.
        has_root: cmdline.contains("dm-mod.create=") || root_disk(&cmdline).is_some(),
        root: root_disk(&cmdline),
        template: cmdline.split_whitespace().any(|w| w == "moat.template"),
    };
    trace("control port open");
    if let Err(e) = agent.serve() {
        console(&e.message);
        let session = agent.session.clone();
        let _ = agent.send(&Message::Error(AgentFailure {
            code: e.code,
            message: e.message,
            session,
        }));
    }
    agent.linger();
    sys::power_off();
}

/// Whether the host asked for phase times (`moat.trace` on the command line).
static TRACE: AtomicBool = AtomicBool::new(false);

/// With `moat.trace`: `moat-agent: trace <seconds since boot> <phase>` on
/// the console, which the host prints with its own phase times.
fn trace(phase: &str) {
    if TRACE.load(Ordering::Relaxed) {
        console(&format!("trace {:.3} {phase}", sys::boottime_secs()));
    }
}

fn console(msg: &str) {
    if let Ok(mut c) = File::options().write(true).open("/dev/console") {
        let _ = writeln!(c, "moat-agent: {msg}");
    }
}

/// Moves the agent onto a tmpfs root of its own (as `switch_root` does), so
/// that the workload can later `pivot_root` away from it: the initramfs
/// itself cannot be pivoted away from. The agent needs no file of the
/// initramfs once it runs.
fn leave_initramfs() -> io::Result<()> {
    std::fs::create_dir_all("/agent")?;
    sys::mount(
        "tmpfs",
        "/agent",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755,size=1m",
    )?;
    std::env::set_current_dir("/agent")?;
    sys::move_to_root()
}

fn mount_basics() -> io::Result<()> {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for d in ["/proc", "/sys", "/dev", NEW_ROOT] {
        std::fs::create_dir_all(d)?;
    }
    sys::mount("proc", "/proc", "proc", nodev, "")?;
    sys::mount("sysfs", "/sys", "sysfs", nodev, "")?;
    sys::mount(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "",
    )?;
    std::fs::create_dir_all("/dev/pts")?;
    sys::mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "ptmxmode=0666,mode=620",
    )?;
    Ok(())
}

/// Once the control port is open and the root is mounted: the agent's
/// `/sys` becomes read-only (no unbinding of drivers) and its devtmpfs
/// (every device node, the control port's among them) is replaced by a
/// /dev holding only what the agent itself uses.
fn lock_down() -> io::Result<()> {
    let hard = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount(
        "",
        "/sys",
        "",
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | hard,
        "",
    )?;
    sys::umount_detach("/dev")?;
    sys::mount(
        "tmpfs",
        "/dev",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0755,size=64k",
    )?;
    for (name, mode, major, minor) in [
        ("console", 0o600, 5, 1),
        ("kmsg", 0o600, 1, 11),
        ("null", 0o666, 1, 3),
    ] {
        let path = format!("/dev/{name}");
        sys::mknod(&path, libc::S_IFCHR | mode, major, minor)?;
        sys::chmod(&path, mode)?;
    }
    std::fs::create_dir("/dev/pts")?;
    sys::mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "ptmxmode=0666,mode=620",
    )?;
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx")
}

fn wait_for(path: &str, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if Path::new(path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// The device node of the port named [`PORT_NAME`].
fn find_port() -> Option<String> {
    let entries = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for e in entries.flatten() {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            let dev = format!("/dev/{}", e.file_name().to_string_lossy());
            if Path::new(&dev).exists() {
                return Some(dev);
            }
        }
    }
    None
}

fn open_port() -> io::Result<File> {
    let start = Instant::now();
    loop {
        if let Some(dev) = find_port() {
            return File::options().read(true).write(true).open(dev);
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no virtio-serial port named moat.0 appeared within 30 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kernel log lines about dm-verity, device-mapper or EROFS, to explain an I/O error.
fn kernel_complaints() -> Vec<String> {
    let Ok(mut f) = File::options()
        .read(true)
        .custom_flags_nonblock()
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        let rec = String::from_utf8_lossy(&buf[..n]);
        let msg = rec
            .split_once(';')
            .map(|(_, m)| m)
            .unwrap_or(&rec)
            .trim_end()
            .to_string();
        if !msg.starts_with("Command line")
            && ["verity", "device-mapper", "erofs", "EROFS"]
                .iter()
                .any(|k| msg.contains(k))
        {
            out.push(msg);
        }
    }
    out
}

trait NonblockOpen {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}
impl NonblockOpen for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// Turns an I/O failure on the root filesystem into a message that says
/// whether dm-verity caught a modified block.
pub fn explain_io(context: String, err: &io::Error) -> Failure {
    let complaints = kernel_complaints();
    let verity: Vec<&String> = complaints
        .iter()
        .filter(|l| l.contains("device-mapper: verity") && l.contains("corrupted"))
        .collect();
    if !verity.is_empty() {
        return Failure::setup(format!(
            "{context}: {err}: the root filesystem failed dm-verity verification ({}); the cached image was modified after it was built: remove it with `moat image rm` and import it again",
            verity[0]
        ));
    }
    if complaints.is_empty() {
        Failure::setup(format!("{context}: {err}"))
    } else {
        Failure::setup(format!(
            "{context}: {err} (kernel: {})",
            complaints.join("; ")
        ))
    }
}

struct Agent {
    port: File,
    decoder: Decoder,
    /// [`Start::session`], echoed in the final frame.
    session: String,
    /// Whether the kernel command line creates a verified root device.
    has_root: bool,
    /// `moat.root=ext4` / `ext4-ro`: an OCI container's own disk, not the
    /// verified image (read-only: whether to mount it so).
    root: Option<bool>,
    /// `moat.template`: booted to become a template; the root arrives in
    /// `Restore`, after the snapshot.
    template: bool,
}

impl Agent {
    fn send(&mut self, m: &Message) -> Result<(), Failure> {
        let bytes = m.encode().map_err(|e| Failure::setup(e.to_string()))?;
        self.port
            .write_all(&bytes)
            .map_err(|e| Failure::setup(format!("writing to {PORT}: {e}")))
    }

    /// Blocks until one message arrives.
    fn recv(&mut self) -> Result<Message, Failure> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(m) = self
                .decoder
                .next_message()
                .map_err(|e| Failure::setup(format!("from host: {e}")))?
            {
                return Ok(m);
            }
            let n = self
                .port
                .read(&mut buf)
                .map_err(|e| Failure::setup(format!("reading {PORT}: {e}")))?;
            if n == 0 {
                // No host connected yet (or it went away): virtio-serial reads 0.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            self.decoder.push(&buf[..n]);
        }
    }

    fn serve(&mut self) -> Result<(), Failure> {
        // Mount the verified root before saying hello (the device and its
        // root hash come from the kernel command line, not from Start), so
        // that Start, which the host sends in reply, is read at once and
        // its clock reading is fresh. A failure is reported once Start has
        // arrived (the host waits for a frame either way).
        let mounted = if self.template {
            self.await_restore()?
        } else if let Some(read_only) = self.root {
            mount_disk(read_only)
        } else if self.has_root {
            mount_root()
        } else {
            Err(Failure::setup(
                "the kernel command line creates no root device (dm-mod.create=)",
            ))
        };
        trace("verified root mounted");
        // Named volumes' disks, while every device node still exists.
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let mounted = mounted.and_then(|()| volumes::open_disks(&cmdline));
        lock_down()
            .map_err(|e| Failure::setup(format!("locking down the agent's /sys and /dev: {e}")))?;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        self.send(&Message::Hello(Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: release.trim().to_string(),
        }))?;
        trace("hello sent");
        let start = match self.recv()? {
            Message::Start(s) => s,
            other => {
                return Err(Failure::setup(format!(
                    "expected a Start frame first, got {:?}",
                    other.kind()
                )))
            }
        };
        trace("start received");
        self.session = start.session.clone();
        if let Some(t) = start.wall_clock {
            sys::set_realtime(t.secs, t.nanos)
                .map_err(|e| Failure::setup(format!("setting the guest clock: {e}")))?;
        }
        if start.host_version != env!("CARGO_PKG_VERSION") {
            return Err(Failure::setup(format!(
                "host moat {:?} does not match guest agent {}: rebuild the agent (`make agent`)",
                start.host_version,
                env!("CARGO_PKG_VERSION")
            )));
        }
        mounted?;
        // `filesystem.root: ephemeral` over the verified image (an OCI
        // bundle's ext4 root is writable or not by itself).
        if let (None, moat_plan::RootPlan::Ephemeral { size_bytes }) = (self.root, &start.plan.root)
        {
            writable_root(*size_bytes)?;
            trace("ephemeral root layered");
        }
        if let Some(n) = &start.net {
            net::configure(n)?;
            trace("network configured");
        }
        let mut audit = start_audit(&start.plan);
        let child = workload::spawn(&start)?;
        trace("workload started");
        let code = self.relay(child, &start, audit.as_mut())?;
        trace("workload exited");
        let report = match (code, audit) {
            (0, _) | (_, None) => None,
            (_, Some(a)) => {
                let mut r = a.finish();
                moat_agent::audit::locate_dirs(&mut r, &image_entries);
                Some(r).filter(|r| !r.is_empty())
            }
        };
        let session = self.session.clone();
        self.send(&Message::Exit(Exit {
            code,
            session,
            report,
        }))
    }

    /// A template's agent: says hello to the builder, which snapshots the VM
    /// while the agent waits here. Every VM restored from it resumes here
    /// and gets its own `Restore` first: the RNG is reseeded before
    /// anything else runs, then the verified root the host names is
    /// created and mounted (the host, never the guest, chooses its hash).
    fn await_restore(&mut self) -> Result<Result<(), Failure>, Failure> {
        self.send(&Message::Hello(Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: String::new(),
        }))?;
        let restore = match self.recv()? {
            Message::Restore(r) => r,
            other => {
                return Err(Failure::setup(format!(
                    "expected a Restore frame in a VM restored from a template, got {:?}",
                    other.kind()
                )))
            }
        };
        restore_identity(&restore)?;
        TRACE.store(restore.trace, Ordering::Relaxed);
        trace("restored from a template, RNG reseeded");
        Ok(match &restore.root {
            Some(root) => create_verity_root(root).and_then(|()| mount_root()),
            None => Err(Failure::setup(
                "the host restored this VM without a root (Restore.root)",
            )),
        })
    }

    /// Relays stdio between the port and the workload until it exits.
    fn relay(
        &mut self,
        child: workload::Child,
        start: &Start,
        mut audit: Option<&mut auditd::Auditd>,
    ) -> Result<i32, Failure> {
        let workload::Child {
            pid,
            stdin,
            stdout,
            stderr,
        } = child;
        let mut sigfd =
            File::from(sys::sigchld_fd().map_err(|e| Failure::setup(format!("signalfd: {e}")))?);
        let mut stdin = Some(File::from(stdin));
        if let Some(s) = &stdin {
            sys::set_nonblocking(s.as_fd()).map_err(|e| Failure::setup(format!("stdin: {e}")))?;
        }
        let mut outs: Vec<(Option<File>, bool)> = vec![(Some(File::from(stdout)), false)];
        if let Some(e) = stderr {
            outs.push((Some(File::from(e)), true));
        }
        let mut pending_stdin: Vec<u8> = Vec::new();
        let mut stdin_eof = false;
        let mut exit_code: Option<i32> = None;
        let mut exited_at: Option<Instant> = None;
        let mut buf = vec![0u8; MAX_DATA];
        let tty = start.process.tty;
        // Processes exec'd into the container, by the host's id.
        let mut execs = exec::Execs::default();
        loop {
            // Reap the workload (and orphans, as PID 1).
            while let Some((p, status)) = sys::reap() {
                if execs.reaped(p, status) {
                    continue;
                }
                if p == pid {
                    exit_code = Some(if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    });
                    exited_at = Some(Instant::now());
                }
            }
            for m in execs.finished(&self.session) {
                self.send(&m)?;
            }
            let outputs_open = outs.iter().any(|(f, _)| f.is_some());
            if let Some(code) = exit_code {
                // Output still held open by a background process: give it a moment, then stop.
                let grace = exited_at.is_some_and(|t| t.elapsed() > Duration::from_millis(200));
                if !outputs_open || grace {
                    return Ok(code);
                }
            }
            let mut fds = vec![
                libc::pollfd {
                    fd: self.port.as_raw_fd(),
                    events: if pending_stdin.len() < (1 << 20) {
                        libc::POLLIN
                    } else {
                        0
                    },
                    revents: 0,
                },
                libc::pollfd {
                    fd: sigfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stdin.as_ref().map_or(-1, |s| s.as_raw_fd()),
                    events: if pending_stdin.is_empty() {
                        0
                    } else {
                        libc::POLLOUT
                    },
                    revents: 0,
                },
            ];
            for (f, _) in &outs {
                fds.push(libc::pollfd {
                    fd: f.as_ref().map_or(-1, |f| f.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let audit_slot = fds.len();
            fds.push(libc::pollfd {
                fd: audit.as_ref().map_or(-1, |a| a.fd().as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            });
            let exec_base = fds.len();
            let exec_slots = execs.poll_fds(&mut fds);
            let timeout = if exit_code.is_some() || execs.draining() {
                20
            } else {
                1000
            };
            sys::poll(&mut fds, timeout).map_err(|e| Failure::setup(format!("poll: {e}")))?;
            for m in execs.service(&fds[exec_base..], &exec_slots, &mut buf) {
                self.send(&m)?;
            }
            if fds[audit_slot].revents != 0 {
                if let Some(a) = audit.as_deref_mut() {
                    a.drain();
                }
            }
            if fds[1].revents != 0 {
                let mut junk = [0u8; 128];
                let _ = sigfd.read(&mut junk);
            }
            for (i, (slot, is_err)) in outs.iter_mut().enumerate() {
                if fds[3 + i].revents == 0 {
                    continue;
                }
                let Some(f) = slot else { continue };
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => *slot = None, // EIO on a pty master means the slave closed.
                    Ok(n) => {
                        let data = buf[..n].to_vec();
                        let m = if *is_err {
                            Message::Stderr(data)
                        } else {
                            Message::Stdout(data)
                        };
                        let bytes = m.encode().map_err(|e| Failure::setup(e.to_string()))?;
                        self.port
                            .write_all(&bytes)
                            .map_err(|e| Failure::setup(format!("writing to {PORT}: {e}")))?;
                    }
                }
            }
            if fds[2].revents != 0 {
                if let Some(s) = &mut stdin {
                    match s.write(&pending_stdin) {
                        Ok(n) => {
                            pending_stdin.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => {
                            // The workload closed its stdin: drop what it will never read.
                            pending_stdin.clear();
                            stdin = None;
                        }
                    }
                }
            }
            if fds[0].revents & libc::POLLIN != 0 {
                let n = self
                    .port
                    .read(&mut buf)
                    .map_err(|e| Failure::setup(format!("reading {PORT}: {e}")))?;
                self.decoder.push(&buf[..n]);
            } else if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                // The host went away: nobody to report to, stop the workload.
                let _ = sys::kill(pid, libc::SIGKILL);
                std::thread::sleep(Duration::from_millis(10));
            }
            // Frames may already be buffered (they can arrive with Start).
            while let Some(m) = self
                .decoder
                .next_message()
                .map_err(|e| Failure::setup(format!("from host: {e}")))?
            {
                match m {
                    Message::Stdin(d) => {
                        if stdin.is_some() {
                            pending_stdin.extend_from_slice(&d);
                        }
                    }
                    Message::StdinEof => {
                        stdin_eof = true;
                        if tty {
                            // Ctrl-D on the terminal line discipline.
                            pending_stdin.push(4);
                        }
                    }
                    Message::Resize { rows, cols } => {
                        if let (true, Some(s)) = (tty, &stdin) {
                            let _ = sys::set_winsize(s.as_fd(), rows, cols);
                        }
                    }
                    Message::Signal(sig) => {
                        let _ = sys::kill(pid, sig);
                    }
                    Message::Exec(e) => {
                        if let Some(m) = execs.start(start, pid, *e) {
                            self.send(&m)?;
                        }
                    }
                    m @ (Message::ExecStdin { .. }
                    | Message::ExecStdinEof(_)
                    | Message::ExecSignal { .. }
                    | Message::ExecResize { .. }) => execs.on_message(m),
                    other => {
                        return Err(Failure::setup(format!(
                            "unexpected {:?} frame from the host while the workload runs",
                            other.kind()
                        )))
                    }
                }
            }
            if stdin_eof && pending_stdin.is_empty() && !tty {
                stdin = None;
            }
        }
    }

    /// After the last frame: give the host a moment to read it before power-off
    /// (the host normally ends the VM itself as soon as it has the status).
    fn linger(&mut self) {
        let _ = self.port.flush();
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The guest's audit daemon, when the report needs one: the `EROFS` rule
/// unless the root is writable (`filesystem.root: ephemeral`), seccomp
/// denials with `audit.denied_syscalls`. Without it (a kernel without
/// audit, a refusal) the workload runs the same, with no report.
fn start_audit(plan: &moat_plan::Plan) -> Option<auditd::Auditd> {
    let read_only_rule = !matches!(plan.root, moat_plan::RootPlan::Ephemeral { .. });
    if !read_only_rule && !plan.audit_denied {
        return None;
    }
    match auditd::Auditd::start(read_only_rule) {
        Ok(a) => {
            trace("audit daemon registered");
            Some(a)
        }
        Err(e) => {
            console(&format!("audit unavailable, no failure report: {e}"));
            None
        }
    }
}

/// How many names the image has in directory `dir` (`None`: no such
/// directory, or one reached through a symbolic link), read from the
/// agent's own view of the root, without the workload's mounts.
fn image_entries(dir: &str) -> Option<usize> {
    let fd = sys::open_dir_no_symlinks(&format!("{NEW_ROOT}{dir}")).ok()?;
    let n = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()?
        .count();
    Some(n)
}

/// What no two clones of a template may share: the kernel's RNG state
/// (reseeded from the host's bytes) and the hostname.
fn restore_identity(r: &moat_agent::proto::Restore) -> Result<(), Failure> {
    let bytes = hex::decode(&r.entropy)
        .ok()
        .filter(|b| b.len() >= 32)
        .ok_or_else(|| Failure::setup("Restore.entropy is not at least 32 bytes of hex"))?;
    let random = File::options()
        .write(true)
        .open("/dev/random")
        .map_err(|e| Failure::setup(format!("opening /dev/random: {e}")))?;
    sys::reseed_rng(random.as_fd(), &bytes)
        .map_err(|e| Failure::setup(format!("reseeding the guest RNG: {e}")))?;
    if !r.hostname.is_empty() {
        sys::sethostname(&r.hostname)
            .map_err(|e| Failure::setup(format!("setting the hostname: {e}")))?;
    }
    Ok(())
}

/// The verified root of a restored VM: `/dev/dm-0` from the host's table,
/// as `dm-mod.create=` makes it at a cold boot.
fn create_verity_root(root: &moat_agent::proto::VerityRoot) -> Result<(), Failure> {
    const DISK: &str = "/dev/vda";
    if !wait_for(DISK, Duration::from_secs(10)) {
        return Err(Failure::setup(format!(
            "the root disk {DISK} did not appear"
        )));
    }
    let control = File::options()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|e| Failure::setup(format!("opening /dev/mapper/control: {e}")))?;
    sys::dm_create(
        control.as_fd(),
        "moatroot",
        root.data_size / 512,
        "verity",
        &root.params(DISK),
    )
    .map_err(|e| explain_io("creating the dm-verity root device".into(), &e))
}

/// The root disk the command line names (`moat.root=ext4[-ro]`): `Some(read_only)`.
fn root_disk(cmdline: &str) -> Option<bool> {
    cmdline.split_whitespace().find_map(|w| match w {
        "moat.root=ext4" => Some(false),
        "moat.root=ext4-ro" => Some(true),
        _ => None,
    })
}

/// An OCI container's ext4 disk (built by the host at create from the
/// bundle's rootfs), mounted read-write unless `read_only`.
fn mount_disk(read_only: bool) -> Result<(), Failure> {
    const DISK: &str = "/dev/vda";
    if !wait_for(DISK, Duration::from_secs(10)) {
        return Err(Failure::setup(format!(
            "the root disk {DISK} did not appear"
        )));
    }
    let ro = if read_only { libc::MS_RDONLY } else { 0 };
    sys::mount(
        DISK,
        NEW_ROOT,
        "ext4",
        ro | libc::MS_NODEV | libc::MS_NOSUID,
        "noinit_itable",
    )
    .map_err(|e| explain_io(format!("mounting the root disk {DISK}"), &e))
}

/// `filesystem.root: ephemeral`: an overlay over the verified read-only
/// root, mounted on the same path (its lower layer is looked up before the
/// overlay covers it). The upper layer is a tmpfs of `size` bytes in guest
/// memory: a writer past it gets ENOSPC, and it is gone with the VM. The
/// EROFS image below, and the host's copy of it, are never written.
fn writable_root(size: u64) -> Result<(), Failure> {
    const UPPER: &str = "/moat-upper";
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| explain_io(format!("ephemeral root: {what}"), &e)
    };
    std::fs::create_dir_all(UPPER).map_err(io("creating /moat-upper"))?;
    sys::mount(
        "tmpfs",
        UPPER,
        "tmpfs",
        libc::MS_NODEV | libc::MS_NOSUID,
        &format!("size={size},mode=0755"),
    )
    .map_err(io("mounting its tmpfs"))?;
    for d in ["upper", "work"] {
        std::fs::create_dir(format!("{UPPER}/{d}")).map_err(io("making its layers"))?;
    }
    sys::mount(
        "overlay",
        NEW_ROOT,
        "overlay",
        libc::MS_NODEV | libc::MS_NOSUID,
        &format!("lowerdir={NEW_ROOT},upperdir={UPPER}/upper,workdir={UPPER}/work"),
    )
    .map_err(io(
        "mounting the overlay (is CONFIG_OVERLAY_FS in the guest kernel?)",
    ))
}

fn mount_root() -> Result<(), Failure> {
    if !wait_for(ROOT_DEVICE, Duration::from_secs(10)) {
        let k = kernel_complaints();
        return Err(Failure::setup(format!(
            "the verified root device {ROOT_DEVICE} did not appear{}",
            if k.is_empty() {
                String::new()
            } else {
                format!(" (kernel: {})", k.join("; "))
            }
        )));
    }
    sys::mount(
        ROOT_DEVICE,
        NEW_ROOT,
        "erofs",
        libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
        "",
    )
    .map_err(|e| explain_io(format!("mounting the root filesystem {ROOT_DEVICE}"), &e))
}
