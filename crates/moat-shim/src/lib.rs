//! `containerd-shim-moat-v2`: containerd's task API v2 (containerd 1.6 and
//! 1.7) for moat, so that Kubernetes reaches moat through a RuntimeClass.
//! See docs/kubernetes.md.
//!
//! The shim is a front end: it turns ttrpc requests into moat-oci's
//! commands, which it runs in a child process of its own binary (see
//! [`runtime`]), and keeps what containerd asks about between them
//! (processes, stdio, exit statuses).

#![forbid(unsafe_code)]

pub mod exits;
mod oom;
pub mod options;
pub mod runtime;
mod service;
mod shim;
pub mod stdio;
mod sys;

pub use shim::base;

/// The runtime name containerd maps to this binary's name.
pub const RUNTIME_ID: &str = "io.containerd.moat.v2";

pub fn main() {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|a| a == runtime::OCI_ARG) {
        args.next();
        runtime::oci_main(args);
    }
    // Before any thread exists: every thread and child inherits it.
    if let Err(e) = sys::confine() {
        eprintln!("{RUNTIME_ID}: installing the shim's seccomp filter: {e}");
        std::process::exit(1);
    }
    containerd_shim::run::<shim::MoatShim>(RUNTIME_ID, None);
}
