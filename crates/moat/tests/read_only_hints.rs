//! A workload that fails on the read-only root is told which writes were
//! refused and the policy line that grants them, from an eBPF watch of the
//! run (no rerun). Needs root; skips with `SKIP:` otherwise.

#[path = "sandbox_common/mod.rs"]
mod common;

use common::{can_sandbox, stderr, Env};

#[test]
fn a_failed_write_names_the_path_and_its_grant() {
    if !can_sandbox("a_failed_write_names_the_path_and_its_grant") {
        return;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.rootfs.join("var/lib/app")).unwrap();
    let o = env.run(&[
        "--rm",
        "--policy",
        "baseline",
        "--",
        "sh",
        "-c",
        "mkdir /var/lib/app/cache; echo x > /etc/app.conf; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert!(
        err.contains(
            "moat: the workload exited 3 after 2 write(s) refused by a read-only file system:"
        ),
        "{err}"
    );
    assert!(err.contains("  mkdir /var/lib/app/cache\n"), "{err}");
    assert!(err.contains("  openat /etc/app.conf\n"), "{err}");
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
    let o = env.run(&[
        "--rm",
        "--policy",
        "baseline",
        "--",
        "sh",
        "-c",
        "mkdir /var/lib/app/c2; exit 0",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        !stderr(&o).contains("refused by a read-only"),
        "{}",
        stderr(&o)
    );
    let o = env.run(&["--rm", "--policy", "baseline", "--", "sh", "-c", "exit 4"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        !stderr(&o).contains("refused by a read-only"),
        "{}",
        stderr(&o)
    );
}
