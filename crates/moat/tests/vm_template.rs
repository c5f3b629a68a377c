//! Micro-VMs restored from a booted template (`--vm-start template`, the
//! default where it applies), end to end through the CLI: workloads run
//! as after a cold boot, clones do not share random state, a template is
//! bound to its kernel and agent, a corrupted one is refused and rebuilt,
//! `kill -9` during a restore leaves nothing, the image's verity still
//! holds, and twenty restore at once. Skips with `SKIP:` where VMs cannot
//! run (no QEMU or no guest kernel).

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, stdout, vm_ready, Env};
use vm_host::{jailed_processes, vm_lock, VmLock};

/// A state root with the test image, under the VM lock.
fn ready(test: &str) -> Option<(Env, VmLock)> {
    let env = Env::new();
    if !vm_ready(&env, test) {
        return None;
    }
    let lock = vm_lock();
    let archive = env.dir.path().join("busybox.oci.tar");
    env.ok(&["dev", "test-image", "-o", archive.to_str().unwrap()]);
    env.ok(&["image", "import", archive.to_str().unwrap()]);
    Some((env, lock))
}

fn run_args<'a>(start: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec![
        "run",
        "--isolation",
        "vm",
        "--accel",
        "tcg",
        "--vm-start",
        start,
    ];
    full.extend_from_slice(args);
    full
}

fn vm(env: &Env, args: &[&str]) -> Output {
    env.moat(&run_args("template", args)).output().unwrap()
}

