//! Finding `syscall` instructions and their numbers in x86_64 machine code.
//!
//! A linear sweep with iced-x86 tracks constants in the general-purpose
//! registers within a run of instructions: `mov reg, imm`, `xor reg, reg`
//! and moves between registers carry a known constant, any other write (a
//! call, an unconditional jump, an instruction that writes the register)
//! makes it unknown. A `syscall` with a known `rax` is a resolved site. A
//! branch taken with known registers is followed for a few instructions,
//! which catches glibc's shared `syscall` tails. Direct calls, jumps and
//! rip-relative `lea` of code addresses are recorded as edges of the call
//! graph (see [`crate::libcmap`]); calls made with a constant in `eax` or
//! `edi` are kept to resolve calls to syscall wrappers.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};

/// One `syscall` instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallSite {
    pub addr: u64,
    /// The syscall number when it is a constant at this site.
    pub nr: Option<u32>,
}

/// What a sweep over one code region found.
#[derive(Debug, Default, Clone)]
pub struct CodeScan {
    /// Every `syscall` site; a site reached with several constants appears
    /// once per constant.
    pub sites: Vec<SyscallSite>,
    /// Direct call/jump edges and code references: (from, to).
    pub edges: Vec<(u64, u64)>,
    /// Calls made with a constant in `eax` or `edi` (the number register of
    /// Go's `syscall.Syscall*` and of libc's `syscall(2)`), and every call
    /// through a GOT slot: what resolves calls to syscall wrappers.
    pub calls: Vec<CallSite>,
    /// `jmp [rip+slot]` instructions (PLT stubs): (address, GOT slot).
    pub got_jumps: Vec<(u64, u64)>,
    /// Unresolved sites whose straight run of code, from its first
    /// instruction after a jump, return or trap (the run's start, second),
    /// is entered only by direct jumps that were all followed to the site:
    /// the unknown number of the linear sweep is no real path, unless the
    /// run's start is also a function's entry (which the caller checks).
    pub jump_entered: Vec<(u64, u64)>,
    /// Addresses of rip-relative memory operands that may be written.
    pub global_writes: Vec<u64>,
    /// 64-bit loads of a global into a register (`mov reg, [rip+x]`):
    /// (address, global). A GOT slot loaded so is a function pointer whose
    /// calls are followed only while the register keeps it.
    pub global_loads: Vec<(u64, u64)>,
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallTarget {
    /// `call rel32`.
    Direct(u64),
    /// `call [rip+slot]` (`-fno-plt`), or `call reg` with the register
    /// loaded from that slot.
    Got(u64),
}

/// One call instruction with what is known of its number registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSite {
    pub addr: u64,
    pub target: CallTarget,
    pub eax: Option<u64>,
    pub edi: Option<u64>,
    /// The address `eax` was loaded from, when it was loaded from a global
    /// (`mov rax, [rip+x]`): Go keeps some numbers in package variables.
    pub eax_global: Option<u64>,
    /// For `call reg`: where the register was loaded from its slot.
    pub loaded_at: Option<u64>,
}

impl CodeScan {
    /// Constant syscall numbers found.
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.sites.iter().filter_map(|s| s.nr)
    }

    /// Sites whose number could not be determined.
    pub fn unresolved(&self) -> usize {
        self.sites.iter().filter(|s| s.nr.is_none()).count()
    }
}

/// rbx, rbp, r12-r15: what a callee must preserve (System V ABI).
const CALLEE_SAVED: [usize; 6] = [3, 5, 12, 13, 14, 15];

/// How far a branch taken with a known `eax` is followed.
const FOLLOW_LIMIT: usize = 24;

fn is_rax(r: Register) -> bool {
    r != Register::None && r.full_register() == Register::RAX
}

