//! Which paths a container's processes failed to write because the file
//! system is read-only (`EROFS`): what `moat run` names, with the grant
//! that would allow the write, when a workload fails on the image's
//! read-only root.
//!
//! Two raw-tracepoint programs on `sys_enter`/`sys_exit`, both filtered
//! first on the calling task's host uid (the container's id range, so the
//! rest of the host pays one comparison per call): at entry to a call that
//! names a path to create or write, the path's user pointer is kept per
//! thread; at exit with `-EROFS`, the path is read from the caller's memory
//! and kept in a map keyed by the path (deduplicated by the kernel).
//! Closing the watch's descriptors detaches everything, so a crashed moat
//! leaves nothing attached.

use std::os::fd::{AsRawFd, OwnedFd};

use super::asm::{Alu, Asm, Cond, Helper, Insn, Size, FP, R0, R1, R2, R3, R4, R6, R7, R8, R9};
use super::maps::{cstr_of, u64_of, Map};
use super::progs::{read_reg, REG_ARGS, REG_NR};
use super::{sys, EbpfError, EROFS, LICENSE, PATH_MAX};

/// Paths kept (distinct).
const HITS_MAX: u32 = 256;
/// Threads with a call in flight at once (least recently used evicted).
const PENDING_MAX: u32 = 8192;
/// `BPF_MAP_TYPE_LRU_HASH`.
const MAP_TYPE_LRU_HASH: u32 = 9;

/// The x86_64 calls that create or write at a path, with the index of the
/// path argument the read-only file system refuses.
pub const PATH_CALLS: [(&str, usize); 19] = [
    ("open", 0),
    ("creat", 0),
    ("openat", 1),
    ("openat2", 1),
    ("mkdir", 0),
    ("mkdirat", 1),
    ("mknod", 0),
    ("mknodat", 1),
    ("unlink", 0),
    ("unlinkat", 1),
    ("rmdir", 0),
    ("rename", 1),
    ("renameat", 3),
    ("renameat2", 3),
    ("symlink", 1),
    ("symlinkat", 2),
    ("link", 1),
    ("linkat", 3),
    ("truncate", 0),
];

/// One path a write to was refused with `EROFS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyHit {
    /// As the program passed it (absolute or relative to its directory).
    pub path: String,
    /// The call's name.
    pub syscall: String,
}

/// A running watch; detached when dropped.
pub struct ReadOnlyWatch {
    hits: Map,
    _pending: Map,
    _links: Vec<OwnedFd>,
    _progs: Vec<OwnedFd>,
}

/// Jumps to `out` unless the current task's uid is in
/// `[base, base + count)`. Clobbers r0-r5.
fn require_uid(a: &mut Asm, base: u32, count: u32) {
    a.call(Helper::GetCurrentUidGid)
        .mov32(R0, R0)
        .ld_imm64(R1, u64::from(base))
        .alu(Alu::Sub, R0, R1)
        .ld_imm64(R1, u64::from(count))
        .jmp(Cond::Ge, R0, R1, "out");
}

/// Stores the current thread id at fp-4 (the pending map's key).
fn tid_key(a: &mut Asm) {
    a.call(Helper::GetCurrentPidTgid).stx(Size::W, FP, -4, R0);
}

fn finish(mut a: Asm, name: &str) -> Result<Vec<Insn>, EbpfError> {
    a.label("out").mov_imm(R0, 0).exit();
    a.finish().map_err(|e| EbpfError::Assemble {
        name: name.to_string(),
        message: e.to_string(),
    })
}

/// `sys_enter`: pending[tid] = (path pointer, call number) for the calls
/// of [`PATH_CALLS`].
fn prog_enter(
    pending: &Map,
    calls: &[(u32, usize)],
    base: u32,
    count: u32,
) -> Result<Vec<Insn>, EbpfError> {
    let mut a = Asm::new();
    a.mov(R6, R1);
    require_uid(&mut a, base, count);
    a.ldx(Size::DW, R7, R6, 8);
    for (nr, arg) in calls {
        a.jmp_imm(Cond::Eq, R7, *nr as i32, &format!("arg{arg}"));
    }
    a.ja("out");
    let mut args: Vec<usize> = calls.iter().map(|c| c.1).collect();
    args.sort();
    args.dedup();
    for arg in args {
        a.label(&format!("arg{arg}"));
        read_reg(&mut a, REG_ARGS[arg], R9);
        a.ja("store");
    }
    a.label("store")
        .stx(Size::DW, FP, -48, R9)
        .stx(Size::DW, FP, -40, R7);
    tid_key(&mut a);
    a.ld_map_fd(R1, pending.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -4)
        .mov(R3, FP)
        .alu_imm(Alu::Add, R3, -48)
        .mov_imm(R4, 0)
        .call(Helper::MapUpdateElem);
    finish(a, "rofs_enter")
}

