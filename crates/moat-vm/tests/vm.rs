//! The vm backend end to end: real QEMU, the real guest kernel and agent, a
//! busybox rootfs. Serialised by a file lock; each boot takes about a
//! second under TCG.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

#[test]
fn echo_reaches_stdout() {
    require_vm!();
    let _l = vm_lock();
    let r = run(
        options(fixture(), process(&["echo", "hello from the guest"])),
        None,
    );
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "hello from the guest\n");
}

#[test]
fn exit_codes_and_missing_commands() {
    require_vm!();
    let _l = vm_lock();
    let r = run(
        options(
            fixture(),
            process(&["sh", "-c", "echo out; echo err >&2; exit 42"]),
        ),
        None,
    );
    assert_eq!(r.code, Ok(42));
    assert_eq!(r.stdout, "out\n");
    assert_eq!(r.stderr, "err\n");
    let r = run(options(fixture(), process(&["no-such-command"])), None);
    assert_eq!(r.code, Ok(127));
    assert_eq!(
        r.stderr,
        "moat: error: executable \"no-such-command\" not found in the container (PATH=/bin)\n"
    );
    let r = run(
        // The workload is PID 1 of its namespace (as in the sandbox), which
        // ignores its own signals: a child of it is killed instead.
        options(
            fixture(),
            process(&["sh", "-c", "sh -c 'kill -9 $$'; exit $?"]),
        ),
        None,
    );
    assert_eq!(r.code, Ok(137));
}

#[test]
fn stdin_is_relayed() {
    require_vm!();
    let _l = vm_lock();
    let mut p = process(&["cat"]);
    p.interactive = true;
    let r = run(options(fixture(), p), Some(b"abc\n"));
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "abc\n");
    // Without -i the workload's stdin is at end of file at once.
    let r = run(options(fixture(), process(&["cat"])), None);
    assert_eq!((r.code, r.stdout.as_str()), (Ok(0), ""));
}

#[test]
fn env_workdir_user_and_own_kernel() {
    require_vm!();
    let _l = vm_lock();
    let mut p = process(&["sh", "-c", "echo $FOO; pwd; id -u; id -g; id -G; hostname; uname -r; touch /tmp/ok && echo tmp-writable; touch /etc/x 2>/dev/null || echo root-readonly"]);
    p.env.push("FOO=bar baz".into());
    p.cwd = "/home/app".into();
    p.uid = 1000;
    p.gid = 1000;
    p.additional_gids = vec![1000, 10];
    let r = run(options(fixture(), p), None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[..6],
        [
            "bar baz",
            "/home/app",
            "1000",
            "1000",
            "1000 10",
            "moat-test"
        ],
        "{}",
        r.stdout
    );
    let host = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(lines[6], host.trim(), "the guest runs its own kernel");
    assert!(lines[6].starts_with("6.1"), "{}", lines[6]);
    assert_eq!(lines[7..], ["tmp-writable", "root-readonly"]);
}

