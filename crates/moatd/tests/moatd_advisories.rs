//! The security loop (issue 17): an advisory import that finds something
//! new in a deployed image makes moatd act as each workload's policy says
//! (`vulnerabilities.on_new_advisory`): `stop` blocks new replicas and
//! stops the running ones after `stop_after`, `alert` only reports.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{can_run, deployment, wait_for, Env, Spec};

/// A busybox root with a Debian package database the fixtures' advisories
/// match; imported as `vuln:1`; returns `vuln@sha256:<manifest digest>`.
fn vulnerable_image(env: &Env) -> String {
    let root = env.dir.path().join("vuln-rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "run", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "sleep", "cat", "touch"] {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    moat_scan::fixtures::write_debian_rootfs(&root).unwrap();
    let tar = env.dir.path().join("vuln.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out = env.ok(&[
        "image",
        "import",
        tar.to_str().unwrap(),
        "--name",
        "vuln:1",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    format!("vuln@{}", v["manifest_digest"].as_str().unwrap())
}

fn policy(name: &str, vulns: &str) -> String {
    format!(
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  extends: baseline\n  isolation: sandbox\n  exec: true\n  vulnerabilities: {vulns}\n---\n"
    )
}

fn running_of(env: &Env, prefix: &str) -> usize {
    env.containers()
        .iter()
        .filter(|c| c["status"] == "running" && c["name"].as_str().unwrap().starts_with(prefix))
        .count()
}

#[test]
fn an_advisory_import_stops_what_the_policy_says_to_stop() {
    if !can_run("an_advisory_import_stops_what_the_policy_says_to_stop") {
        return;
    }
    let mut env = Env::new(None);
    let image = vulnerable_image(&env);
    env.start();
    let stop = deployment(
        &image,
        &Spec {
            name: "stopme",
            policy: Some("vuln-stop"),
            ..Spec::default()
        },
    );
    let alert = deployment(
        &image,
        &Spec {
            name: "alertme",
            policy: Some("vuln-alert"),
            ..Spec::default()
        },
    );
    env.apply(
        "stop.yaml",
        &format!(
            "{}{stop}",
            policy("vuln-stop", "{on_new_advisory: stop, stop_after: 2}")
        ),
    );
    env.apply(
        "alert.yaml",
        &format!("{}{alert}", policy("vuln-alert", "{fail_on: none}")),
    );
    env.ok(&["rollout", "status", "deployment/stopme", "--timeout", "60"]);
    env.ok(&["rollout", "status", "deployment/alertme", "--timeout", "60"]);

    let osv = env.dir.path().join("osv");
    moat_scan::fixtures::write_osv_dir(&osv).unwrap();
    env.ok(&["vulndb", "import", osv.to_str().unwrap()]);

    wait_for(30, "the stop decision", || {
        env.ok(&["events"]).contains("VulnerabilityStop")
    });
    let events = env.ok(&["events"]);
    let line = events
        .lines()
        .find(|l| l.contains("VulnerabilityAlert") && l.contains("deployment/stopme"))
        .unwrap();
    assert!(
        line.contains(&format!("image {image} of revision 1: ")),
        "{line}"
    );
    assert!(line.ends_with("; policy vuln-stop says stop"), "{line}");
    assert!(
        events.lines().any(|l| l.contains("VulnerabilityAlert")
            && l.contains("deployment/alertme")
            && l.ends_with("policy vuln-alert says alert")),
        "{events}"
    );
    // Still running during the grace period, gone after it, and not
    // replaced.
    assert_eq!(running_of(&env, "stopme-"), 2);
    wait_for(30, "the stopped replicas gone", || {
        running_of(&env, "stopme-") == 0
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(running_of(&env, "stopme-"), 0);
    let table = env.ok(&["get", "deployments"]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["stopme", "0/2"])),
        "{table}"
    );
    // `alert` only reported.
    assert_eq!(running_of(&env, "alertme-"), 2);
    // The decision is in the audit log.
    let log = std::fs::read_to_string(env.state().join("audit/moatd.log")).unwrap();
    assert!(log.contains("\"action\":\"VulnerabilityStop\""), "{log}");
    assert!(Path::new(&env.state().join("scan/alerts.log")).exists());
}
