//! Terminal injection (issue 11 item 2, the policy part): no policy, written
//! or built, compiles to a filter that allows `TIOCSTI` or `TIOCLINUX`.
//! The compiled programs are run by a small classic-BPF evaluator on the
//! `seccomp_data` the kernel would pass.

use moat_policy::bpf::{
    self, BPF_JMP_JEQ_K, BPF_JMP_JGE_K, BPF_JMP_JGT_K, BPF_JMP_JSET_K, BPF_LD_W_ABS, BPF_RET_K,
};
use moat_policy::model::IoctlRule;
use moat_policy::plan::SockFilter;
use moat_policy::{compile, explain, render, syscalls, Policy};

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;
const TCGETS: u64 = 0x5401;
const FIONREAD: u64 = 0x541B;
const DENY: u32 = bpf::SECCOMP_RET_ERRNO | bpf::EPERM;

/// What the filter answers for `ioctl(0, request, 0)`.
fn ioctl_verdict(prog: &[SockFilter], request: u64) -> u32 {
    let mut data = [0u8; 64];
    let nr = syscalls::number("ioctl").unwrap();
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&syscalls::AUDIT_ARCH_X86_64.to_le_bytes());
    data[24..32].copy_from_slice(&request.to_le_bytes()); // args[1]
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let i = prog[pc];
        let k = i.k;
        let jump = |cond: bool| 1 + usize::from(if cond { i.jt } else { i.jf });
        pc += match i.code {
            BPF_LD_W_ABS => {
                let o = k as usize;
                a = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                1
            }
            BPF_JMP_JEQ_K => jump(a == k),
            BPF_JMP_JGT_K => jump(a > k),
            BPF_JMP_JGE_K => jump(a >= k),
            BPF_JMP_JSET_K => jump(a & k != 0),
            BPF_RET_K => return k,
            other => panic!("unexpected opcode {other:#x}"),
        };
    }
}

fn policy(ioctl: &str) -> String {
    format!(
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: tty\nspec:\n  extends: baseline\n  syscalls:\n    conditions:\n{ioctl}"
    )
}

#[test]
fn a_policy_allowing_tiocsti_or_tioclinux_is_refused_at_its_line() {
    let err = Policy::parse(
        &policy("      ioctl:\n        allow: [TCGETS, TIOCSTI]\n"),
        "tty.yaml",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tty.yaml:10:25: `spec.syscalls.conditions.ioctl.allow` lists TIOCSTI (0x5412), which moat never allows: it pushes characters into a terminal's input as if they were typed, so a workload holding a terminal could type commands into the shell that started it; remove it (it is denied whatever a policy says)"
    );
    let err = Policy::parse(
        &policy("      ioctl:\n        allow:\n          - 0x541c\n"),
        "tty.yaml",
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "tty.yaml:11:13: `spec.syscalls.conditions.ioctl.allow` lists TIOCLINUX (0x541c), which moat never allows: it pastes the console selection"
        ),
        "{err}"
    );
    // Denying them is of course fine.
    Policy::parse(
        &policy("      ioctl:\n        deny: [TIOCSTI, TIOCLINUX]\n"),
        "tty.yaml",
    )
    .unwrap();
}

