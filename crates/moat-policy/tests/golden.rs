//! Golden tests: the compiled BPF of the built-in policies is pinned, so that
//! any change to a group, a built-in or the compiler shows up in review.
//! Regenerate with `MOAT_BLESS=1 cargo test -p moat-policy --test golden`.

use std::path::PathBuf;

use moat_policy::{bpf, compile, Policy};

fn check(name: &str) {
    let prog = compile(&Policy::builtin(name).unwrap())
        .unwrap()
        .seccomp
        .instructions;
    let text = bpf::disassemble(&prog);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.bpf.txt"));
    if std::env::var_os("MOAT_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == text,
        "compiled BPF of `{name}` changed; review the diff and rerun with MOAT_BLESS=1\n--- got\n{text}"
    );
}

#[test]
fn baseline_bpf_is_pinned() {
    check("baseline");
}

#[test]
fn restricted_bpf_is_pinned() {
    check("restricted");
}

#[test]
fn program_starts_with_arch_and_x32_checks() {
    let prog = compile(&Policy::builtin("baseline").unwrap())
        .unwrap()
        .seccomp
        .instructions;
    let head: Vec<String> = bpf::disassemble(&prog[..8])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        head,
        [
            "0000 ld  arch",
            "0001 jeq  0xc000003e, 3, 2",
            "0002 ret KILL_PROCESS",
            "0003 ld  nr",
            "0004 jge  0x40000000, 5, 6",
            "0005 ret KILL_PROCESS",
            "0006 jgt  0x1d5, 7, 8  ; file_setattr",
            "0007 ret ERRNO(38)",
        ]
    );
    // The raw form is 8 bytes per instruction.
    assert_eq!(bpf::to_bytes(&prog).len(), prog.len() * 8);
}

/// docs/policy.md shows the groups exactly as the code defines them.
#[test]
fn docs_list_the_groups_as_defined() {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/policy.md");
    let text = std::fs::read_to_string(&docs).unwrap();
    let table = moat_policy::syscalls::groups_markdown();
    assert!(
        text.contains(&table),
        "docs/policy.md is out of date; replace its group table with:\n{table}"
    );
}

/// docs/policy.md states the instruction counts of the built-ins.
#[test]
fn docs_state_the_filter_lengths() {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/policy.md");
    let text = std::fs::read_to_string(&docs).unwrap().replace('\n', " ");
    for name in ["baseline", "restricted"] {
        let n = compile(&Policy::builtin(name).unwrap())
            .unwrap()
            .seccomp
            .instructions
            .len();
        let want = format!("The compiled filter is {n} BPF instructions.");
        assert!(
            text.contains(&want),
            "docs/policy.md should say `{want}` for {name}"
        );
    }
}
