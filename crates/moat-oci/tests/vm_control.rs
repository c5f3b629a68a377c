//! `pause`/`resume`, `kill` of a paused container and `update` of
//! moat-oci's micro-VM containers, driven as a runc caller drives them:
//! a paused guest makes no progress and relays nothing, `state` says
//! `paused`, `exec` is refused, a signal waits for `resume` and KILL ends
//! the VM at once; `update` changes the VMM's CPU bandwidth and refuses,
//! by name, what a running guest cannot take. Needs root, QEMU and a
//! built guest kernel (`make kernel`); skips only without them.

#[path = "clients/mod.rs"]
mod clients;
use moat_testkit::host as vmhost;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_moat-oci");

/// A bundle: busybox running `script`, the tests' policy, isolation vm,
/// a fresh network namespace, `cpu` as `linux.resources.cpu`,
/// `noNewPrivileges: false` (which only a site's `as-requested` honours).
fn bundle(dir: &Path, script: &str, cpu: serde_json::Value) {
    clients::busybox_rootfs(&dir.join("rootfs"));
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", script],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
            "noNewPrivileges": false
        },
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "annotations": {
            "moat.dev/isolation": "vm",
            "moat.dev/policy": clients::policy_annotation().split_once('=').unwrap().1
        },
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "resources": {"cpu": cpu},
            "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}
        }
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn oci(root: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut c = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        std::io::Write::write_all(&mut c.stdin.take().unwrap(), text.as_bytes()).unwrap();
    }
    c.wait_with_output().unwrap()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = oci(root, args, None);
    assert!(
        o.status.success(),
        "moat-oci {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// moat-oci's error for `args` (which must fail).
fn refused(root: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let o = oci(root, args, stdin);
    assert!(!o.status.success(), "moat-oci {args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn status(root: &Path, id: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&ok(root, &["state", id])).unwrap();
    v["status"].as_str().unwrap().to_string()
}

/// Reaps `pid` (our descendant: this process is a subreaper), within 60 s:
/// its exit code, or 128+N for signal N.
fn reap(pid: i32) -> i32 {
    use rustix::process::{waitpid, Pid, WaitOptions};
    let p = Pid::from_raw(pid).unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if let Some((_, st)) = waitpid(Some(p), WaitOptions::NOHANG).unwrap() {
            return match st.terminating_signal() {
                Some(s) => 128 + s,
                None => st.exit_status().unwrap(),
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("pid {pid} did not end");
}

/// What the pipe gives within `limit` (or until `want` shows).
fn read_for(pipe: &mut std::fs::File, want: &str, limit: Duration) -> String {
    let mut got = String::new();
    let end = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while (want.is_empty() || !got.contains(want)) && Instant::now() < end {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("reading the container's output: {e}"),
        }
    }
    got
}

/// The highest `tick-N` in `out`.
fn last_tick(out: &str) -> u32 {
    out.split_whitespace()
        .filter_map(|w| w.strip_prefix("tick-")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Kills the helper if the test fails before `delete` (no VM left held).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// A created and started container whose output is `pipe`.
struct Started {
    root: PathBuf,
    id: String,
    pid: i32,
    pipe: std::fs::File,
    _guard: KillOnDrop,
}

/// `site`: the text of a site file (MOAT_OCI_CONFIG) for create.
fn create_start(
    t: &Path,
    prefix: &str,
    script: &str,
    cpu: serde_json::Value,
    site: Option<&str>,
) -> Started {
    let root = t.join("state");
    let b = t.join("bundle");
    std::fs::create_dir(&b).unwrap();
    bundle(&b, script, cpu);
    let site_file = t.join("oci.yaml");
    std::fs::write(&site_file, site.unwrap_or("# the defaults\n")).unwrap();
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let w2 = w.try_clone().unwrap();
    let pidf = t.join("pid");
    let id = format!("{prefix}-{}", std::process::id());
    let st = Command::new(BIN)
        .env("MOAT_OCI_CONFIG", &site_file)
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle"])
        .arg(&b)
        .arg("--pid-file")
        .arg(&pidf)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::from(w2))
        .status()
        .unwrap();
    let mut pipe = std::fs::File::from(r);
    rustix::io::ioctl_fionbio(&pipe, true).unwrap();
    if !st.success() {
        let said = read_for(&mut pipe, "", Duration::from_millis(100));
        panic!("create failed: {said}");
    }
    let pid: i32 = std::fs::read_to_string(&pidf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let guard = KillOnDrop(pid);
    ok(&root, &["start", &id]);
    Started {
        root,
        id,
        pid,
        pipe,
        _guard: guard,
    }
}

/// The VM's own id, from the container's record.
fn vm_id(root: &Path, id: &str) -> String {
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(id).join("state.json")).unwrap())
            .unwrap();
    rec["vm"]["vm_id"].as_str().unwrap().to_string()
}

fn vmm_frozen(vm: &str) -> bool {
    moat_cgroup::find(vm)
        .unwrap()
        .expect("the VMM's cgroup")
        .is_frozen()
}

/// A file of the VMM's cpu cgroup, trimmed.
fn vmm_cpu(vm: &str, v1: &str, v2: &str) -> String {
    let h = moat_cgroup::Hierarchies::host().unwrap();
    let (v, mount) = h.find("cpu").expect("a cpu controller");
    let file = match v {
        moat_cgroup::Version::V1 => v1,
        moat_cgroup::Version::V2 => v2,
    };
    let p = mount.join("moat").join(format!("vm-{vm}")).join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

/// Once deleted, nothing of the container or its VM is left: no state,
/// no VMM cgroup (so no QEMU: the cleanup watcher removes the groups once
/// it has ended). Checked by the VM's id, not host-wide: other VMs may run.
fn assert_gone(root: &Path, id: &str, vm: &str) {
    assert!(!root.join(id).exists(), "delete left the state directory");
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end && moat_cgroup::find(vm).unwrap().is_some() {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        moat_cgroup::find(vm).unwrap().is_none(),
        "the VMM's cgroup vm-{vm} is left"
    );
}

fn delete_leaves_nothing(root: &Path, id: &str, vm: &str) {
    ok(root, &["delete", id]);
    assert_gone(root, id, vm);
}

#[test]
fn vm_pause_resume_update_as_a_runc_caller() {
    if !clients::vm_ready("vm_pause_resume_update_as_a_runc_caller", &[]) {
        return;
    }
    let _lock = vmhost::vm_lock();
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let t = tempfile::tempdir().unwrap();
    let mut c = create_start(
        t.path(),
        "p1",
        "trap 'echo got-term; exit 3' TERM; i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.2; done",
        serde_json::json!({"shares": 512}),
        None,
    );
    let (root, id) = (c.root.clone(), c.id.clone());
    let (root, id) = (root.as_path(), id.as_str());
    let vm = vm_id(root, id);
    // The caller's shares are the VMM's (its threads are the vCPUs).
    assert_eq!(
        vmm_cpu(&vm, "cpu.shares", "cpu.weight"),
        match moat_cgroup::Hierarchies::host().unwrap().find("cpu") {
            Some((moat_cgroup::Version::V2, _)) => "20",
            _ => "512",
        }
    );
    let out = read_for(&mut c.pipe, "tick-3", Duration::from_secs(30));
    assert!(out.contains("tick-3"), "output: {out:?}");

    // update: CPU bandwidth reaches the VMM's cgroup, within the policy.
    ok(
        root,
        &[
            "update",
            "--cpu-quota",
            "50000",
            "--cpu-period",
            "100000",
            id,
        ],
    );
    let v1 = moat_cgroup::Hierarchies::host()
        .unwrap()
        .find("cpu")
        .is_some_and(|(v, _)| v == moat_cgroup::Version::V1);
    if v1 {
        assert_eq!(vmm_cpu(&vm, "cpu.cfs_quota_us", ""), "50000");
        assert_eq!(vmm_cpu(&vm, "cpu.cfs_period_us", ""), "100000");
    } else {
        assert_eq!(vmm_cpu(&vm, "", "cpu.max"), "50000 100000");
    }
    let e = refused(
        root,
        &[
            "update",
            "--cpu-quota",
            "300000",
            "--cpu-period",
            "100000",
            id,
        ],
        None,
    );
    assert!(e.contains("above policy"), "{e}");
    // What a running guest cannot take is refused by name.
    let e = refused(root, &["update", "--memory", "134217728", id], None);
    assert!(
        e.contains("update linux.resources.memory.limit of container")
            && e.contains("the guest's RAM"),
        "{e}"
    );
    for (json, field) in [
        (r#"{"pids": {"limit": 10}}"#, "linux.resources.pids.limit"),
        (
            r#"{"blockIO": {"weight": 100}}"#,
            "linux.resources.blockIO.weight",
        ),
        (r#"{"cpu": {"cpus": "0"}}"#, "linux.resources.cpu.cpus"),
    ] {
        let e = refused(root, &["update", "--resources", "-", id], Some(json));
        assert!(e.contains(&format!("update {field} of container")), "{e}");
    }
    assert_eq!(
        vmm_cpu(&vm, "cpu.cfs_quota_us", "cpu.max")
            .split(' ')
            .next(),
        Some("50000")
    );

    // pause: the guest stops where it is and nothing is relayed.
    ok(root, &["pause", id]);
    assert_eq!(status(root, id), "paused");
    assert!(vmm_frozen(&vm), "the VMM's cgroup is not frozen");
    let before = read_for(&mut c.pipe, "", Duration::from_millis(300));
    let last = last_tick(&out).max(last_tick(&before));
    let during = read_for(&mut c.pipe, "", Duration::from_secs(2));
    assert_eq!(during, "", "output while paused");
    // exec is refused, as runc refuses it; a signal waits for resume.
    let e = refused(root, &["exec", id, "true"], None);
    assert!(e.contains("is paused"), "{e}");
    ok(root, &["kill", id, "TERM"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(status(root, id), "paused");
    assert_eq!(read_for(&mut c.pipe, "", Duration::from_millis(300)), "");

    // resume: the guest goes on from where it stopped (a guest left
    // running would have printed ~10 ticks meanwhile), then gets TERM.
    ok(root, &["resume", id]);
    assert!(!vmm_frozen(&vm), "the VMM's cgroup is still frozen");
    let after = read_for(&mut c.pipe, "got-term", Duration::from_secs(30));
    assert!(after.contains("got-term"), "output after resume: {after:?}");
    assert!(
        last_tick(&after) <= last + 4,
        "the guest ran while paused: tick {last} before, {after:?} after"
    );
    assert_eq!(reap(c.pid), 3, "the helper's status is the workload's");
    assert_eq!(status(root, id), "stopped");
    delete_leaves_nothing(root, id, &vm);
}

#[test]
fn vm_paused_container_killed_and_deleted() {
    if !clients::vm_ready("vm_paused_container_killed_and_deleted", &[]) {
        return;
    }
    let _lock = vmhost::vm_lock();
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let t = tempfile::tempdir().unwrap();
    let mut c = create_start(
        t.path(),
        "p2",
        "grep NoNewPrivs /proc/self/status; echo up; while :; do sleep 1; done",
        serde_json::json!({}),
        None,
    );
    let (root, id) = (c.root.clone(), c.id.clone());
    let (root, id) = (root.as_path(), id.as_str());
    let vm = vm_id(root, id);
    let out = read_for(&mut c.pipe, "up", Duration::from_secs(30));
    // The site's default: no_new_privs whatever the config says (false).
    assert!(out.contains("NoNewPrivs:\t1\nup"), "output: {out:?}");
    let e = refused(root, &["resume", id], None);
    assert!(e.contains("only a paused container can be resumed"), "{e}");
    ok(root, &["pause", id]);
    let e = refused(root, &["pause", id], None);
    assert!(e.contains("only a running container can be paused"), "{e}");
    // A paused container is not stopped: delete needs --force; KILL ends
    // it at once (as runc thaws it for KILL).
    let e = refused(root, &["delete", id], None);
    assert!(e.contains("is paused"), "{e}");
    ok(root, &["kill", id, "KILL"]);
    assert_eq!(reap(c.pid), 128 + libc::SIGKILL);
    assert_eq!(status(root, id), "stopped");
    delete_leaves_nothing(root, id, &vm);

    // delete --force of a paused container leaves nothing either.
    let t2 = tempfile::tempdir().unwrap();
    let mut c2 = create_start(
        t2.path(),
        "p3",
        "grep NoNewPrivs /proc/self/status; echo up; while :; do sleep 1; done",
        serde_json::json!({}),
        Some("no_new_privileges: as-requested\n"),
    );
    // A site that honours the caller's noNewPrivileges: false: the agent
    // leaves no_new_privs unset.
    let out = read_for(&mut c2.pipe, "up", Duration::from_secs(30));
    assert!(out.contains("NoNewPrivs:\t0\nup"), "output: {out:?}");
    let vm2 = vm_id(&c2.root, &c2.id);
    ok(&c2.root, &["pause", &c2.id]);
    ok(&c2.root, &["delete", "--force", &c2.id]);
    assert_eq!(reap(c2.pid), 128 + libc::SIGKILL);
    assert_gone(&c2.root, &c2.id, &vm2);
}
