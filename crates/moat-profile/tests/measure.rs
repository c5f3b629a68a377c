//! `moat surface measure` level (a) for crun, from the syscall tracepoints.

mod common;

use moat_profile::measure;

#[test]
fn crun_footprint_is_the_workload_not_crun() {
    if let Some(why) = common::skip_reason(true) {
        println!("SKIP: crun measurement: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    common::busybox_rootfs(dir.path());
    let args: Vec<String> = ["/bin/sh", "-c", "echo hi; ls /; cat /etc/passwd"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let m = measure::measure_crun(dir.path(), &args).unwrap();
    assert_eq!(m.exit_code, 0, "{m:?}");
    for needed in ["execve", "write", "getdents64", "openat", "exit_group"] {
        assert!(
            m.syscalls.iter().any(|s| s == needed),
            "{needed} missing: {:?}",
            m.syscalls
        );
    }
    // crun's own setup (mounts, pivot_root) is not the tenant's.
    for setup in ["pivot_root", "mount", "unshare", "setns"] {
        assert!(
            !m.syscalls.iter().any(|s| s == setup),
            "{setup} recorded: {:?}",
            m.syscalls
        );
    }
    assert!(m.syscalls_count < 60, "{}", m.syscalls_count);
    // Level (b): either measured, or refused with the reason.
    match (&m.hap_functions, &m.hap_unavailable) {
        (Some(n), None) => assert!(*n > 0),
        (None, Some(why)) => assert!(why.contains("function tracer cannot be enabled"), "{why}"),
        other => panic!("unexpected HAP result {other:?}"),
    }
}
