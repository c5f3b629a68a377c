//! `moat surface measure --policy P` counts the network helper (issue 15:
//! "a network helper is attack surface"): under `network: egress` the
//! jailed pasta's host syscalls are measured in a run of their own, beside
//! the workload's, and moat's helpers (`nft`, pasta) are never counted as
//! the workload. Needs root and tracefs. No traffic leaves the container.

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use common::{can_sandbox, stderr, stdout, vm_ready, Env};

fn ready(test: &str) -> bool {
    if !can_sandbox(test) {
        return false;
    }
    if moat_profile::trace::ensure_tracefs().is_err() {
        println!("SKIP: {test}: tracefs cannot be mounted");
        return false;
    }
    if !std::path::Path::new("/usr/bin/pasta").exists() {
        println!("SKIP: {test}: pasta (passt) is not installed");
        return false;
    }
    true
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn measure_counts_the_jailed_network_helper_under_egress() {
    if !ready("measure_counts_the_jailed_network_helper_under_egress") {
        return;
    }
    let env = Env::new();
    let policy = env.policy("egress", "  network:\n    mode: egress\n");
    let rootfs = env.rootfs.to_str().unwrap().to_string();
    let measure = |extra: &[&str], format: &str| {
        let mut a = vec![
            "surface",
            "measure",
            "--rootfs",
            &rootfs,
            "--isolation",
            "sandbox",
            "--format",
            format,
        ];
        a.extend(extra);
        a.extend(["--", "/bin/sh", "-c", "echo hi; ls /"]);
        env.moat(&a).output().unwrap()
    };

    let o = measure(&["--policy", &policy], "json");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v[0];
    assert_eq!(m["backend"], "sandbox", "{m}");
    assert_eq!(m["exit_code"], 0, "{m}");
    // The workload is the workload: not `nft`, not pasta.
    let workload = names(&m["syscalls"]);
    assert!(workload.contains(&"getdents64".to_string()), "{workload:?}");
    for theirs in ["setns", "pivot_root", "capset", "epoll_wait", "mount"] {
        assert!(
            !workload.contains(&theirs.to_string()),
            "{theirs} in {workload:?}"
        );
    }
    // pasta: its own start-up in its user namespace (setns, unshare,
    // pivot_root into its empty root, capset) and its event loop.
    let h = &m["network_helper"];
    assert_eq!(h["program"], "pasta", "{m}");
    let helper = names(&h["syscalls"]);
    assert_eq!(h["syscalls_count"].as_u64().unwrap() as usize, helper.len());
    for needed in ["setns", "unshare", "pivot_root", "capset", "epoll_wait"] {
        assert!(
            helper.contains(&needed.to_string()),
            "{needed} missing: {helper:?}"
        );
    }
    assert!(helper.len() > 25 && helper.len() < 120, "{helper:?}");

    // The table says it too.
    let o = measure(&["--policy", &policy], "table");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("network helper (pasta, jailed): ")
        })
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(" distinct host syscalls, "), "{line}");

    // No egress, no helper.
    let o = measure(&[], "json");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v[0].get("network_helper").is_none(), "{}", v[0]);
}

#[test]
fn measure_counts_pasta_beside_qemu_for_a_vm_under_egress() {
    let test = "measure_counts_pasta_beside_qemu_for_a_vm_under_egress";
    let env = Env::new();
    if !ready(test) || !vm_ready(&env, test) {
        return;
    }
    let _l = vm_host::vm_lock();
    let policy = env.policy("egress", "  network:\n    mode: egress\n");
    let rootfs = env.rootfs.to_str().unwrap().to_string();
    let o = env
        .moat(&[
            "surface",
            "measure",
            "--rootfs",
            &rootfs,
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "--policy",
            &policy,
            "--format",
            "json",
            "--",
            "/bin/sh",
            "-c",
            "echo hi",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v[0];
    assert_eq!(m["backend"], "vm", "{m}");
    assert!(
        m["footprint"]
            .as_str()
            .unwrap()
            .starts_with("the QEMU process"),
        "{m}"
    );
    let h = &m["network_helper"];
    assert_eq!(h["program"], "pasta", "{m}");
    let helper = names(&h["syscalls"]);
    for needed in ["setns", "pivot_root", "epoll_wait"] {
        assert!(
            helper.contains(&needed.to_string()),
            "{needed} missing: {helper:?}"
        );
    }
}
