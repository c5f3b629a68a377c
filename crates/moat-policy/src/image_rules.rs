//! Checking an image reference against the policy's `image` rules (pure).

use crate::model::{ImageRules, SignerRule};

impl ImageRules {
    /// The signer rules that apply to the image `name`.
    pub fn signers_for(&self, name: &str) -> Vec<&SignerRule> {
        let bare = bare_name(name);
        self.signers
            .iter()
            .filter(|r| match r.repository.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => r.repository == bare || r.repository == name,
            })
            .collect()
    }

    /// Checks the image `name` (`host/repo:tag` or `host/repo@digest`):
    /// `pinned` says whether the user named it by digest, `digests` are the
    /// digests it resolved to (empty when not known yet). The error names
    /// the rule that refused.
    pub fn check(&self, name: &str, pinned: bool, digests: &[&str]) -> Result<(), String> {
        if !self.allowed.is_empty() {
            let bare = bare_name(name);
            let ok = self.allowed.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => p == name || p == bare,
            });
            if !ok {
                return Err(format!(
                    "spec.image.allowed does not list {name} (allowed: {})",
                    self.allowed.join(", ")
                ));
            }
        }
        if self.require_digest && !pinned {
            return Err(format!(
                "spec.image.require_digest: {name} is not pinned; name it as {}@sha256:<digest>",
                bare_name(name)
            ));
        }
        if !self.digests.is_empty()
            && !digests.is_empty()
            && !digests.iter().any(|d| self.digests.iter().any(|a| a == d))
        {
            return Err(format!(
                "spec.image.digests lists none of {} for {name}",
                digests.join(", ")
            ));
        }
        Ok(())
    }
}

/// `host/repo` without `:tag` or `@digest`.
fn bare_name(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or(name);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_themselves() {
        let r = ImageRules {
            allowed: vec![
                "127.0.0.1:5000/trusted/*".into(),
                "docker.io/library/alpine".into(),
            ],
            digests: vec![],
            require_digest: false,
            signers: vec![],
        };
        assert!(r.check("127.0.0.1:5000/trusted/app:1", false, &[]).is_ok());
        assert!(r.check("docker.io/library/alpine:3", false, &[]).is_ok());
        assert_eq!(
            r.check("127.0.0.1:5000/other/app:1", false, &[]).unwrap_err(),
            "spec.image.allowed does not list 127.0.0.1:5000/other/app:1 (allowed: 127.0.0.1:5000/trusted/*, docker.io/library/alpine)"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRules {
            allowed: vec![],
            digests: vec![d.clone()],
            require_digest: true,
            signers: vec![SignerRule {
                repository: "h:1/x".into(),
                key: "k.pub".into(),
            }],
        };
        assert_eq!(r.signers_for("h:1/x:1").len(), 1);
        assert!(r.signers_for("h:1/xy:1").is_empty());
        assert_eq!(
            r.check("h:1/x:1", false, &[]).unwrap_err(),
            "spec.image.require_digest: h:1/x:1 is not pinned; name it as h:1/x@sha256:<digest>"
        );
        assert!(r.check(&format!("h:1/x@{d}"), true, &[&d]).is_ok());
        assert!(r
            .check("h:1/x@sha256:bb", true, &["sha256:bb"])
            .unwrap_err()
            .starts_with("spec.image.digests lists none of sha256:bb"));
    }
}

#[cfg(test)]
mod explain_tests {
    #[test]
    fn explain_shows_trust_rules() {
        let p = crate::Policy::parse(
            "apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {name: t}\nspec:\n  extends: baseline\n  image:\n    allowed: [\"r.example/*\"]\n    require_digest: true\n    signers:\n      - {repository: \"r.example/prod/*\", key: k.pub}\n",
            "t.yaml",
        )
        .unwrap();
        let text = crate::explain::explain(&p).to_text();
        assert!(
            text.ends_with("  images        only images named r.example/*\n                images must be named by digest (tags refused)\n                r.example/prod/* must be signed by the key in k.pub\n"),
            "{text}"
        );
    }
}
