//! Recording a process tree's system calls with eBPF programs on the
//! syscall and scheduler tracepoints.
//!
//! No clang, libbpf or kernel headers: the programs are assembled here
//! ([`asm`]), loaded with `bpf(2)` as `BPF_PROG_TYPE_TRACEPOINT` programs
//! and attached through one `perf_event_open` tracepoint event each
//! (the program runs for the tracepoint on every CPU), or, for the hot
//! `raw_syscalls` pair, as raw-tracepoint programs ([`sys`]). The
//! record's field offsets come from tracefs at run time ([`format`]).
//!
//! State lives in kernel maps: `tracked` (tid -> 1 in the tree before the
//! workload, 2 the workload), per-syscall counters, socket families, ioctl
//! requests, failed (syscall, errno) pairs and the paths opened for
//! writing (the map key is the path, so the kernel deduplicates). Only the
//! workload's syscalls touch the counters, and nothing is copied to user
//! space per event, so the overhead is a hash lookup per syscall.
//! The tree semantics are those of [`crate::trace::TreeFilter`].

pub mod asm;
pub mod format;
mod maps;
mod progs;
pub mod rofs;
mod sys;

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use asm::Insn;
use format::{FormatError, Tracepoint};
use maps::{cstr_of, u64_of, Maps};
use progs::{off, prog_exec, prog_exit, prog_fork, prog_sys_enter, prog_sys_exit, Syscall};

