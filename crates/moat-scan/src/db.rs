//! The advisory database: OSV records in SQLite under `<root>/vulndb/`,
//! indexed by (ecosystem, package). Re-import compares a hash of each
//! record and touches only records that changed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::cvss::Severity;
use crate::osv::{self, Affected};
use crate::util;

/// Errors of the advisory database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the advisory database directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the advisory database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("no advisory database at {}: run `moat vulndb import PATH` with OSV data first", path.display())]
    Missing { path: PathBuf },
    #[error("advisory database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("cannot read advisory input {}", path.display())]
    ReadInput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read zip archive {}", path.display())]
    ReadZip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("{origin} is not a valid OSV record (fix or remove it, then import again)")]
    ParseRecord {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} contains no OSV records (.json files or OSV all.zip archives)", path.display())]
    NoRecords { path: PathBuf },
    #[error("{origin} is {size} bytes, more than the {limit}-byte limit for one OSV record; nothing was imported (remove it, then import again)")]
    RecordTooLarge {
        origin: String,
        size: u64,
        limit: u64,
    },
}

/// What one import did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ImportReport {
    pub records: u64,
    pub added: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub withdrawn: u64,
    /// Records skipped because a copy with a newer `modified` time was
    /// already stored or seen earlier in the import.
    pub older_skipped: u64,
    pub git_ranges_skipped: u64,
    pub unsupported_ecosystem_entries: u64,
}

/// `moat vulndb status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub path: PathBuf,
    pub advisories: u64,
    pub affected_packages: u64,
    pub ecosystems: Vec<(String, u64)>,
    pub last_import: Option<String>,
    pub last_import_unix: Option<i64>,
    pub last_source: Option<String>,
    pub newest_modified: Option<String>,
    pub git_ranges_skipped: u64,
}

/// An advisory row joined with one of its affected entries.
#[derive(Debug, Clone)]
pub struct Hit {
    pub id: String,
    pub aliases: Vec<String>,
    pub summary: String,
    pub severity: Severity,
    pub score: Option<f64>,
    pub affected: Affected,
}

