//! The VMM's jail: an unprivileged uid without capabilities or groups,
//! `no_new_privs`, its own mount (host state hidden, a private `/dev/shm`
//! and `/dev/mqueue`), pid (with a private procfs), ipc, uts and net
//! namespaces, cgroups (memory sized to guest memory plus overhead, pids,
//! CPU bandwidth; see [`moat_cgroup`]), no descriptor but its own, and
//! death with its supervisor.
//!
//! Process tree, all forks of moat, no helper program: the outer process
//! (parent-death signal from moat; joins the cgroups and the new
//! namespaces) -> PID 1 of the new pid namespace (parent-death signal from
//! the outer process, still root; it mounts the namespace's own procfs)
//! -> the VMM's process, which drops every privilege with the shared
//! sequence of `moat-privdrop` and executes the VMM. Whatever way moat
//! ends, the chain of SIGKILLs reaches the namespace's PID 1, and the
//! kernel kills everything else in the namespace with it.
//!
//! Teardown needs root (killing the jail's root processes, removing cgroups
//! and the container state), and the supervisor gives root up once the VM runs
//! ([`crate::sys::drop_privileges`]). So a cleanup watcher, started as root
//! before the VMM, does it: when the supervisor closes its end of a pipe
//! (teardown, or the supervisor's death, even by `kill -9`), the watcher
//! kills everything in the VM's cgroups at once ([`moat_cgroup::KillMethod`]),
//! removes the cgroups and the state, and closes a second pipe that the
//! supervisor waits on, so that `moat run` returns only once nothing is
//! left.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use moat_cgroup::{Cgroup, CgroupError, Hierarchies, KillMethod, Name, Version};
use moat_policy::plan::CgroupLimits;

use crate::hypervisor::VmmCommand;
use crate::sys;

/// First uid of the range jailed VMMs run as (each VM gets its own).
pub const UID_BASE: u32 = 0x7000_0000;

/// First uid of the range VM supervisors drop to once the VM runs (each
/// VM's supervisor its own, never the uid of any VMM).
pub const SUPERVISOR_UID_BASE: u32 = UID_BASE + 0x1_0000;

/// The uid the supervisor of the VM whose VMM runs as `vmm_uid` drops to.
pub fn supervisor_uid(vmm_uid: u32) -> u32 {
    SUPERVISOR_UID_BASE + (vmm_uid.wrapping_sub(UID_BASE) & 0xffff)
}

/// Tasks (threads count) the VMM may have: QEMU's main loop, RCU and
/// vCPU threads plus its I/O worker pool (up to 64 for `aio=threads`), and
/// the jail's two processes (unshare, sh). Nothing in it may fork (`-sandbox
/// spawn=deny`), so a higher count is a runaway.
pub const PIDS_BASE: u64 = 96;

/// Empty per-VM cgroups older than this are left by supervisors killed
/// before their cleanup watcher ran (a younger one may belong to a VM
/// whose VMM has not joined it yet).
const STALE_CGROUP_AGE: Duration = Duration::from_secs(60);

/// How long the teardown waits for the cleanup watcher.
const TEARDOWN_DEADLINE: Duration = Duration::from_secs(15);

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
    #[error("setting up the VMM's cgroups")]
    Cgroups(#[source] CgroupError),
    #[error("opening {path} to join the VMM's cgroup")]
    JoinCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Daemon(crate::virtiofs::VirtiofsError),
    #[error("starting the jailed VMM ({program})")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// The jail's outer process (the VMM's grandparent), as moat's child.
struct Jailed {
    pid: libc::pid_t,
    status: Option<ExitStatus>,
}

impl Jailed {
    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = match sys::wait_nohang(self.pid) {
                Ok(Some(raw)) => Some(ExitStatus::from_raw(raw)),
                Ok(None) => None,
                // Not ours to wait for any more: it is gone.
                Err(_) => Some(ExitStatus::from_raw(125 << 8)),
            };
        }
        self.status
    }
}