/// The constant `ins` puts in the register `is_reg` matches, if it does.
fn reg_constant(ins: &Instruction, is_reg: fn(Register) -> bool) -> Option<u64> {
    match ins.code() {
        Code::Mov_r32_imm32 if is_reg(ins.op0_register()) => Some(u64::from(ins.immediate32())),
        Code::Mov_r64_imm64 if is_reg(ins.op0_register()) => Some(ins.immediate64()),
        Code::Mov_rm64_imm32
            if ins.op0_kind() == OpKind::Register && is_reg(ins.op0_register()) =>
        {
            Some(ins.immediate32to64() as u64)
        }
        Code::Mov_rm32_imm32
            if ins.op0_kind() == OpKind::Register && is_reg(ins.op0_register()) =>
        {
            Some(u64::from(ins.immediate32()))
        }
        Code::Xor_r32_rm32 | Code::Xor_rm32_r32 | Code::Xor_r64_rm64 | Code::Xor_rm64_r64
            if ins.op0_kind() == OpKind::Register
                && ins.op1_kind() == OpKind::Register
                && is_reg(ins.op0_register())
                && ins.op0_register() == ins.op1_register() =>
        {
            Some(0)
        }
        _ => None,
    }
}

/// Index of a general-purpose register (rax 0 .. r15 15) by its full form.
fn gpr(r: Register) -> Option<usize> {
    if r == Register::None {
        return None;
    }
    let i = (r.full_register() as u32).wrapping_sub(Register::RAX as u32);
    (i < 16).then_some(i as usize)
}

const RAX: usize = 0;
const RDI: usize = 7;

/// What `ins` does to the tracked constants: `Some((reg, value))` when it
/// sets one register to a constant or to another register's known value.
fn constant_write(ins: &Instruction, regs: &[Option<u64>; 16]) -> Option<(usize, Option<u64>)> {
    let any = |_: Register| true;
    if let Some(v) = reg_constant(ins, any) {
        return Some((gpr(ins.op0_register())?, Some(v)));
    }
    match ins.code() {
        Code::Mov_r64_rm64 | Code::Mov_rm64_r64 | Code::Mov_r32_rm32 | Code::Mov_rm32_r32
            if ins.op0_kind() == OpKind::Register && ins.op1_kind() == OpKind::Register =>
        {
            let dst = gpr(ins.op0_register())?;
            let src = regs[gpr(ins.op1_register())?];
            let wide = matches!(ins.code(), Code::Mov_r64_rm64 | Code::Mov_rm64_r64);
            Some((dst, src.map(|v| if wide { v } else { v & 0xffff_ffff })))
        }
        _ => None,
    }
}

