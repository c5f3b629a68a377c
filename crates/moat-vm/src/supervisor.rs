//! The VMM supervisor's confinement (DESIGN rule 9). Once QEMU runs, the
//! `moat run --isolation vm` process only relays stdio, window size and
//! signals over descriptors it already holds, and its teardown only closes
//! a pipe and waits (the cleanup watcher, a separate root process, kills
//! the VM and removes its cgroups and state; see [`crate::jail`]). So it
//! first gives up root for good: an unprivileged uid of its own
//! ([`crate::jail::supervisor_uid`]), no groups, no capabilities, not
//! dumpable. Then it installs its own seccomp filter: `seccomp/supervisor.json`
//! lists the system calls left, each with its reason, compiled to classic
//! BPF by moat-policy's compiler (the one that compiles workload policies)
//! and installed after `no_new_privs`. Anything not listed kills the
//! process: a supervisor subverted by a hostile guest (a parser bug in the
//! relay) gets no second try, and killing it leaves nothing behind because
//! QEMU dies with it (the jail's parent-death chain) and the cleanup
//! watcher removes the cgroups and the state. See `docs/vm.md`.

use moat_policy::model::Syscalls;
use moat_policy::plan::SockFilter;

use crate::sys;

/// The allowlist, as data.
pub const ALLOWLIST: &str = include_str!("../seccomp/supervisor.json");

/// Which threads the filter binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`): the `moat`
    /// CLI, where the supervisor is the whole process.
    Process,
    /// Only the calling thread: a multi-threaded host embedding the backend
    /// (the in-process integration tests), whose other threads do other work.
    Thread,
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Allowlist(#[from] moat_policy::allowlist::AllowlistError),
    #[error("installing the supervisor's seccomp filter")]
    Install(#[source] std::io::Error),
    #[error("dropping the supervisor's privileges to uid {uid}")]
    DropPrivileges {
        uid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The allowlist in `text` as the policy compiler's syscall section.
pub fn parse(text: &str) -> Result<Syscalls, SupervisorError> {
    Ok(moat_policy::allowlist::parse(FILE, text)?)
}

/// The allowlist's name in errors.
const FILE: &str = "seccomp/supervisor.json";

/// The filter of [`ALLOWLIST`], compiled by the build (build.rs).
pub fn filter() -> Vec<SockFilter> {
    moat_policy::allowlist::decode(include_bytes!(concat!(env!("OUT_DIR"), "/supervisor.bpf")))
}

/// Drops `scope` to `uid` without groups or capabilities, then sets
/// `no_new_privs` and installs the supervisor's filter on it.
pub fn confine(scope: Scope, uid: u32) -> Result<(), SupervisorError> {
    let prog = filter();
    sys::keep_freed_heap();
    sys::drop_privileges(uid, scope == Scope::Process)
        .map_err(|source| SupervisorError::DropPrivileges { uid, source })?;
    moat_runtime::install_seccomp(&prog, scope == Scope::Process).map_err(SupervisorError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_policy::model::DefaultAction;

    const GOLDEN: &str = "tests/golden/supervisor.bpf.txt";

    /// The compiled program, instruction by instruction: a change of the
    /// list (or of the compiler) shows up in review. `MOAT_UPDATE_GOLDEN=1`
    /// rewrites the file.
    #[test]
    fn compiled_filter_matches_the_golden_listing() {
        let listing = moat_policy::bpf::disassemble(&filter());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
        if std::env::var_os("MOAT_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &listing).unwrap();
        }
        let golden = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            listing, golden,
            "the supervisor's filter changed: review it and rerun with MOAT_UPDATE_GOLDEN=1"
        );
    }

    #[test]
    fn the_builds_program_is_the_lists() {
        assert_eq!(
            filter(),
            moat_policy::allowlist::compile(FILE, ALLOWLIST).unwrap()
        );
    }

    #[test]
    fn the_list_is_small_and_has_no_dangerous_calls() {
        let s = parse(ALLOWLIST).unwrap();
        assert!(s.allow.len() <= 32, "{}", s.allow.len());
        for bad in [
            "execve",
            "execveat",
            "clone",
            "clone3",
            "fork",
            "vfork",
            "ptrace",
            "mount",
            "socket",
            "connect",
            "bpf",
            "setuid",
            "unshare",
            "setns",
            "open_by_handle_at",
            "process_vm_writev",
            // Nothing to open, remove or signal after the privilege drop:
            "open",
            "openat",
            "openat2",
            "unlink",
            "unlinkat",
            "rmdir",
            "rename",
            "kill",
            "tgkill",
            "pidfd_send_signal",
            "setresuid",
            "setuid",
            "capset",
        ] {
            assert!(!s.allow.contains(bad), "{bad} is allowed");
        }
        assert_eq!(s.default_action, DefaultAction::Kill);
    }

    #[test]
    fn bad_lists_are_refused_with_the_name() {
        let bad = ALLOWLIST.replacen("\"syscall\": \"read\"", "\"syscall\": \"reed\"", 1);
        assert_eq!(
            parse(&bad).unwrap_err().to_string(),
            "seccomp/supervisor.json: unknown system call \"reed\""
        );
        let dup = ALLOWLIST.replacen("\"syscall\": \"write\"", "\"syscall\": \"read\"", 1);
        assert_eq!(
            parse(&dup).unwrap_err().to_string(),
            "seccomp/supervisor.json: \"read\" is listed twice"
        );
    }

    /// Forks a child that installs the filter and makes one system call:
    /// allowed calls go through, the others kill it with SIGSYS.
    #[test]
    fn the_installed_filter_refuses_calls_outside_the_list() {
        let prog = filter();
        let nr = |n: &str| i64::from(moat_policy::syscalls::number(n).unwrap());
        // getppid is not listed; execve, ptrace and mount must never be.
        for call in ["execve", "ptrace", "mount", "getppid", "socket"] {
            let st = sys::probe_filter(&prog, nr(call)).unwrap();
            assert_eq!(st, sys::ProbeOutcome::Signaled(libc::SIGSYS), "{call}");
        }
        // A listed call (close of an invalid fd) returns, and exit_group works.
        let st = sys::probe_filter(&prog, nr("close")).unwrap();
        assert_eq!(st, sys::ProbeOutcome::Exited(0));
        // Only the listed terminal requests pass ioctl.
        let st = sys::probe_filter(&prog, nr("ioctl")).unwrap();
        assert_eq!(
            st,
            sys::ProbeOutcome::Signaled(libc::SIGSYS),
            "ioctl FIONREAD"
        );
    }
}
