//! The escape suite: fifteen container-escape attempts, each run from
//! inside a moat sandbox by busybox or the static escape helper, each
//! asserting the specific failure and that the host is unchanged. See
//! docs/threat-model.md for the class, CVE and mechanism behind each.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{can_sandbox, host_mounts, line, stderr, stdout, Env};

/// The result of a helper line (`name: result`).
fn result<'a>(text: &'a str, name: &str) -> &'a str {
    line(text, &format!("{name}: ")).split_once(": ").unwrap().1
}

fn assert_host_mounts_untouched(env: &Env) {
    let dir = env.dir.path().to_str().unwrap();
    for l in host_mounts().lines() {
        assert!(
            !l.contains(dir),
            "a container mount leaked to the host: {l}"
        );
    }
}

/// Attempt 1: `mkdir /host; mount --bind / /host; chroot /host`.
#[test]
fn e01_bind_mount_root_and_chroot() {
    if !can_sandbox("e01_bind_mount_root_and_chroot") {
        return;
    }
    let env = Env::new();
    let out = env.run(&["--", "sh", "-c",
        "mkdir /host; mkdir /tmp/host && mount --bind / /tmp/host; echo mount=$?; chroot /tmp/host /bin/true; echo chroot=$?"]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(o, "mount=1\nchroot=1\n", "{e}");
    assert!(
        e.contains("mkdir: can't create directory '/host': Read-only file system"),
        "{e}"
    );
    assert!(
        e.contains("mount: permission denied (are you root?)"),
        "{e}"
    );
    assert!(
        e.contains("chroot: can't change root directory to '/tmp/host': Operation not permitted"),
        "{e}"
    );
    assert!(!env.rootfs.join("host").exists());
    assert_host_mounts_untouched(&env);
}

/// Attempt 2: `/proc/sysrq-trigger` and `/proc/sys/kernel/core_pattern`.
#[test]
fn e02_sysrq_and_core_pattern() {
    if !can_sandbox("e02_sysrq_and_core_pattern") {
        return;
    }
    let env = Env::new();
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let out = env.run(&[
        "--",
        "sh",
        "-c",
        "echo c > /proc/sysrq-trigger; echo sysrq=$?; \
         if [ -e /proc/sysrq-trigger ]; then stat -c %t:%T /proc/sysrq-trigger; fi; \
         echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern; echo core=$?",
    ]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(o.ends_with("core=1\n"), "{o}{e}");
    if Path::new("/proc/sysrq-trigger").exists() {
        // Masked: the write lands in /dev/null (char 1:3), not the kernel.
        assert!(o.contains("1:3\n"), "{o}");
    } else {
        assert!(o.starts_with("sysrq=1\n"), "{o}");
    }
    assert!(
        e.contains("can't create /proc/sys/kernel/core_pattern: Read-only file system"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        before
    );
}

/// Attempt 3: Host files through `/proc/1/root` or any `/proc/PID/root`.
#[test]
fn e03_proc_pid_root() {
    if !can_sandbox("e03_proc_pid_root") {
        return;
    }
    let env = Env::new();
    let marker = env.dir.path().join("host-secret");
    std::fs::write(&marker, "host secret\n").unwrap();
    let m = marker.to_str().unwrap();
    let out = env.run(&[
        "--",
        "sh",
        "-c",
        &format!(
            "for p in /proc/[0-9]*; do cat $p/root{m} 2>/dev/null && echo LEAK; done; \
         ls /proc/1/root/bin/busybox; echo pids: $(ls -d /proc/[0-9]* | wc -l)"
        ),
    ]);
    let o = stdout(&out);
    assert!(!o.contains("LEAK") && !o.contains("host secret"), "{o}");
    assert!(o.contains("/proc/1/root/bin/busybox\n"), "{o}");
    let pids: u32 = line(&o, "pids:")[6..].trim().parse().unwrap();
    assert!(
        pids <= 4,
        "only the container's own processes are visible: {o}"
    );
}

/// Attempt 4: Leaked host fds and a cwd outside the root (CVE-2024-21626).
#[test]
fn e04_leaked_fds_and_cwd() {
    if !can_sandbox("e04_leaked_fds_and_cwd") {
        return;
    }
    let env = Env::new();
    env.with_helper();
    // moat itself inherits extra descriptors (a directory, a file) that
    // must not reach the workload.
    let cmd = format!(
        "exec 5</ 6<{m} 7>/dev/null; exec {moat} --root {state} run --isolation sandbox -w /tmp --rootfs {root} escape-helper fds",
        m = env.dir.path().display(),
        moat = env!("CARGO_BIN_EXE_moat"),
        state = env.state_root().display(),
        root = env.rootfs.display()
    );
    let out = Command::new("bash")
        .args(["-c", &cmd])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let o = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(result(&o, "fds"), "0 1 2");
    assert_eq!(result(&o, "cwd"), "/tmp");
}

/// Attempt 5: Overwrite the runtime through `/proc/self/exe` or `/proc/PID/exe` (CVE-2019-5736).
#[test]
fn e05_overwrite_runtime_via_proc_exe() {
    if !can_sandbox("e05_overwrite_runtime_via_proc_exe") {
        return;
    }
    let env = Env::new();
    env.with_helper();
    let moat = env!("CARGO_BIN_EXE_moat");
    let before = std::fs::read(moat).unwrap();
    let out = env.run(&["--", "sh", "-c", "sleep 5 & escape-helper exe"]);
    let o = stdout(&out);
    let exe_lines: Vec<&str> = o.lines().filter(|l| l.starts_with("exe ")).collect();
    assert!(exe_lines.len() >= 2, "{o}");
    for l in &exe_lines {
        assert!(
            !l.contains("moat"),
            "a moat binary is visible in the container: {l}"
        );
        assert!(
            l.ends_with(": ETXTBSY") || l.ends_with(": EROFS") || l.ends_with(": EACCES"),
            "{l}"
        );
    }
    assert!(
        ["ETXTBSY", "EROFS", "EACCES"].contains(&result(&o, "self-exe")),
        "{o}"
    );
    assert_eq!(
        std::fs::read(moat).unwrap(),
        before,
        "the moat binary changed"
    );
}

/// Attempt 6: `mknod` the host's disk and read it.
#[test]
fn e06_mknod_host_disk() {
    if !can_sandbox("e06_mknod_host_disk") {
        return;
    }
    let env = Env::new();
    env.with_helper();
    let dev = std::fs::metadata("/")
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
        .unwrap();
    let (major, minor) = ((dev >> 8) & 0xfff, (dev & 0xff) | ((dev >> 12) & 0xfff00));
    let out = env.run(&[
        "--",
        "escape-helper",
        "mknod",
        &major.to_string(),
        &minor.to_string(),
    ]);
    let o = stdout(&out);
    assert_eq!(result(&o, "mknod"), "EPERM", "{o}");
    assert_eq!(result(&o, "open-disk"), "ENOENT", "{o}");
    let ls = env.run(&["--", "ls", "/dev"]);
    assert_eq!(
        stdout(&ls),
        "fd\nfull\nmqueue\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\nurandom\nzero\n"
    );
}

/// Attempts 7 and 8: Kernel modules, kexec, bpf, perf, userfaultfd, io_uring; keyrings.
#[test]
fn e07_e08_dangerous_syscalls_and_keyrings() {
    if !can_sandbox("e07_e08_dangerous_syscalls_and_keyrings") {
        return;
    }
    let env = Env::new();
    env.with_helper();
    let out = env.run(&["--", "escape-helper", "syscalls"]);
    let o = stdout(&out);
    for name in [
        "init_module",
        "finit_module",
        "kexec_load",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "keyctl",
        "add_key",
        "request_key",
    ] {
        let r = result(&o, name);
        assert!(r == "EPERM" || r == "ENOSYS", "{name} was not denied: {r}");
    }
    let keys = std::fs::read_to_string("/proc/keys").unwrap_or_default();
    assert!(
        !keys.contains("moat-escape"),
        "a key reached the host keyring"
    );
}

/// Attempt 9: `ptrace` a process outside the container.
#[test]
fn e09_ptrace_outside() {
    if !can_sandbox("e09_ptrace_outside") {
        return;
    }
    let env = Env::new();
    env.with_helper();
    let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = victim.id().to_string();
    let out = env.run(&["--", "escape-helper", "ptrace", &pid]);
    let o = stdout(&out);
    let r = result(&o, "ptrace");
    assert!(r == "EPERM" || r == "ESRCH", "{o}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(line(&status, "TracerPid:"), "TracerPid:\t0");
    victim.kill().unwrap();
    victim.wait().unwrap();
}

/// Attempt 10: A setuid-root binary inside the image gains nothing.
#[test]
fn e10_setuid_binary() {
    if !can_sandbox("e10_setuid_binary") {
        return;
    }
    let env = Env::new();
    let suid = env.rootfs.join("bin/suid-helper");
    std::fs::copy(common::escape_helper(), &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = env.run(&["--user", "1000:1000", "--", "suid-helper", "ids"]);
    assert_eq!(
        result(&stdout(&out), "ids"),
        "uid=1000 euid=1000",
        "{}",
        stderr(&out)
    );
}

/// Attempt 11: A fork bomb is stopped by the pids limit; the host stays responsive.
#[test]
fn e11_fork_bomb() {
    if !can_sandbox("e11_fork_bomb") {
        return;
    }
    let env = Env::new();
    env.with_helper();
    let root = env.rootfs.to_str().unwrap();
    let child = env
        .moat(&[
            "run",
            "--isolation",
            "sandbox",
            "--rootfs",
            root,
            "escape-helper",
            "forkbomb",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert!(
        Command::new("true").status().unwrap().success(),
        "the host cannot fork"
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    let o = stdout(&out);
    let r = result(&o, "forkbomb");
    assert!(r.ends_with(" then EAGAIN"), "{o}{}", stderr(&out));
    assert!(r.starts_with("pid 1 forked "), "{o}");
    let procs: u32 = result(&o, "processes").parse().unwrap();
    // The baseline pids limit is 256 for the whole container.
    assert!(
        (2..=256).contains(&procs),
        "{procs} processes despite the pids limit"
    );
}

/// Attempt 12: Opening files until failure is bounded by RLIMIT_NOFILE.
#[test]
fn e12_open_files_limit() {
    if !can_sandbox("e12_open_files_limit") {
        return;
    }
    let env = Env::new();
    env.with_helper();
    let out = env.run(&["--", "sh", "-c", "ulimit -n; exec escape-helper nofile"]);
    let o = stdout(&out);
    let limit: u32 = o.lines().next().unwrap().parse().unwrap();
    assert!(limit <= 20000);
    assert_eq!(
        result(&o, "nofile"),
        format!("opened {} then EMFILE", limit - 3)
    );
}

/// Attempt 13: Symlinked `/tmp`, `/proc`, `/dev/null` in the image do not
/// redirect moat's mounts (CVE-2021-30465, CVE-2025-31133 class).
#[test]
fn e13_symlinked_mount_targets() {
    if !can_sandbox("e13_symlinked_mount_targets") {
        return;
    }
    let env = Env::new();
    // Outside /tmp, so that the image's /tmp symlink does not point into itself.
    let host = tempfile::Builder::new()
        .prefix("moat-e13-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let host_dir = host.path().join("host-target");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("marker"), "host\n").unwrap();
    let hd = host_dir.to_str().unwrap();
    // /tmp -> <host dir> (absolute), and the same path inside the image.
    std::fs::remove_dir(env.rootfs.join("tmp")).unwrap();
    symlink(hd, env.rootfs.join("tmp")).unwrap();
    std::fs::create_dir_all(env.rootfs.join(hd.trim_start_matches('/'))).unwrap();
    // /dev/null -> a host file.
    symlink(host_dir.join("marker"), env.rootfs.join("dev/null")).unwrap();
    let out = env.run(&[
        "--",
        "sh",
        "-c",
        "echo pwned > /tmp/pwn && ls /tmp; stat -c %F /dev/null",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "pwn\ncharacter special file\n");
    assert_eq!(
        std::fs::read_dir(&host_dir).unwrap().count(),
        1,
        "the host directory changed"
    );
    assert_eq!(
        std::fs::read_to_string(host_dir.join("marker")).unwrap(),
        "host\n"
    );
    assert_host_mounts_untouched(&env);
    for l in host_mounts().lines() {
        assert!(!l.contains(hd), "a container mount leaked to the host: {l}");
    }

    // /proc -> / is refused outright.
    std::fs::remove_dir(env.rootfs.join("proc")).unwrap();
    symlink("/", env.rootfs.join("proc")).unwrap();
    let out = env.run(&["--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        stderr(&out),
        "moat: error: container setup failed: mount target /proc: /proc is a symlink in the image; moat refuses to mount over it\n"
    );
    assert_host_mounts_untouched(&env);
}

/// Attempt 14: `unshare(CLONE_NEWUSER)` then a mount (CVE-2022-0185 class).
#[test]
fn e14_nested_user_namespace_mount() {
    if !can_sandbox("e14_nested_user_namespace_mount") {
        return;
    }
    let env = Env::new();
    env.with_helper();
    let out = env.run(&["--", "escape-helper", "unshare-mount"]);
    let o = stdout(&out);
    assert_eq!(result(&o, "unshare"), "EPERM", "{o}");
    assert_eq!(result(&o, "unshare-mountns"), "EPERM", "{o}");
    assert_eq!(result(&o, "mount"), "EPERM", "{o}");
    assert_eq!(result(&o, "clone-newuser"), "EPERM", "{o}");
    assert_host_mounts_untouched(&env);
}

/// Attempt 15: The cgroup v1 `release_agent` (CVE-2022-0492).
#[test]
fn e15_cgroup_release_agent() {
    if !can_sandbox("e15_cgroup_release_agent") {
        return;
    }
    let env = Env::new();
    let agents: Vec<(std::path::PathBuf, String)> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("release_agent"))
                .filter_map(|p| std::fs::read_to_string(&p).ok().map(|c| (p, c)))
                .collect()
        })
        .unwrap_or_default();
    let out = env.run(&[
        "--",
        "sh",
        "-c",
        "mkdir /tmp/cg && mount -t cgroup -o memory cgroup /tmp/cg; echo mount=$?; \
         ls /sys/fs/cgroup 2>/dev/null | wc -l; \
         echo /tmp/pwn > /sys/fs/cgroup/memory/release_agent; echo write=$?",
    ]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(o, "mount=1\n0\nwrite=1\n", "{e}");
    assert!(
        e.contains("mount: permission denied (are you root?)"),
        "{e}"
    );
    for (p, c) in agents {
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            c,
            "{} changed",
            p.display()
        );
    }
}
