//! A hostile or over-asking `config.json` against moat-oci directly (as
//! root, no client): every request beyond the policy is refused with the
//! grant and the policy named, and leaves nothing behind; a symlink in the
//! rootfs cannot move a mount; a second local user reaches none of root's
//! containers.

#[path = "clients/mod.rs"]
mod clients;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use clients::bundle::{Bundle, STEP};
use clients::{run, stderr, stdout};

/// Each edit asks for something `auto` (the built-in default policy, baseline narrowed to the root)
/// does not grant; the error names it and the policy, the exit is 1 and
/// no record or cgroup is left.
#[test]
fn requests_beyond_the_policy_are_refused_by_name() {
    if !clients::ready("requests_beyond_the_policy_are_refused_by_name", &["runc"]) {
        return;
    }
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "extra capability",
            |c| c["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN"]),
            "capability CAP_SYS_ADMIN (process.capabilities.bounding)",
        ),
        (
            "host PID namespace",
            |c| {
                let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
                ns.retain(|n| n["type"] != "pid");
            },
            "no pid namespace (--pid=host)",
        ),
        (
            "host network namespace by path",
            |c| {
                let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
                ns.retain(|n| n["type"] != "network");
                ns.push(json!({"type": "network", "path": "/proc/self/ns/net"}));
            },
            "the host's own net namespace (/proc/self/ns/net)",
        ),
        (
            "a block device",
            |c| {
                c["linux"]["devices"] =
                    json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}])
            },
            "device /dev/sda",
        ),
        (
            "a host-wide sysctl",
            |c| c["linux"]["sysctl"] = json!({"kernel.panic": "1"}),
            "sysctl kernel.panic (not namespaced",
        ),
        (
            "no seccomp filter",
            |c| {
                c["linux"].as_object_mut().unwrap().remove("seccomp");
            },
            "no seccomp filter (unconfined)",
        ),
    ];
    for (what, edit, needle) in cases {
        let b = Bundle::new(&["true"]);
        b.edit(edit);
        let id = format!("refused-{}", std::process::id());
        let o = b.create(&id);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
        assert!(err.contains("policy \"auto\""), "{what}: {err}");
        assert!(
            !b.state_root().join(&id).exists(),
            "{what}: a record was left"
        );
        assert!(
            !Path::new("/sys/fs/cgroup/pids/moat-oci").join(&id).exists()
                && !Path::new("/sys/fs/cgroup/moat-oci").join(&id).exists(),
            "{what}: a cgroup was left"
        );
    }
}

/// Input errors name the file or the flag and what to fix.
#[test]
fn bad_bundles_and_ids_get_clear_errors() {
    if !clients::ready("bad_bundles_and_ids_get_clear_errors", &["runc"]) {
        return;
    }
    let b = Bundle::new(&["true"]);
    b.edit(|c| c["process"]["capabilities"]["bounding"] = json!(["CAP_NOT_A_CAP"]));
    let err = stderr(&b.create("c"));
    assert!(
        err.contains("config.json") && err.contains("CAP_NOT_A_CAP"),
        "{err}"
    );

    let b = Bundle::new(&["true"]);
    b.edit(|c| c["linux"]["cgroupsPath"] = json!("system.slice:moat:c"));
    let err = stderr(&b.create("c"));
    assert!(err.contains("cgroupfs"), "{err}");

    let b = Bundle::new(&["true"]);
    b.edit(|c| c["linux"]["cgroupsPath"] = json!("/a/../../b"));
    let err = stderr(&b.create("c"));
    assert!(err.contains("must not contain `..`"), "{err}");

    let b = Bundle::new(&["true"]);
    let err = stderr(&b.create("../escape"));
    assert!(
        err.contains("container ID \"../escape\" is invalid"),
        "{err}"
    );

    let b = Bundle::new(&["true"]);
    b.edit(|c| c["root"]["path"] = json!("/"));
    let err = stderr(&b.create("c"));
    assert!(err.contains("root.path"), "{err}");
    assert!(!b.state_root().join("c").exists());

    let o = Command::new(env!("CARGO_BIN_EXE_moat-oci"))
        .args(["--systemd-cgroup", "state", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--systemd-cgroup is not supported"));
}

/// A symlink in the rootfs (`/tmp -> /etc`, absolute) resolves inside the
/// root: the tmpfs lands on the container's /etc, and the host's /etc
/// (the symlink's target outside the root) is untouched.
#[test]
fn a_symlink_in_the_rootfs_cannot_move_a_mount_out() {
    if !clients::ready("a_symlink_in_the_rootfs_cannot_move_a_mount_out", &["runc"]) {
        return;
    }
    let b = Bundle::new(&["sh", "-c", "grep -c ' /etc ' /proc/self/mountinfo; ls /etc"]);
    let tmp = b.path().join("rootfs/tmp");
    std::fs::remove_dir(&tmp).unwrap();
    std::os::unix::fs::symlink("/etc", &tmp).unwrap();
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}))
    });
    let host_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bundle = b.path().to_str().unwrap().to_string();
    let o = b.oci(&["run", "--bundle", &bundle, "sym"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Inside: one mount at /etc (the tmpfs, empty).
    assert_eq!(stdout(&o).trim(), "1", "{}", stdout(&o));
    let host_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(
        host_before.lines().filter(|l| l.contains(" /etc ")).count(),
        host_after.lines().filter(|l| l.contains(" /etc ")).count()
    );
    assert!(b.path().join("rootfs/etc/passwd").exists());
}

/// The state root is root's alone (0700): another local user can neither
/// read a container's record nor act on it, and its own moat-oci sees none
/// of root's containers.
#[test]
fn a_second_user_reaches_none_of_roots_containers() {
    if !clients::ready(
        "a_second_user_reaches_none_of_roots_containers",
        &["runc", "setpriv"],
    ) {
        return;
    }
    let b = Bundle::new(&["sleep", "60"]);
    let o = b.create("mine");
    assert!(o.status.success(), "{}", stderr(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(b.state_root())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_moat-oci"))
            .args(args)
            .env_remove("XDG_RUNTIME_DIR");
        run(&mut cmd, STEP)
    };
    let root = b.state_root().display().to_string();
    for args in [
        vec!["--root", &root, "state", "mine"],
        vec!["--root", &root, "kill", "mine", "KILL"],
        vec!["--root", &root, "delete", "--force", "mine"],
    ] {
        let o = as_nobody(&args);
        assert!(!o.status.success(), "nobody ran {args:?}: {}", stdout(&o));
    }
    let o = as_nobody(&["list", "-q"]);
    assert_eq!(stdout(&o).trim(), "", "nobody sees root's containers");
    let st = b.oci(&["state", "mine"]);
    assert!(stdout(&st).contains("\"created\""), "{}", stdout(&st));
    let o = b.oci(&["delete", "--force", "mine"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
