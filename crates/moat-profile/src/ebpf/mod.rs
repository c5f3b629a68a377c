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
mod sys;

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use asm::{Alu, Asm, Cond, Helper, Insn, Size, FP, R0, R1, R2, R3, R4, R6, R7, R8, R9};
use format::{FormatError, Tracepoint};

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
const NR_OPENAT: i32 = 257;
const NR_OPENAT2: i32 = 437;
/// O_WRONLY | O_RDWR | O_CREAT | O_TRUNC.
const WRITE_INTENT: i32 = 0o1 | 0o2 | 0o100 | 0o1000;
const EPERM: i32 = 1;
const EACCES: i32 = 13;
const EROFS: i32 = 30;

/// A (key, value) pair read back from a map.
type Entry = (Vec<u8>, Vec<u8>);

struct Map {
    name: &'static str,
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

impl Map {
    fn create(
        name: &'static str,
        kind: u32,
        key_size: u32,
        value_size: u32,
        max: u32,
    ) -> Result<Map, EbpfError> {
        let fd = sys::map_create(kind, key_size, value_size, max, name).map_err(|source| {
            EbpfError::MapCreate {
                name: name.to_string(),
                source,
            }
        })?;
        Ok(Map {
            name,
            fd,
            key_size: key_size as usize,
            value_size: value_size as usize,
        })
    }

    fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn err(&self, source: std::io::Error) -> EbpfError {
        EbpfError::MapAccess {
            name: self.name.to_string(),
            source,
        }
    }

    fn update(&self, key: &[u8], value: &[u8]) -> Result<(), EbpfError> {
        sys::map_update(self.raw(), key, value).map_err(|e| self.err(e))
    }

    fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EbpfError> {
        let mut v = vec![0u8; self.value_size];
        Ok(sys::map_lookup(self.raw(), key, &mut v)
            .map_err(|e| self.err(e))?
            .then_some(v))
    }

