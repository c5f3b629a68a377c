//! Images that write: `filesystem.root: ephemeral` in the sandbox, end to
//! end through the CLI. Needs root; skips with `SKIP:` otherwise.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::images::import_image_with_volumes;
use common::{can_sandbox, stderr, stdout, Env};

fn sh(env: &Env, opts: &[&str], script: &str) -> std::process::Output {
    let mut a: Vec<&str> = vec!["--rm"];
    a.extend(opts);
    a.extend(["--", "sh", "-c", script]);
    env.run(&a)
}

/// Every entry under `root` (not following symlinks): its kind, mode,
/// owner and, for files, contents.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let what = if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            "dir".to_string()
        } else if m.is_symlink() {
            format!("-> {}", std::fs::read_link(&p).unwrap().display())
        } else {
            let data = std::fs::read(&p).unwrap();
            format!("{} bytes, {:x}", data.len(), fnv(&data))
        };
        out.insert(
            rel,
            format!("{what} {:o} {}:{}", m.mode(), m.uid(), m.gid()),
        );
    }
    out
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn ephemeral_root_takes_writes_that_die_with_the_container() {
    if !can_sandbox("ephemeral_root_takes_writes_that_die_with_the_container") {
        return;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.rootfs.join("var/lib")).unwrap();
    std::fs::write(env.rootfs.join("etc/motd"), b"image\n").unwrap();
    let before = snapshot(&env.rootfs);
    let p = env.policy("eph", "  filesystem:\n    root: ephemeral\n");

    let o = sh(
        &env,
        &["--policy", &p],
        "mkdir -p /var/lib/x && echo data > /var/lib/x/f && echo changed > /etc/motd \
         && echo new > /etc/new && rm /etc/group && cat /var/lib/x/f /etc/motd /etc/new \
         && stat -c '%u:%g' / /var/lib/x/f && test ! -e /etc/group",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "data\nchanged\nnew\n0:0\n0:0\n");

    // The next container starts from the pristine image.
    let o = sh(
        &env,
        &["--policy", &p],
        "cat /etc/motd; test -e /var/lib/x || echo gone; test -e /etc/new || echo gone; test -e /etc/group && echo kept",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "image\ngone\ngone\nkept\n");

    // Nothing reached the stored rootfs.
    assert_eq!(snapshot(&env.rootfs), before);
}

#[test]
fn baseline_root_refuses_the_same_writes() {
    if !can_sandbox("baseline_root_refuses_the_same_writes") {
        return;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.rootfs.join("var/lib")).unwrap();
    let before = snapshot(&env.rootfs);
    for script in ["mkdir /var/lib/x", "echo x > /etc/motd"] {
        let o = sh(&env, &["--policy", "baseline"], script);
        assert!(!o.status.success(), "{script}");
        assert!(
            stderr(&o).contains("Read-only file system"),
            "{script}: {}",
            stderr(&o)
        );
    }
    assert_eq!(snapshot(&env.rootfs), before);
}

#[test]
fn ephemeral_layer_size_limit_stops_a_writer() {
    if !can_sandbox("ephemeral_layer_size_limit_stops_a_writer") {
        return;
    }
    let env = Env::new();
    let before = snapshot(&env.rootfs);
    let p = env.policy(
        "ephsmall",
        "  filesystem:\n    root: ephemeral\n  resources:\n    disk: 4Mi\n",
    );
    // 8 MiB into a 4 MiB layer: the writer gets ENOSPC, the container
    // survives to say so, and the host is untouched.
    let o = sh(
        &env,
        &["--policy", &p],
        "dd if=/dev/zero of=/big bs=1M count=8 2>/tmp/err; echo rc=$?; \
         grep -c 'No space left on device' /tmp/err; \
         du -k /big | cut -f1; echo ok > /small 2>/dev/null || echo full",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "rc=1", "{out}");
    assert_eq!(lines[1], "1", "{out}");
    let kib: u64 = lines[2].parse().unwrap();
    assert!(kib <= 4096, "{out}");
    assert_eq!(snapshot(&env.rootfs), before);
    // The next container has a fresh, empty layer.
    let o = sh(&env, &["--policy", &p], "test -e /big || echo gone");
    assert_eq!(stdout(&o), "gone\n", "{}", stderr(&o));
}

