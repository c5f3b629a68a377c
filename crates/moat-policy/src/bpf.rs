//! The seccomp BPF compiler: from the allowed system calls and argument
//! conditions of a policy to a classic-BPF program.
//!
//! Layout of every program:
//! 1. architecture check: anything but `AUDIT_ARCH_X86_64` is killed;
//! 2. x32 check: numbers with `__X32_SYSCALL_BIT` (and negative numbers) are killed;
//! 3. numbers above the highest known call fail with `ENOSYS` (so that C
//!    libraries fall back from calls newer than the table);
//! 4. one block per system call with argument conditions (`socket` families,
//!    `clone` flags, `ioctl` requests; `clone3` fails with `ENOSYS` when
//!    `clone` is conditioned, because its flags live in memory a filter
//!    cannot read, or when `clone` is allowed and `clone3` is not, so that
//!    the C library falls back to `clone`);
//! 5. the remaining calls as number ranges, either the allowed ranges
//!    falling through to the default action or the denied ranges falling
//!    through to allow, whichever program is shorter. Numbers the table does
//!    not know inside the range (the kernel answers `ENOSYS` for them anyway)
//!    are merged into whichever neighbouring range makes the program shorter.

pub mod rules;

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{DefaultAction, IoctlRule, Syscalls};
use crate::plan::SockFilter;
use crate::syscalls::{self, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
pub const BPF_LD_W_ABS: u16 = 0x20;
pub const BPF_JMP_JEQ_K: u16 = 0x15;
pub const BPF_JMP_JGT_K: u16 = 0x25;
pub const BPF_JMP_JGE_K: u16 = 0x35;
pub const BPF_JMP_JSET_K: u16 = 0x45;
pub const BPF_RET_K: u16 = 0x06;

// Seccomp return values (linux/seccomp.h).
pub const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
pub const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

pub const EPERM: u32 = 1;
pub const ENOSYS: u32 = 38;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of `args[i]` (little endian).
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

/// The kernel's limit on filter length (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// Why a filter could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BpfError {
    /// A conditional block is longer than a BPF jump can skip.
    #[error("too many values in the `{syscall}` condition ({count}); at most 200 fit in one filter block")]
    BlockTooLong { syscall: &'static str, count: usize },
    /// An allow list names a request no policy may allow.
    #[error("ioctl request {name} ({request:#x}) is never allowed: {why}; remove it from `conditions.ioctl.allow`")]
    NeverAllowedIoctl {
        name: &'static str,
        request: u32,
        why: &'static str,
    },
    /// The whole program exceeds `BPF_MAXINSNS`.
    #[error(
        "the filter would have {len} instructions, more than the kernel's limit of {MAX_INSNS}"
    )]
    ProgramTooLong { len: usize },
}

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// The seccomp return value of a policy's default action.
pub fn default_ret(action: DefaultAction) -> u32 {
    match action {
        DefaultAction::Errno => SECCOMP_RET_ERRNO | EPERM,
        DefaultAction::Kill => SECCOMP_RET_KILL_PROCESS,
        DefaultAction::Log => SECCOMP_RET_LOG,
    }
}

fn enosys_ret(action: DefaultAction) -> u32 {
    match action {
        DefaultAction::Errno => SECCOMP_RET_ERRNO | ENOSYS,
        other => default_ret(other),
    }
}

fn nr(name: &str) -> u32 {
    syscalls::number(name).unwrap_or_else(|| panic!("`{name}` missing from the syscall table"))
}

/// Whether `clone3` answers `ENOSYS` whatever the default action: when
/// `clone` is allowed and either `clone` is conditioned (a filter cannot
/// read `clone3`'s flags, which live in memory) or `clone3` is not allowed.
/// The C library then falls back to `clone`, so threads and `fork` work
/// instead of failing with `EPERM` or dying.
pub fn clone3_enosys(s: &Syscalls) -> bool {
    s.allow.contains("clone") && (s.conditions.clone_deny_flags != 0 || !s.allow.contains("clone3"))
}

