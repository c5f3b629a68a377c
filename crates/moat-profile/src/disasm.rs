//! Finding `syscall` instructions and their numbers in x86_64 machine code.
//!
//! A linear sweep with iced-x86 tracks the value of `eax`/`rax` within a
//! basic block: `mov eax, imm`, `mov rax, imm` and `xor eax, eax` make it a
//! known constant, any other write (a call, a branch target, an instruction
//! that writes rax) makes it unknown. A `syscall` with a known constant is a
//! resolved site. A branch taken with a known constant is followed for a few
//! instructions, which catches glibc's shared `syscall` tails. Direct calls,
//! jumps and rip-relative `lea` of code addresses are recorded as edges of
//! the call graph (see [`crate::libcmap`]).

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

#[derive(Debug, Clone, Copy)]
enum Kind {
    Other,
    SetEax,
    Clobber,
    Syscall,
    CondBranch,
    Stop,
}

/// How far a branch taken with a known `eax` is followed.
const FOLLOW_LIMIT: usize = 24;

fn is_rax(r: Register) -> bool {
    r != Register::None && r.full_register() == Register::RAX
}

fn eax_constant(ins: &Instruction) -> Option<u64> {
    match ins.code() {
        Code::Mov_r32_imm32 if is_rax(ins.op0_register()) => Some(u64::from(ins.immediate32())),
        Code::Mov_r64_imm64 if is_rax(ins.op0_register()) => Some(ins.immediate64()),
        Code::Mov_rm64_imm32
            if ins.op0_kind() == OpKind::Register && is_rax(ins.op0_register()) =>
        {
            Some(ins.immediate32to64() as u64)
        }
        Code::Xor_r32_rm32 | Code::Xor_rm32_r32 | Code::Xor_r64_rm64 | Code::Xor_rm64_r64
            if ins.op0_kind() == OpKind::Register
                && ins.op1_kind() == OpKind::Register
                && is_rax(ins.op0_register())
                && ins.op0_register() == ins.op1_register() =>
        {
            Some(0)
        }
        _ => None,
    }
}

fn writes_rax(factory: &mut InstructionInfoFactory, ins: &Instruction) -> bool {
    let info = factory.info(ins);
    info.used_registers().iter().any(|u| {
        is_rax(u.register())
            && matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
    })
}

/// Sweeps `code`, loaded at virtual address `base`.
pub fn scan(code: &[u8], base: u64) -> CodeScan {
    let mut decoder = Decoder::with_ip(64, code, base, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let mut ins = Instruction::default();
    let mut stream: Vec<(u64, Kind)> = Vec::with_capacity(code.len() / 4);
    let mut branches: Vec<(u64, u64)> = Vec::new(); // (target, eax)
    let mut out = CodeScan::default();
    let mut eax: Option<u64> = None;
    let end = base + code.len() as u64;

    while decoder.can_decode() {
        decoder.decode_out(&mut ins);
        let ip = ins.ip();
        if ins.is_invalid() {
            eax = None;
            stream.push((ip, Kind::Stop));
            continue;
        }
        if ins.mnemonic() == Mnemonic::Syscall {
            out.sites.push(SyscallSite {
                addr: ip,
                nr: eax.and_then(|v| u32::try_from(v).ok()),
            });
            stream.push((ip, Kind::Syscall));
            eax = None;
            continue;
        }
        if ins.mnemonic() == Mnemonic::Lea && ins.is_ip_rel_memory_operand() {
            let target = ins.ip_rel_memory_address();
            if target >= base && target < end {
                out.edges.push((ip, target));
            }
        }
        let direct_target = match ins.op0_kind() {
            OpKind::NearBranch64 => Some(ins.near_branch64()),
            _ => None,
        };
        match ins.flow_control() {
            FlowControl::Call | FlowControl::IndirectCall => {
                if let Some(t) = direct_target {
                    out.edges.push((ip, t));
                }
                eax = None;
                stream.push((ip, Kind::Clobber));
            }
            FlowControl::UnconditionalBranch => {
                if let Some(t) = direct_target {
                    out.edges.push((ip, t));
                    if let Some(v) = eax {
                        branches.push((t, v));
                    }
                }
                eax = None;
                stream.push((ip, Kind::Stop));
            }
            FlowControl::ConditionalBranch => {
                if let (Some(t), Some(v)) = (direct_target, eax) {
                    branches.push((t, v));
                }
                stream.push((ip, Kind::CondBranch));
            }
            FlowControl::Return
            | FlowControl::IndirectBranch
            | FlowControl::Interrupt
            | FlowControl::Exception
            | FlowControl::XbeginXabortXend => {
                eax = None;
                stream.push((ip, Kind::Stop));
            }
            FlowControl::Next => {
                if let Some(v) = eax_constant(&ins) {
                    eax = Some(v);
                    stream.push((ip, Kind::SetEax));
                } else if writes_rax(&mut factory, &ins) {
                    eax = None;
                    stream.push((ip, Kind::Clobber));
                } else {
                    stream.push((ip, Kind::Other));
                }
            }
        }
    }

    // Follow branches taken with a known eax to a nearby `syscall`.
    for (target, value) in branches {
        let Ok(mut i) = stream.binary_search_by_key(&target, |(ip, _)| *ip) else {
            continue;
        };
        let limit = (i + FOLLOW_LIMIT).min(stream.len());
        while i < limit {
            match stream[i].1 {
                Kind::Other | Kind::CondBranch => {}
                Kind::Syscall => {
                    out.sites.push(SyscallSite {
                        addr: stream[i].0,
                        nr: u32::try_from(value).ok(),
                    });
                    break;
                }
                Kind::SetEax | Kind::Clobber | Kind::Stop => break,
            }
            i += 1;
        }
    }
    out
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
}
