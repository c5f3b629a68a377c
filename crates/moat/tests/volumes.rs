//! Volumes in the sandbox, end to end through the CLI: host directories
//! (`filesystem.volumes`, `-v HOSTDIR:DIR`), named volumes (`moat volume`,
//! `-v NAME:DIR`) and `--tmpfs`. Needs root; skips with `SKIP:` otherwise.
//! The vm side of named volumes is in `volumes_vm.rs`.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::{can_sandbox, stderr, stdout, wait_for, Env};

/// A policy (extending baseline) with `filesystem` lines `fs`.
fn policy(env: &Env, name: &str, fs: &str) -> String {
    let path = env.dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!("apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  extends: baseline\n  filesystem:\n{fs}"),
    )
    .unwrap();
    path.display().to_string()
}

fn host_dir(env: &Env, name: &str) -> String {
    let d = env.dir.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    d.display().to_string()
}

fn mkdirs(env: &Env, dirs: &[&str]) {
    for d in dirs {
        std::fs::create_dir_all(env.rootfs.join(d)).unwrap();
    }
}

fn sh(env: &Env, opts: &[&str], script: &str) -> std::process::Output {
    let mut a: Vec<&str> = vec!["--rm"];
    a.extend(opts);
    a.extend(["--", "sh", "-c", script]);
    env.run(&a)
}

