//! Vulnerability scanning: package inventories, OSV advisories, matching, SBOMs. See docs/scanning.md.

pub mod version;
