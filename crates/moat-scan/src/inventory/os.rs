//! OS package databases: dpkg, apk, rpm (sqlite), and `/etc/os-release`.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::OptionalExtension;

use super::{InventoryError, Package};

/// `/etc/os-release` (os-release(5)).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OsRelease {
    pub id: String,
    pub version_id: String,
    pub pretty_name: String,
}

pub fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        match k.trim() {
            "ID" => os.id = v,
            "VERSION_ID" => os.version_id = v,
            "PRETTY_NAME" => os.pretty_name = v,
            _ => {}
        }
    }
    os
}

/// Paragraphs of `Key: value` fields (dpkg status, deb822), continuation
/// lines folded away.
fn deb822(text: &str) -> impl Iterator<Item = Vec<(&str, &str)>> {
    text.split("\n\n").filter_map(|para| {
        let fields: Vec<(&str, &str)> = para
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.starts_with('\t'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        (!fields.is_empty()).then_some(fields)
    })
}

/// A dpkg status file. `require_status`: `/var/lib/dpkg/status` lists
/// removed packages too (only `install ok installed` counts); distroless
/// `status.d/*` files have no Status field.
pub fn parse_dpkg(text: &str, path: &str, require_status: bool) -> Vec<Package> {
    let mut out = Vec::new();
    for fields in deb822(text) {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(k))
                .map(|(_, v)| *v)
        };
        let (Some(name), Some(version)) = (get("Package"), get("Version")) else {
            continue;
        };
        match get("Status") {
            Some(s) if s.split_whitespace().nth(2) != Some("installed") => continue,
            None if require_status => continue,
            _ => {}
        }
        let (source_name, source_version) = match get("Source") {
            Some(src) => match src.split_once('(') {
                Some((n, v)) => (
                    n.trim().to_string(),
                    v.trim_end_matches(')').trim().to_string(),
                ),
                None => (src.trim().to_string(), version.to_string()),
            },
            None => (name.to_string(), version.to_string()),
        };
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            kind: "dpkg".into(),
            ecosystem: String::new(),
            source_name: Some(source_name),
            source_version: Some(source_version),
            layer: None,
            path: path.to_string(),
        });
    }
    out
}

/// apk's `/lib/apk/db/installed`: `P:` name, `V:` version, `o:` origin
/// (the source package Alpine's advisories name).
pub fn parse_apk(text: &str, path: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut origin) = (None, None, None);
        for line in para.lines() {
            match line.split_at_checked(2) {
                Some(("P:", v)) => name = Some(v.trim()),
                Some(("V:", v)) => version = Some(v.trim()),
                Some(("o:", v)) => origin = Some(v.trim()),
                _ => {}
            }
        }
        if let (Some(n), Some(v)) = (name, version) {
            out.push(Package {
                name: n.to_string(),
                version: v.to_string(),
                kind: "apk".into(),
                ecosystem: String::new(),
                source_name: Some(origin.unwrap_or(n).to_string()),
                source_version: Some(v.to_string()),
                layer: None,
                path: path.to_string(),
            });
        }
    }
    out
}

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_SOURCERPM: u32 = 1044;

