//! The guest's own boundary (second review, items 5 and 8) and what a new
//! user hit in the VM (devices, clock, loopback): each test performs the
//! attack or the user's step inside a real micro-VM. Serialised by the VM
//! lock; run them one at a time under TCG.

#[allow(unused_imports)]
mod common;

use std::fs;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use moat_policy::plan::{NetworkPlan, Rlimit, RlimitResource};

/// A busybox rootfs with every applet linked and the extra entries the
/// attacks need (`/app -> /proc/1/root`), under its own image id.
fn hostile_fixture(tag: u128) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    make_rootfs(&rootfs);
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for app in String::from_utf8_lossy(&list.stdout).lines() {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(app));
    }
    fs::create_dir_all(rootfs.join("run")).unwrap();
    std::os::unix::fs::symlink("/proc/1/root", rootfs.join("app")).unwrap();
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    Fixture {
        state,
        rootfs,
        image_id: format!(
            "sha256:{:064x}",
            (std::process::id() as u128) * 104_729 + tag
        ),
        _dir: dir,
    }
}

fn fx() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| hostile_fixture(17))
}

fn sh(script: &str) -> moat_policy::ProcessSpec {
    process(&["sh", "-c", script])
}

#[test]
fn a_working_dir_through_proc_1_root_stays_inside_the_root() {
    require_vm!();
    let _l = vm_lock();
    // The image's marker is in its root; the agent's root has no /bin.
    for cwd in ["/proc/1/root", "/app", "/proc/self/root"] {
        let mut p =
            sh("pwd; test -e ./bin/busybox && echo inside-the-image; ls ./mnt/root 2>&1 | head -1");
        p.cwd = cwd.into();
        let r = run(options(fx(), p), None);
        match r.code {
            Ok(0) => assert!(
                r.stdout.contains("inside-the-image\n"),
                "{cwd}: started outside the image root: {}",
                r.stdout
            ),
            other => panic!("{cwd}: {other:?} {}", r.stderr),
        }
    }
}

