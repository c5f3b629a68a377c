//! Seccomp programs from ordered rules: per system call, a list of rules
//! (argument comparisons ANDed, then a return value), the first rule that
//! matches deciding. This is the general form OCI profiles (runtime-spec
//! `linux.seccomp`, Docker and podman profiles) need; moat's own policies
//! use the specialised compiler of [`super::compile`].
//!
//! Layout of every program:
//! 1. architecture check: anything but `AUDIT_ARCH_X86_64` gets
//!    [`Rules::default_ret`];
//! 2. a binary search on the system call number over ranges that cover all
//!    2^32 values, so that x32 numbers (`__X32_SYSCALL_BIT`) and negative
//!    numbers land in ranges of their own and get the default too, numbers
//!    above [`Rules::newer_than`] get [`Rules::newer_ret`], and every other
//!    number reaches its block in about log2(ranges) comparisons;
//! 3. one block per distinct rule list: the rules in order, each
//!    comparison done on both 32-bit halves of the 64-bit argument, the
//!    default when none matched;
//! 4. the return instructions, one per distinct value, shared.
//!
//! The program is assembled back to front, so that every jump target is
//! known when the jump is written; a target beyond the 255 instructions a
//! conditional jump can skip is reached through an unconditional `ja`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    stmt, BPF_JMP_JEQ_K, BPF_JMP_JGE_K, BPF_JMP_JGT_K, BPF_LD_W_ABS, BPF_RET_K, MAX_INSNS,
};
use crate::plan::SockFilter;
use crate::syscalls::{AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};

/// `BPF_ALU | BPF_AND | BPF_K`.
pub const BPF_ALU_AND_K: u16 = 0x54;
/// `BPF_JMP | BPF_JA`: jump by `k`, unconditionally.
pub const BPF_JMP_JA: u16 = 0x05;

/// How an argument is compared with [`ArgCmp::value`] (libseccomp's
/// `SCMP_CMP_*`), unsigned and on all 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cmp {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `arg & mask == value`.
    MaskedEq {
        mask: u64,
    },
}

/// One comparison of argument `arg` (0 to 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArgCmp {
    pub arg: u8,
    pub cmp: Cmp,
    pub value: u64,
}

/// Return `ret` (a `SECCOMP_RET_*` value) when every comparison holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub args: Vec<ArgCmp>,
    pub ret: u32,
}

/// A whole filter for x86_64.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    /// For other architectures, x32 and negative numbers, numbers without
    /// rules, and calls none of whose rules matched.
    pub default_ret: u32,
    /// Native numbers above `newer_than` (and below the x32 bit) get
    /// `newer_ret` instead of the default: runc's answer, `ENOSYS`, lets a
    /// C library fall back from a call newer than the profile.
    pub newer_than: u32,
    pub newer_ret: u32,
    /// Native system call number to its rules, first match wins.
    pub syscalls: BTreeMap<u32, Vec<Rule>>,
}

/// Why a rule set could not be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("system call {nr}: argument index {arg} is out of range; system calls have arguments 0 to 5")]
    ArgIndex { nr: u32, arg: u8 },
    #[error("system call number {nr} has the x32 bit set; rules are for native x86_64 numbers")]
    NotNative { nr: u32 },
    #[error(
        "the filter would have {len} instructions, more than the kernel's limit of {MAX_INSNS}"
    )]
    ProgramTooLong { len: usize },
}

/// Offsets in `struct seccomp_data` (little endian).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
fn off_lo(arg: u8) -> u32 {
    16 + 8 * u32::from(arg)
}
fn off_hi(arg: u8) -> u32 {
    off_lo(arg) + 4
}

/// An instruction's place: how many instructions follow it in the finished
/// program (stable while the program grows at its front).
type Label = usize;

/// Builds the program from its last instruction to its first.
#[derive(Default)]
struct Asm {
    rev: Vec<SockFilter>,
    rets: HashMap<u32, Label>,
    /// Target to the nearest `ja` placed to reach it.
    trampolines: HashMap<Label, Label>,
}

impl Asm {
    fn push(&mut self, ins: SockFilter) -> Label {
        self.rev.push(ins);
        self.rev.len() - 1
    }

    /// The label of the instruction pushed last (the next one in program
    /// order after whatever is pushed now).
    fn last(&self) -> Label {
        self.rev.len() - 1
    }

    fn ret(&mut self, k: u32) -> Label {
        if let Some(&l) = self.rets.get(&k) {
            return l;
        }
        let l = self.push(stmt(BPF_RET_K, k));
        self.rets.insert(k, l);
        l
    }

    fn load(&mut self, off: u32) -> Label {
        self.push(stmt(BPF_LD_W_ABS, off))
    }

    fn and(&mut self, k: u32) -> Label {
        self.push(stmt(BPF_ALU_AND_K, k))
    }

