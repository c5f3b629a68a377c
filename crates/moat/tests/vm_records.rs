//! VM containers in the runtime core's records (issue 13): `moat ps`
//! lists a running VM container from the one record shape, with its
//! supervisor and the policy digest, and `moat kill NAME` reaches its
//! workload through that supervisor. Skips with `SKIP:` when QEMU or the
//! guest kernel is absent (`make kernel`).

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{stderr, stdout, vm_ready, Env};
use vm_host::vm_lock;

/// `moat run` with its stdout read line by line; killed on drop.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    fn wait_line(&mut self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_secs(1)) {
                if l == want {
                    return;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("moat ended ({st}) before the workload printed {want:?}");
            }
        }
        panic!("the workload never printed {want:?}");
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("moat did not end within 120 s");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_vm_container_is_recorded_listed_and_killed_by_name() {
    let test = "a_vm_container_is_recorded_listed_and_killed_by_name";
    let env = Env::new();
    if !vm_ready(&env, test) {
        return;
    }
    let _lock = vm_lock();
    let mut child = env
        .moat(&[
            "run",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "--name",
            "rec1",
            "--rootfs",
            env.rootfs.to_str().unwrap(),
            "sh",
            "-c",
            "trap 'exit 7' TERM; echo ready; while :; do sleep 0.2; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut r = Running { child, lines };
    r.wait_line("ready");
    let supervisor = r.child.id() as i64;

    let o = env.moat(&["ps", "--format", "json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let recs = v.as_array().unwrap();
    assert_eq!(recs.len(), 1, "{v}");
    let rec = &recs[0];
    assert_eq!(rec["version"], 1, "{rec}");
    assert_eq!(rec["name"], "rec1");
    assert_eq!(rec["isolation"], "vm");
    assert_eq!(rec["status"], "running");
    assert_eq!(rec["supervisor_pid"], supervisor);
    assert_eq!(rec["pid"], supervisor);
    assert!(rec["supervisor_start_time"].as_u64().unwrap() > 0, "{rec}");
    assert_eq!(rec["command"][0], "sh");
    let digest = rec["policy_digest"].as_str().unwrap();
    assert_eq!(digest.len(), 64, "{rec}");
    assert_eq!(rec["id"].as_str().unwrap().len(), 64, "{rec}");
    let o = env.moat(&["ps"]).output().unwrap();
    assert!(stdout(&o).contains("rec1"), "{}", stdout(&o));

    // TERM by name: the supervisor forwards it, the guest's trap exits 7.
    let o = env.moat(&["kill", "rec1", "TERM"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(r.wait().code(), Some(7));
    vm_host::assert_nothing_left(&env.state_root().join("containers"));
    let o = env.moat(&["ps", "--format", "json"]).output().unwrap();
    assert_eq!(stdout(&o).trim(), "[]");
}
