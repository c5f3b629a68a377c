//! Hostile inputs to the scanner from the second outside review (issue 23
//! items 3, 7 and 12): crafted rpm databases, oversized archive entries and
//! metadata, and duplicate advisories.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use moat_scan::inventory::{os, InventoryError};

/// An rpmdb.sqlite at `file` built by `sql`.
fn rpmdb(file: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(file).unwrap();
    conn.execute_batch(sql).unwrap();
}

const RECURSIVE_VIEW: &str = "CREATE VIEW Packages AS \
    WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
    SELECT randomblob(16) AS blob FROM c;";

/// Issue 23 item 3: `Packages` as an endlessly recursive view is refused
/// at once (it is not a table), without running it.
#[test]
fn recursive_view_is_refused_promptly() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("rpmdb.sqlite");
    rpmdb(&file, RECURSIVE_VIEW);
    let start = Instant::now();
    let err = os::read_rpm_sqlite(&file, "/var/lib/rpm/rpmdb.sqlite").unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(&err, InventoryError::RpmNotATable { found, .. } if found == "view"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the rpm database /var/lib/rpm/rpmdb.sqlite has no `Packages` table (found: view); refused: its packages were not checked"
    );
}

/// A real `Packages` table whose reading runs past the deadline is
/// abandoned by the progress handler, and too many rows are refused.
#[test]
fn deadline_and_row_cap() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("rpmdb.sqlite");
    rpmdb(
        &file,
        "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, blob BLOB NOT NULL);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000)
         INSERT INTO Packages (blob) SELECT x'00' FROM c;",
    );
    let limits = os::RpmLimits {
        deadline: Duration::ZERO,
        ..os::RpmLimits::default()
    };
    let err = os::read_rpm_sqlite_with(&file, "/r", limits).unwrap_err();
    assert!(matches!(err, InventoryError::RpmTimeout { .. }), "{err:?}");
    let limits = os::RpmLimits {
        max_rows: 100,
        ..os::RpmLimits::default()
    };
    let err = os::read_rpm_sqlite_with(&file, "/r", limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the rpm database /r has more than 100 packages; refused: its packages were not checked"
    );
    // Within the limits the same file reads (the blobs are not headers).
    assert!(os::read_rpm_sqlite(&file, "/r").unwrap().is_empty());
}

/// A generated column that would build a 1 GB blob stops at SQLite's
/// length limit instead of allocating it.
#[test]
fn huge_generated_blob_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("rpmdb.sqlite");
    rpmdb(
        &file,
        "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, n INTEGER, \
             blob BLOB GENERATED ALWAYS AS (zeroblob(n)) VIRTUAL);
         INSERT INTO Packages (n) VALUES (1000000000);",
    );
    let start = Instant::now();
    let err = os::read_rpm_sqlite(&file, "/r").unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, InventoryError::RpmDb { .. }), "{err:?}");
    let _ = fs::remove_file(&file);
}

