//! `moat run --isolation vm` end to end through the CLI: an imported image
//! in a micro-VM, stdin, exit codes and the guest's own kernel. Skips with
//! `SKIP:` when QEMU or the guest kernel is absent (`make kernel` builds it).

#[path = "sandbox_common/mod.rs"]
mod common;

use std::io::Write;
use std::process::Stdio;

use common::{can_sandbox, stderr, stdout, Env};

/// Serialises VM boots across test binaries (same lock as moat-vm's tests).
fn vm_lock() -> std::fs::File {
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("moat-vm-tests.lock"))
        .unwrap();
    f.lock().unwrap();
    f
}

fn vm_ready(env: &Env, test: &str) -> bool {
    if !can_sandbox(test) {
        return false;
    }
    if !std::path::Path::new("/usr/bin/qemu-system-x86_64").is_file() {
        println!("SKIP: {test}: qemu-system-x86_64 is not installed");
        return false;
    }
    let k = env.moat(&["kernel", "path"]).output().unwrap();
    if !k.status.success() {
        println!(
            "SKIP: {test}: guest kernel not built: {}",
            stderr(&k).trim()
        );
        return false;
    }
    true
}

#[test]
fn an_imported_image_runs_in_a_micro_vm() {
    let env = Env::new();
    if !vm_ready(&env, "an_imported_image_runs_in_a_micro_vm") {
        return;
    }
    let _l = vm_lock();
    let archive = env.dir.path().join("busybox.oci.tar");
    let o = env
        .moat(&["dev", "test-image", "-o", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env
        .moat(&["image", "import", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let vm = |args: &[&str]| {
        let mut full = vec!["run", "--isolation", "vm", "--accel", "tcg"];
        full.extend_from_slice(args);
        env.moat(&full).output().unwrap()
    };
    let o = vm(&["busybox", "echo", "hello from a micro-VM"]);
    assert_eq!(stdout(&o), "hello from a micro-VM\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));

    let o = vm(&["busybox", "uname", "-r"]);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(
        stdout(&o).trim(),
        host.trim(),
        "the guest runs its own kernel"
    );

    let o = vm(&["busybox", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));

    // The test image's Entrypoint is /bin/busybox: an unknown command is an
    // unknown applet, exit 127 as in the sandbox.
    let o = vm(&["busybox", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert_eq!(stderr(&o), "no-such-command: applet not found\n");

    // echo abc | moat run -i --isolation vm IMAGE cat
    let mut child = env
        .moat(&[
            "run",
            "-i",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "busybox",
            "cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "abc\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));

    // The running container was visible under the run root and is gone.
    let containers = env.state_root().join("run/containers");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir()) // the `.lock` file stays
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_accelerator_is_a_clear_error() {
    let env = Env::new();
    let o = env
        .moat(&[
            "run",
            "--isolation",
            "vm",
            "--accel",
            "hvf",
            "busybox",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid value 'hvf' for '--accel <ACCEL>'"),
        "{}",
        stderr(&o)
    );
}
