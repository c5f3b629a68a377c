//! moat-oci's commands driven directly, as a caller would: create, state,
//! start, pause/resume, ps, update, exec (attached and detached), kill
//! --all, delete; the --log contract (one JSON error object, the file
//! always made); features.

#[path = "clients/mod.rs"]
mod clients;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use clients::bundle::{Bundle, STEP};
use clients::{run, stderr, stdout, wait_until};

fn state(b: &Bundle, id: &str) -> Value {
    let o = b.oci(&["state", id]);
    assert!(o.status.success(), "state {id}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn status(b: &Bundle, id: &str) -> String {
    state(b, id)["status"].as_str().unwrap().to_string()
}

fn ok(b: &Bundle, args: &[&str]) -> String {
    let o = b.oci(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Deletes the container when the test ends, however it ends.
struct Cleanup<'a>(&'a Bundle, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.oci(&["delete", "--force", &self.1]);
    }
}

/// Under a policy that grants exec (the client tests' policy).
fn bundle(args: &[&str]) -> Bundle {
    let b = Bundle::new(args);
    b.edit(|c| {
        c["annotations"] = json!({"moat.dev/policy": format!(
            "{}/tests/clients/podman-defaults.yaml",
            env!("CARGO_MANIFEST_DIR")
        )})
    });
    b
}

#[test]
fn create_start_pause_exec_update_kill_delete() {
    if !clients::ready("create_start_pause_exec_update_kill_delete", &["runc"]) {
        return;
    }
    let b = bundle(&["sh", "-c", "sleep 600 & sleep 600"]);
    let _cleanup = Cleanup(&b, "life".into());
    let pid_file = b.path().join("pid");
    let o = b.create_with(&["--pid-file", pid_file.to_str().unwrap()], "life");
    assert!(o.status.success(), "{}", stderr(&o));
    let st = state(&b, "life");
    assert_eq!(st["status"], "created");
    assert_eq!(st["ociVersion"], "1.0.2");
    let pid: i64 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(st["pid"], pid);
    assert_eq!(st["bundle"], b.path().to_str().unwrap());
    assert!(st["annotations"]["moat.dev/policy"].is_string());

    // A created container cannot be deleted without --force.
    let o = b.oci(&["delete", "life"]);
    assert!(!o.status.success() && stderr(&o).contains("created"));

    ok(&b, &["start", "life"]);
    assert_eq!(status(&b, "life"), "running");
    let o = b.oci(&["start", "life"]);
    assert!(stderr(&o).contains("only a created container can be started"));

    // ps: the background sleep and the shell, which execs the last one.
    let pids: Vec<i64> = wait_until(Duration::from_secs(5), || {
        let v: Vec<i64> =
            serde_json::from_str(&ok(&b, &["ps", "--format", "json", "life"])).ok()?;
        (v.len() == 2).then_some(v)
    })
    .expect("two processes");
    assert!(pids.contains(&pid));

    ok(&b, &["pause", "life"]);
    assert_eq!(status(&b, "life"), "paused");
    let o = b.oci(&["pause", "life"]);
    assert!(stderr(&o).contains("only a running container can be paused"));
    ok(&b, &["resume", "life"]);
    assert_eq!(status(&b, "life"), "running");

    // exec, attached: its exit status is the process's.
    let o = b.oci(&["exec", "life", "sh", "-c", "id -u; exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "0");
    // exec --process, detached, with a pid file: a child of exec left to
    // the caller.
    let process = b.path().join("process.json");
    std::fs::write(
        &process,
        json!({"args": ["sleep", "30"], "cwd": "/", "user": {"uid": 1000, "gid": 1000},
               "env": ["PATH=/bin"], "terminal": false})
        .to_string(),
    )
    .unwrap();
    let exec_pid = b.path().join("exec.pid");
    // The detached process keeps exec's stdio (runc's contract): not a pipe.
    let detached = Command::new(env!("CARGO_BIN_EXE_moat-oci"))
        .arg("--root")
        .arg(b.state_root())
        .args(["exec", "--detach", "--process"])
        .arg(&process)
        .arg("--pid-file")
        .arg(&exec_pid)
        .arg("life")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(detached.success());
    let epid: i32 = std::fs::read_to_string(&exec_pid).unwrap().parse().unwrap();
    let st = std::fs::read_to_string(format!("/proc/{epid}/status")).unwrap();
    assert!(
        st.lines()
            .any(|l| l.starts_with("Uid:") && l.contains("1000")),
        "{st}"
    );
    assert!(st.lines().any(|l| l == "NoNewPrivs:\t1"), "{st}");

    // update: within the policy, and never above it (baseline: 256 pids).
    ok(&b, &["update", "--pids-limit", "100", "life"]);
    let pids_max = std::fs::read_to_string("/sys/fs/cgroup/pids/moat-oci/life/pids.max")
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/moat-oci/life/pids.max"))
        .unwrap();
    assert_eq!(pids_max.trim(), "100");
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat-oci"))
        .arg("--root")
        .arg(b.state_root())
        .args(["update", "--resources", "-", "life"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"pids": {"limit": 100000}}"#)
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("above policy"), "{}", stderr(&o));

    // kill --all reaches every process; the container stops.
    ok(&b, &["kill", "--all", "life", "KILL"]);
    wait_until(Duration::from_secs(10), || {
        (status(&b, "life") == "stopped").then_some(())
    })
    .expect("stopped after kill --all");
    assert_eq!(state(&b, "life")["pid"], 0);
    let o = b.oci(&["kill", "life", "TERM"]);
    assert!(stderr(&o).contains("is not running"));
    ok(&b, &["delete", "life"]);
    let o = b.oci(&["state", "life"]);
    assert!(!o.status.success() && stderr(&o).contains("does not exist"));
    // containerd deletes twice: the second --force succeeds.
    ok(&b, &["delete", "--force", "life"]);
}

/// `--preserve-fds N`: descriptors 3..3+N reach the workload, no other.
#[test]
fn preserved_descriptors_reach_the_workload_and_no_other() {
    if !clients::ready(
        "preserved_descriptors_reach_the_workload_and_no_other",
        &["runc"],
    ) {
        return;
    }
    let b = bundle(&["sh", "-c", "ls /proc/self/fd | tr '\\n' ' '"]);
    let _cleanup = Cleanup(&b, "fds".into());
    let bundle_dir = b.path().to_str().unwrap().to_string();
    let root = b.state_root().to_str().unwrap().to_string();
    // fd 3 is passed on purpose, fd 4 is not.
    let script = format!(
        "exec 3</dev/null 4</dev/null; {} --root {root} run --preserve-fds 1 --bundle {bundle_dir} fds",
        env!("CARGO_BIN_EXE_moat-oci")
    );
    let o = run(Command::new("bash").args(["-c", &script]), STEP);
    assert!(o.status.success(), "{}", stderr(&o));
    // ls itself opens one descriptor, the lowest free: 4 unless fd 4
    // leaked (then 5), 3 unless fd 3 was dropped.
    let out = stdout(&o);
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2", "3", "4"], "{out}");
}

/// The command not found comes back from `start`; a bad signal is named.
#[test]
fn start_reports_a_missing_command_and_kill_names_bad_signals() {
    if !clients::ready(
        "start_reports_a_missing_command_and_kill_names_bad_signals",
        &["runc"],
    ) {
        return;
    }
    let b = bundle(&["/no/such/program"]);
    let _cleanup = Cleanup(&b, "nf".into());
    assert!(b.create("nf").status.success());
    let o = b.oci(&["kill", "nf", "SIGBOGUS"]);
    assert!(
        stderr(&o).contains("unknown signal \"SIGBOGUS\""),
        "{}",
        stderr(&o)
    );
    let o = b.oci(&["start", "nf"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/no/such/program"), "{}", stderr(&o));
    ok(&b, &["delete", "--force", "nf"]);
}

/// `--log FILE --log-format json`: the file exists after any command, and
/// a failure writes exactly one JSON object with level and msg.
#[test]
fn log_file_gets_one_json_error_object() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.json");
    let o = run(
        Command::new(env!("CARGO_BIN_EXE_moat-oci"))
            .arg("--root")
            .arg(dir.path().join("state"))
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", "state", "nothere"]),
        STEP,
    );
    assert_eq!(o.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["level"], "error");
    assert!(v["msg"]
        .as_str()
        .unwrap()
        .contains("\"nothere\" does not exist"));
    assert!(v["time"].is_string());

    let ok_log = dir.path().join("ok.json");
    let o = run(
        Command::new(env!("CARGO_BIN_EXE_moat-oci"))
            .arg("--log")
            .arg(&ok_log)
            .args(["--log-format", "json", "features"]),
        STEP,
    );
    assert!(o.status.success());
    assert!(ok_log.exists());
    let f: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(f["linux"]["cgroup"]["systemd"], false);
    assert!(f["linux"]["seccomp"]["operators"]
        .as_array()
        .unwrap()
        .contains(&json!("SCMP_CMP_MASKED_EQ")));
}

/// `kill -9` of `create` half-way (here during a createRuntime hook) leaves
/// no container process behind: the first process ends when its creator
/// is gone, and `delete --force` then clears the directory.
#[test]
fn kill_9_of_create_leaves_no_container_process() {
    if !clients::ready("kill_9_of_create_leaves_no_container_process", &["runc"]) {
        return;
    }
    let b = bundle(&["sleep", "600"]);
    b.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "3"]}]})
    });
    let mut create = Command::new(env!("CARGO_BIN_EXE_moat-oci"))
        .arg("--root")
        .arg(b.state_root())
        .args(["create", "--bundle"])
        .arg(b.path())
        .arg("k9")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let procs = ["pids", "memory", "cpu"]
        .iter()
        .map(|c| format!("/sys/fs/cgroup/{c}/moat-oci/k9/cgroup.procs"))
        .chain(["/sys/fs/cgroup/moat-oci/k9/cgroup.procs".to_string()])
        .find(|p| {
            wait_until(Duration::from_secs(5), || {
                std::fs::read_to_string(p)
                    .ok()
                    .filter(|s| !s.trim().is_empty())
                    .map(|_| ())
            })
            .is_some()
        })
        .expect("the container's first process appeared in its cgroup");
    // The hook runs: create waits for it, the first process waits for
    // create.
    let cpid = create.id();
    wait_until(Duration::from_secs(5), || {
        let kids = std::fs::read_to_string(format!("/proc/{cpid}/task/{cpid}/children")).ok()?;
        kids.split_whitespace()
            .any(|k| {
                std::fs::read_to_string(format!("/proc/{k}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .then_some(())
    })
    .expect("the createRuntime hook started");
    let before = std::fs::read_to_string(&procs).unwrap();
    assert!(!before.trim().is_empty());
    create.kill().unwrap();
    let _ = create.wait();
    let gone = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&procs)
            .map_or(true, |s| s.trim().is_empty())
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "a container process outlived its creator: {:?}",
        std::fs::read_to_string(&procs)
    );
    ok(&b, &["delete", "--force", "k9"]);
    assert!(!b.state_root().join("k9").exists());
    for c in [
        "pids", "memory", "cpu", "cpuacct", "cpuset", "devices", "freezer", "blkio", "systemd",
    ] {
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{c}/moat-oci/k9"));
    }
}
