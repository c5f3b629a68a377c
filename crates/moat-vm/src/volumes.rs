//! Named volumes for a micro-VM: each is the volume's ext4 image, locked
//! (one container at a time, see `moat_runtime::volume_store`) and handed
//! to QEMU as an open file, attached as a virtio-blk disk with the serial
//! `moat-vol-N` (N: its place among the plan's named volumes) that the
//! agent finds and mounts. Host directories never reach a guest: DESIGN
//! allows them only through a jailed shared-filesystem daemon, which moat
//! does not run yet (docs/volumes.md).

use std::fs::File;

use moat_policy::plan::{MountPlan, Plan};
use moat_runtime::volume_store::{self, VolumeError};

/// One volume disk for the VMM.
#[derive(Debug)]
pub struct VolumeDisk {
    /// The image, open read-write and locked; the lock lives as long as
    /// QEMU (which inherits this open file) or this process holds it.
    pub file: File,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeRefused {
    #[error("volume at {destination}: host directories do not reach micro-VMs (no host filesystem is shared with a guest; docs/volumes.md): use a named volume (`moat volume create NAME`, `-v NAME:{destination}`) or --isolation sandbox")]
    HostDirectory { destination: String },
    #[error(transparent)]
    Store(#[from] VolumeError),
}

/// Opens, locks and checks the named volumes of `plan`, in order; refuses a
/// host directory.
pub fn open(plan: &Plan) -> Result<Vec<VolumeDisk>, VolumeRefused> {
    let mut out = Vec::new();
    for m in &plan.mounts {
        match m {
            MountPlan::Tmpfs { .. } => {}
            MountPlan::Volume { destination, .. } => {
                return Err(VolumeRefused::HostDirectory {
                    destination: destination.clone(),
                })
            }
            MountPlan::Named {
                name,
                dir,
                read_only,
                ..
            } => {
                let dir = std::path::Path::new(dir);
                let file = volume_store::open_locked(dir, name, false)?;
                // A clean journal, so that a read-only disk mounts too; the
                // guest kernel parses the image whatever it holds (it is
                // the guest's), but e2fsck refuses a damaged one early.
                volume_store::fsck(dir)?;
                out.push(VolumeDisk {
                    file,
                    read_only: *read_only,
                });
            }
        }
    }
    Ok(out)
}