/// Peak resident memory of this process (kB), from /proc/self/status.
fn vm_hwm_kb() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Issue 23 item 7: a layer with 30 Cargo.lock files of 60 MB each (1.8 GB
/// of metadata; the review saw 1.8 GB RSS). The inventory stops at its
/// metadata budget with a clear error, and the peak RSS of the process that
/// ran it (a child, so that other tests do not count) stays bounded.
#[test]
fn many_large_lockfiles_stay_within_a_memory_bound() {
    const FILES: usize = 30;
    const SIZE: u64 = 60 << 20;
    if std::env::var_os("MOAT_SCAN_LOCKFILE_CHILD").is_some() {
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let gen = std::thread::spawn(move || {
            let mut b = tar::Builder::new(writer);
            for i in 0..FILES {
                let mut h = tar::Header::new_gnu();
                h.set_size(SIZE);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                let data = std::io::Read::take(std::io::repeat(b'#'), SIZE);
                if b.append_data(&mut h, format!("app{i}/Cargo.lock"), data)
                    .is_err()
                {
                    return;
                }
            }
            let _ = b.finish();
        });
        let mut c = moat_scan::inventory::Collector::new();
        let res = c.add_layer("sha256:big", &reader);
        drop(reader);
        let _ = gen.join();
        match res {
            Ok(()) => println!("RESULT: ok"),
            Err(e) => println!("RESULT: {e}"),
        }
        println!("HWM: {}", vm_hwm_kb());
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "many_large_lockfiles_stay_within_a_memory_bound",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MOAT_SCAN_LOCKFILE_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // libtest prints `test NAME ... ` on the line the output starts on.
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.split_once(key).map(|(_, v)| v.to_string()))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
    };
    let result = field("RESULT: ");
    let hwm: u64 = field("HWM: ").parse().unwrap();
    assert_eq!(
        result,
        format!(
            "the image's package metadata (lockfiles, package databases) goes past {} bytes at /app4/Cargo.lock: the inventory was refused, its packages were not checked",
            moat_scan::inventory::MAX_METADATA_TOTAL
        )
    );
    // 256 MiB of metadata held, plus the test binary: far below 1.8 GB.
    assert!(hwm < 450 * 1024, "peak RSS {hwm} kB");
}

/// Issue 23 item 7: an OSV zip whose entry declares 3 GiB is refused from
/// its declared size, before anything is read or allocated; the database
/// is not created, or stays as it was.
#[test]
fn zip_entry_with_huge_declared_size_is_refused_unread() {
    let t = tempfile::tempdir().unwrap();
    let zip_path = t.path().join("all.zip");
    {
        let f = fs::File::create(&zip_path).unwrap();
        let mut w = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("BIG-1.json", opts).unwrap();
        std::io::Write::write_all(&mut w, b"{}").unwrap();
        w.finish().unwrap();
    }
    // Declare 3 GiB in the local and central headers.
    let mut bytes = fs::read(&zip_path).unwrap();
    let declared: u32 = 3 << 30;
    let find = |b: &[u8], sig: &[u8]| b.windows(4).position(|w| w == sig).unwrap();
    let local = find(&bytes, b"PK\x03\x04");
    bytes[local + 22..local + 26].copy_from_slice(&declared.to_le_bytes());
    let central = find(&bytes, b"PK\x01\x02");
    bytes[central + 24..central + 28].copy_from_slice(&declared.to_le_bytes());
    fs::write(&zip_path, &bytes).unwrap();

    let dir = t.path().join("vulndb");
    let before = vm_hwm_kb();
    let err = moat_scan::db::VulnDb::import_into(&dir, &zip_path, &mut |_| {})
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "{}!BIG-1.json is 3221225472 bytes, more than the 16777216-byte limit for one OSV record; nothing was imported (remove it, then import again)",
            zip_path.display()
        )
    );
    // Nothing near 3 GiB was allocated (the peak grew by far less).
    assert!(vm_hwm_kb() - before < 256 * 1024);
    assert!(!dir.join("advisories.sqlite").exists());
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);

    // Over an existing database: refused the same way, nothing changes.
    let osv = t.path().join("osv");
    moat_scan::fixtures::write_osv_dir(&osv).unwrap();
    let (db, _) = moat_scan::db::VulnDb::import_into(&dir, &osv, &mut |_| {}).unwrap();
    let st = db.status().unwrap();
    drop(db);
    let err = moat_scan::db::VulnDb::import_into(&dir, &zip_path, &mut |_| {})
        .err()
        .unwrap();
    assert!(
        matches!(err, moat_scan::db::DbError::RecordTooLarge { .. }),
        "{err}"
    );
    let db = moat_scan::db::VulnDb::open(&dir).unwrap();
    let after = db.status().unwrap();
    assert_eq!(
        (after.advisories, after.affected_packages, after.last_import),
        (st.advisories, st.affected_packages, st.last_import)
    );
}

