//! Vulnerability scanning: package inventories, OSV advisories, matching, SBOMs. See docs/scanning.md.

#![forbid(unsafe_code)]

pub mod coverage;
pub mod cvss;
pub mod db;
pub mod ecosystem;
#[cfg(any(test, feature = "test-utils"))]
pub mod fixtures;
pub mod inventory;
pub mod matcher;
pub mod osv;
pub mod purl;
pub mod report;
pub mod sbom;
pub mod store;
pub mod util;
pub mod version;
