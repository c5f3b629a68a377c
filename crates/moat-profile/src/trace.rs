//! Recording a process tree's system calls with the kernel's syscall
//! tracepoints (`raw_syscalls:sys_enter`/`sys_exit`) in a private tracefs
//! instance: the fallback of the eBPF recorder ([`crate::ebpf`]) where
//! `bpf(2)` or `CONFIG_BPF_EVENTS` is unavailable, and the function tracer
//! for the HAP measurement.
//!
//! The instance follows forks (`options/event-fork`) from one pid; nothing
//! runs in the traced process and no kernel headers or BPF are needed, but
//! the text trace costs about 8 us per event to format and parse, and it
//! carries no path names. [`TreeFilter`] keeps what happens from the first
//! `execve` onwards (the workload) and drops the launcher's own setup; the
//! eBPF recorder implements the same semantics in the kernel.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use crate::syscalls;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("tracefs is not available at {path} and cannot be mounted; run as root on a kernel with CONFIG_FTRACE")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create tracefs instance {path}")]
    CreateInstance {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the trace buffer dropped {lost} events; the recording would be incomplete (shorten the workload or --duration)")]
    Lost { lost: u64 },
}

/// Where tracefs lives.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Syscalls whose failures are recorded: privileged operations, and the
/// calls that fail with EROFS when a workload writes to the read-only root.
pub const WATCHED_EXITS: &[&str] = &[
    // The recording floor (`record::RECORDING_FLOOR`) beyond the names below.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "capset",
    "mknod",
    "mknodat",
    "sethostname",
    "setdomainname",
    "reboot",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "swapon",
    "swapoff",
    "ptrace",
    "bpf",
    "perf_event_open",
    "unshare",
    "setns",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "acct",
    "quotactl",
    "keyctl",
    "add_key",
    "request_key",
    "chown",
    "fchown",
    "fchownat",
    "lchown",
    "syslog",
    "socket",
    "bind",
    "setpriority",
    "sched_setscheduler",
    "mlock",
    "mlockall",
    "setrlimit",
    "prlimit64",
    "kill",
    "open",
    "openat",
    "openat2",
    "creat",
    "mkdir",
    "mkdirat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "chmod",
    "fchmod",
    "fchmodat",
    "truncate",
    "utimensat",
];

/// Per-CPU trace buffer, KiB.
const BUFFER_KB: u32 = 131_072;

