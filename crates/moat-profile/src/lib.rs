//! Least-privilege profiles for moat: static ELF analysis of an image's
//! entrypoint and libraries, recording of a workload's real needs, and the
//! attack-surface numbers of a policy.

pub mod bpf;
pub mod disasm;
pub mod ebpf;
pub mod elf;
pub mod image_profile;
pub mod libcmap;
pub mod measure;
pub mod profile;
pub mod record;
pub mod rootfs;
pub mod rootfs_profile;
pub mod static_analysis;
pub mod surface;
pub mod syscalls;
pub mod trace;
