//! The site's OCI settings: `/etc/moat/oci.yaml`, and the policy a bundle
//! runs under (the site's, or the one its `moat.dev/policy` annotation
//! names, authorised by RBAC for the calling user).
//!
//! `auto` (the default) is baseline narrowed to the system calls the
//! programs in the bundle's root can make (static analysis, cached by a
//! fingerprint of the root's files under
//! `/var/lib/moat/cache/rootfs-profiles`).
//!
//! ```yaml
//! # /etc/moat/oci.yaml
//! policy: auto                # default policy of OCI containers
//! isolation: sandbox          # sandbox | vm, unless moat.dev/isolation says
//! allow_unconfined_seccomp: false   # a config.json without linux.seccomp
//! no_new_privileges: always   # or as-requested: honour noNewPrivileges: false
//! ```

use std::path::{Path, PathBuf};

use moat_policy::Policy;

pub const SITE_FILE: &str = "/etc/moat/oci.yaml";
pub const POLICY_ANNOTATION: &str = "moat.dev/policy";
pub const ISOLATION_ANNOTATION: &str = "moat.dev/isolation";
/// CRI's annotation naming a container's pod sandbox.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's annotation: `sandbox` (the pause container) or `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Sandbox,
    Vm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub policy: String,
    pub isolation: Isolation,
    pub allow_unconfined_seccomp: bool,
    /// Honour a config's `noNewPrivileges: false` (setuid binaries such
    /// as sudo work in the container); by default moat always sets it.
    pub honour_new_privileges: bool,
    /// Where the settings came from (for messages).
    pub source: String,
    /// Where the profiles of bundle roots (for `auto`) are cached.
    pub profile_cache: PathBuf,
}

impl Default for Site {
    fn default() -> Self {
        Site {
            policy: "auto".into(),
            isolation: Isolation::Sandbox,
            allow_unconfined_seccomp: false,
            honour_new_privileges: false,
            source: "built-in defaults".into(),
            profile_cache: profile_cache(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("{file}:{line}: {msg}")]
    Syntax {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("reading {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy {name:?} for this container: {source}")]
    Policy {
        name: String,
        #[source]
        source: moat_policy::PolicyError,
    },
    #[error("policy {name:?} for the root {rootfs}: the analysis for `auto` failed (run under --policy baseline with annotation {POLICY_ANNOTATION}=baseline, or fix the root)")]
    Analysis {
        name: String,
        rootfs: String,
        #[source]
        source: moat_profile::rootfs_profile::RootfsProfileError,
    },
    #[error("annotation {ISOLATION_ANNOTATION}={0:?}: use sandbox or vm")]
    Isolation(String),
    #[error("annotation {POLICY_ANNOTATION}={name:?} is refused for {who}: {reasons}")]
    NotAuthorised {
        name: String,
        who: String,
        reasons: String,
    },
}

fn parse_isolation(v: &str) -> Option<Isolation> {
    match v {
        "sandbox" => Some(Isolation::Sandbox),
        "vm" => Some(Isolation::Vm),
        _ => None,
    }
}

impl Site {
    /// Reads the site file: `MOAT_OCI_CONFIG` when root runs as itself
    /// (never under sudo), else /etc/moat/oci.yaml; built-in defaults
    /// when it does not exist.
    pub fn load() -> Result<Site, SiteError> {
        let path = crate::env_override("MOAT_OCI_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SITE_FILE));
        match std::fs::read_to_string(&path) {
            Ok(text) => Site::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Site::default()),
            Err(source) => Err(SiteError::Read {
                file: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<Site, SiteError> {
        let mut site = Site {
            source: file.to_string(),
            ..Site::default()
        };
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |msg: String| SiteError::Syntax {
                file: file.to_string(),
                line: i + 1,
                msg,
            };
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| err(format!("expected `key: value`, got {line:?}")))?;
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "policy" => site.policy = v.to_string(),
                "isolation" => {
                    site.isolation = parse_isolation(v)
                        .ok_or_else(|| err(format!("isolation {v:?}: use sandbox or vm")))?
                }
                "allow_unconfined_seccomp" => {
                    site.allow_unconfined_seccomp = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(err(format!("{v:?}: use true or false"))),
                    }
                }
                "no_new_privileges" => {
                    site.honour_new_privileges = match v {
                        "always" => false,
                        "as-requested" => true,
                        _ => return Err(err(format!("{v:?}: use always or as-requested"))),
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown key {other:?} (known: policy, isolation, allow_unconfined_seccomp, no_new_privileges)"
                    )))
                }
            }
        }
        Ok(site)
    }

    /// The isolation a bundle asks for, or the site's.
    pub fn isolation_for(
        &self,
        annotations: &std::collections::HashMap<String, String>,
    ) -> Result<Isolation, SiteError> {
        match annotations.get(ISOLATION_ANNOTATION) {
            Some(v) => parse_isolation(v).ok_or_else(|| SiteError::Isolation(v.clone())),
            None => Ok(self.isolation),
        }
    }

