//! The shim's own seccomp filter (DESIGN rule 9), from data:
//! `seccomp/shim.json`, compiled by moat-policy's allowlist compiler when
//! the crate is built (build.rs).

use std::io;

/// The shim's system calls, as data (the tests read the list itself).
#[cfg(test)]
const ALLOWLIST: &str = include_str!("../seccomp/shim.json");

/// Whether this process already runs under a seccomp filter (the shim
/// daemon started by `start`, which installed it, inherits it).
fn filtered() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2'))
}

/// The filter of `seccomp/shim.json`, compiled by the build.
pub fn filter() -> Vec<moat_policy::plan::SockFilter> {
    moat_policy::allowlist::decode(include_bytes!(concat!(env!("OUT_DIR"), "/shim.bpf")))
}

/// Installs the filter on this process, which must be single-threaded
/// (the filter then holds for every thread and child it makes). No
/// `no_new_privs`: the shim is root with CAP_SYS_ADMIN, and the bit would
/// reach every container, where moat-oci's site setting decides it.
pub fn confine() -> io::Result<()> {
    if filtered() {
        return Ok(());
    }
    moat_runtime::install_seccomp_keeping_privileges(&filter(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_covers_the_whole_table_and_denies_host_administration() {
        let s = moat_policy::allowlist::parse("shim.json", ALLOWLIST).unwrap();
        // Every call of the table is decided: a new one needs a decision.
        for (name, _) in moat_policy::syscalls::X86_64 {
            assert!(
                s.allow.contains(*name) || s.denied.contains(*name),
                "{name} is neither allowed nor denied in seccomp/shim.json"
            );
        }
        for never in [
            "kexec_load",
            "init_module",
            "finit_module",
            "reboot",
            "open_by_handle_at",
            "ptrace",
            "process_vm_writev",
            "bpf",
            "keyctl",
            "userfaultfd",
        ] {
            assert!(!s.allow.contains(never), "{never}");
        }
        // What the shim and moat-oci themselves need.
        for need in [
            "mount",
            "setns",
            "unshare",
            "clone",
            "execve",
            "pivot_root",
            "seccomp",
        ] {
            assert!(s.allow.contains(need), "{need}");
        }
        // The build's program is the list's.
        assert_eq!(
            filter(),
            moat_policy::allowlist::compile("shim.json", ALLOWLIST).unwrap()
        );
    }
}
