//! Directory bind mounts of a micro-VM container's config.json (podman's
//! `-v`) reach the guest through a jailed virtiofsd each, as `moat run`'s
//! host directories do (docs/volumes.md): a read-write one is written in
//! the guest and read on the host, a read-only (`ro`) one cannot be
//! written, and nothing is left once `run` returns. Needs root, QEMU,
//! virtiofsd and a built guest kernel; skips only without them.

#[path = "clients/mod.rs"]
mod clients;
use moat_testkit::host as vmhost;

use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_moat-oci");

fn bundle(dir: &Path, args: &[&str], mounts: serde_json::Value) {
    clients::busybox_rootfs(&dir.join("rootfs"));
    let mut all = vec![
        serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}),
    ];
    all.extend(mounts.as_array().unwrap().iter().cloned());
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "vmdir",
        "mounts": all,
        "annotations": {
            "moat.dev/isolation": "vm",
            "moat.dev/policy": clients::policy_annotation().split_once('=').unwrap().1
        },
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}
        }
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Processes whose command line names `dir`.
fn naming(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            out.push(cmd);
        }
    }
    out
}

#[test]
fn directory_bind_mounts_reach_a_vm_container_through_virtiofsd() {
    let test = "directory_bind_mounts_reach_a_vm_container_through_virtiofsd";
    if !clients::vm_ready(test, &[]) {
        return;
    }
    if !Path::new("/usr/lib/qemu/virtiofsd").is_file() {
        println!("SKIP: {test}: /usr/lib/qemu/virtiofsd is not installed");
        return;
    }
    let _lock = vmhost::vm_lock();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("state");
    let b = t.path().join("bundle");
    std::fs::create_dir(&b).unwrap();
    let rw = t.path().join("rw");
    let ro = t.path().join("ro");
    std::fs::create_dir(&rw).unwrap();
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("f"), "kept\n").unwrap();
    bundle(
        &b,
        &[
            "sh",
            "-c",
            "echo from-guest > /srv/rw/x; cat /srv/ro/f; (echo y > /srv/ro/f) 2>&1; grep ' /srv/' /proc/mounts",
        ],
        serde_json::json!([
            {"destination": "/srv/rw", "type": "bind", "source": rw, "options": ["rbind", "rw"]},
            {"destination": "/srv/ro", "type": "bind", "source": ro, "options": ["rbind", "ro"]}
        ]),
    );
    let id = format!("vmdir-{}", std::process::id());
    let o = Command::new(BIN)
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(&b)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{out}{err}");
    assert!(out.starts_with("kept\n"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(
        out.contains("moat-dir-0 /srv/rw virtiofs rw,nosuid,nodev"),
        "{out}"
    );
    assert!(
        out.contains("moat-dir-1 /srv/ro virtiofs ro,nosuid,nodev"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("x")).unwrap(),
        "from-guest\n"
    );
    assert_eq!(std::fs::read_to_string(ro.join("f")).unwrap(), "kept\n");
    let _ = Command::new(BIN)
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &id])
        .stdin(Stdio::null())
        .output();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !naming(t.path()).is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "left: {:?}",
            naming(t.path())
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&t.path().display().to_string()),
        "{mounts}"
    );
}
