//! Errors of loading and compiling policies.

use std::path::PathBuf;

/// Why a policy could not be loaded or compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad input at a known place: syntax, unknown key or name, wrong type,
    /// contradiction. `message` says what is wrong and how to fix it.
    #[error("{file}:{line}:{col}: {message}")]
    Parse {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
    /// `extends` names something that is neither a built-in nor a file.
    #[error("unknown built-in policy `{name}`{hint}")]
    UnknownBuiltin { name: String, hint: String },
    /// `extends` loops back to a file already being loaded.
    #[error("`extends` cycle: {chain}")]
    ExtendsCycle { chain: String },
    /// A problem with the policy as a whole (no single position).
    #[error("{file}: {message}")]
    Validate { file: String, message: String },
    /// `auto` was asked for where there is no image to narrow it to.
    #[error("the `auto` policy is made per image from its profile, and {what} has no image; pass --image IMAGE, or name another policy (baseline)")]
    AutoWithoutImage { what: String },
    /// The compiler could not produce a plan.
    #[error("cannot compile policy `{name}`: {message}")]
    Compile { name: String, message: String },
}

impl PolicyError {
    /// The message without the location prefix, for tests and JSON output.
    pub fn message(&self) -> String {
        match self {
            PolicyError::Parse { message, .. } | PolicyError::Validate { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        }
    }
}

/// `; did you mean `x`?` or nothing.
pub(crate) fn hint(suggestion: Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}
