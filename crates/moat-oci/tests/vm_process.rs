//! moat-oci's micro-VM containers seen as a runc caller sees them, without
//! a client in between: the pid `create` writes is a descendant of the
//! caller that alone holds its output pipe and exits with the workload's
//! status; `exec --detach` hands out a pid that exits with the exec'd
//! process's status; `delete` leaves nothing of the VM. Needs root, QEMU
//! and a built guest kernel (`make kernel`); skips only without them.

#[path = "clients/mod.rs"]
mod clients;
use moat_testkit::host as vmhost;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_moat-oci");

fn vm_ready(test: &str) -> bool {
    clients::vm_ready(test, &[])
}

/// A network namespace of the test's own with a veth pair `eth0`/`v1`
/// in it (nothing outside), `eth0` with an address, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new() -> NetNs {
        let name = format!("moat-ocivm-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let ns = NetNs(name);
        ip(&[
            "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "v1",
        ]);
        ip(&["-n", &ns.0, "addr", "add", "10.250.0.2/24", "dev", "eth0"]);
        ns
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A bundle: busybox, `args`, the tests' policy, isolation vm, joining
/// the network namespace `netns`.
fn bundle(dir: &Path, args: &[&str], netns: &str) {
    clients::busybox_rootfs(&dir.join("rootfs"));
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "vmproc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "annotations": {
            "moat.dev/isolation": "vm",
            "moat.dev/policy": clients::policy_annotation().split_once('=').unwrap().1
        },
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network", "path": netns}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}
        }
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn oci(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = oci(root, args);
    assert!(
        o.status.success(),
        "moat-oci {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status(root: &Path, id: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&ok(root, &["state", id])).unwrap();
    v["status"].as_str().unwrap().to_string()
}

/// Processes (other than this one) with a descriptor open on the pipe
/// whose inode is `ino`.
fn holders(ino: u64) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|f| std::fs::metadata(f.path()).is_ok_and(|m| m.ino() == ino))
        {
            out.push(pid);
        }
    }
    out
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

fn read_until(pipe: &mut std::fs::File, want: &str) -> String {
    let mut got = String::new();
    let end = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while !got.contains(want) && Instant::now() < end {
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

/// Kills the helper if the test fails before `delete` (no VM left held).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// A container ID of this run (cgroups are named after it).
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// The container's cgroup directories that exist (no cgroupsPath: named
/// `/moat-oci/ID`).
fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for d in [
            e.path().join("moat-oci").join(id),
            Path::new("/sys/fs/cgroup/moat-oci").join(id),
        ] {
            if d.is_dir() && !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

fn pid_file(p: &Path) -> i32 {
    std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
}

/// The root disks left (waiting up to 20 s: the cleanup watcher removes
/// them after the VM's cgroups).
fn oci_stages() -> Vec<PathBuf> {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end && !stages_now().is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    stages_now()
}

fn stages_now() -> Vec<PathBuf> {
    std::fs::read_dir("/var/lib/moat/vm/tmp")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("oci-"))
        })
        .collect()
}

