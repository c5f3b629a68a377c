//! One cgroup layer for both backends, over cgroup v1 (one hierarchy per
//! controller), v2 (the unified hierarchy) and hybrids of the two, the
//! version decided per controller at run time ([`Hierarchies`]).
//!
//! A container's cgroup is `<hierarchy>/moat/<name>` in each hierarchy it
//! uses, `<name>` derived from the container ID ([`Name`]): `<id>` for a
//! sandbox container, `vm-<id>` for a VM's VMM. Nothing here takes a
//! cgroup path from a state file: cleanup and figures go by the ID
//! ([`cleanup`], [`stats_for`], [`find`]).
//!
//! [`Cgroup`] creates the groups with a policy's limits (memory, pids,
//! cpu), adds processes, reads the figures `moat stats` shows and the OOM
//! kill count, freezes and thaws (pause/resume), kills every process and
//! removes the groups.

#![forbid(unsafe_code)]

mod group;
mod hierarchy;
mod kill;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use group::{oom_kill_count, Cgroup, KillMethod, Stats};
pub use hierarchy::{Hierarchies, Version};
pub use kill::{confined, kill_all};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read the cgroup mounts from /proc/self/mountinfo")]
    ReadMounts(#[source] io::Error),
    #[error(
        "invalid container ID {0:?} for a cgroup name: expected 16 to 64 lowercase hex digits"
    )]
    InvalidId(String),
    #[error("invalid cgroup name {0:?}: expected a container ID or vm-<container ID>")]
    InvalidName(String),
    #[error("no cgroup hierarchy (v1 or v2) offers the {controller} controller, which the {controller} limit needs; enable it (mount it on v1, or add it to cgroup.subtree_control on v2), or remove the limit from the policy if it sets one")]
    ControllerMissing { controller: &'static str },
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {name} has no freezer: neither cgroup.freeze (cgroup v2, Linux 5.2) nor a v1 freezer hierarchy is available; mount the v1 freezer or use cgroup v2")]
    NoFreezer { name: String },
    #[error("cgroup {path} did not reach the {state} state within {waited:?}")]
    Freeze {
        path: PathBuf,
        state: &'static str,
        waited: Duration,
    },
    #[error("processes of cgroup {path} are still running {waited:?} after SIGKILL")]
    Busy { path: PathBuf, waited: Duration },
    #[error("cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The name of a container's cgroups: `<id>` for a sandbox container,
/// `vm-<id>` for the VMM of a VM container. Always one path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

/// Whether `s` is a container ID: 16 to 64 lowercase hex digits (the
/// runtime core's rule; repeated here so this crate sits below it).
fn is_valid_id(s: &str) -> bool {
    (16..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Name {
    /// `<id>`: the cgroup of a sandbox container.
    pub fn sandbox(id: &str) -> Result<Name, CgroupError> {
        match is_valid_id(id) {
            true => Ok(Name(id.to_string())),
            false => Err(CgroupError::InvalidId(id.to_string())),
        }
    }

    /// `vm-<id>`: the cgroup of a VM container's VMM.
    pub fn vm(id: &str) -> Result<Name, CgroupError> {
        Name::sandbox(id).map(|n| Name(format!("vm-{}", n.0)))
    }

    /// A name of either shape, as [`Name::sandbox`] or [`Name::vm`] made it.
    pub fn parse(s: &str) -> Result<Name, CgroupError> {
        match Name::is_valid(s) {
            true => Ok(Name(s.to_string())),
            false => Err(CgroupError::InvalidName(s.to_string())),
        }
    }

    /// Both names container `id` may have.
    pub fn all_for(id: &str) -> Result<[Name; 2], CgroupError> {
        Ok([Name::sandbox(id)?, Name::vm(id)?])
    }

    /// Whether `s` has the shape of a name (`<id>` or `vm-<id>`).
    pub fn is_valid(s: &str) -> bool {
        is_valid_id(s.strip_prefix("vm-").unwrap_or(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The cgroup of container `id` on this host (sandbox or VM name,
/// whichever exists), `None` when it has none.
pub fn find(id: &str) -> Result<Option<Cgroup>, CgroupError> {
    let h = Hierarchies::host()?;
    Ok(Name::all_for(id)?
        .iter()
        .find_map(|name| Cgroup::open(&h, name)))
}

/// Current figures of container `id` (sandbox or VM: for a VM, the VMM's
/// cgroup, guest memory included), `None` when it has no cgroup or `id`
/// is not a container ID.
pub fn stats_for(id: &str) -> Option<Stats> {
    find(id).ok().flatten().map(|cg| cg.stats())
}

/// Kills every process of container `id` and removes its cgroups, under
/// either name, in every hierarchy of this host. The paths are derived
/// from the ID here, never read from a record. Nothing to do is success.
pub fn cleanup(id: &str) -> Result<(), CgroupError> {
    let h = Hierarchies::host()?;
    for name in Name::all_for(id)? {
        if let Some(cg) = Cgroup::open(&h, &name) {
            cg.remove()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_derived_from_ids_only() {
        let id = "0123456789abcdef";
        assert_eq!(Name::sandbox(id).unwrap().as_str(), id);
        assert_eq!(Name::vm(id).unwrap().as_str(), "vm-0123456789abcdef");
        for bad in [
            "../../x",
            "",
            "0123456789ABCDEF",
            "vm-0123456789abcdef",
            "0123",
        ] {
            assert_eq!(
                Name::sandbox(bad).unwrap_err().to_string(),
                format!("invalid container ID {bad:?} for a cgroup name: expected 16 to 64 lowercase hex digits")
            );
        }
        assert!(Name::is_valid("vm-0123456789abcdef"));
        assert_eq!(
            Name::parse("vm-0123456789abcdef").unwrap(),
            Name::vm(id).unwrap()
        );
        assert_eq!(
            Name::parse("vm-x").unwrap_err().to_string(),
            "invalid cgroup name \"vm-x\": expected a container ID or vm-<container ID>"
        );
        assert!(!Name::is_valid("vm-../x"));
        assert!(stats_for("../../x").is_none());
        assert!(cleanup("..").is_err());
    }
}
