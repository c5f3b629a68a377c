//! Image trust for an image already in the store: what `moat run` checks
//! before anything starts, as `moat pull` did before downloading. Two sets
//! of rules apply, both must pass: the host's trust roots (the trust file,
//! when there is one) and the policy's `image` section. They are checked
//! against where the image came from (the registry reference it was pulled
//! by, pinned to its digest) and the signatures kept with it, never against
//! a name alone: any name can be given to an imported file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use moat_image::registry::{keys, sign, Reference};
use moat_image::{Image, Store};
use moat_policy::model::ImageRules;
use moat_policy::trust::{TrustRoots, DEFAULT_TRUST_PATH};
use moat_policy::Policy;

/// The trust file: `MOAT_TRUST` (honoured for root acting as itself only:
/// every `MOAT_*` variable is removed for anyone else), else the default.
pub fn trust_path() -> PathBuf {
    std::env::var_os("MOAT_TRUST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TRUST_PATH))
}

/// The host's trust roots, when there is a trust file.
pub fn host_roots() -> anyhow::Result<Option<TrustRoots>> {
    Ok(TrustRoots::load(&trust_path())?)
}

/// One set of rules and how to name it.
pub struct RuleSet<'a> {
    pub rules: &'a ImageRules,
    /// `the policy FILE`, `the trust file FILE`.
    pub by: String,
    /// The host's trust roots, whose file allows only what it lists (a
    /// policy's empty `allowed` allows any source).
    pub host: Option<&'a TrustRoots>,
    /// How to keep the signature the rules need: the pull command to run.
    pub pull_hint: String,
}

impl<'a> RuleSet<'a> {
    pub fn policy(p: &'a Policy) -> Self {
        RuleSet {
            rules: &p.spec.image,
            by: format!("the policy {}", p.source),
            host: None,
            pull_hint: format!("moat pull --policy {}", p.source),
        }
    }

    pub fn host(t: &'a TrustRoots) -> Self {
        RuleSet {
            rules: &t.image,
            by: format!("the trust file {}", t.source),
            host: Some(t),
            pull_hint: "moat pull".to_string(),
        }
    }

    /// The name/pinning/digest rules.
    pub fn check_name(&self, name: &str, pinned: bool, digests: &[&str]) -> Result<(), String> {
        match self.host {
            Some(t) => t.check(name, pinned, digests),
            None => self.rules.check(name, pinned, digests),
        }
    }

    fn is_empty(&self) -> bool {
        self.host.is_none()
            && self.rules.allowed.is_empty()
            && self.rules.digests.is_empty()
            && !self.rules.require_digest
            && self.rules.signers.is_empty()
    }
}

/// Refuses `image` (named `written` by the user) unless the host's trust
/// roots and the policy's image rules allow it.
pub fn check(store: &Store, image: &Image, written: &str, policy: &Policy) -> anyhow::Result<()> {
    if let Some(t) = host_roots()? {
        check_rules(store, image, written, &RuleSet::host(&t))?;
    }
    check_rules(store, image, written, &RuleSet::policy(policy))
}

fn check_rules(store: &Store, image: &Image, written: &str, set: &RuleSet) -> anyhow::Result<()> {
    if set.is_empty() {
        return Ok(());
    }
    let refused = |why: String| anyhow::anyhow!("image {written}: refused by {}: {why}", set.by);
    // Where it was pulled from: `docker://HOST/REPO@sha256:...`.
    let origin = image
        .source
        .strip_prefix("docker://")
        .and_then(|s| Reference::parse(s).ok())
        .filter(|r| r.digest.is_some());
    let rules = set.rules;
    let name = match &origin {
        // The name as written when it is the origin's repository (so a
        // tag rule can match), else the origin's repository.
        Some(o) => match Reference::parse(written) {
            Ok(w) if w.name() == o.name() => w.to_string(),
            _ => o.name(),
        },
        None if set.host.is_some() || !rules.allowed.is_empty() || !rules.signers.is_empty() => {
            return Err(refused(format!(
                "its allowed sources and signers apply to images pulled from a registry, \
                 and this one came from {}; pull it with `moat pull REF`",
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
    set.check_name(&name, pinned(written, image), &digests)
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
            .with_context(|| format!("{}: signers", set.by))?;
        match sign::verify_stored(&o.name(), top, &key, &stored) {
            Ok(_) => return Ok(()),
            Err(why) => reasons.push(format!("{}: {why}", rule.key)),
        }
    }
    Err(refused(format!(
        "signers: a signature of {top} is required: {}; pull it with `{} {}` to verify \
         and keep its signature",
        reasons.join("; "),
        set.pull_hint,
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