    /// The policy of a bundle: the annotation's (RBAC decides whether the
    /// caller may use it) or the site's; `auto` (or a policy extending it)
    /// narrowed to the programs in `rootfs` once authorised.
    pub fn policy_for(
        &self,
        annotations: &std::collections::HashMap<String, String>,
        bundle: &Path,
        rootfs: &Path,
    ) -> Result<Policy, SiteError> {
        let Some(name) = annotations.get(POLICY_ANNOTATION) else {
            let policy = resolve(&self.policy, bundle)?;
            return self.narrow_to_root(&self.policy, policy, bundle, rootfs);
        };
        let policy = resolve(name, bundle)?;
        let who = moat_policy::rbac::invoker(
            rustix::process::getuid().as_raw(),
            |v| std::env::var(v).ok(),
            Path::new("/etc/passwd"),
        )
        .map_err(|e| SiteError::NotAuthorised {
            name: name.clone(),
            who: "the caller".into(),
            reasons: e.to_string(),
        })?;
        let principal = moat_policy::rbac::Principal::from_uid(who.uid);
        let rbac_path = Path::new("/etc/moat/rbac.yaml");
        let rbac = match moat_policy::rbac::Rbac::load(rbac_path) {
            Ok(r) => Some(r),
            Err(_) if !rbac_path.exists() => None,
            Err(e) => {
                return Err(SiteError::NotAuthorised {
                    name: name.clone(),
                    who: who.describe(),
                    reasons: e.to_string(),
                })
            }
        };
        let d = moat_policy::rbac::authorize(rbac.as_ref(), rbac_path, &principal, &policy);
        if !d.allowed {
            return Err(SiteError::NotAuthorised {
                name: name.clone(),
                who: who.describe(),
                reasons: d.reasons.join("; "),
            });
        }
        // Authorised at its widest (baseline's calls); narrowing only removes.
        self.narrow_to_root(name, policy, bundle, rootfs)
    }

    /// `policy` narrowed to `rootfs`'s programs when it is `auto` or
    /// extends it; any other policy as it is.
    fn narrow_to_root(
        &self,
        name: &str,
        policy: Policy,
        bundle: &Path,
        rootfs: &Path,
    ) -> Result<Policy, SiteError> {
        if !policy.uses_auto() {
            return Ok(policy);
        }
        let profile = moat_profile::rootfs_profile::analyze_dir_cached(&self.profile_cache, rootfs)
            .map_err(|source| SiteError::Analysis {
                name: name.to_string(),
                rootfs: rootfs.display().to_string(),
                source,
            })?;
        let syscalls =
            moat_profile::rootfs_profile::image_syscalls(&rootfs.display().to_string(), &profile);
        let path = policy_path(name, bundle);
        Policy::resolve_for_image(path.to_str().unwrap_or(name), &syscalls).map_err(|source| {
            SiteError::Policy {
                name: name.to_string(),
                source,
            }
        })
    }
}

/// Where the profiles of bundle roots are cached: under moat's state root
/// (`MOAT_ROOT` when root runs as itself, else /var/lib/moat).
fn profile_cache() -> PathBuf {
    crate::env_override("MOAT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/moat"))
        .join("cache")
        .join("rootfs-profiles")
}

/// A built-in name as it is, a policy file relative to the bundle.
fn policy_path(name: &str, bundle: &Path) -> PathBuf {
    if Path::new(name).is_relative() && !name.contains('/') {
        PathBuf::from(name)
    } else {
        bundle.join(name)
    }
}

/// A built-in name, or a policy file (relative to the bundle).
/// `auto` (or a policy extending it) at its widest, baseline's calls:
/// what is authorised before it is narrowed to the root.
fn resolve(name: &str, bundle: &Path) -> Result<Policy, SiteError> {
    let path = policy_path(name, bundle);
    let widest = moat_policy::auto::ImageSyscalls::widest("the bundle's root");
    Policy::resolve_for_image(path.to_str().unwrap_or(name), &widest).map_err(|source| {
        SiteError::Policy {
            name: name.to_string(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_file_parses_and_names_bad_lines() {
        let s = Site::parse(
            "# comment\npolicy: restricted\nisolation: vm\nallow_unconfined_seccomp: true\nno_new_privileges: as-requested\n",
            "oci.yaml",
        )
        .unwrap();
        assert_eq!(s.policy, "restricted");
        assert_eq!(s.isolation, Isolation::Vm);
        assert!(s.allow_unconfined_seccomp);
        assert!(s.honour_new_privileges);
        assert!(!Site::default().honour_new_privileges);
        let e = Site::parse("policy: a\nbogus: 1\n", "oci.yaml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("oci.yaml:2: unknown key \"bogus\""),
            "{e}"
        );
        let e = Site::parse("isolation: kvm\n", "x").unwrap_err();
        assert!(e.to_string().contains("use sandbox or vm"), "{e}");
    }
}
