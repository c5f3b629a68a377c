//! The runtime-spec `linux.seccomp` section of a bundle's `config.json`,
//! compiled into a moat seccomp program by moat's own BPF compiler
//! ([`moat_policy::bpf::rules`]) with moat's x86_64 system call table; no
//! libseccomp. What runc and crun do (through libseccomp) is the reference;
//! where moat differs it is said below, and it is always the narrower choice.
//!
//! - **Actions**: `SCMP_ACT_ALLOW`, `SCMP_ACT_ERRNO` (`errnoRet`, default
//!   `EPERM`; `defaultErrnoRet` for `defaultAction`), `SCMP_ACT_KILL` and
//!   `SCMP_ACT_KILL_THREAD` (kill the thread, as libseccomp), `SCMP_ACT_KILL_PROCESS`,
//!   `SCMP_ACT_TRAP`, `SCMP_ACT_LOG`, `SCMP_ACT_TRACE` (`errnoRet` is the
//!   value the tracer sees, default `EPERM`). `SCMP_ACT_NOTIFY`, `listenerPath`
//!   and `listenerMetadata` are refused: moat has no user-notification agent.
//!   An `errnoRet` on an action that takes none is refused, as crun does.
//! - **Order**: a system call named by several entries of `syscalls` gets
//!   the action of the first entry (in file order) whose argument
//!   conditions all hold; none holding, the default action: the order
//!   runc follows (runtime-spec PR 1159 proposed to write it down). Unlike
//!   runc and crun, an entry whose action equals the default is kept, not
//!   dropped, so it still shadows the entries after it.
//! - **Arguments**: `index` 0 to 5, `op` `SCMP_CMP_NE/LT/LE/EQ/GE/GT` compare
//!   `value` with the whole 64-bit argument, unsigned; `SCMP_CMP_MASKED_EQ`
//!   holds when `arg & value == valueTwo`. The conditions of one entry are
//!   ANDed, also when two of them name the same argument (runc and crun then
//!   fall back to ORing them, because libseccomp compares an argument once
//!   per rule: moat gives `value >= 1 && value <= 5` its meaning).
//! - **Architectures**: the filter is for x86_64. `architectures` must list
//!   `SCMP_ARCH_X86_64` (or `SCMP_ARCH_NATIVE`) when it is given. Calls made
//!   through another ABI (`AUDIT_ARCH_I386` from `int 0x80`, the x32 numbers
//!   with bit 30 set) always get the default action, even when
//!   `SCMP_ARCH_X86` or `SCMP_ARCH_X32` are listed: allowing them would need
//!   the i386 and x32 tables and a second copy of every rule, and the
//!   default action is the safe answer (runc would filter them with the same
//!   names' i386 numbers). Those listed architectures are returned in
//!   [`Notes::other_arches`].
//! - **Unknown names**: names that are not x86_64 system calls in moat's
//!   table (`_llseek`, `arm_fadvise64_64`, a call newer than the table) are
//!   skipped, as runc skips names libseccomp does not resolve, and returned
//!   in [`Notes::unknown_syscalls`] for one notice.
//! - **Newer calls**: when the default action does not let calls run
//!   (anything but `ALLOW`, `LOG`, `TRACE`), native numbers above the
//!   highest one the profile names fail with `ENOSYS`, as runc's
//!   `patchbpf` makes them: a C library then falls back from a call the
//!   profile's author did not know (`clone3` to `clone`).
//! - **Flags**: `SECCOMP_FILTER_FLAG_LOG`, `SECCOMP_FILTER_FLAG_SPEC_ALLOW`,
//!   `SECCOMP_FILTER_FLAG_TSYNC` are returned in [`Notes::flags`] for the
//!   code that installs the filter; absent flags mean none (runc adds
//!   `SPEC_ALLOW` by default, which turns off a Spectre mitigation; moat
//!   does not). A flag name oci-spec does not know, like an unknown action,
//!   operator or architecture, is refused when `config.json` is read, with
//!   the name in the error.

use std::collections::{BTreeMap, BTreeSet};

use moat_plan::SeccompProgram;
use moat_policy::bpf::rules::{self, ArgCmp, Cmp, Rule, Rules, RulesError};
use moat_policy::syscalls;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction as Action, LinuxSeccompFilterFlag as Flag,
    LinuxSeccompOperator as Op, LinuxSyscall,
};

/// What `compile` takes, for `moat-oci features` (`linux.seccomp`):
/// actions, operators and flags, sorted as runc prints them.
pub const ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];
pub const OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];
/// Architectures whose calls the rules apply to (others get the default).
pub const ARCHES: &[&str] = &["SCMP_ARCH_X86_64"];
pub const FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_TSYNC",
];

