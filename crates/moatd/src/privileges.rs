//! moatd's own capabilities (DESIGN rule 9). Once its spawner runs (the
//! one process that mounts, enters namespaces and starts `moat`, and
//! keeps root's capabilities for that) moatd itself keeps only what its
//! own work on files needs: `CAP_CHOWN`, to give a Secret's files to the
//! pod's user, and `CAP_FOWNER`, to set their modes afterwards. Its state,
//! audit log and socket are root's own files, which root reaches without
//! any capability. Every other capability leaves the bounding, permitted,
//! effective, inheritable and ambient sets of the calling thread, before
//! moatd starts any other thread (they inherit the sets).

use rustix::thread::{CapabilitySet, CapabilitySets};

/// What moatd keeps.
pub const KEEP: CapabilitySet = CapabilitySet::CHOWN.union(CapabilitySet::FOWNER);

/// Drops every capability but [`KEEP`] (of those the thread has) from the
/// calling thread; call it before starting threads.
pub fn drop_to_file_ownership() -> std::io::Result<()> {
    let now = rustix::thread::capabilities(None)?;
    let keep = KEEP & now.permitted;
    for n in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1 << n);
        if keep.contains(cap) {
            continue;
        }
        // EINVAL: past the kernel's last capability.
        if rustix::thread::capability_is_in_bounding_set(cap) == Ok(true) {
            rustix::thread::remove_capability_from_bounding_set(cap)?;
        }
    }
    rustix::thread::clear_ambient_capability_set()?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}