#[test]
fn host_volume_is_read_by_the_next_container_with_idmapped_owners() {
    if !can_sandbox("host_volume_is_read_by_the_next_container_with_idmapped_owners") {
        return;
    }
    let env = Env::new();
    mkdirs(&env, &["data"]);
    let data = host_dir(&env, "data");
    // A file owned by host uid 1000 is owned by 1000 inside.
    std::fs::write(format!("{data}/hostfile"), b"from host").unwrap();
    std::os::unix::fs::chown(format!("{data}/hostfile"), Some(1000), Some(1000)).unwrap();
    let p = policy(
        &env,
        "hostvol",
        &format!("    volumes:\n      - {{source: {data}, path: /data, read_only: false}}\n"),
    );
    // From the policy alone.
    let o = sh(
        &env,
        &["--policy", &p],
        "echo one > /data/written && stat -c '%u:%g' /data/hostfile /data/written",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1000:1000\n0:0\n");
    // Written by container root: host root's on disk, as the idmapped
    // mount maps container id N to on-disk id N.
    let m = std::fs::metadata(format!("{data}/written")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));
    // The next container, with the flag (same target), reads it.
    let o = sh(
        &env,
        &["--policy", &p, "-v", &format!("{data}:/data")],
        "cat /data/written",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "one\n");
    // A user of the container writes as itself.
    let o = sh(
        &env,
        &["--policy", &p, "--user", "1000:1000"],
        "echo u > /data/byuser; stat -c %u /data/byuser",
    );
    // /data is 0700 host root's: container uid 1000 may not write there.
    assert!(!o.status.success(), "{}", stdout(&o));
    std::fs::create_dir(format!("{data}/shared")).unwrap();
    std::os::unix::fs::chown(format!("{data}/shared"), Some(1000), Some(1000)).unwrap();
    let o = sh(
        &env,
        &["--policy", &p, "--user", "1000:1000"],
        "echo u > /data/shared/f && stat -c %u /data/shared/f",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1000\n");
    assert_eq!(
        std::fs::metadata(format!("{data}/shared/f")).unwrap().uid(),
        1000
    );
}

#[test]
fn granted_read_only_volume_cannot_be_written() {
    if !can_sandbox("granted_read_only_volume_cannot_be_written") {
        return;
    }
    let env = Env::new();
    mkdirs(&env, &["data", "sub"]);
    let data = host_dir(&env, "ro");
    std::fs::write(format!("{data}/f"), b"keep").unwrap();
    let p = policy(
        &env,
        "rovol",
        &format!("    volumes:\n      - {{source: {data}, path: /data, read_only: true}}\n"),
    );
    let o = sh(&env, &["--policy", &p], "cat /data/f; echo x > /data/f");
    assert!(!o.status.success());
    assert_eq!(stdout(&o), "keep");
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    // A subdirectory under the grant, at another target: read-only too.
    std::fs::create_dir(format!("{data}/inner")).unwrap();
    let o = sh(
        &env,
        &["--policy", &p, "-v", &format!("{data}/inner:/sub")],
        "touch /sub/x",
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    // :rw cannot widen a read-only grant.
    let o = sh(
        &env,
        &["--policy", &p, "-v", &format!("{data}:/data:rw")],
        "true",
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("policy \"rovol\" grants this volume read-only"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(format!("{data}/f")).unwrap(), b"keep");
}

#[test]
fn ungranted_host_path_is_refused_with_the_policy_name() {
    if !can_sandbox("ungranted_host_path_is_refused_with_the_policy_name") {
        return;
    }
    let env = Env::new();
    mkdirs(&env, &["data"]);
    let data = host_dir(&env, "granted");
    let p = policy(
        &env,
        "narrow",
        &format!("    volumes:\n      - {{source: {data}, path: /data}}\n"),
    );
    let o = sh(
        &env,
        &["--policy", &p, "-v", "/etc:/data"],
        "cat /data/shadow",
    );
    assert_eq!(o.status.code(), Some(125));
    let e = stderr(&o);
    assert!(
        e.contains("policy \"narrow\" grants no host directory containing /etc")
            && e.contains("filesystem.volumes"),
        "{e}"
    );
    assert!(stdout(&o).is_empty());
    // moat's own state is never a volume, whatever the policy grants.
    let all = policy(
        &env,
        "wide",
        &format!(
            "    volumes:\n      - {{source: {}}}\n",
            env.dir.path().display()
        ),
    );
    let state = env.state_root().display().to_string();
    for src in [
        state.clone(),
        format!("{state}/volumes"),
        env.dir.path().display().to_string(),
    ] {
        let o = sh(
            &env,
            &["--policy", &all, "-v", &format!("{src}:/data")],
            "true",
        );
        assert_eq!(o.status.code(), Some(125), "{src}");
        assert!(
            stderr(&o).contains("moat never gives a container its own state"),
            "{}",
            stderr(&o)
        );
    }
    // The default policy grants no host directory at all.
    let o = sh(&env, &["-v", "/etc:/data"], "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("grants no host directory containing /etc"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn planted_symlinks_do_not_redirect_volume_mounts() {
    if !can_sandbox("planted_symlinks_do_not_redirect_volume_mounts") {
        return;
    }
    let env = Env::new();
    mkdirs(&env, &["data"]);
    // The image: /evil -> /etc (an absolute link out of the target).
    symlink("/etc", env.rootfs.join("evil")).unwrap();
    let grant = host_dir(&env, "grant");
    let data = host_dir(&env, "grant/vol");
    let other = host_dir(&env, "grant/other");
    std::fs::write(format!("{other}/marker"), b"other").unwrap();
    let p = policy(
        &env,
        "links",
        // A grant for `-v` only (no `path`): nothing mounted by default.
        &format!("    volumes:\n      - {{source: {grant}, read_only: false}}\n"),
    );
    let mounts_before = common::host_mounts();
    // 1. A symlink in the image at the mount target.
    let o = sh(
        &env,
        &["--policy", &p, "-v", &format!("{other}:/evil")],
        "ls /etc",
    );
    assert_eq!(o.status.code(), Some(125), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("/evil is a symlink in the image"),
        "{}",
        stderr(&o)
    );
    // 2. A symlink a container plants in a volume, under a later mount's
    //    target: /data/sub -> /etc.
    let o = sh(
        &env,
        &["--policy", &p, "-v", &format!("{data}:/data:rw")],
        "ln -s /etc /data/sub && ln -s / /data/up",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sh(
        &env,
        &[
            "--policy",
            &p,
            "-v",
            &format!("{data}:/data"),
            "-v",
            &format!("{other}:/data/sub"),
        ],
        "cat /etc/passwd",
    );
    assert_eq!(o.status.code(), Some(125), "{}", stdout(&o));
    assert!(stderr(&o).contains("symlink"), "{}", stderr(&o));
    // 3. The planted link as a host path: never followed.
    let o = sh(
        &env,
        &["--policy", &p, "-v", &format!("{data}/up:/data")],
        "ls /data",
    );
    assert_eq!(o.status.code(), Some(125), "{}", stdout(&o));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(common::host_mounts(), mounts_before);
    // The image's /etc is untouched and still the image's.
    assert!(!env.rootfs.join("etc/marker").exists());
}

#[test]
fn tmpfs_flag_stays_within_writable_grants() {
    if !can_sandbox("tmpfs_flag_stays_within_writable_grants") {
        return;
    }
    let env = Env::new();
    mkdirs(&env, &["scratch"]);
    let p = policy(
        &env,
        "scratchy",
        "    writable:\n      - {path: /scratch, size: 8Mi}\n",
    );
    let o = sh(
        &env,
        &["--policy", &p, "--tmpfs", "/scratch:1m"],
        "echo hi > /scratch/f && grep ' /scratch ' /proc/mounts",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(" /scratch tmpfs rw,nosuid,nodev"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("size=1024k"), "{}", stdout(&o));
    let o = sh(&env, &["--policy", &p, "--tmpfs", "/scratch:16m"], "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("larger than the 8388608 bytes policy \"scratchy\" grants"),
        "{}",
        stderr(&o)
    );
    let o = sh(&env, &["--policy", &p, "--tmpfs", "/etc"], "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("policy \"scratchy\" grants no writable directory containing /etc"),
        "{}",
        stderr(&o)
    );
}

fn e2fsck_clean(disk: &Path) {
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "e2fsck -fn {}: {}{}",
        disk.display(),
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn named_volume_lifecycle_in_the_sandbox() {
    if !can_sandbox("named_volume_lifecycle_in_the_sandbox") {
        return;
    }
    let env = Env::new();
    mkdirs(&env, &["cache"]);
    let p = policy(
        &env,
        "named",
        "    named_volumes:\n      - {name: \"app-*\", read_only: false}\n      - {name: ro, read_only: true}\n",
    );
    assert_eq!(
        env.ok(&["volume", "create", "--size", "32m", "app-1"]),
        "app-1\n"
    );
    let o = env.moat(&["volume", "create", "app-1"]).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    let ls: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "ls", "--format", "json"])).unwrap();
    assert_eq!(ls[0]["name"], "app-1");
    assert_eq!(ls[0]["size_bytes"], 32 << 20);

    // Written by one container, read by the next; owners as written.
    let o = sh(
        &env,
        &["--policy", &p, "-v", "app-1:/cache"],
        "echo kept > /cache/f && mkdir -m 1777 /cache/u && stat -c %u /cache",
    );
    // Container root owns the volume's root (0:0) without any capability.
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0\n");
    let o = sh(
        &env,
        &["--policy", &p, "-v", "app-1:/cache", "--user", "1000"],
        "cat /cache/f && touch /cache/u/mine && stat -c %u /cache/u/mine",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "kept\n1000\n");
    // An ungranted name is refused with the policy's name; a name the
    // policy grants is created on first use.
    let o = sh(&env, &["--policy", &p, "-v", "other:/cache"], "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("policy \"named\" grants no named volume \"other\""),
        "{}",
        stderr(&o)
    );
    let o = sh(&env, &["--policy", &p, "-v", "ro:/cache"], "touch /cache/x");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );

    // In use by a running container: neither rm nor a second container.
    env.ok(&[
        "run",
        "-d",
        "--isolation",
        "sandbox",
        "--name",
        "holder",
        "--policy",
        &p,
        "-v",
        "app-1:/cache",
        "--rootfs",
        env.rootfs.to_str().unwrap(),
        "sh",
        "-c",
        "while :; do dd if=/dev/zero of=/cache/big bs=64k count=64 2>/dev/null; done",
    ]);
    let o = env.moat(&["volume", "rm", "app-1"]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("volume \"app-1\" is in use"),
        "{}",
        stderr(&o)
    );
    let o = sh(&env, &["--policy", &p, "-v", "app-1:/cache"], "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    // A crash while writing (moat's monitor, and so the container, killed
    // with SIGKILL mid-write) leaves the filesystem consistent.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = env.inspect("holder")["State"]["MonitorPid"]
        .as_i64()
        .unwrap();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_for("the holder to stop", 30, || {
        env.inspect("holder")["State"]["Status"] != "running"
    });
    let disk = env.state_root().join("volumes/app-1/disk.ext4");
    wait_for("the volume's lock to go", 30, || {
        std::fs::File::options()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap()
            .try_lock()
            .is_ok()
    });
    e2fsck_clean(&disk);
    // Stopped but not removed: still refused; after `moat rm`, the data is
    // still there, then the volume can go.
    let o = env.moat(&["volume", "rm", "app-1"]).output().unwrap();
    assert!(stderr(&o).contains("container holder"), "{}", stderr(&o));
    env.ok(&["rm", "holder"]);
    let o = sh(
        &env,
        &["--policy", &p, "-v", "app-1:/cache"],
        "cat /cache/f",
    );
    assert_eq!(stdout(&o), "kept\n", "{}", stderr(&o));
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "inspect", "app-1"])).unwrap();
    assert_eq!(inspect[0]["containers"], serde_json::json!([]));
    let pruned: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "prune", "--format", "json"])).unwrap();
    assert_eq!(pruned, serde_json::json!(["app-1", "ro"]));
    assert_eq!(env.ok(&["volume", "ls", "-q"]), "");
}

