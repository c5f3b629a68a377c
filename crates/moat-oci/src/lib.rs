//! moat as a runc-compatible OCI runtime. See docs/oci.md.

pub mod args;
pub mod seccomp;

/// Carries out one command; returns the process exit code.
pub fn main(cli: args::Cli) -> i32 {
    let _ = cli;
    eprintln!("moat-oci: not implemented yet");
    1
}