    /// Every (key, value) of a hash map.
    fn entries(&self) -> Result<Vec<Entry>, EbpfError> {
        let mut out = Vec::new();
        let mut key: Option<Vec<u8>> = None;
        loop {
            let mut next = vec![0u8; self.key_size];
            if !sys::map_next_key(self.raw(), key.as_deref(), &mut next).map_err(|e| self.err(e))? {
                break;
            }
            if let Some(v) = self.lookup(&next)? {
                out.push((next.clone(), v));
            }
            key = Some(next);
        }
        Ok(out)
    }
}

fn u64_of(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
    u64::from_le_bytes(a)
}

fn cstr_of(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

struct Maps {
    tracked: Map,
    counts: Map,
    families: Map,
    ioctls: Map,
    failures: Map,
    paths: Map,
    stats: Map,
    execs: Map,
}

impl Maps {
    fn create() -> Result<Maps, EbpfError> {
        use sys::{MAP_TYPE_ARRAY as A, MAP_TYPE_HASH as H};
        Ok(Maps {
            tracked: Map::create("moat_tracked", H, 4, 4, TRACKED_MAX)?,
            counts: Map::create("moat_counts", A, 4, 8, NR_MAX)?,
            families: Map::create("moat_families", H, 8, 8, 256)?,
            ioctls: Map::create("moat_ioctls", H, 8, 8, 4096)?,
            failures: Map::create("moat_failures", H, 8, 8, 4096)?,
            paths: Map::create("moat_paths", H, PATH_MAX, 8, PATHS_MAX)?,
            stats: Map::create("moat_stats", A, 4, 8, STATS)?,
            execs: Map::create("moat_execs", A, 4, PATH_MAX, EXECS_MAX)?,
        })
    }

    fn stat(&self, idx: i32) -> Result<u64, EbpfError> {
        Ok(self
            .stats
            .lookup(&(idx as u32).to_le_bytes())?
            .map(|v| u64_of(&v))
            .unwrap_or(0))
    }

    fn set_stat(&self, idx: i32, v: u64) -> Result<(), EbpfError> {
        self.stats
            .update(&(idx as u32).to_le_bytes(), &v.to_le_bytes())
    }
}

/// A program builder with unique labels for the repeated snippets.
struct Prog {
    a: Asm,
    n: usize,
}

impl Prog {
    fn new() -> Prog {
        Prog {
            a: Asm::new(),
            n: 0,
        }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.n += 1;
        format!("{what}_{}", self.n)
    }

    /// `stats[idx] += 1` (atomically). Clobbers r0-r5.
    fn stat_inc(&mut self, maps: &Maps, idx: i32) {
        let skip = self.fresh("stat");
        self.a
            .st(Size::W, FP, -48, idx)
            .ld_map_fd(R1, maps.stats.raw())
            .mov(R2, FP)
            .alu_imm(Alu::Add, R2, -48)
            .call(Helper::MapLookupElem)
            .jmp_imm(Cond::Eq, R0, 0, &skip)
            .mov_imm(R1, 1)
            .atomic_add(R0, 0, R1)
            .label(&skip);
    }

    /// `r0 = &stats[idx]`, or jumps to `out` when the lookup fails.
    fn stat_ptr(&mut self, maps: &Maps, idx: i32, out: &str) {
        self.a
            .st(Size::W, FP, -48, idx)
            .ld_map_fd(R1, maps.stats.raw())
            .mov(R2, FP)
            .alu_imm(Alu::Add, R2, -48)
            .call(Helper::MapLookupElem)
            .jmp_imm(Cond::Eq, R0, 0, out);
    }

    /// Jumps to `out` unless the current tid is tracked with state 2.
    fn require_workload(&mut self, maps: &Maps, out: &str) {
        self.a
            .call(Helper::GetCurrentPidTgid)
            .stx(Size::W, FP, -4, R0)
            .ld_map_fd(R1, maps.tracked.raw())
            .mov(R2, FP)
            .alu_imm(Alu::Add, R2, -4)
            .call(Helper::MapLookupElem)
            .jmp_imm(Cond::Eq, R0, 0, out)
            .ldx(Size::W, R1, R0, 0)
            .jmp_imm(Cond::Ne, R1, STATE_WORKLOAD, out);
    }

    /// `map[key at fp+key_off] = 1` unless present; counts a full map.
    /// Clobbers r0-r5.
    fn insert_once(&mut self, maps: &Maps, map: &Map, key_off: i16) {
        let done = self.fresh("ins");
        self.a
            .ld_map_fd(R1, map.raw())
            .mov(R2, FP)
            .alu_imm(Alu::Add, R2, key_off as i32)
            .call(Helper::MapLookupElem)
            .jmp_imm(Cond::Ne, R0, 0, &done)
            .st(Size::DW, FP, -56, 1)
            .ld_map_fd(R1, map.raw())
            .mov(R2, FP)
            .alu_imm(Alu::Add, R2, key_off as i32)
            .mov(R3, FP)
            .alu_imm(Alu::Add, R3, -56)
            .mov_imm(R4, 0)
            .call(Helper::MapUpdateElem)
            .jmp_imm(Cond::Eq, R0, 0, &done);
        self.stat_inc(maps, ST_DROPPED);
        self.a.label(&done);
    }

    /// Compares the current task's comm with `name` (truncated as the
    /// kernel truncates it); jumps to `differs` when they differ.
    fn comm_is(&mut self, name: &str, differs: &str) {
        let mut want = [0u8; 16];
        for (d, s) in want.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        self.a
            .mov(R1, FP)
            .alu_imm(Alu::Add, R1, -40)
            .mov_imm(R2, 16)
            .call(Helper::GetCurrentComm)
            .ldx(Size::DW, R1, FP, -40)
            .ld_imm64(R2, u64_of(&want[..8]))
            .jmp(Cond::Ne, R1, R2, differs)
            .ldx(Size::DW, R1, FP, -32)
            .ld_imm64(R2, u64_of(&want[8..]))
            .jmp(Cond::Ne, R1, R2, differs);
    }

    fn finish(mut self, name: &str) -> Result<Vec<Insn>, EbpfError> {
        self.a.label("out").mov_imm(R0, 0).exit();
        self.a.finish().map_err(|e| EbpfError::Assemble {
            name: name.to_string(),
            message: e.to_string(),
        })
    }
}

/// Where a syscall program finds the syscall's number and arguments.
#[derive(Debug, Clone, Copy)]
enum Syscall {
    /// A perf tracepoint's record: offsets from its tracefs `format`.
    Record { id: i16, args: i16, ret: i16 },
    /// A raw tracepoint's arguments: `(struct pt_regs *regs, long id_or_ret)`;
    /// the arguments are read from `regs` (x86_64 `user_regs_struct`
    /// layout, which is the kernel's `pt_regs`).
    Raw,
}

/// Offsets in `pt_regs` of the syscall arguments (rdi, rsi, rdx, r10, r8,
/// r9) and of the syscall number (`orig_rax`).
const REG_ARGS: [usize; 6] = [
    std::mem::offset_of!(libc::user_regs_struct, rdi),
    std::mem::offset_of!(libc::user_regs_struct, rsi),
    std::mem::offset_of!(libc::user_regs_struct, rdx),
    std::mem::offset_of!(libc::user_regs_struct, r10),
    std::mem::offset_of!(libc::user_regs_struct, r8),
    std::mem::offset_of!(libc::user_regs_struct, r9),
];
const REG_NR: usize = std::mem::offset_of!(libc::user_regs_struct, orig_rax);

impl Prog {
    /// `dst = *(u64 *)(regs + off)` through `bpf_probe_read_kernel`
    /// (scratch slot fp-24); jumps to `out` when the read fails. Clobbers
    /// r0-r5.
    fn read_regs(&mut self, off: usize, dst: asm::Reg) {
        self.a
            .mov(R1, FP)
            .alu_imm(Alu::Add, R1, -24)
            .mov_imm(R2, 8)
            .ldx(Size::DW, R3, R6, 0)
            .alu_imm(Alu::Add, R3, off as i32)
            .call(Helper::ProbeReadKernel)
            .jmp_imm(Cond::Ne, R0, 0, "out")
            .ldx(Size::DW, dst, FP, -24);
    }

    /// `dst = syscall argument i` (ctx in r6). Clobbers r0-r5.
    fn arg(&mut self, sc: Syscall, i: usize, dst: asm::Reg) {
        match sc {
            Syscall::Record { args, .. } => {
                self.a.ldx(Size::DW, dst, R6, args + 8 * i as i16);
            }
            Syscall::Raw => self.read_regs(REG_ARGS[i], dst),
        }
    }

    /// `dst = syscall number` (ctx in r6); at sys_enter of a raw
    /// tracepoint it is the second argument. Clobbers r0-r5 for `Raw` at
    /// sys_exit.
    fn nr(&mut self, sc: Syscall, enter: bool, dst: asm::Reg) {
        match (sc, enter) {
            (Syscall::Record { id, .. }, _) => {
                self.a.ldx(Size::DW, dst, R6, id);
            }
            (Syscall::Raw, true) => {
                self.a.ldx(Size::DW, dst, R6, 8);
            }
            (Syscall::Raw, false) => self.read_regs(REG_NR, dst),
        }
    }

    /// `dst = return value` at sys_exit (ctx in r6).
    fn ret(&mut self, sc: Syscall, dst: asm::Reg) {
        let off = match sc {
            Syscall::Record { ret, .. } => ret,
            Syscall::Raw => 8,
        };
        self.a.ldx(Size::DW, dst, R6, off);
    }
}

fn off(tp: &Tracepoint, field: &str) -> Result<i16, EbpfError> {
    Ok(tp.field(field)?.offset as i16)
}

/// `raw_syscalls/sys_enter`: counts, socket families, ioctl requests and
/// write-opened paths of the workload.
fn prog_sys_enter(maps: &Maps, sc: Syscall) -> Result<Vec<Insn>, EbpfError> {
    let mut p = Prog::new();
    p.a.mov(R6, R1);
    p.require_workload(maps, "out");
    p.nr(sc, true, R7);
    p.a.jmp_imm(Cond::Gt, R7, NR_MAX as i32 - 1, "out_of_range")
        .stx(Size::W, FP, -8, R7)
        .ld_map_fd(R1, maps.counts.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -8)
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "counted")
        .mov_imm(R1, 1)
        .atomic_add(R0, 0, R1)
        .ja("counted")
        .label("out_of_range");
    p.stat_inc(maps, ST_OUT_OF_RANGE);
    p.a.label("counted")
        .jmp_imm(Cond::Eq, R7, NR_SOCKET, "socket")
        .jmp_imm(Cond::Eq, R7, NR_IOCTL, "ioctl")
        .jmp_imm(Cond::Eq, R7, NR_OPEN, "open")
        .jmp_imm(Cond::Eq, R7, NR_CREAT, "creat")
        .jmp_imm(Cond::Eq, R7, NR_OPENAT, "openat")
        .jmp_imm(Cond::Eq, R7, NR_OPENAT2, "openat2")
        .ja("out");
    // socket(family, ...)
    p.a.label("socket");
    p.arg(sc, 0, R1);
    p.a.alu_imm(Alu::And, R1, 0xffff).stx(Size::DW, FP, -16, R1);
    p.insert_once(maps, &maps.families, -16);
    p.a.ja("out");
    // ioctl(fd, request, ...): the request is an unsigned int.
    p.a.label("ioctl");
    p.arg(sc, 1, R1);
    p.a.mov32(R1, R1).stx(Size::DW, FP, -16, R1);
    p.insert_once(maps, &maps.ioctls, -16);
    p.a.ja("out");
    // open(path, flags), creat(path), openat(dfd, path, flags),
    // openat2(dfd, path, how): r8 = flags, r9 = path.
    p.a.label("open");
    p.arg(sc, 1, R8);
    p.arg(sc, 0, R9);
    p.a.ja("check_flags").label("creat");
    p.arg(sc, 0, R9);
    p.a.ja("write_open").label("openat");
    p.arg(sc, 2, R8);
    p.arg(sc, 1, R9);
    p.a.ja("check_flags").label("openat2");
    // struct open_how { u64 flags; u64 mode; u64 resolve; }
    p.arg(sc, 1, R9);
    p.arg(sc, 2, R3);
    p.a.mov(R1, FP)
        .alu_imm(Alu::Add, R1, -16)
        .mov_imm(R2, 8)
        .call(Helper::ProbeReadUser)
        .jmp_imm(Cond::Ne, R0, 0, "out")
        .ldx(Size::DW, R8, FP, -16)
        .label("check_flags")
        .alu_imm(Alu::And, R8, WRITE_INTENT)
        .jmp_imm(Cond::Eq, R8, 0, "out")
        .label("write_open");
    // A zeroed buffer at fp-320 .. fp-64 is the path map's key.
    let buf: i16 = -320;
    for i in 0..(PATH_MAX as i16 / 8) {
        p.a.st(Size::DW, FP, buf + 8 * i, 0);
    }
    p.a.mov(R1, FP)
        .alu_imm(Alu::Add, R1, buf as i32)
        .mov_imm(R2, PATH_MAX as i32)
        .mov(R3, R9)
        .call(Helper::ProbeReadUserStr)
        .jmp_imm(Cond::Sgt, R0, 0, "path_read");
    p.stat_inc(maps, ST_PATH_FAULTS);
    p.a.ja("out").label("path_read");
    p.insert_once(maps, &maps.paths, buf);
    p.finish("sys_enter")
}

/// `raw_syscalls/sys_exit`: (syscall, errno) of the workload's calls that
/// failed with EPERM, EACCES or EROFS, with counts.
fn prog_sys_exit(maps: &Maps, sc: Syscall) -> Result<Vec<Insn>, EbpfError> {
    let mut p = Prog::new();
    p.a.mov(R6, R1);
    p.require_workload(maps, "out");
    p.ret(sc, R7);
    p.a.jmp_imm(Cond::Sge, R7, 0, "out")
        .alu_imm(Alu::Neg, R7, 0)
        .jmp_imm(Cond::Eq, R7, EPERM, "failed")
        .jmp_imm(Cond::Eq, R7, EACCES, "failed")
        .jmp_imm(Cond::Eq, R7, EROFS, "failed")
        .ja("out")
        .label("failed");
    p.nr(sc, false, R1);
    p.a.alu_imm(Alu::Lsh, R1, 32)
        .alu(Alu::Or, R1, R7)
        .stx(Size::DW, FP, -16, R1)
        .ld_map_fd(R1, maps.failures.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -16)
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "first")
        .mov_imm(R1, 1)
        .atomic_add(R0, 0, R1)
        .ja("out")
        .label("first");
    p.insert_once(maps, &maps.failures, -16);
    p.finish("sys_exit")
}

