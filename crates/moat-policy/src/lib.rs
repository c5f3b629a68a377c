//! The declarative permission model of moat: policy files, RBAC, and the
//! compiler that turns a policy into one [`Plan`] consumed by every isolation
//! backend. Pure logic: nothing here calls into Linux beyond reading files.
//!
//! ```
//! let policy = moat_policy::Policy::builtin("baseline").unwrap();
//! let plan = moat_policy::compile(&policy).unwrap();
//! assert!(plan.capabilities.is_empty());
//! assert!(!plan.seccomp.instructions.is_empty());
//! ```

#![forbid(unsafe_code)]

pub mod allowlist;
pub mod args;
pub mod auto;
pub mod bpf;
pub mod builtin;
mod compile;
pub mod docker;
mod error;
pub mod explain;
mod image_rules;
pub mod model;
mod parse;
pub mod rbac;
pub mod render;
mod suggest;
pub mod syscalls;
pub mod trust;
pub mod yaml;

use std::path::Path;

pub use compile::{compile, sort_mounts, DEFAULT_OPEN_FILES, DEFAULT_PIDS};
pub use error::PolicyError;
/// The compiled form of a policy ([`moat_plan`], data only).
pub use moat_plan as plan;
pub use moat_plan::{caps, Plan, ProcessSpec};
pub use model::Policy;
pub use parse::{parse_cpus, parse_size, API_VERSION};
pub use suggest::closest as suggest_closest;

impl Policy {
    /// A built-in policy by name (`baseline`, `restricted`; `auto` needs an
    /// image: [`Policy::builtin_for_image`]).
    pub fn builtin(name: &str) -> Result<Policy, PolicyError> {
        parse::Loader::new().load_builtin(name)
    }

    /// A built-in policy by name, `auto` narrowed to `image`.
    pub fn builtin_for_image(
        name: &str,
        image: &auto::ImageSyscalls,
    ) -> Result<Policy, PolicyError> {
        parse::Loader::for_image(image.clone()).load_builtin(name)
    }

    /// [`Policy::resolve`] where `auto` (named, or extended) is narrowed to `image`.
    pub fn resolve_for_image(
        name_or_path: &str,
        image: &auto::ImageSyscalls,
    ) -> Result<Policy, PolicyError> {
        let mut loader = parse::Loader::for_image(image.clone());
        if builtin::text(name_or_path).is_some() && !Path::new(name_or_path).exists() {
            loader.load_builtin(name_or_path)
        } else {
            loader.load_file(Path::new(name_or_path))
        }
    }

    /// Load a policy file, resolving `extends` (relative paths are relative
    /// to the file's directory).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        parse::Loader::new().load_file(path)
    }

    /// Parse policy text; `file` names it in error messages. Relative
    /// `extends` paths are resolved against the current directory.
    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
        parse::Loader::new().load_text(text, file, None)
    }

    /// A built-in name or a file path: what every command accepts as FILE.
    pub fn resolve(name_or_path: &str) -> Result<Policy, PolicyError> {
        if builtin::text(name_or_path).is_some() && !Path::new(name_or_path).exists() {
            Policy::builtin(name_or_path)
        } else {
            Policy::load(Path::new(name_or_path))
        }
    }
}
