//! The eBPF recorder on this kernel: the verifier accepts every program,
//! and a real workload's syscalls, socket family, ioctl, failed privileged
//! operation and write-opened paths are recorded. Needs root.

mod common;

use moat_profile::measure::{self, RecorderKind, TraceRun};
use moat_profile::{ebpf, syscalls, trace};

fn bpf_ready(test: &str) -> bool {
    if let Some(why) = common::skip_reason(false) {
        println!("SKIP: {test}: {why}");
        return false;
    }
    if !std::path::Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists() {
        println!("SKIP: {test}: this kernel has no bpf(2) (CONFIG_BPF_SYSCALL)");
        return false;
    }
    true
}

#[test]
fn the_verifier_accepts_every_program() {
    if !bpf_ready("the_verifier_accepts_every_program") {
        return;
    }
    let tracefs = trace::ensure_tracefs().unwrap();
    let progs = ebpf::check_programs(&tracefs).unwrap();
    let names: Vec<(&str, &str)> = progs.iter().map(|(n, k, _)| (n.as_str(), *k)).collect();
    assert_eq!(
        names,
        vec![
            ("sched/sched_process_fork", "perf"),
            ("sched/sched_process_exec", "perf"),
            ("sched/sched_process_exit", "perf"),
            ("raw_syscalls/sys_exit", "raw"),
            ("raw_syscalls/sys_enter", "raw"),
            ("raw_syscalls/sys_exit", "perf"),
            ("raw_syscalls/sys_enter", "perf"),
        ]
    );
    assert!(progs.iter().all(|(_, _, n)| *n > 5), "{progs:?}");
}

fn names(rec: &trace::Recorded) -> Vec<String> {
    let t = syscalls::table();
    rec.syscalls
        .keys()
        .map(|n| t.name(*n).unwrap_or("?").to_string())
        .collect()
}

/// `unshare -U` runs busybox in a user namespace where it holds no
/// capability over the host: sethostname fails with EPERM even for root.
fn record_with(kind: RecorderKind, dir: &std::path::Path) -> measure::TraceOutcome {
    let script = format!(
        "echo x > {d}/written; : >> {d}/appended; cat {d}/written; ip link show lo >/dev/null; \
         stty -F /dev/null 2>/dev/null; hostname moat-test 2>/dev/null; exit 3",
        d = dir.display()
    );
    let argv: Vec<String> = ["unshare", "-U", "/bin/busybox", "sh", "-c", &script]
        .iter()
        .map(|s| s.to_string())
        .collect();
    measure::trace(&TraceRun {
        argv: &argv,
        after: Some("unshare"),
        capture: true,
        recorder: kind,
        ..TraceRun::default()
    })
    .unwrap()
}

#[test]
fn records_a_real_workload() {
    if !bpf_ready("records_a_real_workload") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let o = record_with(RecorderKind::Ebpf, dir.path());
    assert_eq!(o.recorder, "ebpf");
    assert_eq!(o.code, 3, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "x\n");
    let r = &o.recorded;
    let n = names(r);
    for needed in [
        "execve",
        "write",
        "openat",
        "socket",
        "ioctl",
        "sethostname",
        "exit_group",
    ] {
        assert!(n.iter().any(|s| s == needed), "{needed} missing: {n:?}");
    }
    // unshare's own setup is not the workload's.
    assert!(!n.iter().any(|s| s == "unshare"), "{n:?}");
    assert!(r.socket_families.contains(&16), "{:?}", r.socket_families); // AF_NETLINK
    assert!(r.ioctls.contains(&0x5401), "{:?}", r.ioctls); // TCGETS
    let sethostname = syscalls::table().number("sethostname").unwrap();
    assert!(r.denied.contains(&(sethostname, 1)), "{:?}", r.denied);
    let written = format!("{}/written", dir.path().display());
    let appended = format!("{}/appended", dir.path().display());
    assert!(r.write_paths.contains(&written), "{:?}", r.write_paths);
    assert!(r.write_paths.contains(&appended), "{:?}", r.write_paths);
    // Read-only opens are not write paths.
    assert!(
        !r.write_paths.iter().any(|p| p.starts_with("/etc")),
        "{:?}",
        r.write_paths
    );
    assert_eq!(r.execs.first().map(String::as_str), Some("/bin/busybox"));
    assert!(r.tasks >= 2, "{}", r.tasks);
    // The counts are exact: one sethostname call.
    assert_eq!(r.syscalls[&sethostname], 1);
}

