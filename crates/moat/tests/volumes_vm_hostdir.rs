//! Host directories in a micro-VM: each granted directory reaches the guest
//! through its own jailed virtiofsd (docs/volumes.md). Written in a VM and
//! read on the host and by the next container with the sandbox's owners;
//! read-only grants enforced in the guest and on the host side; ungranted
//! paths refused with the policy's name; planted links redirect nothing;
//! nothing left behind. Several boots under TCG (a few seconds each).
//! Skips with `SKIP:` when QEMU, virtiofsd or the guest kernel is absent.

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{stderr, stdout, vm_ready, wait_for, Env};
use vm_host::vm_lock;

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

fn ready(env: &Env, test: &str) -> bool {
    if !vm_ready(env, test) {
        return false;
    }
    if !Path::new(VIRTIOFSD).is_file() {
        println!("SKIP: {test}: {VIRTIOFSD} (Debian's qemu-system-common) is not installed");
        return false;
    }
    true
}

fn run(env: &Env, isolation: &str, opts: &[&str], script: &str) -> std::process::Output {
    let root = env.rootfs.display().to_string();
    let mut a = vec!["run", "--rm", "--isolation", isolation];
    if isolation == "vm" {
        a.extend(["--accel", "tcg"]);
    }
    a.extend(opts);
    a.extend(["--rootfs", &root, "sh", "-c", script]);
    env.moat(&a).output().unwrap()
}

/// Processes whose command line names this test's directory (virtiofsd's
/// `source=` lies in the run root under it; moat's own `--root` too).
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// After every container of the test ended: no process names the test's
/// directory, no host mount lies in it, no daemon directory is left in
/// the run root.
fn assert_nothing_left(env: &Env) {
    wait_for("the test's processes to go", 30, || {
        processes_naming(env.dir.path()).is_empty()
    });
    let needle = env.dir.path().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(&needle)),
        "a mount in the test's directory was left: {mounts}"
    );
    let run = env.state_root().join("run");
    let left: Vec<String> = std::fs::read_dir(&run)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vfs-"))
        .collect();
    assert!(left.is_empty(), "left in the run root: {left:?}");
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
}