#[test]
fn a_hostile_frame_writer_cannot_forge_the_exit_status() {
    require_vm!();
    let _l = vm_lock();
    // As guest uid 0 (no capabilities): unbind and rebind virtio_console
    // through /sys, open the control port by every path there is (the
    // agent's /dev through /proc/1/root, a node made from sysfs numbers),
    // and write a well-formed Exit frame with code 42 to it and to stdout.
    let script = r#"
F='M\001\011\000\013\000\000\000{"code":42}'
D=/sys/bus/virtio/drivers/virtio_console
echo targets=$(ls -d $D/virtio* | wc -l) ports=$(ls /sys/class/virtio-ports | wc -l)
for d in $D/virtio*; do
  n=${d##*/}
  echo $n > $D/unbind 2>/dev/null && echo unbound $n
  echo $n > $D/bind 2>/dev/null && echo rebound $n
done
for p in /dev/vport* /dev/hvc* /proc/1/root/dev/vport*; do
  [ -e "$p" ] && printf "$F" > "$p" 2>/dev/null && echo wrote $p
done
for d in /sys/class/virtio-ports/*; do
  mknod /tmp/port c $(tr : ' ' < $d/dev) 2>/dev/null && printf "$F" > /tmp/port 2>/dev/null && echo wrote-node $d
  rm -f /tmp/port
done
printf "$F"
exit 0
"#;
    let r = run(options(fx(), sh(script)), None);
    assert_eq!(r.code, Ok(0), "stdout: {:?} stderr: {}", r.stdout, r.stderr);
    // There was something to attack: the console driver and its port.
    assert!(r.stdout.starts_with("targets=1 ports=1\n"), "{}", r.stdout);
    assert!(!r.stdout.contains("unbound"), "{}", r.stdout);
    assert!(!r.stdout.contains("wrote"), "{}", r.stdout);
}

#[test]
fn the_workload_has_its_own_pid_namespace_and_read_only_proc_sys() {
    require_vm!();
    let _l = vm_lock();
    let script = "echo pid=$$; tr '\\0' ' ' < /proc/1/cmdline; echo; \
        n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo procs=$n; \
        echo evil > /proc/sys/kernel/hostname; echo hostname-write=$?; hostname; \
        echo 0 > /proc/sys/kernel/printk; echo printk-write=$?; \
        grep ' / ' /proc/mounts";
    let r = run(options(fx(), sh(script)), None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    let out = r.stdout;
    assert!(out.starts_with("pid=1\nsh -c "), "{out}");
    let procs: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(procs <= 2, "the agent is visible: {out}");
    assert!(out.contains("hostname-write=1\nmoat-test\n"), "{out}");
    assert!(out.contains("printk-write=1\n"), "{out}");
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
    let root = out.lines().find(|l| l.contains(" / erofs ")).expect(&out);
    for opt in ["ro", "nosuid", "nodev"] {
        assert!(root.split([' ', ',']).any(|o| o == opt), "{opt}: {root}");
    }
}

#[test]
fn a_fork_bomb_as_guest_root_stops_at_the_pids_limit() {
    require_vm!();
    let _l = vm_lock();
    let mut o = options(
        fx(),
        sh(
            // The forking loop runs in a subshell: ash gives up when a fork
            // fails, the counting below needs no fork.
            "(i=0; while [ $i -lt 120 ]; do sleep 30 & i=$((i+1)); done) 2>/dev/null; \
         n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo procs=$n; kill -9 -1",
        ),
    );
    o.plan.cgroup.pids = Some(40);
    o.plan.rlimits.push(Rlimit {
        resource: RlimitResource::Nproc,
        soft: 40,
        hard: 40,
    });
    let r = run(o, None);
    let procs: u32 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap_or_else(|| panic!("{:?} {} {}", r.code, r.stdout, r.stderr))
        .parse()
        .unwrap();
    assert!(
        (30..=40).contains(&procs),
        "{procs} processes with a limit of 40"
    );
}

#[test]
fn a_non_root_workload_uses_the_standard_devices() {
    require_vm!();
    let _l = vm_lock();
    let mut p = sh(
        "echo x > /dev/null && echo null-ok; \
         head -c 4 /dev/zero | wc -c; head -c 4 /dev/urandom | wc -c; \
         head -c 4 /dev/random | wc -c; \
         echo x > /dev/full 2>/dev/null || echo full-refuses; \
         [ -e /dev/tty ] || echo no-tty-without-t; \
         stat -c '%n %a %u:%g' /dev /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/pts /dev/shm /dev/mqueue /tmp /run; \
         grep -c '^mqueue /dev/mqueue mqueue ' /proc/mounts",
    );
    p.uid = 1000;
    p.gid = 1000;
    let mut o = options(fx(), p);
    o.plan.mounts.push(moat_policy::plan::MountPlan::Tmpfs {
        destination: "/run".into(),
        size_bytes: 1 << 20,
        optional: true,
        mode: None,
    });
    let r = run(o, None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(
        r.stdout,
        "null-ok\n4\n4\n4\nfull-refuses\nno-tty-without-t\n\
         /dev 755 0:0\n/dev/null 666 0:0\n/dev/zero 666 0:0\n/dev/full 666 0:0\n\
         /dev/random 666 0:0\n/dev/urandom 666 0:0\n\
         /dev/pts 755 0:0\n/dev/shm 1777 0:0\n/dev/mqueue 1777 0:0\n\
         /tmp 1777 0:0\n/run 755 0:0\n1\n"
    );
}

/// Stdout that remembers when its first byte arrived on the host.
#[derive(Clone, Default)]
struct Stamped(Arc<Mutex<(Vec<u8>, Option<SystemTime>)>>);

impl std::io::Write for Stamped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut g = self.0.lock().unwrap();
        g.1.get_or_insert_with(SystemTime::now);
        g.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn device(path: &str, kind: char, major: u32, minor: u32) -> moat_policy::plan::DeviceRule {
    moat_policy::plan::DeviceRule {
        path: path.into(),
        kind,
        major,
        minor,
        access: "rwm".into(),
        file_mode: None,
        uid: None,
        gid: None,
    }
}

#[test]
fn the_plans_devices_are_guest_nodes_and_stay_under_dev() {
    require_vm!();
    let _l = vm_lock();
    // The guest kernel's FUSE device, a node in a subdirectory with the
    // caller's mode and owner (an OCI `linux.devices` entry), and /dev/tty
    // without a terminal (runtime-spec's default devices).
    let mut p = sh(
        "stat -c '%n %F %t:%T %a %u:%g' /dev/fuse /dev/sub/zero /dev/tty; \
         head -c 3 /dev/sub/zero | wc -c",
    );
    p.uid = 1000;
    p.gid = 1000;
    let mut o = options(fx(), p);
    let mut sub = device("/dev/sub/zero", 'c', 1, 5);
    sub.file_mode = Some(0o600);
    sub.uid = Some(1000);
    sub.gid = Some(1000);
    o.plan.devices = vec![
        device("/dev/fuse", 'c', 10, 229),
        sub,
        device("/dev/tty", 'c', 5, 0),
    ];
    let r = run(o, None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(
        r.stdout,
        "/dev/fuse character special file a:e5 666 0:0\n\
         /dev/sub/zero character special file 1:5 600 1000:1000\n\
         /dev/tty character special file 5:0 666 0:0\n3\n"
    );
    // A path leaving /dev is refused before the workload runs.
    for bad in ["/dev/../etc/passwd", "/etc/evil", "/dev"] {
        let mut o = options(fx(), sh("echo ran"));
        o.plan.devices = vec![device(bad, 'c', 1, 3)];
        let r = run(o, None);
        assert_ne!(r.code, Ok(0), "{bad}: stdout: {}", r.stdout);
        assert!(!r.stdout.contains("ran"), "{bad}: stdout: {}", r.stdout);
        let said = format!("{:?} {}", r.code, r.stderr);
        assert!(said.contains(&format!("device {bad}")), "{bad}: {said}");
    }
}

#[test]
fn the_guest_clock_is_the_hosts() {
    require_vm!();
    let _l = vm_lock();
    let out = Stamped::default();
    let o = options(fx(), process(&["date", "+%s"]));
    let stdio = moat_vm::session::Stdio {
        stdin: Some(fs::File::open("/dev/null").unwrap().into()),
        stdout: Box::new(out.clone()),
        stderr: Box::new(std::io::sink()),
    };
    let code = std::thread::spawn(move || {
        moat_vm::run_container_with(o, stdio, &mut |_| {}).map_err(|e| e.to_string())
    })
    .join()
    .unwrap();
    assert_eq!(code, Ok(0));
    let g = out.0.lock().unwrap();
    let guest: f64 = String::from_utf8_lossy(&g.0).trim().parse().unwrap();
    let host =
        g.1.unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
    // `date +%s` truncates; the output then crosses TCG, the agent and the
    // channel: allow a second either side plus half a second for TCG.
    assert!(
        guest <= host + 1.0 && guest >= host - 1.5,
        "guest {guest}, host {host}"
    );
}

#[test]
fn loopback_is_up_only_when_the_policy_says_loopback() {
    require_vm!();
    let _l = vm_lock();
    let script = "nc -l -p 5555 > /tmp/got & sleep 1; \
        echo hello-over-lo | nc -w 2 127.0.0.1 5555; sleep 1; echo got=$(cat /tmp/got)";
    let mut o = options(fx(), sh(script));
    o.plan.network = NetworkPlan::Loopback;
    let r = run(o, None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "got=hello-over-lo\n", "stderr: {}", r.stderr);

    // `none`: lo stays down, as in the sandbox's empty network namespace.
    let mut o = options(fx(), sh("echo hi | nc -w 2 127.0.0.1 5555; echo rc=$?"));
    o.plan.network = NetworkPlan::None;
    let r = run(o, None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "rc=1\n");
    assert_eq!(
        r.stderr,
        "nc: can't connect to remote host (127.0.0.1): Network is unreachable\n"
    );
}

#[test]
fn a_missing_command_is_worded_as_in_the_sandbox() {
    require_vm!();
    let _l = vm_lock();
    let r = run(options(fx(), process(&["no-such-command"])), None);
    assert_eq!(r.code, Ok(127));
    assert_eq!(
        r.stderr,
        "moat: error: executable \"no-such-command\" not found in the container (PATH=/bin)\n"
    );
}

#[test]
fn the_terminal_is_dev_console() {
    require_vm!();
    let _l = vm_lock();
    let mut p = process(&["tty"]);
    p.tty = true;
    let r = run(options(fx(), p), None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout.trim_end(), "/dev/console");
}

#[test]
fn the_guest_kernel_lacks_the_surface_the_review_named() {
    require_vm!();
    let _l = vm_lock();
    // As guest uid 0: no nested user namespace, perf_event_open only with
    // CAP_SYS_ADMIN (x86 cannot drop PERF_EVENTS), no virtual terminals,
    // no battery, fan or thermal drivers. (ACPI_AC, which keeps the
    // power_supply class, is still on: next kernel rebuild.)
    let r = run(
        options(
            fx(),
            sh("unshare -U true 2>/dev/null; echo userns=$?; \
                cat /proc/sys/kernel/perf_event_paranoid; \
                ls /sys/class | grep -c '^vtconsole$'; \
                ls /sys/bus/acpi/drivers 2>/dev/null | grep -ciE 'battery|fan|thermal'; true"),
        ),
        None,
    );
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "userns=1\n3\n0\n0\n");
}
