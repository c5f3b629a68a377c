//! Print the syscall group table for docs/policy.md:
//! `cargo run -p moat-policy --example groups_markdown`.
fn main() {
    print!("{}", moat_policy::syscalls::groups_markdown());
}
