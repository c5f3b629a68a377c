//! moatd: single-node orchestration on the moat runtime core.
//!
//! - [`manifest`]: the Kubernetes subset (Deployment, Pod, Secret,
//!   ConfigMap, PersistentVolumeClaim, moat Policy), strict about fields.
//! - [`admission`]: Pod Security "restricted", image pinning, the moat
//!   policy and isolation, RBAC for the requester.
//! - [`store`]: SQLite (WAL): desired and observed state apart.
//! - [`api`] over [`http`]: the unix-socket API, authorised by peer
//!   credentials, with a per-uid limit of requests in flight.
//! - [`audit`]: the hash-chained audit log.
//! - [`reconcile`] with [`probe`]: replicas, restarts, rollouts.
//! - [`runtime`]: containers through the runtime core.
//! - [`files`]: ConfigMaps and Secrets as files, and each replica's
//!   derived policy (file volumes, `resources` limits).
//! - [`api`] threads run under the seccomp allowlist `seccomp/api.json`;
//!   the reconcile and advisory threads under [`workers`]'
//!   `seccomp/workers.json`, and start no process: [`spawner`], a
//!   separate unfiltered process, does that for them.

#![forbid(unsafe_code)]

pub mod admission;
pub mod advisories;
pub mod api;
pub mod apply;
pub mod audit;
pub mod daemon;
pub mod files;
pub mod http;
pub mod manifest;
pub mod privileges;
pub mod probe;
pub mod reconcile;
pub mod runtime;
pub mod spawner;
pub mod store;
pub mod template;
pub mod views;
pub mod workers;