/// `sys_exit`: the call pending for this thread is done (its entry is
/// removed); on `-EROFS` its path goes into `hits` (value: the call number).
fn prog_exit(pending: &Map, hits: &Map, base: u32, count: u32) -> Result<Vec<Insn>, EbpfError> {
    let mut a = Asm::new();
    a.mov(R6, R1);
    require_uid(&mut a, base, count);
    tid_key(&mut a);
    a.ld_map_fd(R1, pending.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -4)
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "out")
        .ldx(Size::DW, R9, R0, 0)
        .ldx(Size::DW, R8, R0, 8)
        .stx(Size::DW, FP, -336, R8)
        .ld_map_fd(R1, pending.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, -4)
        .call(Helper::MapDeleteElem)
        .ldx(Size::DW, R7, R6, 8)
        .jmp_imm(Cond::Ne, R7, -EROFS, "out");
    // The pending entry is this call's (a call not watched came in
    // between only if its entry was lost).
    read_reg(&mut a, REG_NR, R7);
    a.jmp(Cond::Ne, R8, R7, "out");
    // A zeroed buffer at fp-320 .. fp-64 is the hits map's key.
    let buf: i16 = -320;
    for i in 0..(PATH_MAX as i16 / 8) {
        a.st(Size::DW, FP, buf + 8 * i, 0);
    }
    a.mov(R1, FP)
        .alu_imm(Alu::Add, R1, buf as i32)
        .mov_imm(R2, PATH_MAX as i32)
        .mov(R3, R9)
        .call(Helper::ProbeReadUserStr)
        .jmp_imm(Cond::Sle, R0, 0, "out")
        .ld_map_fd(R1, hits.raw())
        .mov(R2, FP)
        .alu_imm(Alu::Add, R2, buf as i32)
        .mov(R3, FP)
        .alu_imm(Alu::Add, R3, -336)
        .mov_imm(R4, 0)
        .call(Helper::MapUpdateElem);
    finish(a, "rofs_exit")
}

impl ReadOnlyWatch {
    /// Starts watching tasks whose host uid is in `[uid_base, uid_base +
    /// count)`. Needs CAP_BPF and CAP_PERFMON (root) and raw tracepoints.
    pub fn start(uid_base: u32, count: u32) -> Result<ReadOnlyWatch, EbpfError> {
        let table = crate::syscalls::table();
        let calls: Vec<(u32, usize)> = PATH_CALLS
            .iter()
            .filter_map(|(name, arg)| Some((table.number(name)?, *arg)))
            .collect();
        let pending = Map::create("moat_rofs_pend", MAP_TYPE_LRU_HASH, 4, 16, PENDING_MAX)?;
        let hits = Map::create("moat_rofs_hits", sys::MAP_TYPE_HASH, PATH_MAX, 8, HITS_MAX)?;
        let programs = [
            (
                c"sys_exit",
                "rofs_exit",
                prog_exit(&pending, &hits, uid_base, count)?,
            ),
            (
                c"sys_enter",
                "rofs_enter",
                prog_enter(&pending, &calls, uid_base, count)?,
            ),
        ];
        let mut progs = Vec::new();
        let mut links = Vec::new();
        for (tp, name, insns) in programs {
            let prog = sys::prog_load(
                sys::PROG_TYPE_RAW_TRACEPOINT,
                &format!("moat_{name}"),
                &insns,
                LICENSE,
            )
            .map_err(|(source, log)| EbpfError::Load {
                name: name.to_string(),
                source,
                log,
            })?;
            let link = sys::raw_tracepoint_open(tp, prog.as_raw_fd()).map_err(|source| {
                EbpfError::Attach {
                    tracepoint: format!("raw_syscalls/{}", tp.to_string_lossy()),
                    source,
                }
            })?;
            progs.push(prog);
            links.push(link);
        }
        Ok(ReadOnlyWatch {
            hits,
            _pending: pending,
            _links: links,
            _progs: progs,
        })
    }

    /// The paths refused so far, sorted.
    pub fn hits(&self) -> Result<Vec<ReadOnlyHit>, EbpfError> {
        let table = crate::syscalls::table();
        let mut out: Vec<ReadOnlyHit> = self
            .hits
            .entries()?
            .into_iter()
            .map(|(k, v)| ReadOnlyHit {
                path: cstr_of(&k),
                syscall: table
                    .name(u64_of(&v) as u32)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("syscall {}", u64_of(&v))),
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}