/// A running, jailed VMM.
pub struct RunningVmm {
    child: Option<Jailed>,
    /// The virtio-fs daemons (children of this thread) and the host
    /// directories they serve; reaped at teardown.
    daemons: Vec<(libc::pid_t, String)>,
    pub console: File,
    /// The uid the VMM runs as.
    pub uid: u32,
    /// The memory cgroup's OOM counters, opened while still root (read at
    /// the end with [`RunningVmm::oom_kills`]).
    oom_events: Option<File>,
    /// The memory limit of the VMM's cgroup, as set, and its file (opened
    /// while still root: someone may have changed it since).
    pub memory_limit_bytes: u64,
    memory_limit: Option<File>,
    /// Closing it (teardown, or any exit) wakes the cleanup watcher.
    reaper_trigger: Option<OwnedFd>,
    /// At end of file once the cleanup watcher is done.
    reaper_done: Option<File>,
}

impl RunningVmm {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid as u32)
    }

    /// Whether the VMM is gone; its exit status if so.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(Jailed::try_wait)
    }

    /// The host directory and exit status of a virtio-fs daemon that has
    /// ended (reaped here), if one has.
    pub fn daemon_exited(&mut self) -> Option<(String, ExitStatus)> {
        for i in 0..self.daemons.len() {
            let status = match sys::wait_nohang(self.daemons[i].0) {
                Ok(None) => continue,
                Ok(Some(raw)) => ExitStatus::from_raw(raw),
                // Not ours to wait for any more: it is gone.
                Err(_) => ExitStatus::from_raw(125 << 8),
            };
            return Some((self.daemons.remove(i).1, status));
        }
        None
    }

    /// OOM kills in the VMM's memory cgroup so far.
    pub fn oom_kills(&mut self) -> u64 {
        read_again(self.oom_events.as_mut()).map_or(0, |t| moat_cgroup::oom_kill_count(&t))
    }

    /// The memory limit of the VMM's cgroup now, bytes.
    pub fn memory_limit_now(&mut self) -> u64 {
        read_again(self.memory_limit.as_mut())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(self.memory_limit_bytes)
    }

    /// Kills the VMM and everything in its cgroups, and waits (bounded)
    /// until the cleanup watcher has removed the cgroups and the state.
    /// Needs no privilege: it only closes a pipe and waits.
    pub fn shutdown(&mut self) {
        drop(self.reaper_trigger.take());
        let deadline = Instant::now() + TEARDOWN_DEADLINE;
        if let Some(mut c) = self.child.take() {
            while Instant::now() < deadline {
                match c.try_wait() {
                    None => std::thread::sleep(Duration::from_millis(5)),
                    Some(_) => break,
                }
            }
        }
        if let Some(done) = self.reaper_done.take() {
            wait_eof(&done, deadline);
        }
        reap(&mut self.daemons, deadline);
    }
}