/// `sched/sched_process_fork`: the child joins the tree in its parent's
/// state.
fn prog_fork(maps: &Maps, tp: &Tracepoint) -> Result<Vec<Insn>, EbpfError> {
    let parent = off(tp, "parent_pid")?;
    let child = off(tp, "child_pid")?;
    let mut p = Prog::new();
    p.a.mov(R6, R1)
        .ldx(Size::W, R1, R6, parent)
        .stx(Size::W, FP, -4, R1)
        .ld_map_fd(R1, maps.tracked.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -4)
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "out")
        .ldx(Size::W, R7, R0, 0)
        .stx(Size::W, FP, -8, R7)
        .ldx(Size::W, R1, R6, child)
        .stx(Size::W, FP, -12, R1)
        .ld_map_fd(R1, maps.tracked.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -12)
        .mov(R3, FP)
        .alu_imm(Alu::Add, R3, -8)
        .mov_imm(R4, 0)
        .call(Helper::MapUpdateElem)
        .jmp_imm(Cond::Eq, R0, 0, "inserted");
    p.stat_inc(maps, ST_DROPPED);
    p.a.ja("out")
        .label("inserted")
        .jmp_imm(Cond::Ne, R7, STATE_WORKLOAD, "out");
    p.stat_inc(maps, ST_TASKS);
    p.finish("fork")
}

