//! The sequence itself. Every step maps its error to an [`ExecFailure`];
//! nothing here allocates.

use std::convert::Infallible;
use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::process::{self, Rlimit, Signal, Uid};
use rustix::thread::{self, CapabilitySet, CapabilitySets};

use crate::failure::{ExecFailure, Step};
use crate::path::{self, Probe, MAX_PATH};
use crate::spec::{DropSpec, Exec};
use crate::sys;

/// Applies `spec` to the calling process and executes `exec`; returns only
/// if a step failed (see the crate documentation for the order).
///
/// Call it in a freshly forked, single-threaded child, after the caller's
/// own set-up (namespaces joined or created, root pivoted, stdio in
/// place), with the privilege needed to change ids and capabilities (root
/// of the process's user namespace).
///
/// `parent`: the read end of a pipe whose write end only the parent
/// (the supervisor) holds. The workload then gets SIGKILL when the parent
/// dies (`PR_SET_PDEATHSIG`, set after the id change, which clears it),
/// and a hang-up on the pipe at that point means the parent died before,
/// so the sequence stops with [`Step::ParentGone`] instead of running an
/// orphan. `None` where there is no parent to watch (the guest agent is
/// PID 1); a parent-death signal set earlier is then kept as it was.
pub fn drop_and_exec(spec: &DropSpec, exec: &Exec, parent: Option<BorrowedFd<'_>>) -> ExecFailure {
    match run(spec, exec, parent) {
        Ok(never) => match never {},
        Err(f) => f,
    }
}

fn at(step: Step, arg: u32) -> impl Fn(Errno) -> ExecFailure {
    move |e| ExecFailure::new(step, arg, e)
}

