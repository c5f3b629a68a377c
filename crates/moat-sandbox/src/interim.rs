//! A hand-built baseline [`Plan`] for hosts and tests where the policy
//! compiler's output is not at hand. It follows the same defaults as the
//! `baseline` policy (no capabilities, loopback only, read-only root, tmpfs
//! /tmp and /run, rlimits, cgroup limits) with a seccomp filter that denies
//! the kernel interfaces containers are attacked through. `moat run` uses
//! `moat_policy::compile` when it is available; this plan is the fallback.

use moat_policy::plan::{
    CgroupLimits, IsolationRequirement, MountPlan, Namespace, NetworkPlan, ProcessPlan, Rlimit,
    RlimitResource, SeccompProgram, SockFilter, VmShape,
};
use moat_policy::Plan;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// x86_64 syscalls the interim filter denies with EPERM: mounts and
/// namespaces, kernel modules and kexec, bpf/perf/userfaultfd/io_uring,
/// keyrings, ptrace and cross-process memory access, handle-based opens,
/// clock/swap/reboot/syslog and obsolete interfaces.
pub const DENIED_SYSCALLS: &[(&str, u32)] = &[
    ("ptrace", 101),
    ("syslog", 103),
    ("uselib", 134),
    ("personality", 135),
    ("ustat", 136),
    ("sysfs", 139),
    ("vhangup", 153),
    ("pivot_root", 155),
    ("_sysctl", 156),
    ("adjtimex", 159),
    ("chroot", 161),
    ("acct", 163),
    ("settimeofday", 164),
    ("mount", 165),
    ("umount2", 166),
    ("swapon", 167),
    ("swapoff", 168),
    ("reboot", 169),
    ("iopl", 172),
    ("ioperm", 173),
    ("create_module", 174),
    ("init_module", 175),
    ("delete_module", 176),
    ("get_kernel_syms", 177),
    ("query_module", 178),
    ("quotactl", 179),
    ("nfsservctl", 180),
    ("lookup_dcookie", 212),
    ("clock_settime", 227),
    ("mbind", 237),
    ("set_mempolicy", 238),
    ("kexec_load", 246),
    ("add_key", 248),
    ("request_key", 249),
    ("keyctl", 250),
    ("migrate_pages", 256),
    ("unshare", 272),
    ("move_pages", 279),
    ("perf_event_open", 298),
    ("fanotify_init", 300),
    ("name_to_handle_at", 303),
    ("open_by_handle_at", 304),
    ("clock_adjtime", 305),
    ("setns", 308),
    ("process_vm_readv", 310),
    ("process_vm_writev", 311),
    ("kcmp", 312),
    ("finit_module", 313),
    ("kexec_file_load", 320),
    ("bpf", 321),
    ("userfaultfd", 323),
    ("io_uring_setup", 425),
    ("io_uring_enter", 426),
    ("io_uring_register", 427),
    ("open_tree", 428),
    ("move_mount", 429),
    ("fsopen", 430),
    ("fsconfig", 431),
    ("fsmount", 432),
    ("fspick", 433),
    ("pidfd_getfd", 438),
    ("mount_setattr", 442),
];
const SYS_CLONE: u32 = 56;
const SYS_CLONE3: u32 = 435;
/// clone(2) flags that create namespaces: denied as arguments of clone.
const NS_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}
fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// The interim seccomp program: kill on a foreign architecture or the x32
/// ABI, EPERM for [`DENIED_SYSCALLS`] and namespace-creating `clone`,
/// ENOSYS for `clone3` (whose flags a classic filter cannot inspect; libc
/// falls back to `clone`), allow the rest.
pub fn seccomp_program() -> SeccompProgram {
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    for &(_, nr) in DENIED_SYSCALLS {
        p.push(jump(JEQ_K, nr, 0, 1));
        p.push(stmt(RET_K, eperm));
    }
    p.push(jump(JEQ_K, SYS_CLONE3, 0, 1));
    p.push(stmt(RET_K, enosys));
    p.push(jump(JEQ_K, SYS_CLONE, 0, 3));
    p.push(stmt(LD_W_ABS, 16)); // args[0], low 32 bits
    p.push(jump(JSET_K, NS_FLAGS, 0, 1));
    p.push(stmt(RET_K, eperm));
    p.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    SeccompProgram { instructions: p }
}

/// The interim baseline plan.
pub fn baseline_plan() -> Plan {
    Plan {
        policy_name: "baseline (interim)".into(),
        policy_digest: String::new(),
        isolation: IsolationRequirement::Any,
        process: ProcessPlan {
            uid: None,
            gid: None,
            additional_gids: vec![],
            no_new_privs: true,
        },
        capabilities: vec![],
        namespaces: vec![
            Namespace::User,
            Namespace::Mount,
            Namespace::Pid,
            Namespace::Ipc,
            Namespace::Uts,
            Namespace::Net,
            Namespace::Cgroup,
        ],
        mounts: vec![
            MountPlan::Tmpfs {
                destination: "/tmp".into(),
                size_bytes: 64 << 20,
            },
            MountPlan::Tmpfs {
                destination: "/run".into(),
                size_bytes: 16 << 20,
            },
        ],
        rlimits: vec![
            Rlimit {
                resource: RlimitResource::Nofile,
                soft: 1024,
                hard: 1024,
            },
            Rlimit {
                resource: RlimitResource::Core,
                soft: 0,
                hard: 0,
            },
        ],
        cgroup: CgroupLimits {
            memory_bytes: Some(512 << 20),
            pids: Some(256),
            cpu_millis: None,
        },
        seccomp: seccomp_program(),
        network: NetworkPlan::Loopback,
        devices: vec![],
        vm: VmShape {
            vcpus: 1,
            memory_mib: 256,
            disk_mib: 256,
        },
        exec_allowed: false,
        audit_denied: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_jumps_stay_in_bounds() {
        let p = seccomp_program().instructions;
        assert!(p.len() < 4096);
        for (i, ins) in p.iter().enumerate() {
            if ins.code & 0x07 == 0x05 {
                assert!(
                    i + 1 + (ins.jt.max(ins.jf) as usize) < p.len(),
                    "jump at {i}"
                );
            }
        }
        assert_eq!(p.last().unwrap().k, libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn baseline_denies_keyrings_and_has_no_capabilities() {
        let plan = baseline_plan();
        assert!(plan.capabilities.is_empty());
        assert!(plan.process.no_new_privs);
        for name in [
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "io_uring_setup",
            "unshare",
        ] {
            assert!(DENIED_SYSCALLS.iter().any(|(n, _)| *n == name), "{name}");
        }
    }
}
