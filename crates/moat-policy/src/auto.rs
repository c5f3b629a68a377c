//! The `auto` built-in: `baseline` narrowed to one image's profile.
//!
//! The image profile itself (static analysis of every ELF object in the
//! image) is made by `moat-profile` when the image enters the store; this
//! crate only takes its result, the set of calls, and applies it: the
//! allowed system calls become the intersection of baseline's with the
//! image's, and the calls removed are recorded as denied (so that `explain`
//! and `diff` show them and a policy that `extends: auto` can allow one
//! back). Capabilities, network, filesystem and resources stay baseline's.

use std::collections::BTreeSet;

use crate::model::Policy;

/// What `auto` is narrowed to for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSyscalls {
    /// The image, as messages name it.
    pub image: String,
    /// The calls the image's programs can make; `None` when the analysis
    /// fell back to baseline (see `fallbacks`), or to authorise the widest
    /// `auto` can be before the image is known.
    pub allow: Option<BTreeSet<String>>,
    /// Why the analysis fell back, one line each.
    pub fallbacks: Vec<String>,
}

impl ImageSyscalls {
    /// The widest `auto` can be for any image: baseline's calls. What RBAC
    /// authorises before the image is resolved (narrowing only removes).
    pub fn widest(what: &str) -> ImageSyscalls {
        ImageSyscalls {
            image: what.to_string(),
            allow: None,
            fallbacks: Vec::new(),
        }
    }
}

/// Narrows a loaded `auto` (baseline) policy to `image`.
pub(crate) fn narrow(policy: &mut Policy, image: &ImageSyscalls) {
    let Some(allow) = &image.allow else { return };
    let removed: Vec<String> = policy
        .spec
        .syscalls
        .allow
        .iter()
        .filter(|c| !allow.contains(*c))
        .cloned()
        .collect();
    for c in removed {
        policy.spec.syscalls.allow.remove(&c);
        policy.spec.syscalls.denied.insert(c);
    }
}

/// What `auto` removed from baseline for an image, sorted.
pub fn removed_from_baseline(auto: &Policy) -> Result<Vec<String>, crate::PolicyError> {
    let baseline = Policy::builtin("baseline")?;
    Ok(baseline
        .spec
        .syscalls
        .allow
        .iter()
        .filter(|c| !auto.spec.syscalls.allow.contains(*c))
        .cloned()
        .collect())
}