/// Sweeps `code`, loaded at virtual address `base`. Constants are tracked
/// in every general-purpose register within a run of instructions, so that
/// `mov r9d, 20; ...; mov eax, r9d; syscall` is a resolved site.
pub fn scan(code: &[u8], base: u64) -> CodeScan {
    let mut decoder = Decoder::with_ip(64, code, base, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let mut ins = Instruction::default();
    let mut branches: Vec<(u64, [Option<u64>; 16])> = Vec::new();
    let mut out = CodeScan::default();
    let mut regs: [Option<u64>; 16] = [None; 16];
    // The global each register was loaded from, if it was, and where.
    let mut globals: [Option<(u64, u64)>; 16] = [None; 16];
    let end = base + code.len() as u64;
    // The start of the current run when it began after a stop.
    let mut after_stop = true;
    let mut run_start: Option<u64> = None;
    let mut candidates: Vec<(u64, u64)> = Vec::new();
    let mut jumps: Vec<(u64, bool)> = Vec::new(); // (target, registers known)
    let mut entries: Vec<u64> = Vec::new(); // call and lea targets

    while decoder.can_decode() {
        decoder.decode_out(&mut ins);
        let ip = ins.ip();
        if ins.is_invalid() {
            regs = [None; 16];
            globals = [None; 16];
            after_stop = true;
            run_start = None;
            continue;
        }
        if after_stop && !matches!(ins.mnemonic(), Mnemonic::Nop | Mnemonic::Int3) {
            after_stop = false;
            run_start = Some(ip);
        }
        if ins.mnemonic() == Mnemonic::Syscall {
            let nr = regs[RAX].and_then(|v| u32::try_from(v).ok());
            if let (None, Some(r)) = (nr, run_start) {
                candidates.push((ip, r));
            }
            run_start = None;
            out.sites.push(SyscallSite { addr: ip, nr });
            // The kernel clobbers rax (result), rcx and r11.
            regs[RAX] = None;
            regs[1] = None;
            regs[11] = None;
            continue;
        }
        if ins.mnemonic() == Mnemonic::Lea && ins.is_ip_rel_memory_operand() {
            let target = ins.ip_rel_memory_address();
            if target >= base && target < end {
                out.edges.push((ip, target));
                entries.push(target);
            }
        }
        let direct_target = match ins.op0_kind() {
            OpKind::NearBranch64 => Some(ins.near_branch64()),
            _ => None,
        };
        let (eax, edi) = (regs[RAX], regs[RDI]);
        match ins.flow_control() {
            FlowControl::Call | FlowControl::IndirectCall => {
                if let Some(t) = direct_target {
                    out.edges.push((ip, t));
                    entries.push(t);
                }
                run_start = None;
                let via = (ins.op0_kind() == OpKind::Register)
                    .then(|| gpr(ins.op0_register()).and_then(|r| globals[r]))
                    .flatten();
                let target = match direct_target {
                    Some(t) => Some(CallTarget::Direct(t)),
                    None if ins.is_ip_rel_memory_operand() => {
                        Some(CallTarget::Got(ins.ip_rel_memory_address()))
                    }
                    None => via.map(|(slot, _)| CallTarget::Got(slot)),
                };
                if let Some(target) = target {
                    let eax_global = globals[RAX].map(|(g, _)| g);
                    if eax.is_some()
                        || edi.is_some()
                        || eax_global.is_some()
                        || matches!(target, CallTarget::Got(_))
                    {
                        out.calls.push(CallSite {
                            addr: ip,
                            target,
                            eax,
                            edi,
                            eax_global,
                            loaded_at: via.map(|(_, at)| at),
                        });
                    }
                }
                regs = [None; 16];
                keep_callee_saved(&mut globals);
            }
            FlowControl::UnconditionalBranch => {
                if let Some(t) = direct_target {
                    out.edges.push((ip, t));
                    let known = regs.iter().any(Option::is_some);
                    jumps.push((t, known));
                    if known {
                        branches.push((t, regs));
                    }
                }
                regs = [None; 16];
                keep_callee_saved(&mut globals);
                after_stop = true;
                run_start = None;
            }
            FlowControl::ConditionalBranch => {
                if let Some(t) = direct_target {
                    let known = regs.iter().any(Option::is_some);
                    jumps.push((t, known));
                    if known {
                        branches.push((t, regs));
                    }
                }
            }
            FlowControl::IndirectBranch => {
                if ins.is_ip_rel_memory_operand() {
                    out.got_jumps.push((ip, ins.ip_rel_memory_address()));
                }
                regs = [None; 16];
                keep_callee_saved(&mut globals);
                after_stop = true;
                run_start = None;
            }
            FlowControl::Return
            | FlowControl::Interrupt
            | FlowControl::Exception
            | FlowControl::XbeginXabortXend => {
                regs = [None; 16];
                globals = [None; 16];
                after_stop = true;
                run_start = None;
            }
            FlowControl::Next => {
                if ins.is_ip_rel_memory_operand() && ins.op0_kind() == OpKind::Memory {
                    out.global_writes.push(ins.ip_rel_memory_address());
                }
                let loaded = match ins.code() {
                    Code::Mov_r64_rm64 | Code::Mov_r32_rm32
                        if ins.op1_kind() == OpKind::Memory && ins.is_ip_rel_memory_operand() =>
                    {
                        gpr(ins.op0_register()).map(|r| (r, ins.ip_rel_memory_address()))
                    }
                    _ => None,
                };
                let copied = match ins.code() {
                    Code::Mov_r64_rm64 | Code::Mov_rm64_r64
                        if ins.op0_kind() == OpKind::Register
                            && ins.op1_kind() == OpKind::Register =>
                    {
                        gpr(ins.op0_register())
                            .zip(gpr(ins.op1_register()))
                            .map(|(d, s)| (d, globals[s]))
                    }
                    _ => None,
                };
                if let Some((reg, value)) = constant_write(&ins, &regs) {
                    regs[reg] = value;
                    globals[reg] = None;
                } else {
                    clobber_written(&mut factory, &ins, &mut regs);
                    clobber_written(&mut factory, &ins, &mut globals);
                }
                if let Some((r, addr)) = loaded {
                    globals[r] = Some((addr, ip));
                    if ins.code() == Code::Mov_r64_rm64 {
                        out.global_loads.push((ip, addr));
                    }
                }
                if let Some((d, g)) = copied {
                    globals[d] = g;
                }
            }
        }
    }

    // Follow branches taken with known registers to a nearby `syscall`.
    let mut reached: Vec<(u64, u64)> = Vec::new(); // (target, site reached)
    for (target, carried) in branches {
        if target < base || target >= end {
            continue;
        }
        let from = (target - base) as usize;
        let mut regs = carried;
        let mut d = Decoder::with_ip(64, &code[from..], target, DecoderOptions::NONE);
        for _ in 0..FOLLOW_LIMIT {
            if !d.can_decode() {
                break;
            }
            d.decode_out(&mut ins);
            if ins.is_invalid() {
                break;
            }
            if ins.mnemonic() == Mnemonic::Syscall {
                out.sites.push(SyscallSite {
                    addr: ins.ip(),
                    nr: regs[RAX].and_then(|v| u32::try_from(v).ok()),
                });
                reached.push((target, ins.ip()));
                break;
            }
            match ins.flow_control() {
                FlowControl::Next => {
                    if let Some((reg, value)) = constant_write(&ins, &regs) {
                        regs[reg] = value;
                    } else {
                        clobber_written(&mut factory, &ins, &mut regs);
                    }
                }
                FlowControl::ConditionalBranch => {}
                _ => break,
            }
            if regs.iter().all(Option::is_none) {
                break;
            }
        }
    }
    entries.sort_unstable();
    for (site, start) in candidates {
        if entries.binary_search(&start).is_ok() {
            continue;
        }
        let into: Vec<&(u64, bool)> = jumps
            .iter()
            .filter(|(t, _)| *t >= start && *t <= site)
            .collect();
        let all_followed = !into.is_empty()
            && into
                .iter()
                .all(|(t, known)| *known && reached.iter().any(|(rt, rs)| rt == t && *rs == site));
        if all_followed {
            out.jump_entered.push((site, start));
        }
    }
    out
}

/// Forgets the globals held in registers a call may change. A function
/// pointer in a callee-saved register survives calls (the ABI) and jumps
/// within its function (a loop loads it once, before jumping to its
/// test); only a return, or a write, ends it.
fn keep_callee_saved(globals: &mut [Option<(u64, u64)>; 16]) {
    for (r, g) in globals.iter_mut().enumerate() {
        if !CALLEE_SAVED.contains(&r) {
            *g = None;
        }
    }
}

/// Forgets the registers `ins` writes.
fn clobber_written<T>(
    factory: &mut InstructionInfoFactory,
    ins: &Instruction,
    regs: &mut [Option<T>; 16],
) {
    let info = factory.info(ins);
    for u in info.used_registers() {
        if matches!(
            u.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        ) {
            if let Some(i) = gpr(u.register()) {
                regs[i] = None;
            }
        }
    }
}

/// Whether the `syscall` at `site` takes its number from the register
/// `arg` holds on entry to the function starting at `start` (as libc's
/// `syscall(2)` does with `rdi`, Go's `Syscall6` with `rax`): a straight
/// run of instructions from `start` to `site` with no branch or call, in
/// which the number register is either never written (`arg` is rax) or
/// written once by a move from the untouched `arg` register.
pub fn number_from_entry(code: &[u8], base: u64, start: u64, site: u64, arg: Register) -> bool {
    if start < base || site <= start || site >= base + code.len() as u64 {
        return false;
    }
    let from = (start - base) as usize;
    let to = (site - base) as usize;
    let stop = (to + 16).min(code.len());
    let mut decoder = Decoder::with_ip(64, &code[from..stop], start, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let mut ins = Instruction::default();
    let arg_full = arg.full_register();
    let mut arg_intact = true;
    let mut rax_is_arg = arg_full == Register::RAX;
    while decoder.can_decode() {
        decoder.decode_out(&mut ins);
        if ins.is_invalid() {
            return false;
        }
        if ins.ip() == site {
            return ins.mnemonic() == Mnemonic::Syscall && rax_is_arg;
        }
        if ins.ip() > site || ins.flow_control() != FlowControl::Next {
            return false;
        }
        let copies_arg = matches!(
            ins.code(),
            Code::Mov_r64_rm64 | Code::Mov_rm64_r64 | Code::Mov_r32_rm32 | Code::Mov_rm32_r32
        ) && ins.op0_kind() == OpKind::Register
            && ins.op1_kind() == OpKind::Register
            && is_rax(ins.op0_register())
            && ins.op1_register().full_register() == arg_full;
        if copies_arg {
            rax_is_arg = arg_intact;
            continue;
        }
        let info = factory.info(&ins);
        for u in info.used_registers() {
            let written = matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            );
            if written && u.register() != Register::None {
                let full = u.register().full_register();
                if full == Register::RAX {
                    rax_is_arg = false;
                }
                if full == arg_full {
                    arg_intact = false;
                    if arg_full == Register::RAX {
                        rax_is_arg = false;
                    }
                }
            }
        }
    }
    false
}

/// The numbers a `syscall` at `site` can take when, in the function at
/// `start` (`len` bytes), the last write to `rax` before it copies a
/// callee-saved register (rbx, rbp, r12-r15) that the function only ever
/// sets to constants (saving and restoring it with push/pop aside): the
/// compiler keeps a constant number there across a loop or a call. `None`
/// when that is not the case.
pub fn numbers_via_saved_register(
    code: &[u8],
    base: u64,
    start: u64,
    len: u64,
    site: u64,
) -> Option<Vec<u64>> {
    let end = start.checked_add(len)?;
    if start < base || end > base + code.len() as u64 || site < start || site >= end {
        return None;
    }
    let bytes = &code[(start - base) as usize..(end - base) as usize];
    let mut d = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let mut ins = Instruction::default();
    let mut source: Option<usize> = None; // register the last rax write copied
    while d.can_decode() {
        d.decode_out(&mut ins);
        if ins.is_invalid() {
            return None;
        }
        if ins.ip() == site {
            break;
        }
        if ins.ip() > site {
            return None;
        }
        if ins.flow_control() == FlowControl::Next {
            if let Some((RAX, _)) = constant_write(&ins, &[None; 16]) {
                source = match ins.code() {
                    Code::Mov_r64_rm64
                    | Code::Mov_rm64_r64
                    | Code::Mov_r32_rm32
                    | Code::Mov_rm32_r32 => gpr(ins.op1_register()),
                    _ => None,
                };
            } else if factory.info(&ins).used_registers().iter().any(|u| {
                gpr(u.register()) == Some(RAX)
                    && matches!(
                        u.access(),
                        OpAccess::Write
                            | OpAccess::CondWrite
                            | OpAccess::ReadWrite
                            | OpAccess::ReadCondWrite
                    )
            }) {
                source = None;
            }
        } else {
            source = None;
        }
    }
    // rcx and r11 are clobbered by `syscall` itself.
    let reg = source.filter(|r| *r != RAX && *r != 1 && *r != 11)?;
    let callee_saved = matches!(reg, 3 | 5 | 12..=15);
    // Every write to it in the whole function.
    let mut d = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
    let mut values = Vec::new();
    // Another register may hold an argument on entry: it must be set to a
    // constant before the first branch of the function.
    let mut prefix = true;
    let mut set_in_prefix = callee_saved;
    while d.can_decode() {
        d.decode_out(&mut ins);
        if ins.is_invalid() {
            return None;
        }
        if matches!(ins.mnemonic(), Mnemonic::Push | Mnemonic::Pop) {
            continue;
        }
        if let Some((r, v)) = constant_write(&ins, &[None; 16]) {
            if r == reg {
                values.push(v?);
                set_in_prefix |= prefix;
                continue;
            }
        }
        if ins.flow_control() != FlowControl::Next {
            prefix = false;
        }
        let writes = factory.info(&ins).used_registers().iter().any(|u| {
            gpr(u.register()) == Some(reg)
                && matches!(
                    u.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                )
        });
        if writes {
            return None;
        }
    }
    (!values.is_empty() && set_in_prefix).then_some(values)
}

/// Whether the function at `start` (`len` bytes) contains `mov reg32, imm`.
pub fn function_sets(
    code: &[u8],
    base: u64,
    start: u64,
    len: u64,
    reg: Register,
    imm: u64,
) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    if start < base || end > base + code.len() as u64 {
        return false;
    }
    let bytes = &code[(start - base) as usize..(end - base) as usize];
    let mut d = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    while d.can_decode() {
        d.decode_out(&mut ins);
        if ins.code() == Code::Mov_r32_imm32
            && ins.op0_register() == reg
            && u64::from(ins.immediate32()) == imm
        {
            return true;
        }
    }
    false
}

