//! Named system call groups (`@file-system`, `@network-io`, ...).
//!
//! Every native x86_64 system call belongs to exactly one of the leaf groups
//! below (a unit test checks this), so that a reviewer can read any filter as
//! a list of families. `@privileged` is the union of the families a container
//! never needs and that have been kernel-escape routes: mounts, modules,
//! reboot/kexec, swap, raw I/O, clock setting, keyrings, debugging/tracing,
//! namespaces, system administration and obsolete calls.

/// One named group.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    /// Name with its `@` (`@file-system`).
    pub name: &'static str,
    pub description: &'static str,
    pub members: &'static [&'static str],
}

/// The leaf groups of `@privileged`.
pub const PRIVILEGED_SUBGROUPS: &[&str] = &[
    "@mount",
    "@module",
    "@reboot",
    "@swap",
    "@raw-io",
    "@clock",
    "@keyring",
    "@debug",
    "@namespaces",
    "@system-admin",
    "@obsolete",
];

/// The leaf groups: a partition of the x86_64 table.
pub const GROUPS: &[Group] = &[
    Group {
        name: "@file-system",
        description: "files, directories, links, attributes, file-system notifications",
        members: &[
            "open", "openat", "openat2", "creat", "close", "close_range", "stat", "fstat", "lstat",
            "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2",
            "truncate", "ftruncate", "fallocate", "getdents", "getdents64", "getcwd", "chdir",
            "fchdir", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "link",
            "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "readlink", "readlinkat",
            "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
            "umask", "utime", "utimes", "futimesat", "utimensat", "mknod", "mknodat", "setxattr",
            "lsetxattr", "fsetxattr", "getxattr", "lgetxattr", "fgetxattr", "listxattr",
            "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
            "setxattrat", "getxattrat", "listxattrat", "removexattrat", "file_getattr",
            "file_setattr", "inotify_init", "inotify_init1", "inotify_add_watch",
            "inotify_rm_watch", "fanotify_mark", "name_to_handle_at",
        ],
    },
    Group {
        name: "@io",
        description: "reading and writing descriptors, pipes, polling, syncing, ioctl",
        members: &[
            "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
            "preadv2", "pwritev2", "lseek", "pipe", "pipe2", "dup", "dup2", "dup3", "fcntl",
            "flock", "ioctl", "sendfile", "splice", "tee", "vmsplice", "copy_file_range",
            "readahead", "fadvise64", "cachestat", "fsync", "fdatasync", "sync", "syncfs",
            "sync_file_range", "poll", "ppoll", "select", "pselect6", "epoll_create",
            "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd",
            "eventfd2",
        ],
    },
    Group {
        name: "@aio",
        description: "Linux native asynchronous I/O (io_submit family)",
        members: &["io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents"],
    },
    Group {
        name: "@io-uring",
        description: "io_uring, a large and frequently exploited kernel surface (Docker and Google disable it too)",
        members: &["io_uring_setup", "io_uring_enter", "io_uring_register"],
    },
    Group {
        name: "@network-io",
        description: "sockets: create, connect, accept, send, receive, options",
        members: &[
            "socket", "socketpair", "bind", "listen", "connect", "accept", "accept4",
            "getsockname", "getpeername", "getsockopt", "setsockopt", "sendto", "recvfrom",
            "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
        ],
    },
    Group {
        name: "@process",
        description: "creating, running, waiting for and configuring processes and threads",
        members: &[
            "clone", "clone3", "fork", "vfork", "execve", "execveat", "exit", "exit_group",
            "wait4", "waitid", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp",
            "getsid", "setsid", "set_tid_address", "prctl", "arch_prctl", "set_thread_area",
            "get_thread_area", "seccomp", "pidfd_open", "restart_syscall", "rseq",
            "set_robust_list", "get_robust_list", "getrlimit", "setrlimit", "prlimit64",
            "getrusage", "times", "getpriority", "setpriority", "ioprio_get", "ioprio_set",
            "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
        ],
    },
    Group {
        name: "@scheduler",
        description: "CPU scheduling policy, priority and affinity",
        members: &[
            "sched_yield", "sched_setparam", "sched_getparam", "sched_setscheduler",
            "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min",
            "sched_rr_get_interval", "sched_setaffinity", "sched_getaffinity", "sched_setattr",
            "sched_getattr", "getcpu",
        ],
    },
    Group {
        name: "@credentials",
        description: "user and group ids, supplementary groups, capabilities of the process itself",
        members: &[
            "getuid", "geteuid", "getgid", "getegid", "setuid", "setgid", "setreuid", "setregid",
            "setresuid", "getresuid", "setresgid", "getresgid", "setfsuid", "setfsgid",
            "getgroups", "setgroups", "capget", "capset",
        ],
    },
    Group {
        name: "@signal",
        description: "sending, handling and waiting for signals",
        members: &[
            "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
            "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigsuspend", "sigaltstack", "kill",
            "tkill", "tgkill", "pause", "signalfd", "signalfd4", "pidfd_send_signal",
            "process_mrelease",
        ],
    },
    Group {
        name: "@timer",
        description: "reading clocks, sleeping, timers (setting the clock is @clock)",
        members: &[
            "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday",
            "time", "alarm", "getitimer", "setitimer", "timer_create", "timer_settime",
            "timer_gettime", "timer_getoverrun", "timer_delete", "timerfd_create",
            "timerfd_settime", "timerfd_gettime",
        ],
    },
    Group {
        name: "@sync",
        description: "futexes and memory barriers (thread synchronisation)",
        members: &["futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue", "membarrier"],
    },
    Group {
        name: "@ipc",
        description: "System V and POSIX message queues, semaphores, shared memory",
        members: &[
            "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
            "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
            "mq_timedreceive", "mq_notify", "mq_getsetattr",
        ],
    },
    Group {
        name: "@memory",
        description: "mapping, protecting and advising memory",
        members: &[
            "brk", "mmap", "munmap", "mprotect", "mremap", "msync", "mincore", "madvise",
            "mlock", "mlock2", "munlock", "mlockall", "munlockall",
            "memfd_create", "memfd_secret", "pkey_mprotect", "pkey_alloc", "pkey_free",
            "remap_file_pages", "map_shadow_stack", "mseal",
        ],
    },
    Group {
        name: "@numa",
        description: "NUMA memory policy and page migration (needs CAP_SYS_NICE under Docker)",
        members: &[
            "mbind", "set_mempolicy", "get_mempolicy", "migrate_pages", "move_pages",
            "set_mempolicy_home_node",
        ],
    },
    Group {
        name: "@system-info",
        description: "reading system identity and randomness",
        members: &["uname", "sysinfo", "getrandom", "lsm_get_self_attr", "lsm_list_modules"],
    },
    Group {
        name: "@mount",
        description: "mounting, pivoting and changing roots (part of @privileged)",
        members: &[
            "mount", "umount2", "pivot_root", "chroot", "open_tree", "open_tree_attr",
            "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
            "statmount", "listmount",
        ],
    },
    Group {
        name: "@module",
        description: "loading and unloading kernel modules (part of @privileged)",
        members: &[
            "init_module", "finit_module", "delete_module", "create_module", "query_module",
            "get_kernel_syms",
        ],
    },
    Group {
        name: "@reboot",
        description: "reboot and kexec (part of @privileged)",
        members: &["reboot", "kexec_load", "kexec_file_load"],
    },
    Group {
        name: "@swap",
        description: "enabling and disabling swap (part of @privileged)",
        members: &["swapon", "swapoff"],
    },
    Group {
        name: "@raw-io",
        description: "raw I/O port access (part of @privileged)",
        members: &["iopl", "ioperm"],
    },
    Group {
        name: "@clock",
        description: "setting the system clock (part of @privileged)",
        members: &["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"],
    },
    Group {
        name: "@keyring",
        description: "kernel keyrings, which the kernel does not namespace (part of @privileged)",
        members: &["add_key", "request_key", "keyctl"],
    },
    Group {
        name: "@debug",
        description: "tracing and inspecting other processes, performance counters (part of @privileged)",
        members: &[
            "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
            "perf_event_open", "uretprobe", "process_madvise",
        ],
    },
    Group {
        name: "@namespaces",
        description: "creating and joining namespaces (part of @privileged)",
        members: &["unshare", "setns"],
    },
    Group {
        name: "@system-admin",
        description: "host administration: BPF, accounting, quotas, hostname, kernel log, LSM attributes, handles (part of @privileged)",
        members: &[
            "bpf", "syslog", "acct", "quotactl", "quotactl_fd", "sethostname", "setdomainname",
            "vhangup", "personality", "userfaultfd", "fanotify_init", "open_by_handle_at",
            "lsm_set_self_attr", "modify_ldt",
        ],
    },
    Group {
        name: "@obsolete",
        description: "removed or unimplemented calls (part of @privileged)",
        members: &[
            "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "getpmsg", "putpmsg",
            "afs_syscall", "tuxcall", "security", "vserver", "epoll_ctl_old", "epoll_wait_old",
            "lookup_dcookie",
        ],
    },
];