fn advisory(id: &str, modified: &str, fixed: &str) -> String {
    format!(
        r#"{{"id": "{id}", "modified": "{modified}", "summary": "fixed in {fixed}",
  "affected": [{{"package": {{"ecosystem": "npm", "name": "left-pad"}},
    "ranges": [{{"type": "SEMVER", "events": [{{"introduced": "0"}}, {{"fixed": "{fixed}"}}]}}]}}]}}"#
    )
}

fn summary_of(dir: &Path, id: &str) -> String {
    let db = moat_scan::db::VulnDb::open(dir).unwrap();
    let hits = db.lookup("npm", "left-pad").unwrap();
    assert_eq!(hits.len(), 1, "{}", hits.len());
    assert_eq!(hits[0].id, id);
    hits[0].summary.clone()
}

/// Issue 23 item 12: the same advisory twice in one import resolves by its
/// `modified` time, not by which file comes last; times compare as times
/// (a fraction of a second is newer than none), and a later import of an
/// older copy does not replace the stored newer one.
#[test]
fn newer_modified_wins_over_file_order() {
    let t = tempfile::tempdir().unwrap();
    let osv = t.path().join("osv");
    fs::create_dir_all(&osv).unwrap();
    // Sorted a, b: the older copy comes last.
    fs::write(
        osv.join("a.json"),
        advisory("GHSA-dup", "2024-07-01T00:00:00Z", "2.0.0"),
    )
    .unwrap();
    fs::write(
        osv.join("b.json"),
        advisory("GHSA-dup", "2024-01-01T00:00:00Z", "1.0.0"),
    )
    .unwrap();
    let dir = t.path().join("db");
    let (_, rep) = moat_scan::db::VulnDb::import_into(&dir, &osv, &mut |_| {}).unwrap();
    assert_eq!((rep.added, rep.older_skipped), (1, 1));
    assert_eq!(summary_of(&dir, "GHSA-dup"), "fixed in 2.0.0");

    // The newer copy last, with a fraction of a second: it replaces.
    let osv2 = t.path().join("osv2");
    fs::create_dir_all(&osv2).unwrap();
    fs::write(
        osv2.join("a.json"),
        advisory("GHSA-dup", "2024-07-01T00:00:00Z", "2.0.0"),
    )
    .unwrap();
    fs::write(
        osv2.join("b.json"),
        advisory("GHSA-dup", "2024-07-01T00:00:00.5Z", "2.5.0"),
    )
    .unwrap();
    moat_scan::db::VulnDb::import_into(&dir, &osv2, &mut |_| {}).unwrap();
    assert_eq!(summary_of(&dir, "GHSA-dup"), "fixed in 2.5.0");

    // An older copy imported later is skipped.
    let osv3 = t.path().join("osv3");
    fs::create_dir_all(&osv3).unwrap();
    fs::write(
        osv3.join("x.json"),
        advisory("GHSA-dup", "2023-01-01T00:00:00Z", "0.5.0"),
    )
    .unwrap();
    let (_, rep) = moat_scan::db::VulnDb::import_into(&dir, &osv3, &mut |_| {}).unwrap();
    assert_eq!(rep.older_skipped, 1);
    assert_eq!(summary_of(&dir, "GHSA-dup"), "fixed in 2.5.0");

    // A withdrawal is not undone by an older copy later in the same import.
    let osv4 = t.path().join("osv4");
    fs::create_dir_all(&osv4).unwrap();
    fs::write(
        osv4.join("a.json"),
        r#"{"id": "GHSA-dup", "modified": "2025-01-01T00:00:00Z", "withdrawn": "2025-01-01T00:00:00Z", "affected": []}"#,
    )
    .unwrap();
    fs::write(
        osv4.join("b.json"),
        advisory("GHSA-dup", "2024-07-02T00:00:00Z", "3.0.0"),
    )
    .unwrap();
    moat_scan::db::VulnDb::import_into(&dir, &osv4, &mut |_| {}).unwrap();
    let db = moat_scan::db::VulnDb::open(&dir).unwrap();
    assert!(db.lookup("npm", "left-pad").unwrap().is_empty());
}
