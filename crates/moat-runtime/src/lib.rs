//! The runtime core shared by every front end (`moat run`, `moat ps`,
//! `moat kill` today; the OCI CLI, daemon and shim later).
//!
//! - [`id`]: typed identities (container ID and name, image reference,
//!   isolation).
//! - [`record`]: the one versioned state record per container, its
//!   status machine, its writer and its one reader (with the trust rules).
//! - [`pipeline`]: the run pipeline: authorise and audit, compile,
//!   resolve the image, gate on vulnerabilities with the same policy,
//!   merge the process settings, pick the backend.
//! - [`backend`]: the trait a backend (sandbox, vm) implements.
//! - [`spec`]: what a created container is to run, kept beside its record.
//! - [`monitor`]: the process that owns a detached container, its
//!   [`control`] socket and its [`logs`].
//!
//! The crate sits below the backends: `moat-sandbox` writes its records
//! through [`record`] and implements [`backend::Backend`]; a front end
//! supplies the steps that need its context ([`pipeline::Steps`]).

pub mod backend;
pub mod control;
pub mod id;
pub mod image_volumes;
pub mod logs;
pub mod monitor;
pub mod network;
pub mod pipeline;
pub mod process;
pub mod record;
pub mod spec;
pub mod startup;
mod sys;
pub mod volume_store;
pub mod volumes;

pub use backend::Backend;
pub use id::{ContainerId, ContainerName, ImageId, ImageRef, Isolation};
pub use record::{Record, StateError, Status};
pub use sys::{install_seccomp, install_seccomp_keeping_privileges};
