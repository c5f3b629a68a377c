//! What a new user hit with the scanner (issue 12 item 1): a failed
//! advisory import, then scans and the run gate against a database that
//! holds nothing for the image's ecosystems. Nothing may be called clean
//! that was not checked. No root needed.

use std::fs;
use std::path::PathBuf;

use moat_scan::fixtures;
use scan_common::{import_rootfs, moat, stderr, stdout};

mod scan_common;

struct Env {
    t: tempfile::TempDir,
    root: PathBuf,
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    Env { root, t }
}

impl Env {
    fn path(&self, p: &str) -> PathBuf {
        self.t.path().join(p)
    }

    /// An OSV directory holding only the fixture records whose ID starts
    /// with one of `prefixes`.
    fn osv_only(&self, name: &str, prefixes: &[&str]) -> PathBuf {
        let dir = self.path(name);
        fs::create_dir_all(&dir).unwrap();
        for (file, text) in fixtures::osv_records() {
            if prefixes.iter().any(|p| file.starts_with(p)) {
                fs::write(dir.join(file), text).unwrap();
            }
        }
        dir
    }

    fn debian_image(&self) -> String {
        let rootfs = self.path("debian");
        fixtures::write_debian_rootfs(&rootfs).unwrap();
        import_rootfs(&self.root, &rootfs, "debian:12");
        "debian:12".into()
    }