fn write(path: &Path, value: &str) -> Result<(), TraceError> {
    std::fs::write(path, value).map_err(|source| TraceError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Mounts tracefs at [`TRACEFS`] when it is not mounted yet.
pub fn ensure_tracefs() -> Result<PathBuf, TraceError> {
    let base = PathBuf::from(TRACEFS);
    if base.join("instances").is_dir() {
        return Ok(base);
    }
    rustix::mount::mount(
        "tracefs",
        &base,
        "tracefs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|e| TraceError::Mount {
        path: base.clone(),
        source: e.into(),
    })?;
    Ok(base)
}

/// A private tracefs instance; removed on drop.
#[derive(Debug)]
pub struct Instance {
    dir: PathBuf,
}

impl Instance {
    /// Creates `instances/moat-<name>-<pid>`.
    pub fn create(name: &str) -> Result<Instance, TraceError> {
        let base = ensure_tracefs()?;
        let dir = base
            .join("instances")
            .join(format!("moat-{name}-{}", std::process::id()));
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir).map_err(|source| TraceError::CreateInstance {
            path: dir.clone(),
            source,
        })?;
        Ok(Instance { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Starts recording syscalls, forks and execs of `pid` and every
    /// process it creates from now on.
    pub fn start_syscalls(&self, pid: u32) -> Result<(), TraceError> {
        let d = &self.dir;
        write(&d.join("tracing_on"), "0")?;
        write(&d.join("buffer_size_kb"), &BUFFER_KB.to_string())?;
        write(&d.join("options/overwrite"), "0")?;
        write(&d.join("options/event-fork"), "1")?;
        write(&d.join("set_event_pid"), &pid.to_string())?;
        // Exits matter only when a privileged operation or a write fails
        // (EPERM/EACCES/EROFS): per-syscall exit events for those calls,
        // filtered in the kernel, cost far less than every exit.
        for name in WATCHED_EXITS {
            let ev = d.join("events/syscalls").join(format!("sys_exit_{name}"));
            if ev.is_dir() {
                write(&ev.join("filter"), "ret < 0")?;
                write(&ev.join("enable"), "1")?;
            }
        }
        for ev in [
            "raw_syscalls/sys_enter",
            "sched/sched_process_fork",
            "sched/sched_process_exec",
        ] {
            write(&d.join("events").join(ev).join("enable"), "1")?;
        }
        write(&d.join("trace"), "")?;
        write(&d.join("tracing_on"), "1")
    }

    /// Stops recording and returns the trace text; fails when events were
    /// dropped.
    pub fn stop(&self) -> Result<String, TraceError> {
        write(&self.dir.join("tracing_on"), "0")?;
        let lost = self.lost_events();
        if lost > 0 {
            return Err(TraceError::Lost { lost });
        }
        let path = self.dir.join("trace");
        std::fs::read_to_string(&path).map_err(|source| TraceError::Read { path, source })
    }

    fn lost_events(&self) -> u64 {
        let mut lost = 0;
        let Ok(rd) = std::fs::read_dir(self.dir.join("per_cpu")) else {
            return 0;
        };
        for cpu in rd.flatten() {
            if let Ok(stats) = std::fs::read_to_string(cpu.path().join("stats")) {
                for line in stats.lines() {
                    for key in ["overrun: ", "dropped events: "] {
                        if let Some(v) = line.strip_prefix(key) {
                            lost += v.trim().parse::<u64>().unwrap_or(0);
                        }
                    }
                }
            }
        }
        lost
    }

    /// Tries to enable the function tracer for `pid` (Bottomley's HAP
    /// needs it). Returns why it cannot be used when the kernel refuses.
    pub fn start_functions(&self, pid: u32) -> Result<(), String> {
        let d = &self.dir;
        let attempt = || -> Result<(), TraceError> {
            write(&d.join("tracing_on"), "0")?;
            write(&d.join("buffer_size_kb"), &BUFFER_KB.to_string())?;
            write(&d.join("options/function-fork"), "1")?;
            write(&d.join("set_ftrace_pid"), &pid.to_string())?;
            write(&d.join("current_tracer"), "function")?;
            write(&d.join("trace"), "")?;
            write(&d.join("tracing_on"), "1")
        };
        attempt().map_err(|e| match &e {
            TraceError::Write { path, source, .. } => format!(
                "the kernel refused {} ({source}): the function tracer cannot be enabled on this host",
                path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            ),
            other => other.to_string(),
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("tracing_on"), "0");
        let _ = std::fs::write(self.dir.join("events/enable"), "0");
        let _ = std::fs::write(self.dir.join("current_tracer"), "nop");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One parsed trace line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Enter {
        pid: u32,
        nr: u32,
        args: [u64; 6],
    },
    Exit {
        pid: u32,
        nr: u32,
        ret: i64,
    },
    Fork {
        parent: u32,
        child: u32,
    },
    Exec {
        pid: u32,
        filename: String,
    },
    /// A function-tracer line: the kernel function entered.
    Function {
        pid: u32,
        function: String,
    },
}

/// The pid of a trace line (`comm-PID [CPU] ...`) and the event text after
/// the timestamp.
fn split_line(line: &str) -> Option<(u32, &str)> {
    let bracket = line.find(" [")?;
    let head = line[..bracket].trim_end();
    let dash = head.rfind('-')?;
    let pid = head[dash + 1..].parse().ok()?;
    let rest = &line[bracket..];
    // "... TIMESTAMP: event: fields"
    let colon = rest.find(": ")?;
    Some((pid, &rest[colon + 2..]))
}

fn field<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let start = s.find(key)? + key.len();
    let rest = &s[start..];
    Some(rest.split_whitespace().next().unwrap_or(""))
}

/// Parses the text of a tracefs `trace` file.
pub fn parse(text: &str) -> Vec<Event> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((pid, ev)) = split_line(line) else {
            continue;
        };
        if let Some(rest) = ev.strip_prefix("sys_enter: NR ") {
            let (nr, args) = rest.split_once(" (").unwrap_or((rest, ""));
            let Ok(nr) = nr.trim().parse::<i64>() else {
                continue;
            };
            let mut a = [0u64; 6];
            for (i, v) in args.trim_end_matches(')').split(", ").take(6).enumerate() {
                a[i] = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
            }
            if let Ok(nr) = u32::try_from(nr) {
                out.push(Event::Enter { pid, nr, args: a });
            }
        } else if let Some(rest) = ev.strip_prefix("sys_exit: NR ") {
            let Some((nr, ret)) = rest.split_once(" = ") else {
                continue;
            };
            if let (Ok(nr), Ok(ret)) = (nr.trim().parse::<u32>(), ret.trim().parse::<i64>()) {
                out.push(Event::Exit { pid, nr, ret });
            }
        } else if let Some((name, ret)) =
            ev.strip_prefix("sys_").and_then(|r| r.split_once(" -> 0x"))
        {
            // A per-syscall exit event: `sys_openat -> 0xfffffffffffffffe`.
            let table = syscalls::table();
            if let (Some(nr), Ok(ret)) = (table.number(name), u64::from_str_radix(ret.trim(), 16)) {
                out.push(Event::Exit {
                    pid,
                    nr,
                    ret: ret as i64,
                });
            }
        } else if let Some(rest) = ev.strip_prefix("sched_process_fork: ") {
            if let (Some(p), Some(c)) = (field(rest, " pid="), field(rest, "child_pid=")) {
                if let (Ok(parent), Ok(child)) = (p.parse(), c.parse()) {
                    out.push(Event::Fork { parent, child });
                }
            }
        } else if let Some(rest) = ev.strip_prefix("sched_process_exec: ") {
            let filename = rest
                .strip_prefix("filename=")
                .and_then(|r| r.rsplit_once(" pid=").map(|(f, _)| f))
                .unwrap_or("")
                .to_string();
            out.push(Event::Exec { pid, filename });
        } else if !ev.starts_with("sys_") && !ev.starts_with("sched_") {
            // function tracer: "func_name <-caller"
            let function = ev.split_whitespace().next().unwrap_or("");
            if !function.is_empty() {
                out.push(Event::Function {
                    pid,
                    function: function.to_string(),
                });
            }
        }
    }
    out
}

/// What a process tree did, from its first `execve` on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Syscall number -> how many times it was entered.
    pub syscalls: BTreeMap<u32, u64>,
    /// `socket(2)` address families (numbers).
    pub socket_families: BTreeSet<u64>,
    /// (syscall, errno) of calls that failed with EPERM or EACCES.
    pub denied: BTreeSet<(u32, i64)>,
    /// Opens with a write flag that failed with EROFS.
    pub read_only_writes: u64,
    /// ioctl request numbers used.
    pub ioctls: BTreeSet<u64>,
    /// Programs executed.
    pub execs: Vec<String>,
    /// Distinct processes (and threads) of the tree.
    pub tasks: usize,
    /// Kernel functions reached (function tracer only).
    pub functions: BTreeSet<String>,
    /// Paths opened for writing (`O_WRONLY`, `O_RDWR`, `O_CREAT` or
    /// `O_TRUNC`), as the workload passed them (eBPF recorder only: the
    /// tracepoints carry only the pointer).
    pub write_paths: BTreeSet<String>,
    /// Write-opened paths whose name could not be read (eBPF recorder).
    pub path_faults: u64,
    /// Calls with a syscall number outside the recorder's table (x32 or
    /// invalid numbers; eBPF recorder).
    pub out_of_range: u64,
}

/// Which processes of the trace count as the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeFilter {
    /// From the first `execve` seen in the trace (the workload's), that
    /// process and everything it forks afterwards. With `after`, only execs
    /// that follow the exec of the launcher program `after` (e.g. `crun`)
    /// count; with `program`, only an exec of a file with that name (the
    /// launcher may re-execute itself first, as crun does).
    FromFirstExec {
        after: Option<String>,
        program: Option<String>,
    },
    /// Every traced process (e.g. a QEMU process and its threads).
    All,
}

