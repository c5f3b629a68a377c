//! Compiles the seccomp allowlists `seccomp/api.json` (the API threads)
//! and `seccomp/workers.json` (the reconcile and advisory threads) into
//! BPF at build time: a malformed list fails the build, not a start
//! (DESIGN rule 9).
fn main() {
    moat_policy::allowlist::build("seccomp/api.json");
    moat_policy::allowlist::build("seccomp/workers.json");
}
