//! The vm backend as a [`moat_runtime::Backend`]: a front end runs,
//! signals, cleans up and measures a VM container through the same trait
//! as a sandbox one.

use std::path::{Path, PathBuf};

use moat_runtime::backend::{BackendError, Container, Stats};
use moat_runtime::record::{self, Record};
use moat_runtime::{Backend, Isolation};

use crate::session::{Stdio, FORWARDED_SIGNALS};
use crate::{supervisor, VmError, VmRunOptions};

/// Micro-VMs on this host: one QEMU `microvm` per container, supervised
/// by the calling process.
pub struct VmBackend {
    /// moat's state root (kernels, root images, the accelerator probe).
    pub state_root: PathBuf,
    /// `kvm`, `tcg`, `auto` or `None` (= auto).
    pub accel: Option<String>,
    /// Which threads the supervisor's seccomp filter binds.
    pub supervisor_seccomp: supervisor::Scope,
    /// Where moat's notices go (accelerator choice, memory limits); they
    /// may quote the guest, so a front end escapes them.
    pub notice: Box<dyn Fn(&str)>,
    /// The exec control socket for the next [`Backend::run_attached`]
    /// (taken by it; see [`crate::exec`]).
    pub control: std::cell::Cell<Option<std::os::fd::OwnedFd>>,
    /// From a template or by a cold boot (`--vm-start`).
    pub vm_start: crate::VmStart,
    /// After [`Backend::run_attached`]: the guest's report of what the
    /// workload failed at (see [`crate::run_container_reporting`]).
    pub guest_report: std::cell::RefCell<Option<crate::GuestReport>>,
}

impl VmBackend {
    /// The backend as the `moat` CLI uses it: the whole process is the
    /// supervisor, notices go to stderr.
    pub fn new(state_root: PathBuf) -> VmBackend {
        VmBackend {
            state_root,
            accel: None,
            supervisor_seccomp: supervisor::Scope::Process,
            notice: Box::new(|n| eprintln!("{n}")),
            control: std::cell::Cell::new(None),
            vm_start: crate::VmStart::Auto,
            guest_report: std::cell::RefCell::new(None),
        }
    }
}

/// What the backend refuses or fails to do to a recorded container.
#[derive(Debug, thiserror::Error)]
pub enum BackendOpError {
    #[error("container {name:?} is a {isolation} container, not a micro-VM")]
    NotVm { name: String, isolation: Isolation },
    #[error("container {name:?} runs in a micro-VM, whose supervisor forwards only INT, TERM, HUP, QUIT, USR1 and USR2 (KILL ends the VM); signal {signal} cannot reach it")]
    Unforwarded { name: String, signal: i32 },
    #[error("signalling container {name}: its supervisor is gone")]
    Gone { name: String },
    #[error("signalling container {name}")]
    Signal {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("removing container {name}: it is still running (stop it first: moat kill {name})")]
    Running { name: String },
    #[error(transparent)]
    Record(#[from] moat_runtime::StateError),
}

fn op_error(e: BackendOpError) -> BackendError {
    BackendError {
        exit_code: 125,
        error: Box::new(e),
    }
}

fn vm_error(e: VmError) -> BackendError {
    BackendError {
        exit_code: 125,
        error: Box::new(e),
    }
}

fn check_vm(record: &Record) -> Result<(), BackendError> {
    if record.isolation != Isolation::Vm {
        return Err(op_error(BackendOpError::NotVm {
            name: record.name.to_string(),
            isolation: record.isolation,
        }));
    }
    Ok(())
}

impl Backend for VmBackend {
    fn isolation(&self) -> Isolation {
        Isolation::Vm
    }

    fn run_attached(&self, c: &Container) -> Result<i32, BackendError> {
        let opts = VmRunOptions {
            state_root: self.state_root.clone(),
            run_root: c.run_root.clone(),
            rootfs: c.rootfs.clone(),
            image_id: c.image_id.clone(),
            id: Some(c.id.clone()),
            process: c.process.clone(),
            plan: c.plan.clone(),
            accel: self.accel.clone(),
            name: c.name.to_string(),
            stop_timeout: c.stop_timeout,
            supervisor_seccomp: self.supervisor_seccomp,
            control: self.control.take(),
            keep_record: c.started_notify.is_some(),
            started_notify: c.started_notify.clone(),
            start_gate: c.start_gate.clone(),
            extra_seccomp: Vec::new(),
            attach: None,
            pod_share: None,
            vm_start: self.vm_start,
        };
        let mut report = None;
        let r = crate::run_container_reporting(
            opts,
            None,
            Stdio::inherit(),
            &mut |n| (self.notice)(n),
            &mut report,
        );
        *self.guest_report.borrow_mut() = report;
        r.map_err(vm_error)
    }

