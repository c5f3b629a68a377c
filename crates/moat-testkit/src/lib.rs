//! Test fixtures shared by the workspace's tests (a dev-dependency only):
//! [`rootfs`] builds busybox roots, [`host`] checks what VMs leave on the
//! host, [`cmd`] runs client commands with deadlines, [`containerd`] runs a
//! private containerd, [`tmux`] gives a real terminal, [`fixtures`] holds the policy and RBAC examples of the docs.

#![forbid(unsafe_code)]

pub mod cmd;
pub mod containerd;
pub mod fixtures;
pub mod host;
pub mod rootfs;
pub mod tmux;
