//! The `linux.seccomp` compiler, checked by running its programs through
//! moat-profile's BPF interpreter, and once for real in a forked child.

use std::time::Instant;

use moat_plan::SockFilter;
use moat_profile::bpf::{run, Action as Act, SeccompData, AUDIT_ARCH_X86_64};

use super::*;

const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

fn spec(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn prog(json: &str) -> Vec<SockFilter> {
    compile(&spec(json)).unwrap().0.instructions
}

fn err(json: &str) -> String {
    compile(&spec(json)).unwrap_err().to_string()
}

fn nr(name: &str) -> i32 {
    syscalls::number(name).unwrap() as i32
}

fn exec(p: &[SockFilter], arch: u32, nr: i32, args: [u64; 6]) -> Act {
    let data = SeccompData {
        nr,
        arch,
        instruction_pointer: 0x40_0000,
        args,
    };
    run(p, &data).unwrap()
}

fn call(p: &[SockFilter], name: &str) -> Act {
    exec(p, AUDIT_ARCH_X86_64, nr(name), [0; 6])
}

/// `name` with argument `i` set to `v`, the others zero.
fn call_arg(p: &[SockFilter], name: &str, i: usize, v: u64) -> Act {
    let mut args = [0; 6];
    args[i] = v;
    exec(p, AUDIT_ARCH_X86_64, nr(name), args)
}

#[test]
fn every_action_and_errno_value() {
    let p = prog(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["getuid"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getgid"], "action": "SCMP_ACT_KILL"},
            {"names": ["geteuid"], "action": "SCMP_ACT_KILL_THREAD"},
            {"names": ["getegid"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["getpgrp"], "action": "SCMP_ACT_TRAP"},
            {"names": ["getsid"], "action": "SCMP_ACT_LOG"},
            {"names": ["gettid"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
            {"names": ["getpgid"], "action": "SCMP_ACT_TRACE"}]}"#,
    );
    assert_eq!(call(&p, "getpid"), Act::Allow);
    assert_eq!(call(&p, "getppid"), Act::Errno(13));
    assert_eq!(call(&p, "getuid"), Act::Errno(1));
    assert_eq!(call(&p, "getgid"), Act::KillThread);
    assert_eq!(call(&p, "geteuid"), Act::KillThread);
    assert_eq!(call(&p, "getegid"), Act::KillProcess);
    assert_eq!(call(&p, "getpgrp"), Act::Trap);
    assert_eq!(call(&p, "getsid"), Act::Log);
    assert_eq!(call(&p, "gettid"), Act::Trace);
    // The interpreter drops the trace value: look for both returns.
    let rets: Vec<u32> = p.iter().filter(|i| i.code == 0x06).map(|i| i.k).collect();
    assert!(
        rets.contains(&0x7ff0_0007) && rets.contains(&0x7ff0_0001),
        "{rets:x?}"
    );
    // Not named: the default, EPERM without defaultErrnoRet.
    assert_eq!(call(&p, "read"), Act::Errno(1));
}

#[test]
fn default_action_and_its_errno() {
    let with = |d: &str| {
        prog(&format!(
            r#"{{{d}, "syscalls": [{{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}}]}}"#
        ))
    };
    let p = with(r#""defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38"#);
    assert_eq!(call(&p, "read"), Act::Errno(38));
    assert_eq!(call(&p, "getpid"), Act::Allow);
    let p = with(r#""defaultAction": "SCMP_ACT_KILL_PROCESS""#);
    assert_eq!(call(&p, "read"), Act::KillProcess);
    let p = with(r#""defaultAction": "SCMP_ACT_LOG""#);
    assert_eq!(call(&p, "read"), Act::Log);
    let p = prog(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
    assert_eq!(call(&p, "kexec_load"), Act::Allow);
}

/// Each operator against values whose two 32-bit halves both matter, on
/// arguments around every edge, compared with the same operator in Rust.
#[test]
fn every_operator_on_64_bit_values() {
    type Holds = fn(u64, u64) -> bool;
    let ops: [(&str, Holds); 6] = [
        ("SCMP_CMP_EQ", |a, v| a == v),
        ("SCMP_CMP_NE", |a, v| a != v),
        ("SCMP_CMP_LT", |a, v| a < v),
        ("SCMP_CMP_LE", |a, v| a <= v),
        ("SCMP_CMP_GT", |a, v| a > v),
        ("SCMP_CMP_GE", |a, v| a >= v),
    ];
    let values = [0x0000_0001_0000_0005u64, 0xffff_fffe_8000_0000, 7, 0];
    for (op, f) in ops {
        for v in values {
            let p = prog(&format!(
                r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{{"names": ["getpid"],
                "action": "SCMP_ACT_ALLOW", "args": [{{"index": 3, "value": {v}, "op": "{op}"}}]}}]}}"#
            ));
            let mut probes = vec![0, 1, 4, 5, 6, 7, 8, u64::MAX, 0xffff_ffff];
            for d in [0u64, 1, 2] {
                probes.extend([v.wrapping_add(d), v.wrapping_sub(d)]);
            }
            // Same low word, other high words; same high word, other low words.
            probes.extend([
                (v & 0xffff_ffff) | 0x2_0000_0000,
                v & 0xffff_ffff,
                (v & !0xffff_ffff) | 0xffff_ffff,
                v & !0xffff_ffff,
                (v ^ 0x8000_0000_0000_0000),
            ]);
            for a in probes {
                let want = if f(a, v) { Act::Allow } else { Act::Errno(1) };
                assert_eq!(call_arg(&p, "getpid", 3, a), want, "{a:#x} {op} {v:#x}");
            }
        }
    }
}

#[test]
fn masked_eq_on_both_halves() {
    let cases = [
        // (mask, valueTwo): both halves, low half only, impossible high half.
        (0xff00_0000_0000_00ffu64, 0x1200_0000_0000_0034u64),
        (0xff, 0x34),
        (0xff, 0x1_0000_0034),
        (0xffff_ffff_0000_0000, 0),
    ];
    let probes = [
        0u64,
        0x34,
        0x1234,
        0x1200_0000_0000_0034,
        0x12ab_cdef_0000_1234,
        0x1300_0000_0000_0034,
        0x1200_0000_0000_0035,
        0xffff_ffff_0000_0034,
        0x1_0000_0034,
        u64::MAX,
    ];
    for (mask, v2) in cases {
        let p = prog(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{{"names": ["getpid"],
            "action": "SCMP_ACT_ALLOW", "args": [{{"index": 5, "value": {mask}, "valueTwo": {v2}, "op": "SCMP_CMP_MASKED_EQ"}}]}}]}}"#
        ));
        for a in probes {
            let want = if a & mask == v2 {
                Act::Allow
            } else {
                Act::Errno(1)
            };
            assert_eq!(
                call_arg(&p, "getpid", 5, a),
                want,
                "{a:#x} & {mask:#x} == {v2:#x}"
            );
        }
    }
    // No valueTwo: compared with 0 (the clone flags idiom).
    let p = prog(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["clone"],
        "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
    );
    assert_eq!(call_arg(&p, "clone", 0, 0x0001_1200), Act::Allow);
    assert_eq!(call_arg(&p, "clone", 0, 0x1000_0000), Act::Errno(1)); // CLONE_NEWUSER
}

