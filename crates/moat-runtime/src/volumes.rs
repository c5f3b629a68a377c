//! `moat run -v SRC:DST[:ro|rw]` and `--tmpfs DIR[:size]`, checked against
//! the policy's grants: a flag narrows what the policy grants, never widens
//! it. A host directory must lie under a `filesystem.volumes` source, a
//! named volume must match a `filesystem.named_volumes` grant, a tmpfs must
//! lie under a `filesystem.writable` path; each is read-only unless its
//! grant is writable.

use std::path::Path;

use moat_policy::model::{valid_volume_name, Policy};
use moat_policy::plan::MountPlan;
use moat_policy::rbac::Request;

/// What a `-v` mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A host directory (absolute path).
    Host(String),
    /// A moat named volume.
    Named(String),
}

/// One `-v SRC:DST[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeArg {
    pub source: VolumeSource,
    pub destination: String,
    /// `Some(true)` for `:ro`, `Some(false)` for `:rw`, `None`: the grant's.
    pub read_only: Option<bool>,
}

/// One `--tmpfs DIR[:size]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsArg {
    pub destination: String,
    pub size_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeArgError {
    #[error("-v {0:?}: expected SOURCE:DIR[:ro|rw] (SOURCE a host directory or a volume name)")]
    Shape(String),
    #[error("-v {arg:?}: {why}")]
    Bad { arg: String, why: String },
    #[error("--tmpfs {arg:?}: {why}")]
    BadTmpfs { arg: String, why: String },
}

/// A container path: absolute, no `..`, not `/`.
fn container_dir(dir: &str) -> Result<String, String> {
    if !dir.starts_with('/') {
        return Err(format!(
            "{dir:?} must be an absolute path inside the container"
        ));
    }
    if dir.split('/').any(|c| c == "..") {
        return Err(format!("{dir:?} must not contain `..`"));
    }
    let norm: Vec<&str> = dir
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if norm.is_empty() {
        return Err(
            "nothing can be mounted at `/`: the root is always the image's, read-only".into(),
        );
    }
    Ok(format!("/{}", norm.join("/")))
}

impl VolumeArg {
    pub fn parse(arg: &str) -> Result<Self, VolumeArgError> {
        let parts: Vec<&str> = arg.split(':').collect();
        let (src, dst, mode) = match parts.as_slice() {
            [s, d] => (*s, *d, None),
            [s, d, m] => (*s, *d, Some(*m)),
            _ => return Err(VolumeArgError::Shape(arg.to_string())),
        };
        let bad = |why: String| VolumeArgError::Bad {
            arg: arg.to_string(),
            why,
        };
        let read_only = match mode {
            None => None,
            Some("ro") => Some(true),
            Some("rw") => Some(false),
            Some(m) => return Err(bad(format!("unknown option {m:?}: use ro or rw"))),
        };
        let source = if src.starts_with('/') {
            if src.split('/').any(|c| c == "..") {
                return Err(bad(format!("host path {src:?} must not contain `..`")));
            }
            let norm: Vec<&str> = src
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            VolumeSource::Host(format!("/{}", norm.join("/")))
        } else if valid_volume_name(src) {
            VolumeSource::Named(src.to_string())
        } else {
            return Err(bad(format!(
                "{src:?} is neither an absolute host path nor a volume name (letters, digits, `_`, `.`, `-`)"
            )));
        };
        let destination = container_dir(dst).map_err(bad)?;
        Ok(Self {
            source,
            destination,
            read_only,
        })
    }
}

impl TmpfsArg {
    pub fn parse(arg: &str) -> Result<Self, VolumeArgError> {
        let bad = |why: String| VolumeArgError::BadTmpfs {
            arg: arg.to_string(),
            why,
        };
        let (dir, size) = match arg.split_once(':') {
            Some((d, s)) => {
                let size = parse_flag_size(s)
                    .ok_or_else(|| bad(format!("size {s:?} is not a size (e.g. 64m, 1g)")))?;
                (d, Some(size))
            }
            None => (arg, None),
        };
        Ok(Self {
            destination: container_dir(dir).map_err(bad)?,
            size_bytes: size,
        })
    }
}