/// Whether the run restored its VM from a template (the guest agent's
/// trace says so).
fn restored(env: &Env, envs: &[(&str, &Path)]) -> bool {
    let mut c = env.moat(&run_args("template", &["busybox", "true"]));
    c.env("MOAT_VM_TRACE", "1");
    for (k, v) in envs {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stderr(&o).contains("restored from a template, RNG reseeded")
}

fn templates(env: &Env) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(env.state_root().join("vm/templates"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn assert_nothing_left(env: &Env) {
    vm_host::assert_nothing_left(&env.state_root().join("containers"))
}

#[test]
fn a_restored_vm_runs_workloads_like_a_booted_one() {
    let Some((env, _l)) = ready("a_restored_vm_runs_workloads_like_a_booted_one") else {
        return;
    };
    let o = vm(&env, &["busybox", "echo", "hello from a clone"]);
    assert_eq!(stdout(&o), "hello from a clone\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));
    let t = templates(&env);
    assert_eq!(t.len(), 1, "one template built: {t:?}");
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(t[0].parent().unwrap()), 0o700);
    assert_eq!(mode(&t[0].join("state")), 0o600);
    assert!(restored(&env, &[]), "the second run restores the template");

    let o = vm(&env, &["busybox", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let o = vm(&env, &["busybox", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert_eq!(stderr(&o), "no-such-command: applet not found\n");

    // stdin reaches the workload.
    let mut child = env
        .moat(&run_args("template", &["-i", "busybox", "cat"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "abc\n", "{}", stderr(&o));

    // The policy applies inside the clone as after a boot: no capability,
    // no_new_privs, the seccomp filter, a read-only root.
    let o = vm(
        &env,
        &[
            "busybox",
            "sh",
            "-c",
            "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; touch /x 2>/dev/null || echo ro",
        ],
    );
    assert_eq!(
        stdout(&o),
        "CapEff:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\nro\n",
        "{}",
        stderr(&o)
    );

    // A signal sent to moat reaches the restored workload.
    let mut child = env
        .moat(&run_args(
            "template",
            &[
                "busybox",
                "sh",
                "-c",
                "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 1; done",
            ],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(child.wait().unwrap().code(), Some(3));
    assert_nothing_left(&env);

    // Asked for cold, it boots (no restore in the trace).
    let o = env
        .moat(&run_args("cold", &["busybox", "true"]))
        .env("MOAT_VM_TRACE", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("restored from a template"));
    assert!(
        stderr(&o).contains("verified root mounted"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn clones_of_one_template_do_not_share_random_state() {
    let Some((env, _l)) = ready("clones_of_one_template_do_not_share_random_state") else {
        return;
    };
    let probe = "cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname";
    let one = |name: &str| {
        let o = vm(&env, &["--name", name, "busybox", "sh", "-c", probe]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = stdout(&o);
        let lines: Vec<String> = out.lines().map(String::from).collect();
        assert_eq!(lines.len(), 3, "{out}");
        lines
    };
    // The first run builds the template; the next two are clones of it.
    one("builder");
    assert!(restored(&env, &[]));
    let a = one("clone-a");
    let b = one("clone-b");
    assert_ne!(a[0], b[0], "boot IDs");
    assert_ne!(a[1], b[1], "/dev/urandom bytes");
    assert_eq!(a[1].len(), 32);
    assert_eq!((a[2].as_str(), b[2].as_str()), ("clone-a", "clone-b"));
}

#[test]
fn a_template_for_another_kernel_or_agent_is_not_used() {
    let Some((env, _l)) = ready("a_template_for_another_kernel_or_agent_is_not_used") else {
        return;
    };
    // The first run builds the template, then restores from it.
    assert!(restored(&env, &[]));
    assert_eq!(templates(&env).len(), 1);
    // The same kernel at another path is another input: a new template.
    let kernel = env.ok(&["kernel", "path"]).trim().to_string();
    let k2 = env.dir.path().join("vmlinux");
    std::fs::copy(&kernel, &k2).unwrap();
    assert!(restored(&env, &[("MOAT_KERNEL", &k2)]));
    assert_eq!(templates(&env).len(), 2);
    assert!(restored(&env, &[("MOAT_KERNEL", &k2)]));
    assert_eq!(templates(&env).len(), 2);
    // Another agent build: a new template too.
    let agent = std::env::var_os("MOAT_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_moat"))
                .parent()
                .unwrap()
                .join("../x86_64-unknown-linux-gnu/release/moat-agent")
        });
    let a2 = env.dir.path().join("moat-agent");
    std::fs::copy(&agent, &a2).unwrap();
    assert!(restored(&env, &[("MOAT_AGENT", &a2)]));
    assert_eq!(templates(&env).len(), 3);
    // The first template is still the one for the default inputs.
    assert!(restored(&env, &[]));
    assert_eq!(templates(&env).len(), 3);
}

#[test]
fn a_corrupted_template_is_refused_and_rebuilt() {
    let Some((env, _l)) = ready("a_corrupted_template_is_refused_and_rebuilt") else {
        return;
    };
    let o = vm(&env, &["busybox", "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = templates(&env).remove(0);
    let state = t.join("state");
    let mut bytes = std::fs::read(&state).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&state, &bytes).unwrap();
    let o = vm(&env, &["busybox", "echo", "still fine"]);
    assert_eq!(stdout(&o), "still fine\n", "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "moat: notice: refusing the micro-VM template: template file {} failed verification: its sha256 is ",
            state.display()
        )) && err.trim_end().ends_with("when it was built; building it again"),
        "{err}"
    );
    assert_ne!(std::fs::read(&state).unwrap(), bytes, "rebuilt");
    // The rebuilt template verifies: no notice, restored.
    let o = vm(&env, &["busybox", "true"]);
    assert_eq!(stderr(&o), "");
    assert!(restored(&env, &[]));
    // The guest memory: held sealed in memory while a holder runs; once
    // it is gone the file is loaded, checked, and refused when changed.
    let holder: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.join("holder.json")).unwrap()).unwrap();
    let pid = holder["pid"].as_u64().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    let memory = t.join("memory");
    let f = std::fs::File::options().write(true).open(&memory).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"\x90\x90", 1 << 20).unwrap();
    drop(f);
    let o = vm(&env, &["busybox", "echo", "still fine"]);
    assert_eq!(stdout(&o), "still fine\n", "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!(
            "moat: notice: refusing the micro-VM template: template file {} failed verification: its sha256 is ",
            memory.display()
        )),
        "{}",
        stderr(&o)
    );
    assert!(restored(&env, &[]));
    // A manifest that does not parse is refused the same way.
    std::fs::write(t.join("manifest.json"), b"{").unwrap();
    let o = vm(&env, &["busybox", "true"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("has an unreadable manifest"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_flipped_byte_in_the_image_still_refuses_to_mount() {
    let Some((env, _l)) = ready("a_flipped_byte_in_the_image_still_refuses_to_mount") else {
        return;
    };
    assert!(restored(&env, &[]));
    let images = env.state_root().join("vm/rootfs-v1");
    let dir = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let img = dir.join("root.img");
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[1100] ^= 0x55;
    std::fs::write(&img, &bytes).unwrap();
    let o = vm(&env, &["busybox", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("the root filesystem failed dm-verity verification (device-mapper: verity: 254:0: data block 0 is corrupted)"),
        "{}",
        stderr(&o)
    );
    assert_nothing_left(&env);
}

#[test]
fn kill_9_during_restore_leaves_nothing() {
    let Some((env, _l)) = ready("kill_9_during_restore_leaves_nothing") else {
        return;
    };
    assert!(restored(&env, &[]), "builds the template");
    let mut child = env
        .moat(&run_args("template", &["busybox", "sleep", "30"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // As soon as the jailed VMM exists it is loading the template's state.
    let deadline = Instant::now() + Duration::from_secs(60);
    while jailed_processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!jailed_processes().is_empty(), "no VMM appeared");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_nothing_left(&env);
    // The template is intact and used again.
    assert!(restored(&env, &[]));
}

#[test]
fn twenty_template_vms_at_once() {
    let Some((env, _l)) = ready("twenty_template_vms_at_once") else {
        return;
    };
    assert!(restored(&env, &[]), "builds the template");
    let start = Instant::now();
    let children: Vec<_> = (0..20)
        .map(|i| {
            env.moat(&run_args(
                "template",
                &["busybox", "sh", "-c", &format!("sleep 2; echo vm-{i}")],
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert_eq!(stdout(&o), format!("vm-{i}\n"), "{}", stderr(&o));
        assert_eq!(o.status.code(), Some(0));
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(240), "20 clones took {took:?}");
    println!("20 template VMs at once: {:.1} s", took.as_secs_f64());
    assert_nothing_left(&env);
}

/// `--vm-start` holds for detached containers too: the monitor that runs
/// them reads it from the container's spec.
#[test]
fn detached_containers_keep_their_vm_start() {
    let Some((env, _l)) = ready("detached_containers_keep_their_vm_start") else {
        return;
    };
    let detached = |start: &str, name: &str| {
        env.ok(&run_args(start, &["-d", "--name", name, "busybox", "true"]));
        assert_eq!(env.ok(&["wait", name]).trim(), "0");
    };
    detached("cold", "cold-one");
    assert_eq!(
        templates(&env),
        Vec::<PathBuf>::new(),
        "a cold start builds no template"
    );
    detached("template", "from-template");
    assert_eq!(templates(&env).len(), 1, "a template start builds one");
    env.ok(&["rm", "cold-one", "from-template"]);
    assert_nothing_left(&env);
}