use crate::syscalls;
use crate::trace::{Recorded, TreeFilter, WATCHED_EXITS};

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("cannot create the eBPF map {name}")]
    MapCreate {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot access the eBPF map {name}")]
    MapAccess {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot assemble the {name} program: {message}")]
    Assemble { name: String, message: String },
    #[error("the kernel refused the eBPF program {name} ({source}); verifier log:\n{log}")]
    Load {
        name: String,
        source: std::io::Error,
        log: String,
    },
    #[error("cannot open tracepoint {tracepoint} on CPU {cpu}")]
    PerfOpen {
        tracepoint: String,
        cpu: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot attach the eBPF program to {tracepoint} (is CONFIG_BPF_EVENTS set?)")]
    Attach {
        tracepoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the online CPUs from {path}")]
    Cpus {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the eBPF recorder dropped {lost} events (a map was full); the recording would be incomplete (shorten the workload or --duration)")]
    Lost { lost: u64 },
}

/// License of the programs; GPL-compatible, which
/// `bpf_probe_read_user_str` and friends require.
const LICENSE: &CStr = c"Dual MIT/GPL";

/// Syscall numbers counted per number (x86_64 has about 460); calls with
/// other numbers (x32, invalid) are counted together and reported.
pub const NR_MAX: u32 = 1024;
/// Longest path name kept (bytes, with the NUL).
pub const PATH_MAX: u32 = 256;
/// Distinct write-opened paths kept.
const PATHS_MAX: u32 = 16384;
/// Exec file names kept.
const EXECS_MAX: u32 = 64;
/// Processes and threads of the tree alive at once.
const TRACKED_MAX: u32 = 65536;

// Indices of the `stats` array.
const ST_DROPPED: i32 = 0;
const ST_OUT_OF_RANGE: i32 = 1;
const ST_LAUNCHER_SEEN: i32 = 2;
const ST_STARTED: i32 = 3;
const ST_TASKS: i32 = 4;
const ST_EXEC_INDEX: i32 = 5;
const ST_PATH_FAULTS: i32 = 6;
const STATS: u32 = 8;

const STATE_TREE: i32 = 1;
const STATE_WORKLOAD: i32 = 2;

// x86_64 syscall numbers the programs look at.
const NR_OPEN: i32 = 2;
const NR_IOCTL: i32 = 16;
const NR_SOCKET: i32 = 41;
const NR_EXECVE: u32 = 59;
const NR_CREAT: i32 = 85;
const NR_MKDIR: i32 = 83;
const NR_MKDIRAT: i32 = 258;
const NR_OPENAT: i32 = 257;
const NR_OPENAT2: i32 = 437;
/// O_WRONLY | O_RDWR | O_CREAT | O_TRUNC.
const WRITE_INTENT: i32 = 0o1 | 0o2 | 0o100 | 0o1000;
const EPERM: i32 = 1;
const EACCES: i32 = 13;
const EROFS: i32 = 30;

/// The tree filter, as the programs see it.
#[derive(Debug, Clone, Default)]
struct Filter {
    all: bool,
    after: Option<String>,
    program: Option<String>,
}

impl Filter {
    fn of(tree: &TreeFilter) -> Filter {
        let base = |s: &Option<String>| {
            s.as_deref()
                .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        };
        match tree {
            TreeFilter::All => Filter {
                all: true,
                ..Filter::default()
            },
            TreeFilter::FromFirstExec { after, program } => Filter {
                all: false,
                after: base(after),
                program: base(program),
            },
        }
    }
}

/// The online CPUs (`0-1,4`).
fn online_cpus() -> Result<Vec<u32>, EbpfError> {
    let path = PathBuf::from("/sys/devices/system/cpu/online");
    let text = std::fs::read_to_string(&path).map_err(|source| EbpfError::Cpus {
        path: path.clone(),
        source,
    })?;
    Ok(parse_cpu_list(&text))
}

fn parse_cpu_list(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<u32>().ok()),
        }
    }
    out
}

/// Where a program is attached.
#[derive(Debug, Clone)]
enum Hook {
    /// A perf tracepoint event (`perf_event_open` + `PERF_EVENT_IOC_SET_BPF`).
    Perf(Tracepoint),
    /// A raw tracepoint (`BPF_RAW_TRACEPOINT_OPEN`): no record is built
    /// per hit, and detaching does not wait for a grace period.
    Raw(&'static CStr),
}

/// One assembled program and where it goes.
struct Program {
    /// `category/name` of the tracepoint.
    name: String,
    hook: Hook,
    insns: Vec<Insn>,
}

/// The programs, assembled against `maps`. The hot syscall programs use
/// raw tracepoints when `raw`, else the perf tracepoints' records.
fn programs(
    maps: &Maps,
    tracefs: &Path,
    filter: &Filter,
    raw: bool,
) -> Result<Vec<Program>, EbpfError> {
    let fork = Tracepoint::load(tracefs, "sched", "sched_process_fork")?;
    let exec = Tracepoint::load(tracefs, "sched", "sched_process_exec")?;
    let gone = Tracepoint::load(tracefs, "sched", "sched_process_exit")?;
    let mut out = vec![
        Program {
            name: fork.name.clone(),
            insns: prog_fork(maps, &fork)?,
            hook: Hook::Perf(fork),
        },
        Program {
            name: exec.name.clone(),
            insns: prog_exec(maps, &exec, filter)?,
            hook: Hook::Perf(exec),
        },
        Program {
            name: gone.name.clone(),
            insns: prog_exit(maps)?,
            hook: Hook::Perf(gone),
        },
    ];
    if raw {
        out.push(Program {
            name: "raw_syscalls/sys_exit".into(),
            insns: prog_sys_exit(maps, Syscall::Raw)?,
            hook: Hook::Raw(c"sys_exit"),
        });
        out.push(Program {
            name: "raw_syscalls/sys_enter".into(),
            insns: prog_sys_enter(maps, Syscall::Raw)?,
            hook: Hook::Raw(c"sys_enter"),
        });
    } else {
        let enter = Tracepoint::load(tracefs, "raw_syscalls", "sys_enter")?;
        let exit = Tracepoint::load(tracefs, "raw_syscalls", "sys_exit")?;
        let record = |tp: &Tracepoint| -> Result<Syscall, EbpfError> {
            Ok(Syscall::Record {
                id: off(tp, "id")?,
                args: off(tp, "args").unwrap_or(0),
                ret: off(tp, "ret").unwrap_or(0),
            })
        };
        out.push(Program {
            name: exit.name.clone(),
            insns: prog_sys_exit(maps, record(&exit)?)?,
            hook: Hook::Perf(exit),
        });
        out.push(Program {
            name: enter.name.clone(),
            insns: prog_sys_enter(maps, record(&enter)?)?,
            hook: Hook::Perf(enter),
        });
    }
    Ok(out)
}

fn load(p: &Program) -> Result<OwnedFd, EbpfError> {
    let prog_type = match p.hook {
        Hook::Perf(_) => sys::PROG_TYPE_TRACEPOINT,
        Hook::Raw(_) => sys::PROG_TYPE_RAW_TRACEPOINT,
    };
    let name = format!("moat_{}", p.name.rsplit('/').next().unwrap_or("prog"));
    sys::prog_load(prog_type, &name, &p.insns, LICENSE).map_err(|(source, log)| EbpfError::Load {
        name: p.name.clone(),
        source,
        log,
    })
}

/// Loads every program, in both variants of the syscall programs (raw and
/// perf tracepoints), and drops them again: whether this kernel's verifier
/// accepts them. Returns (tracepoint, hook kind, instruction count).
pub fn check_programs(tracefs: &Path) -> Result<Vec<(String, &'static str, usize)>, EbpfError> {
    let maps = Maps::create()?;
    let filter = Filter {
        all: false,
        after: Some("moat".into()),
        program: Some("qemu-system-x86_64".into()),
    };
    let mut out = Vec::new();
    for raw in [true, false] {
        for p in programs(&maps, tracefs, &filter, raw)? {
            if !raw && !p.name.starts_with("raw_syscalls/") {
                continue;
            }
            load(&p)?;
            let kind = match p.hook {
                Hook::Perf(_) => "perf",
                Hook::Raw(_) => "raw",
            };
            out.push((p.name.clone(), kind, p.insns.len()));
        }
    }
    Ok(out)
}

/// A running recording; the programs detach when it is dropped.
pub struct Recorder {
    maps: Maps,
    filter: Filter,
    // Perf events and raw-tracepoint links hold the programs; all close on
    // drop.
    events: Vec<OwnedFd>,
    links: Vec<OwnedFd>,
    progs: Vec<OwnedFd>,
}

impl Recorder {
    /// Starts recording the tree of `pid` (which must not run yet, e.g.
    /// stopped): the syscall programs on raw tracepoints where the kernel
    /// has them, else on the perf tracepoints.
    pub fn start(tracefs: &Path, pid: u32, tree: &TreeFilter) -> Result<Recorder, EbpfError> {
        Recorder::start_with(tracefs, pid, tree, None)
    }

    /// [`Recorder::start`] with the syscall programs' hooks forced:
    /// `Some(true)` raw tracepoints only, `Some(false)` perf tracepoints
    /// only, `None` raw with a fallback to perf.
    pub fn start_with(
        tracefs: &Path,
        pid: u32,
        tree: &TreeFilter,
        raw: Option<bool>,
    ) -> Result<Recorder, EbpfError> {
        let filter = Filter::of(tree);
        let maps = Maps::create()?;
        let state = if filter.all {
            STATE_WORKLOAD
        } else {
            STATE_TREE
        };
        maps.tracked
            .update(&pid.to_le_bytes(), &(state as u32).to_le_bytes())?;
        if filter.all {
            maps.set_stat(ST_STARTED, 1)?;
            maps.set_stat(ST_TASKS, 1)?;
        }
        if filter.after.is_none() {
            maps.set_stat(ST_LAUNCHER_SEEN, 1)?;
        }
        // A tracepoint's programs hang off the tracepoint, not the perf
        // event: one event (on the first online CPU) runs the program for
        // hits on every CPU, and attaching the same program through a
        // second event is refused (EEXIST).
        let cpu = online_cpus()?.first().copied().unwrap_or(0);
        let mut rec = Recorder {
            maps,
            filter,
            events: Vec::new(),
            links: Vec::new(),
            progs: Vec::new(),
        };
        // Raw tracepoints for the syscall pair where the kernel has them,
        // else the perf tracepoints' records.
        match raw {
            Some(raw) => rec.attach(tracefs, cpu, raw)?,
            None => {
                if let Err(e) = rec.attach(tracefs, cpu, true) {
                    rec.events.clear();
                    rec.links.clear();
                    rec.progs.clear();
                    rec.attach(tracefs, cpu, false).map_err(|_| e)?;
                }
            }
        }
        Ok(rec)
    }

    fn attach(&mut self, tracefs: &Path, cpu: u32, raw: bool) -> Result<(), EbpfError> {
        for p in programs(&self.maps, tracefs, &self.filter, raw)? {
            let prog = load(&p)?;
            match &p.hook {
                Hook::Perf(tp) => {
                    let ev = sys::perf_open_tracepoint(tp.id, cpu).map_err(|source| {
                        EbpfError::PerfOpen {
                            tracepoint: tp.name.clone(),
                            cpu,
                            source,
                        }
                    })?;
                    sys::perf_attach(ev.as_raw_fd(), prog.as_raw_fd()).map_err(|source| {
                        EbpfError::Attach {
                            tracepoint: tp.name.clone(),
                            source,
                        }
                    })?;
                    self.events.push(ev);
                }
                Hook::Raw(name) => {
                    let link =
                        sys::raw_tracepoint_open(name, prog.as_raw_fd()).map_err(|source| {
                            EbpfError::Attach {
                                tracepoint: p.name.clone(),
                                source,
                            }
                        })?;
                    self.links.push(link);
                }
            }
            self.progs.push(prog);
        }
        Ok(())
    }

    /// Detaches the programs and reads what the workload did. Fails when
    /// events were dropped.
    pub fn stop(mut self) -> Result<Recorded, EbpfError> {
        // The workload is over; read the maps first, then detach.
        let recorded = self.read();
        self.detach();
        recorded
    }

    /// Detaches the programs. Each detach waits for an RCU-tasks-trace
    /// grace period (0.07-0.25 s on this busy host), so short-lived
    /// children holding the last references pay for it off the caller's
    /// path; where no child can be started, the events are closed in
    /// parallel threads so that the waits overlap.
    fn detach(&mut self) {
        // One child per event, so that their grace periods overlap.
        let mut in_process = Vec::new();
        for ev in self.events.drain(..) {
            match sys::release_in_child(&[ev.as_raw_fd()]) {
                Ok(mut child) => {
                    drop(ev);
                    // EOF: the child exits and releases the event.
                    drop(child.stdin.take());
                    std::thread::spawn(move || child.wait());
                }
                Err(_) => in_process.push(ev),
            }
        }
        std::thread::scope(|s| {
            for ev in in_process {
                s.spawn(move || drop(ev));
            }
        });
        self.links.clear();
        self.progs.clear();
    }

    fn read(&self) -> Result<Recorded, EbpfError> {
        let m = &self.maps;
        let lost = m.stat(ST_DROPPED)?;
        if lost > 0 {
            return Err(EbpfError::Lost { lost });
        }
        let table = syscalls::table();
        let mut r = Recorded::default();
        for nr in 0..NR_MAX {
            if let Some(v) = m.counts.lookup(&nr.to_le_bytes())? {
                let n = u64_of(&v);
                if n > 0 {
                    r.syscalls.insert(nr, n);
                }
            }
        }
        let started = m.stat(ST_STARTED)? > 0;
        if started && !self.filter.all {
            // The execve that started the workload belongs to it.
            *r.syscalls.entry(NR_EXECVE).or_default() += 1;
        }
        for (k, _) in m.families.entries()? {
            r.socket_families.insert(u64_of(&k));
        }
        for (k, _) in m.ioctls.entries()? {
            r.ioctls.insert(u64_of(&k));
        }
        let watched: BTreeSet<u32> = WATCHED_EXITS
            .iter()
            .filter_map(|n| table.number(n))
            .collect();
        let open = table.number("open").unwrap_or(2);
        let openat = table.number("openat").unwrap_or(257);
        for (k, v) in m.failures.entries()? {
            let key = u64_of(&k);
            let (nr, errno) = ((key >> 32) as u32, (key & 0xffff_ffff) as i64);
            if errno == EROFS as i64 {
                if nr == open || nr == openat {
                    r.read_only_writes += u64_of(&v);
                }
            } else if watched.contains(&nr) {
                r.denied.insert((nr, errno));
            }
        }
        for (k, _) in m.paths.entries()? {
            r.write_paths.insert(cstr_of(&k));
        }
        let execs = m.stat(ST_EXEC_INDEX)?.min(EXECS_MAX as u64) as u32;
        for i in 0..execs {
            if let Some(v) = m.execs.lookup(&i.to_le_bytes())? {
                r.execs.push(cstr_of(&v));
            }
        }
        r.tasks = m.stat(ST_TASKS)? as usize;
        r.path_faults = m.stat(ST_PATH_FAULTS)?;
        r.out_of_range = m.stat(ST_OUT_OF_RANGE)?;
        if !started {
            r.execs.clear();
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-3,7"), vec![0, 2, 3, 7]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
    }

    #[test]
    fn filter_uses_base_names() {
        let f = Filter::of(&TreeFilter::FromFirstExec {
            after: Some("/usr/bin/crun".into()),
            program: Some("sh".into()),
        });
        assert_eq!(f.after.as_deref(), Some("crun"));
        assert_eq!(f.program.as_deref(), Some("sh"));
        assert!(Filter::of(&TreeFilter::All).all);
    }
}