    /// A conditional jump to `jt` / `jf`, with `ja` trampolines for targets
    /// more than 255 instructions away.
    fn jump(&mut self, code: u16, k: u32, mut jt: Label, mut jf: Label) -> Label {
        loop {
            let at = self.rev.len();
            let ot = at - jt - 1;
            let of = at - jf - 1;
            if ot <= 255 && of <= 255 {
                return self.push(SockFilter {
                    code,
                    jt: ot as u8,
                    jf: of as u8,
                    k,
                });
            }
            // A far target is reached through a `ja`: one already placed
            // for it when in reach, else a new one right after this jump
            // (nothing falls through into it). At most two rounds.
            let far = if ot > 255 { &mut jt } else { &mut jf };
            match self.trampolines.get(far) {
                Some(&ja) if at - ja - 1 <= 255 => *far = ja,
                _ => {
                    let ja = self.rev.len();
                    self.rev.push(stmt(BPF_JMP_JA, (ja - *far - 1) as u32));
                    self.trampolines.insert(*far, ja);
                    *far = ja;
                }
            }
        }
    }

    fn finish(mut self) -> Vec<SockFilter> {
        self.rev.reverse();
        self.rev
    }
}

/// Code for `cmp`: continue at `ok` when it holds, at `fail` when not.
fn emit_cmp(a: &mut Asm, c: &ArgCmp, ok: Label, fail: Label) -> Label {
    let (lo, hi) = (c.value as u32, (c.value >> 32) as u32);
    // Emitted back to front: the low word's test, its load, then the high
    // word's test(s) and load.
    match c.cmp {
        Cmp::Eq | Cmp::Ne => {
            let (t, f) = if c.cmp == Cmp::Eq {
                (ok, fail)
            } else {
                (fail, ok)
            };
            a.jump(BPF_JMP_JEQ_K, lo, t, f);
            let ld_lo = a.load(off_lo(c.arg));
            a.jump(BPF_JMP_JEQ_K, hi, ld_lo, f);
        }
        Cmp::Gt | Cmp::Ge => {
            let code = if c.cmp == Cmp::Gt {
                BPF_JMP_JGT_K
            } else {
                BPF_JMP_JGE_K
            };
            a.jump(code, lo, ok, fail);
            let ld_lo = a.load(off_lo(c.arg));
            let eq = a.jump(BPF_JMP_JEQ_K, hi, ld_lo, fail);
            a.jump(BPF_JMP_JGT_K, hi, ok, eq);
        }
        Cmp::Lt | Cmp::Le => {
            // arg < v is !(arg >= v); arg <= v is !(arg > v).
            let code = if c.cmp == Cmp::Lt {
                BPF_JMP_JGE_K
            } else {
                BPF_JMP_JGT_K
            };
            a.jump(code, lo, fail, ok);
            let ld_lo = a.load(off_lo(c.arg));
            let eq = a.jump(BPF_JMP_JEQ_K, hi, ld_lo, ok);
            a.jump(BPF_JMP_JGT_K, hi, fail, eq);
        }
        Cmp::MaskedEq { mask } => {
            let (mlo, mhi) = (mask as u32, (mask >> 32) as u32);
            a.jump(BPF_JMP_JEQ_K, lo, ok, fail);
            a.and(mlo);
            let ld_lo = a.load(off_lo(c.arg));
            if mhi == 0 && hi == 0 {
                // The high word always matches: skip its test.
                return ld_lo;
            }
            a.jump(BPF_JMP_JEQ_K, hi, ld_lo, fail);
            a.and(mhi);
        }
    }
    a.load(off_hi(c.arg))
}

/// Code for one system call's rules; returns its entry.
fn emit_rules(a: &mut Asm, rules: &[Rule], default: Label) -> Label {
    let mut next = default;
    for rule in rules.iter().rev() {
        let mut ok = a.ret(rule.ret);
        // ANDed: the last comparison is emitted first and leads to the
        // return; each earlier one leads to the one after it.
        for c in rule.args.iter().rev() {
            ok = emit_cmp(a, c, ok, next);
        }
        next = ok;
    }
    next
}

/// A binary search over `ranges` (sorted, covering all numbers; each with
/// the label its numbers go to), the number in the accumulator.
fn emit_search(a: &mut Asm, ranges: &[(u32, Label)]) -> Label {
    if ranges.len() == 1 {
        return ranges[0].1;
    }
    let mid = ranges.len() / 2;
    let hi = emit_search(a, &ranges[mid..]);
    let lo = emit_search(a, &ranges[..mid]);
    a.jump(BPF_JMP_JGE_K, ranges[mid].0, hi, lo)
}

