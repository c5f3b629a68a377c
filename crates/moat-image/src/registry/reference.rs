//! Image references as Docker and podman write them: `[HOST[:PORT]/]PATH[:TAG][@DIGEST]`,
//! with Docker Hub's defaults (`docker.io`, `library/`, `:latest`).

use std::fmt;

use crate::digest::sha256_hex;

/// The registry Docker Hub references name.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually answers.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{reference:?}: {why} (expected [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], e.g. docker.io/library/alpine:3.19)")]
    Invalid {
        reference: String,
        why: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host with optional port, as written (`docker.io` for Hub).
    pub registry: String,
    /// Repository path inside the registry (`library/alpine`).
    pub repository: String,
    /// Tag (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a digest.
    pub digest: Option<String>,
}

fn invalid(reference: &str, why: &'static str) -> ReferenceError {
    ReferenceError::Invalid {
        reference: reference.to_string(),
        why,
    }
}

fn valid_component(c: &str) -> bool {
    // distribution's path-component grammar: [a-z0-9]+ joined by [._]|__|-+
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn valid_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) if !n.contains(']') || n.ends_with(']') => (n, Some(p)),
        _ => (h, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return false;
        }
    }
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b))
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let s = s.strip_prefix("docker://").unwrap_or(s);
        if s.is_empty() || s.len() > 512 {
            return Err(invalid(s, "empty or longer than 512 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if sha256_hex(d).is_none() {
                    return Err(invalid(
                        s,
                        "the digest is not sha256:<64 lowercase hex digits>",
                    ));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !valid_tag(t) {
                    return Err(invalid(
                        s,
                        "the tag is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
                    ));
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_host(first) {
                    return Err(invalid(s, "the registry host is not HOST[:PORT]"));
                }
                let host = if first == "index.docker.io" {
                    DOCKER_HUB
                } else {
                    first
                };
                (host.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if repository.is_empty() || !repository.split('/').all(valid_component) {
            return Err(invalid(
                s,
                "the repository must be lowercase letters, digits and . _ - separated by /",
            ));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Host (and port) the registry API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What `/v2/<repo>/manifests/<this>` asks for: the digest when pinned.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name the image gets in the store: `registry/repo:tag`, or
    /// `registry/repo@digest` for a reference that only pins a digest.
    pub fn store_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.name()),
            (None, Some(d)) => format!("{}@{d}", self.name()),
            (None, None) => format!("{}:latest", self.name()),
        }
    }

    /// This reference with its digest pinned.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_defaults() {
        let r = p("alpine");
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(p("user/app:1.0").to_string(), "docker.io/user/app:1.0");
        assert_eq!(
            p("docker://index.docker.io/alpine").to_string(),
            "docker.io/library/alpine:latest"
        );
    }

    #[test]
    fn hosts_ports_and_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = p(&format!("127.0.0.1:5000/test/busybox@{d}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/busybox");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
        assert_eq!(r.store_name(), format!("127.0.0.1:5000/test/busybox@{d}"));
        let r = p("localhost/x:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("localhost", "x", Some("v1"))
        );
        let r = p(&format!("quay.io/a/b:t@{d}"));
        assert_eq!(r.manifest_ref(), d);
        assert_eq!(r.store_name(), "quay.io/a/b:t");
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        let e = Reference::parse("Alpine").unwrap_err().to_string();
        assert_eq!(e, "\"Alpine\": the repository must be lowercase letters, digits and . _ - separated by / (expected [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], e.g. docker.io/library/alpine:3.19)");
        assert!(Reference::parse("alpine@sha256:12")
            .unwrap_err()
            .to_string()
            .contains("the digest is not"));
        assert!(Reference::parse("alpine:bad/tag").is_err());
        assert!(Reference::parse("host:99999/x").is_err());
        assert!(Reference::parse("").is_err());
    }
}