#[test]
fn policies_that_allow_ioctl_still_deny_terminal_injection() {
    // No ioctl condition at all, and a deny list that forgets them.
    let bare = "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: bare\nspec:\n  syscalls:\n    allow: [ioctl, read, write, exit_group]\n";
    let forgets = policy("      ioctl:\n        deny: [FIONREAD]\n");
    for (text, also_denied) in [(bare.to_string(), None), (forgets, Some(FIONREAD))] {
        let p = Policy::parse(&text, "p.yaml").unwrap();
        let plan = compile(&p).unwrap();
        let prog = &plan.seccomp.instructions;
        for req in [
            TIOCSTI,
            TIOCLINUX,
            TIOCSTI | 1 << 32,
            TIOCLINUX | 0xdead << 40,
        ] {
            assert_eq!(ioctl_verdict(prog, req), DENY, "{}: {req:#x}", p.name);
        }
        assert_eq!(ioctl_verdict(prog, TCGETS), bpf::SECCOMP_RET_ALLOW);
        if let Some(r) = also_denied {
            assert_eq!(ioctl_verdict(prog, r), DENY);
        }
        let e = explain::explain(&p);
        assert!(
            e.conditions.iter().any(|c| c.starts_with("ioctl: all but ")
                && c.contains("TIOCSTI")
                && c.contains("TIOCLINUX")),
            "{:?}",
            e.conditions
        );
        // The seccomp profile Docker and podman read denies them too,
        // comparing the 32 bits the kernel reads.
        let json = render::seccomp_json(&p);
        for req in [TIOCSTI, TIOCLINUX] {
            let rule = json["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["args"][0]["valueTwo"] == req)
                .unwrap_or_else(|| panic!("no rule for {req:#x}: {json}"));
            assert_eq!(rule["names"][0], "ioctl");
            assert_eq!(rule["action"], "SCMP_ACT_ERRNO");
            assert_eq!(rule["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
            assert_eq!(rule["args"][0]["value"], 0xffff_ffffu32);
        }
    }
}

#[test]
fn the_compiler_refuses_a_built_policy_that_allows_them() {
    let mut p = Policy::builtin("restricted").unwrap();
    p.spec.syscalls.conditions.ioctl = IoctlRule::Allow([0x5401, 0x5412].into_iter().collect());
    let err = compile(&p).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot compile policy `restricted`: ioctl request TIOCSTI (0x5412) is never allowed: it pushes characters into a terminal's input as if they were typed, so a workload holding a terminal could type commands into the shell that started it; remove it from `conditions.ioctl.allow`"
    );
}

#[test]
fn built_in_policies_deny_them() {
    for name in ["baseline", "restricted"] {
        let p = Policy::builtin(name).unwrap();
        let prog = compile(&p).unwrap().seccomp.instructions;
        for req in [TIOCSTI, TIOCLINUX, TIOCSTI | 1 << 32] {
            assert_eq!(ioctl_verdict(&prog, req), DENY, "{name}: {req:#x}");
        }
        assert_eq!(
            ioctl_verdict(&prog, TCGETS),
            bpf::SECCOMP_RET_ALLOW,
            "{name}"
        );
        let json = render::seccomp_json(&p).to_string();
        assert!(
            !json.contains(&format!("\"value\":{TIOCSTI},\"op\":\"SCMP_CMP_EQ\"")),
            "{name}: {json}"
        );
    }
}

/// `moat policy diff` speaks the policy file's language, never Rust's.
#[test]
fn diff_prints_grants_in_the_policys_own_words() {
    let a = Policy::builtin("baseline").unwrap();
    let b = Policy::parse(
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {name: b}\nspec:\n  extends: baseline\n  syscalls:\n    conditions:\n      socket:\n        families: [AF_UNIX]\n      ioctl:\n        allow: [TCGETS]\n  network:\n    mode: egress\n    egress: [{to: 127.0.0.0/8, ports: 443, protocol: tcp}]\n    publish: [{host: 8080, container: 80}]\n  resources:\n    memory: 256Mi\n    cpus: 0.5\n  process: {user: 1000, group: 1000}\n  image:\n    allowed: [registry.example/*]\n    require_digest: true\n  vulnerabilities:\n    fail_on: high\n",
        "b.yaml",
    )
    .unwrap();
    let lines: Vec<String> = explain::diff(&a, &b)
        .iter()
        .map(|c| format!("{} {} {}", c.sign, c.what, c.detail))
        .filter(|l| !l.starts_with("+ syscall ") && !l.starts_with("- syscall "))
        .collect();
    for want in [
        "~ syscalls.conditions.socket.families [AF_UNIX, AF_INET, AF_INET6, AF_NETLINK] -> [AF_UNIX]",
        "~ syscalls.conditions.ioctl deny [TIOCSTI, TIOCLINUX] -> allow [TCGETS]",
        "~ network none -> egress",
        "+ network.egress {to: 127.0.0.0/8, ports: 443, protocol: tcp}",
        "+ network.publish {host: 8080, container: 80, protocol: tcp}",
        "~ resources.memory 512Mi -> 256Mi",
        "~ resources.cpus 1 -> 0.5",
        "~ process.user the image's -> 1000",
        "+ image.allowed registry.example/*",
        "~ image.require_digest false -> true",
        "~ vulnerabilities.fail_on none -> high",
    ] {
        assert!(lines.iter().any(|l| l == want), "missing {want:?} in {lines:#?}");
    }
    for l in &lines {
        assert!(
            !l.contains("Some(") && !l.contains(" { ") && !l.contains("None"),
            "a Rust debug structure: {l}"
        );
    }
}
