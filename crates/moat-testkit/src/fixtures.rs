//! The policy and RBAC examples the docs show, as tests read them.

/// The `web` policy example (docs/policy.md).
pub const WEB: &str = include_str!("../fixtures/web.yaml");

/// The RBAC example: `developer` (alice, group dev) and `platform-admin`
/// (root).
pub const RBAC: &str = include_str!("../fixtures/rbac.yaml");