/// The members of a group name (with its `@`): a leaf group, `@privileged`
/// (the union of [`PRIVILEGED_SUBGROUPS`]) or `@all` (the whole table).
pub fn expand_group(name: &str) -> Option<Vec<&'static str>> {
    match name {
        "@all" => Some(super::names().collect()),
        "@privileged" => Some(
            PRIVILEGED_SUBGROUPS
                .iter()
                .flat_map(|g| expand_group(g).unwrap_or_default())
                .collect(),
        ),
        _ => GROUPS
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.members.to_vec()),
    }
}

/// Every group name a policy may use.
pub fn group_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = GROUPS.iter().map(|g| g.name).collect();
    v.push("@privileged");
    v.push("@all");
    v
}

/// The groups and their members as a Markdown table (docs/policy.md
/// embeds this text; a test keeps the two equal).
pub fn groups_markdown() -> String {
    let mut o = String::from("| group | what | members |\n|---|---|---|\n");
    for g in GROUPS {
        let members: Vec<String> = g.members.iter().map(|m| format!("`{m}`")).collect();
        o.push_str(&format!(
            "| `{}` | {} ({}) | {} |\n",
            g.name,
            g.description,
            g.members.len(),
            members.join(" ")
        ));
    }
    let privileged = expand_group("@privileged").unwrap_or_default().len();
    o.push_str(&format!(
        "| `@privileged` | the union of {} ({privileged}) | see those groups |\n",
        PRIVILEGED_SUBGROUPS
            .iter()
            .map(|g| format!("`{g}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    o.push_str(&format!(
        "| `@all` | every x86_64 system call in the table ({}) | |\n",
        super::X86_64.len()
    ));
    o
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn leaf_groups_partition_the_table() {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for g in GROUPS {
            for m in g.members {
                assert!(
                    super::super::number(m).is_some(),
                    "{} lists unknown syscall {m}",
                    g.name
                );
                if let Some(prev) = seen.insert(m, g.name) {
                    panic!("{m} is in both {prev} and {}", g.name);
                }
            }
        }
        let missing: Vec<_> = super::super::names()
            .filter(|n| !seen.contains_key(n))
            .collect();
        assert!(missing.is_empty(), "not in any group: {missing:?}");
    }

    #[test]
    fn privileged_is_the_union_of_its_subgroups() {
        let p = expand_group("@privileged").unwrap();
        assert!(p.contains(&"mount") && p.contains(&"ptrace") && p.contains(&"keyctl"));
        assert!(!p.contains(&"read"));
        assert_eq!(expand_group("@all").unwrap().len(), 382);
        assert!(group_names().contains(&"@network-io"));
    }
}