#[test]
fn conditions_of_one_rule_are_anded() {
    let p = prog(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [
            {"index": 0, "value": 10, "op": "SCMP_CMP_GE"},
            {"index": 0, "value": 20, "op": "SCMP_CMP_LE"},
            {"index": 1, "value": 9, "op": "SCMP_CMP_NE"}]}]}"#,
    );
    let kill = |pid: u64, sig: u64| exec(&p, AUDIT_ARCH_X86_64, nr("kill"), [pid, sig, 0, 0, 0, 0]);
    assert_eq!(kill(10, 15), Act::Allow);
    assert_eq!(kill(20, 15), Act::Allow);
    assert_eq!(kill(9, 15), Act::Errno(1));
    assert_eq!(kill(21, 15), Act::Errno(1));
    assert_eq!(kill(15, 9), Act::Errno(1));
}

/// The first entry that matches decides, in file order; an entry with the
/// default action still shadows later ones.
#[test]
fn first_matching_rule_wins() {
    let p = prog(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": [{"index": 2, "value": 448, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5, "args": [{"index": 2, "value": 256, "op": "SCMP_CMP_GE"}]},
            {"names": ["mkdirat"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 2, "value": 64, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mkdirat", "getpid"], "action": "SCMP_ACT_LOG"},
            {"names": ["mkdirat", "getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22}]}"#,
    );
    assert_eq!(call_arg(&p, "mkdirat", 2, 0o700), Act::Errno(13));
    assert_eq!(call_arg(&p, "mkdirat", 2, 0o755), Act::Errno(5));
    assert_eq!(call_arg(&p, "mkdirat", 2, 0o100), Act::Allow);
    assert_eq!(call_arg(&p, "mkdirat", 2, 0o10), Act::Log);
    assert_eq!(call(&p, "getpid"), Act::Log);
    assert_eq!(call(&p, "mkdir"), Act::Allow);
}

#[test]
fn other_architectures_and_x32_get_the_default() {
    let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["getpid", "read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]}"#;
    let (program, notes) = compile(&spec(json)).unwrap();
    let p = program.instructions;
    assert_eq!(notes.other_arches, [Arch::ScmpArchX86, Arch::ScmpArchX32]);
    assert_eq!(call(&p, "getpid"), Act::Allow);
    // i386 getpid is 20, x86_64 getpid 39: neither passes under i386.
    for n in [20, 39, 0, 1] {
        assert_eq!(exec(&p, AUDIT_ARCH_I386, n, [0; 6]), Act::Errno(38));
        assert_eq!(exec(&p, AUDIT_ARCH_AARCH64, n, [0; 6]), Act::Errno(38));
    }
    // x32 getpid (bit 30 | 39), x32-only numbers, negative numbers.
    for n in [
        0x4000_0027u32,
        0x4000_0000,
        0x4000_0208,
        0xffff_ffff,
        0x8000_0027,
    ] {
        assert_eq!(
            exec(&p, AUDIT_ARCH_X86_64, n as i32, [0; 6]),
            Act::Errno(38),
            "{n:#x}"
        );
    }
    // The same with a killing default: never the ENOSYS of newer calls.
    let p = prog(&json.replace(
        r#""SCMP_ACT_ERRNO", "defaultErrnoRet": 38"#,
        r#""SCMP_ACT_KILL_PROCESS""#,
    ));
    assert_eq!(
        exec(&p, AUDIT_ARCH_X86_64, 0x4000_0027, [0; 6]),
        Act::KillProcess
    );
    assert_eq!(exec(&p, AUDIT_ARCH_I386, 20, [0; 6]), Act::KillProcess);
    assert_eq!(call(&p, "getpid"), Act::Allow);
    // Native counts as x86_64.
    prog(r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_NATIVE"]}"#);
}

#[test]
fn calls_newer_than_the_profile_fail_with_enosys() {
    let p = prog(
        r#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [
            {"names": ["getpid", "mkdirat"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    assert_eq!(exec(&p, AUDIT_ARCH_X86_64, 259, [0; 6]), Act::Errno(38));
    assert_eq!(call(&p, "clone3"), Act::Errno(38));
    assert_eq!(
        exec(&p, AUDIT_ARCH_X86_64, 0x3fff_ffff, [0; 6]),
        Act::Errno(38)
    );
    assert_eq!(exec(&p, AUDIT_ARCH_X86_64, 257, [0; 6]), Act::KillProcess);
    assert_eq!(call(&p, "mkdirat"), Act::Allow);
    // A default that lets calls run lets newer ones run too.
    let p = prog(
        r#"{"defaultAction": "SCMP_ACT_LOG", "syscalls": [
            {"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    assert_eq!(call(&p, "clone3"), Act::Log);
}

#[test]
fn unknown_names_are_skipped_and_listed_once() {
    let (program, notes) = compile(&spec(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["_llseek", "getpid", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["_llseek"], "action": "SCMP_ACT_ALLOW"}]}"#,
    ))
    .unwrap();
    assert_eq!(notes.unknown_syscalls, ["_llseek", "no_such_call"]);
    assert_eq!(
        notes.unknown_notice().unwrap(),
        "seccomp: 2 system call name(s) in config.json are not x86_64 calls moat knows and were skipped: _llseek, no_such_call"
    );
    assert_eq!(call(&program.instructions, "getpid"), Act::Allow);
    let (_, notes) = compile(&spec(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#)).unwrap();
    assert_eq!(notes.unknown_notice(), None);
}

#[test]
fn flags_are_returned() {
    let flags = |f: &str| {
        compile(&spec(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW", "flags": [{f}]}}"#
        )))
        .unwrap()
        .1
        .flags
    };
    let f = flags(r#""SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW""#);
    assert_eq!(
        f,
        FilterFlags {
            log: true,
            spec_allow: true,
            tsync: false
        }
    );
    assert_eq!(f.bits(), 6);
    assert_eq!(flags(r#""SECCOMP_FILTER_FLAG_TSYNC""#).bits(), 1);
    assert_eq!(flags("").bits(), 0);
}

/// What `features` will print is what `compile` takes.
#[test]
fn the_feature_lists_compile() {
    for a in ACTIONS {
        let json = format!(
            r#"{{"defaultAction": "{a}", "syscalls": [{{"names": ["getpid"], "action": "{a}"}}]}}"#
        );
        compile(&spec(&json)).unwrap_or_else(|e| panic!("{a}: {e}"));
    }
    for op in OPERATORS {
        let json = format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{{"names": ["getpid"], "action": "SCMP_ACT_LOG",
            "args": [{{"index": 0, "value": 1, "op": "{op}"}}]}}]}}"#
        );
        compile(&spec(&json)).unwrap_or_else(|e| panic!("{op}: {e}"));
    }
    let flags: Vec<String> = FLAGS.iter().map(|f| format!("\"{f}\"")).collect();
    let json = format!(
        r#"{{"defaultAction": "SCMP_ACT_ALLOW", "flags": [{}], "architectures": ["{}"]}}"#,
        flags.join(", "),
        ARCHES[0]
    );
    assert_eq!(compile(&spec(&json)).unwrap().1.flags.bits(), 7);
    let notify = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}]}"#;
    assert!(compile(&spec(notify)).is_err());
}

#[test]
fn bad_input_names_the_field() {
    let cases = [
        (
            r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#,
            "linux.seccomp.defaultAction is SCMP_ACT_NOTIFY: moat has no seccomp user-notification agent; use SCMP_ACT_ERRNO instead",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["ioctl"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "linux.seccomp.syscalls[1].action is SCMP_ACT_NOTIFY: moat has no seccomp user-notification agent; use SCMP_ACT_ERRNO instead",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/agent.sock"}"#,
            "linux.seccomp.listenerPath is set: moat has no seccomp user-notification agent (SCMP_ACT_NOTIFY); remove listenerPath",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "listenerMetadata": "x"}"#,
            "linux.seccomp.listenerMetadata is set: moat has no seccomp user-notification agent (SCMP_ACT_NOTIFY); remove listenerMetadata",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"]}"#,
            "linux.seccomp.architectures lists SCMP_ARCH_X86, SCMP_ARCH_AARCH64 but not SCMP_ARCH_X86_64: moat's filter is for x86_64; add SCMP_ARCH_X86_64 or leave architectures out",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}"#,
            "linux.seccomp.syscalls[0].names is empty; list at least one system call",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["read", ""], "action": "SCMP_ACT_ALLOW"}]}"#,
            "linux.seccomp.syscalls[1].names[1] is an empty string; give a system call name",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "linux.seccomp.syscalls[0].args[1].index is 6; system calls have arguments 0 to 5",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5000}]}"#,
            "linux.seccomp.syscalls[0].errnoRet is 5000; SCMP_ACT_ERRNO takes a value from 0 to 4095",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_TRACE", "defaultErrnoRet": 70000}"#,
            "linux.seccomp.defaultErrnoRet is 70000; SCMP_ACT_TRACE takes a value from 0 to 65535",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#,
            "linux.seccomp.syscalls[0].errnoRet is set, but SCMP_ACT_ALLOW returns no errno; remove it or use SCMP_ACT_ERRNO",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_KILL", "defaultErrnoRet": 1}"#,
            "linux.seccomp.defaultErrnoRet is set, but SCMP_ACT_KILL returns no errno; remove it or use SCMP_ACT_ERRNO",
        ),
    ];
    for (json, want) in cases {
        assert_eq!(err(json), want, "{json}");
    }
}