pub struct VulnDb {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS advisories (
    id TEXT PRIMARY KEY, hash BLOB NOT NULL, modified TEXT NOT NULL, summary TEXT NOT NULL,
    aliases TEXT NOT NULL, severity TEXT NOT NULL, score REAL
);
CREATE TABLE IF NOT EXISTS affected (
    advisory_id TEXT NOT NULL, ecosystem TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS affected_pkg ON affected(ecosystem, name);
CREATE INDEX IF NOT EXISTS affected_adv ON affected(advisory_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

fn db_file(dir: &Path) -> PathBuf {
    dir.join("advisories.sqlite")
}

fn severity_from_db(s: &str) -> Severity {
    Severity::from_label(s).unwrap_or(Severity::Unknown)
}

impl VulnDb {
    /// Open (creating if needed) the database in `dir` (`<root>/vulndb`).
    pub fn create(dir: &Path) -> Result<VulnDb, DbError> {
        fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        Self::open_file(&db_file(dir), true)
    }

    /// Open an existing database; [`DbError::Missing`] if none was imported.
    pub fn open(dir: &Path) -> Result<VulnDb, DbError> {
        let path = db_file(dir);
        if !path.exists() {
            return Err(DbError::Missing { path });
        }
        Self::open_file(&path, false)
    }

    fn open_file(path: &Path, create: bool) -> Result<VulnDb, DbError> {
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(std::time::Duration::from_secs(60))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            if create {
                conn.execute_batch(SCHEMA)?;
            }
            Ok(conn)
        };
        let conn = open().map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(VulnDb {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Import `input` into the database in `dir`, creating it if there is
    /// none. A new database is built in a staging file beside it and
    /// renamed into place only after a successful import, so a failure
    /// never leaves an empty database behind; an existing one is changed in
    /// one transaction ([`VulnDb::import`]), so a failure leaves it exactly
    /// as it was.
    pub fn import_into(
        dir: &Path,
        input: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(VulnDb, ImportReport), DbError> {
        let path = db_file(dir);
        if path.exists() {
            let mut db = Self::open_file(&path, true)?;
            let rep = db.import(input, progress)?;
            return Ok((db, rep));
        }
        // Nothing to import: fail before creating anything.
        let mut files = Vec::new();
        collect_inputs(input, &mut files)?;
        if files.is_empty() {
            return Err(DbError::NoRecords {
                path: input.to_path_buf(),
            });
        }
        fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let stage = tempfile::Builder::new()
            .prefix(".advisories.stage-")
            .suffix(".sqlite")
            .tempfile_in(dir)
            .map_err(|source| DbError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?
            .into_temp_path();
        let rep = {
            // A rollback journal while staging: one file to rename.
            let conn = Connection::open(&stage)
                .and_then(|c| c.execute_batch(SCHEMA).map(|_| c))
                .map_err(|source| DbError::Open {
                    path: stage.to_path_buf(),
                    source,
                })?;
            let mut db = VulnDb {
                conn,
                path: stage.to_path_buf(),
            };
            db.import(input, progress)?
        };
        stage.persist(&path).map_err(|e| DbError::CreateDir {
            path: path.clone(),
            source: e.error,
        })?;
        Ok((Self::open_file(&path, false)?, rep))
    }

    /// Import every OSV record under `input` (a `.json` file, a `.zip`
    /// archive, or a directory holding either, searched recursively), in one
    /// transaction: an error leaves the database as it was.
    pub fn import(
        &mut self,
        input: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ImportReport, DbError> {
        let mut files = Vec::new();
        collect_inputs(input, &mut files)?;
        if files.is_empty() {
            return Err(DbError::NoRecords {
                path: input.to_path_buf(),
            });
        }
        let tx = self.conn.transaction()?;
        let mut rep = ImportReport::default();
        let mut newest: Option<String> = None;
        {
            let mut get_hash = tx.prepare("SELECT hash, modified FROM advisories WHERE id = ?1")?;
            // Withdrawals of this import: an older copy of the record later
            // in the same import must not bring it back.
            let mut withdrawn_at: HashMap<String, String> = HashMap::new();
            let mut del_aff = tx.prepare("DELETE FROM affected WHERE advisory_id = ?1")?;
            let mut del_adv = tx.prepare("DELETE FROM advisories WHERE id = ?1")?;
            let mut put_adv = tx.prepare(
                "INSERT OR REPLACE INTO advisories (id, hash, modified, summary, aliases, severity, score)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut put_aff = tx.prepare(
                "INSERT INTO affected (advisory_id, ecosystem, name, data) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut handle = |origin: &dyn Fn() -> String, bytes: &[u8]| -> Result<(), DbError> {
                let adv = osv::parse(bytes).map_err(|source| DbError::ParseRecord {
                    origin: origin(),
                    source,
                })?;
                rep.records += 1;
                rep.git_ranges_skipped += adv.git_ranges;
                rep.unsupported_ecosystem_entries += adv.unsupported;
                if newest.as_deref().is_none_or(|n| newer(&adv.modified, n)) {
                    newest = Some(adv.modified.clone());
                }
                let hash = Sha256::digest(bytes).to_vec();
                let old: Option<(Vec<u8>, String)> = get_hash
                    .query_row(params![adv.id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                // Two copies of one advisory (in this import, or stored and
                // new): the newer `modified` wins, never the file order.
                let stored_newer = old.as_ref().is_some_and(|(_, m)| newer(m, &adv.modified))
                    || withdrawn_at
                        .get(&adv.id)
                        .is_some_and(|m| newer(m, &adv.modified));
                if stored_newer {
                    rep.older_skipped += 1;
                    return Ok(());
                }
                if adv.withdrawn {
                    if old.is_some() {
                        del_aff.execute(params![adv.id])?;
                        del_adv.execute(params![adv.id])?;
                    }
                    withdrawn_at.insert(adv.id.clone(), adv.modified.clone());
                    rep.withdrawn += 1;
                    return Ok(());
                }
                match old.map(|(h, _)| h) {
                    Some(h) if h == hash => {
                        rep.unchanged += 1;
                        return Ok(());
                    }
                    Some(_) => {
                        rep.updated += 1;
                        del_aff.execute(params![adv.id])?;
                    }
                    None => rep.added += 1,
                }
                let aliases = serde_json::to_string(&adv.aliases).unwrap_or_default();
                put_adv.execute(params![
                    adv.id,
                    hash,
                    adv.modified,
                    adv.summary,
                    aliases,
                    adv.severity.as_str(),
                    adv.score
                ])?;
                for a in &adv.affected {
                    let data = serde_json::to_string(a).unwrap_or_default();
                    put_aff.execute(params![adv.id, a.ecosystem, a.name, data])?;
                }
                Ok(())
            };
            let mut seen = 0u64;
            for f in &files {
                if f.extension().is_some_and(|e| e == "zip") {
                    let file = fs::File::open(f).map_err(|source| DbError::ReadInput {
                        path: f.clone(),
                        source,
                    })?;
                    let mut zip =
                        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|source| {
                            DbError::ReadZip {
                                path: f.clone(),
                                source,
                            }
                        })?;
                    let mut buf = Vec::new();
                    for i in 0..zip.len() {
                        let mut entry = zip.by_index(i).map_err(|source| DbError::ReadZip {
                            path: f.clone(),
                            source,
                        })?;
                        if !entry.is_file() || !entry.name().ends_with(".json") {
                            continue;
                        }
                        let name = entry.name().to_string();
                        let origin = || format!("{}!{name}", f.display());
                        // The declared size first: nothing is allocated
                        // for an entry that claims to be too large.
                        if entry.size() > MAX_RECORD {
                            return Err(DbError::RecordTooLarge {
                                origin: origin(),
                                size: entry.size(),
                                limit: MAX_RECORD,
                            });
                        }
                        buf.clear();
                        read_capped(&mut entry, &mut buf, &origin).map_err(|e| match e {
                            Capped::Io(source) => DbError::ReadInput {
                                path: f.join(&name),
                                source,
                            },
                            Capped::TooLarge(e) => e,
                        })?;
                        handle(&|| format!("{}!{name}", f.display()), &buf)?;
                        seen += 1;
                        if seen.is_multiple_of(10_000) {
                            progress(seen);
                        }
                    }
                } else {
                    let io = |source| DbError::ReadInput {
                        path: f.clone(),
                        source,
                    };
                    let origin = || f.display().to_string();
                    let mut file = fs::File::open(f).map_err(io)?;
                    let size = file.metadata().map_err(io)?.len();
                    if size > MAX_RECORD {
                        return Err(DbError::RecordTooLarge {
                            origin: origin(),
                            size,
                            limit: MAX_RECORD,
                        });
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    read_capped(&mut file, &mut bytes, &origin).map_err(|e| match e {
                        Capped::Io(source) => io(source),
                        Capped::TooLarge(e) => e,
                    })?;
                    handle(&|| f.display().to_string(), &bytes)?;
                    seen += 1;
                    if seen.is_multiple_of(10_000) {
                        progress(seen);
                    }
                }
            }
        }
        let now = util::unix_now();
        let source = fs::canonicalize(input).unwrap_or_else(|_| input.to_path_buf());
        let set = |k: &str, v: String| {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![k, v],
            )
        };
        set("last_import_unix", now.to_string())?;
        set("last_source", source.display().to_string())?;
        set("git_ranges_skipped", rep.git_ranges_skipped.to_string())?;
        let prev_newest: Option<String> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'newest_modified'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(n) = newest.filter(|n| prev_newest.as_ref().is_none_or(|p| n > p)) {
            set("newest_modified", n)?;
        }
        if rep.records == 0 {
            // Dropping the transaction rolls it back.
            return Err(DbError::NoRecords {
                path: input.to_path_buf(),
            });
        }
        let total: i64 = tx.query_row("SELECT COUNT(*) FROM advisories", [], |r| r.get(0))?;
        set("advisory_count", total.to_string())?;
        let counts = count_by_ecosystem(&tx)?;
        set(
            "ecosystem_counts",
            serde_json::to_string(&counts).unwrap_or_default(),
        )?;
        tx.commit()?;
        progress(rep.records);
        Ok(rep)
    }

    fn meta(&self, key: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// What is loaded and how old it is.
    pub fn status(&self) -> Result<Status, DbError> {
        let advisories: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM advisories", [], |r| r.get(0))?;
        let affected: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM affected", [], |r| r.get(0))?;
        let mut st = self.conn.prepare(
            "SELECT ecosystem, COUNT(DISTINCT advisory_id) FROM affected GROUP BY ecosystem ORDER BY ecosystem",
        )?;
        let ecosystems = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let last_unix = self.meta("last_import_unix")?.and_then(|s| s.parse().ok());
        Ok(Status {
            path: self.path.clone(),
            advisories: advisories as u64,
            affected_packages: affected as u64,
            ecosystems,
            last_import: last_unix.map(moat_plan::time::rfc3339),
            last_import_unix: last_unix,
            last_source: self.meta("last_source")?,
            newest_modified: self.meta("newest_modified")?,
            git_ranges_skipped: self
                .meta("git_ranges_skipped")?
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        })
    }

    /// Number of advisories loaded (as of the last import).
    pub fn count(&self) -> Result<u64, DbError> {
        Ok(self
            .meta("advisory_count")?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// Advisories per ecosystem key (as of the last import).
    pub fn ecosystem_counts(&self) -> Result<BTreeMap<String, u64>, DbError> {
        if let Some(c) = self
            .meta("ecosystem_counts")?
            .and_then(|s| serde_json::from_str(&s).ok())
        {
            return Ok(c);
        }
        count_by_ecosystem(&self.conn)
    }

    /// When advisories were last imported (RFC 3339).
    pub fn last_import(&self) -> Result<Option<String>, DbError> {
        Ok(self
            .meta("last_import_unix")?
            .and_then(|s| s.parse().ok())
            .map(moat_plan::time::rfc3339))
    }

    /// Every advisory entry for `name` under the ecosystem key `ecosystem`.
    pub fn lookup(&self, ecosystem: &str, name: &str) -> Result<Vec<Hit>, DbError> {
        let mut st = self.conn.prepare_cached(
            "SELECT a.id, a.aliases, a.summary, a.severity, a.score, f.data
             FROM affected f JOIN advisories a ON a.id = f.advisory_id
             WHERE f.ecosystem = ?1 AND f.name = ?2",
        )?;
        let rows = st.query_map(params![ecosystem, name], |r| {
            let aliases: String = r.get(1)?;
            let sev: String = r.get(3)?;
            let data: String = r.get(5)?;
            let mut affected: Affected = serde_json::from_str(&data).unwrap_or_default();
            affected.ecosystem = ecosystem.to_string();
            affected.name = name.to_string();
            Ok(Hit {
                id: r.get(0)?,
                aliases: serde_json::from_str(&aliases).unwrap_or_default(),
                summary: r.get(2)?,
                severity: severity_from_db(&sev),
                score: r.get(4)?,
                affected,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

/// Whether OSV time `a` is strictly newer than `b` (RFC 3339, compared as
/// times; an unparsable time is older than any parsable one, and two
/// unparsable ones are equal).
fn newer(a: &str, b: &str) -> bool {
    util::parse_timestamp(a) > util::parse_timestamp(b)
}

/// Largest OSV record read (declared or actual size): real records are
/// kilobytes; an archive entry claiming gigabytes is refused unread.
pub const MAX_RECORD: u64 = 16 << 20;

enum Capped {
    Io(std::io::Error),
    TooLarge(DbError),
}

/// Reads `r` to its end into `buf`, at most [`MAX_RECORD`] bytes: an entry
/// whose declared size was a lie still cannot grow memory past the cap.
fn read_capped(
    r: &mut dyn Read,
    buf: &mut Vec<u8>,
    origin: &dyn Fn() -> String,
) -> Result<(), Capped> {
    r.take(MAX_RECORD + 1)
        .read_to_end(buf)
        .map_err(Capped::Io)?;
    if buf.len() as u64 > MAX_RECORD {
        return Err(Capped::TooLarge(DbError::RecordTooLarge {
            origin: origin(),
            size: buf.len() as u64,
            limit: MAX_RECORD,
        }));
    }
    Ok(())
}

fn count_by_ecosystem(conn: &Connection) -> Result<BTreeMap<String, u64>, DbError> {
    let mut st = conn.prepare(
        "SELECT ecosystem, COUNT(DISTINCT advisory_id) FROM affected GROUP BY ecosystem",
    )?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn collect_inputs(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), DbError> {
    let meta = fs::metadata(path).map_err(|source| DbError::ReadInput {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|source| DbError::ReadInput {
            path: path.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let ft = fs::symlink_metadata(&p).map_err(|source| DbError::ReadInput {
            path: p.clone(),
            source,
        })?;
        if ft.is_dir() {
            collect_inputs(&p, out)?;
        } else if ft.is_file() && p.extension().is_some_and(|e| e == "json" || e == "zip") {
            out.push(p);
        }
    }
    Ok(())
}

/// A fingerprint of the advisory inputs under `path` (names, sizes, mtimes),
/// used by `moat scan --watch` to notice changes.
pub fn input_fingerprint(path: &Path) -> Option<Vec<u8>> {
    let mut files = Vec::new();
    collect_inputs(path, &mut files).ok()?;
    let mut h = Sha256::new();
    for f in files {
        let m = fs::metadata(&f).ok()?;
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(m.len().to_le_bytes());
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(mtime.to_le_bytes());
    }
    Some(h.finalize().to_vec())
}
