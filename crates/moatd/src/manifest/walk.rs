//! Strict walking of a YAML tree: every mapping is read against the list
//! of keys moatd implements, and any other key is refused with its path.

use std::collections::BTreeMap;

use moat_policy::yaml::{Node, Value};

use super::ManifestError;

/// Where a value sits: the document's object and the field path.
#[derive(Debug, Clone)]
pub struct Cx<'a> {
    pub file: &'a str,
    /// Line of the document's first line in the file, minus one.
    pub line_offset: usize,
    /// `Deployment web`.
    pub object: String,
}

impl Cx<'_> {
    pub fn err(&self, node: &Node, path: &str, message: impl Into<String>) -> ManifestError {
        ManifestError::Field {
            file: self.file.to_string(),
            line: node.pos.line + self.line_offset,
            object: self.object.clone(),
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// The entries of mapping `node` at `path`, refusing keys not in `known`.
    pub fn map<'n>(
        &self,
        node: &'n Node,
        path: &str,
        known: &[&str],
    ) -> Result<Fields<'n>, ManifestError> {
        let Value::Map(entries) = &node.value else {
            if node.value == Value::Null {
                return Ok(Fields {
                    entries: BTreeMap::new(),
                });
            }
            return Err(self.err(
                node,
                path,
                format!("expected a mapping, found {}", node.describe()),
            ));
        };
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            let key = k.key_text();
            let full = join(path, key);
            if !known.contains(&key) {
                return Err(self.err(k, &full, "not supported by moatd"));
            }
            out.insert(key.to_string(), (k, v));
        }
        Ok(Fields { entries: out })
    }

    pub fn string(&self, node: &Node, path: &str) -> Result<String, ManifestError> {
        match &node.value {
            Value::Scalar { text, .. } => Ok(text.clone()),
            _ => Err(self.err(
                node,
                path,
                format!("expected a string, found {}", node.describe()),
            )),
        }
    }

    pub fn int(&self, node: &Node, path: &str) -> Result<i64, ManifestError> {
        match &node.value {
            Value::Scalar {
                text,
                quoted: false,
            } => text
                .parse::<i64>()
                .map_err(|_| self.err(node, path, format!("expected an integer, found `{text}`"))),
            _ => Err(self.err(
                node,
                path,
                format!("expected an integer, found {}", node.describe()),
            )),
        }
    }

    pub fn uint(&self, node: &Node, path: &str) -> Result<u32, ManifestError> {
        let v = self.int(node, path)?;
        u32::try_from(v).map_err(|_| {
            self.err(
                node,
                path,
                format!("expected a non-negative integer, found {v}"),
            )
        })
    }

    pub fn bool(&self, node: &Node, path: &str) -> Result<bool, ManifestError> {
        match &node.value {
            Value::Scalar {
                text,
                quoted: false,
            } if text == "true" || text == "false" => Ok(text == "true"),
            _ => Err(self.err(
                node,
                path,
                format!("expected true or false, found {}", node.describe()),
            )),
        }
    }

    pub fn seq<'n>(&self, node: &'n Node, path: &str) -> Result<&'n [Node], ManifestError> {
        match &node.value {
            Value::Seq(items) => Ok(items),
            Value::Null => Ok(&[]),
            _ => Err(self.err(
                node,
                path,
                format!("expected a list, found {}", node.describe()),
            )),
        }
    }

    pub fn strings(&self, node: &Node, path: &str) -> Result<Vec<String>, ManifestError> {
        self.seq(node, path)?
            .iter()
            .enumerate()
            .map(|(i, n)| self.string(n, &format!("{path}[{i}]")))
            .collect()
    }

    /// A mapping of strings to strings (labels, annotations, data).
    pub fn string_map(
        &self,
        node: &Node,
        path: &str,
    ) -> Result<BTreeMap<String, String>, ManifestError> {
        let mut out = BTreeMap::new();
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let p = join(path, k.key_text());
                    out.insert(k.key_text().to_string(), self.string(v, &p)?);
                }
            }
            Value::Null => {}
            _ => {
                return Err(self.err(
                    node,
                    path,
                    format!("expected a mapping, found {}", node.describe()),
                ))
            }
        }
        Ok(out)
    }
}

/// The known entries of one mapping.
pub struct Fields<'n> {
    entries: BTreeMap<String, (&'n Node, &'n Node)>,
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .get(key)
            .map(|(_, v)| *v)
            .filter(|v| v.value != Value::Null)
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
