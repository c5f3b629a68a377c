//! The five programs, written with the assembler: one function per
//! tracepoint, plus the snippets they share.

use super::asm::{
    self, Alu, Asm, Cond, Helper, Insn, Size, FP, R0, R1, R2, R3, R4, R6, R7, R8, R9,
};
use super::format::Tracepoint;
use super::maps::{u64_of, Map, Maps};
use super::{
    EbpfError, Filter, EACCES, EPERM, EROFS, EXECS_MAX, NR_CREAT, NR_IOCTL, NR_MAX, NR_MKDIR,
    NR_MKDIRAT, NR_OPEN, NR_OPENAT, NR_OPENAT2, NR_SOCKET, PATH_MAX, STATE_WORKLOAD, ST_DROPPED,
    ST_EXEC_INDEX, ST_LAUNCHER_SEEN, ST_OUT_OF_RANGE, ST_PATH_FAULTS, ST_STARTED, ST_TASKS,
    WRITE_INTENT,
};

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
pub(super) enum Syscall {
    /// A perf tracepoint's record: offsets from its tracefs `format`.
    Record { id: i16, args: i16, ret: i16 },
    /// A raw tracepoint's arguments: `(struct pt_regs *regs, long id_or_ret)`;
    /// the arguments are read from `regs` (x86_64 `user_regs_struct`
    /// layout, which is the kernel's `pt_regs`).
    Raw,
}

/// Offsets in `pt_regs` of the syscall arguments (rdi, rsi, rdx, r10, r8,
/// r9) and of the syscall number (`orig_rax`).
pub(super) const REG_ARGS: [usize; 6] = [
    std::mem::offset_of!(libc::user_regs_struct, rdi),
    std::mem::offset_of!(libc::user_regs_struct, rsi),
    std::mem::offset_of!(libc::user_regs_struct, rdx),
    std::mem::offset_of!(libc::user_regs_struct, r10),
    std::mem::offset_of!(libc::user_regs_struct, r8),
    std::mem::offset_of!(libc::user_regs_struct, r9),
];
pub(super) const REG_NR: usize = std::mem::offset_of!(libc::user_regs_struct, orig_rax);

/// `dst = *(u64 *)(regs + off)`, regs being a raw tracepoint's first
/// argument (ctx in r6), through `bpf_probe_read_kernel` (scratch slot
/// fp-24); jumps to `out` when the read fails. Clobbers r0-r5.
pub(super) fn read_reg(a: &mut asm::Asm, off: usize, dst: asm::Reg) {
    a.mov(R1, FP)
        .alu_imm(Alu::Add, R1, -24)
        .mov_imm(R2, 8)
        .ldx(Size::DW, R3, R6, 0)
        .alu_imm(Alu::Add, R3, off as i32)
        .call(Helper::ProbeReadKernel)
        .jmp_imm(Cond::Ne, R0, 0, "out")
        .ldx(Size::DW, dst, FP, -24);
}

impl Prog {
    /// [`read_reg`] on this program.
    fn read_regs(&mut self, off: usize, dst: asm::Reg) {
        read_reg(&mut self.a, off, dst);
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

pub(super) fn off(tp: &Tracepoint, field: &str) -> Result<i16, EbpfError> {
    Ok(tp.field(field)?.offset as i16)
}

/// `raw_syscalls/sys_enter`: counts, socket families, ioctl requests and
/// write-opened paths (and directories made) of the workload.
pub(super) fn prog_sys_enter(maps: &Maps, sc: Syscall) -> Result<Vec<Insn>, EbpfError> {
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
        .jmp_imm(Cond::Eq, R7, NR_MKDIR, "mkdir")
        .jmp_imm(Cond::Eq, R7, NR_MKDIRAT, "mkdirat")
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
    // mkdir(path, mode), mkdirat(dfd, path, mode): a directory made is a
    // write at that path too.
    p.a.ja("write_open").label("mkdir");
    p.arg(sc, 0, R9);
    p.a.ja("write_open").label("mkdirat");
    p.arg(sc, 1, R9);
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
pub(super) fn prog_sys_exit(maps: &Maps, sc: Syscall) -> Result<Vec<Insn>, EbpfError> {
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
pub(super) fn prog_fork(maps: &Maps, tp: &Tracepoint) -> Result<Vec<Insn>, EbpfError> {
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
pub(super) fn prog_exit(maps: &Maps) -> Result<Vec<Insn>, EbpfError> {
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
pub(super) fn prog_exec(
    maps: &Maps,
    tp: &Tracepoint,
    filter: &Filter,
) -> Result<Vec<Insn>, EbpfError> {
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
