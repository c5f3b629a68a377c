//! Detached micro-VM containers (issue 13): `run -d`, logs, `exec` through
//! the monitor and the guest agent, stop, `kill -9` of the monitor, and ten
//! VMs started at once. Skips with `SKIP:` when QEMU or the guest kernel is
//! absent. Runs on TCG here.

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use std::process::{Output, Stdio};

use common::{alive, stderr, stdout, vm_ready, wait_for, Env};
use vm_host::{jailed_processes, vm_cgroups, vm_lock};

fn moat(env: &Env, args: &[&str]) -> Output {
    env.moat(args).output().unwrap()
}

/// Imports the test image; returns a policy that allows exec.
fn setup(env: &Env) -> String {
    let archive = env.dir.path().join("busybox.oci.tar");
    env.ok(&["dev", "test-image", "-o", archive.to_str().unwrap()]);
    env.ok(&["image", "import", archive.to_str().unwrap()]);
    let p = env.dir.path().join("exec.yaml");
    std::fs::write(
        &p,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: vm-exec\nspec:\n  extends: baseline\n  exec: true\n  resources:\n    memory: 192Mi\n",
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

/// Removes the named containers however the test ends.
struct Cleanup<'a>(&'a Env, Vec<String>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let mut args = vec!["rm", "-f"];
        args.extend(self.1.iter().map(String::as_str));
        let _ = self.0.moat(&args).output();
    }
}

/// Nothing of any VM is left on the host.
fn nothing_left() {
    wait_for("QEMU and its cgroups to go", 60, || {
        jailed_processes().is_empty() && vm_cgroups().is_empty()
    });
}

#[test]
fn a_detached_micro_vm_logs_execs_stops_and_dies_with_its_monitor() {
    let env = Env::new();
    if !vm_ready(
        &env,
        "a_detached_micro_vm_logs_execs_stops_and_dies_with_its_monitor",
    ) {
        return;
    }
    let _l = vm_lock();
    let policy = setup(&env);
    let _cleanup = Cleanup(&env, vec!["v".into(), "h".into()]);
    let vm_run = |name: &str, cmd: &[&str]| {
        let mut args = vec![
            "run",
            "-d",
            "-q",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "--policy",
            &policy,
            "--name",
            name,
            "busybox",
        ];
        args.extend(cmd);
        env.ok(&args)
    };
    let id = vm_run(
        "v",
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 4' TERM; echo up; while true; do sleep 0.2; done",
        ],
    );
    assert_eq!(id.trim().len(), 64);
    let c = env.inspect("v");
    assert_eq!(c["Isolation"], "vm");
    assert_eq!(c["State"]["Status"], "running", "{c}");
    wait_for("the guest's output in the log", 120, || {
        stdout(&moat(&env, &["logs", "v"])) == "up\n"
    });

    // exec goes through the agent, under the container's plan.
    let o = moat(
        &env,
        &[
            "exec",
            "-u",
            "1000:1000",
            "-w",
            "/tmp",
            "v",
            "sh",
            "-c",
            "id -u; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1000\nNoNewPrivs:\t1\nSeccomp:\t2\n");
    assert_eq!(
        moat(&env, &["exec", "v", "nosuch"]).status.code(),
        Some(127)
    );

    // stop: SIGTERM reaches the guest's workload; the record keeps its exit.
    assert_eq!(env.ok(&["stop", "-t", "30", "v"]).trim(), "v");
    let c = env.inspect("v");
    assert_eq!(c["State"]["Status"], "stopped", "{c}");
    assert_eq!(c["State"]["ExitCode"], 4, "{c}");
    assert!(env.ok(&["logs", "v"]).contains("bye"));
    nothing_left();
    let o = moat(&env, &["exec", "v", "true"]);
    assert!(stderr(&o).contains("is not running"), "{}", stderr(&o));

    // kill -9 of the monitor ends the VM; the record says so.
    env.ok(&["start", "v"]);
    let c = env.inspect("v");
    let monitor = c["State"]["MonitorPid"].as_i64().unwrap();
    assert!(alive(monitor));
    assert!(!jailed_processes().is_empty());
    assert!(std::process::Command::new("kill")
        .args(["-9", &monitor.to_string()])
        .status()
        .unwrap()
        .success());
    nothing_left();
    let c = env.inspect("v");
    assert_eq!(c["State"]["Status"], "stopped", "{c}");
    assert!(
        c["State"]["Error"]
            .as_str()
            .unwrap()
            .contains("monitor died"),
        "{c}"
    );
    env.ok(&["rm", "v"]);

    // A held create boots the guest and waits; start runs the workload.
    let held = [
        "create",
        "--held",
        "-q",
        "--isolation",
        "vm",
        "--accel",
        "tcg",
        "--policy",
        &policy,
        "--name",
        "h",
        "busybox",
        "sh",
        "-c",
        "echo ran; exit 5",
    ];
    env.ok(&held);
    assert_eq!(env.inspect("h")["State"]["Status"], "created");
    assert!(!jailed_processes().is_empty());
    assert_eq!(env.ok(&["logs", "h"]), "");
    env.ok(&["start", "h"]);
    assert_eq!(env.ok(&["wait", "h"]).trim(), "5");
    assert_eq!(env.ok(&["logs", "h"]), "ran\n");
    env.ok(&["rm", "h"]);
    nothing_left();
    assert_eq!(env.ok(&["ps", "-a", "--format", "json"]).trim(), "[]");
}

#[test]
fn ten_micro_vms_start_at_once_and_are_removed_cleanly() {
    let env = Env::new();
    if !vm_ready(&env, "ten_micro_vms_start_at_once_and_are_removed_cleanly") {
        return;
    }
    let _l = vm_lock();
    let policy = setup(&env);
    let _cleanup = Cleanup(&env, (0..10).map(|i| format!("v{i}")).collect());
    let children: Vec<_> = (0..10)
        .map(|i| {
            env.moat(&[
                "run",
                "-d",
                "-q",
                "--isolation",
                "vm",
                "--accel",
                "tcg",
                "--policy",
                &policy,
                "--name",
                &format!("v{i}"),
                "busybox",
                "sleep",
                "1000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        ids.insert(stdout(&o).trim().to_string());
    }
    assert_eq!(ids.len(), 10);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["ps", "--format", "json"])).unwrap();
    let all = v.as_array().unwrap();
    assert_eq!(all.len(), 10);
    assert!(
        all.iter()
            .all(|c| c["isolation"] == "vm" && c["status"] == "running"),
        "{v}"
    );
    let names: std::collections::BTreeSet<String> = all
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 10);
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    env.ok(&rm);
    assert_eq!(env.ok(&["ps", "-a", "--format", "json"]).trim(), "[]");
    nothing_left();
}
