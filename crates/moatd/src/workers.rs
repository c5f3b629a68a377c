//! The seccomp filter of moatd's reconcile and advisory threads (DESIGN
//! rule 9): the allowlist `seccomp/workers.json`, compiled by build.rs,
//! installed by each of the two threads as it starts (the threads they
//! start inherit it). They start no process themselves: moatd's spawner
//! ([`crate::spawner`]) does, so the filter never reaches `moat`.

/// The workers' system calls, as data.
pub const ALLOWLIST: &str = include_str!("../seccomp/workers.json");

/// The filter of [`ALLOWLIST`], compiled by the build (build.rs).
pub fn filter() -> Vec<moat_policy::plan::SockFilter> {
    moat_policy::allowlist::decode(include_bytes!(concat!(env!("OUT_DIR"), "/workers.bpf")))
}

/// Confines the calling thread (and the threads it starts) to
/// [`ALLOWLIST`].
pub fn confine() -> anyhow::Result<()> {
    moat_runtime::install_seccomp(&filter(), false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_worker_threads_cannot_start_processes_mount_trace_or_load_code() {
        let calls =
            moat_policy::allowlist::parse("seccomp/workers.json", super::ALLOWLIST).unwrap();
        for denied in [
            "execve",
            "execveat",
            "fork",
            "vfork",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "mount",
            "setns",
            "unshare",
            "bpf",
            "perf_event_open",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "keyctl",
            "add_key",
            "request_key",
            "socket",
            "connect",
            "kill",
            "setuid",
        ] {
            assert!(!calls.allow.contains(denied), "{denied} is allowed");
            assert!(
                calls.denied.contains(denied),
                "{denied} is not listed as denied"
            );
        }
        assert!(calls.allow.contains("socketpair") && calls.allow.contains("sendmsg"));
        // The build's program is the list's.
        assert_eq!(
            super::filter(),
            moat_policy::allowlist::compile("seccomp/workers.json", super::ALLOWLIST).unwrap()
        );
    }
}
