//! `moat scan` and `moat vulndb` end to end, on the project's fixtures.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moat_scan::fixtures;
use scan_common::{import_rootfs, moat, stderr, stdout};

mod scan_common;

struct Env {
    _t: tempfile::TempDir,
    root: std::path::PathBuf,
    osv: std::path::PathBuf,
    rootfs: std::path::PathBuf,
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let osv = t.path().join("osv");
    let rootfs = t.path().join("rootfs");
    fixtures::write_osv_dir(&osv).unwrap();
    fixtures::write_debian_rootfs(&rootfs).unwrap();
    Env {
        root,
        osv,
        rootfs,
        _t: t,
    }
}

#[test]
fn scan_without_advisories_is_an_error_not_a_clean_result() {
    let e = env();
    let o = moat(&e.root, &["scan", "--rootfs", e.rootfs.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "moat: error: no advisory database at {}: run `moat vulndb import PATH` with OSV data first\n",
            e.root.join("vulndb/advisories.sqlite").display()
        )
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn import_status_scan_formats_and_fail_on() {
    let e = env();
    let o = moat(&e.root, &["vulndb", "import", e.osv.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let n = fixtures::osv_records().len();
    assert!(
        out.starts_with(&format!(
            "imported {n} records from {}: {} added, 0 updated, 0 unchanged, 1 withdrawn\n",
            e.osv.display(),
            n - 1
        )),
        "{out}"
    );
    assert!(out.contains("skipped: 1 GIT ranges"), "{out}");
    assert!(
        out.contains("re-matched 0 stored images: 0 newly affected"),
        "{out}"
    );

    let o = moat(&e.root, &["vulndb", "status", "--format", "json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["advisories"], n as u64 - 1);
    assert_eq!(st["git_ranges_skipped"], 1);
    let o = moat(&e.root, &["vulndb", "status"]);
    assert!(stdout(&o).contains("last import:"), "{}", stdout(&o));

    let rootfs = e.rootfs.to_str().unwrap();
    let o = moat(&e.root, &["scan", "--rootfs", rootfs]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("CRITICAL (3)"), "{table}");
    assert!(table.contains("PACKAGE"), "{table}");
    assert!(
        table.contains("10 findings: 3 critical, 3 high, 3 medium, 0 low, 1 unknown"),
        "{table}"
    );
    // Severity groups in order.
    let crit = table.find("CRITICAL").unwrap();
    let high = table.find("HIGH").unwrap();
    let med = table.find("MEDIUM").unwrap();
    assert!(crit < high && high < med, "{table}");

    let o = moat(
        &e.root,
        &["scan", "--rootfs", rootfs, "--fail-on", "critical"],
    );
    assert_eq!(o.status.code(), Some(1));
    let o = moat(&e.root, &["scan", "--rootfs", rootfs, "--fail-on", "bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown severity \"bogus\": use one of low, medium, high, critical"),
        "{}",
        stderr(&o)
    );

    let o = moat(
        &e.root,
        &[
            "scan",
            "--rootfs",
            rootfs,
            "--format",
            "json",
            "--ignore-unfixed",
        ],
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 9);
    assert!(!ids.contains(&"DEBIAN-CVE-2024-12243"));
    assert_eq!(j["suppressed"], 1);

    let o = moat(&e.root, &["scan", "--rootfs", rootfs, "--format", "sarif"]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["version"], "2.1.0");
    assert_eq!(s["runs"][0]["results"].as_array().unwrap().len(), 10);

    let o = moat(
        &e.root,
        &["scan", "--rootfs", rootfs, "--format", "cyclonedx"],
    );
    assert!(o.status.success());
    let bom_path = e.root.join("bom.json");
    fs::write(&bom_path, &o.stdout).unwrap();
    let bom: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(bom["specVersion"], "1.5");
    assert_eq!(bom["vulnerabilities"].as_array().unwrap().len(), 10);

    // The SBOM scanned again gives the same findings.
    let o = moat(
        &e.root,
        &[
            "scan",
            "--sbom",
            bom_path.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        j["findings"].as_array().unwrap().len(),
        10,
        "{}",
        stdout(&o)
    );

    // Re-import: nothing changed.
    let o = moat(&e.root, &["vulndb", "import", e.osv.to_str().unwrap()]);
    assert!(
        stdout(&o).contains(&format!("0 added, 0 updated, {} unchanged", n - 1)),
        "{}",
        stdout(&o)
    );
}

#[test]
fn empty_rootfs_is_not_reported_clean() {
    let e = env();
    moat(&e.root, &["vulndb", "import", e.osv.to_str().unwrap()]);
    let empty = e.root.join("empty");
    fs::create_dir_all(empty.join("etc")).unwrap();
    let o = moat(&e.root, &["scan", "--rootfs", empty.to_str().unwrap()]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("Nothing could be checked: this is not a clean result."),
        "{out}"
    );
    assert!(!out.contains("No known vulnerabilities"), "{out}");
}

#[test]
fn bad_inputs_name_the_input() {
    let e = env();
    let broken = e.osv.join("broken.json");
    fs::write(&broken, "[1,2").unwrap();
    let o = moat(&e.root, &["vulndb", "import", e.osv.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with(&format!(
            "moat: error: {} is not a valid OSV record (fix or remove it, then import again): ",
            broken.display()
        )),
        "{}",
        stderr(&o)
    );
    fs::remove_file(&broken).unwrap();
    moat(&e.root, &["vulndb", "import", e.osv.to_str().unwrap()]);
    let not_bom = e.root.join("x.json");
    fs::write(&not_bom, "{\"spdxVersion\": \"SPDX-2.3\"}").unwrap();
    let o = moat(&e.root, &["scan", "--sbom", not_bom.to_str().unwrap()]);
    assert_eq!(
        stderr(&o),
        format!(
            "moat: error: {} is not a CycloneDX document (no \"bomFormat\": \"CycloneDX\"): --sbom takes CycloneDX JSON\n",
            not_bom.display()
        )
    );
    let o = moat(&e.root, &["scan", "--rootfs", not_bom.to_str().unwrap()]);
    assert_eq!(
        stderr(&o),
        format!(
            "moat: error: scanning {0}: {0} is not a directory: --rootfs needs an unpacked root filesystem\n",
            not_bom.display()
        )
    );
}

#[test]
fn import_alerts_on_stored_images_and_their_containers() {
    let e = env();
    let alpine = e.root.join("alpine");
    fixtures::write_alpine_rootfs(&alpine).unwrap();
    // The inventory is stored at import, before any advisory exists.
    let id = &import_rootfs(&e.root, &alpine, "alpine:3.18");
    assert!(e
        .root
        .join(format!("scan/inventories/{}.json", &id[7..]))
        .exists());
    // An inventory of an image removed since is dropped, not alerted on.
    let gone = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let inv = moat_scan::inventory::from_rootfs(&alpine).unwrap();
    moat_scan::store::save(&e.root, gone, &["old:1".to_string()], inv).unwrap();
    let planted = e.root.join("containers/evil");
    fs::create_dir_all(&planted).unwrap();
    fs::write(
        planted.join("state.json"),
        format!(r#"{{"id": "evil", "name": "evil", "image_id": "{id}", "pid": 1, "isolation": "sandbox", "created": "2024-01-01T00:00:00Z"}}"#),
    )
    .unwrap();
    let state = e.root.join("containers/c0ffee00c0ffee00");
    fs::create_dir_all(&state).unwrap();
    fs::write(
        state.join("state.json"),
        format!(r#"{{"id": "c0ffee00c0ffee00", "name": "edge", "image_id": "{id}", "pid": 4242, "isolation": "sandbox", "created": "2024-01-01T00:00:00Z"}}"#),
    )
    .unwrap();
    let o = moat(&e.root, &["vulndb", "import", e.osv.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(
        out.contains("re-matched 1 stored images: 1 newly affected"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "ALERT alpine:3.18 ({id}): ALPINE-CVE-2025-26519 (musl 1.2.4-r2, high), ALPINE-CVE-2024-0727 (libcrypto3 3.1.4-r5, medium)\n  running container c0ffee00c0ffee00 edge\n"
        )),
        "{out}"
    );
    let log = fs::read_to_string(e.root.join("scan/alerts.log")).unwrap();
    let alert: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(alert["containers"][0]["id"], "c0ffee00c0ffee00");
    // A record the runtime core does not trust (its directory is not an ID)
    // is not listed.
    assert_eq!(alert["containers"].as_array().unwrap().len(), 1, "{alert}");
    assert!(!e
        .root
        .join(format!("scan/inventories/{}.json", &gone[7..]))
        .exists());
    // Same data again: no new alert.
    let o = moat(&e.root, &["vulndb", "import", e.osv.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("1 stored images: 0 newly affected"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn watch_reimports_on_change_until_stopped() {
    let e = env();
    let alpine = e.root.join("alpine");
    fixtures::write_alpine_rootfs(&alpine).unwrap();
    import_rootfs(&e.root, &alpine, "alpine:3.18");
    let watched = e.root.join("watched");
    fs::create_dir_all(&watched).unwrap();
    fs::copy(
        e.osv.join("ALPINE-CVE-2024-0727.json"),
        watched.join("a.json"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(&e.root)
        .args([
            "scan",
            "--watch",
            watched.to_str().unwrap(),
            "--interval",
            "1",
            "--rounds",
            "300",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
        }
        panic!("timed out waiting for {needle:?}; saw {seen:?}");
    };
    let first = wait_for("ALERT alpine:3.18");
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("ALERT alpine:3.18") && l.contains("ALPINE-CVE-2024-0727")),
        "{first:?}"
    );
    fs::copy(
        e.osv.join("ALPINE-CVE-2025-26519.json"),
        watched.join("b.json"),
    )
    .unwrap();
    let second = wait_for("ALERT alpine:3.18");
    assert!(
        second.iter().any(|l| l.starts_with("imported 2 records")
            && l.contains("1 added, 0 updated, 1 unchanged")),
        "{second:?}"
    );
    assert!(
        second
            .iter()
            .any(|l| l.starts_with("ALERT alpine:3.18") && l.contains("ALPINE-CVE-2025-26519")),
        "{second:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn scan_image_from_the_store() {
    let e = env();
    moat(&e.root, &["vulndb", "import", e.osv.to_str().unwrap()]);
    let id = import_rootfs(&e.root, &e.rootfs, "debian-app:1");
    let o = moat(&e.root, &["scan", "debian-app:1", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["target"], format!("debian-app:1 ({})", &id[7..19]));
    let f = j["findings"].as_array().unwrap();
    assert_eq!(f.len(), 10);
    let bsd = f.iter().find(|f| f["package"] == "bsdutils").unwrap();
    assert_eq!(bsd["matched_name"], "util-linux");
    assert!(
        bsd["layer"].as_str().unwrap().starts_with("sha256:"),
        "{bsd}"
    );
    let o = moat(&e.root, &["scan", "debian-app:1"]);
    let table = stdout(&o);
    assert!(table.contains("bsdutils"), "{table}");
    assert!(
        table.contains(&format!(
            "debian-app:1 ({}) (Debian GNU/Linux 12 (bookworm))",
            &id[7..19]
        )),
        "{table}"
    );

    // busybox: no package database, said plainly.
    let img = e.root.join("busybox.tar");
    let o = moat(&e.root, &["dev", "test-image", "-o", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = moat(
        &e.root,
        &[
            "image",
            "import",
            img.to_str().unwrap(),
            "--name",
            "busybox:test",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = moat(&e.root, &["scan", "busybox:test"]);
    let out = stdout(&o);
    assert!(
        out.contains("Nothing could be checked: this is not a clean result."),
        "{out}"
    );
    assert!(out.contains("note: no OS package database found"), "{out}");
    let o = moat(&e.root, &["scan", "nosuch:1"]);
    assert_eq!(
        stderr(&o),
        "moat: error: no image matches \"nosuch:1\" (see `moat image ls`)\n"
    );
}

#[test]
fn run_refuses_an_image_the_policy_fails_on() {
    let e = env();
    moat(&e.root, &["vulndb", "import", e.osv.to_str().unwrap()]);
    let alpine = e.root.join("alpine");
    fixtures::write_alpine_rootfs(&alpine).unwrap();
    import_rootfs(&e.root, &alpine, "alpine:3.18");
    let policy = |extra: &str| {
        let p = e.root.join("policy.yaml");
        fs::write(
            &p,
            format!(
                "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: gated\nspec:\n  extends: baseline\n  vulnerabilities:\n    fail_on: high\n{extra}"
            ),
        )
        .unwrap();
        p
    };
    let run = |p: &Path| {
        moat(
            &e.root,
            &[
                "run",
                "--isolation",
                "sandbox",
                "--policy",
                p.to_str().unwrap(),
                "alpine:3.18",
                "/bin/true",
            ],
        )
    };
    let o = run(&policy(""));
    assert_eq!(o.status.code(), Some(125));
    let err = stderr(&o);
    assert!(
        err.contains("has 1 vulnerabilities at or above the policy's fail_on=high: ALPINE-CVE-2025-26519 (high) in musl 1.2.4-r2: fixed in 1.2.4_git20230717-r5; fix the image or add time-limited ignore entries to the policy"),
        "{err}"
    );
    // An expired ignore entry no longer applies, and the refusal says so.
    let o = run(&policy("    ignore:\n      - id: CVE-2025-26519\n        reason: not reachable\n        expires: 2020-01-01\n"));
    let err = stderr(&o);
    assert!(
        err.contains("(expired ignore entries no longer apply: CVE-2025-26519)"),
        "{err}"
    );
    // An active one lifts the refusal (whatever happens next is the run's business).
    let o = run(&policy("    ignore:\n      - id: ALPINE-CVE-2025-26519\n        reason: not reachable\n        expires: 2999-01-01\n"));
    assert!(
        !stderr(&o).contains("vulnerabilities at or above"),
        "{}",
        stderr(&o)
    );
}