fn io_at(step: Step) -> impl Fn(std::io::Error) -> ExecFailure {
    move |e| ExecFailure {
        step,
        arg: 0,
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

fn cap(n: u32) -> CapabilitySet {
    CapabilitySet::from_bits_retain(1 << n)
}

fn finite(v: u64) -> Option<u64> {
    (v != u64::MAX).then_some(v)
}

fn run(
    spec: &DropSpec,
    exec: &Exec,
    parent: Option<BorrowedFd<'_>>,
) -> Result<Infallible, ExecFailure> {
    // With a parent to watch, the workload dies with it; otherwise a
    // parent-death signal set before is kept.
    let death_signal = match parent {
        Some(_) => Some(Signal::KILL),
        None => process::parent_process_death_signal().map_err(at(Step::ParentDeathSignal, 0))?,
    };

    for l in &spec.rlimits {
        let lim = Rlimit {
            current: finite(l.soft),
            maximum: finite(l.hard),
        };
        process::setrlimit(l.resource, lim).map_err(at(Step::Rlimit, l.resource as u32))?;
    }

    // The bounding set first: it needs CAP_SETPCAP, gone after the id change.
    for n in 0..64 {
        if spec.sets.bounding & (1 << n) != 0 {
            continue;
        }
        match thread::remove_capability_from_bounding_set(cap(n)) {
            Ok(()) => {}
            Err(Errno::INVAL) => break, // past the kernel's last capability
            Err(e) => return Err(ExecFailure::new(Step::BoundingSet, n, e)),
        }
    }

    // Without no_new_privs a filter needs CAP_SYS_ADMIN: install it now,
    // while the process still has it.
    if !spec.no_new_privs {
        // The working directory is checked now, while getcwd may still be
        // called (the caller's filter may deny it); it is entered again
        // below as the workload's identity.
        enter_cwd(spec)?;
        install_filters(spec)?;
    }

    // Keep the permitted set through a change away from uid 0 when
    // capabilities are to be kept (the effective set is restored below).
    if spec.sets.permitted != 0 {
        thread::set_keep_capabilities(true).map_err(at(Step::KeepCaps, 0))?;
    }
    thread::set_thread_groups(&spec.groups).map_err(at(Step::Groups, 0))?;
    let gid = process::Gid::from_raw(spec.gid);
    thread::set_thread_res_gid(gid, gid, gid).map_err(at(Step::Ids, 0))?;
    let uid = Uid::from_raw(spec.uid);
    thread::set_thread_res_uid(uid, uid, uid).map_err(at(Step::Ids, 0))?;

    thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::from_bits_retain(spec.sets.effective),
            permitted: CapabilitySet::from_bits_retain(spec.sets.permitted),
            inheritable: CapabilitySet::from_bits_retain(spec.sets.inheritable),
        },
    )
    .map_err(at(Step::Capabilities, 0))?;
    // Ambient: exactly the kept set, so that the workload's non-setuid
    // binaries still have them after execve as a non-root uid.
    thread::clear_ambient_capability_set().map_err(at(Step::Ambient, u32::MAX))?;
    for n in 0..64 {
        if spec.sets.ambient & (1 << n) != 0 {
            thread::configure_capability_in_ambient_set(cap(n), true)
                .map_err(at(Step::Ambient, n))?;
        }
    }
    if spec.sets.permitted != 0 {
        thread::set_keep_capabilities(false).map_err(at(Step::KeepCaps, 0))?;
    }
    if spec.no_new_privs {
        thread::set_no_new_privs(true).map_err(at(Step::NoNewPrivs, 0))?;
    }

    // Changing credentials cleared the parent-death signal.
    if death_signal.is_some() {
        process::set_parent_process_death_signal(death_signal)
            .map_err(at(Step::ParentDeathSignal, 0))?;
        if parent.is_some_and(sys::ready_now) {
            return Err(ExecFailure {
                step: Step::ParentGone,
                arg: 0,
                errno: 0,
            });
        }
    }

    sys::reset_signals().map_err(io_at(Step::Signals))?;
    // DESIGN rule 3: nothing but stdio (and what the spec keeps) crosses
    // the exec.
    sys::cloexec_from_3_except(&spec.keep_fds).map_err(io_at(Step::CloseFds))?;

    // Entered with the workload's own identity; rule 3 again: it must
    // resolve inside the root.
    if spec.no_new_privs {
        enter_cwd(spec)?;
    } else {
        process::chdir(spec.cwd.as_c_str()).map_err(at(Step::Chdir, 0))?;
    }

    let mut buf = [0u8; MAX_PATH];
    let exe =
        path::search(exec.command_c(), exec.path_c(), &mut buf, probe).ok_or(ExecFailure {
            step: Step::NotFound,
            arg: 0,
            errno: libc::ENOENT,
        })?;

    // Last: the filter, so that nothing above has to be allowed by it.
    if spec.no_new_privs {
        install_filters(spec)?;
    }
    let errno = sys::execve(exe, exec.argv_ptrs(), exec.envp_ptrs());
    Err(ExecFailure {
        step: Step::Execve,
        arg: 0,
        errno,
    })
}

fn enter_cwd(spec: &DropSpec) -> Result<(), ExecFailure> {
    process::chdir(spec.cwd.as_c_str()).map_err(at(Step::Chdir, 0))?;
    if !sys::cwd_is_inside_root().map_err(io_at(Step::CwdOutsideRoot))? {
        return Err(ExecFailure {
            step: Step::CwdOutsideRoot,
            arg: 0,
            errno: 0,
        });
    }
    Ok(())
}

fn install_filters(spec: &DropSpec) -> Result<(), ExecFailure> {
    for prog in &spec.extra_seccomp {
        sys::seccomp_install(prog, false).map_err(io_at(Step::Seccomp))?;
    }
    if !spec.seccomp.is_empty() {
        sys::seccomp_install(&spec.seccomp, spec.seccomp_log).map_err(io_at(Step::Seccomp))?;
    }
    Ok(())
}

/// What a `PATH` candidate is, for the identity we now have.
fn probe(c: &std::ffi::CStr) -> Probe {
    use rustix::fs::{self, Access, FileType};
    match fs::stat(c) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
            if fs::access(c, Access::EXEC_OK).is_ok() {
                Probe::Executable
            } else {
                Probe::NotExecutable
            }
        }
        _ => Probe::Missing,
    }
}
