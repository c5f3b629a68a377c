//! Switching the effective uid for a scope (`EuidSwitch`).

use super::*;

/// Sets only the effective uid (the real and saved uids stay, so the
/// change can be undone). From 0 to non-zero the kernel clears the
/// effective capabilities; back to 0 it restores them from the permitted set.
pub fn set_euid(uid: u32) -> io::Result<()> {
    // SAFETY: integer arguments; u32::MAX (-1) leaves real and saved alone.
    check(unsafe { libc::setresuid(u32::MAX, uid, u32::MAX) } as libc::c_long).map(drop)
}

/// The effective uid switched away from 0 for a while (to create a user
/// namespace owned by that uid and write its id maps), keeping the
/// effective capabilities through `SECBIT_NO_SETUID_FIXUP` where this
/// process may set it. Not undone on drop: the cloned child must not undo
/// anything of the parent's.
pub struct EuidSwitch {
    old_securebits: Option<libc::c_ulong>,
    /// The parent-death signal, which a credential change clears.
    pdeathsig: libc::c_int,
    parent: Option<rustix::process::Pid>,
}

const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;

impl EuidSwitch {
    pub fn to(uid: u32) -> io::Result<Self> {
        let pdeathsig = rustix::process::parent_process_death_signal()
            .ok()
            .flatten()
            .map_or(0, |s| s.as_raw());
        let parent = rustix::process::getppid();
        // SAFETY: PR_GET_SECUREBITS takes no pointer arguments.
        let old = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
        let old_securebits = (old >= 0)
            .then_some(old as libc::c_ulong)
            .filter(|&o| prctl(libc::PR_SET_SECUREBITS, o | SECBIT_NO_SETUID_FIXUP, 0).is_ok());
        if let Err(e) = set_euid(uid) {
            if let Some(o) = old_securebits {
                let _ = prctl(libc::PR_SET_SECUREBITS, o, 0);
            }
            return Err(e);
        }
        Ok(Self {
            old_securebits,
            pdeathsig,
            parent,
        })
    }

    /// Back to effective uid 0 and the previous securebits, with the
    /// parent-death signal armed again (a detached container's supervisor
    /// must die with its monitor); if the parent died in between, the
    /// signal is raised now.
    pub fn restore(self) -> io::Result<()> {
        set_euid(0)?;
        if let Some(o) = self.old_securebits {
            prctl(libc::PR_SET_SECUREBITS, o, 0)?;
        }
        if self.pdeathsig != 0 {
            set_pdeathsig(self.pdeathsig)?;
            if rustix::process::getppid() != self.parent {
                // SAFETY: kill with this process's own pid and a signal number.
                unsafe { libc::kill(libc::getpid(), self.pdeathsig) };
            }
        }
        Ok(())
    }
}