/// Unknown action, operator, flag and architecture names never reach
/// `compile`: reading config.json fails, naming them.
#[test]
fn unknown_names_of_the_spec_fail_when_read() {
    let cases = [
        (r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#, "SCMP_ACT_MAYBE"),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}"#,
            "SCMP_CMP_ABOUT",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_FAST"]}"#,
            "SECCOMP_FILTER_FLAG_FAST",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}"#,
            "SCMP_ARCH_Z80",
        ),
    ];
    for (json, name) in cases {
        let e = serde_json::from_str::<LinuxSeccomp>(json)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("unknown variant `{name}`")), "{e}");
    }
}

/// Blocks farther than a conditional jump reaches (255 instructions) are
/// reached through `ja`, and a program over the kernel's limit is refused.
#[test]
fn long_programs_jump_far_and_too_long_ones_are_refused() {
    let rules: Vec<String> = (0..120u64)
        .map(|k| {
            format!(
                r#"{{"names": ["getpid", "kill"], "action": "SCMP_ACT_ALLOW", "args": [{{"index": 0, "value": {}, "op": "SCMP_CMP_EQ"}}]}}"#,
                k * 3
            )
        })
        .chain([
            r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 2, "value": 1000, "op": "SCMP_CMP_LT"}]}"#.to_string(),
            r#"{"names": ["exit_group", "exit"], "action": "SCMP_ACT_ALLOW"}"#.to_string(),
        ])
        .collect();
    let json = format!(
        r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{}]}}"#,
        rules.join(",")
    );
    let p = prog(&json);
    assert!(
        p.iter().any(|i| i.code == rules::BPF_JMP_JA),
        "no far jump in {} instructions",
        p.len()
    );
    for name in ["getpid", "kill"] {
        assert_eq!(call_arg(&p, name, 0, 0), Act::Allow);
        assert_eq!(call_arg(&p, name, 0, 357), Act::Allow);
        assert_eq!(call_arg(&p, name, 0, 358), Act::Errno(1));
    }
    assert_eq!(call_arg(&p, "read", 2, 999), Act::Allow);
    assert_eq!(call_arg(&p, "read", 2, 1000), Act::Errno(1));
    // getpid and kill share one block.
    assert!(p.len() < 120 * 4 + 40, "{} instructions", p.len());
    // The kernel takes the program, far jumps included, and agrees.
    let (getpid, kill) = (libc::SYS_getpid, libc::SYS_kill);
    let body = || {
        let ok = sys::errno_of_call(getpid, [357, 0, 0]) == 0;
        let denied = sys::errno_of_call(getpid, [358, 0, 0]) == libc::EPERM;
        let kill_denied = sys::errno_of_call(kill, [1, 0, 0]) == libc::EPERM;
        i32::from(ok) | i32::from(denied) << 1 | i32::from(kill_denied) << 2
    };
    assert_eq!(sys::exit_code_under(&p, &body), 7);

    let rules: Vec<String> = (0..1100)
        .map(|k| format!(r#"{{"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "args": [{{"index": 0, "value": {k}, "op": "SCMP_CMP_EQ"}}]}}"#))
        .collect();
    let e = compile(&spec(&format!(
        r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{}]}}"#,
        rules.join(",")
    )))
    .unwrap_err();
    assert_eq!(e.to_string(), "linux.seccomp: cannot build the filter");
    let cause = std::error::Error::source(&e).unwrap().to_string();
    assert!(cause.starts_with("the filter would have 44"), "{cause}");
}

