//! `moat run --isolation sandbox`, `moat ps` and `moat kill`, end to end
//! through the CLI. Needs root (CI runs as root); skips with `SKIP:` otherwise.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{can_sandbox, line, stderr, stdout, Env};

fn wait_timeout(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("moat did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `moat ps --format json` until a container named `name` shows up.
fn wait_running(env: &Env, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = env.moat(&["ps", "--format", "json"]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(c) = v.as_array().unwrap().iter().find(|c| c["name"] == name) {
            if c["pid"].as_i64().unwrap_or(0) > 0 {
                return c.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "container {name} never appeared in moat ps"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_sleeper(env: &Env, name: &str, extra: &[&str]) -> Child {
    let mut args = vec!["run", "--isolation", "sandbox", "--name", name];
    args.extend(extra);
    args.push("--rootfs");
    let root = env.rootfs.to_str().unwrap().to_string();
    args.push(&root);
    args.extend(["sleep", "1000"]);
    env.moat(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn runs_a_command_as_container_root_with_exit_code() {
    if !can_sandbox("runs_a_command_as_container_root_with_exit_code") {
        return;
    }
    let env = Env::new();
    let out = env.run(&[
        "--hostname",
        "box",
        "--",
        "/bin/sh",
        "-c",
        "id; hostname; pwd; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(stdout(&out), "uid=0(root) gid=0(root)\nbox\n/\n");
    assert_eq!(stderr(&out), "err\n");
    // The container is kept, stopped, with its exit code (podman's
    // behaviour) and nothing else of it is left: no cgroups, no process.
    let ps = env
        .moat(&["ps", "-a", "--format", "json"])
        .output()
        .unwrap();
    let all: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["status"], "stopped");
    assert_eq!(all[0]["exit_code"], 7);
    assert_eq!(all[0]["pid"], 0);
    for p in all[0]["cgroups"].as_array().unwrap() {
        assert!(!std::path::Path::new(p.as_str().unwrap()).exists(), "{p}");
    }
}

#[test]
fn user_env_workdir_and_id_mapping() {
    if !can_sandbox("user_env_workdir_and_id_mapping") {
        return;
    }
    let env = Env::new();
    let out = env.run(&[
        "--user",
        "1000:1000",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "id -u; id -g; echo $FOO; pwd; cat /proc/self/uid_map",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..4], ["1000", "1000", "bar", "/tmp"]);
    let map: Vec<u64> = lines[4]
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(map[0], 0, "container root is id 0");
    assert_ne!(map[1], 0, "host root must never be mapped");
    assert_eq!(map[2], 65536);
}

#[test]
fn privileges_are_dropped() {
    if !can_sandbox("privileges_are_dropped") {
        return;
    }
    let env = Env::new();
    let out = env.run(&[
        "--",
        "grep",
        "-E",
        "^(Cap|NoNewPrivs|Seccomp:)",
        "/proc/self/status",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
         CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n"
    );
}

#[test]
fn root_is_read_only_and_never_written() {
    if !can_sandbox("root_is_read_only_and_never_written") {
        return;
    }
    let env = Env::new();
    let out = env.run(&[
        "--",
        "sh",
        "-c",
        "touch /x || echo ro; echo t > /tmp/t && cat /tmp/t; mount | grep ' / '",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ro\nt\n"), "{text}");
    assert!(line(&text, "/dev/").contains("(ro,nosuid,nodev"), "{text}");
    assert!(stderr(&out).contains("Read-only file system"));
    assert!(!env.rootfs.join("x").exists());
    assert!(!env.rootfs.join("tmp/t").exists());
}

#[test]
fn namespaces_isolate_pids_network_and_hostname() {
    if !can_sandbox("namespaces_isolate_pids_network_and_hostname") {
        return;
    }
    let env = Env::new();
    let out = env.run(&["--", "sh", "-c", "echo $$; ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; ls /sys/fs/cgroup 2>&1 | wc -l"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "1",
        "the workload is PID 1 of its own PID namespace"
    );
    // sh, ls and the pipeline: a handful, never the host's hundreds.
    assert!(lines[1].parse::<u32>().unwrap() <= 6, "{text}");
    assert_eq!(lines[2], "lo", "only loopback: {text}");
}

#[test]
fn command_errors_have_docker_exit_codes() {
    if !can_sandbox("command_errors_have_docker_exit_codes") {
        return;
    }
    let env = Env::new();
    let out = env.run(&["--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        stderr(&out),
        "moat: error: executable \"no-such-command\" not found in the container (PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)\n"
    );
    let out = env.run(&["-w", "/nope", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).starts_with("moat: error: container setup failed: working directory: /nope does not exist in the container or is not a directory"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["--user", "70000", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        stderr(&out),
        "moat: error: container uid/gid 70000 is outside the mapped range 0..65536; choose a --user below 65536\n"
    );
    let out = env
        .moat(&["run", "--rootfs", "/nonexistent-moat-rootfs", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).starts_with(
        "moat: error: rootfs directory \"/nonexistent-moat-rootfs\" (--rootfs): not found"
    ));
}

#[test]
fn ps_lists_and_kill_signals_with_128_plus_signal() {
    if !can_sandbox("ps_lists_and_kill_signals_with_128_plus_signal") {
        return;
    }
    let env = Env::new();
    let mut child = spawn_sleeper(&env, "sleeper", &[]);
    let c = wait_running(&env, "sleeper");
    assert_eq!(c["isolation"], "sandbox");
    assert_eq!(c["command"], serde_json::json!(["sleep", "1000"]));
    assert_eq!(c["id"].as_str().unwrap().len(), 64);
    assert!(c["created"].as_str().unwrap().ends_with('Z'));
    // Cgroup limits of the plan are in place while it runs.
    let cgroups: Vec<String> = serde_json::from_value(c["cgroups"].clone()).unwrap();
    let pids = cgroups
        .iter()
        .find(|p| p.contains("/pids/") || p.contains("unified"))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("{pids}/pids.max"))
            .unwrap()
            .trim(),
        "256"
    );

    let table = env.moat(&["ps"]).output().unwrap();
    assert!(stdout(&table).lines().nth(1).unwrap().contains("sleeper"));

    let bad = env.moat(&["kill", "sleeper", "NOPE"]).output().unwrap();
    assert_eq!(
        stderr(&bad),
        "moat: error: unknown signal \"NOPE\": use a name like TERM, KILL, HUP, INT, USR1 or a number 1-64\n"
    );
    let missing = env.moat(&["kill", "nobody-here"]).output().unwrap();
    assert_eq!(
        stderr(&missing),
        "moat: error: no running container named \"nobody-here\" (see `moat ps`)\n"
    );

    let k = env.moat(&["kill", "sleeper"]).output().unwrap();
    assert!(k.status.success(), "{}", stderr(&k));
    let st = wait_timeout(&mut child, 60);
    assert_eq!(st.code(), Some(137));
    for p in &cgroups {
        assert!(!std::path::Path::new(p).exists(), "cgroup {p} left behind");
    }
}

#[test]
fn sigterm_is_forwarded_and_stop_timeout_kills() {
    if !can_sandbox("sigterm_is_forwarded_and_stop_timeout_kills") {
        return;
    }
    let env = Env::new();
    // A workload that handles TERM exits with its own code.
    let root = env.rootfs.to_str().unwrap();
    let mut handled = env
        .moat(&[
            "run",
            "--isolation",
            "sandbox",
            "--name",
            "trap",
            "--rootfs",
            root,
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_running(&env, "trap");
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .args(["-TERM", &handled.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_timeout(&mut handled, 60).code(), Some(42));

    // PID 1 without a handler ignores TERM: killed after --stop-timeout.
    let mut ignoring = spawn_sleeper(&env, "ignorer", &["--stop-timeout", "1"]);
    wait_running(&env, "ignorer");
    let k = env.moat(&["kill", "ignorer", "TERM"]).output().unwrap();
    assert!(k.status.success(), "{}", stderr(&k));
    assert_eq!(wait_timeout(&mut ignoring, 60).code(), Some(137));
}

#[test]
fn container_dies_with_moat_and_leftovers_are_cleaned() {
    if !can_sandbox("container_dies_with_moat_and_leftovers_are_cleaned") {
        return;
    }
    let env = Env::new();
    let mut child = spawn_sleeper(&env, "orphan", &[]);
    let c = wait_running(&env, "orphan");
    let pid = c["pid"].as_i64().unwrap();
    let id = c["id"].as_str().unwrap().to_string();
    let cgroups: Vec<String> = serde_json::from_value(c["cgroups"].clone()).unwrap();
    child.kill().unwrap(); // SIGKILL to moat
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains("(sleep)")
    {
        assert!(
            Instant::now() < deadline,
            "container pid {pid} survived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = env.state_root().join("containers").join(&id);
    assert!(state.exists(), "state stays until the next moat command");
    let ps = env.moat(&["ps", "--format", "json"]).output().unwrap();
    assert_eq!(stdout(&ps).trim(), "[]");
    // The record now says it stopped, and why.
    let ps = env
        .moat(&["ps", "-a", "--format", "json"])
        .output()
        .unwrap();
    let all: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(all[0]["status"], "stopped", "{all}");
    assert!(
        all[0]["exit_error"]
            .as_str()
            .unwrap()
            .contains("monitor died"),
        "{all}"
    );
    for p in &cgroups {
        assert!(!std::path::Path::new(p).exists(), "cgroup {p} left behind");
    }
}

#[test]
fn tty_gives_a_terminal() {
    if !can_sandbox("tty_gives_a_terminal") {
        return;
    }
    let env = Env::new();
    let out = env.run(&[
        "-t",
        "--",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo is-a-tty; echo $TERM",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "is-a-tty\r\nxterm\r\n");
}

#[test]
fn duplicate_names_are_refused() {
    if !can_sandbox("duplicate_names_are_refused") {
        return;
    }
    let env = Env::new();
    let mut first = spawn_sleeper(&env, "dup", &[]);
    wait_running(&env, "dup");
    let out = env.run(&["--name", "dup", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out)
            .starts_with("moat: error: container name \"dup\" is already in use by container "),
        "{}",
        stderr(&out)
    );
    env.moat(&["kill", "dup"]).status().unwrap();
    wait_timeout(&mut first, 60);
}

/// Imports the bundled test image into the env's store.
fn import_test_image(env: &Env) {
    let tar = env.dir.path().join("busybox.oci.tar");
    let out = env
        .moat(&["dev", "test-image", "-o", tar.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env
        .moat(&["image", "import", tar.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn runs_the_test_image_from_the_store() {
    if !can_sandbox("runs_the_test_image_from_the_store") {
        return;
    }
    let env = Env::new();
    import_test_image(&env);
    let out = env
        .moat(&[
            "run",
            "--isolation",
            "sandbox",
            "busybox",
            "sh",
            "-c",
            "echo hello from $(hostname); cat /proc/self/uid_map | wc -l",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("hello from "), "{text}");
    // The image's Cmd (`sh`) runs when no command is given; stdin is /dev/null.
    let out = env
        .moat(&["run", "--isolation", "sandbox", "busybox"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // `auto` picks the sandbox where no vm accelerator is available, and
    // the image cannot be removed while a container uses it.
    let mut child = env
        .moat(&["run", "--name", "user", "busybox", "sleep", "1000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let c = wait_running(&env, "user");
    assert!(c["image_id"].as_str().unwrap().starts_with("sha256:"));
    let rm = env.moat(&["image", "rm", "busybox"]).output().unwrap();
    assert!(
        !rm.status.success(),
        "image rm must refuse while a container runs"
    );
    env.moat(&["kill", "user"]).status().unwrap();
    assert_eq!(wait_timeout(&mut child, 60).code(), Some(137));

    let out = env
        .moat(&["run", "--isolation", "sandbox", "no-such-image", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).starts_with("moat: error: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn policies_are_loaded_compiled_and_checked() {
    if !can_sandbox("policies_are_loaded_compiled_and_checked") {
        return;
    }
    let env = Env::new();
    // A built-in by name.
    let out = env.run(&["--policy", "restricted", "--", "/bin/echo", "restricted"]);
    assert_eq!(stdout(&out), "restricted\n", "{}", stderr(&out));
    // A file: its limits reach the container.
    let file = env.dir.path().join("small.yaml");
    std::fs::write(
        &file,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: small\nspec:\n  extends: baseline\n  resources:\n    open_files: 100\n    pids: 50\n",
    )
    .unwrap();
    let out = env.run(&[
        "--policy",
        file.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "ulimit -n; ulimit -u",
    ]);
    assert_eq!(stdout(&out), "100\n50\n", "{}", stderr(&out));
    // Above the hard limit: a clear error, nothing started.
    std::fs::write(
        &file,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: greedy\nspec:\n  extends: baseline\n  resources:\n    open_files: 1000000000\n",
    )
    .unwrap();
    let out = env.run(&["--policy", file.to_str().unwrap(), "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.starts_with("moat: error: the policy asks for RLIMIT_NOFILE 1000000000, above this host's hard limit of "), "{e}");
    assert!(
        e.ends_with(
            "; lower it in the policy (moat cannot raise limits without CAP_SYS_RESOURCE)\n"
        ),
        "{e}"
    );
    let out = env.run(&["--policy", "/nonexistent/p.yaml", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).starts_with("moat: error: cannot read policy file /nonexistent/p.yaml"),
        "{}",
        stderr(&out)
    );
}

const RBAC_DEVELOPER_ROOT: &str = r#"apiVersion: moat.dev/v1
kind: RBAC
roles:
  - name: developer
    grants:
      capabilities: []
      network: [none, loopback]
      isolation: [vm, sandbox]
      rootfs: ["/"]
  - name: platform-admin
    grants:
      capabilities: [ALL]
      network: [none, loopback, egress, publish]
      isolation: [vm, sandbox]
bindings:
  - role: developer
    users: [root]
"#;

/// The audit log's records, parsed.
fn audit_records(env: &Env) -> Vec<serde_json::Value> {
    let log = env.state_root().join("audit/policy.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn run_is_authorised_by_rbac() {
    if !can_sandbox("run_is_authorised_by_rbac") {
        return;
    }
    let env = Env::new();
    let rbac = env.dir.path().join("rbac.yaml");
    std::fs::write(&rbac, RBAC_DEVELOPER_ROOT).unwrap();
    let rbac_s = rbac.to_str().unwrap();
    let policy = env.dir.path().join("bind.yaml");
    std::fs::write(
        &policy,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: bind\nspec:\n  extends: baseline\n  capabilities: [NET_BIND_SERVICE]\n",
    )
    .unwrap();
    let marker = env.dir.path().join("started");
    let touch = format!("touch {}", marker.display());

    // root holds only `developer`, which grants no capability: refused,
    // naming the grant and the role that would allow it; nothing starts.
    let out = env.run(&[
        "--rbac",
        rbac_s,
        "--policy",
        policy.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &touch,
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "moat: error: policy bind refused for root:\n  - capability NET_BIND_SERVICE: not granted to root (roles: developer); role `platform-admin` allows it\n"
    );
    assert_eq!(stdout(&out), "");
    assert!(!marker.exists(), "the workload ran despite the refusal");
    let recs = audit_records(&env);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["action"], "run");
    assert_eq!(recs[0]["principal"], "root");
    assert_eq!(recs[0]["policy"], "bind");
    assert_eq!(recs[0]["decision"], "deny");
    assert_eq!(recs[0]["reasons"].as_array().unwrap().len(), 1);

    // The default (`auto`, baseline narrowed to the image) asks for no
    // capability: the same role allows it.
    let out = env.run(&["--rbac", rbac_s, "--", "sh", "-c", "echo ran"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ran\n");
    let recs = audit_records(&env);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[1]["action"], "run");
    assert_eq!(recs[1]["policy"], "auto");
    assert_eq!(recs[1]["decision"], "allow");

    // A broken RBAC file: a clear error, nothing starts.
    let out = env.run(&["--rbac", "/nonexistent/rbac.yaml", "--", "sh", "-c", &touch]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "moat: error: cannot read RBAC file /nonexistent/rbac.yaml: No such file or directory (os error 2)\n"
    );
    assert!(!marker.exists());
}

#[test]
fn default_tmpfs_targets_missing_in_the_image_are_skipped() {
    if !can_sandbox("default_tmpfs_targets_missing_in_the_image_are_skipped") {
        return;
    }
    let env = Env::new();
    std::fs::remove_dir(env.rootfs.join("run")).unwrap();
    // The baseline's /run is a built-in default: skipped with one notice,
    // /tmp (present) is still a writable tmpfs, the image is untouched.
    let out = env.run(&["--", "sh", "-c", "echo x > /tmp/f && cat /tmp/f"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "x\n");
    assert_eq!(
        stderr(&out),
        "moat: notice: the image has no /run; skipping its tmpfs\n"
    );
    assert!(!env.rootfs.join("run").exists());

    // A path the policy file asks for itself must exist.
    let policy = env.dir.path().join("data.yaml");
    std::fs::write(
        &policy,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: data\nspec:\n  extends: baseline\n  filesystem:\n    writable:\n      - path: /data\n        size: 1Mi\n",
    )
    .unwrap();
    let out = env.run(&["--policy", policy.to_str().unwrap(), "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "moat: notice: the image has no /run; skipping its tmpfs\nmoat: error: container setup failed: mount target /data: the image has no directory /data; moat mounts there but never writes to the image\n"
    );
    assert!(!env.rootfs.join("data").exists());
}
