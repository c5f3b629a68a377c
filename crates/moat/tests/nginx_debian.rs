//! Debian's nginx, as packaged (scripts/corpus nginx-debian: the binary,
//! its libraries, /etc/nginx, /var/lib/nginx and /var/log/nginx), on the
//! image's read-only root: refused with the path and the grant named, and
//! served under an ephemeral root that leaves the image untouched. Needs
//! root; skips with `SKIP:` otherwise.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::path::Path;

use common::images::corpus;
use common::{can_sandbox, stderr, stdout, Env};

/// nginx started, then curl on loopback until it answers.
const SERVE: &str = "/usr/sbin/nginx; for i in 1 2 3 4 5 6 7 8 9 10; do curl -sS http://127.0.0.1:8080/ 2>/dev/null && exit 0; sleep 0.5; done; exit 1";

fn run(env: &Env, policy: &str, dir: &Path, argv: &[&str]) -> std::process::Output {
    let mut a = vec![
        "run",
        "--rm",
        "--isolation",
        "sandbox",
        "--policy",
        policy,
        "--rootfs",
    ];
    let d = dir.display().to_string();
    a.push(&d);
    a.extend(argv);
    env.moat(&a).output().unwrap()
}

/// Every file's path and contents under `root`, for a before/after check.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        let data = match m.is_file() {
            true => std::fs::read(&p).unwrap(),
            false => Vec::new(),
        };
        out.push((p.display().to_string(), data));
    }
    out.sort();
    out
}

#[test]
fn debian_nginx_on_a_read_only_root_names_var_lib_nginx_and_its_grant() {
    if !can_sandbox("debian_nginx_on_a_read_only_root_names_var_lib_nginx_and_its_grant") {
        return;
    }
    let env = Env::new();
    let Some(dir) = corpus(&env, "nginx-debian") else {
        return;
    };
    let p = env.policy("nginx-ro", "  network: loopback\n");
    let o = run(&env, &p, &dir, &["/usr/sbin/nginx", "-g", "daemon off;"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("mkdir() \"/var/lib/nginx/body\" failed (30: Read-only file system)"),
        "{err}"
    );
    assert!(err.contains("  mkdir /var/lib/nginx/body\n"), "{err}");
    assert!(
        err.contains(&format!("`filesystem.writable: [{{path: /var/lib/nginx}}]` (a tmpfs there) in a policy file with `extends: {p}`")),
        "{err}"
    );
    assert!(err.contains("`filesystem.root: ephemeral`"), "{err}");
}

#[test]
fn debian_nginx_serves_under_an_ephemeral_root_that_leaves_the_image_untouched() {
    if !can_sandbox("debian_nginx_serves_under_an_ephemeral_root_that_leaves_the_image_untouched") {
        return;
    }
    let env = Env::new();
    let Some(dir) = corpus(&env, "nginx-debian") else {
        return;
    };
    let before = tree(&dir);
    // The master (container root) makes its temp directories for the
    // workers' user and switches to it: CHOWN, SETUID, SETGID.
    let p = env.policy(
        "nginx-eph",
        "  network: loopback\n  capabilities: [CHOWN, SETUID, SETGID]\n  filesystem:\n    root: ephemeral\n",
    );
    let o = run(&env, &p, &dir, &["/bin/sh", "-c", SERVE]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello from debian nginx\n");
    // nginx wrote /var/lib/nginx/body, its logs and pid: none of it is in
    // the image.
    assert_eq!(tree(&dir), before);
    assert!(!dir.join("var/lib/nginx/body").exists());
}

/// `moat profile record` with the network and capabilities nginx needs
/// granted up front yields a policy Debian's nginx serves under: its
/// writes under /var/lib/nginx, /var/log/nginx and /run become grants.
#[test]
fn recording_debian_nginx_yields_a_policy_it_serves_under() {
    let test = "recording_debian_nginx_yields_a_policy_it_serves_under";
    if !can_sandbox(test) {
        return;
    }
    if moat_profile::trace::ensure_tracefs().is_err() {
        println!("SKIP: {test}: tracefs cannot be mounted");
        return;
    }
    let env = Env::new();
    let Some(dir) = corpus(&env, "nginx-debian") else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = tree(&dir);
    let out = env.dir.path().join("nginx-recorded.yaml");
    let d = dir.display().to_string();
    let o = env
        .moat(&[
            "profile",
            "record",
            "--recorder",
            "ebpf",
            "--network",
            "loopback",
            "--cap-add",
            "CHOWN",
            "--cap-add",
            "SETUID",
            "--cap-add",
            "SETGID",
            "--name",
            "nginx-recorded",
            "--rootfs",
            &d,
            "-o",
            out.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            SERVE,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("moat: verified: the workload exits 0 with the same output"),
        "{}",
        stderr(&o)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    for want in [
        "  capabilities: [CHOWN, SETGID, SETUID]\n  network: loopback\n",
        "      - path: /var/lib/nginx\n",
        "      - path: /var/log/nginx\n",
        "      - path: /run\n",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    let o = run(&env, out.to_str().unwrap(), &dir, &["/bin/sh", "-c", SERVE]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello from debian nginx\n");
    assert_eq!(tree(&dir), before);
    // The recorded policy holds in a micro-VM too: its writable grants are
    // tmpfs mounts the guest agent makes over the verified root.
    if common::vm_ready(&env, test) {
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
                out.to_str().unwrap(),
                "--rootfs",
                &d,
                "/bin/sh",
                "-c",
                SERVE,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "hello from debian nginx\n");
        assert_eq!(tree(&dir), before);
    }
    // A capability that does not exist is refused before anything runs.
    let o = env
        .moat(&[
            "profile",
            "record",
            "--cap-add",
            "FLY",
            "--rootfs",
            &d,
            "--",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--cap-add \"FLY\": not a Linux capability"),
        "{}",
        stderr(&o)
    );
}

/// The same image and policy in a micro-VM: the overlay is built inside
/// the guest over the verity-checked root (TCG here).
#[test]
fn debian_nginx_serves_in_a_vm_under_an_ephemeral_root() {
    let env = Env::new();
    if !common::vm_ready(&env, "debian_nginx_serves_in_a_vm_under_an_ephemeral_root") {
        return;
    }
    let Some(dir) = corpus(&env, "nginx-debian") else {
        return;
    };
    let before = tree(&dir);
    let p = env.policy(
        "nginx-vm",
        "  network: loopback\n  capabilities: [CHOWN, SETUID, SETGID]\n  filesystem:\n    root: ephemeral\n",
    );
    let d = dir.display().to_string();
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
            &d,
            "/bin/sh",
            "-c",
            SERVE,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello from debian nginx\n");
    assert_eq!(tree(&dir), before);
    // On the read-only root nginx stops at its first write.
    let ro = env.policy("nginx-vm-ro", "  network: loopback\n");
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
            &ro,
            "--rootfs",
            &d,
            "/usr/sbin/nginx",
            "-g",
            "daemon off;",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("mkdir() \"/var/lib/nginx/body\" failed (30: Read-only file system)"),
        "{}",
        stderr(&o)
    );
    // The guest agent's audit names the directory and the grant.
    assert!(
        stderr(&o).contains("  mkdir of a new entry in /var/lib/nginx\n")
            && stderr(&o).contains("`filesystem.writable: [{path: /var/lib/nginx}]`"),
        "{}",
        stderr(&o)
    );
}
