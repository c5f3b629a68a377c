//! `containerd-shim-moat-v2`: containerd's task API v2 over ttrpc, for
//! moat. Parsing only; the work is in the library.

#![forbid(unsafe_code)]

fn main() {
    moat_shim::main();
}
