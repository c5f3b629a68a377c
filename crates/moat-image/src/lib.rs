//! Content-addressed OCI image store: import, verify, materialise rootfs,
//! export. See docs/image-store.md.

pub mod digest;
mod fsat;
pub mod oci;
pub mod unpack;

pub use unpack::{Limits, UnpackOptions};
mod lock;
mod remove;
pub mod store;

pub use store::{Image, ImageConfig, LayerInfo, RemoveOptions, Removed, Store, StoreError};
pub mod import;

pub use import::{ImportError, ImportOptions, NoProgress, Progress};
pub mod registry;
pub mod testimage;
