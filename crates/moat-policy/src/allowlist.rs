//! Allowlists of moat's own long-running processes (DESIGN rule 9: the
//! VMM supervisor, the container monitor): JSON data naming each system
//! call with the reason it is needed, compiled to classic BPF by the
//! compiler that compiles workload policies.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::model::{Conditions, DefaultAction, IoctlRule, Syscalls};
use crate::plan::SockFilter;

#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("{file} is not a valid allowlist")]
    Parse {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: unknown system call {name:?}")]
    UnknownSyscall { file: &'static str, name: String },
    #[error("{file}: {name:?} is listed twice")]
    Duplicate { file: &'static str, name: String },
    #[error("{file}: default_action {value:?} is not kill or errno")]
    BadDefault { file: &'static str, value: String },
    #[error("{file}: compiling the filter")]
    Compile {
        file: &'static str,
        #[source]
        source: crate::bpf::BpfError,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Allowlist {
    #[allow(dead_code)]
    about: String,
    default_action: String,
    allow: Vec<Entry>,
    /// Calls left out on purpose, with the reason (a list that allows
    /// nearly everything says what it denies).
    #[serde(default)]
    denied: Vec<Entry>,
    /// Allowed ioctl requests; absent: any request (but the never-allowed
    /// ones).
    #[serde(default)]
    ioctl: Option<Vec<IoctlEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    syscall: String,
    #[allow(dead_code)]
    why: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IoctlEntry {
    request: u32,
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    why: String,
}

/// The allowlist `text` (from `file`, for errors) as the policy
/// compiler's syscall section.
pub fn parse(file: &'static str, text: &str) -> Result<Syscalls, AllowlistError> {
    let list: Allowlist =
        serde_json::from_str(text).map_err(|source| AllowlistError::Parse { file, source })?;
    let default_action = match list.default_action.as_str() {
        "kill" => DefaultAction::Kill,
        "errno" => DefaultAction::Errno,
        other => {
            return Err(AllowlistError::BadDefault {
                file,
                value: other.to_string(),
            })
        }
    };
    let mut allow = BTreeSet::new();
    for e in list.allow {
        if crate::syscalls::number(&e.syscall).is_none() {
            return Err(AllowlistError::UnknownSyscall {
                file,
                name: e.syscall,
            });
        }
        if !allow.insert(e.syscall.clone()) {
            return Err(AllowlistError::Duplicate {
                file,
                name: e.syscall,
            });
        }
    }
    let mut denied = BTreeSet::new();
    for e in list.denied {
        if crate::syscalls::number(&e.syscall).is_none() {
            return Err(AllowlistError::UnknownSyscall {
                file,
                name: e.syscall,
            });
        }
        if allow.contains(&e.syscall) || !denied.insert(e.syscall.clone()) {
            return Err(AllowlistError::Duplicate {
                file,
                name: e.syscall,
            });
        }
    }
    let ioctl = match &list.ioctl {
        Some(l) => IoctlRule::Allow(l.iter().map(|i| i.request).collect()),
        None => IoctlRule::Any,
    };
    Ok(Syscalls {
        allow,
        denied,
        default_action,
        conditions: Conditions {
            socket_families: None,
            clone_deny_flags: 0,
            ioctl,
        },
    })
}

/// The compiled filter of the allowlist `text`.
pub fn compile(file: &'static str, text: &str) -> Result<Vec<SockFilter>, AllowlistError> {
    crate::bpf::compile(&parse(file, text)?)
        .map_err(|source| AllowlistError::Compile { file, source })
}

/// For a crate's build script (Firecracker's way): compiles the allowlist
/// at `path`, relative to the crate, into `$OUT_DIR/NAME.bpf` (NAME: the
/// file's stem), so that a malformed list fails the build, never a start.
/// The crate includes it with
/// `decode(include_bytes!(concat!(env!("OUT_DIR"), "/NAME.bpf")))`.
pub fn build(path: &'static str) {
    println!("cargo:rerun-if-changed={path}");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: cannot read the allowlist: {e}"));
    let prog = compile(path, &text).unwrap_or_else(|e| {
        let mut why = e.to_string();
        let mut cur = std::error::Error::source(&e);
        while let Some(c) = cur {
            why.push_str(&format!(": {c}"));
            cur = c.source();
        }
        panic!("{why}")
    });
    let stem = std::path::Path::new(path)
        .file_stem()
        .expect("an allowlist path names a file");
    let out = std::path::Path::new(&std::env::var_os("OUT_DIR").expect("OUT_DIR (a build script)"))
        .join(stem)
        .with_extension("bpf");
    std::fs::write(&out, encode(&prog))
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

/// The program as [`build`] stores it: per instruction `code` (2 bytes,
/// little endian), `jt`, `jf`, `k` (4 bytes, little endian).
pub fn encode(prog: &[SockFilter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.extend(i.code.to_le_bytes());
        out.extend([i.jt, i.jf]);
        out.extend(i.k.to_le_bytes());
    }
    out
}

/// A program stored by [`build`] (the build made it: its length is a
/// multiple of 8).
pub fn decode(bytes: &[u8]) -> Vec<SockFilter> {
    bytes
        .chunks_exact(8)
        .map(|c| SockFilter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_program_decodes_to_itself() {
        let text = r#"{"about": "t", "default_action": "kill",
            "allow": [{"syscall": "read", "why": "t"}, {"syscall": "exit_group", "why": "t"}]}"#;
        let prog = compile("t.json", text).unwrap();
        assert!(prog.len() > 4);
        assert_eq!(decode(&encode(&prog)), prog);
    }
}