/// Compile the syscall section of a policy into a BPF program.
pub fn compile(s: &Syscalls) -> Result<Vec<SockFilter>, BpfError> {
    let deny = default_ret(s.default_action);
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        jump(BPF_JMP_JGT_K, syscalls::max_number(), 0, 1),
        stmt(BPF_RET_K, enosys_ret(s.default_action)),
    ];

    let allowed: BTreeSet<u32> = s.allow.iter().map(|n| nr(n)).collect();
    let mut handled: BTreeSet<u32> = BTreeSet::new();
    let c = &s.conditions;

    if let Some(families) = &c.socket_families {
        if allowed.contains(&nr("socket")) {
            let vals: Vec<u32> = families.iter().copied().collect();
            p.extend(allow_if_one_of("socket", nr("socket"), 0, &vals, deny)?);
            handled.insert(nr("socket"));
        }
    }
    if c.clone_deny_flags != 0 && allowed.contains(&nr("clone")) {
        p.extend([
            jump(BPF_JMP_JEQ_K, nr("clone"), 0, 4),
            stmt(BPF_LD_W_ABS, off_arg_lo(0)),
            jump(BPF_JMP_JSET_K, c.clone_deny_flags, 0, 1),
            stmt(BPF_RET_K, deny),
            stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
        ]);
        handled.insert(nr("clone"));
    }
    if clone3_enosys(s) {
        p.extend([
            jump(BPF_JMP_JEQ_K, nr("clone3"), 0, 1),
            stmt(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS),
        ]);
        handled.insert(nr("clone3"));
    }
    if let Some(n) = c.ioctl.allows_never_allowed() {
        return Err(BpfError::NeverAllowedIoctl {
            name: n.name,
            request: n.request,
            why: n.why,
        });
    }
    if allowed.contains(&nr("ioctl")) {
        // Terminal injection (TIOCSTI, TIOCLINUX) is denied whatever the
        // policy says; the low 32 bits are compared, as the kernel reads them.
        match &c.ioctl.enforced() {
            IoctlRule::Any => {}
            IoctlRule::Allow(reqs) => {
                let vals: Vec<u32> = reqs.iter().copied().collect();
                p.extend(allow_if_one_of("ioctl", nr("ioctl"), 1, &vals, deny)?);
                handled.insert(nr("ioctl"));
            }
            IoctlRule::Deny(reqs) => {
                let vals: Vec<u32> = reqs.iter().copied().collect();
                p.extend(deny_if_one_of("ioctl", nr("ioctl"), 1, &vals, deny)?);
                handled.insert(nr("ioctl"));
            }
        }
    }

    // Classify every number up to the highest known one.
    let known: BTreeSet<u32> = syscalls::X86_64.iter().map(|&(_, n)| n).collect();
    let mut class: BTreeMap<u32, Option<bool>> = BTreeMap::new();
    for n in 0..=syscalls::max_number() {
        let v = if handled.contains(&n) || !known.contains(&n) {
            None // don't care
        } else {
            Some(allowed.contains(&n))
        };
        class.insert(n, v);
    }
    let allow_ranges = ranges(&class, true);
    let deny_ranges = ranges(&class, false);
    let cost =
        |r: &[(u32, u32)]| -> usize { r.iter().map(|(a, b)| if a == b { 2 } else { 3 }).sum() };
    if cost(&allow_ranges) <= cost(&deny_ranges) {
        emit_ranges(&mut p, &allow_ranges, SECCOMP_RET_ALLOW);
        p.push(stmt(BPF_RET_K, deny));
    } else {
        emit_ranges(&mut p, &deny_ranges, deny);
        p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    }
    if p.len() > MAX_INSNS {
        return Err(BpfError::ProgramTooLong { len: p.len() });
    }
    Ok(p)
}

/// Maximal ranges of numbers classified `want`, extended through
/// don't-care numbers (but never starting or ending on one).
fn ranges(class: &BTreeMap<u32, Option<bool>>, want: bool) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut cur: Option<(u32, u32)> = None;
    for (&n, &v) in class {
        match v {
            Some(x) if x == want => {
                cur = Some(match cur {
                    Some((a, _)) => (a, n),
                    None => (n, n),
                })
            }
            Some(_) => {
                if let Some(r) = cur.take() {
                    out.push(r);
                }
            }
            None => {}
        }
    }
    if let Some(r) = cur {
        out.push(r);
    }
    out
}

fn emit_ranges(p: &mut Vec<SockFilter>, ranges: &[(u32, u32)], ret: u32) {
    for &(lo, hi) in ranges {
        if lo == hi {
            p.push(jump(BPF_JMP_JEQ_K, lo, 0, 1));
        } else {
            p.push(jump(BPF_JMP_JGE_K, lo, 0, 2));
            p.push(jump(BPF_JMP_JGT_K, hi, 1, 0));
        }
        p.push(stmt(BPF_RET_K, ret));
    }
}

/// `nr`: allow when the low word of `args[arg]` is one of `vals`, else `deny`.
fn allow_if_one_of(
    name: &'static str,
    nr: u32,
    arg: u32,
    vals: &[u32],
    deny: u32,
) -> Result<Vec<SockFilter>, BpfError> {
    let n = vals.len();
    if n > 200 {
        return Err(BpfError::BlockTooLong {
            syscall: name,
            count: n,
        });
    }
    let mut b = vec![
        jump(BPF_JMP_JEQ_K, nr, 0, (n + 3) as u8),
        stmt(BPF_LD_W_ABS, off_arg_lo(arg)),
    ];
    for (i, v) in vals.iter().enumerate() {
        b.push(jump(BPF_JMP_JEQ_K, *v, (n - i) as u8, 0));
    }
    b.push(stmt(BPF_RET_K, deny));
    b.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    Ok(b)
}