#[test]
fn host_directory_written_in_a_vm_is_read_on_the_host_and_by_the_next_container() {
    let env = Env::new();
    let test = "host_directory_written_in_a_vm_is_read_on_the_host_and_by_the_next_container";
    if !ready(&env, test) {
        return;
    }
    let _l = vm_lock();
    std::fs::create_dir_all(env.rootfs.join("data")).unwrap();
    let host = env.dir.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("from-host"), "host\n").unwrap();
    chown(&host.join("from-host"), 1000);
    let p = env.policy(
        "hd",
        &format!(
            "  filesystem:\n    volumes:\n      - {{source: {}, read_only: false}}\n",
            host.display()
        ),
    );
    let v = format!("{}:/data", host.display());
    let vol = ["--policy", p.as_str(), "-v", v.as_str()];

    // Guest root writes (stored as host root, as the sandbox's container
    // root does) and sees the host's uid 1000 as 1000.
    let o = run(
        &env,
        "vm",
        &vol,
        "cat /data/from-host; stat -c %u /data/from-host; echo from-vm > /data/vm-root; mkdir -m 1777 /data/u; grep ' /data ' /proc/mounts",
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.starts_with("host\n1000\n"), "{out}");
    assert!(
        out.contains("moat-dir-0 /data virtiofs rw,nosuid,nodev"),
        "{out}"
    );
    assert_nothing_left(&env);
    assert_eq!(
        std::fs::read_to_string(host.join("vm-root")).unwrap(),
        "from-vm\n"
    );
    assert_eq!(std::fs::metadata(host.join("vm-root")).unwrap().uid(), 0);

    // The next container, as uid 1000: reads the first one's file, writes
    // its own, stored as host uid 1000. Asked to start from a template, it
    // boots cold (its RAM must be shared with the daemon), with a notice.
    let o = run(
        &env,
        "vm",
        &[&vol[..], &["--user", "1000", "--vm-start", "template"]].concat(),
        "cat /data/vm-root; echo by-1000 > /data/u/f; id -u",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "from-vm\n1000\n");
    assert!(
        stderr(&o).contains("moat: notice: booting the micro-VM cold: templates cover a verified image root without volumes, host directories or a network device"),
        "{}",
        stderr(&o)
    );
    let m = std::fs::metadata(host.join("u/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000));

    // The sandbox sees the same owners (its idmapped mount).
    let o = run(
        &env,
        "sandbox",
        &vol,
        "cat /data/u/f; stat -c %u /data/u/f /data/vm-root",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "by-1000\n1000\n0\n");

    // Guest root makes no device node in the host directory (the workload
    // has no CAP_MKNOD, nor has the daemon: see the read-only test); a
    // FIFO is fine.
    let o = run(
        &env,
        "vm",
        &vol,
        "mknod /data/null c 1 3 2>&1; mkfifo /data/fifo && echo fifo-ok",
    );
    assert!(stdout(&o).contains("fifo-ok"), "{}", stdout(&o));
    assert!(!host.join("null").exists(), "{}", stdout(&o));
    assert_nothing_left(&env);
}

#[test]
fn granted_read_only_host_directory_cannot_be_written_from_a_vm() {
    let env = Env::new();
    let test = "granted_read_only_host_directory_cannot_be_written_from_a_vm";
    if !ready(&env, test) {
        return;
    }
    let _l = vm_lock();
    std::fs::create_dir_all(env.rootfs.join("ro")).unwrap();
    let host = env.dir.path().join("frozen");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("f"), "keep\n").unwrap();
    let p = env.policy(
        "frozen",
        &format!(
            "  filesystem:\n    volumes:\n      - {{source: {}, path: /ro}}\n",
            host.display()
        ),
    );
    // Guest root (uid 0 in the guest) gets EROFS; it cannot remount.
    let o = run(
        &env,
        "vm",
        &["--policy", &p],
        "cat /ro/f; (echo x > /ro/f) 2>&1; touch /ro/new 2>&1; mount -o remount,rw /ro 2>&1; id -u; grep ' /ro ' /proc/mounts",
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.starts_with("keep\n"), "{out}");
    assert_eq!(out.matches("Read-only file system").count(), 2, "{out}");
    assert!(out.contains("\n0\n"), "{out}");
    assert!(
        out.contains("moat-dir-0 /ro virtiofs ro,nosuid,nodev"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(host.join("f")).unwrap(), "keep\n");
    assert!(!host.join("new").exists());
    // `:rw` cannot widen the grant.
    let v = format!("{}:/ro:rw", host.display());
    let o = run(&env, "vm", &["--policy", &p, "-v", &v], "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("policy \"frozen\" grants this volume read-only"),
        "{}",
        stderr(&o)
    );

    // A guest kernel that ignored its own `ro` would still meet a
    // read-only mount: the daemon's own view of the directory (its root
    // after pivot_root) is read-only on the host side.
    let root = env.rootfs.display().to_string();
    env.ok(&[
        "run",
        "-d",
        "--isolation",
        "vm",
        "--accel",
        "tcg",
        "--name",
        "ro-holder",
        "--policy",
        &p,
        "--rootfs",
        &root,
        "sleep",
        "600",
    ]);
    let mut inner = None;
    wait_for("the sandboxed virtiofsd", 60, || {
        inner = processes_naming(env.dir.path())
            .into_iter()
            .filter(|(_, c)| c.starts_with(VIRTIOFSD))
            .find(|(pid, _)| {
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .is_ok_and(|s| s.lines().any(|l| l == "Seccomp:\t2"))
            })
            .map(|(pid, _)| pid);
        inner.is_some()
    });
    let pid = inner.unwrap();
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("{mountinfo}"));
    let fields: Vec<&str> = root_line.split(' ').collect();
    assert_eq!(fields[3], host.display().to_string(), "{root_line}");
    assert!(fields[5].starts_with("ro,nosuid,nodev"), "{root_line}");
    // Only that directory: the daemon's namespace has one mount (and its proc).
    assert!(mountinfo.lines().count() <= 2, "{mountinfo}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:\t"))
        .unwrap();
    let caps = u64::from_str_radix(cap_eff, 16).unwrap();
    assert_eq!(caps & (1 << 27), 0, "CAP_MKNOD kept: {cap_eff}");
    assert_eq!(caps & (1 << 21), 0, "CAP_SYS_ADMIN kept: {cap_eff}");
    // The QEMU of the holder, to see it go.
    let supervisor = env.inspect("ro-holder")["State"]["Pid"].as_i64().unwrap();
    let qemu = vm_host_descendants(supervisor)
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("qemu"))
        })
        .expect("the holder's QEMU");
    let start = proc_start(qemu);
    env.ok(&["rm", "-f", "ro-holder"]);
    wait_for("the holder's QEMU to go", 30, || proc_start(qemu) != start);
    assert_nothing_left(&env);
}

