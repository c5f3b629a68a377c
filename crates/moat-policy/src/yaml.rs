//! A small, strict YAML document tree with source positions, built on the
//! event parser of `saphyr-parser`.
//!
//! Policies are security-relevant input, so this layer refuses the parts of
//! YAML that make a file mean something other than what it shows: anchors and
//! aliases, tags, duplicate keys, non-scalar keys and multi-document streams.

use std::borrow::Cow;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in the source text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// One YAML node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all.
    Null,
    /// A scalar and whether it was quoted (quoted scalars are always strings).
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Keys in source order; keys are scalars.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A short description of the node's kind for "found ..." messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "nothing (null)".to_string(),
            Value::Scalar { text, quoted } => {
                if *quoted {
                    format!("the string \"{text}\"")
                } else {
                    format!("`{text}`")
                }
            }
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
        }
    }

    /// The scalar text of a key node.
    pub fn key_text(&self) -> &str {
        match &self.value {
            Value::Scalar { text, .. } => text,
            _ => "",
        }
    }
}

/// A syntax error: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Node, Node)>, Option<Node>),
}

/// Parse one YAML document into a [`Node`] tree.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    loop {
        let (event, span) = match parser.next_event() {
            None => break,
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                return Err(SyntaxError {
                    pos: Pos {
                        line: e.marker().line(),
                        col: e.marker().col() + 1,
                    },
                    message: format!("invalid YAML: {}", e.info()),
                })
            }
        };
        let pos = Pos::of(&span);
        let node = match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => continue,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        pos,
                        message: "a policy file holds exactly one YAML document; remove the second `---` document or split it into its own file".to_string(),
                    });
                }
                continue;
            }
            Event::Alias(_) => return Err(SyntaxError {
                pos,
                message:
                    "YAML aliases (`*name`) are not allowed in policy files; write the value out"
                        .to_string(),
            }),
            Event::Scalar(text, style, anchor, tag) => {
                reject_anchor_tag(pos, anchor, tag.is_some())?;
                let quoted = !matches!(style, ScalarStyle::Plain);
                let value = if !quoted && is_null(&text) {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: Cow::into_owned(text),
                        quoted,
                    }
                };
                Node { pos, value }
            }
            Event::SequenceStart(anchor, tag) => {
                reject_anchor_tag(pos, anchor, tag.is_some())?;
                stack.push(Frame::Seq(pos, Vec::new()));
                continue;
            }
            Event::MappingStart(anchor, tag) => {
                reject_anchor_tag(pos, anchor, tag.is_some())?;
                stack.push(Frame::Map(pos, Vec::new(), None));
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(p, items)) => Node {
                    pos: p,
                    value: Value::Seq(items),
                },
                _ => {
                    return Err(SyntaxError {
                        pos,
                        message: "invalid YAML: unbalanced sequence".to_string(),
                    })
                }
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(p, items, None)) => Node {
                    pos: p,
                    value: Value::Map(items),
                },
                _ => {
                    return Err(SyntaxError {
                        pos,
                        message: "invalid YAML: unbalanced mapping".to_string(),
                    })
                }
            },
        };
        // Attach the finished node to its parent.
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, items, pending)) => match pending.take() {
                None => {
                    match &node.value {
                        Value::Scalar { .. } => {}
                        Value::Null => {
                            return Err(SyntaxError {
                                pos: node.pos,
                                message: "empty mapping key".to_string(),
                            })
                        }
                        _ => {
                            return Err(SyntaxError {
                                pos: node.pos,
                                message: "mapping keys must be plain names, not lists or mappings"
                                    .to_string(),
                            })
                        }
                    }
                    if let Some((first, _)) =
                        items.iter().find(|(k, _)| k.key_text() == node.key_text())
                    {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key `{}` (first defined at line {}); keep one",
                                node.key_text(),
                                first.pos.line
                            ),
                        });
                    }
                    *pending = Some(node);
                }
                Some(key) => items.push((key, node)),
            },
        }
    }
    root.ok_or(SyntaxError {
        pos: Pos { line: 1, col: 1 },
        message: "the file is empty; a policy starts with `apiVersion: moat.dev/v1`".to_string(),
    })
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn reject_anchor_tag(pos: Pos, anchor: usize, tagged: bool) -> Result<(), SyntaxError> {
    if anchor != 0 {
        return Err(SyntaxError {
            pos,
            message: "YAML anchors (`&name`) are not allowed in policy files; write the value out"
                .to_string(),
        });
    }
    if tagged {
        return Err(SyntaxError {
            pos,
            message: "YAML tags (`!tag`) are not allowed in policy files".to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let n = parse("a:\n  b: [x, 'y']\n").unwrap();
        let Value::Map(items) = &n.value else {
            panic!("not a map")
        };
        assert_eq!(items[0].0.pos, Pos { line: 1, col: 1 });
        let Value::Map(inner) = &items[0].1.value else {
            panic!("not a map")
        };
        assert_eq!(inner[0].0.pos, Pos { line: 2, col: 3 });
        let Value::Seq(seq) = &inner[0].1.value else {
            panic!("not a seq")
        };
        assert_eq!(seq[1].pos, Pos { line: 2, col: 10 });
        assert_eq!(
            seq[1].value,
            Value::Scalar {
                text: "y".into(),
                quoted: true
            }
        );
    }

    #[test]
    fn refuses_duplicates_aliases_and_multiple_documents() {
        assert_eq!(
            parse("a: 1\nb: 2\na: 3\n").unwrap_err().message,
            "duplicate key `a` (first defined at line 1); keep one"
        );
        assert!(parse("a: &x 1\nb: *x\n")
            .unwrap_err()
            .message
            .starts_with("YAML anchors"));
        assert!(parse("a: 1\n---\nb: 2\n")
            .unwrap_err()
            .message
            .starts_with("a policy file holds exactly one YAML document"));
        assert!(parse("a: [1, 2\n")
            .unwrap_err()
            .message
            .starts_with("invalid YAML"));
        assert!(parse("")
            .unwrap_err()
            .message
            .starts_with("the file is empty"));
    }
}