/// podman's default profile (Docker's format, with `includes`/`excludes`),
/// turned into the `linux.seccomp` podman writes for a container with the
/// default capabilities on amd64, as containers/common does.
fn podman_default() -> Option<LinuxSeccomp> {
    const DEFAULT_CAPS: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    ];
    let text = std::fs::read_to_string("/usr/share/containers/seccomp.json").ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = |x: &serde_json::Value, k: &str| -> Vec<String> {
        x.get(k)
            .and_then(|l| l.as_array())
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut rules = Vec::new();
    for r in v["syscalls"].as_array().unwrap() {
        let (inc, exc) = (&r["includes"], &r["excludes"]);
        let arches = list(inc, "arches");
        if !arches.is_empty() && !arches.iter().any(|a| a == "amd64") {
            continue;
        }
        if !list(inc, "caps")
            .iter()
            .all(|c| DEFAULT_CAPS.contains(&c.as_str()))
        {
            continue;
        }
        if list(exc, "arches").iter().any(|a| a == "amd64")
            || list(exc, "caps")
                .iter()
                .any(|c| DEFAULT_CAPS.contains(&c.as_str()))
        {
            continue;
        }
        let mut r = r.clone();
        let o = r.as_object_mut().unwrap();
        for k in ["includes", "excludes", "comment"] {
            o.remove(k);
        }
        if o.get("args").is_some_and(|a| a.is_null()) {
            o.remove("args");
        }
        rules.push(r);
    }
    let oci = serde_json::json!({
        "defaultAction": v["defaultAction"],
        "defaultErrnoRet": v["defaultErrnoRet"],
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    });
    Some(serde_json::from_value(oci).unwrap())
}

