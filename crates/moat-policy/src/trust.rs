//! The host's trust roots: which image sources and which signers this host
//! accepts, whatever policy a run names. One root-owned file (default
//! [`DEFAULT_TRUST_PATH`]) with an `image` section shaped like a policy's;
//! when it exists, only images it allows are pulled or run. Changing it is
//! the RBAC grant `trust`.
//!
//! ```yaml
//! apiVersion: moat.dev/v1
//! kind: Trust
//! image:
//!   allowed: ["registry.internal:5000/*"]
//!   signers:
//!     - {repository: "registry.internal:5000/prod/*", key: /etc/moat/keys/release.pub}
//! ```

use std::path::Path;

use crate::model::{ImageRules, SignerRule};
use crate::parse::{get, Cx, API_VERSION};
use crate::rbac::{read_site_file, RbacError};
use crate::yaml;

pub const DEFAULT_TRUST_PATH: &str = "/etc/moat/trust.yaml";

/// A loaded trust file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrustRoots {
    /// Where it was read from, for messages.
    pub source: String,
    pub image: ImageRules,
}

impl TrustRoots {
    /// Reads the trust file at `path` (`None` when there is none). Like
    /// the RBAC file, it must be root's and not writable by others, up to `/`.
    pub fn load(path: &Path) -> Result<Option<TrustRoots>, RbacError> {
        if path.symlink_metadata().is_err() {
            return Ok(None);
        }
        let text = read_site_file(path, "trust file")?;
        TrustRoots::parse(&text, &path.display().to_string()).map(Some)
    }

    pub fn parse(text: &str, file: &str) -> Result<TrustRoots, RbacError> {
        let cx = Cx { file };
        let root = yaml::parse(text).map_err(|e| cx.err(e.pos, e.message))?;
        let top = cx.map(&root, "", &["apiVersion", "kind", "image"])?;
        cx.header(&root, &top, "Trust", "a trust file")?;
        let mut image = ImageRules::default();
        if let Some(n) = get(&top, "image") {
            cx.image(n, "image", &mut image)?;
        }
        Ok(TrustRoots {
            source: file.to_string(),
            image,
        })
    }

    /// The file's text (what [`TrustRoots::parse`] reads back).
    pub fn render(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("strings serialise");
        let mut o = format!("apiVersion: {API_VERSION}\nkind: Trust\nimage:\n");
        let list = |v: &[String]| v.iter().map(|x| q(x)).collect::<Vec<_>>().join(", ");
        o.push_str(&format!("  allowed: [{}]\n", list(&self.image.allowed)));
        if !self.image.digests.is_empty() {
            o.push_str(&format!("  digests: [{}]\n", list(&self.image.digests)));
        }
        o.push_str(&format!(
            "  require_digest: {}\n",
            self.image.require_digest
        ));
        o.push_str("  signers:");
        if self.image.signers.is_empty() {
            o.push_str(" []\n");
        } else {
            o.push('\n');
            for r in &self.image.signers {
                o.push_str(&format!(
                    "    - {{repository: {}, key: {}}}\n",
                    q(&r.repository),
                    q(&r.key)
                ));
            }
        }
        o
    }

    /// Accepts images under `scope` (a `*`-suffixed pattern or an exact
    /// `HOST/REPO`); with `key`, only when signed by it.
    pub fn accept(&mut self, scope: &str, key: Option<&str>) {
        if !self.image.allowed.iter().any(|a| a == scope) {
            self.image.allowed.push(scope.to_string());
        }
        self.image.signers.retain(|r| r.repository != scope);
        if let Some(k) = key {
            self.image.signers.push(SignerRule {
                repository: scope.to_string(),
                key: k.to_string(),
            });
        }
    }

    /// Stops accepting images under `scope` (as written when accepted).
    pub fn reject(&mut self, scope: &str) -> bool {
        let before = self.image.allowed.len() + self.image.signers.len();
        self.image.allowed.retain(|a| a != scope);
        self.image.signers.retain(|r| r.repository != scope);
        before != self.image.allowed.len() + self.image.signers.len()
    }

    /// Checks the image `name` as [`ImageRules::check`] does, except that
    /// an empty `allowed` accepts nothing: the file's existence turns the
    /// allowlist on.
    pub fn check(&self, name: &str, pinned: bool, digests: &[&str]) -> Result<(), String> {
        if self.image.allowed.is_empty() {
            return Err(
                "it accepts no image source; add one with `moat image trust set --type accept SCOPE`"
                    .to_string(),
            );
        }
        self.image
            .check(name, pinned, digests)
            .map_err(|why| why.replacen("spec.image.", "image.", 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_it_parses() {
        let mut t = TrustRoots::parse(
            "apiVersion: moat.dev/v1\nkind: Trust\nimage:\n  allowed: [\"r:5000/a/*\"]\n",
            "t.yaml",
        )
        .unwrap();
        t.accept("r:5000/prod/*", Some("/etc/moat/keys/k.pub"));
        let back = TrustRoots::parse(&t.render(), "t.yaml").unwrap();
        assert_eq!(back, t);
        assert_eq!(back.image.signers_for("r:5000/prod/x:1").len(), 1);
        assert!(t.reject("r:5000/prod/*"));
        assert!(!t.reject("r:5000/prod/*"));
        assert_eq!(t.image.allowed, vec!["r:5000/a/*".to_string()]);
        assert!(t.image.signers.is_empty());
    }

    #[test]
    fn an_empty_allowlist_accepts_nothing() {
        let t = TrustRoots::parse("apiVersion: moat.dev/v1\nkind: Trust\n", "t.yaml").unwrap();
        let e = t.check("r:5000/a/x:1", false, &[]).unwrap_err();
        assert!(e.contains("accepts no image source"), "{e}");
        let e = TrustRoots::parse("apiVersion: moat.dev/v1\nkind: Policy\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`kind` must be `Trust`"), "{e}");
        let e = TrustRoots::parse(
            "apiVersion: moat.dev/v1\nkind: Trust\nimage:\n  alowed: []\n",
            "t.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("alowed"), "{e}");
    }

    #[test]
    fn rules_outside_the_allowlist_are_refused_naming_the_file() {
        let t = TrustRoots::parse(
            "apiVersion: moat.dev/v1\nkind: Trust\nimage:\n  allowed: [\"r:5000/a/*\"]\n  require_digest: true\n",
            "/etc/moat/trust.yaml",
        )
        .unwrap();
        let e = t.check("r:5000/b/x:1", true, &[]).unwrap_err();
        assert!(
            e.starts_with("image.allowed does not list r:5000/b/x:1"),
            "{e}"
        );
        let e = t.check("r:5000/a/x:1", false, &[]).unwrap_err();
        assert!(e.starts_with("image.require_digest"), "{e}");
        assert!(t.check("r:5000/a/x@sha256:00", true, &[]).is_ok());
    }
}
