//! The daemon's audit log: one JSON line per decision, each carrying the
//! hash of the line before it, so that a removed or edited line breaks
//! the chain. The newest hash is also kept in the database, so that
//! cutting lines off the end is detected too.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot write the audit log {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the audit log {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub time: String,
    pub uid: u32,
    pub principal: String,
    /// `apply`, `delete`, `rollout-undo`, `restart`, ...
    pub action: String,
    /// `deployment.apps/web`.
    pub object: String,
    /// `allow`, `deny`, `event`.
    pub decision: String,
    pub reasons: Vec<String>,
    pub prev: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    #[serde(flatten)]
    entry: Entry,
    hash: String,
}

fn hash_of(entry: &Entry) -> String {
    let body = serde_json::to_string(entry).unwrap_or_default();
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// What the daemon appends with.
pub struct Audit {
    path: PathBuf,
    /// (last seq, last hash).
    head: Mutex<(u64, String)>,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub entries: u64,
    /// Empty when the chain is intact.
    pub problems: Vec<String>,
}

impl Audit {
    pub fn path_in(state: &Path) -> PathBuf {
        state.join("audit").join("moatd.log")
    }

    /// Opens the log under `state`, continuing its chain.
    pub fn open(state: &Path) -> Result<Audit, AuditError> {
        let path = Audit::path_in(state);
        let err = |source| AuditError::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        let mut head = (0, GENESIS.to_string());
        if let Ok(f) = std::fs::File::open(&path) {
            for line in std::io::BufReader::new(f).lines() {
                let line = line.map_err(err)?;
                if let Ok(l) = serde_json::from_str::<Line>(&line) {
                    head = (l.entry.seq, l.hash);
                }
            }
        }
        Ok(Audit {
            path,
            head: Mutex::new(head),
        })
    }

    /// Appends one decision; returns its (seq, hash) for the database.
    pub fn append(
        &self,
        uid: u32,
        principal: &str,
        action: &str,
        object: &str,
        decision: &str,
        reasons: &[String],
    ) -> Result<(u64, String), AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        let entry = Entry {
            seq: head.0 + 1,
            time: moat_policy::plan::time::now_rfc3339(),
            uid,
            principal: principal.to_string(),
            action: action.to_string(),
            object: object.to_string(),
            decision: decision.to_string(),
            reasons: reasons.to_vec(),
            prev: head.1.clone(),
        };
        let hash = hash_of(&entry);
        let seq = entry.seq;
        let mut text = serde_json::to_string(&Line {
            entry,
            hash: hash.clone(),
        })
        .unwrap_or_default();
        text.push('\n');
        let err = |source| AuditError::Write {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        *head = (seq, hash.clone());
        Ok((seq, hash))
    }
}

/// Checks the chain of the log at `path`; `head` is the newest (seq,
/// hash) the database recorded, to detect lines cut off the end.
pub fn verify(path: &Path, head: Option<(u64, String)>) -> Result<Verdict, AuditError> {
    let f = match std::fs::File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(AuditError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut problems = Vec::new();
    let (mut seq, mut prev) = (0u64, GENESIS.to_string());
    let mut count = 0;
    for (i, line) in f
        .into_iter()
        .flat_map(|f| std::io::BufReader::new(f).lines())
        .enumerate()
    {
        let n = i + 1;
        let line = line.map_err(|source| AuditError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        count += 1;
        let Ok(l) = serde_json::from_str::<Line>(&line) else {
            problems.push(format!("line {n}: not an audit entry"));
            continue;
        };
        if l.entry.seq != seq + 1 {
            problems.push(format!(
                "line {n}: entry {} follows entry {seq}: {} entr{} removed before it",
                l.entry.seq,
                l.entry.seq.saturating_sub(seq + 1),
                if l.entry.seq.saturating_sub(seq + 1) == 1 {
                    "y was"
                } else {
                    "ies were"
                }
            ));
        }
        if l.entry.prev != prev {
            problems.push(format!(
                "line {n}: entry {} does not chain to the entry before it (removed or edited)",
                l.entry.seq
            ));
        }
        if hash_of(&l.entry) != l.hash {
            problems.push(format!(
                "line {n}: entry {} was edited (its hash does not match its content)",
                l.entry.seq
            ));
        }
        seq = l.entry.seq;
        prev = l.hash;
    }
    if let Some((hseq, hhash)) = head {
        if hseq > seq {
            problems.push(format!(
                "the log ends at entry {seq} but the daemon wrote entry {hseq}: the last {} entr{} removed",
                hseq - seq,
                if hseq - seq == 1 { "y was" } else { "ies were" }
            ));
        } else if hseq == seq && hhash != prev {
            problems.push(format!("entry {seq} is not the one the daemon wrote"));
        }
    }
    Ok(Verdict {
        entries: count,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_or_edited_line_breaks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(dir.path()).unwrap();
        let mut head = None;
        for i in 0..4 {
            head = Some(
                a.append(
                    0,
                    "root",
                    "apply",
                    &format!("deployment.apps/w{i}"),
                    "allow",
                    &[],
                )
                .unwrap(),
            );
        }
        let path = Audit::path_in(dir.path());
        let v = verify(&path, head.clone()).unwrap();
        assert_eq!(v.entries, 4);
        assert!(v.problems.is_empty(), "{:?}", v.problems);

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let removed = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        std::fs::write(&path, removed).unwrap();
        let v = verify(&path, head.clone()).unwrap();
        assert_eq!(
            v.problems,
            vec![
                "line 2: entry 3 follows entry 1: 1 entry was removed before it".to_string(),
                "line 2: entry 3 does not chain to the entry before it (removed or edited)"
                    .to_string()
            ]
        );

        let edited = text.replacen("w1", "w9", 1);
        std::fs::write(&path, edited).unwrap();
        let v = verify(&path, head.clone()).unwrap();
        assert_eq!(
            v.problems,
            vec!["line 2: entry 2 was edited (its hash does not match its content)".to_string()]
        );

        std::fs::write(&path, format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2])).unwrap();
        let v = verify(&path, head).unwrap();
        assert_eq!(
            v.problems,
            vec!["the log ends at entry 3 but the daemon wrote entry 4: the last 1 entry was removed".to_string()]
        );
    }
}
