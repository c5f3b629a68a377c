//! Compiles the seccomp allowlist `seccomp/shim.json` into BPF at build
//! time: a malformed list fails the build, not a start (DESIGN rule 9).
fn main() {
    moat_policy::allowlist::build("seccomp/shim.json");
}