#[test]
fn vm_create_start_exec_kill_delete_as_a_runc_caller() {
    if !vm_ready("vm_create_start_exec_kill_delete_as_a_runc_caller") {
        return;
    }
    let _lock = vmhost::vm_lock();
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("state");
    let b = t.path().join("bundle");
    std::fs::create_dir(&b).unwrap();
    let netns = NetNs::new();
    bundle(
        &b,
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; ip -4 -o addr show eth0; echo hi-from-$(hostname); while :; do sleep 0.1; done",
        ],
        &netns.path(),
    );
    // The caller's output pipe: create's stdout and stderr.
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", w.as_raw_fd()))
        .unwrap()
        .ino();
    let pidf = t.path().join("pid");
    let id = unique("c1");
    let id = id.as_str();
    let w2: OwnedFd = w.try_clone().unwrap();
    let st = Command::new(BIN)
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle"])
        .arg(&b)
        .arg("--pid-file")
        .arg(&pidf)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::from(w2))
        .status()
        .unwrap();
    assert!(st.success(), "create failed");
    let pid = pid_file(&pidf);
    let _guard = KillOnDrop(pid);
    // Once create has returned, the helper alone holds the output pipe, and
    // it is ours (reparented to this subreaper).
    assert_eq!(holders(ino), vec![pid], "holders of the output pipe");
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().to_string()))
        .unwrap();
    assert_eq!(ppid, std::process::id().to_string());
    assert_eq!(status(&root, id), "created");
    ok(&root, &["start", id]);
    assert_eq!(status(&root, id), "running");
    // Once the VM runs, the helper (the relay a hostile guest talks to) is
    // an unprivileged uid under moat-vm's supervisor filter, all threads.
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    assert!(
        field("Uid:").split_whitespace().all(|u| u != "0"),
        "helper uids: {}",
        field("Uid:")
    );
    assert_eq!(field("Seccomp:"), "2");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("Threads:"), "1");
    // The caller's device rules are not the helper's: on a v1 devices
    // hierarchy they would deny QEMU /dev/kvm.
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    if let Some(dir) = cg
        .lines()
        .find_map(|l| l.split_once(":devices:").map(|(_, d)| d.to_string()))
    {
        let list =
            std::fs::read_to_string(format!("/sys/fs/cgroup/devices{dir}/devices.list")).unwrap();
        assert_eq!(
            list.trim(),
            "a *:* rwm",
            "the helper's devices cgroup {dir}"
        );
    }
    let mut pipe = std::fs::File::from(r);
    rustix::io::ioctl_fionbio(&pipe, true).unwrap();
    let out = read_until(&mut pipe, "hi-from-vmproc");
    assert!(out.contains("hi-from-vmproc"), "output: {out:?}");
    // The guest took over the namespace's interface (eth0 of the two):
    // its address, and the tc redirect to the tap in the namespace.
    assert!(out.contains("inet 10.250.0.2/24"), "output: {out:?}");
    assert!(!out.contains("warning"), "create's stderr: {out:?}");
    let tc = Command::new("ip")
        .args([
            "netns", "exec", &netns.0, "tc", "filter", "show", "dev", "eth0", "ingress",
        ])
        .output()
        .unwrap();
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(
        tc.contains("mirred") && tc.contains("tap0_moat"),
        "tc filters on eth0: {tc}"
    );
    let ps: Vec<i32> = serde_json::from_str(&ok(&root, &["ps", "--format", "json", id])).unwrap();
    assert!(ps.contains(&pid), "ps {ps:?} lacks the helper {pid}");
    // exec --detach: the pid-file's process exits with the exec'd status.
    let xpid = t.path().join("xpid");
    ok(
        &root,
        &[
            "exec",
            "--detach",
            "--pid-file",
            xpid.to_str().unwrap(),
            id,
            "sh",
            "-c",
            "kill -TERM $$",
        ],
    );
    assert_eq!(reap(pid_file(&xpid)), 128 + libc::SIGTERM);
    // A signal nothing in the guest would forward is refused by name.
    let o = oci(&root, &["kill", id, "ALRM"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("signal 14 cannot reach it"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok(&root, &["kill", id, "TERM"]);
    assert_eq!(reap(pid), 3, "the helper's status is the workload's");
    assert!(read_until(&mut pipe, "got-term").contains("got-term"));
    assert_eq!(status(&root, id), "stopped");
    ok(&root, &["delete", id]);
    assert!(!root.join(id).exists(), "delete left the state directory");
    assert_eq!(cgroups_of(id), Vec::<PathBuf>::new(), "delete left cgroups");
    vmhost::assert_nothing_left(Path::new("/nonexistent"));
    assert_eq!(oci_stages(), Vec::<PathBuf>::new(), "root disks left");
}

/// A create killed while the guest boots (a caller's timeout) leaves no VM
/// held forever and no state: nobody could start or delete it.
#[test]
fn vm_create_killed_while_booting_leaves_nothing() {
    if !vm_ready("vm_create_killed_while_booting_leaves_nothing") {
        return;
    }
    let _lock = vmhost::vm_lock();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("state");
    let b = t.path().join("bundle");
    std::fs::create_dir(&b).unwrap();
    let netns = NetNs::new();
    bundle(&b, &["true"], &netns.path());
    let id = unique("k1");
    let mut create = Command::new(BIN)
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle"])
        .arg(&b)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed while the guest boots: once QEMU runs (the helper forked its
    // gatekeeper before it), not before the helper exists at all (a
    // create killed that early leaves only its directory, which `delete
    // --force` removes).
    let booting = Instant::now() + Duration::from_secs(60);
    while Instant::now() < booting && vmhost::leftovers(Path::new("/nonexistent")).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    create.kill().unwrap();
    let st = create.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "create ended before it could be killed: {st}"
    );
    let gone =
        || !root.join(&id).exists() && vmhost::leftovers(Path::new("/nonexistent")).is_empty();
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end && !gone() {
        std::thread::sleep(Duration::from_millis(100));
    }
    vmhost::assert_nothing_left(Path::new("/nonexistent"));
    assert!(
        !root.join(&id).exists(),
        "the abandoned container's state is left"
    );
    assert_eq!(
        cgroups_of(&id),
        Vec::<PathBuf>::new(),
        "the abandoned container's cgroups are left"
    );
    assert_eq!(oci_stages(), Vec::<PathBuf>::new(), "root disks left");
}