#[test]
fn an_ungranted_host_path_is_refused_for_a_vm_with_the_policy_name() {
    let env = Env::new();
    let test = "an_ungranted_host_path_is_refused_for_a_vm_with_the_policy_name";
    if !ready(&env, test) {
        return;
    }
    let _l = vm_lock();
    std::fs::create_dir_all(env.rootfs.join("data")).unwrap();
    let host = env.dir.path().join("granted");
    std::fs::create_dir(&host).unwrap();
    let p = env.policy(
        "narrow",
        &format!(
            "  filesystem:\n    volumes:\n      - {{source: {}, read_only: false}}\n",
            host.display()
        ),
    );
    let o = run(&env, "vm", &["--policy", &p, "-v", "/etc:/data"], "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains(&format!(
            "-v /etc:/data: policy \"narrow\" grants no host directory containing /etc; add `{{source: /etc, path: /data}}` under `filesystem.volumes` in the policy (and the path to your role's `volumes` in the RBAC file) (it grants: {})",
            host.display()
        )),
        "{}",
        stderr(&o)
    );
    // A link inside the grant that leads out of it is refused too.
    std::os::unix::fs::symlink("/etc", host.join("out")).unwrap();
    let v = format!("{}/out:/data", host.display());
    let o = run(&env, "vm", &["--policy", &p, "-v", &v], "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("goes through a symbolic link (it is /etc)"),
        "{}",
        stderr(&o)
    );
    assert!(processes_naming(env.dir.path()).is_empty());
    assert_nothing_left(&env);
}