/// `sched/sched_process_exit`: a task of the tree is gone (its tid may be
/// reused by an unrelated process).
fn prog_exit(maps: &Maps) -> Result<Vec<Insn>, EbpfError> {
    let mut p = Prog::new();
    p.a.call(Helper::GetCurrentPidTgid)
        .stx(Size::W, FP, -4, R0)
        .ld_map_fd(R1, maps.tracked.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -4)
        .call(Helper::MapDeleteElem);
    p.finish("exit")
}

/// `sched/sched_process_exec`: the launcher's exec, the workload's first
/// exec (the task turns to state 2), and the file names of the workload's
/// execs.
fn prog_exec(maps: &Maps, tp: &Tracepoint, filter: &Filter) -> Result<Vec<Insn>, EbpfError> {
    let filename = off(tp, "filename")?;
    let pid = off(tp, "pid")?;
    let old_pid = off(tp, "old_pid")?;
    let mut p = Prog::new();
    p.a.mov(R6, R1)
        .ldx(Size::W, R1, R6, old_pid)
        .stx(Size::W, FP, -4, R1)
        .ldx(Size::W, R1, R6, pid)
        .stx(Size::W, FP, -8, R1)
        .st(Size::W, FP, -12, STATE_WORKLOAD)
        .ld_map_fd(R1, maps.tracked.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -4)
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "out")
        .ldx(Size::W, R7, R0, 0)
        .jmp_imm(Cond::Eq, R7, STATE_WORKLOAD, "workload_exec");
    // In the tree, before the workload: first the launcher's exec.
    p.stat_ptr(maps, ST_LAUNCHER_SEEN, "out");
    p.a.mov(R8, R0)
        .ldx(Size::DW, R1, R8, 0)
        .jmp_imm(Cond::Ne, R1, 0, "launcher_seen");
    if let Some(after) = &filter.after {
        p.comm_is(after, "out");
    }
    p.a.st(Size::DW, R8, 0, 1).ja("out").label("launcher_seen");
    // Then the workload's first exec.
    p.stat_ptr(maps, ST_STARTED, "out");
    p.a.mov(R8, R0)
        .ldx(Size::DW, R1, R8, 0)
        .jmp_imm(Cond::Ne, R1, 0, "out");
    if let Some(program) = &filter.program {
        p.comm_is(program, "out");
    }
    p.a.st(Size::DW, R8, 0, 1)
        .ld_map_fd(R1, maps.tracked.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -8)
        .mov(R3, FP)
        .alu_imm(Alu::Add, R3, -12)
        .mov_imm(R4, 0)
        .call(Helper::MapUpdateElem)
        .jmp_imm(Cond::Eq, R0, 0, "started");
    p.stat_inc(maps, ST_DROPPED);
    p.a.ja("out").label("started");
    p.stat_inc(maps, ST_TASKS);
    p.a.ja("log");
    // A workload exec by a thread other than the leader takes the
    // leader's tid.
    p.a.label("workload_exec")
        .ldx(Size::W, R1, FP, -4)
        .ldx(Size::W, R2, FP, -8)
        .jmp(Cond::Eq, R1, R2, "log")
        .ld_map_fd(R1, maps.tracked.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -8)
        .mov(R3, FP)
        .alu_imm(Alu::Add, R3, -12)
        .mov_imm(R4, 0)
        .call(Helper::MapUpdateElem)
        .label("log");
    // execs[stats[EXEC_INDEX]++] = filename
    p.stat_ptr(maps, ST_EXEC_INDEX, "out");
    p.a.mov_imm(R1, 1)
        .atomic_fetch_add(R0, 0, R1)
        .jmp_imm(Cond::Ge, R1, EXECS_MAX as i32, "out")
        .stx(Size::W, FP, -16, R1)
        .ld_map_fd(R1, maps.execs.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -16)
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "out")
        .mov(R7, R0)
        // __data_loc: low 16 bits offset from the record's start.
        .ldx(Size::W, R3, R6, filename)
        .alu_imm(Alu::And, R3, 0xffff)
        .alu(Alu::Add, R3, R6)
        .mov(R1, R7)
        .mov_imm(R2, PATH_MAX as i32)
        .call(Helper::ProbeReadKernelStr);
    p.finish("exec")
}

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