const EPERM: i64 = 1;
const EACCES: i64 = 13;
const EROFS: i64 = 30;

/// Folds parsed events into what the workload did.
pub fn fold(events: &[Event], filter: &TreeFilter) -> Recorded {
    let table = syscalls::table();
    let openat = table.number("openat").unwrap_or(257);
    let open = table.number("open").unwrap_or(2);
    let socket = table.number("socket").unwrap_or(41);
    let ioctl = table.number("ioctl").unwrap_or(16);
    let mut members: HashSet<u32> = HashSet::new();
    let (all, after, program) = match filter {
        TreeFilter::All => (true, None, None),
        TreeFilter::FromFirstExec { after, program } => {
            (false, after.as_deref(), program.as_deref())
        }
    };
    let mut launcher_seen = after.is_none();
    let mut seen: HashSet<u32> = HashSet::new();
    let mut r = Recorded::default();
    let mut last_enter: BTreeMap<u32, [u64; 6]> = BTreeMap::new();
    for ev in events {
        match ev {
            Event::Exec { pid, filename } => {
                let base = filename.rsplit('/').next();
                if !launcher_seen {
                    launcher_seen = base == after;
                    continue;
                }
                let wanted = program.is_none_or(|p| base == p.rsplit('/').next());
                if !all && members.is_empty() && wanted {
                    members.insert(*pid);
                    // The execve that started the workload belongs to it.
                    *r.syscalls.entry(59).or_default() += 1;
                }
                if all || members.contains(pid) {
                    r.execs.push(filename.clone());
                }
            }
            Event::Fork { parent, child } => {
                if members.contains(parent) {
                    members.insert(*child);
                }
            }
            Event::Enter { pid, nr, args } => {
                if !(all || members.contains(pid)) {
                    continue;
                }
                *r.syscalls.entry(*nr).or_default() += 1;
                last_enter.insert(*pid, *args);
                if *nr == socket {
                    r.socket_families.insert(args[0] & 0xffff);
                }
                if *nr == ioctl {
                    r.ioctls.insert(args[1] & 0xffff_ffff);
                }
            }
            Event::Exit { pid, nr, ret } => {
                if !(all || members.contains(pid)) {
                    continue;
                }
                if *ret == -EPERM || *ret == -EACCES {
                    r.denied.insert((*nr, -*ret));
                }
                if *ret == -EROFS && (*nr == openat || *nr == open) {
                    r.read_only_writes += 1;
                }
            }
            Event::Function { pid, function } => {
                if all || members.contains(pid) {
                    r.functions.insert(function.clone());
                }
            }
        }
        if let Event::Enter { pid, .. } | Event::Exit { pid, .. } = ev {
            if all || members.contains(pid) {
                seen.insert(*pid);
            }
        }
    }
    r.tasks = seen.len();
    r
}

