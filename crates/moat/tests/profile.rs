//! `moat profile static|record|merge` and `moat surface`, end to end
//! through the CLI. The recording, verification and measurement tests need
//! root (CI runs as root) and skip with `SKIP:` otherwise.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use moat_testkit::host as vm_host;
use vm_host::vm_lock;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("moat-profile-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Env { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn moat(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_moat"))
            .arg("--root")
            .arg(self.path("state"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A rootfs with Debian's static busybox and its applet links.
    fn busybox_rootfs(&self) -> PathBuf {
        let root = self.path("busybox");
        moat_testkit::rootfs::busybox_rootfs(&root);
        open_up(&root);
        root
    }

    /// A rootfs holding Debian's dynamically linked coreutils `ls` and
    /// exactly the libraries the loader maps for it, copied from this host.
    fn glibc_rootfs(&self) -> PathBuf {
        let root = self.path("glibc");
        let objects = loader_closure("/usr/bin/ls");
        for path in &objects {
            let dst = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(path, &dst).unwrap();
        }
        for d in ["etc", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        open_up(&root);
        root
    }
}

/// The objects `moat profile static` reports for a host program: the
/// program and its loader closure (the test builds its image from them).
fn loader_closure(program: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args([
            "profile",
            "static",
            "--rootfs",
            "/",
            "--entrypoint",
            program,
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap().to_string())
        .collect()
}

fn open_up(root: &Path) {
    let out = Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success());
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

fn can_trace(test: &str) -> bool {
    if !is_root() {
        println!("SKIP: {test}: needs root (sandbox and tracefs)");
        return false;
    }
    if !Path::new("/bin/busybox").exists() {
        println!("SKIP: {test}: /bin/busybox (busybox-static) is not installed");
        return false;
    }
    if moat_profile::trace::ensure_tracefs().is_err() {
        println!("SKIP: {test}: tracefs cannot be mounted");
        return false;
    }
    true
}

fn can_record(test: &str) -> bool {
    if !can_trace(test) {
        return false;
    }
    let help = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&help.stdout).contains("--isolation") {
        println!("SKIP: {test}: this moat has no sandbox backend (`moat run`)");
        return false;
    }
    true
}

fn allowed_count(env: &Env, policy: &Path) -> usize {
    let out = env.moat(&["surface", policy.to_str().unwrap(), "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = v["syscalls"]["allowed_count"].as_u64().unwrap() as usize;
    assert_eq!(n, v["syscalls"]["allowed"].as_array().unwrap().len());
    n
}

#[test]
fn static_profile_of_the_busybox_image() {
    if !Path::new("/bin/busybox").exists() {
        println!("SKIP: static_profile_of_the_busybox_image: busybox-static is not installed");
        return;
    }
    let env = Env::new();
    let archive = env.path("bb.tar");
    let out = env.moat(&["dev", "test-image", "-o", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.moat(&["image", "import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let policy = env.path("bb.yaml");
    let out = env.moat(&[
        "profile",
        "static",
        "busybox",
        "-o",
        policy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("moat: wrote "), "{}", stderr(&out));
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains("  extends: restricted\n"), "{text}");
    assert!(text.contains("(static executable)"), "{text}");
    for needed in ["getdents64", "write", "exit_group"] {
        assert!(
            text.contains(&format!("      - {needed} ")),
            "{needed}: {text}"
        );
    }
    // surface accepts the image itself (its static profile) and the file.
    let n = allowed_count(&env, &policy);
    assert!(n > 117 && n < 300, "{n}");
    let out = env.moat(&["surface", "busybox", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn static_errors_name_the_input() {
    let env = Env::new();
    let root = env.path("empty");
    std::fs::create_dir_all(&root).unwrap();
    let out = env.moat(&[
        "profile",
        "static",
        "--rootfs",
        root.to_str().unwrap(),
        "--entrypoint",
        "app",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "moat: error: static analysis of {}: entrypoint \"app\" not found in the image (searched /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin); pass --entrypoint PATH\n",
            root.display()
        )
    );
    let out = env.moat(&["profile", "static", "--rootfs", "/nonexistent-moat"]);
    assert_eq!(
        stderr(&out),
        "moat: error: --rootfs /nonexistent-moat: not a directory; pass an unpacked root filesystem\n"
    );
    let out = env.moat(&["profile", "static", "nosuch"]);
    assert_eq!(
        stderr(&out),
        "moat: error: no image matches \"nosuch\" (see `moat image ls`)\n"
    );
}

#[test]
fn merge_unions_two_profiles_and_refuses_other_files() {
    let env = Env::new();
    let a = env.path("a.yaml");
    let b = env.path("b.yaml");
    let head = "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: a\nspec:\n  extends: restricted\n  syscalls:\n    allow:\n";
    std::fs::write(
        &a,
        format!("{head}      - read  # recorded 1 call\n      - mount  # x\n"),
    )
    .unwrap();
    std::fs::write(&b, format!("{head}      - write  # y\n")).unwrap();
    let m = env.path("m.yaml");
    let (a_s, b_s, m_s) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        m.to_str().unwrap(),
    );
    let out = env.moat(&["profile", "merge", a_s, b_s, "-o", m_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&m).unwrap();
    assert!(text.contains("      - mount  # x\n"), "{text}");
    assert!(
        text.contains("      - read   # recorded 1 call\n"),
        "{text}"
    );
    assert!(text.contains("      - write  # y\n"), "{text}");
    let bad = env.path("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: moat.dev/v1\nkind: Policy\nspec:\n  extends: baseline\n",
    )
    .unwrap();
    let out = env.moat(&["profile", "merge", a_s, bad.to_str().unwrap(), "-o", m_s]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("moat: error: {}:4: unexpected `extends: baseline`; `moat profile merge` reads only policies written by `moat profile`\n", bad.display())
    );
    // Nothing half-written: the earlier merge result is intact.
    assert_eq!(std::fs::read_to_string(&m).unwrap(), text);
}

#[test]
fn surface_of_builtins_as_json() {
    let env = Env::new();
    let out = env.moat(&["surface", "restricted", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = env.moat(&["surface", "baseline", "--format", "json"]);
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rc = r["syscalls"]["allowed_count"].as_u64().unwrap();
    let bc = b["syscalls"]["allowed_count"].as_u64().unwrap();
    assert!(rc < bc, "restricted {rc} vs baseline {bc}");
    assert!(!r["syscalls"]["allowed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "mount"));
    assert_eq!(r["capabilities"]["count"], 0);
    assert_eq!(r["capabilities"]["docker_default_count"], 14);
    assert!(r["score"].as_f64().unwrap() < b["score"].as_f64().unwrap());
    assert!(b["score"].as_f64().unwrap() < r["docker_default_score"].as_f64().unwrap());
    let out = env.moat(&["surface", "restricted"]);
    assert!(
        stdout(&out).contains("capabilities 0 (Docker's default: 14)\n"),
        "{}",
        stdout(&out)
    );
    let out = env.moat(&["surface", "/nonexistent.yaml"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn record_busybox_shell_within_60_syscalls_and_runs_under_it() {
    if !can_record("record_busybox_shell_within_60_syscalls_and_runs_under_it") {
        return;
    }
    let env = Env::new();
    let rootfs = env.busybox_rootfs();
    let root_s = rootfs.to_str().unwrap();
    let policy = env.path("sh.yaml");
    let pol_s = policy.to_str().unwrap();
    let script = "echo hi; ls /; cat /etc/passwd";
    let out = env.moat(&[
        "profile", "record", "--rootfs", root_s, "-o", pol_s, "--", "/bin/sh", "-c", script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("moat: verified: the workload exits 0 with the same output"),
        "{}",
        stderr(&out)
    );
    // `auto` records with eBPF on this kernel.
    assert!(stderr(&out).contains(" with ebpf; "), "{}", stderr(&out));
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(!text.contains("      - mount"), "{text}");
    let n = allowed_count(&env, &policy);
    assert!(n <= 60, "{n} syscalls allowed:\n{text}");
    // Runs under it, enforcing, with the expected output.
    let run = |script: &str| {
        env.moat(&[
            "run",
            "--isolation",
            "sandbox",
            "--policy",
            pol_s,
            "--rootfs",
            root_s,
            "/bin/sh",
            "-c",
            script,
        ])
    };
    let out = run(script);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("hi\nbin\n"), "{}", stdout(&out));
    assert!(
        stdout(&out).ends_with("nobody:x:65534:65534::/:/bin/false\n"),
        "{}",
        stdout(&out)
    );
    // Something it did not record is denied.
    let out = run("mkdir /tmp/x");
    assert!(!out.status.success(), "mkdir ran under the recorded policy");
}

/// The write paths and both recorders through the CLI: eBPF names the
/// path opened for writing under the writable /tmp; tracefs, forced,
/// records the same syscalls without path names.
#[test]
fn record_names_paths_opened_for_writing_and_tracefs_still_works() {
    if !can_record("record_names_paths_opened_for_writing_and_tracefs_still_works") {
        return;
    }
    let env = Env::new();
    let rootfs = env.busybox_rootfs();
    let root_s = rootfs.to_str().unwrap();
    let script = "echo x > /tmp/f; cat /tmp/f";
    let record = |recorder: &str, out: &Path| {
        env.moat(&[
            "profile",
            "record",
            "--recorder",
            recorder,
            "--rootfs",
            root_s,
            "-o",
            out.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
    };
    let ebpf = env.path("ebpf.yaml");
    let out = record("ebpf", &ebpf);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(" with ebpf; the workload exited 0\n"),
        "{}",
        stderr(&out)
    );
    let e = std::fs::read_to_string(&ebpf).unwrap();
    assert!(
        e.contains("\n  # opened for writing: /tmp/f (writable tmpfs /tmp)\n"),
        "{e}"
    );
    let tracefs = env.path("tracefs.yaml");
    let out = record("tracefs", &tracefs);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(" with tracefs; the workload exited 0\n"),
        "{}",
        stderr(&out)
    );
    let t = std::fs::read_to_string(&tracefs).unwrap();
    assert!(!t.contains("opened for writing:"), "{t}");
    assert!(t.contains("# Recorded with tracefs: paths opened for writing are not recorded"));
    // Same allow list either way.
    let allow = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("      - ") && l.contains('#'))
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .collect()
    };
    assert_eq!(allow(&e), allow(&t));
    assert!(allow(&e).contains(&"openat".to_string()));
    let out = env.moat(&[
        "profile",
        "record",
        "--recorder",
        "strace",
        "--rootfs",
        root_s,
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid value 'strace' for '--recorder <RECORDER>'"),
        "{}",
        stderr(&out)
    );
}

/// Without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN, bpf(2) is refused:
/// `auto` falls back to tracefs, says why once, and still records.
#[test]
fn record_falls_back_to_tracefs_without_bpf_privileges() {
    let test = "record_falls_back_to_tracefs_without_bpf_privileges";
    if !can_record(test) {
        return;
    }
    if !Path::new("/usr/bin/setpriv").exists() {
        println!("SKIP: {test}: setpriv (util-linux) is not installed");
        return;
    }
    let env = Env::new();
    let rootfs = env.busybox_rootfs();
    let policy = env.path("fb.yaml");
    let drop = "-sys_admin,-bpf,-perfmon";
    let out = Command::new("/usr/bin/setpriv")
        .args(["--bounding-set", drop, "--inh-caps", drop, "--"])
        .arg(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(env.path("state"))
        .args(["profile", "record", "--rootfs"])
        .arg(&rootfs)
        .arg("-o")
        .arg(&policy)
        .args(["--", "/bin/sh", "-c", "echo hi; cat /etc/passwd"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.matches("moat: notice: the eBPF recorder is unavailable (cannot create the eBPF map moat_tracked: Operation not permitted (os error 1)); recording with tracefs instead (slower, no names of paths opened for writing)\n").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains(" with tracefs; the workload exited 0\n"),
        "{err}"
    );
    assert!(
        err.contains("moat: verified: the workload exits 0 with the same output"),
        "{err}"
    );
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains("      - execve "), "{text}");
}

#[test]
fn static_profile_of_a_glibc_program_passes_verify() {
    if !can_record("static_profile_of_a_glibc_program_passes_verify") {
        return;
    }
    let env = Env::new();
    let rootfs = env.glibc_rootfs();
    let policy = env.path("ls.yaml");
    let out = env.moat(&[
        "profile",
        "static",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--entrypoint",
        "/usr/bin/ls",
        "--verify",
        "-o",
        policy.to_str().unwrap(),
        "--",
        "/usr/bin/ls",
        "-la",
        "/etc",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("moat: verified: the workload exits 0 with the same output"),
        "{}",
        stderr(&out)
    );
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains("(libc (glibc))"), "{text}");
    assert!(text.contains("      - getdents64  "), "{text}");
    assert!(text.contains("# libc:"), "{text}");
}

#[test]
fn verify_refuses_output_that_differs() {
    if !can_record("verify_refuses_output_that_differs") {
        return;
    }
    let env = Env::new();
    let rootfs = env.busybox_rootfs();
    // The pid and start time in /proc/self/stat differ between the recorded
    // and the enforcing run, so verification must refuse and write nothing.
    let policy = env.path("x.yaml");
    let out = env.moat(&[
        "profile",
        "record",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "-o",
        policy.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "cat /proc/self/stat",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("moat: error: verification failed: under the generated policy the workload gave different output; nothing written"),
        "{}",
        stderr(&out)
    );
    assert!(!policy.exists());
}

#[test]
fn measure_crun_through_the_cli() {
    if !can_trace("measure_crun_through_the_cli") {
        return;
    }
    if !Path::new("/usr/bin/crun").exists() {
        println!("SKIP: measure_crun_through_the_cli: crun is not installed");
        return;
    }
    let env = Env::new();
    let rootfs = env.busybox_rootfs();
    let out = env.moat(&[
        "surface",
        "measure",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--isolation",
        "crun",
        "--format",
        "json",
        "--",
        "/bin/sh",
        "-c",
        "echo hi; ls /",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["backend"], "crun");
    assert_eq!(v[0]["exit_code"], 0);
    let n = v[0]["syscalls_count"].as_u64().unwrap();
    assert!(n > 10 && n < 60, "{n}");
}

#[test]
fn measure_sandbox_counts_the_workload_only() {
    if !can_record("measure_sandbox_counts_the_workload_only") {
        return;
    }
    let env = Env::new();
    let rootfs = env.busybox_rootfs();
    let out = env.moat(&[
        "surface",
        "measure",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--isolation",
        "sandbox",
        "--format",
        "json",
        "--",
        "/bin/sh",
        "-c",
        "echo hi; ls /",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["backend"], "sandbox");
    assert_eq!(v[0]["exit_code"], 0);
    assert_eq!(v[0]["recorder"], "ebpf");
    let names: Vec<&str> = v[0]["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(names.contains(&"getdents64"), "{names:?}");
    // moat's own setup (mounts, pivot_root, seccomp) is not the tenant's.
    for setup in ["mount", "pivot_root", "seccomp", "unshare"] {
        assert!(!names.contains(&setup), "{setup} in {names:?}");
    }
    // Level (b): measured, or refused with the reason.
    let hap_ok = v[0]["hap_functions"].as_u64().is_some_and(|n| n > 0);
    let refused = v[0]["hap_unavailable"]
        .as_str()
        .is_some_and(|w| w.contains("function tracer cannot be enabled"));
    assert!(hap_ok || refused, "{}", v[0]);
}

#[test]
fn measure_vm_counts_the_qemu_process() {
    let test = "measure_vm_counts_the_qemu_process";
    if !can_record(test) {
        return;
    }
    if !Path::new("/usr/bin/qemu-system-x86_64").is_file() {
        println!("SKIP: {test}: qemu-system-x86_64 is not installed");
        return;
    }
    let env = Env::new();
    let k = env.moat(&["kernel", "path"]);
    if !k.status.success() {
        println!(
            "SKIP: {test}: guest kernel not built: {}",
            stderr(&k).trim()
        );
        return;
    }
    let archive = env.path("busybox.oci.tar");
    let o = env.moat(&["dev", "test-image", "-o", archive.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.moat(&["image", "import", archive.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _l = vm_lock();
    let out = env.moat(&[
        "surface",
        "measure",
        "busybox",
        "--isolation",
        "vm",
        "--accel",
        "tcg",
        "--format",
        "json",
        "--",
        "/bin/sh",
        "-c",
        "echo hi; ls /",
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v[0];
    assert_eq!(m["backend"], "vm", "{m}");
    assert_eq!(m["exit_code"], 0, "{m}");
    assert_eq!(m["recorder"], "ebpf", "{m}");
    assert!(
        m["footprint"]
            .as_str()
            .unwrap()
            .starts_with("the QEMU process"),
        "{m}"
    );
    let names: Vec<&str> = m["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    // QEMU's own work: its event loop and the guest's I/O.
    for needed in ["ppoll", "read", "write", "mmap", "futex"] {
        assert!(names.contains(&needed), "{needed} missing: {names:?}");
    }
    // moat's jail setup before QEMU's exec is not QEMU's footprint.
    for setup in ["pivot_root", "unshare", "mount"] {
        assert!(!names.contains(&setup), "{setup} in {names:?}");
    }
    let n = m["syscalls_count"].as_u64().unwrap();
    assert!(n > 20 && n < 150, "{n}");
    assert!(m["tasks"].as_u64().unwrap() >= 2, "{m}");
    let hap_ok = m["hap_functions"].as_u64().is_some_and(|n| n > 0);
    let refused = m["hap_unavailable"]
        .as_str()
        .is_some_and(|w| w.contains("function tracer cannot be enabled"));
    assert!(hap_ok || refused, "{m}");
}
