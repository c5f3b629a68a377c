//! Named volumes across the two backends: the same ext4 image written in
//! the sandbox is read in a micro-VM and back, with the same owners; a
//! host directory reaches a micro-VM (through virtiofsd); a VM holding a volume keeps
//! it from removal and from other containers, and QEMU killed mid-write
//! leaves it consistent. Slow under TCG: three boots.
//! Skips with `SKIP:` when QEMU or the guest kernel is absent.

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use common::{stderr, stdout, vm_ready, wait_for, Env};
use vm_host::vm_lock;

fn policy(env: &Env, fs: &str) -> String {
    let path = env.dir.path().join("shared.yaml");
    std::fs::write(
        &path,
        format!("apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: shared\nspec:\n  extends: baseline\n  filesystem:\n{fs}"),
    )
    .unwrap();
    path.display().to_string()
}

fn run(env: &Env, isolation: &str, opts: &[&str], script: &str) -> std::process::Output {
    let root = env.rootfs.display().to_string();
    let mut a = vec!["run", "--rm", "--isolation", isolation];
    if isolation == "vm" {
        a.extend(["--accel", "tcg"]);
    }
    a.extend(opts);
    a.extend(["--rootfs", &root, "sh", "-c", script]);
    env.moat(&a).output().unwrap()
}

#[test]
fn named_volume_written_in_the_sandbox_is_read_in_a_vm_and_back() {
    let env = Env::new();
    if !vm_ready(
        &env,
        "named_volume_written_in_the_sandbox_is_read_in_a_vm_and_back",
    ) {
        return;
    }
    let _l = vm_lock();
    for d in ["cache", "ro"] {
        std::fs::create_dir_all(env.rootfs.join(d)).unwrap();
    }
    let hostdir = env.dir.path().join("hostdir");
    std::fs::create_dir(&hostdir).unwrap();
    let p = policy(
        &env,
        &format!(
            "    volumes:\n      - {{source: {}, path: /cache}}\n    named_volumes:\n      - {{name: \"*\", read_only: false}}\n",
            hostdir.display()
        ),
    );
    env.ok(&["volume", "create", "--size", "32m", "shared"]);
    env.ok(&["volume", "create", "--size", "16m", "frozen"]);
    let vol = ["--policy", &p, "-v", "shared:/cache"];

    // The sandbox writes, as root and as uid 1000.
    let o = run(
        &env,
        "sandbox",
        &vol,
        "echo from-sandbox > /cache/s && mkdir -m 1777 /cache/u",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        &env,
        "sandbox",
        &[&vol[..], &["--user", "1000"]].concat(),
        "echo x > /cache/u/sbx",
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // A host directory reaches a guest through its own virtiofsd
    // (volumes_vm_hostdir.rs tests it in depth).
    let o = run(
        &env,
        "vm",
        &["--policy", &p],
        "grep -c ' /cache virtiofs ro,' /proc/mounts",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1\n");

    // The VM (one boot) reads it with the same owners, writes as uid 1000,
    // and cannot write a read-only volume.
    let o = run(
        &env,
        "vm",
        &[&vol[..], &["-v", "frozen:/ro:ro", "--user", "1000"]].concat(),
        "cat /cache/s; stat -c %u /cache/u/sbx; echo from-vm > /cache/u/vm; touch /ro/x 2>&1; grep -c ' /cache ext4 rw,nosuid,nodev' /proc/mounts",
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.starts_with("from-sandbox\n1000\n"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.ends_with("1\n"), "{out}");

    // In the guest too, a symlink in the image at the target does not
    // redirect the mount: refused.
    std::os::unix::fs::symlink("/etc", env.rootfs.join("evil")).unwrap();
    let o = run(
        &env,
        "vm",
        &[&vol[..], &["-v", "frozen:/evil"]].concat(),
        "ls /etc",
    );
    assert_eq!(o.status.code(), Some(125), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("mount target /evil: a component is a symlink in the image"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(env.rootfs.join("evil")).unwrap();

    // Back in the sandbox: the guest's file, owned by 1000 here too.
    let o = run(
        &env,
        "sandbox",
        &vol,
        "cat /cache/u/vm; stat -c %u /cache/u/vm",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "from-vm\n1000\n");
    let o = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(env.state_root().join("volumes/shared/disk.ext4"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stdout(&o));

    // A detached VM holds the volume (QEMU has the locked image): neither
    // rm nor the sandbox gets it.
    let root = env.rootfs.display().to_string();
    env.ok(&[
        "run",
        "-d",
        "--isolation",
        "vm",
        "--accel",
        "tcg",
        "--name",
        "vmholder",
        "--policy",
        &p,
        "-v",
        "shared:/cache",
        "--rootfs",
        &root,
        "sh",
        "-c",
        "while :; do dd if=/dev/zero of=/cache/big bs=64k count=64 2>/dev/null; sync; done",
    ]);
    let o = env.moat(&["volume", "rm", "shared"]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("volume \"shared\" is in use"),
        "{}",
        stderr(&o)
    );
    let o = run(&env, "sandbox", &vol, "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("in use by a running container"),
        "{}",
        stderr(&o)
    );
    // QEMU killed with SIGKILL while the guest writes: the journal keeps
    // the filesystem consistent (replayed, then checked read-only).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let supervisor = env.inspect("vmholder")["State"]["Pid"].as_i64().unwrap();
    let qemu = descendants(supervisor)
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("qemu"))
        })
        .expect("the holder's QEMU");
    std::process::Command::new("kill")
        .args(["-9", &qemu.to_string()])
        .status()
        .unwrap();
    let disk = env.state_root().join("volumes/shared/disk.ext4");
    wait_for("QEMU's lock on the volume to go", 60, || {
        std::fs::File::open(&disk).unwrap().try_lock().is_ok()
    });
    let replay = std::process::Command::new("e2fsck")
        .args(["-E", "journal_only", "-p"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        replay.status.code().unwrap_or(8) <= 1,
        "{}",
        stderr(&replay)
    );
    let o = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stdout(&o));
    env.ok(&["rm", "-f", "vmholder"]);
    assert_eq!(env.ok(&["volume", "rm", "shared"]), "shared\n");
}

/// Every descendant of process `pid`.
fn descendants(pid: i64) -> Vec<i64> {
    let mut parents = vec![pid];
    let mut out = Vec::new();
    loop {
        let mut found = false;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i64>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let ppid: i64 = stat[stat.rfind(')').unwrap() + 2..]
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if parents.contains(&ppid) && !parents.contains(&p) {
                parents.push(p);
                out.push(p);
                found = true;
            }
        }
        if !found {
            return out;
        }
    }
}
