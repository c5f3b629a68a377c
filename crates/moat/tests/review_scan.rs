//! Second-review and new-user regressions in profile recording
//! (issue 23 items 1 and 6, issue 11 item 2): each test records a hostile
//! workload with `moat profile record` and checks what reaches the policy.
//! They need root, tracefs and busybox-static and print `SKIP:` otherwise.

#[path = "sandbox_common/mod.rs"]
mod sandbox_common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sandbox_common::{can_sandbox, escape_helper, stderr, stdout, Env};

fn can_record(test: &str) -> bool {
    if !can_sandbox(test) {
        return false;
    }
    if moat_profile::trace::ensure_tracefs().is_err() {
        println!("SKIP: {test}: tracefs cannot be mounted");
        return false;
    }
    true
}

/// The static helper `tests/helper/scan_helper.rs`, built once.
fn scan_helper() -> PathBuf {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helper/scan_helper.rs");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("scan-helper-{}", std::process::id()));
            let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
            let st = Command::new(rustc)
                .args([
                    "--edition",
                    "2021",
                    "-O",
                    "-C",
                    "target-feature=+crt-static",
                    "-o",
                ])
                .arg(&out)
                .arg(&src)
                .status()
                .expect("running rustc for the scan helper");
            assert!(st.success(), "building the scan helper failed");
            out
        })
        .clone()
}

fn install(env: &Env, from: &Path, name: &str) {
    let dst = env.rootfs.join("bin").join(name);
    std::fs::copy(from, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `moat profile record --recorder ebpf --rootfs ROOTFS -o OUT ... -- CMD`.
fn record(env: &Env, out: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    let root = env.rootfs.to_str().unwrap();
    let mut args = vec!["profile", "record", "--recorder", "ebpf", "--rootfs", root];
    args.extend(["-o", out.to_str().unwrap()]);
    args.extend(extra);
    args.push("--");
    args.extend(cmd);
    env.moat(&args).output().unwrap()
}

/// Issue 23 item 1: the workload opens a path holding a line break and a
/// `capabilities:` line for writing. The policy written names the path in a
/// comment, escaped, and grants no capability (`moat policy explain`).
#[test]
fn recorded_path_cannot_write_capabilities_into_the_policy() {
    let test = "recorded_path_cannot_write_capabilities_into_the_policy";
    if !can_record(test) {
        return;
    }
    let env = Env::new();
    let policy = env.dir.path().join("rec.yaml");
    let script = r#"p="$(printf '/tmp/a\n  capabilities: [SYS_ADMIN, SYS_PTRACE]\n  #')"; echo x > "$p"; echo done"#;
    let out = record(&env, &policy, &[], &["/bin/sh", "-c", script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&policy).unwrap();
    for line in text.lines() {
        if line.contains("capabilities") {
            assert!(
                line.trim_start().starts_with('#'),
                "recorded text became a policy line: {line:?}\n{text}"
            );
        }
    }
    assert!(
        text.contains(r#"  # opened for writing: "/tmp/a\n  capabilities: [SYS_ADMIN, SYS_PTRACE]\n  #" (writable tmpfs /tmp)"#),
        "{text}"
    );
    let explain = env
        .moat(&["policy", "explain", policy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(explain.status.success(), "{}", stderr(&explain));
    assert!(
        stdout(&explain).contains("  capabilities  0 of 41 "),
        "{}",
        stdout(&explain)
    );
    let json = env
        .moat(&[
            "policy",
            "explain",
            policy.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["capabilities_count"], 0, "{v}");
}

/// Issue 11 item 2 (the profile part): the workload uses TIOCSTI and
/// TIOCLINUX while recorded; the recording run refuses both (EPERM, so the
/// workload exits 0) and the policy never allows them.
#[test]
fn recorded_policy_never_allows_tiocsti_or_tioclinux() {
    let test = "recorded_policy_never_allows_tiocsti_or_tioclinux";
    if !can_record(test) {
        return;
    }
    let env = Env::new();
    install(&env, &scan_helper(), "scan-helper");
    let policy = env.dir.path().join("rec.yaml");
    let out = record(&env, &policy, &[], &["/bin/scan-helper"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("; the workload exited 0\n"),
        "the recording run let TIOCSTI or TIOCLINUX through:\n{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("moat: verified: the workload exits 0"),
        "{}",
        stderr(&out)
    );
    let text = std::fs::read_to_string(&policy).unwrap();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let body = line.split(" #").next().unwrap();
        assert!(
            !body.contains("TIOCSTI")
                && !body.contains("TIOCLINUX")
                && !body.contains("0x5412")
                && !body.contains("0x541c"),
            "{line}\n{text}"
        );
    }
    let p = moat_policy::Policy::load(&policy).unwrap();
    match &p.spec.syscalls.conditions.ioctl {
        moat_policy::model::IoctlRule::Allow(set) => {
            assert!(!set.contains(&0x5412) && !set.contains(&0x541c), "{set:?}")
        }
        other => panic!("ioctl condition {other:?}\n{text}"),
    }
}

/// Issue 23 item 6: while recorded, the workload tries keyrings, perf,
/// io_uring, bpf, a nested user namespace, a mount namespace and a mount.
/// Each fails with EPERM (the workload exits 0 only then), the recording
/// names the attempts, and the policy grants none of them.
#[test]
fn recording_denies_the_kernel_surface_restricted_denies() {
    let test = "recording_denies_the_kernel_surface_restricted_denies";
    if !can_record(test) {
        return;
    }
    let env = Env::new();
    install(&env, &escape_helper(), "escape-helper");
    let policy = env.dir.path().join("rec.yaml");
    let script = "escape-helper syscalls > /tmp/o; escape-helper unshare-mount >> /tmp/o; \
        cat /tmp/o >&2; \
        n=$(grep -cE '^(add_key|keyctl|request_key|perf_event_open|io_uring_setup|bpf|unshare|unshare-mountns|mount|clone-newuser): EPERM$' /tmp/o); \
        [ \"$n\" = 10 ] || exit 7";
    let out = record(&env, &policy, &["--no-verify"], &["/bin/sh", "-c", script]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("; the workload exited 0\n"),
        "a floor call was not refused with EPERM while recording:\n{err}"
    );
    let attempts = err
        .lines()
        .find(|l| l.starts_with("moat: the workload attempted calls that recording denies"))
        .unwrap_or_else(|| panic!("no report of the attempts:\n{err}"));
    for name in [
        "add_key",
        "keyctl",
        "request_key",
        "perf_event_open",
        "io_uring_setup",
        "bpf",
        "unshare",
        "mount",
    ] {
        assert!(
            attempts.split([' ', ',']).any(|w| w == name),
            "{name}: {attempts}"
        );
    }
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(
        text.contains("  # failed privileged operation (not granted): add_key: attempted, denied while recording (outside `restricted`)\n"),
        "{text}"
    );
    let p = moat_policy::Policy::load(&policy).unwrap();
    for name in [
        "add_key",
        "keyctl",
        "perf_event_open",
        "io_uring_setup",
        "bpf",
        "unshare",
        "mount",
    ] {
        assert!(
            !p.spec.syscalls.allow.contains(name),
            "{name} granted:\n{text}"
        );
    }
    assert!(p.spec.syscalls.conditions.clone_deny_flags & 0x1000_0000 != 0);
}