#[test]
fn podman_default_profile() {
    let Some(s) = podman_default() else {
        eprintln!("skipped: /usr/share/containers/seccomp.json (podman) is not installed");
        return;
    };
    let start = Instant::now();
    let (program, notes) = compile(&s).unwrap();
    let took = start.elapsed();
    let p = program.instructions;
    eprintln!(
        "podman default profile: {} instructions, compiled in {took:?}; {} names skipped",
        p.len(),
        notes.unknown_syscalls.len()
    );
    assert!(took.as_millis() < 50, "compiling took {took:?}");
    assert!(p.len() < 400, "{} instructions", p.len());
    for ok in [
        "getpid",
        "read",
        "openat",
        "clone",
        "execve",
        "chroot",
        "arch_prctl",
    ] {
        assert_eq!(call(&p, ok), Act::Allow, "{ok}");
    }
    for denied in [
        "kexec_load",
        "init_module",
        "open_by_handle_at",
        "bpf",
        "acct",
        "iopl",
    ] {
        assert_eq!(call(&p, denied), Act::Errno(1), "{denied}");
    }
    // Not named at all: the profile's default, ENOSYS.
    assert_eq!(exec(&p, AUDIT_ARCH_X86_64, 400, [0; 6]), Act::Errno(38));
    assert_eq!(call(&p, "add_key"), Act::Errno(38));
    assert_eq!(call(&p, "io_uring_setup"), Act::Errno(38));
    // personality: only the listed personas.
    assert_eq!(call_arg(&p, "personality", 0, 0x0008), Act::Allow);
    assert_eq!(call_arg(&p, "personality", 0, 0xffff_ffff), Act::Allow);
    assert_eq!(call_arg(&p, "personality", 0, 0x0040_0000), Act::Errno(38));
    // socket(AF_NETLINK, _, NETLINK_AUDIT) is EINVAL without CAP_AUDIT_WRITE.
    let socket =
        |f: u64, proto: u64| exec(&p, AUDIT_ARCH_X86_64, nr("socket"), [f, 1, proto, 0, 0, 0]);
    assert_eq!(socket(16, 9), Act::Errno(22));
    assert_eq!(socket(16, 0), Act::Allow);
    assert_eq!(socket(2, 9), Act::Allow);
    // i386 entry points are not opened by SCMP_ARCH_X86.
    assert_eq!(exec(&p, AUDIT_ARCH_I386, 20, [0; 6]), Act::Errno(38));
    assert!(notes.unknown_syscalls.iter().any(|n| n == "_llseek"));
    assert_eq!(notes.other_arches, [Arch::ScmpArchX86, Arch::ScmpArchX32]);
    // The kernel takes it and answers the same.
    let body = || {
        let getpid = sys::errno_of_call(libc::SYS_getpid, [0; 3]) == 0;
        // NULL image: harmless (EFAULT) should the filter let it through.
        let module = sys::errno_of_call(libc::SYS_init_module, [0; 3]) == libc::EPERM;
        let audit = sys::errno_of_call(libc::SYS_socket, [16, 3, 9]) == libc::EINVAL;
        i32::from(getpid) | i32::from(module) << 1 | i32::from(audit) << 2
    };
    assert_eq!(sys::exit_code_under(&p, &body), 7);
}