/// `seccomp(2)` filter flags (linux/seccomp.h).
pub const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1 << 0;
pub const SECCOMP_FILTER_FLAG_LOG: u32 = 1 << 1;
pub const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u32 = 1 << 2;

const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
/// The kernel turns larger errno values into 4095 (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;

/// The filter flags `config.json` asks for, to pass to `seccomp(2)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterFlags {
    /// `SECCOMP_FILTER_FLAG_LOG`: log every action but `ALLOW`.
    pub log: bool,
    /// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`: keep speculative store bypass allowed.
    pub spec_allow: bool,
    /// `SECCOMP_FILTER_FLAG_TSYNC`: install on every thread of the process.
    pub tsync: bool,
}

impl FilterFlags {
    /// The `flags` argument of `seccomp(SECCOMP_SET_MODE_FILTER, ...)`.
    pub fn bits(self) -> u32 {
        let bit = |on: bool, b: u32| if on { b } else { 0 };
        bit(self.log, SECCOMP_FILTER_FLAG_LOG)
            | bit(self.spec_allow, SECCOMP_FILTER_FLAG_SPEC_ALLOW)
            | bit(self.tsync, SECCOMP_FILTER_FLAG_TSYNC)
    }
}

/// What the caller needs besides the program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    pub flags: FilterFlags,
    /// Names skipped because they are not x86_64 system calls moat knows,
    /// each once, in the order they first appear.
    pub unknown_syscalls: Vec<String>,
    /// Architectures listed besides x86_64; their calls get the default action.
    pub other_arches: Vec<Arch>,
}

impl Notes {
    /// One line for the log when names were skipped.
    pub fn unknown_notice(&self) -> Option<String> {
        if self.unknown_syscalls.is_empty() {
            return None;
        }
        Some(format!(
            "seccomp: {} system call name(s) in config.json are not x86_64 calls moat knows and were skipped: {}",
            self.unknown_syscalls.len(),
            self.unknown_syscalls.join(", ")
        ))
    }
}

/// Why `linux.seccomp` cannot be compiled; every variant names the field.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("linux.seccomp.{field} is SCMP_ACT_NOTIFY: moat has no seccomp user-notification agent; use SCMP_ACT_ERRNO instead")]
    Notify { field: String },
    #[error("linux.seccomp.{field} is set: moat has no seccomp user-notification agent (SCMP_ACT_NOTIFY); remove {field}")]
    Listener { field: &'static str },
    #[error("linux.seccomp.architectures lists {listed} but not SCMP_ARCH_X86_64: moat's filter is for x86_64; add SCMP_ARCH_X86_64 or leave architectures out")]
    NoNativeArch { listed: String },
    #[error("linux.seccomp.syscalls[{rule}].names is empty; list at least one system call")]
    NoNames { rule: usize },
    #[error(
        "linux.seccomp.syscalls[{rule}].names[{index}] is an empty string; give a system call name"
    )]
    EmptyName { rule: usize, index: usize },
    #[error("linux.seccomp.syscalls[{rule}].args[{arg}].index is {index}; system calls have arguments 0 to 5")]
    ArgIndex {
        rule: usize,
        arg: usize,
        index: usize,
    },
    #[error("linux.seccomp.{field} is {value}; {action} takes a value from 0 to {max}")]
    ErrnoRet {
        field: String,
        value: u32,
        action: Action,
        max: u32,
    },
    #[error("linux.seccomp.{field} is set, but {action} returns no errno; remove it or use SCMP_ACT_ERRNO")]
    ErrnoRetUnused { field: String, action: Action },
    #[error("linux.seccomp: cannot build the filter")]
    Compile(#[source] RulesError),
}

/// The seccomp return value of `action`; `at` names the fields in errors
/// (`defaultAction`/`defaultErrnoRet` or `syscalls[i].action`/`.errnoRet`).
fn ret_of(action: Action, errno: Option<u32>, at: (&str, &str)) -> Result<u32, SeccompError> {
    let data = |max: u32| -> Result<u32, SeccompError> {
        match errno {
            None => Ok(EPERM),
            Some(v) if v <= max => Ok(v),
            Some(value) => Err(SeccompError::ErrnoRet {
                field: at.1.to_string(),
                value,
                action,
                max,
            }),
        }
    };
    let ret = match action {
        Action::ScmpActErrno => return Ok(RET_ERRNO | data(MAX_ERRNO)?),
        Action::ScmpActTrace => return Ok(RET_TRACE | data(0xffff)?),
        Action::ScmpActNotify => {
            return Err(SeccompError::Notify {
                field: at.0.to_string(),
            })
        }
        Action::ScmpActAllow => RET_ALLOW,
        Action::ScmpActKill | Action::ScmpActKillThread => RET_KILL_THREAD,
        Action::ScmpActKillProcess => RET_KILL_PROCESS,
        Action::ScmpActTrap => RET_TRAP,
        Action::ScmpActLog => RET_LOG,
    };
    if errno.is_some() {
        return Err(SeccompError::ErrnoRetUnused {
            field: at.1.to_string(),
            action,
        });
    }
    Ok(ret)
}

