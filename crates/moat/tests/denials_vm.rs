//! In a micro-VM, a call the policy denies is named with its program and
//! the line that allows it, as in the sandbox: the agent installs the
//! workload's filter with SECCOMP_FILTER_FLAG_LOG and reads the guest
//! kernel's audit records itself. Needs root, QEMU and the guest kernel;
//! skips with `SKIP:` otherwise. TCG here.

#[path = "sandbox_common/mod.rs"]
mod common;

use common::{stderr, vm_ready, Env};

#[test]
fn a_call_the_policy_denies_in_a_vm_is_named_with_its_program_and_the_fix() {
    let env = Env::new();
    if !vm_ready(
        &env,
        "a_call_the_policy_denies_in_a_vm_is_named_with_its_program_and_the_fix",
    ) {
        return;
    }
    let p = env.policy(
        "nomkdir",
        "  syscalls:\n    deny: [mkdir, mkdirat]\n  audit:\n    denied_syscalls: true\n",
    );
    let root = env.rootfs.display().to_string();
    let o = env
        .moat(&[
            "run",
            "--rm",
            "-q",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "--policy",
            &p,
            "--rootfs",
            &root,
            "sh",
            "-c",
            "mkdir /tmp/a; mkdir /tmp/b; exit 5",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("moat: the workload exited 5; policy nomkdir denied it 1 system call(s):\n  mkdir (#83) by /bin/busybox, 2 times\n"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "  to allow it: a policy file with `extends: {p}` and the line `  syscalls: {{allow: [mkdir]}}` under `spec:`, passed with --policy FILE"
        )),
        "{err}"
    );
    // Without audit.denied_syscalls the filter logs nothing: no report.
    let quiet = env.policy("nomkdir-quiet", "  syscalls:\n    deny: [mkdir, mkdirat]\n");
    let o = env
        .moat(&[
            "run",
            "--rm",
            "-q",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "--policy",
            &quiet,
            "--rootfs",
            &root,
            "sh",
            "-c",
            "mkdir /tmp/a; exit 5",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(!stderr(&o).contains("denied it"), "{}", stderr(&o));
}

/// Under a policy that extends `auto` (which logs denials by itself) the
/// report offers `extends: auto` and the way out of auto, as the sandbox's.
#[test]
fn under_auto_a_denied_call_in_a_vm_names_the_way_out_of_auto() {
    let env = Env::new();
    if !vm_ready(
        &env,
        "under_auto_a_denied_call_in_a_vm_names_the_way_out_of_auto",
    ) {
        return;
    }
    let p = env.dir.path().join("autonomkdir.yaml");
    std::fs::write(
        &p,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: autonomkdir\nspec:\n  extends: auto\n  syscalls:\n    deny: [mkdir, mkdirat]\n",
    )
    .unwrap();
    let root = env.rootfs.display().to_string();
    let o = env
        .moat(&[
            "run",
            "--rm",
            "-q",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "--policy",
            p.to_str().unwrap(),
            "--rootfs",
            &root,
            "sh",
            "-c",
            "mkdir /tmp/a; exit 6",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("moat: the workload exited 6; policy autonomkdir denied it 1 system call(s):\n  mkdir (#83) by /bin/busybox\n  to allow it: a policy file with `extends: auto` and the line `  syscalls: {allow: [mkdir]}` under `spec:`, passed with --policy FILE\n  or opt out of auto for this run: --policy baseline\n"),
        "{err}"
    );
}
