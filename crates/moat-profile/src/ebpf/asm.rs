//! A tiny eBPF assembler: instruction encoding, labels and forward jumps,
//! and map references (`BPF_PSEUDO_MAP_FD`), enough for the recorder's
//! hand-written programs (no clang or libbpf on these machines).
//!
//! Encoding (kernel `Documentation/bpf/standardization/instruction-set.rst`):
//! 8 bytes per instruction, `opcode`, `dst:4 | src:4 << 4`, `off: i16`,
//! `imm: i32`, little endian; a 64-bit immediate load takes two slots.

use std::collections::HashMap;

/// A register, r0..r10 (r10 is the read-only frame pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(pub u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const R8: Reg = Reg(8);
pub const R9: Reg = Reg(9);
pub const FP: Reg = Reg(10);

// Instruction classes.
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
// Sizes and modes.
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
const ATOMIC: u8 = 0xc0;
// Operand source.
const K: u8 = 0x00;
const X: u8 = 0x08;

/// Access width of a load or store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    W = 0x00,
    H = 0x08,
    B = 0x10,
    DW = 0x18,
}

/// ALU operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    Or = 0x40,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Neg = 0x80,
    Mov = 0xb0,
}

/// Conditional jumps (unsigned unless named `S..`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    Set = 0x40,
    Ne = 0x50,
    Sgt = 0x60,
    Sge = 0x70,
    Lt = 0xa0,
    Le = 0xb0,
    Slt = 0xc0,
    Sle = 0xd0,
}

/// Kernel helper functions used (`enum bpf_func_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helper {
    MapLookupElem = 1,
    MapUpdateElem = 2,
    MapDeleteElem = 3,
    GetCurrentPidTgid = 14,
    GetCurrentUidGid = 15,
    GetCurrentComm = 16,
    ProbeReadUser = 112,
    ProbeReadKernel = 113,
    ProbeReadKernelStr = 115,
    ProbeReadUserStr = 114,
}

/// `BPF_PSEUDO_MAP_FD`: the `ld_imm64` immediate is a map fd.
pub const PSEUDO_MAP_FD: u8 = 1;
/// `BPF_ADD | BPF_FETCH` for atomic instructions.
const FETCH: i32 = 0x01;

/// One 8-byte instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst: dst.0,
            src: src.0,
            off,
            imm,
        }
    }

    /// The wire form the kernel reads.
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

/// Why a program could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("jump to undefined label {0:?}")]
    UndefinedLabel(String),
    #[error("label {0:?} defined twice")]
    DuplicateLabel(String),
    #[error("jump to {label:?} is out of range ({distance} instructions)")]
    JumpRange { label: String, distance: i64 },
}

/// A program under construction. Jumps name labels; [`Asm::finish`]
/// resolves them.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<String, usize>,
    fixups: Vec<(usize, String)>,
    duplicate: Option<String>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    fn push(&mut self, i: Insn) -> &mut Self {
        self.insns.push(i);
        self
    }

    /// Number of instruction slots so far.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// Defines `name` at the next instruction.
    pub fn label(&mut self, name: &str) -> &mut Self {
        if self
            .labels
            .insert(name.to_string(), self.insns.len())
            .is_some()
        {
            self.duplicate.get_or_insert_with(|| name.to_string());
        }
        self
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::new(ALU64 | Alu::Mov as u8 | K, dst, R0, 0, imm))
    }

    /// `dst = src` (64-bit).
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(Insn::new(ALU64 | Alu::Mov as u8 | X, dst, src, 0, 0))
    }

    /// `dst = (u32) src`: a 32-bit move zero-extends.
    pub fn mov32(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(Insn::new(ALU | Alu::Mov as u8 | X, dst, src, 0, 0))
    }

    /// `dst op= imm` (64-bit).
    pub fn alu_imm(&mut self, op: Alu, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::new(ALU64 | op as u8 | K, dst, R0, 0, imm))
    }

    /// `dst op= src` (64-bit).
    pub fn alu(&mut self, op: Alu, dst: Reg, src: Reg) -> &mut Self {
        self.push(Insn::new(ALU64 | op as u8 | X, dst, src, 0, 0))
    }

    /// `dst = imm64` (two slots).
    pub fn ld_imm64(&mut self, dst: Reg, imm: u64) -> &mut Self {
        self.push(Insn::new(
            LD | Size::DW as u8 | IMM,
            dst,
            R0,
            0,
            imm as u32 as i32,
        ));
        self.push(Insn::new(0, R0, R0, 0, (imm >> 32) as u32 as i32))
    }

    /// `dst = map` (a map fd the kernel turns into the map's address).
    pub fn ld_map_fd(&mut self, dst: Reg, fd: i32) -> &mut Self {
        self.push(Insn::new(
            LD | Size::DW as u8 | IMM,
            dst,
            Reg(PSEUDO_MAP_FD),
            0,
            fd,
        ));
        self.push(Insn::new(0, R0, R0, 0, 0))
    }

    /// `dst = *(size *)(src + off)`.
    pub fn ldx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.push(Insn::new(LDX | MEM | size as u8, dst, src, off, 0))
    }

    /// `*(size *)(dst + off) = src`.
    pub fn stx(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(Insn::new(STX | MEM | size as u8, dst, src, off, 0))
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn st(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Self {
        self.push(Insn::new(ST | MEM | size as u8, dst, R0, off, imm))
    }

    /// `lock *(u64 *)(dst + off) += src`.
    pub fn atomic_add(&mut self, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(Insn::new(STX | ATOMIC | Size::DW as u8, dst, src, off, 0))
    }

    /// `src = atomic_fetch_add((u64 *)(dst + off), src)`.
    pub fn atomic_fetch_add(&mut self, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(Insn::new(
            STX | ATOMIC | Size::DW as u8,
            dst,
            src,
            off,
            FETCH,
        ))
    }

    /// `call helper`.
    pub fn call(&mut self, helper: Helper) -> &mut Self {
        self.push(Insn::new(JMP | 0x80, R0, R0, 0, helper as i32))
    }

    /// `exit` (returns r0).
    pub fn exit(&mut self) -> &mut Self {
        self.push(Insn::new(JMP | 0x90, R0, R0, 0, 0))
    }

    /// `goto label`.
    pub fn ja(&mut self, label: &str) -> &mut Self {
        self.fixups.push((self.insns.len(), label.to_string()));
        self.push(Insn::new(JMP, R0, R0, 0, 0))
    }

    /// `if dst cond imm goto label` (64-bit compare).
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, label: &str) -> &mut Self {
        self.fixups.push((self.insns.len(), label.to_string()));
        self.push(Insn::new(JMP | cond as u8 | K, dst, R0, 0, imm))
    }

    /// `if dst cond src goto label` (64-bit compare).
    pub fn jmp(&mut self, cond: Cond, dst: Reg, src: Reg, label: &str) -> &mut Self {
        self.fixups.push((self.insns.len(), label.to_string()));
        self.push(Insn::new(JMP | cond as u8 | X, dst, src, 0, 0))
    }

    /// Resolves the jumps and returns the instructions.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        if let Some(name) = self.duplicate {
            return Err(AsmError::DuplicateLabel(name));
        }
        for (at, label) in &self.fixups {
            let target = *self
                .labels
                .get(label)
                .ok_or_else(|| AsmError::UndefinedLabel(label.clone()))?;
            let distance = target as i64 - *at as i64 - 1;
            let off = i16::try_from(distance).map_err(|_| AsmError::JumpRange {
                label: label.clone(),
                distance,
            })?;
            self.insns[*at].off = off;
        }
        Ok(self.insns)
    }
}

