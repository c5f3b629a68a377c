//! The declarative permission model of moat: policy files, RBAC, and the
//! compiler that turns a policy into one [`Plan`] consumed by every isolation
//! backend. Pure logic: nothing here calls into Linux beyond reading files.

pub mod plan;

pub use plan::{Plan, ProcessSpec};