/// `nr`: `deny` when the low word of `args[arg]` is one of `vals`, else allow.
fn deny_if_one_of(
    name: &'static str,
    nr: u32,
    arg: u32,
    vals: &[u32],
    deny: u32,
) -> Result<Vec<SockFilter>, BpfError> {
    let n = vals.len();
    if n > 200 {
        return Err(BpfError::BlockTooLong {
            syscall: name,
            count: n,
        });
    }
    let mut b = vec![
        jump(BPF_JMP_JEQ_K, nr, 0, (n + 3) as u8),
        stmt(BPF_LD_W_ABS, off_arg_lo(arg)),
    ];
    for (i, v) in vals.iter().enumerate() {
        b.push(jump(BPF_JMP_JEQ_K, *v, (n - i) as u8, 0));
    }
    b.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    b.push(stmt(BPF_RET_K, deny));
    Ok(b)
}

/// The raw program as the kernel reads it (`struct sock_filter[]`, native endian).
pub fn to_bytes(prog: &[SockFilter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

/// A readable listing, one instruction per line, with syscall names.
pub fn disassemble(prog: &[SockFilter]) -> String {
    // What the accumulator holds on entry to each instruction (jumps only go
    // forward, so one pass suffices): Some(offset) of the last load.
    let mut acc: Vec<Option<Option<u32>>> = vec![None; prog.len() + 1];
    if !prog.is_empty() {
        acc[0] = Some(None);
    }
    let merge = |acc: &mut Vec<Option<Option<u32>>>, at: usize, v: Option<u32>| {
        if at < acc.len() {
            acc[at] = match acc[at] {
                None => Some(v),
                Some(old) if old == v => Some(v),
                Some(_) => Some(None),
            };
        }
    };
    for (i, ins) in prog.iter().enumerate() {
        let cur = acc[i].flatten();
        match ins.code {
            BPF_LD_W_ABS => merge(&mut acc, i + 1, Some(ins.k)),
            BPF_RET_K => {}
            rules::BPF_ALU_AND_K => merge(&mut acc, i + 1, None),
            rules::BPF_JMP_JA => merge(&mut acc, i + 1 + ins.k as usize, cur),
            _ => {
                merge(&mut acc, i + 1 + usize::from(ins.jt), cur);
                merge(&mut acc, i + 1 + usize::from(ins.jf), cur);
            }
        }
    }
    let mut out = String::new();
    for (i, ins) in prog.iter().enumerate() {
        let acc_is_nr = acc[i].flatten() == Some(OFF_NR);
        let tgt = |off: u8| i + 1 + usize::from(off);
        let line = match ins.code {
            BPF_LD_W_ABS => {
                let what = match ins.k {
                    0 => "nr".to_string(),
                    4 => "arch".to_string(),
                    k if k >= 16 && (k - 16) % 8 == 4 => format!("args[{}].hi", (k - 16) / 8),
                    k if k >= 16 => format!("args[{}].lo", (k - 16) / 8),
                    k => format!("[{k}]"),
                };
                format!("ld  {what}")
            }
            BPF_JMP_JEQ_K | BPF_JMP_JGT_K | BPF_JMP_JGE_K | BPF_JMP_JSET_K => {
                let op = match ins.code {
                    BPF_JMP_JEQ_K => "jeq ",
                    BPF_JMP_JGT_K => "jgt ",
                    BPF_JMP_JGE_K => "jge ",
                    _ => "jset",
                };
                let note = match syscalls::name(ins.k) {
                    Some(n)
                        if acc_is_nr && ins.code != BPF_JMP_JSET_K && ins.k < X32_SYSCALL_BIT =>
                    {
                        format!("  ; {n}")
                    }
                    _ => String::new(),
                };
                format!("{op} {:#x}, {}, {}{note}", ins.k, tgt(ins.jt), tgt(ins.jf))
            }
            BPF_RET_K => format!("ret {}", ret_name(ins.k)),
            rules::BPF_JMP_JA => format!("ja   {}", i + 1 + ins.k as usize),
            rules::BPF_ALU_AND_K => format!("and  {:#x}", ins.k),
            other => format!("??? code={other:#x} k={:#x}", ins.k),
        };
        out.push_str(&format!("{i:04} {line}\n"));
    }
    out
}

fn ret_name(k: u32) -> String {
    match k & 0xffff_0000 {
        SECCOMP_RET_ALLOW => "ALLOW".to_string(),
        SECCOMP_RET_KILL_PROCESS => "KILL_PROCESS".to_string(),
        SECCOMP_RET_LOG => "LOG".to_string(),
        SECCOMP_RET_ERRNO => format!("ERRNO({})", k & 0xffff),
        0 => "KILL_THREAD".to_string(),
        0x0003_0000 => "TRAP".to_string(),
        0x7ff0_0000 => format!("TRACE({})", k & 0xffff),
        _ => format!("{k:#x}"),
    }
}