    fn status(&self) -> Option<serde_json::Value> {
        let o = moat(&self.root, &["vulndb", "status", "--format", "json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).unwrap())
    }
}

/// The user's first step: `moat vulndb import EMPTYDIR` fails and leaves
/// no database behind; the scan that follows is not "no known
/// vulnerabilities". A failed import over a real database changes nothing.
#[test]
fn failed_import_changes_nothing_and_scan_is_never_clean() {
    let e = env();
    let image = e.debian_image();
    let empty = e.path("empty");
    fs::create_dir_all(&empty).unwrap();
    let o = moat(&e.root, &["vulndb", "import", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("contains no OSV records"),
        "{}",
        stderr(&o)
    );
    assert!(
        !e.root.join("vulndb/advisories.sqlite").exists(),
        "a failed import left a database"
    );
    let leftovers: Vec<_> = fs::read_dir(e.root.join("vulndb"))
        .map(|rd| rd.flatten().map(|d| d.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let o = moat(&e.root, &["scan", &image, "--fail-on", "low"]);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        !stdout(&o).contains("No known vulnerabilities"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("no advisory database"),
        "{}",
        stderr(&o)
    );

    // A zip archive without records fails the same way.
    let zip = e.path("empty.zip");
    {
        let f = fs::File::create(&zip).unwrap();
        let mut w = zip::ZipWriter::new(f);
        w.start_file("README", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut w, b"no records").unwrap();
        w.finish().unwrap();
    }
    let o = moat(&e.root, &["vulndb", "import", zip.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(!e.root.join("vulndb/advisories.sqlite").exists());

    // Over a real database, failed imports (no records, a bad record)
    // leave it exactly as it was.
    let alpine = e.osv_only("alpine-osv", &["ALPINE-"]);
    let o = moat(&e.root, &["vulndb", "import", alpine.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = e.status().unwrap();
    assert_eq!(before["advisories"], 3);
    let o = moat(&e.root, &["vulndb", "import", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let o = moat(&e.root, &["vulndb", "import", zip.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let bad = e.osv_only("bad-osv", &["DSA-", "DLA-"]);
    fs::write(bad.join("zz-broken.json"), "{ not json").unwrap();
    let o = moat(&e.root, &["vulndb", "import", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("zz-broken.json is not a valid OSV record"),
        "{}",
        stderr(&o)
    );
    assert_eq!(e.status().unwrap(), before);
}

/// The user's second finding: a database holding only Alpine advisories
/// gave a Debian image "no known vulnerabilities". Now the report says per
/// ecosystem (and release) what it was checked against, calls the Debian
/// packages not checked, and `--fail-on` and the run gate fail unless
/// `--allow-unchecked`.
#[test]
fn alpine_only_database_does_not_clear_a_debian_image() {
    let e = env();
    let image = e.debian_image();
    let alpine = e.osv_only("alpine-osv", &["ALPINE-"]);
    let o = moat(&e.root, &["vulndb", "import", alpine.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = moat(&e.root, &["scan", &image]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.contains("NOT CHECKED: the advisory database has no Debian:12 or Debian advisories: import OSV data for Debian"),
        "{table}"
    );
    assert!(table.contains(", 0 checked, "), "{table}");
    assert!(!table.contains("No known vulnerabilities"), "{table}");
    assert!(
        table.contains("Nothing could be checked: this is not a clean result."),
        "{table}"
    );

    let o = moat(&e.root, &["scan", &image, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let deb = v["coverage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ecosystem"] == "Debian:12")
        .unwrap()
        .clone();
    assert_eq!(deb["checked"], false, "{deb}");
    assert_eq!(
        deb["advisories"],
        serde_json::json!([{"key": "Debian:12", "advisories": 0}, {"key": "Debian", "advisories": 0}])
    );
    assert_eq!(v["checked"], 0);
    assert_eq!(v["not_checked"], v["packages"]);

    let o = moat(&e.root, &["scan", &image, "--fail-on", "low"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("packages were not checked (Debian:12 ("),
        "{}",
        stderr(&o)
    );
    let o = moat(
        &e.root,
        &["scan", &image, "--fail-on", "low", "--allow-unchecked"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // With Debian advisories too, the Debian packages are checked against
    // the release and the release-less base, counted separately.
    let debian = e.osv_only("debian-osv", &["DSA-", "DLA-", "DEBIAN-"]);
    let o = moat(&e.root, &["vulndb", "import", debian.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = moat(&e.root, &["scan", &image]);
    let table = stdout(&o);
    assert!(
        table.contains("packages  checked against 6 advisories (Debian:12 5, Debian 1)"),
        "{table}"
    );
    assert!(
        table.contains("NOT CHECKED: the advisory database has no npm advisories"),
        "{table}"
    );

    // The run gate (policy fail_on) refuses what it could not check.
    let policy = e.path("gated.yaml");
    fs::write(
        &policy,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: gated\nspec:\n  extends: baseline\n  vulnerabilities:\n    fail_on: critical\n    ignore:\n      - id: DSA-5900-1\n        reason: test\n        expires: 2999-01-01\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--isolation",
            "sandbox",
            "--policy",
            policy.to_str().unwrap(),
        ];
        args.extend(extra);
        args.extend([image.as_str(), "/bin/true"]);
        moat(&e.root, &args)
    };
    let o = run(&[]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("could not be checked against the policy's fail_on=critical: ")
            && err.contains("npm (")
            && err.contains("pass --allow-unchecked to run it anyway"),
        "{err}"
    );
    let o = run(&["--allow-unchecked"]);
    let err = stderr(&o);
    assert!(!err.contains("could not be checked"), "{err}");
    assert!(
        err.contains("moat: warning: not checked for vulnerabilities (--allow-unchecked): "),
        "{err}"
    );
}

/// `--format cyclonedx` is an SBOM: it needs no advisory database.
#[test]
fn cyclonedx_works_without_a_database() {
    let e = env();
    let rootfs = e.path("debian");
    fixtures::write_debian_rootfs(&rootfs).unwrap();
    let o = moat(
        &e.root,
        &[
            "scan",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--format",
            "cyclonedx",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["bomFormat"], "CycloneDX");
    assert!(v["components"].as_array().unwrap().len() > 10, "{v}");
    assert!(v["vulnerabilities"].as_array().unwrap().is_empty());
    assert!(
        v["metadata"]["properties"]
            .to_string()
            .contains("no advisory database: packages are listed, nothing was checked"),
        "{v}"
    );
    // Other formats still refuse to pretend.
    let o = moat(&e.root, &["scan", "--rootfs", rootfs.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
}

/// Issue 23 item 3: an image whose rpmdb.sqlite `Packages` is an endlessly
/// recursive view. Import finishes promptly and says the inventory failed;
/// the scan and the run gate report it instead of hanging.
#[test]
fn crafted_rpm_database_does_not_hang_import() {
    let e = env();
    let rootfs = e.path("rocky");
    fs::create_dir_all(rootfs.join("var/lib/rpm")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(
        rootfs.join("etc/os-release"),
        "ID=\"rocky\"\nVERSION_ID=\"9.3\"\n",
    )
    .unwrap();
    let conn = rusqlite::Connection::open(rootfs.join("var/lib/rpm/rpmdb.sqlite")).unwrap();
    conn.execute_batch(
        "CREATE VIEW Packages AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
         SELECT randomblob(16) AS blob FROM c;",
    )
    .unwrap();
    drop(conn);
    let start = std::time::Instant::now();
    import_rootfs(&e.root, &rootfs, "rocky:evil");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "import took {:?}",
        start.elapsed()
    );
    // import_rootfs asserted success; run it again to read the warning.
    let tarball = rootfs.with_extension("tar");
    let o = moat(
        &e.root,
        &[
            "image",
            "import",
            tarball.to_str().unwrap(),
            "--name",
            "rocky:evil2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("but its package inventory failed (")
            && stderr(&o).contains("has no `Packages` table (found: view)"),
        "{}",
        stderr(&o)
    );
    let alpine = e.osv_only("alpine-osv", &["ALPINE-"]);
    let o = moat(&e.root, &["vulndb", "import", alpine.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let start = std::time::Instant::now();
    let o = moat(&e.root, &["scan", "rocky:evil", "--fail-on", "low"]);
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(
            "has no `Packages` table (found: view); refused: its packages were not checked"
        ),
        "{}",
        stderr(&o)
    );
}