#[test]
fn a_filesystem_that_cannot_be_idmapped_is_refused_not_mounted_unmapped() {
    if !can_sandbox("a_filesystem_that_cannot_be_idmapped_is_refused_not_mounted_unmapped") {
        return;
    }
    let env = Env::new();
    mkdirs(&env, &["data"]);
    // procfs does not support idmapped mounts.
    let p = policy(
        &env,
        "procvol",
        "    volumes:\n      - {source: /proc/sys/fs, path: /data, read_only: true}\n",
    );
    let o = sh(&env, &["--policy", &p], "ls /data");
    assert_eq!(o.status.code(), Some(125), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("volume host directory /proc/sys/fs: its filesystem")
            && e.contains("cannot be idmapped")
            && e.contains("moat does not mount it unmapped"),
        "{e}"
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn what_flags_name_is_authorised_through_rbac() {
    if !can_sandbox("what_flags_name_is_authorised_through_rbac") {
        return;
    }
    let env = Env::new();
    mkdirs(&env, &["cache", "data"]);
    let granted = host_dir(&env, "granted");
    let rbac = env.dir.path().join("rbac.yaml");
    std::fs::write(
        &rbac,
        format!("apiVersion: moat.dev/v1\nkind: RBAC\nroles:\n  - name: r\n    grants:\n      network: [none, loopback]\n      isolation: [vm, sandbox]\n      volumes: [\"{granted}\"]\n      rootfs: [\"/\"]\n      named_volumes: [\"app-*\"]\nbindings:\n  - role: r\n    users: [root]\n"),
    )
    .unwrap();
    let rbac = rbac.display().to_string();
    let other = host_dir(&env, "other");
    // The policy grants more than the role: what exceeds it is refused.
    let p = policy(
        &env,
        "broad",
        &format!("    volumes:\n      - {{source: {other}}}\n    named_volumes:\n      - {{name: \"*\", read_only: false}}\n"),
    );
    let o = sh(
        &env,
        &["--rbac", &rbac, "--policy", &p, "-v", "app-1:/cache"],
        "true",
    );
    assert_eq!(o.status.code(), Some(125));
    let e = stderr(&o);
    assert!(e.contains("policy broad refused for root"), "{e}");
    assert!(e.contains(&format!("volume {other}: not granted")), "{e}");
    assert!(e.contains("named volume *: not granted"), "{e}");
    // Within the role: allowed.
    let p = policy(
        &env,
        "fits",
        &format!("    volumes:\n      - {{source: {granted}, read_only: false}}\n    named_volumes:\n      - {{name: \"app-*\", read_only: false}}\n"),
    );
    let o = sh(
        &env,
        &[
            "--rbac",
            &rbac,
            "--policy",
            &p,
            "-v",
            "app-1:/cache",
            "-v",
            &format!("{granted}:/data"),
        ],
        "touch /cache/x /data/x",
    );
    assert!(o.status.success(), "{}", stderr(&o));
}
