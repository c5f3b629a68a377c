//! A paused sandbox container as runc treats one: KILL ends it at once
//! (the v1 freezer would hold a killed task until thawed), a CPU update
//! above the policy's `cpus` is refused.

#[path = "clients/mod.rs"]
mod clients;

use std::time::Duration;

use serde_json::json;

use clients::bundle::Bundle;
use clients::{stderr, stdout, wait_until};

fn status(b: &Bundle, id: &str) -> String {
    let o = b.oci(&["state", id]);
    assert!(o.status.success(), "state {id}: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["status"].as_str().unwrap().to_string()
}

fn ok(b: &Bundle, args: &[&str]) -> String {
    let o = b.oci(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

struct Cleanup<'a>(&'a Bundle, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.oci(&["delete", "--force", &self.1]);
    }
}

#[test]
fn kill_ends_a_paused_container_and_cpu_stays_within_the_policy() {
    if !clients::ready(
        "kill_ends_a_paused_container_and_cpu_stays_within_the_policy",
        &[],
    ) {
        return;
    }
    // baseline (which the tests' policy extends): cpus 1.
    let b = Bundle::new(&["sleep", "600"]);
    b.edit(|c| {
        c["annotations"] = json!({"moat.dev/policy": format!(
            "{}/tests/clients/podman-defaults.yaml",
            env!("CARGO_MANIFEST_DIR")
        )})
    });
    let _cleanup = Cleanup(&b, "pk".into());
    let o = b.create("pk");
    assert!(o.status.success(), "{}", stderr(&o));
    ok(&b, &["start", "pk"]);
    ok(
        &b,
        &[
            "update",
            "--cpu-quota",
            "50000",
            "--cpu-period",
            "100000",
            "pk",
        ],
    );
    let o = b.oci(&[
        "update",
        "--cpu-quota",
        "150000",
        "--cpu-period",
        "100000",
        "pk",
    ]);
    assert!(
        !o.status.success(),
        "a CPU quota above the policy's was set"
    );
    assert!(
        stderr(&o).contains("update asks for CPU quota 150000 per period 100000 µs, above policy"),
        "{}",
        stderr(&o)
    );
    ok(&b, &["pause", "pk"]);
    assert_eq!(status(&b, "pk"), "paused");
    // A signal other than KILL waits for resume, as in runc.
    ok(&b, &["kill", "pk", "TERM"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&b, "pk"), "paused");
    ok(&b, &["kill", "pk", "KILL"]);
    wait_until(Duration::from_secs(10), || {
        (status(&b, "pk") == "stopped").then_some(())
    })
    .expect("a paused container survived KILL");
    ok(&b, &["delete", "pk"]);
}
