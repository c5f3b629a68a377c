//! `filesystem.root: ephemeral` in a micro-VM: an overlay over the
//! verity-checked EROFS root inside the guest, its upper layer a tmpfs of
//! `resources.disk` in guest memory. Needs root, QEMU and the guest
//! kernel; skips with `SKIP:` otherwise. Runs on TCG here.

#[path = "sandbox_common/mod.rs"]
mod common;

use common::{stderr, stdout, vm_ready, Env};

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
fn a_vm_writes_on_an_ephemeral_root_within_its_size_and_the_image_is_untouched() {
    let env = Env::new();
    if !vm_ready(
        &env,
        "a_vm_writes_on_an_ephemeral_root_within_its_size_and_the_image_is_untouched",
    ) {
        return;
    }
    let p = env.policy(
        "vmeph",
        "  filesystem:\n    root: ephemeral\n  resources:\n    disk: 8Mi\n",
    );
    // Writes anywhere in the image's tree, including system directories;
    // a writer past the layer's size gets ENOSPC inside the guest only.
    let o = vm(
        &env,
        &p,
        "echo x > /etc/written && mkdir -p /var/lib/app && cat /etc/written && \
         dd if=/dev/zero of=/var/lib/app/big bs=1M count=16 2>&1; echo dd=$?",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("x\n"), "{out}");
    assert!(
        out.contains("No space left on device") && out.contains("dd=1"),
        "{out}"
    );
    // The next container starts from the pristine image.
    let o = vm(&env, &p, "cat /etc/written 2>/dev/null || echo none");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "none\n");
    assert!(!env.rootfs.join("etc/written").exists());
    // baseline's read-only root refuses the same write.
    let o = vm(&env, "baseline", "echo x > /etc/written");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
}
