//! The hardened namespace sandbox backend. See docs/sandbox.md.
