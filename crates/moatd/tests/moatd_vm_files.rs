//! ConfigMaps and Secrets as files in micro-VM replicas (issue 17): each
//! file volume is a read-only host directory that a jailed virtiofsd
//! serves to the guest (docs/volumes.md). An exec readiness probe reads
//! the files; a changed ConfigMap reaches the running guest within a
//! bounded time (the atomic writer makes new inodes, virtiofsd's
//! `cache=auto` revalidates names after a second); the Secret's value is
//! in no command line, log, event or audit entry. On TCG (no KVM) a boot
//! takes seconds. Skips with `SKIP:` without QEMU, virtiofsd or a built
//! guest kernel.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    can_run, config_map, deployment, secret, stderr, stdout, wait_for, Env, Spec, VM_POLICY,
};

const SECRET_VALUE: &str = "vm-s3cr3t-value-9d2e";

/// A one-replica VM Deployment mounting ConfigMap `app` at /home and
/// Secret `db` at /var, ready once the probe has read both (as the pod's
/// user, 1000).
fn with_files(image: &str) -> String {
    let spec = Spec {
        replicas: 1,
        ready: None,
        policy: Some("probe-exec-vm"),
        ..Spec::default()
    };
    deployment(image, &spec)
        .replace("moat.dev/isolation: sandbox", "moat.dev/isolation: vm")
        .replace(
            "      containers:",
            "      volumes:\n      - {name: cfg, configMap: {name: app}}\n      - {name: creds, secret: {secretName: db}}\n      containers:",
        )
        + "        volumeMounts:\n        - {name: cfg, mountPath: /home}\n        - {name: creds, mountPath: /var, readOnly: true}\n"
        + "        readinessProbe:\n          exec: {command: [/bin/sh, -c, \"grep -Eqx 'hello|bonjour' /home/greeting && grep -qx fast /home/mode && test -s /var/password && cat /var/password >/dev/null\"]}\n          periodSeconds: 1\n          timeoutSeconds: 10\n"
}

fn exec(env: &Env, pod: &str, script: &str) -> std::process::Output {
    env.run(&["exec", pod, "/bin/sh", "-c", script])
}

/// Every process's command line, joined (the VMM, its virtiofsd, the
/// supervisor and moatd's children among them).
fn command_lines() -> String {
    let mut all = String::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            all.push_str(&String::from_utf8_lossy(&c).replace('\0', " "));
            all.push('\n');
        }
    }
    all
}