/// The only unsafe code of these tests: fork, install a filter, make raw
/// system calls, report through the exit status.
mod sys {
    use std::ffi::CStr;

    use moat_plan::SockFilter;

    /// Forks; the child sets no_new_privs, installs `prog` and exits with
    /// what `body` returns (200 and 201 when the filter could not be
    /// installed). `body` runs after fork in a multi-threaded process: raw
    /// system calls only, no allocation.
    pub fn exit_code_under(prog: &[SockFilter], body: &dyn Fn() -> i32) -> i32 {
        let filter: Vec<libc::sock_filter> = prog
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let fprog = libc::sock_fprog {
            len: u16::try_from(filter.len()).expect("filter too long"),
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fork has no memory-safety preconditions; the child only
        // makes raw system calls (async-signal-safe) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: prctl and seccomp with integer arguments and a pointer
            // to `fprog`, which lives until _exit; _exit never returns.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(200);
                }
                let fp = &fprog as *const libc::sock_fprog;
                if libc::syscall(libc::SYS_seccomp, 1, 0, fp) != 0 {
                    libc::_exit(201);
                }
                libc::_exit(body());
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid failed");
        assert!(libc::WIFEXITED(status), "child killed: status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// 0 when the raw call returned 0 or more, else its errno.
    fn errno_of(r: libc::c_long) -> i32 {
        if r >= 0 {
            return 0;
        }
        // SAFETY: __errno_location returns the calling thread's errno slot.
        unsafe { *libc::__errno_location() }
    }

    /// The errno of system call `nr` with three integer arguments (0 when
    /// it succeeded).
    pub fn errno_of_call(nr: libc::c_long, a: [u64; 3]) -> i32 {
        // SAFETY: only calls whose arguments are integers or NULL pointers
        // (getpid, kill, init_module of a NULL image, socket).
        errno_of(unsafe { libc::syscall(nr, a[0], a[1], a[2]) })
    }

    /// `mkdir(path, mode)` with all 64 bits of `mode` in the register.
    pub fn mkdir(path: &CStr, mode: u64) -> i32 {
        // SAFETY: `path` is NUL-terminated and outlives the call.
        errno_of(unsafe { libc::syscall(libc::SYS_mkdir, path.as_ptr(), mode) })
    }

    pub fn mkdirat(path: &CStr, mode: u64) -> i32 {
        // SAFETY: as for mkdir.
        errno_of(unsafe { libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), mode) })
    }