    /// Signals the container's supervisor through a pidfd, after checking
    /// its start time (a reused pid is never signalled); the supervisor
    /// forwards [`FORWARDED_SIGNALS`] to the workload, SIGKILL ends the VM.
    fn signal(&self, record: &Record, sig: i32) -> Result<(), BackendError> {
        check_vm(record)?;
        let name = record.name.to_string();
        if sig != libc::SIGKILL && !FORWARDED_SIGNALS.contains(&sig) {
            return Err(op_error(BackendOpError::Unforwarded { name, signal: sig }));
        }
        let gone = || op_error(BackendOpError::Gone { name: name.clone() });
        if !record.supervisor_alive() {
            return Err(gone());
        }
        let pid = rustix::process::Pid::from_raw(record.supervisor_pid).ok_or_else(gone)?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|_| gone())?;
        // The pidfd pins the process; check again that it is the same one.
        if !record.supervisor_alive() {
            return Err(gone());
        }
        let signal = rustix::process::Signal::from_named_raw(sig).ok_or_else(|| {
            op_error(BackendOpError::Unforwarded {
                name: name.clone(),
                signal: sig,
            })
        })?;
        rustix::process::pidfd_send_signal(&fd, signal).map_err(|e| {
            op_error(BackendOpError::Signal {
                name: name.clone(),
                source: e.into(),
            })
        })
    }

    /// Removes what a VM container whose supervisor died left behind: its
    /// cgroups (killing whatever is still in them) and its record, all
    /// derived from its ID. Normally the cleanup watcher has done both.
    fn delete(&self, run_root: &Path, record: &Record) -> Result<(), BackendError> {
        check_vm(record)?;
        let _lock = record::lock(run_root).map_err(|e| op_error(e.into()))?;
        if record.supervisor_alive() {
            return Err(op_error(BackendOpError::Running {
                name: record.name.to_string(),
            }));
        }
        let _ = moat_cgroup::cleanup(record.id.as_str());
        record::remove(run_root, &record.id);
        Ok(())
    }

    /// Through the container's monitor, which hands out the channel to the
    /// VM's supervisor, which relays to the guest agent: the process runs
    /// in the guest under the container's plan. This process's stdio is
    /// relayed by the supervisor; the guest never holds it.
    fn exec(&self, req: &moat_runtime::backend::ExecRequest<'_>) -> Result<i32, BackendError> {
        use std::os::fd::AsFd;
        check_vm(req.record)?;
        let channel =
            moat_runtime::control::exec_channel(req.run_root, &req.record.id).map_err(|e| {
                BackendError {
                    exit_code: 125,
                    error: Box::new(e),
                }
            })?;
        let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        crate::exec::request(
            channel.as_fd(),
            req.process,
            req.process.tty,
            stdin.as_fd(),
            stdout.as_fd(),
            stderr.as_fd(),
        )
        .map_err(vm_error)
    }

    fn cleanup(&self, record: &Record) {
        if record.isolation == Isolation::Vm {
            let _ = moat_cgroup::cleanup(record.id.as_str());
        }
    }

    /// The exec channel of the next container run: the supervisor's end
    /// goes with it, the caller keeps the other (see [`crate::exec`]).
    fn exec_channel(&self) -> Option<std::os::fd::OwnedFd> {
        let (caller, supervisor) = crate::exec::control_pair().ok()?;
        self.control.set(Some(supervisor));
        Some(caller)
    }

    /// The micro-VM's figures from its host cgroups: memory is the whole
    /// VM's (guest memory it touched plus QEMU's own), CPU and tasks the
    /// VMM's.
    fn stats(&self, record: &Record) -> Option<Stats> {
        if record.isolation != Isolation::Vm {
            return None;
        }
        let s = moat_cgroup::stats_for(record.id.as_str())?;
        Some(Stats {
            memory_bytes: s.memory_bytes,
            cpu_usec: s.cpu_usec,
            pids: s.pids,
        })
    }
}