/// Compiles `r` into a classic-BPF seccomp program.
pub fn compile(r: &Rules) -> Result<Vec<SockFilter>, RulesError> {
    for (&nr, rules) in &r.syscalls {
        if nr >= X32_SYSCALL_BIT {
            return Err(RulesError::NotNative { nr });
        }
        for c in rules.iter().flat_map(|rule| &rule.args) {
            if c.arg > 5 {
                return Err(RulesError::ArgIndex { nr, arg: c.arg });
            }
        }
    }
    let mut a = Asm::default();
    // Returns first (they end the program), in a fixed order.
    let rets: BTreeSet<u32> = r
        .syscalls
        .values()
        .flatten()
        .map(|rule| rule.ret)
        .chain([r.default_ret, r.newer_ret])
        .collect();
    for &k in &rets {
        a.ret(k);
    }
    let default = a.ret(r.default_ret);

    // One block per distinct rule list.
    let mut blocks: HashMap<&[Rule], Label> = HashMap::new();
    let mut target: BTreeMap<u32, Label> = BTreeMap::new();
    for (&nr, rules) in &r.syscalls {
        let l = match blocks.get(rules.as_slice()) {
            Some(&l) => l,
            None => {
                let l = emit_rules(&mut a, rules, default);
                blocks.insert(rules, l);
                l
            }
        };
        target.insert(nr, l);
    }

    // Ranges over all 2^32 numbers, neighbours with the same target merged.
    let newer = a.ret(r.newer_ret);
    let mut ranges: Vec<(u32, Label)> = Vec::new();
    let mut add = |from: u32, l: Label| {
        if ranges.last().map(|&(_, last)| last) != Some(l) {
            ranges.push((from, l));
        }
    };
    let mut nr = 0u32;
    for (&n, &l) in &target {
        if n > nr {
            add(nr, default);
        }
        add(n, l);
        nr = n + 1;
    }
    let newer_from = r.newer_than.saturating_add(1).max(nr);
    if newer_from > nr {
        add(nr, default);
    }
    if newer_from < X32_SYSCALL_BIT {
        add(newer_from, newer);
    }
    add(X32_SYSCALL_BIT, default);

    let search = emit_search(&mut a, &ranges);
    let after_arch = if search == a.last() {
        a.load(OFF_NR)
    } else {
        search // a single range: no need to look at the number
    };
    a.jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, after_arch, default);
    a.load(OFF_ARCH);
    let p = a.finish();
    if p.len() > MAX_INSNS {
        return Err(RulesError::ProgramTooLong { len: p.len() });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::{disassemble, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO};

    fn rules(syscalls: &[(u32, Vec<Rule>)]) -> Rules {
        Rules {
            default_ret: SECCOMP_RET_ERRNO | 1,
            newer_than: 300,
            newer_ret: SECCOMP_RET_ERRNO | 38,
            syscalls: syscalls.iter().cloned().collect(),
        }
    }

    /// The layout: arch check, search, blocks, shared returns. Semantics
    /// are checked by running programs in moat-oci's tests.
    #[test]
    fn layout_of_a_small_program() {
        let allow = |args: Vec<ArgCmp>| Rule {
            args,
            ret: SECCOMP_RET_ALLOW,
        };
        let gt = ArgCmp {
            arg: 1,
            cmp: Cmp::Gt,
            value: 0x1_0000_0002,
        };
        let masked = ArgCmp {
            arg: 0,
            cmp: Cmp::MaskedEq { mask: 0xff },
            value: 1,
        };
        let p = compile(&rules(&[
            (39, vec![allow(vec![])]),
            (62, vec![allow(vec![gt, masked])]),
        ]))
        .unwrap();
        assert_eq!(
            disassemble(&p),
            "\
0000 ld  arch
0001 jeq  0xc000003e, 2, 19
0002 ld  nr
0003 jge  0x3e, 6, 4  ; kill
0004 jge  0x27, 5, 19  ; getpid
0005 jge  0x28, 19, 17  ; sendfile
0006 jge  0x12d, 8, 7  ; fanotify_mark
0007 jge  0x3f, 19, 9  ; uname
0008 jge  0x40000000, 19, 18
0009 ld  args[1].hi
0010 jgt  0x1, 14, 11
0011 jeq  0x1, 12, 19
0012 ld  args[1].lo
0013 jgt  0x2, 14, 19
0014 ld  args[0].lo
0015 and  0xff
0016 jeq  0x1, 17, 19
0017 ret ALLOW
0018 ret ERRNO(38)
0019 ret ERRNO(1)
"
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = |arg| Rule {
            args: vec![ArgCmp {
                arg,
                cmp: Cmp::Eq,
                value: 0,
            }],
            ret: SECCOMP_RET_ALLOW,
        };
        assert_eq!(
            compile(&rules(&[(1, vec![bad(6)])]))
                .unwrap_err()
                .to_string(),
            "system call 1: argument index 6 is out of range; system calls have arguments 0 to 5"
        );
        assert_eq!(
            compile(&rules(&[(X32_SYSCALL_BIT | 1, vec![bad(0)])]))
                .unwrap_err()
                .to_string(),
            "system call number 1073741825 has the x32 bit set; rules are for native x86_64 numbers"
        );
    }
}