    /// The x86_64 `getpid`: the pid.
    pub fn getpid() -> i64 {
        // SAFETY: getpid takes no arguments.
        unsafe { libc::syscall(libc::SYS_getpid) }
    }

    /// `getpid` through the i386 ABI (`int 0x80`, number 20): the pid or
    /// `-errno`.
    pub fn getpid_i386() -> i64 {
        let ret: i32;
        // SAFETY: i386 getpid reads no memory and writes only eax; r8-r11
        // are marked clobbered for kernels that zeroed them.
        unsafe {
            std::arch::asm!(
                "int 0x80",
                inlateout("eax") 20i32 => ret,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                options(nostack),
            );
        }
        i64::from(ret)
    }

    /// `getpid` with the x32 bit: its errno (the host may not have x32).
    pub fn getpid_x32() -> i32 {
        // SAFETY: no arguments.
        errno_of(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) })
    }
}

fn cpath(dir: &std::path::Path, name: &str) -> std::ffi::CString {
    std::ffi::CString::new(dir.join(name).into_os_string().into_encoded_bytes()).unwrap()
}

#[test]
fn installed_filter_denies_mkdir_by_mode() {
    let p = prog(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 1, "value": 448, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 2, "value": 448, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    type Mkdir = fn(&std::ffi::CStr, u64) -> i32;
    let cases: [(&str, Mkdir, u64, i32); 5] = [
        ("mkdir-700", sys::mkdir, 0o700, libc::EACCES),
        ("mkdir-755", sys::mkdir, 0o755, 0),
        ("mkdirat-700", sys::mkdirat, 0o700, libc::EACCES),
        ("mkdirat-755", sys::mkdirat, 0o755, 0),
        // The kernel reads a 16-bit mode; the filter all 64 bits, so a set
        // high word is not 0o700 and the call goes through.
        ("mkdirat-hi", sys::mkdirat, 0x1_0000_01c0, 0),
    ];
    for (name, call, mode, want) in cases {
        let path = cpath(dir.path(), name);
        let got = sys::exit_code_under(&p, &|| call(&path, mode));
        assert_eq!(got, want, "{name}");
        assert_eq!(dir.path().join(name).is_dir(), want == 0, "{name}");
    }
}

/// The attack: make a call through the i386 ABI whose number an x86_64
/// rule allows (i386 `getpid` is 20, x86_64 `writev`), or through the x32
/// numbers. Both get the default action.
#[test]
fn installed_filter_gives_other_abis_the_default() {
    let body = || {
        let native = sys::getpid() > 0;
        let i386 = sys::getpid_i386();
        let x32 = sys::getpid_x32();
        i32::from(native) | if i386 == -1 { 2 } else { 0 } | if x32 == 1 { 4 } else { 0 }
    };
    // Control: without a rule in the way the i386 call does return the pid.
    let allow_all = prog(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
    let control = sys::exit_code_under(&allow_all, &|| {
        i32::from(sys::getpid_i386() == sys::getpid())
    });
    assert_eq!(control, 1, "int 0x80 getpid does not work on this host");
    let p = prog(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["getpid", "writev", "exit_group", "exit"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    assert_eq!(sys::exit_code_under(&p, &body), 7);
}