#[test]
fn plan_is_applied_inside_the_guest() {
    require_vm!();
    let _l = vm_lock();
    // Capabilities all dropped, no_new_privs set, rlimit applied.
    let p = process(&[
        "sh",
        "-c",
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ulimit -n",
    ]);
    let r = run(options(fixture(), p), None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(
        r.stdout,
        "CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nNoNewPrivs:\t1\n1024\n"
    );
}

#[test]
fn terminal_mode_allocates_a_pty() {
    require_vm!();
    let _l = vm_lock();
    let mut p = process(&["sh", "-c", "tty; [ -t 0 ] && [ -t 1 ] && echo both-ttys"]);
    p.tty = true;
    let r = run(options(fixture(), p), None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    // The terminal is /dev/console, as in the sandbox.
    assert_eq!(r.stdout, "/dev/console\r\nboth-ttys\r\n");
}

#[test]
fn a_tampered_root_image_is_refused() {
    require_vm!();
    let _l = vm_lock();
    let f = new_fixture();
    let r = run(options(&f, process(&["true"])), None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    let img = moat_vm::rootfs::cache_dir(&f.state, &f.image_id)
        .unwrap()
        .join("root.img");
    let mut bytes = fs::read(&img).unwrap();
    // Inside the EROFS superblock (offset 1024): the first block the guest reads.
    bytes[1024 + 16] ^= 0x5a;
    fs::write(&img, &bytes).unwrap();
    let r = run(options(&f, process(&["true"])), None);
    let err = r.code.unwrap_err();
    assert!(
        err.starts_with("in the guest: mounting the root filesystem /dev/dm-0: Input/output error (os error 5): the root filesystem failed dm-verity verification (device-mapper: verity: "),
        "{err}"
    );
    assert!(err.contains("data block 0 is corrupted"), "{err}");
    assert!(err.ends_with("the cached image was modified after it was built: remove it with `moat image rm` and import it again"), "{err}");
}

#[test]
fn five_vms_at_once() {
    require_vm!();
    let _l = vm_lock();
    let f = fixture();
    // Warm the root image cache first so the five do not race to build it.
    assert_eq!(run(options(f, process(&["true"])), None).code, Ok(0));
    let handles: Vec<_> = (0..5)
        .map(|i| {
            std::thread::spawn(move || {
                let mut opts = options(
                    fixture(),
                    process(&["sh", "-c", &format!("echo vm{i}; exit {i}")]),
                );
                // Names are unique among running containers.
                opts.name = format!("vm{i}");
                let r = run(opts, None);
                (i, r.code, r.stdout, r.stderr)
            })
        })
        .collect();
    for h in handles {
        let (i, code, out, err) = h.join().unwrap();
        assert_eq!(code, Ok(i), "vm {i}: {err}");
        assert_eq!(out, format!("vm{i}\n"));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(jailed_processes(), Vec::<String>::new());
}

#[test]
fn normal_exit_leaves_nothing_behind() {
    require_vm!();
    let _l = vm_lock();
    let f = fixture();
    let r = run(options(f, process(&["true"])), None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(jailed_processes(), Vec::<String>::new());
    assert_eq!(vm_cgroups(), Vec::<String>::new());
    let containers = f.state.join("run/containers");
    // The records' lock file stays; no record does.
    let left: Vec<_> = fs::read_dir(&containers)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_accelerator_names_are_refused() {
    let f = new_fixture();
    let mut o = options(&f, process(&["true"]));
    o.accel = Some("hvf".into());
    if !std::path::Path::new("/usr/bin/qemu-system-x86_64").is_file() {
        println!("SKIP: qemu-system-x86_64 is not installed");
        return;
    }
    let r = run(o, None);
    assert_eq!(
        r.code.unwrap_err(),
        "--accel \"hvf\" is not an accelerator: use kvm, tcg or auto"
    );
}

// Signals to moat itself (SIGTERM, Ctrl-C, `kill -9`) are tested through
// the real `moat` binary in crates/moat/tests/vm_cli.rs.

#[test]
fn escape_attempts_fail_inside_the_vm() {
    require_vm!();
    let _l = vm_lock();
    let marker = std::env::temp_dir().join(format!("moat-host-marker-{}", std::process::id()));
    fs::write(&marker, "host secret").unwrap();
    let script = format!(
        "mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo mount-denied; \
         mknod /tmp/sda b 8 0 2>/dev/null && echo mknod-ok || echo mknod-denied; \
         echo x > /bin/busybox 2>/dev/null && echo wrote-binary || echo binary-readonly; \
         cat {m} 2>/dev/null || echo no-host-files; \
         ls /sys/class/net; ls /sys/block; \
         cat /proc/1/comm; ps | grep -c '[q]emu'; true",
        m = marker.display()
    );
    let r = run(options(fixture(), process(&["sh", "-c", &script])), None);
    let _ = fs::remove_file(&marker);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "mount-denied",
            "mknod-denied",
            "binary-readonly",
            "no-host-files"
        ],
        "{}",
        r.stdout
    );
    // Only loopback, only the verified root disk, PID 1 is the workload
    // itself (its own PID namespace: the agent is not visible) and nothing
    // of the host (no QEMU) is visible.
    assert_eq!(lines[4..], ["lo", "dm-0", "vda", "sh", "0"], "{}", r.stdout);
}
