//! `kill`, `delete` and `exec` of a micro-VM container (see [`crate::vm`]).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use moat_plan::ProcessSpec;

use crate::args::Exec;
use crate::state::{self, Record, VmRecord};
use crate::sys::{self, Forked};

/// Signals the helper forwards to the workload; KILL ends the VM.
pub fn check_signal(rec: &Record, sig: i32) -> anyhow::Result<()> {
    if sig != libc::SIGKILL && !moat_vm::session::FORWARDED_SIGNALS.contains(&sig) {
        bail!(
            "container {:?} runs in a micro-VM, whose helper forwards only INT, TERM, HUP, QUIT, USR1 and USR2 to the workload (KILL ends the VM); signal {sig} cannot reach it",
            rec.id
        );
    }
    Ok(())
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// Ends a VM container's helper (if it still runs) and removes what the
/// VM left: the cleanup watcher removes the VMM's cgroups and the root
/// disk once the helper is gone; this waits for it, then removes anything
/// a watcher killed before its work left behind.
pub fn delete(rec: &Record, vm: &VmRecord) -> anyhow::Result<()> {
    if state::alive(rec) {
        if let Some(p) = rustix::process::Pid::from_raw(rec.pid) {
            if let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
                if state::alive(rec) {
                    let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
                }
            }
        }
        if !wait_until(Duration::from_secs(10), || !state::alive(rec)) {
            bail!(
                "container {:?}: its micro-VM helper (pid {}) did not end after SIGKILL",
                rec.id,
                rec.pid
            );
        }
    }
    // The cleanup watcher ends QEMU and removes its cgroups once the
    // helper is gone; wait for it before removing what is left.
    wait_until(Duration::from_secs(10), || {
        moat_cgroup::stats_for(&vm.vm_id).is_none()
    });
    rec.cgroup.kill_all();
    let _ = moat_cgroup::cleanup(&vm.vm_id);
    moat_vm::rootfs::sweep(&vm.state_root);
    Ok(())
}

/// The exec channel of a running VM container, from its helper.
fn channel(root: &Path, id: &str) -> anyhow::Result<std::os::fd::OwnedFd> {
    let path = crate::vm::exec_socket(root, id);
    let s = UnixStream::connect(&path).with_context(|| {
        format!(
            "container {id:?}: connecting to its helper at {}",
            path.display()
        )
    })?;
    sys::recv_fd(s.as_fd())
        .with_context(|| format!("container {id:?}: reading from its helper"))?
        .with_context(|| format!("container {id:?}: its helper closed the exec socket"))
}

/// The process `exec` asks for, as exec.rs worked it out.
pub struct ExecProcess {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub tty: bool,
}

/// `exec` in a VM container: the process runs in the guest through the
/// agent, under the container's plan. With `--detach`, a helper forked
/// here relays its stdio and exits with its status (the `--pid-file` pid).
pub fn exec(root: &Path, a: &Exec, rec: &Record, x: ExecProcess) -> anyhow::Result<i32> {
    let tty = x.tty;
    let process = ProcessSpec {
        args: x.args,
        env: x.env,
        cwd: x.cwd,
        uid: x.uid,
        gid: x.gid,
        additional_gids: x.groups,
        tty,
        interactive: tty,
        hostname: String::new(),
    };
    let control = channel(root, &rec.id)?;
    let peer = match (&a.console_socket, tty) {
        (Some(p), true) => {
            let s = UnixStream::connect(p)
                .with_context(|| format!("connecting to --console-socket {}", p.display()))?;
            let (master, peer) = sys::openpty().context("allocating a pseudo-terminal")?;
            sys::send_fd(s.as_fd(), master.as_fd()).with_context(|| {
                format!("sending the terminal to --console-socket {}", p.display())
            })?;
            Some(peer)
        }
        _ => None,
    };
    let run = move || -> i32 {
        if let Some(t) = &peer {
            if let Err(e) = sys::take_terminal(t.as_fd()).and_then(|()| sys::raw_mode(t.as_fd())) {
                eprintln!("moat-oci: error: exec: taking the terminal: {e}");
                return 125;
            }
        }
        drop(peer);
        let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        match moat_vm::exec::request(
            control.as_fd(),
            &process,
            tty,
            i.as_fd(),
            o.as_fd(),
            e.as_fd(),
        ) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("moat-oci: error: exec: {:#}", anyhow::Error::from(err));
                125
            }
        }
    };
    if !a.detach && !tty {
        return Ok(run());
    }
    // A helper process: the pid-file's with --detach; with a terminal
    // always (it becomes a session leader, which this process may not).
    match sys::fork().context("forking the exec helper")? {
        Forked::Child => std::process::exit(run()),
        Forked::Parent(pid) => {
            if let Some(f) = &a.pid_file {
                crate::create::write_pid_file(f, pid)?;
            }
            if a.detach {
                return Ok(0);
            }
            Ok(crate::reap(pid))
        }
    }
}