/// Parse an rpm header blob as stored in `rpmdb.sqlite` (index count, data
/// length, 16-byte index entries, data store; big-endian).
pub fn parse_rpm_header(blob: &[u8]) -> Option<(String, String, Option<String>)> {
    let be = |o: usize| -> Option<u32> {
        Some(u32::from_be_bytes(blob.get(o..o + 4)?.try_into().ok()?))
    };
    let il = be(0)? as usize;
    let dl = be(4)? as usize;
    let data_start = 8usize.checked_add(il.checked_mul(16)?)?;
    let data = blob.get(data_start..data_start.checked_add(dl)?)?;
    let (mut name, mut ver, mut rel, mut epoch, mut srpm) = (None, None, None, None, None);
    for k in 0..il {
        let e = 8 + k * 16;
        let (tag, ty, off) = (be(e)?, be(e + 4)?, be(e + 8)? as usize);
        let string = || -> Option<String> {
            let s = data.get(off..)?;
            let end = s.iter().position(|&b| b == 0)?;
            Some(String::from_utf8_lossy(&s[..end]).into_owned())
        };
        match (tag, ty) {
            (TAG_NAME, 6) => name = string(),
            (TAG_VERSION, 6) => ver = string(),
            (TAG_RELEASE, 6) => rel = string(),
            (TAG_SOURCERPM, 6) => srpm = string(),
            (TAG_EPOCH, 4) => {
                epoch = data
                    .get(off..off + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => {}
        }
    }
    let (name, ver, rel) = (name?, ver?, rel?);
    let evr = match epoch {
        Some(e) if e > 0 => format!("{e}:{ver}-{rel}"),
        _ => format!("{ver}-{rel}"),
    };
    Some((name, evr, srpm))
}

/// Bounds on reading an image's `rpmdb.sqlite`, which is hostile input.
#[derive(Debug, Clone, Copy)]
pub struct RpmLimits {
    /// Wall-clock time for the whole read (checked by a progress handler).
    pub deadline: Duration,
    /// Most rows read from `Packages`.
    pub max_rows: usize,
    /// Largest string or blob SQLite may build.
    pub max_length: i32,
}

impl Default for RpmLimits {
    fn default() -> Self {
        RpmLimits {
            deadline: Duration::from_secs(10),
            max_rows: 100_000,
            max_length: 16 << 20,
        }
    }
}

/// The packages in an `rpmdb.sqlite` file.
pub fn read_rpm_sqlite(file: &Path, path: &str) -> Result<Vec<Package>, InventoryError> {
    read_rpm_sqlite_with(file, path, RpmLimits::default())
}

/// [`read_rpm_sqlite`] with explicit limits. The file comes from an image:
/// it is opened read-only and immutable, with `trusted_schema` off,
/// defensive mode on, views and triggers disabled, `Packages` required to
/// be a plain table, a deadline through a progress handler and a row cap.
pub fn read_rpm_sqlite_with(
    file: &Path,
    path: &str,
    limits: RpmLimits,
) -> Result<Vec<Package>, InventoryError> {
    use rusqlite::config::DbConfig;
    use rusqlite::limits::Limit;
    use rusqlite::OpenFlags;

    let err = |source| InventoryError::RpmDb {
        path: path.to_string(),
        source,
    };
    let uri = format!("file:{}?immutable=1", uri_path(file));
    let conn = rusqlite::Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    let started = Instant::now();
    let deadline = limits.deadline;
    conn.progress_handler(1000, Some(move || started.elapsed() > deadline));
    for (cfg, on) in [
        (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
        (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
    ] {
        conn.set_db_config(cfg, on).map_err(err)?;
    }
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, limits.max_length)
        .map_err(err)?;
    let timed_out = |e: rusqlite::Error| {
        if started.elapsed() > deadline {
            InventoryError::RpmTimeout {
                path: path.to_string(),
                secs: deadline.as_secs_f64(),
            }
        } else {
            err(e)
        }
    };
    let kind: Option<String> = conn
        .query_row(
            "SELECT type FROM sqlite_schema WHERE name = 'Packages' COLLATE NOCASE",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(timed_out)?;
    match kind.as_deref() {
        Some("table") => {}
        other => {
            return Err(InventoryError::RpmNotATable {
                path: path.to_string(),
                found: other.unwrap_or("missing").to_string(),
            })
        }
    }
    let mut st = conn
        .prepare("SELECT blob FROM main.Packages LIMIT ?1")
        .map_err(timed_out)?;
    let mut rows = st.query([limits.max_rows as i64 + 1]).map_err(timed_out)?;
    let mut blobs = Vec::new();
    while let Some(row) = rows.next().map_err(timed_out)? {
        if blobs.len() == limits.max_rows {
            return Err(InventoryError::RpmTooManyRows {
                path: path.to_string(),
                max: limits.max_rows,
            });
        }
        blobs.push(row.get::<_, Vec<u8>>(0).map_err(timed_out)?);
    }
    let mut out = Vec::new();
    for b in blobs {
        let Some((name, evr, srpm)) = parse_rpm_header(&b) else {
            continue;
        };
        if name == "gpg-pubkey" {
            continue;
        }
        out.push(Package {
            name,
            version: evr,
            kind: "rpm".into(),
            ecosystem: String::new(),
            source_name: srpm.and_then(|s| {
                let s = s.strip_suffix(".src.rpm")?;
                let mut it = s.rsplitn(3, '-');
                let (_rel, _ver, n) = (it.next()?, it.next()?, it.next()?);
                Some(n.to_string())
            }),
            source_version: None,
            layer: None,
            path: path.to_string(),
        });
    }
    Ok(out)
}

/// `path` for a `file:` URI: `%`, `?` and `#` (and anything not printable
/// ASCII) percent-encoded.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'%' | b'?' | b'#' => out.push_str(&format!("%{b:02X}")),
            0x21..=0x7e => out.push(*b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Build an rpm header blob (for tests and fixtures).
pub fn build_rpm_header(
    name: &str,
    version: &str,
    release: &str,
    epoch: Option<u32>,
    srpm: &str,
) -> Vec<u8> {
    let mut index = Vec::new();
    let mut data = Vec::new();
    let mut add = |tag: u32, ty: u32, bytes: &[u8]| {
        let off = data.len() as u32;
        data.extend_from_slice(bytes);
        index.extend_from_slice(&tag.to_be_bytes());
        index.extend_from_slice(&ty.to_be_bytes());
        index.extend_from_slice(&off.to_be_bytes());
        index.extend_from_slice(&1u32.to_be_bytes());
    };
    let cstr = |s: &str| [s.as_bytes(), &[0]].concat();
    add(TAG_NAME, 6, &cstr(name));
    add(TAG_VERSION, 6, &cstr(version));
    add(TAG_RELEASE, 6, &cstr(release));
    add(TAG_SOURCERPM, 6, &cstr(srpm));
    if let Some(e) = epoch {
        add(TAG_EPOCH, 4, &e.to_be_bytes());
    }
    let il = (index.len() / 16) as u32;
    let mut blob = Vec::new();
    blob.extend_from_slice(&il.to_be_bytes());
    blob.extend_from_slice(&(data.len() as u32).to_be_bytes());
    blob.extend_from_slice(&index);
    blob.extend_from_slice(&data);
    blob
}
