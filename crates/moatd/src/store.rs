//! The daemon's state in SQLite (WAL) under the state root. Desired state
//! (what was applied: objects and the revisions of each workload) and
//! observed state (replicas, rollouts, events) live in separate tables:
//! the reconcile loop reads the first and writes the second.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::manifest::Object;
use crate::template::Template;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the moatd database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("moatd database: {what}")]
    Query {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

const SCHEMA: &str = "
-- desired state
CREATE TABLE IF NOT EXISTS objects (
  kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
  applied_by TEXT NOT NULL, applied_at INTEGER NOT NULL,
  PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS revisions (
  owner TEXT NOT NULL, revision INTEGER NOT NULL, hash TEXT NOT NULL,
  template TEXT NOT NULL, created INTEGER NOT NULL,
  PRIMARY KEY (owner, revision));
CREATE TABLE IF NOT EXISTS targets (
  owner TEXT PRIMARY KEY, revision INTEGER NOT NULL, replicas INTEGER NOT NULL);
-- observed state
CREATE TABLE IF NOT EXISTS replicas (
  name TEXT PRIMARY KEY, owner TEXT NOT NULL, revision INTEGER NOT NULL,
  phase TEXT NOT NULL, restarts INTEGER NOT NULL DEFAULT 0,
  restart_times TEXT NOT NULL DEFAULT '[]', next_restart INTEGER NOT NULL DEFAULT 0,
  created INTEGER NOT NULL, message TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS rollouts (
  owner TEXT PRIMARY KEY, revision INTEGER NOT NULL, started INTEGER NOT NULL,
  state TEXT NOT NULL, message TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, type TEXT NOT NULL,
  object TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
  hash TEXT PRIMARY KEY, owner TEXT NOT NULL, action TEXT NOT NULL,
  stop_at INTEGER, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_head (
  id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
";

pub struct Store {
    conn: Mutex<Connection>,
}

/// An applied object and who applied it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub object: Object,
    pub applied_by: String,
    pub applied_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub owner: String,
    pub revision: u32,
    pub hash: String,
    pub template: Template,
    pub created: u64,
}

/// One replica as last observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    pub name: String,
    /// `deployment/web`, `pod/x`.
    pub owner: String,
    pub revision: u32,
    /// `Creating`, `Running`, `Exited`, `BackOff`, `Failed`, `Stopping`.
    pub phase: String,
    pub restarts: u32,
    /// Times (ms) of the restarts within the current interval.
    pub restart_times: Vec<u64>,
    pub next_restart: u64,
    pub created: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub owner: String,
    pub revision: u32,
    pub started: u64,
    /// `Progressing`, `Complete`, `Failed`.
    pub state: String,
    pub message: String,
}

/// A template an advisory update blocked (`block`) or stops (`stop`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub hash: String,
    pub owner: String,
    pub action: String,
    pub stop_at: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: i64,
    pub time: String,
    /// `Normal`, `Warning`.
    #[serde(rename = "type")]
    pub kind: String,
    pub object: String,
    pub reason: String,
    pub message: String,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn q(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

impl Store {
    pub fn open(state: &Path) -> Result<Store, StoreError> {
        let path = state.join("moatd.db");
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn c(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn put_object(&self, o: &Object, by: &str) -> Result<(), StoreError> {
        let body = serde_json::to_string(o).unwrap_or_default();
        self.c()
            .execute(
                "INSERT INTO objects (kind, name, body, applied_by, applied_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(kind, name) DO UPDATE SET body = ?3, applied_by = ?4, applied_at = ?5",
                params![o.kind(), o.name(), body, by, now_ms() as i64],
            )
            .map_err(q("storing an object"))?;
        Ok(())
    }

    pub fn delete_object(&self, kind: &str, name: &str) -> Result<bool, StoreError> {
        let n = self
            .c()
            .execute(
                "DELETE FROM objects WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )
            .map_err(q("deleting an object"))?;
        Ok(n > 0)
    }

    pub fn objects(&self, kind: &str) -> Result<Vec<Stored>, StoreError> {
        let c = self.c();
        let mut st = c
            .prepare(
                "SELECT body, applied_by, applied_at FROM objects WHERE kind = ?1 ORDER BY name",
            )
            .map_err(q("listing objects"))?;
        let rows = st
            .query_map(params![kind], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(q("listing objects"))?;
        let mut out = Vec::new();
        for row in rows {
            let (body, by, at) = row.map_err(q("listing objects"))?;
            if let Ok(object) = serde_json::from_str(&body) {
                out.push(Stored {
                    object,
                    applied_by: by,
                    applied_at: at as u64,
                });
            }
        }
        Ok(out)
    }

    pub fn object(&self, kind: &str, name: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self
            .objects(kind)?
            .into_iter()
            .find(|s| s.object.name() == name))
    }

    pub fn revisions(&self, owner: &str) -> Result<Vec<Revision>, StoreError> {
        let c = self.c();
        let mut st = c
            .prepare("SELECT revision, hash, template, created FROM revisions WHERE owner = ?1 ORDER BY revision")
            .map_err(q("listing revisions"))?;
        let rows = st
            .query_map(params![owner], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(q("listing revisions"))?;
        let mut out = Vec::new();
        for row in rows {
            let (rev, hash, tpl, created) = row.map_err(q("listing revisions"))?;
            if let Ok(template) = serde_json::from_str(&tpl) {
                out.push(Revision {
                    owner: owner.to_string(),
                    revision: rev as u32,
                    hash,
                    template,
                    created: created as u64,
                });
            }
        }
        Ok(out)
    }

    pub fn add_revision(&self, r: &Revision) -> Result<(), StoreError> {
        self.c()
            .execute(
                "INSERT OR REPLACE INTO revisions (owner, revision, hash, template, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    r.owner,
                    r.revision,
                    r.hash,
                    serde_json::to_string(&r.template).unwrap_or_default(),
                    r.created as i64
                ],
            )
            .map_err(q("storing a revision"))?;
        Ok(())
    }

    /// Forgets the oldest revisions of `owner` beyond the `keep` most
    /// recent besides `current` (`revisionHistoryLimit`); a revision that
    /// still has replicas is kept.
    pub fn prune_revisions(&self, owner: &str, current: u32, keep: u32) -> Result<(), StoreError> {
        let revs = self.revisions(owner)?;
        let busy: std::collections::HashSet<u32> = self
            .replicas(Some(owner))?
            .iter()
            .map(|r| r.revision)
            .collect();
        let older: Vec<u32> = revs
            .iter()
            .map(|r| r.revision)
            .filter(|r| *r != current)
            .collect();
        let drop = older.len().saturating_sub(keep as usize);
        for r in older.into_iter().take(drop) {
            if busy.contains(&r) {
                continue;
            }
            self.c()
                .execute(
                    "DELETE FROM revisions WHERE owner = ?1 AND revision = ?2",
                    params![owner, r],
                )
                .map_err(q("pruning revisions"))?;
        }
        Ok(())
    }

    /// The revision and replica count a workload should run.
    pub fn target(&self, owner: &str) -> Result<Option<(u32, u32)>, StoreError> {
        self.c()
            .query_row(
                "SELECT revision, replicas FROM targets WHERE owner = ?1",
                params![owner],
                |r| Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)?)),
            )
            .optional()
            .map_err(q("reading a target"))
    }

    pub fn set_target(&self, owner: &str, revision: u32, replicas: u32) -> Result<(), StoreError> {
        self.c()
            .execute(
                "INSERT OR REPLACE INTO targets (owner, revision, replicas) VALUES (?1, ?2, ?3)",
                params![owner, revision, replicas],
            )
            .map_err(q("storing a target"))?;
        Ok(())
    }

    /// Marks a workload deleted: the reconcile loop removes its replicas.
    pub fn set_target_deleted(&self, owner: &str) -> Result<(), StoreError> {
        self.c()
            .execute("DELETE FROM targets WHERE owner = ?1", params![owner])
            .map_err(q("deleting a target"))?;
        Ok(())
    }

    pub fn owners(&self) -> Result<Vec<String>, StoreError> {
        let c = self.c();
        let mut st = c
            .prepare("SELECT owner FROM targets UNION SELECT owner FROM replicas")
            .map_err(q("listing workloads"))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(q("listing workloads"))?;
        rows.collect::<Result<_, _>>()
            .map_err(q("listing workloads"))
    }

    /// Forgets a deleted workload's desired state.
    pub fn drop_workload(&self, owner: &str) -> Result<(), StoreError> {
        let c = self.c();
        for sql in [
            "DELETE FROM targets WHERE owner = ?1",
            "DELETE FROM revisions WHERE owner = ?1",
            "DELETE FROM rollouts WHERE owner = ?1",
        ] {
            c.execute(sql, params![owner])
                .map_err(q("deleting a workload"))?;
        }
        Ok(())
    }

    pub fn replicas(&self, owner: Option<&str>) -> Result<Vec<Replica>, StoreError> {
        let c = self.c();
        let mut st = c
            .prepare(
                "SELECT name, owner, revision, phase, restarts, restart_times, next_restart, created, message
                 FROM replicas WHERE ?1 IS NULL OR owner = ?1 ORDER BY created, name",
            )
            .map_err(q("listing replicas"))?;
        let rows = st
            .query_map(params![owner], |r| {
                Ok(Replica {
                    name: r.get(0)?,
                    owner: r.get(1)?,
                    revision: r.get(2)?,
                    phase: r.get(3)?,
                    restarts: r.get(4)?,
                    restart_times: serde_json::from_str(&r.get::<_, String>(5)?)
                        .unwrap_or_default(),
                    next_restart: r.get::<_, i64>(6)? as u64,
                    created: r.get::<_, i64>(7)? as u64,
                    message: r.get(8)?,
                })
            })
            .map_err(q("listing replicas"))?;
        rows.collect::<Result<_, _>>()
            .map_err(q("listing replicas"))
    }

    pub fn put_replica(&self, r: &Replica) -> Result<(), StoreError> {
        self.c()
            .execute(
                "INSERT OR REPLACE INTO replicas (name, owner, revision, phase, restarts, restart_times, next_restart, created, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    r.name,
                    r.owner,
                    r.revision,
                    r.phase,
                    r.restarts,
                    serde_json::to_string(&r.restart_times).unwrap_or_default(),
                    r.next_restart as i64,
                    r.created as i64,
                    r.message
                ],
            )
            .map_err(q("storing a replica"))?;
        Ok(())
    }

    pub fn remove_replica(&self, name: &str) -> Result<(), StoreError> {
        self.c()
            .execute("DELETE FROM replicas WHERE name = ?1", params![name])
            .map_err(q("removing a replica"))?;
        Ok(())
    }

    pub fn rollout(&self, owner: &str) -> Result<Option<Rollout>, StoreError> {
        self.c()
            .query_row(
                "SELECT revision, started, state, message FROM rollouts WHERE owner = ?1",
                params![owner],
                |r| {
                    Ok(Rollout {
                        owner: owner.to_string(),
                        revision: r.get(0)?,
                        started: r.get::<_, i64>(1)? as u64,
                        state: r.get(2)?,
                        message: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(q("reading a rollout"))
    }

    pub fn put_rollout(&self, r: &Rollout) -> Result<(), StoreError> {
        self.c()
            .execute(
                "INSERT OR REPLACE INTO rollouts (owner, revision, started, state, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.owner, r.revision, r.started as i64, r.state, r.message],
            )
            .map_err(q("storing a rollout"))?;
        Ok(())
    }

    pub fn add_event(
        &self,
        kind: &str,
        object: &str,
        reason: &str,
        message: &str,
    ) -> Result<i64, StoreError> {
        let c = self.c();
        c.execute(
            "INSERT INTO events (time, type, object, reason, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                moat_policy::plan::time::now_rfc3339(),
                kind,
                object,
                reason,
                message
            ],
        )
        .map_err(q("storing an event"))?;
        Ok(c.last_insert_rowid())
    }

    pub fn events(&self, after: i64) -> Result<Vec<Event>, StoreError> {
        let c = self.c();
        let mut st = c
            .prepare("SELECT seq, time, type, object, reason, message FROM events WHERE seq > ?1 ORDER BY seq LIMIT 1000")
            .map_err(q("listing events"))?;
        let rows = st
            .query_map(params![after], |r| {
                Ok(Event {
                    seq: r.get(0)?,
                    time: r.get(1)?,
                    kind: r.get(2)?,
                    object: r.get(3)?,
                    reason: r.get(4)?,
                    message: r.get(5)?,
                })
            })
            .map_err(q("listing events"))?;
        rows.collect::<Result<_, _>>().map_err(q("listing events"))
    }

    /// Blocks new replicas of the template `hash` (and stops the running
    /// ones at `stop_at`, ms, if given).
    pub fn block(&self, b: &Block) -> Result<(), StoreError> {
        self.c()
            .execute(
                "INSERT OR REPLACE INTO blocks (hash, owner, action, stop_at, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![b.hash, b.owner, b.action, b.stop_at.map(|t| t as i64), b.reason],
            )
            .map_err(q("storing a block"))?;
        Ok(())
    }

    pub fn blocked(&self, hash: &str) -> Result<Option<Block>, StoreError> {
        self.c()
            .query_row(
                "SELECT owner, action, stop_at, reason FROM blocks WHERE hash = ?1",
                params![hash],
                |r| {
                    Ok(Block {
                        hash: hash.to_string(),
                        owner: r.get(0)?,
                        action: r.get(1)?,
                        stop_at: r.get::<_, Option<i64>>(2)?.map(|t| t as u64),
                        reason: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(q("reading a block"))
    }

    pub fn get_kv(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.c()
            .query_row("SELECT value FROM kv WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(q("reading a setting"))
    }

    pub fn set_kv(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.c()
            .execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map_err(q("storing a setting"))?;
        Ok(())
    }

    pub fn set_audit_head(&self, seq: u64, hash: &str) -> Result<(), StoreError> {
        self.c()
            .execute(
                "INSERT OR REPLACE INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)",
                params![seq as i64, hash],
            )
            .map_err(q("storing the audit head"))?;
        Ok(())
    }

    pub fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.c()
            .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .optional()
            .map_err(q("reading the audit head"))
    }
}