/// Name of an address family.
pub fn family_name(f: u64) -> String {
    match f {
        1 => "AF_UNIX".into(),
        2 => "AF_INET".into(),
        10 => "AF_INET6".into(),
        16 => "AF_NETLINK".into(),
        17 => "AF_PACKET".into(),
        other => format!("AF_{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# tracer: nop
#
            moat-100     [000] .....   10.000001: sys_enter: NR 56 (1200011, 0, 0, 7f00, 0, 0)
            moat-100     [000] .....   10.000002: sched_process_fork: comm=moat pid=100 child_comm=moat child_pid=101
            moat-101     [001] .....   10.000003: sys_enter: NR 165 (0, 0, 0, 0, 0, 0)
            moat-101     [001] .....   10.000004: sys_enter: NR 59 (5600, 5601, 5602, 0, 0, 0)
              sh-101     [001] .....   10.000005: sched_process_exec: filename=/bin/my prog pid=101 old_pid=101
              sh-101     [001] .....   10.000006: sys_exit: NR 59 = 0
              sh-101     [001] .....   10.000007: sys_enter: NR 41 (2, 1, 0, 0, 0, 0)
              sh-101     [001] .....   10.000008: sys_socket -> 0xffffffffffffffff
              sh-101     [001] .....   10.000009: sched_process_fork: comm=sh pid=101 child_comm=sh child_pid=102
         ls-x-102     [000] .....   10.000010: sys_enter: NR 16 (1, 5401, 0, 0, 0, 0)
            moat-100     [000] .....   10.000011: sys_enter: NR 61 (ffffffffffffffff, 0, 0, 0, 0, 0)
";

    #[test]
    fn parses_lines() {
        let ev = parse(SAMPLE);
        assert_eq!(
            ev[0],
            Event::Enter {
                pid: 100,
                nr: 56,
                args: [0x1200011, 0, 0, 0x7f00, 0, 0]
            }
        );
        assert_eq!(
            ev[1],
            Event::Fork {
                parent: 100,
                child: 101
            }
        );
        assert_eq!(
            ev[4],
            Event::Exec {
                pid: 101,
                filename: "/bin/my prog".into()
            }
        );
        assert_eq!(
            ev[5],
            Event::Exit {
                pid: 101,
                nr: 59,
                ret: 0
            }
        );
        assert_eq!(
            ev[9],
            Event::Enter {
                pid: 102,
                nr: 16,
                args: [1, 0x5401, 0, 0, 0, 0]
            }
        );
    }

    #[test]
    fn keeps_only_the_workload_from_its_exec() {
        let r = fold(
            &parse(SAMPLE),
            &TreeFilter::FromFirstExec {
                after: None,
                program: None,
            },
        );
        // mount(165) and clone(56) by the launcher, wait4(61) by moat: dropped.
        let nrs: Vec<u32> = r.syscalls.keys().copied().collect();
        assert_eq!(nrs, vec![16, 41, 59]);
        assert_eq!(r.socket_families, [2].into_iter().collect());
        assert_eq!(r.denied, [(41, 1)].into_iter().collect());
        assert_eq!(r.ioctls, [0x5401].into_iter().collect());
        assert_eq!(r.tasks, 2);
        assert_eq!(r.execs, vec!["/bin/my prog"]);
    }

    #[test]
    fn starts_after_the_launcher_exec() {
        let text = SAMPLE.replace("filename=/bin/my prog", "filename=/usr/bin/crun");
        let filter = TreeFilter::FromFirstExec {
            after: Some("crun".into()),
            program: Some("sh".into()),
        };
        let r = fold(&parse(&text), &filter);
        assert!(r.syscalls.is_empty());
        let text = format!(
            "{text}            crun-102     [000] .....   10.000012: sched_process_exec: filename=/proc/self/fd/3 pid=102 old_pid=102\n\
             \x20             sh-102     [000] .....   10.000012: sched_process_exec: filename=/bin/sh pid=102 old_pid=102\n\
             \x20             sh-102     [000] .....   10.000013: sys_enter: NR 1 (1, 0, 0, 0, 0, 0)\n"
        );
        let r = fold(&parse(&text), &filter);
        assert_eq!(r.syscalls.keys().copied().collect::<Vec<_>>(), vec![1, 59]);
        assert_eq!(r.execs, vec!["/bin/sh"]);
    }

    #[test]
    fn all_keeps_everything() {
        let r = fold(&parse(SAMPLE), &TreeFilter::All);
        assert!(r.syscalls.contains_key(&165));
        assert!(r.syscalls.contains_key(&61));
    }

    #[test]
    fn function_lines() {
        let text = "            qemu-7     [000] .....   1.0: do_sys_openat2 <-__x64_sys_openat\n";
        assert_eq!(
            parse(text),
            vec![Event::Function {
                pid: 7,
                function: "do_sys_openat2".into()
            }]
        );
    }
}
