//! Field offsets of a tracepoint, read from its tracefs `format` file at
//! run time (they change between kernels: `sched_process_fork`'s comms
//! became `__data_loc` strings in 6.x).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read the tracepoint description {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no field {field:?}")]
    MissingField { path: PathBuf, field: String },
    #[error("{path}: cannot parse the tracepoint id {text:?}")]
    BadId { path: PathBuf, text: String },
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u16,
    pub size: u16,
}

/// A tracepoint: its perf id and its fields.
#[derive(Debug, Clone)]
pub struct Tracepoint {
    pub name: String,
    pub id: u64,
    pub fields: HashMap<String, Field>,
    dir: PathBuf,
}

impl Tracepoint {
    /// Reads `<tracefs>/events/<category>/<name>/{id,format}`.
    pub fn load(tracefs: &Path, category: &str, name: &str) -> Result<Tracepoint, FormatError> {
        let dir = tracefs.join("events").join(category).join(name);
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read_to_string(&path).map_err(|source| FormatError::Read { path, source })
        };
        let id_text = read("id")?;
        let id = id_text.trim().parse().map_err(|_| FormatError::BadId {
            path: dir.join("id"),
            text: id_text.trim().to_string(),
        })?;
        Ok(Tracepoint {
            name: format!("{category}/{name}"),
            id,
            fields: parse_format(&read("format")?),
            dir,
        })
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Result<Field, FormatError> {
        self.fields
            .get(name)
            .copied()
            .ok_or_else(|| FormatError::MissingField {
                path: self.dir.join("format"),
                field: name.to_string(),
            })
    }
}

/// The fields of a `format` file: `field:TYPE NAME[N]; offset:O; size:S; ...`.
pub fn parse_format(text: &str) -> HashMap<String, Field> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in line.trim().split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.parse().ok();
            } else if let Some(s) = part.strip_prefix("size:") {
                size = s.parse().ok();
            }
        }
        if let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) {
            let last = decl.split_whitespace().last().unwrap_or("");
            let name = last.split('[').next().unwrap_or("");
            if !name.is_empty() {
                out.insert(name.to_string(), Field { offset, size });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_of_6x_formats() {
        let text = "name: sched_process_fork\nID: 366\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
\tfield:unsigned long args[6];\toffset:16;\tsize:48;\tsigned:0;\n\
\nprint fmt: \"comm=%s pid=%d\", __get_str(parent_comm), REC->parent_pid\n";
        let f = parse_format(text);
        assert_eq!(f["parent_comm"], Field { offset: 8, size: 4 });
        assert_eq!(
            f["parent_pid"],
            Field {
                offset: 12,
                size: 4
            }
        );
        assert_eq!(
            f["args"],
            Field {
                offset: 16,
                size: 48
            }
        );
        assert_eq!(f["common_pid"], Field { offset: 4, size: 4 });
        assert_eq!(f.len(), 5);
    }
}