#[test]
fn tracefs_fallback_records_the_same_syscalls() {
    if !bpf_ready("tracefs_fallback_records_the_same_syscalls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let t = record_with(RecorderKind::Tracefs, dir.path());
    assert_eq!(t.recorder, "tracefs");
    assert_eq!(t.code, 3);
    let e = record_with(RecorderKind::Ebpf, dir.path());
    assert_eq!(names(&t.recorded), names(&e.recorded));
    assert_eq!(t.recorded.socket_families, e.recorded.socket_families);
    assert_eq!(t.recorded.ioctls, e.recorded.ioctls);
    assert_eq!(t.recorded.denied, e.recorded.denied);
    // Only the eBPF recorder can read path names.
    assert!(t.recorded.write_paths.is_empty());
    assert!(!e.recorded.write_paths.is_empty());
}

/// The perf-tracepoint variant of the syscall programs (the fallback when
/// raw tracepoints cannot be attached) records the same workload the same
/// way.
#[test]
fn perf_tracepoint_variant_records_the_same() {
    if !bpf_ready("perf_tracepoint_variant_records_the_same") {
        return;
    }
    let tracefs = trace::ensure_tracefs().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "echo x > {d}/w; ip link show lo >/dev/null; stty -F /dev/null 2>/dev/null; exit 0",
        d = dir.path().display()
    );
    let mut results = Vec::new();
    for raw in [false, true] {
        let mut child = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                "kill -STOP $$; exec \"$@\"",
                "sh",
                "/bin/busybox",
                "sh",
                "-c",
            ])
            .arg(&script)
            .spawn()
            .unwrap();
        let pid = child.id();
        let stat = format!("/proc/{pid}/stat");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::fs::read_to_string(&stat)
            .unwrap_or_default()
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('T'))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never stopped"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let filter = trace::TreeFilter::FromFirstExec {
            after: None,
            program: None,
        };
        let rec = ebpf::Recorder::start_with(&tracefs, pid, &filter, Some(raw)).unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::CONT,
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
        let r = rec.stop().unwrap();
        let n = names(&r);
        for needed in ["execve", "openat", "socket", "ioctl", "exit_group"] {
            assert!(
                n.iter().any(|s| s == needed),
                "raw={raw}: {needed} missing: {n:?}"
            );
        }
        assert!(
            r.socket_families.contains(&16),
            "raw={raw}: {:?}",
            r.socket_families
        );
        assert!(r.ioctls.contains(&0x5401), "raw={raw}: {:?}", r.ioctls);
        let w = format!("{}/w", dir.path().display());
        assert!(r.write_paths.contains(&w), "raw={raw}: {:?}", r.write_paths);
        results.push((n, r.socket_families, r.ioctls, r.write_paths));
    }
    assert_eq!(results[0], results[1]);
}

/// The read-only watch names the paths a task of the watched uid range
/// failed to create on a read-only file system, and nothing of another uid.
#[test]
fn read_only_watch_names_refused_writes_of_the_watched_uids_only() {
    if !bpf_ready("read_only_watch_names_refused_writes_of_the_watched_uids_only") {
        return;
    }
    use moat_profile::ebpf::rofs::ReadOnlyWatch;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let watch = ReadOnlyWatch::start(4242, 2).unwrap();
    // A read-only tmpfs in a private mount namespace; an append, a
    // symlink, mkdir and a create there as uid 4242 (watched), 4244 (not).
    // (`:` is a special builtin: its failed redirection ends the shell, so
    // it comes last.)
    let script = format!(
        "mount -t tmpfs -o ro tmpfs {d} && \
         setpriv --reuid 4242 --regid 4242 --clear-groups sh -c 'echo x >> {d}/appended; ln -s x {d}/link; mkdir {d}/made; : > {d}/file'; \
         setpriv --reuid 4244 --regid 4244 --clear-groups mkdir {d}/other; true"
    );
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hits = watch.hits().unwrap();
    let got: Vec<(String, String)> = hits
        .iter()
        .filter(|h| h.path.starts_with(&d))
        .map(|h| {
            (
                h.path.strip_prefix(&d).unwrap().to_string(),
                h.syscall.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/appended".to_string(), "openat".to_string()),
            ("/file".to_string(), "openat".to_string()),
            ("/link".to_string(), "symlinkat".to_string()),
            ("/made".to_string(), "mkdir".to_string()),
        ],
        "{hits:?}"
    );
}