impl Drop for RunningVmm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reaps `pids` (children that the cleanup watcher kills, or that exit
/// once QEMU is gone), until `deadline`.
fn reap(pids: &mut Vec<(libc::pid_t, String)>, deadline: Instant) {
    while !pids.is_empty() {
        // Gone, or not ours to wait for: either way, done.
        pids.retain(|&(p, _)| matches!(sys::wait_nohang(p), Ok(None)));
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The text of a small file opened earlier, read again from its start.
fn read_again(f: Option<&mut File>) -> Option<String> {
    use std::io::{Read, Seek};
    let f = f?;
    let mut text = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Waits until `f` (a pipe) is at end of file, or `deadline`.
fn wait_eof(f: &File, deadline: Instant) {
    use std::io::Read;
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        if sys::poll(&mut fds, ms).is_err() {
            return;
        }
        if fds[0].revents != 0 && matches!((&*f).read(&mut buf), Ok(0) | Err(_)) {
            return;
        }
    }
}

/// Options of the jail.
pub struct JailSpec {
    /// Unique name (`vm-<id>`), used for the cgroup.
    pub name: String,
    pub uid: u32,
    pub guest_memory_mib: u64,
    pub vcpus: u32,
    /// CPU bandwidth of the VMM's cgroup, millicpus (the policy's `cpus`).
    pub cpu_millis: Option<u64>,
    /// Extra paths the cleanup watcher removes.
    pub cleanup: Vec<PathBuf>,
    /// Extra host directories to hide from the VMM (moat's state root).
    pub hide: Vec<PathBuf>,
    /// The one supplementary group the VMM keeps: the group that owns
    /// `/dev/kvm` when KVM is used (Debian: `kvm`, mode 0660). `None` clears
    /// all groups.
    pub device_group: Option<u32>,
    /// A network namespace to join instead of a new, empty one (the
    /// egress network, made and filtered by the host).
    pub netns: Option<OwnedFd>,
}

fn spawn_err(program: &str) -> impl FnOnce(std::io::Error) -> JailError + '_ {
    move |source| JailError::Spawn {
        program: program.to_string(),
        source,
    }
}

/// Starts `cmd` in the jail.
pub fn spawn(cmd: VmmCommand, spec: &JailSpec) -> Result<RunningVmm, JailError> {
    spawn_with_daemons(cmd, spec, Vec::new())
}

/// [`spawn`], first starting `daemons` (the virtio-fs daemons of the VM's
/// host directories: as root, each in its own jail, see
/// [`crate::virtiofs`]) in the VM's cgroups, so that they die with it.
pub fn spawn_with_daemons(
    cmd: VmmCommand,
    spec: &JailSpec,
    daemons: Vec<crate::virtiofs::Daemon>,
) -> Result<RunningVmm, JailError> {
    let n_daemons = daemons.len() as u64;
    let memory_bytes = (spec.guest_memory_mib
        + cmd.overhead_mib
        + n_daemons * crate::virtiofs::MEMORY_PER_DAEMON_MIB)
        * 1024
        * 1024;
    let limits = CgroupLimits {
        memory_bytes: Some(memory_bytes),
        pids: Some(
            PIDS_BASE + 2 * u64::from(spec.vcpus) + n_daemons * crate::virtiofs::PIDS_PER_DAEMON,
        ),
        cpu_millis: spec.cpu_millis,
    };
    let hierarchies = Hierarchies::host().map_err(JailError::Cgroups)?;
    hierarchies.sweep_stale_vm_groups(STALE_CGROUP_AGE);
    let cgroups = Name::parse(&spec.name)
        .and_then(|name| Cgroup::create(&hierarchies, &name, &limits))
        .map_err(JailError::Cgroups)?;
    let opened: Result<Vec<File>, JailError> = cgroups
        .procs_files()
        .into_iter()
        .map(|p| {
            File::options()
                .write(true)
                .open(&p)
                .map_err(|source| JailError::JoinCgroup { path: p, source })
        })
        .collect();
    let procs = match opened {
        Ok(p) => p,
        Err(e) => {
            let _ = cgroups.remove();
            return Err(e);
        }
    };
    let oom_events = cgroups.oom_events_path().and_then(|p| File::open(p).ok());
    let memory_limit = cgroups.memory_limit_path().and_then(|p| File::open(p).ok());
    // From here on the watcher owns the cgroups and the cleanup paths.
    let (reaper_trigger, reaper_done) = match spawn_reaper(&cgroups, &spec.cleanup) {
        Ok(r) => r,
        Err(e) => {
            let _ = cgroups.remove();
            return Err(spawn_err("cleanup watcher (/bin/sh)")(e));
        }
    };
    let (console_r, console_w) = sys::pipe().map_err(spawn_err("pipe"))?;
    let console_w2 = console_w.try_clone().map_err(spawn_err("pipe"))?;
    // The host directories' daemons, before the VMM that connects to
    // them; their errors go to the VMM's console (shown when a boot fails).
    let proc_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    let mut daemon_pids = Vec::new();
    for d in daemons {
        let source = d.source.clone();
        match crate::virtiofs::spawn(d, &proc_fds, console_w2.as_fd()) {
            Ok(pid) => daemon_pids.push((pid, source)),
            Err(e) => {
                // The watcher kills what started; reap it here.
                drop(reaper_trigger);
                reap(&mut daemon_pids, Instant::now() + TEARDOWN_DEADLINE);
                return Err(JailError::Daemon(e));
            }
        }
    }
    let cstring = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).ok();
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
        .filter_map(|d| cstring(&d))
        .collect();
    let dir = |p: &str| {
        Path::new(p)
            .is_dir()
            .then(|| cstring(Path::new(p)))
            .flatten()
    };
    let pre = sys::PreExec {
        fds: cmd.fds.iter().map(|(fd, n)| (fd.as_raw_fd(), *n)).collect(),
        cgroup_procs: procs.iter().map(|f| f.as_raw_fd()).collect(),
        hide,
        private_shm: dir("/dev/shm"),
        private_mqueue: dir("/dev/mqueue"),
        netns: spec.netns.as_ref().map(|f| f.as_raw_fd()),
    };
    // The VMM's process: the jail's uid as uid and gid, no capability in
    // any set, no_new_privs, only its own descriptors, cwd `/`.
    let groups: Vec<u32> = spec.device_group.into_iter().collect();
    let targets: Vec<i32> = cmd.fds.iter().map(|(_, n)| *n).collect();
    let drop_spec =
        moat_privdrop::DropSpec::unprivileged(spec.uid, spec.uid, &groups).keep_fds(&targets);
    let mut argv = vec![cmd.program.display().to_string()];
    argv.extend(cmd.args.iter().cloned());
    let exec = moat_privdrop::Exec::new(&argv, &["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string()])
        .map_err(|e| spawn_err(&argv[0])(std::io::Error::other(e.to_string())))?;
    let null = File::open("/dev/null").map_err(spawn_err("/dev/null"))?;
    let program = cmd.program.display().to_string();
    let (pid, report) = sys::spawn_jailed(
        &pre,
        [null.as_fd(), console_w.as_fd(), console_w2.as_fd()],
        &drop_spec,
        &exec,
    )
    .map_err(spawn_err(&program))?;
    let mut child = Jailed { pid, status: None };
    // End of file without a byte: the VMM executes.
    let mut rep = Vec::new();
    let _ = std::io::Read::read_to_end(&mut File::from(report), &mut rep);
    if let Some(why) = jail_failure(&rep, &drop_spec, &exec) {
        while child.try_wait().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        return Err(spawn_err(&program)(std::io::Error::other(why)));
    }
    // The child has its own copies now.
    drop(cmd.fds);
    drop(procs);
    drop((console_w, console_w2, null));
    Ok(RunningVmm {
        child: Some(child),
        daemons: daemon_pids,
        console: File::from(console_r),
        uid: spec.uid,
        oom_events,
        memory_limit_bytes: memory_bytes,
        memory_limit,
        reaper_trigger: Some(reaper_trigger),
        reaper_done: Some(File::from(reaper_done)),
    })
}

/// What the jail's report pipe says went wrong, if anything.
fn jail_failure(
    rep: &[u8],
    spec: &moat_privdrop::DropSpec,
    exec: &moat_privdrop::Exec,
) -> Option<String> {
    let (&tag, rest) = rep.split_first()?;
    let errno = || {
        let n = rest.try_into().map(i32::from_le_bytes).unwrap_or(libc::EIO);
        std::io::Error::from_raw_os_error(n)
    };
    Some(match tag {
        sys::JAIL_NAMESPACES => format!(
            "joining the cgroups and namespaces of the jail: {}",
            errno()
        ),
        sys::JAIL_PROC => format!("mounting the jail's /proc: {}", errno()),
        sys::JAIL_PID_NAMESPACE => format!("creating the jail's pid namespace: {}", errno()),
        sys::JAIL_EXEC => match moat_privdrop::ExecFailure::from_bytes(rest) {
            Some(f) if f.exit_code() == moat_privdrop::EXIT_NOT_FOUND => format!(
                "{}: {} (PATH={})",
                exec.command(),
                std::io::Error::from_raw_os_error(f.errno),
                exec.path_var()
            ),
            Some(f) => format!("{}: {}", f.step_name(spec), f.detail(spec, exec)),
            None => "the VMM's process failed before exec".to_string(),
        },
        _ => "the jail failed before the VMM ran".to_string(),
    })
}

/// A watcher in its own session that, once the write end of its stdin
/// closes (teardown, or moat's death however it ended), kills everything
/// in the VM's cgroups, removes them and `paths`, and then closes its
/// stdout. Returns `(trigger, done)`: the write end of its stdin and the
/// read end of its stdout.
fn spawn_reaper(cgroups: &Cgroup, paths: &[PathBuf]) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (trigger_r, trigger_w) = sys::pipe()?;
    let (done_r, done_w) = sys::pipe()?;
    // The outer shell backgrounds the watcher and exits at once, so the
    // watcher is re-parented to init and moat needs no reaping thread (a
    // thread would make the process unfit to start a sandbox afterwards,
    // e.g. after the accelerator probe of `--isolation auto`). An
    // asynchronous list gets /dev/null as stdin, hence fds 3 and 4. A frozen
    // task cannot exit, so no pid read from a frozen group is reused before
    // its SIGKILL lands.
    let script = r#"exec 3<&0 4>&1; (cat <&3 >/dev/null; exec 3<&-
mode=$1; dir=$2; shift 2
case $mode in
kill) echo 1 > "$dir/cgroup.kill" ;;
freeze) echo FROZEN > "$dir/freezer.state"; i=0
  while [ "$(cat "$dir/freezer.state")" != FROZEN ] && [ $i -lt 200 ]; do sleep 0.01; i=$((i+1)); done
  for p in $(cat "$dir/cgroup.procs"); do kill -9 "$p"; done
  echo THAWED > "$dir/freezer.state" ;;
freeze2) echo 1 > "$dir/cgroup.freeze"; i=0
  while ! grep -qx 'frozen 1' "$dir/cgroup.events" && [ $i -lt 200 ]; do sleep 0.01; i=$((i+1)); done
  for p in $(cat "$dir/cgroup.procs"); do kill -9 "$p"; done
  echo 0 > "$dir/cgroup.freeze" ;;