#[test]
fn ephemeral_root_is_shown_by_explain() {
    let env = Env::new();
    let p = env.policy(
        "ephx",
        "  filesystem:\n    root: ephemeral\n  resources:\n    disk: 64Mi\n",
    );
    let text = env.ok(&["policy", "explain", &p]);
    assert!(
        text.contains("root file system ephemeral (a writable layer over the image, 64Mi"),
        "{text}"
    );
    let text = env.ok(&["policy", "explain", "baseline"]);
    assert!(text.contains("root file system read-only,"), "{text}");
    // Unknown values are refused with the two that exist.
    let bad = env.policy("ephbad", "  filesystem:\n    root: writable\n");
    let o = env.moat(&["policy", "explain", &bad]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("`read-only` (the default) or `ephemeral`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn surface_shows_the_writable_root() {
    let env = Env::new();
    let p = env.policy("ephs", "  filesystem:\n    root: ephemeral\n");
    let eph = env.ok(&["surface", &p]);
    let base = env.ok(&["surface", "baseline"]);
    assert!(
        eph.contains("/ (ephemeral layer, discarded with the container)"),
        "{eph}"
    );
    assert!(base.contains("(root read-only)"), "{base}");
}

#[test]
fn declared_volumes_get_a_notice_unless_the_policy_makes_them_writable() {
    if !can_sandbox("declared_volumes_get_a_notice_unless_the_policy_makes_them_writable") {
        return;
    }
    let env = Env::new();
    // Directories the image has (Docker's VOLUME creates them).
    import_image_with_volumes(&env, &["/home", "/var"]);
    let run = |policy: &str, script: &str| {
        env.moat(&[
            "run",
            "--rm",
            "--isolation",
            "sandbox",
            "--policy",
            policy,
            "volimg",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
    };
    // baseline: both named, the container still runs (read-only there).
    let o = run("baseline", "true");
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    for v in ["/home", "/var"] {
        assert!(
            err.contains(&format!("the image declares VOLUME {v}, but policy \"baseline\" makes nothing writable there"))
                && err.contains(&format!("`filesystem.writable: [{{path: {v}}}]`")),
            "{v}: {err}"
        );
    }
    // A writable grant at one of them: only the other is named, and the
    // granted one takes writes.
    let p = env.policy(
        "volhome",
        "  filesystem:\n    writable:\n      - path: /home\n",
    );
    let o = run(&p, "echo x > /home/f && cat /home/f");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "x\n");
    let err = stderr(&o);
    assert!(!err.contains("VOLUME /home,"), "{err}");
    assert!(err.contains("VOLUME /var,"), "{err}");
    // An ephemeral root provides both, silently.
    let p = env.policy("volroot", "  filesystem:\n    root: ephemeral\n");
    let o = run(
        &p,
        "mkdir -p /var/cache/app && echo y > /var/cache/app/f && cat /var/cache/app/f",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "y\n");
    assert!(!stderr(&o).contains("VOLUME"), "{}", stderr(&o));
}

/// `moat profile record` grants the directories a workload wrote in as
/// writable tmpfs: the generated policy runs a workload that writes under
/// /var/lib, which baseline refuses.
#[test]
fn recorded_writes_become_writable_grants() {
    let test = "recorded_writes_become_writable_grants";
    if !can_sandbox(test) {
        return;
    }
    if moat_profile::trace::ensure_tracefs().is_err() {
        println!("SKIP: {test}: tracefs cannot be mounted");
        return;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.rootfs.join("var/lib/app")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chmod = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&env.rootfs)
        .status()
        .unwrap();
    assert!(chmod.success());
    let root = env.rootfs.display().to_string();
    let out = env.dir.path().join("recorded.yaml");
    let script =
        "mkdir -p /var/lib/app/cache && echo x > /var/lib/app/cache/f && cat /var/lib/app/cache/f";
    let o = env
        .moat(&[
            "profile",
            "record",
            "--recorder",
            "ebpf",
            "--rootfs",
            &root,
            "-o",
            out.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            script,
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
    assert!(
        text.contains("  filesystem:\n    writable:\n      - path: /var/lib/app\n"),
        "{text}"
    );
    // Runs under it; baseline refuses the same write; the image is untouched.
    let run = |policy: &str| {
        env.moat(&[
            "run",
            "--rm",
            "--isolation",
            "sandbox",
            "--policy",
            policy,
            "--rootfs",
            &root,
            "/bin/sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
    };
    let o = run(out.to_str().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "x\n");
    let o = run("baseline");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    assert!(!env.rootfs.join("var/lib/app/cache").exists());
}

/// A named container's writes do not survive its own restart: each start
/// gets a fresh layer over the pristine image.
#[test]
fn ephemeral_writes_do_not_survive_a_restart() {
    if !can_sandbox("ephemeral_writes_do_not_survive_a_restart") {
        return;
    }
    let env = Env::new();
    let before = snapshot(&env.rootfs);
    let p = env.policy("ephre", "  filesystem:\n    root: ephemeral\n");
    let root = env.rootfs.display().to_string();
    env.ok(&[
        "create",
        "--isolation",
        "sandbox",
        "--policy",
        &p,
        "--name",
        "job",
        "--rootfs",
        &root,
        "sh",
        "-c",
        "cat /etc/mark 2>/dev/null || echo none; echo seen > /etc/mark",
    ]);
    for _ in 0..2 {
        let o = env.moat(&["start", "-a", "job"]).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "none\n");
    }
    env.ok(&["rm", "job"]);
    assert_eq!(snapshot(&env.rootfs), before);
}
