//! In a micro-VM, a workload that fails on the read-only root is told which
//! writes were refused and the policy line that grants them, as in the
//! sandbox: the guest agent, the guest kernel's audit daemon, sees the
//! calls failing with EROFS and sends them with the exit status. Needs
//! root, QEMU and the guest kernel; skips with `SKIP:` otherwise. TCG here.

#[path = "sandbox_common/mod.rs"]
mod common;

use common::{stderr, vm_ready, Env};

fn vm(env: &Env, policy: &str, script: &str) -> std::process::Output {
    let root = env.rootfs.display().to_string();
    env.moat(&[
        "run",
        "--rm",
        "-q",
        "--isolation",
        "vm",
        "--accel",
        "tcg",
        "--policy",
        policy,
        "--rootfs",
        &root,
        "sh",
        "-c",
        script,
    ])
    .output()
    .unwrap()
}

#[test]
fn a_failed_write_in_a_vm_names_the_path_and_its_grant() {
    let env = Env::new();
    if !vm_ready(&env, "a_failed_write_in_a_vm_names_the_path_and_its_grant") {
        return;
    }
    std::fs::create_dir_all(env.rootfs.join("var/lib/app")).unwrap();
    std::fs::write(env.rootfs.join("etc/app.conf"), "old\n").unwrap();
    // A new directory (the guest's audit names its parent), an existing
    // file opened for writing by a relative path (named in full).
    let o = vm(
        &env,
        "baseline",
        "mkdir /var/lib/app/cache; cd /etc && echo x > app.conf; exit 3",
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "moat: the workload exited 3 after 2 write(s) refused by a read-only file system:"
        ),
        "{err}"
    );
    assert!(
        err.contains("  mkdir of a new entry in /var/lib/app\n"),
        "{err}"
    );
    assert!(
        err.contains("  open /etc/app.conf\n") || err.contains("  openat /etc/app.conf\n"),
        "{err}"
    );
    assert!(
        err.contains("`filesystem.writable: [{path: /var/lib/app}]` (a tmpfs there) in a policy file with `extends: baseline`"),
        "{err}"
    );
    assert!(
        err.contains("/etc/app.conf in the image's system directories")
            && err.contains("`filesystem.root: ephemeral`"),
        "{err}"
    );
    // A workload that succeeds is not lectured, nor one whose failure had
    // nothing to do with writes.
    let o = vm(&env, "baseline", "mkdir /tmp/c2; exit 0");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("refused by a read-only"),
        "{}",
        stderr(&o)
    );
    let o = vm(&env, "baseline", "exit 4");
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("refused by a read-only"),
        "{}",
        stderr(&o)
    );
}
