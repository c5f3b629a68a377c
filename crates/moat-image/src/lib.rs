//! Content-addressed OCI image store: import, verify, materialise rootfs,
//! export. See docs/image-store.md.

#![forbid(unsafe_code)]

pub mod digest;
pub mod fsat;
pub mod layer;
pub mod oci;
pub mod private;
pub mod quote;
pub mod unpack;

pub use unpack::{Limits, UnpackOptions};
pub mod lock;
pub mod mountpoints;
mod remove;
pub mod store;

pub use store::{
    ContainerUse, Image, ImageConfig, LayerInfo, RemoveOptions, Removed, Store, StoreError,
};
pub mod import;

pub use import::{ImportError, ImportOptions, NoProgress, Progress};
pub mod registry;
pub mod testimage;