fn cmp_of(op: Op, value: u64, value_two: Option<u64>) -> (Cmp, u64) {
    match op {
        Op::ScmpCmpNe => (Cmp::Ne, value),
        Op::ScmpCmpLt => (Cmp::Lt, value),
        Op::ScmpCmpLe => (Cmp::Le, value),
        Op::ScmpCmpEq => (Cmp::Eq, value),
        Op::ScmpCmpGe => (Cmp::Ge, value),
        Op::ScmpCmpGt => (Cmp::Gt, value),
        Op::ScmpCmpMaskedEq => (Cmp::MaskedEq { mask: value }, value_two.unwrap_or(0)),
    }
}

/// The argument conditions of `syscalls[rule]`.
fn conditions(rule: usize, sc: &LinuxSyscall) -> Result<Vec<ArgCmp>, SeccompError> {
    let mut out = Vec::new();
    for (j, a) in sc.args().iter().flatten().enumerate() {
        let bad = SeccompError::ArgIndex {
            rule,
            arg: j,
            index: a.index(),
        };
        let arg = u8::try_from(a.index())
            .ok()
            .filter(|&x| x <= 5)
            .ok_or(bad)?;
        let (cmp, value) = cmp_of(a.op(), a.value(), a.value_two());
        out.push(ArgCmp { arg, cmp, value });
    }
    Ok(out)
}

/// Compiles `linux.seccomp` for x86_64; see the module documentation for
/// what is supported and how it differs from runc.
pub fn compile(s: &LinuxSeccomp) -> Result<(SeccompProgram, Notes), SeccompError> {
    if s.listener_path().is_some() {
        return Err(SeccompError::Listener {
            field: "listenerPath",
        });
    }
    if s.listener_metadata().is_some() {
        return Err(SeccompError::Listener {
            field: "listenerMetadata",
        });
    }
    let mut notes = Notes::default();
    if let Some(arches) = s.architectures().as_ref().filter(|a| !a.is_empty()) {
        let native = |a: &Arch| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative);
        if !arches.iter().any(native) {
            let listed: Vec<String> = arches.iter().map(|a| a.to_string()).collect();
            return Err(SeccompError::NoNativeArch {
                listed: listed.join(", "),
            });
        }
        for a in arches.iter().filter(|a| !native(a)) {
            if !notes.other_arches.contains(a) {
                notes.other_arches.push(*a);
            }
        }
    }
    for flag in s.flags().iter().flatten() {
        match flag {
            Flag::SeccompFilterFlagLog => notes.flags.log = true,
            Flag::SeccompFilterFlagSpecAllow => notes.flags.spec_allow = true,
            Flag::SeccompFilterFlagTsync => notes.flags.tsync = true,
        }
    }

    let default_action = s.default_action();
    let default_ret = ret_of(
        default_action,
        s.default_errno_ret(),
        ("defaultAction", "defaultErrnoRet"),
    )?;
    let mut by_nr: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        let ret = ret_of(
            sc.action(),
            sc.errno_ret(),
            (
                &format!("syscalls[{i}].action"),
                &format!("syscalls[{i}].errnoRet"),
            ),
        )?;
        let args = conditions(i, sc)?;
        if sc.names().is_empty() {
            return Err(SeccompError::NoNames { rule: i });
        }
        for (j, name) in sc.names().iter().enumerate() {
            if name.is_empty() {
                return Err(SeccompError::EmptyName { rule: i, index: j });
            }
            let Some(nr) = syscalls::number(name) else {
                if unknown.insert(name.as_str()) {
                    notes.unknown_syscalls.push(name.clone());
                }
                continue;
            };
            let list = by_nr.entry(nr).or_default();
            // An unconditional rule shadows every later one.
            if list.last().is_some_and(|r| r.args.is_empty()) {
                continue;
            }
            list.push(Rule {
                args: args.clone(),
                ret,
            });
        }
    }

    let runs = matches!(
        default_action,
        Action::ScmpActAllow | Action::ScmpActLog | Action::ScmpActTrace
    );
    let highest = by_nr.keys().next_back().copied();
    let (newer_than, newer_ret) = match highest {
        Some(h) if !runs => (h, RET_ERRNO | ENOSYS),
        _ => (u32::MAX, default_ret),
    };
    let program = rules::compile(&Rules {
        default_ret,
        newer_than,
        newer_ret,
        syscalls: by_nr,
    })
    .map_err(SeccompError::Compile)?;
    Ok((
        SeccompProgram {
            instructions: program,
        },
        notes,
    ))
}

#[cfg(test)]
mod tests;