#[test]
fn config_maps_and_secrets_reach_a_vm_replica_and_follow_updates() {
    let name = "config_maps_and_secrets_reach_a_vm_replica_and_follow_updates";
    if !can_run(name) {
        return;
    }
    if !std::path::Path::new("/usr/bin/qemu-system-x86_64").is_file() {
        println!("SKIP: {name}: qemu-system-x86_64 is not installed");
        return;
    }
    let virtiofsd = std::env::var_os("MOAT_VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/qemu/virtiofsd"));
    if !virtiofsd.is_file() {
        println!("SKIP: {name}: {} is not installed", virtiofsd.display());
        return;
    }
    let mut env = Env::new(None);
    if !env.run(&["kernel", "path"]).status.success() {
        println!("SKIP: {name}: guest kernel not built (make kernel)");
        return;
    }
    let _unmount = env.start_with_files();
    let text = format!(
        "{VM_POLICY}---\n{}---\n{}---\n{}",
        config_map("hello"),
        secret(SECRET_VALUE),
        with_files(&env.image)
    );
    let t = Instant::now();
    env.apply("files.yaml", &text);
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "180"]);
    println!(
        "VM replica ready (its probe read the files) in {:?}",
        t.elapsed()
    );
    let pods = env.pods();
    assert_eq!(pods.len(), 1);
    let pod = pods[0]["NAME"].as_str().unwrap().to_string();
    let vms = env
        .containers()
        .iter()
        .filter(|c| c["status"] == "running" && c["isolation"] == "vm")
        .count();
    assert_eq!(vms, 1, "the replica is a micro-VM");

    // The content, owners and modes, as the pod's user sees them.
    let o = exec(&env, &pod, "cat /home/greeting; echo; cat /home/mode; echo; id -u; cat /var/password; echo; stat -L -c '%a %u:%g' /home/greeting /var/password");
    assert_eq!(
        stdout(&o),
        format!("hello\nfast\n1000\n{SECRET_VALUE}\n644 0:0\n400 1000:1000\n"),
        "{}",
        stderr(&o)
    );
    // Shared by virtio-fs, read-only in the guest (and on the host side).
    let o = exec(&env, &pod, "grep -E ' /(home|var) ' /proc/mounts | cut -d' ' -f2-4 | sort; echo x > /home/greeting 2>/dev/null || echo refused; rm /var/password 2>/dev/null || echo refused; touch /var/new 2>/dev/null || echo refused");
    let out = stdout(&o);
    let mut lines = out.lines();
    for target in ["/home", "/var"] {
        let l = lines.next().unwrap_or_default();
        assert!(
            l.starts_with(&format!("{target} virtiofs ro,")),
            "{target} is not a read-only virtio-fs mount: {out}{}",
            stderr(&o)
        );
    }
    assert_eq!(lines.collect::<Vec<_>>(), ["refused"; 3], "{out}");

    // A changed ConfigMap reaches the running guest in place: no restart,
    // no new revision. A reader in the guest during the switch sees the
    // old content or the new, never a missing or half-written file.
    let reader = env
        .moat(&[
            "exec",
            &pod,
            "/bin/sh",
            "-c",
            "end=$(($(date +%s) + 8)); while [ $(date +%s) -lt $end ]; do cat /home/greeting 2>&1 || echo -n FAILED; echo; done",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    env.apply("cm.yaml", &config_map("bonjour"));
    let t = Instant::now();
    let bound = Duration::from_secs(20);
    loop {
        let o = exec(&env, &pod, "cat /home/greeting");
        if stdout(&o) == "bonjour" {
            break;
        }
        assert!(
            t.elapsed() < bound,
            "the guest still reads {:?} {:?} after the update: {}",
            stdout(&o),
            bound,
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "the guest saw the changed ConfigMap {:?} after the apply",
        t.elapsed()
    );
    let o = reader.wait_with_output().unwrap();
    let reads = stdout(&o);
    let (before, after) = reads.lines().fold((0, 0), |(b, a), l| match l {
        "hello" => (b + 1, a),
        "bonjour" => (b, a + 1),
        _ => panic!(
            "a read in the guest during the update gave {l:?}: {reads}{}",
            stderr(&o)
        ),
    });
    assert!(
        before > 0 && after > 0 && reads.trim_end().ends_with("bonjour"),
        "the reader saw {before} old and {after} new reads"
    );
    println!("a reader in the guest saw {before} old reads, then {after} new ones");
    let p = env.pods();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["NAME"], pod.as_str());
    assert_eq!(p[0]["RESTARTS"], 0);
    assert!(env.ok(&["events"]).contains("FilesUpdated"));
    // The superseded generation is kept a few seconds for the guest's
    // name cache, then pruned by a later pass.
    let cfg = env.dir.path().join("files").join(&pod).join("cfg");
    wait_for(30, "the old generation to be pruned", || {
        std::fs::read_dir(&cfg)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != "..data"
            })
            .count()
            == 1
    });
    // Still ready: the probe reads the new files.
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let o = exec(&env, &pod, "cat /home/greeting /home/mode /var/password");
    assert_eq!(stdout(&o), format!("bonjourfast{SECRET_VALUE}"));

    // The secret's value is nowhere moatd writes for people to read, nor
    // on any command line (VMM, virtiofsd, supervisor) while the VM runs.
    let seen = vec![
        ("command lines", command_lines()),
        ("events", env.ok(&["events"])),
        ("describe secret", env.ok(&["describe", "secret/db"])),
        (
            "describe deployment",
            env.ok(&["describe", "deployment/web"]),
        ),
        ("get secrets", env.ok(&["get", "secrets", "-o", "json"])),
        ("inspect", env.ok(&["inspect", &pod])),
        ("logs", env.ok(&["logs", "deployment/web"])),
        ("moatd's log", env.daemon_log()),
    ];
    env.assert_absent(SECRET_VALUE, seen);

    // Removing the Deployment stops the VM and removes its files.
    env.ok(&["delete", "deployment/web"]);
    let dir = env.dir.path().join("files").join(&pod);
    wait_for(60, "the replica's files to go", || !dir.exists());
    wait_for(60, "the VM to go", || env.containers().is_empty());
}
