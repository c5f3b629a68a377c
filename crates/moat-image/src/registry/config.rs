//! Per-registry settings in the shape of containers-registries.conf(5)
//! (version 2): `[[registry]]` tables with `prefix`, `location`,
//! `insecure`, `blocked` and `[[registry.mirror]]` entries. Read from
//! `$CONTAINERS_REGISTRIES_CONF`, else `/etc/containers/registries.conf`
//! (podman's file; keys moat does not use, such as `[aliases]`, are accepted
//! and ignored).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::reference::{Reference, DOCKER_HUB, DOCKER_HUB_API};
use super::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: reading the registries configuration")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[allow(dead_code)] // podman's keys are parsed (so typos are caught) but unused.
struct File {
    #[serde(default)]
    registry: Vec<Entry>,
    // podman's keys moat accepts but does not use.
    #[serde(default)]
    unqualified_search_registries: Option<toml::Value>,
    #[serde(default)]
    short_name_mode: Option<toml::Value>,
    #[serde(default)]
    aliases: Option<toml::Value>,
    #[serde(default)]
    credential_helpers: Option<toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Entry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<Mirror>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Mirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

/// The parsed configuration, with the file it came from (for errors).
#[derive(Debug, Default)]
pub struct RegistriesConf {
    path: Option<PathBuf>,
    entries: Vec<Entry>,
}

/// Where one attempt of a pull goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host[:port] the API is reached at.
    pub authority: String,
    pub repository: String,
    /// TLS not verified, plain HTTP allowed (`insecure = true`).
    pub insecure: bool,
    /// A mirror (tried before the registry itself; pull only).
    pub mirror: bool,
}

/// The file podman reads: `$CONTAINERS_REGISTRIES_CONF`, else
/// `/etc/containers/registries.conf` when it exists.
pub fn default_path() -> Option<PathBuf> {
    match std::env::var_os("CONTAINERS_REGISTRIES_CONF").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => Some(PathBuf::from("/etc/containers/registries.conf")).filter(|p| p.is_file()),
    }
}

impl RegistriesConf {
    pub fn load(path: &Path) -> Result<RegistriesConf, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<RegistriesConf, ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let bad = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        for e in &f.registry {
            let Some(key) = e.prefix.as_ref().or(e.location.as_ref()) else {
                return Err(bad("a [[registry]] has neither prefix nor location".into()));
            };
            if key.is_empty() || key.contains("://") || key.ends_with('/') {
                return Err(bad(format!(
                    "[[registry]] {key:?}: expected HOST[:PORT][/PATH] without a scheme or trailing /"
                )));
            }
            for m in &e.mirror {
                if let Some(p) = &m.pull_from_mirror {
                    if !["all", "digest-only", "tag-only"].contains(&p.as_str()) {
                        return Err(bad(format!(
                            "mirror {:?}: pull-from-mirror is {p:?}; expected all, digest-only or tag-only",
                            m.location
                        )));
                    }
                }
            }
        }
        Ok(RegistriesConf {
            path: Some(path.to_path_buf()),
            entries: f.registry,
        })
    }

    /// The entry whose prefix is the longest match of `name` (`host/repo`).
    fn entry_for(&self, name: &str) -> Option<(&Entry, &str)> {
        self.entries
            .iter()
            .filter_map(|e| {
                let p = e.prefix.as_deref().or(e.location.as_deref())?;
                let hit = name == p
                    || name
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'));
                hit.then_some((e, p))
            })
            .max_by_key(|(_, p)| p.len())
    }

    /// Where to pull `r` from, in order: mirrors, then the registry itself
    /// (rewritten by `location`). A blocked registry is an error naming the
    /// file.
    pub fn endpoints(&self, r: &Reference, for_push: bool) -> Result<Vec<Endpoint>, RegistryError> {
        let name = r.name();
        let Some((e, prefix)) = self.entry_for(&name) else {
            return Ok(vec![endpoint(&name, false, false)]);
        };
        if e.blocked {
            return Err(RegistryError::Blocked {
                reference: r.to_string(),
                prefix: prefix.to_string(),
                path: self.path.clone().unwrap_or_default(),
            });
        }
        let rest = &name[prefix.len()..];
        let mut out = Vec::new();
        if !for_push {
            for m in &e.mirror {
                let mode = m
                    .pull_from_mirror
                    .as_deref()
                    .unwrap_or(if e.mirror_by_digest_only {
                        "digest-only"
                    } else {
                        "all"
                    });
                let usable = match mode {
                    "digest-only" => r.digest.is_some(),
                    "tag-only" => r.digest.is_none(),
                    _ => true,
                };
                if usable {
                    out.push(endpoint(&format!("{}{rest}", m.location), m.insecure, true));
                }
            }
        }
        let location = e.location.as_deref().unwrap_or(prefix);
        out.push(endpoint(&format!("{location}{rest}"), e.insecure, false));
        Ok(out)
    }
}

fn endpoint(name: &str, insecure: bool, mirror: bool) -> Endpoint {
    let (host, repo) = name.split_once('/').unwrap_or((name, ""));
    let authority = if host == DOCKER_HUB || host == "index.docker.io" {
        DOCKER_HUB_API
    } else {
        host
    };
    Endpoint {
        authority: authority.to_string(),
        repository: repo.to_string(),
        insecure,
        mirror,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> RegistriesConf {
        RegistriesConf::parse(Path::new("r.conf"), text).unwrap()
    }

    #[test]
    fn mirrors_locations_and_blocking() {
        let c = conf(
            r#"
unqualified-search-registries = ["docker.io"]
[aliases]
"alpine" = "docker.io/library/alpine"

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "mirror.local:5000/hub"
insecure = true

[[registry]]
prefix = "example.com/team"
location = "internal.example.com/team-a"
insecure = true

[[registry]]
location = "bad.example.com"
blocked = true
"#,
        );
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(
            c.endpoints(&r, false).unwrap(),
            vec![
                Endpoint {
                    authority: "mirror.local:5000".into(),
                    repository: "hub/library/alpine".into(),
                    insecure: true,
                    mirror: true
                },
                Endpoint {
                    authority: "registry-1.docker.io".into(),
                    repository: "library/alpine".into(),
                    insecure: false,
                    mirror: false
                },
            ]
        );
        assert_eq!(c.endpoints(&r, true).unwrap().len(), 1);
        let r = Reference::parse("example.com/team/app:1").unwrap();
        assert_eq!(
            c.endpoints(&r, false).unwrap(),
            vec![Endpoint {
                authority: "internal.example.com".into(),
                repository: "team-a/app".into(),
                insecure: true,
                mirror: false
            }]
        );
        // A prefix matches whole path components only.
        let r = Reference::parse("example.com/teamx/app").unwrap();
        assert_eq!(c.endpoints(&r, false).unwrap()[0].authority, "example.com");
        let r = Reference::parse("bad.example.com/x").unwrap();
        assert_eq!(
            c.endpoints(&r, false).unwrap_err().to_string(),
            "bad.example.com/x:latest: blocked by [[registry]] \"bad.example.com\" in r.conf"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let e = RegistriesConf::parse(
            Path::new("r.conf"),
            "[[registry]]\nprefix = \"a\"\ninsecur = true\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("r.conf: "), "{e}");
        assert!(e.to_string().contains("insecur"), "{e}");
        let e = RegistriesConf::parse(
            Path::new("r.conf"),
            "[[registry]]\nlocation = \"https://x\"\n",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "r.conf: [[registry]] \"https://x\": expected HOST[:PORT][/PATH] without a scheme or trailing /");
    }
}