/// Whether the function at `start` begins (within its first four
/// instructions) with `cmp edi, imm`: how glibc's handler of its internal
/// `SIGSETXID` signal (33) starts.
pub fn starts_with_cmp_edi(code: &[u8], base: u64, start: u64, imm: u32) -> bool {
    if start < base || start >= base + code.len() as u64 {
        return false;
    }
    let from = (start - base) as usize;
    let mut d = Decoder::with_ip(64, &code[from..], start, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    for _ in 0..4 {
        if !d.can_decode() {
            return false;
        }
        d.decode_out(&mut ins);
        if ins.mnemonic() == Mnemonic::Cmp
            && ins.op0_kind() == OpKind::Register
            && ins.op0_register() == Register::EDI
            && matches!(ins.op1_kind(), OpKind::Immediate8to32 | OpKind::Immediate32)
            && ins.immediate(1) == u64::from(imm)
        {
            return true;
        }
        if ins.flow_control() != FlowControl::Next {
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_eax_before_syscall() {
        // mov eax, 1; syscall; ret
        let code = [0xb8, 1, 0, 0, 0, 0x0f, 0x05, 0xc3];
        let s = scan(&code, 0x1000);
        assert_eq!(
            s.sites,
            vec![SyscallSite {
                addr: 0x1005,
                nr: Some(1)
            }]
        );
    }

    #[test]
    fn xor_eax_is_read() {
        // xor eax, eax; syscall
        let code = [0x31, 0xc0, 0x0f, 0x05];
        let s = scan(&code, 0);
        assert_eq!(s.numbers().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn clobbered_eax_is_unresolved() {
        // mov eax, 60; mov rax, rdi; syscall
        let code = [0xb8, 60, 0, 0, 0, 0x48, 0x89, 0xf8, 0x0f, 0x05];
        let s = scan(&code, 0);
        assert_eq!(s.unresolved(), 1);
        assert_eq!(s.numbers().count(), 0);
    }

    #[test]
    fn branch_with_constant_reaches_shared_tail() {
        // 0: mov eax, 231; jmp 9 ; 7: ud2 (2 bytes) ; 9: syscall ; 11: ret
        let code = [0xb8, 231, 0, 0, 0, 0xeb, 0x02, 0x0f, 0x0b, 0x0f, 0x05, 0xc3];
        let s = scan(&code, 0);
        let nrs: Vec<_> = s.numbers().collect();
        assert_eq!(nrs, vec![231]);
        assert_eq!(s.unresolved(), 1, "the fall-in path itself is unknown");
    }

    #[test]
    fn calls_are_edges() {
        // call +0 (e8 00000000) ; ret
        let code = [0xe8, 0, 0, 0, 0, 0xc3];
        let s = scan(&code, 0x100);
        assert_eq!(s.edges, vec![(0x100, 0x105)]);
    }

    #[test]
    fn calls_with_constant_number_registers_are_kept() {
        // mov edi, 318; xor eax, eax; call +0 ; mov eax, 3; call [rip+0x10]; jmp [rip+0x20]
        let code = [
            0xbf, 0x3e, 0x01, 0, 0, 0x31, 0xc0, 0xe8, 0, 0, 0, 0, 0xb8, 3, 0, 0, 0, 0xff, 0x15,
            0x10, 0, 0, 0, 0xff, 0x25, 0x20, 0, 0, 0,
        ];
        let s = scan(&code, 0);
        assert_eq!(
            s.calls,
            vec![
                CallSite {
                    addr: 7,
                    target: CallTarget::Direct(12),
                    eax: Some(0),
                    edi: Some(318),
                    eax_global: None,
                    loaded_at: None,
                },
                CallSite {
                    addr: 17,
                    target: CallTarget::Got(23 + 0x10),
                    eax: Some(3),
                    edi: None,
                    eax_global: None,
                    loaded_at: None,
                },
            ]
        );
        assert_eq!(s.got_jumps, vec![(23, 29 + 0x20)]);
    }

    #[test]
    fn calls_through_a_register_loaded_from_a_slot_are_followed() {
        // A static-pie calling libc's syscall() in a loop, as rustc emits:
        // mov r14, [rip+0x100]; mov edi, 0x126; call r14; call +0;
        // mov edi, 0x127; call r14; mov rax, [rip+0x200]; call +0; call rax
        let code = [
            0x4c, 0x8b, 0x35, 0, 1, 0, 0, 0xbf, 0x26, 1, 0, 0, 0x41, 0xff, 0xd6, 0xe8, 0, 0, 0, 0,
            0xbf, 0x27, 1, 0, 0, 0x41, 0xff, 0xd6, 0x48, 0x8b, 0x05, 0, 2, 0, 0, 0xe8, 0, 0, 0, 0,
            0xff, 0xd0,
        ];
        let s = scan(&code, 0);
        let via_r14 = |addr, nr| CallSite {
            addr,
            target: CallTarget::Got(0x107),
            eax: None,
            edi: Some(nr),
            eax_global: None,
            loaded_at: Some(0),
        };
        assert_eq!(
            s.calls,
            vec![
                via_r14(12, 0x126),
                // r14 is callee-saved: the pointer survives the call at 15.
                via_r14(25, 0x127),
                CallSite {
                    addr: 35,
                    target: CallTarget::Direct(40),
                    eax: None,
                    edi: None,
                    eax_global: Some(0x223),
                    loaded_at: None,
                },
                // rax is not: `call rax` after a call is not attributed.
            ]
        );
        assert_eq!(s.global_loads, vec![(0, 0x107), (28, 0x223)]);
    }

    #[test]
    fn wrappers_taking_the_number_from_an_argument_are_recognised() {
        // glibc's syscall(): endbr64; mov rax, rdi; mov rdi, rsi; syscall
        let libc = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0x0f, 0x05,
        ];
        assert!(number_from_entry(&libc, 0, 0, 10, Register::RDI));
        // mov rdi, rsi first: the number is no longer the first argument.
        let clobbered = [0x48, 0x89, 0xf7, 0x48, 0x89, 0xf8, 0x0f, 0x05];
        assert!(!number_from_entry(&clobbered, 0, 0, 6, Register::RDI));
        // Go's Syscall6: mov r10, rsi; syscall (the number is already in rax).
        let go = [0x49, 0x89, 0xf2, 0x0f, 0x05];
        assert!(number_from_entry(&go, 0, 0, 3, Register::RAX));
        assert!(!number_from_entry(&go, 0, 0, 3, Register::RDI));
        // A branch before the site: not a plain wrapper.
        let branchy = [0x74, 0x00, 0x48, 0x89, 0xf8, 0x0f, 0x05];
        assert!(!number_from_entry(&branchy, 0, 0, 5, Register::RDI));
    }
}
