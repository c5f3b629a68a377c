//! The only module of the CLI with `unsafe` code.

/// Restores the default action of SIGPIPE (the Rust runtime ignores it),
/// so that a command whose reader went away (`moat ... | head`) ends
/// quietly, as Unix tools do, instead of failing every later write and
/// panicking in `println!`.
pub fn default_sigpipe() {
    // SAFETY: `signal` with a valid signal number and `SIG_DFL` changes
    // only this process's disposition; no handler code is installed, and
    // `main` calls this before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