*) for p in $(cat "$dir/cgroup.procs"); do kill -9 "$p"; done ;;
esac
while [ "$1" != -- ]; do cg=$1; shift; i=0
  while [ -d "$cg" ] && ! rmdir "$cg" && [ $i -lt 200 ]; do sleep 0.02; i=$((i+1)); done
done
shift; for p; do umount -l -- "$p" 2>/dev/null; done; rm -rf -- "$@") </dev/null >/dev/null 2>&1 &"#;
    // How to kill is the cgroup layer's choice; the watcher only carries
    // it out (it must outlive this process and run as root).
    let (mode, dir) = match cgroups.kill_method() {
        KillMethod::CgroupKill(d) => ("kill", d),
        KillMethod::Freeze(Version::V1, d) => ("freeze", d),
        KillMethod::Freeze(Version::V2, d) => ("freeze2", d),
        KillMethod::Procs(d) => ("procs", d),
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script, "moat-reaper", mode])
        .arg(dir)
        .args(cgroups.paths().iter().rev())
        .arg("--")
        .args(paths)
        .stdin(Stdio::from(trigger_r))
        .stdout(Stdio::from(done_w))
        .stderr(Stdio::null())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let mut child = sys::spawn_detached(&mut cmd)?;
    drop(cmd);
    // The outer shell exits as soon as the watcher is in the background.
    child.wait()?;
    Ok((trigger_w, done_r))
}

/// The group of `/dev/kvm` when that group may read and write it (the
/// jailed VMM keeps it so KVM works without any other privilege).
pub fn kvm_group() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/dev/kvm").ok()?;
    (m.mode() & 0o060 == 0o060 && m.gid() != 0).then_some(m.gid())
}
