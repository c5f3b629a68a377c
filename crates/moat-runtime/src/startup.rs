//! What a front end does for itself before it starts anything: descriptor
//! hygiene, SIGPIPE, and launching a detached container's monitor. The
//! system calls live in `sys.rs`; front ends stay free of `unsafe`.

pub use crate::sys::{adopt_fd, cloexec_inherited_fds, default_sigpipe, spawn_monitor};
