//! Issue 21: least privilege by default. Every image gets a profile when it
//! enters the store; `moat run` runs it under `auto` (baseline narrowed to
//! that profile) unless told otherwise; a call `auto` denies is named, with
//! its program and the line that grants it. Needs root for the runs.

mod sandbox_common;

use std::path::Path;

use sandbox_common::{can_sandbox, stderr, stdout, Env};

/// Imports the bundled busybox test image as `busybox`.
fn import_busybox(env: &Env) -> String {
    let tar = env.dir.path().join("busybox.tar");
    let out = env
        .moat(&["dev", "test-image", "-o", tar.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env
        .moat(&["image", "import", tar.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["manifest_digest"].as_str().unwrap().to_string()
}

fn json(env: &Env, args: &[&str]) -> serde_json::Value {
    let out = env.moat(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A static x86_64 ELF that calls `getcpu(0, 0, 0)` and exits 0 if it
/// worked, 1 if it was refused: a program from outside the image.
fn getcpu_program(path: &Path) {
    let code: [u8; 24] = [
        0xb8, 0x35, 0x01, 0, 0, // mov eax, 309 (getcpu)
        0x31, 0xff, 0x31, 0xf6, 0x31, 0xd2, // xor edi, esi, edx
        0x0f, 0x05, // syscall
        0x89, 0xc7, 0xf7, 0xdf, // mov edi, eax; neg edi
        0xb8, 0x3c, 0, 0, 0, // mov eax, 60 (exit)
        0x0f, 0x05,
    ];
    let base: u64 = 0x40_0000;
    let off: u64 = 64 + 56;
    let size = off + code.len() as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(base + off).to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 0, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [0u64, base, base, size, size, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&code);
    std::fs::write(path, f).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_image_profile_is_made_at_import_stored_and_shown() {
    if !can_sandbox("the_image_profile_is_made_at_import_stored_and_shown") {
        return;
    }
    let env = Env::new();
    let manifest = import_busybox(&env);
    let hex = manifest.strip_prefix("sha256:").unwrap();
    let stored = env.state_root().join(format!("images/{hex}.profile.json"));
    assert!(stored.is_file(), "no profile stored at import");

    let out = env.moat(&["image", "inspect", "busybox"]).output().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("Profile:      ") && text.contains("system calls from 1 ELF objects"),
        "{text}"
    );
    let v = json(&env, &["image", "inspect", "busybox", "--format", "json"]);
    assert!(v["profile"]["syscalls"]["write"].is_string(), "{v}");
    assert!(v["profile"]["syscalls"].get("kexec_load").is_none());

    // On demand: made again and stored.
    std::fs::remove_file(&stored).unwrap();
    let v = json(
        &env,
        &["profile", "static", "busybox", "--all", "--format", "json"],
    );
    assert_eq!(v["objects"], 1);
    assert!(stored.is_file());

    // moat surface IMAGE measures the policy the image runs under: auto.
    let v = json(&env, &["surface", "busybox", "--format", "json"]);
    let n = v["syscalls"]["allowed_count"].as_u64().unwrap();
    assert!(n > 100 && n < 301, "{n}");
    assert_eq!(v["policy"], "auto");
    assert!(v["image_profile"]["syscalls"].is_object());

    // explain --image: what auto grants and what it removed from baseline.
    let v = json(
        &env,
        &[
            "policy", "explain", "--image", "busybox", "--format", "json",
        ],
    );
    // (surface counts clone3 as denied: it fails with ENOSYS under the
    // clone flags condition; the policy lists it.)
    let allowed = v["image"]["allowed_count"].as_u64().unwrap();
    assert!(allowed == n || allowed == n + 1, "{allowed} {n}");
    assert_eq!(v["image"]["baseline_count"], 301);
    let removed = v["image"]["removed_from_baseline"].as_array().unwrap();
    assert_eq!(removed.len() as u64, 301 - allowed);
    assert!(removed.iter().any(|c| c == "io_setup"), "{removed:?}");
    let out = env
        .moat(&["policy", "explain", "--image", "busybox"])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("of 382 system calls allowed, baseline 301"),
        "{}",
        stdout(&out)
    );

    // auto alone has no image to narrow to.
    let out = env.moat(&["policy", "explain", "auto"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "moat: error: the `auto` policy is made per image from its profile, and this command has no image; pass --image IMAGE, or name another policy (baseline)\n"
    );

    // The profile goes with the image.
    let out = env.moat(&["image", "rm", "busybox"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stored.exists());
}

#[test]
fn run_defaults_to_auto_and_baseline_opts_out() {
    if !can_sandbox("run_defaults_to_auto_and_baseline_opts_out") {
        return;
    }
    let env = Env::new();
    import_busybox(&env);
    let out = env
        .moat(&[
            "run",
            "--isolation",
            "sandbox",
            "busybox",
            "sh",
            "-c",
            "echo hi; ls /bin/busybox",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi\n/bin/busybox\n");
    let out = env
        .moat(&[
            "run",
            "--isolation",
            "sandbox",
            "--policy",
            "baseline",
            "busybox",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Each run's authorisation is audited with the policy's name.
    let log = std::fs::read_to_string(env.state_root().join("audit/policy.log")).unwrap();
    let policies: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["policy"].to_string())
        .collect();
    assert_eq!(policies, ["\"auto\"", "\"baseline\""], "{log}");
}

#[test]
fn a_call_auto_denies_is_named_with_its_program_and_the_fix() {
    if !can_sandbox("a_call_auto_denies_is_named_with_its_program_and_the_fix") {
        return;
    }
    let env = Env::new();
    import_busybox(&env);
    // A program brought in by a volume is not in the image's profile.
    let tools = env.dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    getcpu_program(&tools.join("getcpu"));
    let policy = env.dir.path().join("tools.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: tools\nspec:\n  extends: auto\n  filesystem:\n    volumes:\n      - {{source: {}, path: /home}}\n",
            tools.display()
        ),
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let run = |policy: &str| {
        env.moat(&[
            "run",
            "--isolation",
            "sandbox",
            "--policy",
            policy,
            "--entrypoint",
            "/home/getcpu",
            "busybox",
        ])
        .output()
        .unwrap()
    };
    let out = run(p);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "moat: the workload exited 1; policy tools denied it 1 system call(s):\n  getcpu (#309) by /home/getcpu\n  to allow it: a policy file with `extends: auto` and the line `  syscalls: {allow: [getcpu]}` under `spec:`, passed with --policy FILE\n  or opt out of auto for this run: --policy baseline\n"
    );
    // The line it suggests works.
    let text = std::fs::read_to_string(&policy).unwrap() + "  syscalls: {allow: [getcpu]}\n";
    std::fs::write(&policy, text).unwrap();
    let out = run(p);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}
