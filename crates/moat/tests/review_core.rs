//! The runtime core (issue 13, first phase) seen through the CLI: the
//! record a sandbox container gets is the core's versioned record, with
//! its status and the digest of the policy it was authorised under, and
//! `moat ps` / `moat kill` read it through the core's reader.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{can_sandbox, stderr, stdout, Env};

#[test]
fn a_sandbox_container_has_the_cores_record() {
    if !can_sandbox("a_sandbox_container_has_the_cores_record") {
        return;
    }
    let env = Env::new();
    let root = env.rootfs.to_str().unwrap().to_string();
    let mut child = env
        .moat(&[
            "run",
            "--isolation",
            "sandbox",
            "--policy",
            "baseline",
            "--name",
            "core-1",
            "--rootfs",
            &root,
            "sleep",
            "1000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let rec = loop {
        let out = env.moat(&["ps", "--format", "json"]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let found = v
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "core-1" && c["status"] == "running")
            .cloned();
        if let Some(c) = found {
            break c;
        }
        assert!(Instant::now() < deadline, "core-1 never ran");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rec["version"], 1, "{rec}");
    assert_eq!(rec["isolation"], "sandbox");
    assert!(rec["pid"].as_i64().unwrap() > 0);
    assert!(rec["pid_start_time"].as_u64().unwrap() > 0);
    assert!(rec["supervisor_pid"].as_i64().unwrap() > 0);
    assert!(rec.get("exit_code").is_none(), "{rec}");
    // The digest of the policy it runs under (the built-in baseline).
    let explain = stdout(
        &env.moat(&["policy", "explain", "baseline"])
            .output()
            .unwrap(),
    );
    let digest = explain
        .lines()
        .find_map(|l| l.trim().strip_prefix("digest"))
        .map(|d| d.trim().trim_start_matches("sha256:").to_string())
        .unwrap_or_else(|| panic!("no digest in {explain}"));
    assert_eq!(rec["policy_digest"], digest.as_str(), "{rec}");
    // The table reads the same record.
    let table = stdout(&env.moat(&["ps"]).output().unwrap());
    assert!(table.contains("core-1"), "{table}");

    let out = env.moat(&["kill", "core-1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "moat run did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The record is gone with the container (no detached containers yet).
    let json = stdout(&env.moat(&["ps", "--format", "json"]).output().unwrap());
    assert_eq!(json.trim(), "[]");
    let out = env.moat(&["kill", "core-1"]).output().unwrap();
    assert_eq!(
        stderr(&out).trim_end(),
        "moat: error: no running container named \"core-1\" (see `moat ps`)"
    );
}