/// The bytes of a program.
pub fn encode(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(Insn::encode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(a: Asm) -> Vec<u8> {
        encode(&a.finish().unwrap())
    }

    #[test]
    fn golden_encodings() {
        // Worked out by hand from the kernel's encoding (BPF_* in
        // include/uapi/linux/bpf.h and the macros of include/linux/filter.h);
        // the verifier test loads programs built from the same encoder.
        let mut a = Asm::new();
        a.mov_imm(R0, 0); // b7 00 00 00 00 00 00 00
        a.mov(R6, R1); // bf 16 00 00 00 00 00 00
        a.ldx(Size::DW, R7, R6, 8); // 79 67 08 00 00 00 00 00
        a.stx(Size::W, FP, -4, R0); // 63 0a fc ff 00 00 00 00
        a.st(Size::DW, FP, -16, 1); // 7a 0a f0 ff 01 00 00 00
        a.alu_imm(Alu::And, R1, 0xffff); // 57 01 00 00 ff ff 00 00
        a.alu_imm(Alu::Add, R2, -4); // 07 02 00 00 fc ff ff ff
        a.mov32(R1, R0); // bc 01 00 00 00 00 00 00
        a.call(Helper::MapLookupElem); // 85 00 00 00 01 00 00 00
        a.atomic_add(R0, 0, R1); // db 10 00 00 00 00 00 00
        a.atomic_fetch_add(R0, 8, R1); // db 10 08 00 01 00 00 00
        a.exit(); // 95 00 00 00 00 00 00 00
        let want: Vec<u8> = [
            "b700000000000000",
            "bf16000000000000",
            "7967080000000000",
            "630afcff00000000",
            "7a0af0ff01000000",
            "57010000ffff0000",
            "07020000fcffffff",
            "bc01000000000000",
            "8500000001000000",
            "db10000000000000",
            "db10080001000000",
            "9500000000000000",
        ]
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect();
        assert_eq!(bytes(a), want);
    }

    #[test]
    fn wide_immediates_and_map_fds_take_two_slots() {
        let mut a = Asm::new();
        a.ld_imm64(R2, 0x1122_3344_5566_7788);
        a.ld_map_fd(R1, 7);
        let insns = a.finish().unwrap();
        assert_eq!(insns.len(), 4);
        assert_eq!(
            insns[0].encode(),
            [0x18, 0x02, 0, 0, 0x88, 0x77, 0x66, 0x55]
        );
        assert_eq!(insns[1].encode(), [0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11]);
        // src_reg = BPF_PSEUDO_MAP_FD (1), imm = the fd.
        assert_eq!(insns[2].encode(), [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        assert_eq!(insns[3].encode(), [0; 8]);
    }

    #[test]
    fn jumps_resolve_forwards_and_backwards() {
        let mut a = Asm::new();
        a.label("top");
        a.jmp_imm(Cond::Eq, R1, 41, "out"); // 0: +2
        a.jmp(Cond::Gt, R1, R2, "top"); // 1: -2
        a.ja("out"); // 2: +0
        a.label("out");
        a.exit();
        let insns = a.finish().unwrap();
        assert_eq!(insns[0].encode(), [0x15, 0x01, 2, 0, 41, 0, 0, 0]);
        assert_eq!(insns[1].encode(), [0x2d, 0x21, 0xfe, 0xff, 0, 0, 0, 0]);
        assert_eq!(insns[2].encode(), [0x05, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn label_errors() {
        let mut a = Asm::new();
        a.ja("nowhere");
        assert_eq!(
            a.finish().unwrap_err().to_string(),
            "jump to undefined label \"nowhere\""
        );
        let mut a = Asm::new();
        a.label("x").label("x").exit();
        assert_eq!(
            a.finish().unwrap_err().to_string(),
            "label \"x\" defined twice"
        );
    }
}