/// A size on the command line, as podman reads it: a number with an
/// optional one-letter binary suffix in either case (`512m`, `10G`), or the
/// policy's forms (`64Mi`).
pub fn parse_flag_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let shift = match t.chars().last()?.to_ascii_lowercase() {
        'b' => 0,
        'k' => 10,
        'm' => 20,
        'g' => 30,
        't' => 40,
        _ => return moat_policy::parse_size(t),
    };
    let n: u64 = t[..t.len() - 1].parse().ok()?;
    n.checked_mul(1u64 << shift)
}

fn path_under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The mounts the flags ask for, checked against `policy`'s grants, and
/// the RBAC requests they add. `volume_dir` gives a named volume's
/// directory in the store. Errors name the policy and the fix.
pub fn check(
    policy: &Policy,
    volumes: &[VolumeArg],
    tmpfs: &[TmpfsArg],
    volume_dir: &dyn Fn(&str) -> String,
) -> anyhow::Result<(Vec<MountPlan>, Vec<Request>)> {
    check_in(policy, volumes, tmpfs, volume_dir, &[])
}

/// [`check`], also refusing any host directory (the flags' and the
/// policy's own) that is, holds or lies inside one of `state` (moat's state
/// and run roots): a container never gets moat's own state, whatever a
/// grant says.
pub fn check_in(
    policy: &Policy,
    volumes: &[VolumeArg],
    tmpfs: &[TmpfsArg],
    volume_dir: &dyn Fn(&str) -> String,
    state: &[&Path],
) -> anyhow::Result<(Vec<MountPlan>, Vec<Request>)> {
    let fs = &policy.spec.filesystem;
    let name = &policy.name;
    let overlaps_state = |src: &str| {
        let src = Path::new(src);
        state.iter().find(|root| {
            let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
            root.starts_with(src) || src.starts_with(&root)
        })
    };
    for v in &fs.volumes {
        if let Some(root) = overlaps_state(&v.source) {
            anyhow::bail!(
                "policy {name:?} mounts {} at {}, which holds or lies inside moat's state ({}); moat never gives a container its own state: change the volume's source",
                v.source,
                v.path,
                root.display()
            );
        }
    }
    let mut mounts = Vec::new();
    let mut requests = Vec::new();
    for v in volumes {
        let dst = &v.destination;
        let (grant_ro, mount) = match &v.source {
            VolumeSource::Host(src) => {
                let grants: Vec<(&str, bool)> = fs
                    .volumes
                    .iter()
                    .map(|v| (v.source.as_str(), v.read_only))
                    .chain(
                        fs.volume_grants
                            .iter()
                            .map(|g| (g.source.as_str(), g.read_only)),
                    )
                    .filter(|(source, _)| path_under(src, source))
                    .collect();
                if grants.is_empty() {
                    anyhow::bail!(
                        "-v {src}:{dst}: policy {name:?} grants no host directory containing {src}; \
                         add `{{source: {src}, path: {dst}}}` under `filesystem.volumes` in the policy \
                         (and the path to your role's `volumes` in the RBAC file){}",
                        granted_list(
                            fs.volumes
                                .iter()
                                .map(|g| g.source.as_str())
                                .chain(fs.volume_grants.iter().map(|g| g.source.as_str()))
                        )
                    );
                }
                if let Some(root) = overlaps_state(src) {
                    anyhow::bail!(
                        "-v {src}:{dst}: {src} holds or lies inside moat's state ({}); moat never gives a container its own state: pick another directory",
                        root.display()
                    );
                }
                // Rule 1: the path is opened later without following any
                // symbolic link; say so now rather than fail at mount time.
                match std::fs::canonicalize(src) {
                    Ok(real) if real != Path::new(src) => anyhow::bail!(
                        "-v {src}:{dst}: {src} goes through a symbolic link (it is {}); moat never follows links in a volume's host path: name the real directory",
                        real.display()
                    ),
                    Ok(_) => {}
                    Err(e) => anyhow::bail!("-v {src}:{dst}: host directory {src}: {e}"),
                }
                requests.push(Request::Volume(src.clone()));
                let ro = grants.iter().all(|(_, ro)| *ro);
                (
                    ro,
                    MountPlan::Volume {
                        source: src.clone(),
                        destination: dst.clone(),
                        read_only: true,
                    },
                )
            }
            VolumeSource::Named(vol) => {
                let grants: Vec<_> = fs.named_volumes.iter().filter(|g| g.covers(vol)).collect();
                if grants.is_empty() {
                    anyhow::bail!(
                        "-v {vol}:{dst}: policy {name:?} grants no named volume {vol:?}; \
                         add `{{name: {vol}, read_only: false}}` under `filesystem.named_volumes` in the policy \
                         (and {vol:?} to your role's `named_volumes` in the RBAC file){}",
                        granted_list(fs.named_volumes.iter().map(|g| g.name.as_str()))
                    );
                }
                requests.push(Request::NamedVolume(vol.clone()));
                let ro = grants.iter().all(|g| g.read_only);
                (
                    ro,
                    MountPlan::Named {
                        name: vol.clone(),
                        dir: volume_dir(vol),
                        destination: dst.clone(),
                        read_only: true,
                    },
                )
            }
        };
        let read_only = match v.read_only {
            Some(false) if grant_ro => anyhow::bail!(
                "-v ...:{dst}:rw: policy {name:?} grants this volume read-only; drop `:rw` or make the policy's grant `read_only: false`"
            ),
            Some(ro) => ro,
            None => grant_ro,
        };
        mounts.push(with_read_only(mount, read_only));
    }
    for t in tmpfs {
        let dst = &t.destination;
        let Some(grant) = fs
            .writable
            .iter()
            .filter(|w| path_under(dst, &w.path))
            .max_by_key(|w| w.path.len())
        else {
            anyhow::bail!(
                "--tmpfs {dst}: policy {name:?} grants no writable directory containing {dst}; \
                 add `{{path: {dst}}}` under `filesystem.writable` in the policy{}",
                granted_list(fs.writable.iter().map(|w| w.path.as_str()))
            );
        };
        let size = t.size_bytes.unwrap_or(grant.size_bytes);
        if size > grant.size_bytes {
            anyhow::bail!(
                "--tmpfs {dst}:{size}: larger than the {} bytes policy {name:?} grants under {}; ask for less",
                grant.size_bytes,
                grant.path
            );
        }
        mounts.push(MountPlan::Tmpfs {
            destination: dst.clone(),
            size_bytes: size,
            optional: false,
            mode: None,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for m in &mounts {
        if !seen.insert(m.destination().to_string()) {
            anyhow::bail!(
                "{} is the target of two -v/--tmpfs flags; keep one",
                m.destination()
            );
        }
    }
    Ok((mounts, requests))
}

fn with_read_only(m: MountPlan, ro: bool) -> MountPlan {
    match m {
        MountPlan::Volume {
            source,
            destination,
            ..
        } => MountPlan::Volume {
            source,
            destination,
            read_only: ro,
        },
        MountPlan::Named {
            name,
            dir,
            destination,
            ..
        } => MountPlan::Named {
            name,
            dir,
            destination,
            read_only: ro,
        },
        other => other,
    }
}

fn granted_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    match v.is_empty() {
        true => String::new(),
        false => format!(" (it grants: {})", v.join(", ")),
    }
}

/// `plan`'s mounts with `extra` added: an extra mount replaces the policy's
/// mount at the same target (that is how `-v` narrows a policy volume).
pub fn merge(plan_mounts: &mut Vec<MountPlan>, extra: Vec<MountPlan>) {
    for m in extra {
        plan_mounts.retain(|p| p.destination() != m.destination());
        plan_mounts.push(m);
    }
    moat_policy::sort_mounts(plan_mounts);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(fs: &str) -> Policy {
        let text = format!(
            "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: vols\nspec:\n  extends: baseline\n  filesystem:\n{fs}"
        );
        Policy::parse(&text, "vols.yaml").unwrap()
    }

    fn dir(n: &str) -> String {
        format!("/store/{n}")
    }

    #[test]
    fn parses_flags() {
        let v = VolumeArg::parse("/srv/data/:/data:ro").unwrap();
        assert_eq!(v.source, VolumeSource::Host("/srv/data".into()));
        assert_eq!((v.destination.as_str(), v.read_only), ("/data", Some(true)));
        let v = VolumeArg::parse("cache:/c").unwrap();
        assert_eq!(v.source, VolumeSource::Named("cache".into()));
        assert!(VolumeArg::parse("cache").is_err());
        assert!(VolumeArg::parse("a/b:/c").is_err());
        assert!(VolumeArg::parse("/a:/").is_err());
        assert!(VolumeArg::parse("/a:/b:x").is_err());
        assert!(VolumeArg::parse("/a/../etc:/b").is_err());
        let t = TmpfsArg::parse("/scratch:1m").unwrap();
        assert_eq!(
            (t.destination.as_str(), t.size_bytes),
            ("/scratch", Some(1 << 20))
        );
        assert!(TmpfsArg::parse("/x:lots").is_err());
        assert_eq!(parse_flag_size("10G"), Some(10 << 30));
        assert_eq!(parse_flag_size("64Mi"), Some(64 << 20));
        assert_eq!(parse_flag_size("4096"), Some(4096));
    }

    #[test]
    fn flags_narrow_and_never_widen() {
        let p = policy("    volumes:\n      - {source: /, path: /host, read_only: true}\n    named_volumes:\n      - {name: \"app-*\", read_only: false}\n");
        // A host path under a read-only grant: read-only, :rw refused.
        let (m, r) = check(&p, &[VolumeArg::parse("/tmp:/t").unwrap()], &[], &dir).unwrap();
        assert!(matches!(
            &m[0],
            MountPlan::Volume {
                read_only: true,
                ..
            }
        ));
        assert_eq!(r, vec![Request::Volume("/tmp".into())]);
        let e = check(&p, &[VolumeArg::parse("/tmp:/t:rw").unwrap()], &[], &dir).unwrap_err();
        assert!(
            e.to_string()
                .contains("policy \"vols\" grants this volume read-only"),
            "{e}"
        );
        // Named: covered by the prefix grant, writable by default.
        let (m, _) = check(&p, &[VolumeArg::parse("app-1:/a").unwrap()], &[], &dir).unwrap();
        assert_eq!(
            m[0],
            MountPlan::Named {
                name: "app-1".into(),
                dir: "/store/app-1".into(),
                destination: "/a".into(),
                read_only: false
            }
        );
        let e = check(&p, &[VolumeArg::parse("other:/a").unwrap()], &[], &dir).unwrap_err();
        assert!(
            e.to_string()
                .contains("policy \"vols\" grants no named volume \"other\""),
            "{e}"
        );
        // Tmpfs within the writable grants only, no larger.
        let e = check(&p, &[], &[TmpfsArg::parse("/data").unwrap()], &dir).unwrap_err();
        assert!(
            e.to_string().contains("grants no writable directory"),
            "{e}"
        );
        let (m, _) = check(&p, &[], &[TmpfsArg::parse("/tmp/x:1m").unwrap()], &dir).unwrap();
        assert!(matches!(
            &m[0],
            MountPlan::Tmpfs {
                size_bytes: 1048576,
                ..
            }
        ));
        assert!(check(&p, &[], &[TmpfsArg::parse("/tmp:10g").unwrap()], &dir).is_err());
    }

    #[test]
    fn a_volume_without_path_is_a_grant_only() {
        let p = policy("    volumes:\n      - {source: /tmp, read_only: false}\n");
        assert!(p.spec.filesystem.volumes.is_empty());
        let plan = moat_policy::compile(&p).unwrap();
        assert!(plan
            .mounts
            .iter()
            .all(|m| !matches!(m, MountPlan::Volume { .. })));
        let (m, r) = check(&p, &[VolumeArg::parse("/tmp:/x").unwrap()], &[], &dir).unwrap();
        assert_eq!(r, vec![Request::Volume("/tmp".into())]);
        assert!(matches!(
            &m[0],
            MountPlan::Volume {
                read_only: false,
                ..
            }
        ));
    }

    #[test]
    fn ungranted_host_path_names_the_policy() {
        let p = policy("    volumes:\n      - {source: /srv/data, path: /data}\n");
        let e = check(&p, &[VolumeArg::parse("/etc:/e").unwrap()], &[], &dir).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("policy \"vols\" grants no host directory containing /etc"),
            "{e}"
        );
        assert!(e.contains("(it grants: /srv/data)"), "{e}");
    }

    #[test]
    fn a_flag_replaces_the_policy_mount_at_its_target() {
        let mut mounts = vec![MountPlan::Volume {
            source: "/srv".into(),
            destination: "/data".into(),
            read_only: false,
        }];
        merge(
            &mut mounts,
            vec![MountPlan::Volume {
                source: "/srv/a".into(),
                destination: "/data".into(),
                read_only: true,
            }],
        );
        assert_eq!(mounts.len(), 1);
        assert!(matches!(
            &mounts[0],
            MountPlan::Volume {
                read_only: true,
                ..
            }
        ));
    }
}
