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
