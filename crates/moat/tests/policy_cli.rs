//! `moat policy ...` end to end: exit codes, output, files, and the compiled
//! artefacts checked by the tools that consume them.

use moat_testkit::fixtures::{RBAC, WEB};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), WEB).unwrap();
        std::fs::write(dir.path().join("rbac.yaml"), RBAC).unwrap();
        Env { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn root(&self) -> PathBuf {
        self.path("state")
    }

    fn moat(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(args)
            .env("MOAT_ROOT", self.root())
            .env_remove("SUDO_UID")
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

#[test]
fn explain_baseline_compares_with_docker() {
    let e = Env::new();
    let o = e.moat(&["policy", "explain", "baseline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("policy baseline\n"), "{out}");
    assert!(
        out.contains("capabilities  0 of 41 (none); Docker's default grants 14\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "syscalls      301 of 382 allowed; Docker's default allows 294 unconditionally\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("writable      /tmp (tmpfs, 64Mi), /run (tmpfs, 16Mi)\n"),
        "{out}"
    );
    let o = e.moat(&["policy", "explain", "web.yaml", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], "web");
    assert_eq!(v["capabilities_count"], 1);
    assert_eq!(v["docker_capabilities_count"], 14);
    assert_eq!(v["syscalls_allowed"], 299);
    assert_eq!(v["syscalls_total"], 382);
}

#[test]
fn check_as_root_without_rbac_file_warns_once_and_audits() {
    if !is_root() {
        println!("SKIP: needs root (root-without-RBAC-file path)");
        return;
    }
    if Path::new("/etc/moat/rbac.yaml").exists() {
        println!("SKIP: /etc/moat/rbac.yaml exists on this machine");
        return;
    }
    let e = Env::new();
    let o = e.moat(&["policy", "check", "web.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "policy web: valid, allowed for root (no RBAC file)\n"
    );
    assert!(
        stderr(&o).contains(
            "moat: warning: no RBAC file at /etc/moat/rbac.yaml: root may grant anything"
        ),
        "{}",
        stderr(&o)
    );
    let o = e.moat(&["policy", "check", "web.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stderr(&o), "", "the warning is printed once");
    let log = std::fs::read_to_string(e.root().join("audit/policy.log")).unwrap();
    assert_eq!(log.lines().count(), 2);
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["principal"], "root");
    assert_eq!(first["policy"], "web");
}

#[test]
fn check_with_rbac_refuses_and_names_the_role() {
    let e = Env::new();
    // `nobody` exists on Debian and has no role in the example.
    let o = e.moat(&[
        "policy",
        "check",
        "web.yaml",
        "--as",
        "nobody",
        "--rbac",
        "rbac.yaml",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("policy web: refused for nobody:\n"),
        "{out}"
    );
    assert!(
        out.contains("  - capability NET_BIND_SERVICE: nobody has no role in rbac.yaml; role `platform-admin` allows it\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "  - network none: nobody has no role in rbac.yaml; role `developer` allows it\n"
        ),
        "{out}"
    );
    let o = e.moat(&[
        "policy",
        "check",
        "web.yaml",
        "--as",
        "root",
        "--rbac",
        "rbac.yaml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "policy web: valid, allowed for root (roles: platform-admin)\n"
    );
    let o = e.moat(&[
        "policy",
        "check",
        "web.yaml",
        "--as",
        "nobody",
        "--rbac",
        "rbac.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["allowed"], false);
    // capability, network none, isolation vm and isolation sandbox.
    assert_eq!(v["reasons"].as_array().unwrap().len(), 4);
}

#[test]
fn check_invalid_policy_exits_1_with_position() {
    let e = Env::new();
    std::fs::write(e.path("bad.yaml"), WEB.replace("mkdirat]", "mkdir_at]")).unwrap();
    let o = e.moat(&["policy", "check", "bad.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "moat: error: bad.yaml:10:19: unknown syscall `mkdir_at`; did you mean `mkdirat`?\n"
    );
    let o = e.moat(&["policy", "explain", "nosuch.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "moat: error: cannot read policy file nosuch.yaml: No such file or directory (os error 2)\n"
    );
}

#[test]
fn compile_formats() {
    let e = Env::new();
    let o = e.moat(&[
        "policy", "compile", "baseline", "--format", "bpf", "-o", "b.bpf",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan_o = e.moat(&["policy", "compile", "baseline", "--format", "plan"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan_o.stdout).unwrap();
    let n = plan["seccomp"]["instructions"].as_array().unwrap().len();
    assert_eq!(
        std::fs::metadata(e.path("b.bpf")).unwrap().len(),
        8 * n as u64
    );
    assert_eq!(plan["process"]["no_new_privs"], true);
    assert_eq!(plan["namespaces"].as_array().unwrap().len(), 7);

    let o = e.moat(&["policy", "compile", "web.yaml", "--format", "oci"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let oci: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(oci["root"]["readonly"], true);
    assert_eq!(oci["process"]["noNewPrivileges"], true);
    assert_eq!(
        oci["process"]["capabilities"]["bounding"],
        serde_json::json!(["CAP_NET_BIND_SERVICE"])
    );
    assert_eq!(oci["linux"]["resources"]["pids"]["limit"], 64);
    assert_eq!(oci["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");

    let o = e.moat(&["policy", "compile", "web.yaml", "--format", "seccomp-json"]);
    let sc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let plain = sc["syscalls"][0]["names"].as_array().unwrap();
    assert!(plain.iter().any(|n| n == "read"));
    assert!(!plain.iter().any(|n| n == "mkdirat" || n == "mount"));

    let o = e.moat(&["policy", "compile", "restricted", "--format", "bpf-asm"]);
    assert!(stdout(&o).starts_with("0000 ld  arch\n"), "{}", stdout(&o));

    let o = e.moat(&["policy", "compile", "web.yaml", "--format", "yaml"]);
    assert_eq!(o.status.code(), Some(2), "clap rejects unknown formats");
}

#[test]
fn apparmor_profile_parses() {
    let e = Env::new();
    for p in ["baseline", "restricted", "web.yaml"] {
        let out = e.path("profile.aa");
        let o = e.moat(&[
            "policy",
            "compile",
            p,
            "--format",
            "apparmor",
            "-o",
            "profile.aa",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("deny mount,"), "{text}");
        let parser = Command::new("apparmor_parser").arg("-Q").arg(&out).output();
        match parser {
            Err(_) => {
                println!("SKIP: apparmor_parser is not installed (apt-get install apparmor)");
                return;
            }
            Ok(r) => assert!(
                r.status.success(),
                "apparmor_parser -Q rejected the profile of {p}: {}\n{text}",
                String::from_utf8_lossy(&r.stderr)
            ),
        }
    }
}

#[test]
fn export_k8s_is_a_valid_multi_document_stream() {
    let e = Env::new();
    let o = e.moat(&["policy", "export", "web.yaml", "--k8s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let docs: Vec<&str> = text
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .collect();
    assert_eq!(docs.len(), 4, "{text}");
    let mut kinds = Vec::new();
    for d in &docs {
        let node = moat_policy::yaml::parse(d).unwrap_or_else(|e| panic!("{e:?}\n{d}"));
        let moat_policy::yaml::Value::Map(items) = node.value else {
            panic!("not a mapping: {d}")
        };
        let kind = items
            .iter()
            .find(|(k, _)| k.key_text() == "kind")
            .map(|(_, v)| v.key_text().to_string())
            .unwrap();
        kinds.push(kind);
    }
    assert_eq!(kinds, ["Pod", "ConfigMap", "RuntimeClass", "NetworkPolicy"]);
    assert!(text.contains("  runtimeClassName: moat\n"), "{text}");
    assert!(text.contains("type: Localhost\n"), "{text}");
    assert!(text.contains("localhostProfile: moat/web.json\n"), "{text}");
    assert!(text.contains("readOnlyRootFilesystem: true\n"), "{text}");
    assert!(text.contains("allowPrivilegeEscalation: false\n"), "{text}");
    assert!(text.contains("          - NET_BIND_SERVICE\n"), "{text}");
    // Python's YAML loader, when present, agrees it is a YAML stream.
    if let Ok(o) = Command::new("python3")
        .args([
            "-c",
            "import sys,yaml; print(len(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(
            std::fs::File::open({
                let p = e.path("k8s.yaml");
                std::fs::write(&p, &text).unwrap();
                p
            })
            .unwrap(),
        )
        .output()
    {
        if o.status.success() {
            assert_eq!(stdout(&o).trim(), "4");
        } else {
            println!("SKIP: python3-yaml not available for the cross-check");
        }
    }
}

#[test]
fn diff_lists_added_and_removed_grants() {
    let e = Env::new();
    let o = e.moat(&["policy", "diff", "baseline", "web.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("+ capability NET_BIND_SERVICE\n"), "{out}");
    assert!(out.contains("- syscall mkdir\n"), "{out}");
    assert!(out.contains("- syscall mkdirat\n"), "{out}");
    assert!(out.contains("+ writable /tmp (16Mi)\n"), "{out}");
    assert!(out.contains("- writable /tmp (64Mi)\n"), "{out}");
    let o = e.moat(&["policy", "diff", "baseline", "baseline"]);
    assert_eq!(stdout(&o), "no differences in grants\n");
}

/// The seccomp-json profile loaded by podman for real.
#[test]
fn seccomp_json_runs_under_podman() {
    let Some(img) = podman_image() else { return };
    let e = Env::new();
    for p in ["baseline", "web.yaml", "restricted"] {
        let o = e.moat(&[
            "policy",
            "compile",
            p,
            "--format",
            "seccomp-json",
            "-o",
            "sc.json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let script = "echo ok; mkdir /tmp/x 2>/dev/null; echo mkdir=$?";
        let r = podman_run(&img.name, &e.path("sc.json"), script);
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(
            r.status.success(),
            "podman with {p}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let want = if p == "web.yaml" {
            "ok\nmkdir=1\n"
        } else {
            "ok\nmkdir=0\n"
        };
        assert_eq!(out, want, "under {p}");
    }
}

struct PodmanImage {
    name: String,
}

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.name])
            .output();
    }
}

fn podman_run(image: &str, profile: &Path, script: &str) -> Output {
    Command::new("podman")
        .args(["run", "--rm", "--runtime", "runc", "--network", "none"])
        .args(["--security-opt", "no-new-privileges"])
        .arg("--security-opt")
        .arg(format!("seccomp={}", profile.display()))
        .args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
        ])
        .args([image, "/bin/busybox", "sh", "-c", script])
        .output()
        .unwrap()
}

/// A one-binary busybox image imported into podman, or a SKIP line.
fn podman_image() -> Option<PodmanImage> {
    let have = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !is_root() {
        println!("SKIP: podman test needs root");
        return None;
    }
    if !have("podman") || !have("runc") {
        println!("SKIP: podman or runc missing (apt-get install podman runc)");
        return None;
    }
    if !Path::new("/bin/busybox").exists() {
        println!("SKIP: /bin/busybox missing (apt-get install busybox-static)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in ["bin", "tmp", "proc", "dev", "sys", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/mkdir")).unwrap();
    let tar = dir.path().join("root.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let name = format!("localhost/moat-policy-test-{}:latest", std::process::id());
    let o = Command::new("podman")
        .arg("import")
        .arg(&tar)
        .arg(&name)
        .output()
        .unwrap();
    if !o.status.success() {
        println!(
            "SKIP: podman import failed here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        return None;
    }
    let img = PodmanImage { name };
    // Probe: can podman run anything at all on this machine?
    let probe = Command::new("podman")
        .args(["run", "--rm", "--runtime", "runc", "--network", "none"])
        .args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
        ])
        .args([img.name.as_str(), "/bin/busybox", "true"])
        .output()
        .unwrap();
    if !probe.status.success() {
        println!(
            "SKIP: podman cannot run containers here: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return None;
    }
    Some(img)
}

/// docs/policy.schema.json accepts what moat accepts and rejects unknown keys.
#[test]
fn json_schema_agrees_with_the_parser() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let probe = Command::new("python3")
        .args(["-c", "import yaml, jsonschema"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("SKIP: python3-yaml and python3-jsonschema are needed for the schema check");
        return;
    }
    let e = Env::new();
    std::fs::write(
        e.path("bad.yaml"),
        WEB.replace("capabilities:", "capabilites:"),
    )
    .unwrap();
    let files = [
        repo.join("crates/moat-policy/policies/baseline.yaml"),
        repo.join("crates/moat-policy/policies/restricted.yaml"),
        repo.join("crates/moat-policy/tests/data/full.yaml"),
        e.path("web.yaml"),
    ];
    for f in &files {
        // moat accepts it ...
        let o = e.moat(&["policy", "explain", f.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", f.display(), stderr(&o));
    }
    // ... and so does the schema.
    let o = Command::new(repo.join("scripts/check-policy-schema"))
        .args(&files)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stdout(&o));
    let o = Command::new(repo.join("scripts/check-policy-schema"))
        .arg(e.path("bad.yaml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o)
            .contains("spec: Additional properties are not allowed ('capabilites' was unexpected)"),
        "{}",
        stdout(&o)
    );
}
