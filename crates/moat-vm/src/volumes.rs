//! Named volumes for a micro-VM: each is the volume's ext4 image, locked
//! (one container at a time, see `moat_runtime::volume_store`) and handed
//! to QEMU as an open file, attached as a virtio-blk disk with the serial
//! `moat-vol-N` (N: its place among the plan's named volumes) that the
//! agent finds and mounts. A granted host directory is opened here (see
//! [`crate::virtiofs`]) and reaches the guest through its own jailed
//! virtiofsd (docs/volumes.md).

use std::fs::File;

use moat_policy::plan::{MountPlan, Plan};
use moat_runtime::volume_store::{self, VolumeError};

use crate::virtiofs::{self, HostDir, VirtiofsError};

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
    #[error(transparent)]
    HostDirectory(#[from] VirtiofsError),
    #[error(transparent)]
    Store(#[from] VolumeError),
}

/// A plan's volumes, opened for a VM.
#[derive(Debug, Default)]
pub struct Volumes {
    /// Named volumes, in the plan's order.
    pub disks: Vec<VolumeDisk>,
    /// Host directories (already authorised by the run pipeline), in the
    /// plan's order: virtio-fs tag `moat-dir-N`.
    pub dirs: Vec<HostDir>,
}

/// Opens, locks and checks the named volumes of `plan`, and opens its host
/// directories without following links, in order.
pub fn open(plan: &Plan) -> Result<Volumes, VolumeRefused> {
    let mut out = Vec::new();
    let mut dirs = Vec::new();
    for m in &plan.mounts {
        match m {
            MountPlan::Tmpfs { .. } => {}
            MountPlan::Volume {
                source,
                destination,
                read_only,
            } => dirs.push(virtiofs::open(source, destination, *read_only)?),
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
    Ok(Volumes { disks: out, dirs })
}

/// The plan as the guest gets it: host directories' sources blanked (the
/// guest mounts them by tag, `moat-dir-N`, and never learns or names a
/// host path).
pub fn for_guest(plan: &Plan) -> Plan {
    let mut p = plan.clone();
    for m in &mut p.mounts {
        if let MountPlan::Volume { source, .. } = m {
            source.clear();
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_never_learns_a_host_path() {
        let mut plan: Plan = serde_json::from_value(serde_json::json!({
            "policy_name": "t", "policy_digest": "", "isolation": "vm",
            "process": {"uid": null, "gid": null, "additional_gids": [], "no_new_privs": true},
            "capabilities": [], "namespaces": [], "mounts": [], "rlimits": [],
            "cgroup": {}, "seccomp": {"instructions": []}, "network": {"mode": "none"},
            "devices": [], "vm": {"vcpus": 1, "memory_mib": 128, "disk_mib": 64},
            "exec_allowed": false, "audit_denied": false
        }))
        .unwrap();
        plan.mounts = vec![
            MountPlan::Volume {
                source: "/srv/secret-name".into(),
                destination: "/data".into(),
                read_only: true,
            },
            MountPlan::Tmpfs {
                destination: "/tmp".into(),
                size_bytes: 1,
                optional: false,
                mode: None,
            },
        ];
        let g = for_guest(&plan);
        assert_eq!(
            g.mounts[0],
            MountPlan::Volume {
                source: String::new(),
                destination: "/data".into(),
                read_only: true,
            }
        );
        assert_eq!(g.mounts[1], plan.mounts[1]);
        assert!(!serde_json::to_string(&g).unwrap().contains("secret-name"));
    }
}
