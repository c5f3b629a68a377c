//! A classic-BPF interpreter for seccomp programs: what a compiled filter
//! does with each syscall, read off the program itself rather than off the
//! policy that produced it.

use moat_policy::plan::SockFilter;

/// What the filter decided for one `seccomp_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Log,
    Errno(u16),
    Trap,
    Trace,
    UserNotif,
    KillThread,
    KillProcess,
}

impl Action {
    /// Whether the syscall runs (`ALLOW` and `LOG` both let it through).
    pub fn runs(self) -> bool {
        matches!(self, Action::Allow | Action::Log)
    }

    fn from_ret(k: u32) -> Action {
        match k & 0xffff_0000 {
            0x7fff_0000 => Action::Allow,
            0x7ffc_0000 => Action::Log,
            0x7ff0_0000 => Action::Trace,
            0x7fc0_0000 => Action::UserNotif,
            0x0005_0000 => Action::Errno((k & 0xffff) as u16),
            0x0003_0000 => Action::Trap,
            0x8000_0000 => Action::KillProcess,
            _ => Action::KillThread,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BpfError {
    #[error("seccomp program: instruction {pc}: {what}")]
    Execute { pc: usize, what: String },
}

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// The input of a seccomp filter (`struct seccomp_data`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

impl SeccompData {
    fn word(&self, off: u32) -> Option<u32> {
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        Some(match off {
            0 => self.nr as u32,
            4 => self.arch,
            8 => lo(self.instruction_pointer),
            12 => hi(self.instruction_pointer),
            16..=60 if off.is_multiple_of(4) => {
                let i = ((off - 16) / 8) as usize;
                if (off - 16).is_multiple_of(8) {
                    lo(self.args[i])
                } else {
                    hi(self.args[i])
                }
            }
            _ => return None,
        })
    }
}

/// Runs `prog` on `data`, as the kernel would.
pub fn run(prog: &[SockFilter], data: &SeccompData) -> Result<Action, BpfError> {
    let (mut a, mut x): (u32, u32) = (0, 0);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let fail = |pc: usize, what: &str| BpfError::Execute {
        pc,
        what: what.to_string(),
    };
    for _ in 0..=prog.len() {
        let Some(ins) = prog.get(pc) else {
            return Err(fail(pc, "ran off the end of the program"));
        };
        let k = ins.k;
        let class = ins.code & 0x07;
        match class {
            0x00 | 0x01 => {
                // LD / LDX
                let mode = ins.code & 0xe0;
                let v = match mode {
                    0x00 => k,                                                        // IMM
                    0x20 => data.word(k).ok_or_else(|| fail(pc, "bad load offset"))?, // ABS
                    0x60 => *mem
                        .get(k as usize)
                        .ok_or_else(|| fail(pc, "bad scratch slot"))?,
                    0x80 => 64, // LEN
                    _ => return Err(fail(pc, "unsupported load mode")),
                };
                if class == 0x00 {
                    a = v;
                } else {
                    x = v;
                }
            }
            0x02 | 0x03 => {
                let slot = mem
                    .get_mut(k as usize)
                    .ok_or_else(|| fail(pc, "bad scratch slot"))?;
                *slot = if class == 0x02 { a } else { x };
            }
            0x04 => {
                let src = if ins.code & 0x08 != 0 { x } else { k };
                a = match ins.code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    0x30 => a
                        .checked_div(src)
                        .ok_or_else(|| fail(pc, "division by zero"))?,
                    0x40 => a | src,
                    0x50 => a & src,
                    0x60 => a.checked_shl(src).unwrap_or(0),
                    0x70 => a.checked_shr(src).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 => a
                        .checked_rem(src)
                        .ok_or_else(|| fail(pc, "division by zero"))?,
                    0xa0 => a ^ src,
                    _ => return Err(fail(pc, "unsupported ALU operation")),
                };
            }
            0x05 => {
                let src = if ins.code & 0x08 != 0 { x } else { k };
                let op = ins.code & 0xf0;
                let next = if op == 0x00 {
                    pc + 1 + k as usize
                } else {
                    let cond = match op {
                        0x10 => a == src,
                        0x20 => a > src,
                        0x30 => a >= src,
                        0x40 => a & src != 0,
                        _ => return Err(fail(pc, "unsupported jump")),
                    };
                    pc + 1 + usize::from(if cond { ins.jt } else { ins.jf })
                };
                pc = next;
                continue;
            }
            0x06 => {
                let v = if ins.code & 0x18 == 0x10 { a } else { k };
                return Ok(Action::from_ret(v));
            }
            0x07 => {
                if ins.code & 0xf8 == 0x00 {
                    x = a; // TAX
                } else {
                    a = x; // TXA
                }
            }
            _ => unreachable!("class is three bits"),
        }
        pc += 1;
    }
    Err(fail(pc, "program does not terminate"))
}

/// What the program does with syscall `nr` on x86_64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Runs whatever its arguments.
    Allowed,
    /// Runs for some arguments only (an argument condition).
    Conditional,
    Denied,
}

/// Argument values tried to detect argument conditions: common socket
/// families, ioctl requests, clone flags, and the extremes.
const PROBES: &[u64] = &[
    0,
    1,
    2,
    3,
    10,
    16,
    17,
    0x5401,
    0x5413,
    0x11,
    0x0001_0000,
    0x1000_0000,
    0x7e02_0000,
    0xffff_ffff,
    u64::MAX,
];

/// Classifies syscall `nr` under `prog`.
pub fn verdict(prog: &[SockFilter], nr: u32) -> Result<Verdict, BpfError> {
    let mut allowed = 0usize;
    let mut total = 0usize;
    let mut check = |args: [u64; 6]| -> Result<(), BpfError> {
        let data = SeccompData {
            nr: nr as i32,
            arch: AUDIT_ARCH_X86_64,
            instruction_pointer: 0x40_0000,
            args,
        };
        total += 1;
        if run(prog, &data)?.runs() {
            allowed += 1;
        }
        Ok(())
    };
    for &v in PROBES {
        check([v; 6])?;
        for i in 0..6 {
            let mut args = [0u64; 6];
            args[i] = v;
            check(args)?;
        }
    }
    Ok(match allowed {
        0 => Verdict::Denied,
        n if n == total => Verdict::Allowed,
        _ => Verdict::Conditional,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn stmt(code: u16, k: u32) -> SockFilter {
        SockFilter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }
    pub(crate) fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
        SockFilter { code, jt, jf, k }
    }

    /// arch check; allow read(0) and write(1); socket(41) only for AF_UNIX (1); else errno EPERM.
    pub(crate) fn sample() -> Vec<SockFilter> {
        vec![
            stmt(0x20, 4),                       // ld arch
            jump(0x15, AUDIT_ARCH_X86_64, 1, 0), // jeq
            stmt(0x06, 0x8000_0000),             // kill process
            stmt(0x20, 0),                       // ld nr
            jump(0x15, 0, 5, 0),                 // read -> allow
            jump(0x15, 1, 4, 0),                 // write -> allow
            jump(0x15, 41, 0, 4),                // socket?
            stmt(0x20, 16),                      // ld args[0] lo
            jump(0x15, 1, 0, 2),                 // == AF_UNIX
            stmt(0x06, 0x7fff_0000),             // allow (unused slot)
            stmt(0x06, 0x7fff_0000),             // allow
            stmt(0x06, 0x0005_0001),             // errno EPERM
        ]
    }

    #[test]
    fn interprets_a_filter() {
        let p = sample();
        let d = |nr: i32, a0: u64| SeccompData {
            nr,
            arch: AUDIT_ARCH_X86_64,
            args: [a0, 0, 0, 0, 0, 0],
            ..SeccompData::default()
        };
        assert_eq!(run(&p, &d(0, 0)), Ok(Action::Allow));
        assert_eq!(run(&p, &d(2, 0)), Ok(Action::Errno(1)));
        assert_eq!(run(&p, &d(41, 1)), Ok(Action::Allow));
        assert_eq!(run(&p, &d(41, 2)), Ok(Action::Errno(1)));
        let x32 = SeccompData {
            arch: 0x4000_0003,
            ..d(0, 0)
        };
        assert_eq!(run(&p, &x32), Ok(Action::KillProcess));
        assert_eq!(verdict(&p, 1), Ok(Verdict::Allowed));
        assert_eq!(verdict(&p, 41), Ok(Verdict::Conditional));
        assert_eq!(verdict(&p, 59), Ok(Verdict::Denied));
    }

    #[test]
    fn broken_program_is_an_error() {
        let p = vec![stmt(0x20, 0)];
        assert_eq!(
            run(&p, &SeccompData::default()).unwrap_err().to_string(),
            "seccomp program: instruction 1: ran off the end of the program"
        );
    }
}
