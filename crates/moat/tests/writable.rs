//! Images that write: `filesystem.root: ephemeral` in the sandbox, end to
//! end through the CLI. Needs root; skips with `SKIP:` otherwise.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{can_sandbox, stderr, stdout, Env};

/// A policy extending baseline with the `spec` lines `extra`.
fn policy(env: &Env, name: &str, extra: &str) -> String {
    let path = env.dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!("apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  extends: baseline\n{extra}"),
    )
    .unwrap();
    path.display().to_string()
}

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
    let p = policy(&env, "eph", "  filesystem:\n    root: ephemeral\n");

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
    let p = policy(
        &env,
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
fn ephemeral_root_is_shown_by_explain_and_refused_by_the_vm() {
    let env = Env::new();
    let p = policy(
        &env,
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
    // The vm backend refuses it before booting, naming the way out.
    let root = env.rootfs.display().to_string();
    let o = env
        .moat(&[
            "run",
            "--rm",
            "--isolation",
            "vm",
            "--policy",
            &p,
            "--rootfs",
            &root,
            "true",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("policy \"ephx\" asks for `filesystem.root: ephemeral`")
            && err.contains("--isolation sandbox"),
        "{err}"
    );
    // Unknown values are refused with the two that exist.
    let bad = policy(&env, "ephbad", "  filesystem:\n    root: writable\n");
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
    let p = policy(&env, "ephs", "  filesystem:\n    root: ephemeral\n");
    let eph = env.ok(&["surface", &p]);
    let base = env.ok(&["surface", "baseline"]);
    assert!(
        eph.contains("/ (ephemeral layer, discarded with the container)"),
        "{eph}"
    );
    assert!(base.contains("(root read-only)"), "{base}");
}
