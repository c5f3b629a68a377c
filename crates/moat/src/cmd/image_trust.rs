//! The policy's `image` rules for an image already in the store: what
//! `moat run` checks before anything starts, as `moat pull` did before
//! downloading. The rules are checked against where the image came from
//! (the registry reference it was pulled by, pinned to its digest) and the
//! signatures kept with it, never against a name alone: any name can be
//! given to an imported file.

use std::path::Path;

use anyhow::Context;
use moat_image::registry::{keys, sign, Reference};
use moat_image::{Image, Store};
use moat_policy::Policy;

/// Refuses `image` (named `written` by the user) unless the policy's image
/// rules allow it. The error names the rule, the policy and the fix.
pub fn check(store: &Store, image: &Image, written: &str, policy: &Policy) -> anyhow::Result<()> {
    let rules = &policy.spec.image;
    if rules.allowed.is_empty()
        && rules.digests.is_empty()
        && !rules.require_digest
        && rules.signers.is_empty()
    {
        return Ok(());
    }
    let refused = |why: String| {
        anyhow::anyhow!(
            "image {written}: refused by the policy {}: {why}",
            policy.source
        )
    };
    // Where it was pulled from: `docker://HOST/REPO@sha256:...`.
    let origin = image
        .source
        .strip_prefix("docker://")
        .and_then(|s| Reference::parse(s).ok())
        .filter(|r| r.digest.is_some());
    let name = match &origin {
        // The name as written when it is the origin's repository (so a
        // tag rule can match), else the origin's repository.
        Some(o) => match Reference::parse(written) {
            Ok(w) if w.name() == o.name() => w.to_string(),
            _ => o.name(),
        },
        None if !rules.allowed.is_empty() || !rules.signers.is_empty() => {
            return Err(refused(format!(
                "spec.image.allowed and spec.image.signers apply to images pulled from a \
                 registry, and this one came from {}; pull it with `moat pull REF`",
                image.source
            )))
        }
        None => written.to_string(),
    };
    let top = origin.as_ref().and_then(|o| o.digest.clone());
    let mut digests: Vec<&str> = vec![&image.manifest_digest, &image.config_digest];
    if let Some(t) = &top {
        digests.push(t);
    }
    rules
        .check(&name, pinned(written, image), &digests)
        .map_err(refused)?;

    let signers = rules.signers_for(&name);
    if signers.is_empty() {
        return Ok(());
    }
    let (Some(o), Some(top)) = (&origin, &top) else {
        unreachable!("signers need an origin, checked above");
    };
    let stored = store
        .signatures(image)
        .with_context(|| format!("reading the signatures kept with {written}"))?;
    let mut reasons = Vec::new();
    for rule in signers {
        let key = keys::load_public(Path::new(&rule.key))
            .with_context(|| format!("policy {}: spec.image.signers", policy.source))?;
        match sign::verify_stored(&o.name(), top, &key, &stored) {
            Ok(_) => return Ok(()),
            Err(why) => reasons.push(format!("{}: {why}", rule.key)),
        }
    }
    Err(refused(format!(
        "spec.image.signers requires a signature of {top}: {}; pull it with \
         `moat pull --policy {} {}` to verify and keep its signature",
        reasons.join("; "),
        policy.source,
        o.name()
    )))
}

/// Whether the user named the image by content: `REPO@sha256:...` of this
/// image, or its full image ID.
fn pinned(written: &str, image: &Image) -> bool {
    if let Some((_, d)) = written.split_once('@') {
        return d == image.manifest_digest
            || image.source.ends_with(&format!("@{d}"))
            || d == image.config_digest;
    }
    let id = written.strip_prefix("sha256:").unwrap_or(written);
    id.len() == 64 && image.config_digest.strip_prefix("sha256:") == Some(id)
}