#[test]
fn planted_symlinks_do_not_redirect_a_vm_host_directory_mount() {
    let env = Env::new();
    let test = "planted_symlinks_do_not_redirect_a_vm_host_directory_mount";
    if !ready(&env, test) {
        return;
    }
    let _l = vm_lock();
    std::fs::create_dir_all(env.rootfs.join("data")).unwrap();
    let host = env.dir.path().join("shared");
    let second = env.dir.path().join("second");
    std::fs::create_dir(&host).unwrap();
    std::fs::create_dir(&second).unwrap();
    std::fs::write(env.dir.path().join("host-secret"), "secret\n").unwrap();
    let p = env.policy(
        "links",
        &format!(
            "  filesystem:\n    volumes:\n      - {{source: {}, read_only: false}}\n      - {{source: {}, read_only: false}}\n",
            host.display(),
            second.display()
        ),
    );
    let v1 = format!("{}:/data", host.display());

    // A symlink in the image at the target: refused in the guest.
    std::os::unix::fs::symlink("/etc", env.rootfs.join("evil")).unwrap();
    let v = format!("{}:/evil", host.display());
    let o = run(&env, "vm", &["--policy", &p, "-v", &v], "ls /etc");
    assert_eq!(o.status.code(), Some(125), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("mount target /evil: a component is a symlink in the image"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(env.rootfs.join("evil")).unwrap();

    // Links a container (or anyone) planted in the host directory resolve
    // in the guest, never on the host: an absolute link to a host file and
    // a relative one climbing out lead to the guest's own files.
    let secret = env.dir.path().join("host-secret").display().to_string();
    std::os::unix::fs::symlink(&secret, host.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/guest-marker", host.join("rel")).unwrap();
    std::fs::write(env.rootfs.join("etc/guest-marker"), "in-the-image\n").unwrap();
    let o = run(
        &env,
        "vm",
        &["--policy", &p, "-v", &v1],
        "cat /data/abs 2>&1; cat /data/rel",
    );
    let out = stdout(&o);
    assert!(!out.contains("secret"), "{out}");
    assert!(out.contains("No such file or directory"), "{out}");
    assert!(out.ends_with("in-the-image\n"), "{out}");

    // A link planted in the first directory under the second's target
    // does not decide where the second lands: refused.
    std::os::unix::fs::symlink("/etc", host.join("sub")).unwrap();
    let v2 = format!("{}:/data/sub", second.display());
    let o = run(
        &env,
        "vm",
        &["--policy", &p, "-v", &v1, "-v", &v2],
        "echo x > /data/sub/x",
    );
    assert_eq!(o.status.code(), Some(125), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("mount target /data/sub: a component is a symlink"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_dir(&second).unwrap().count(), 0);
    assert_nothing_left(&env);
}

#[test]
fn a_vm_whose_virtiofsd_dies_is_stopped_and_leaves_nothing() {
    let env = Env::new();
    let test = "a_vm_whose_virtiofsd_dies_is_stopped_and_leaves_nothing";
    if !ready(&env, test) {
        return;
    }
    let _l = vm_lock();
    std::fs::create_dir_all(env.rootfs.join("data")).unwrap();
    let host = env.dir.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    let p = env.policy(
        "dies",
        &format!(
            "  filesystem:\n    volumes:\n      - {{source: {}, path: /data, read_only: false}}\n",
            host.display()
        ),
    );
    let root = env.rootfs.display().to_string();
    let mut child = env
        .moat(&[
            "run",
            "--rm",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "--policy",
            &p,
            "--rootfs",
            &root,
            "sh",
            "-c",
            "touch /data/up; while :; do ls /data >/dev/null; sleep 0.2; done",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the workload to write through the daemon", 120, || {
        host.join("up").exists()
    });
    let daemons: Vec<u32> = processes_naming(env.dir.path())
        .into_iter()
        .filter(|(_, c)| c.starts_with(VIRTIOFSD))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(
        daemons.len(),
        2,
        "outer and sandboxed virtiofsd: {daemons:?}"
    );
    for pid in daemons {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    let mut waited = 0;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if waited > 600 {
            let _ = child.kill();
            panic!("moat run did not end after its virtiofsd died");
        }
        waited += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(125), "{err}");
    assert!(
        err.contains(&format!(
            "the virtiofsd serving host directory {} ended",
            host.display()
        )),
        "{err}"
    );
    assert_nothing_left(&env);
}

#[test]
fn more_volumes_than_a_vm_takes_are_refused_before_anything_starts() {
    let env = Env::new();
    let test = "more_volumes_than_a_vm_takes_are_refused_before_anything_starts";
    if !ready(&env, test) {
        return;
    }
    let mut grants = String::from("  filesystem:\n    volumes:\n");
    for i in 0..25 {
        let d = env.dir.path().join(format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::create_dir_all(env.rootfs.join(format!("m{i}"))).unwrap();
        grants.push_str(&format!(
            "      - {{source: {}, path: /m{i}}}\n",
            d.display()
        ));
    }
    let p = env.policy("many", &grants);
    let o = run(&env, "vm", &["--policy", &p], "true");
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the container mounts 0 named volume(s) and 25 host director(ies); a micro-VM takes at most 24 in all: mount fewer (one parent directory instead of several)"),
        "{}",
        stderr(&o)
    );
    assert_nothing_left(&env);
}

#[test]
fn explain_and_surface_name_the_virtiofsd_a_host_directory_adds() {
    let env = Env::new();
    let p = env.policy(
        "hdvm",
        "  isolation: vm\n  filesystem:\n    volumes:\n      - {source: /srv/data, path: /data}\n",
    );
    let out = env.ok(&["policy", "explain", &p]);
    assert!(
        out.contains(
            "in a micro-VM each mounted host directory adds a virtiofsd process on the host"
        ),
        "{out}"
    );
    let out = env.ok(&["surface", &p]);
    assert!(
        out.contains("a virtiofsd process for host directory /srv/data at /data (ro)"),
        "{out}"
    );
    let sandbox = env.policy(
        "hdsbx",
        "  isolation: sandbox\n  filesystem:\n    volumes:\n      - {source: /srv/data, path: /data}\n",
    );
    assert!(!env
        .ok(&["policy", "explain", &sandbox])
        .contains("virtiofsd"));
    assert!(!env.ok(&["surface", &sandbox]).contains("virtiofsd"));
}

/// Every descendant of process `pid`.
fn vm_host_descendants(pid: i64) -> Vec<i64> {
    let mut parents = vec![pid];
    let mut out = Vec::new();
    loop {
        let mut found = false;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i64>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let ppid: i64 = stat[stat.rfind(')').unwrap() + 2..]
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if parents.contains(&ppid) && !parents.contains(&p) {
                parents.push(p);
                out.push(p);
                found = true;
            }
        }
        if !found {
            return out;
        }
    }
}

/// A process's start time (field 22 of its stat), `None` once it is gone:
/// a reused pid has another.
fn proc_start(pid: i64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
}
