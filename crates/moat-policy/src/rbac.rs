//! RBAC: who may grant what. A policy that asks for more than the invoking
//! user's roles grant is refused, naming each offending grant and a role that
//! would allow it. Every decision goes to a JSON-lines audit log.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::PolicyError;
use crate::model::Policy;
use crate::parse::{get, Cx, Field};
use crate::plan::IsolationRequirement;
use crate::suggest;
use crate::yaml::{self, Node};

/// The default RBAC file.
pub const DEFAULT_RBAC_PATH: &str = "/etc/moat/rbac.yaml";

/// Why an RBAC file could not be loaded or the audit log written.
#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error("cannot read {kind} {}", path.display())]
    Read {
        /// `RBAC file`, `trust file`.
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad input at a known place, with the fix.
    #[error("{file}:{line}:{col}: {message}")]
    Parse {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("cannot append to the audit log {}", path.display())]
    AppendAudit {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown user `{name}`: not in /etc/passwd and not a number")]
    LookupUser { name: String },
    #[error("{var}={value:?} names no user of this host; moat cannot tell whom it acts for (unset {var} or fix it)")]
    Invoker { var: &'static str, value: String },
    /// The RBAC file (or its directory) could be changed by someone other than root.
    #[error("{kind} {}: {what} {} is owned by uid {uid} with mode {mode:04o}; it must be owned by root and not writable by group or others (chown root:root {}; chmod go-w {})", path.display(), checked.display(), checked.display(), checked.display())]
    RbacInsecure {
        /// `RBAC file`, `trust file`.
        kind: &'static str,
        path: PathBuf,
        what: &'static str,
        checked: PathBuf,
        uid: u32,
        mode: u32,
    },
    /// The audit log path is not a plain file of ours in a directory of ours.
    #[error("refusing to append to the audit log {}: {why}", path.display())]
    AuditInsecure { path: PathBuf, why: String },
}

impl From<PolicyError> for RbacError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Parse {
                file,
                line,
                col,
                message,
            } => RbacError::Parse {
                file,
                line,
                col,
                message,
            },
            other => RbacError::Parse {
                file: String::new(),
                line: 0,
                col: 0,
                message: other.to_string(),
            },
        }
    }
}

/// What one role may grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grants {
    /// Canonical capability names; `ALL` grants every capability.
    pub capabilities: BTreeSet<String>,
    /// `none`, `loopback`, `egress`, `publish`.
    pub network: BTreeSet<String>,
    /// `vm`, `sandbox`.
    pub isolation: BTreeSet<String>,
    /// Host path prefixes that may be mounted as volumes.
    pub volumes: Vec<String>,
    /// Named volumes (names, `prefix*` or `*`) that may be mounted.
    pub named_volumes: Vec<String>,
    pub exec: bool,
    pub devices: bool,
    /// May change the host's trust roots (`moat image trust set`).
    pub trust: bool,
    /// Directories under which `moat run --rootfs DIR` may take a root
    /// file system (a host directory becomes the container's root).
    pub rootfs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Role {
    pub name: String,
    pub grants: Grants,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binding {
    pub role: String,
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// A loaded RBAC file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rbac {
    /// Where it was read from, for messages.
    pub source: String,
    pub roles: Vec<Role>,
    pub bindings: Vec<Binding>,
}

const NETWORK_GRANTS: &[&str] = &["none", "loopback", "egress", "publish"];
const ISOLATION_GRANTS: &[&str] = &["vm", "sandbox"];

impl Rbac {
    /// Read and parse an RBAC file. The file decides who may grant what,
    /// so it must be owned by root and not writable by group or others, and
    /// so must every directory above it (a sticky directory such as `/tmp`
    /// is accepted: only root may replace root's file there).
    pub fn load(path: &Path) -> Result<Rbac, RbacError> {
        let text = read_site_file(path, "RBAC file")?;
        Rbac::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Rbac, RbacError> {
        let cx = Cx { file };
        let root = yaml::parse(text).map_err(|e| cx.err(e.pos, e.message))?;
        let top = cx.map(
            &root,
            "",
            &["apiVersion", "kind", "metadata", "roles", "bindings"],
        )?;
        cx.header(&root, &top, "RBAC", "an RBAC file")?;
        let mut roles: Vec<Role> = Vec::new();
        if let Some(list) = get(&top, "roles") {
            for item in cx.list(list, "roles")? {
                let m = cx.map(item, "roles", &["name", "grants"])?;
                let name = cx.string(cx.require(item, &m, "name", "roles")?, "roles.name")?;
                if roles.iter().any(|r| r.name == name) {
                    return Err(cx
                        .err(item.pos, format!("role `{name}` is defined twice"))
                        .into());
                }
                let grants = match get(&m, "grants") {
                    Some(g) => parse_grants(&cx, g)?,
                    None => Grants::default(),
                };
                roles.push(Role { name, grants });
            }
        }
        let mut bindings = Vec::new();
        if let Some(list) = get(&top, "bindings") {
            for item in cx.list(list, "bindings")? {
                let m = cx.map(item, "bindings", &["role", "users", "groups"])?;
                let role_n = cx.require(item, &m, "role", "bindings")?;
                let role = cx.string(role_n, "bindings.role")?;
                if !roles.iter().any(|r| r.name == role) {
                    let hint = crate::error::hint(suggest::closest(
                        &role,
                        roles.iter().map(|r| r.name.as_str()),
                    ));
                    return Err(cx
                        .err(
                            role_n.pos,
                            format!("binding to unknown role `{role}`{hint}"),
                        )
                        .into());
                }
                let strings = |key: &str| -> Result<Vec<String>, PolicyError> {
                    match get(&m, key) {
                        None => Ok(Vec::new()),
                        Some(n) => cx
                            .list(n, &format!("bindings.{key}"))?
                            .iter()
                            .map(|x| cx.string(x, &format!("bindings.{key}")))
                            .collect(),
                    }
                };
                bindings.push(Binding {
                    role,
                    users: strings("users")?,
                    groups: strings("groups")?,
                });
            }
        }
        Ok(Rbac {
            source: file.to_string(),
            roles,
            bindings,
        })
    }

    /// The roles bound to a principal, by user name, uid or group.
    pub fn roles_of(&self, who: &Principal) -> Vec<&Role> {
        let uid = who.uid.to_string();
        let mut names: Vec<&str> = Vec::new();
        for b in &self.bindings {
            let by_user = b.users.iter().any(|u| *u == who.name || *u == uid);
            let by_group = b.groups.iter().any(|g| who.groups.contains(g));
            if (by_user || by_group) && !names.contains(&b.role.as_str()) {
                names.push(&b.role);
            }
        }
        self.roles
            .iter()
            .filter(|r| names.contains(&r.name.as_str()))
            .collect()
    }
}

fn parse_grants(cx: &Cx<'_>, node: &Node) -> Result<Grants, PolicyError> {
    let mut g = Grants::default();
    cx.section(node, "roles.grants", GRANT_FIELDS, &mut g)?;
    Ok(g)
}

/// Each entry of a list grant, read with `read`.
fn each(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    mut read: impl FnMut(&Node) -> Result<(), PolicyError>,
) -> Result<(), PolicyError> {
    cx.list(n, path)?.iter().try_for_each(&mut read)
}

/// A grant of one of `allowed` names.
fn one_of(cx: &Cx<'_>, item: &Node, path: &str, allowed: &[&str]) -> Result<String, PolicyError> {
    let options: Vec<(&str, &str)> = allowed.iter().map(|a| (*a, *a)).collect();
    Ok(cx.choice(item, path, &options)?.to_string())
}

/// The keys of `roles.grants`.
const GRANT_FIELDS: &[Field<Grants>] = &[
    ("capabilities", |cx, n, path, g| {
        each(cx, n, path, |item| {
            let raw = cx.string(item, path)?;
            let c = if raw.eq_ignore_ascii_case("ALL") {
                "ALL"
            } else {
                cx.capability(item, path)?
            };
            g.capabilities.insert(c.to_string());
            Ok(())
        })
    }),
    ("network", |cx, n, path, g| {
        each(cx, n, path, |item| {
            g.network.insert(one_of(cx, item, path, NETWORK_GRANTS)?);
            Ok(())
        })
    }),
    ("isolation", |cx, n, path, g| {
        each(cx, n, path, |item| {
            g.isolation
                .insert(one_of(cx, item, path, ISOLATION_GRANTS)?);
            Ok(())
        })
    }),
    ("volumes", |cx, n, path, g| {
        each(cx, n, path, |item| {
            g.volumes.push(cx.abs_path(item, path)?);
            Ok(())
        })
    }),
    ("named_volumes", |cx, n, path, g| {
        each(cx, n, path, |item| {
            let v = cx.string(item, path)?;
            let bare = v.strip_suffix('*').unwrap_or(&v);
            if !(bare.is_empty() || crate::model::valid_volume_name(bare)) {
                return Err(cx.err(
                    item.pos,
                    format!("`{path}` entries must be volume names, prefixes ending in `*`, or `*`; found `{v}`"),
                ));
            }
            g.named_volumes.push(v);
            Ok(())
        })
    }),
    ("exec", |cx, n, path, g| {
        g.exec = cx.bool(n, path)?;
        Ok(())
    }),
    ("devices", |cx, n, path, g| {
        g.devices = cx.bool(n, path)?;
        Ok(())
    }),
    ("rootfs", |cx, n, path, g| {
        each(cx, n, path, |item| {
            g.rootfs.push(cx.abs_path(item, path)?);
            Ok(())
        })
    }),
    ("trust", |cx, n, path, g| {
        g.trust = cx.bool(n, path)?;
        Ok(())
    }),
];

/// The user a decision is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub uid: u32,
    pub name: String,
    /// Group names: the primary group and every group listing the user.
    pub groups: Vec<String>,
}

/// Who moat acts for. Only root acting as itself ([`Invoker::is_root`]) may
/// override moat's settings (`--root`, `--rbac`, `MOAT_*`); anyone else,
/// including root running on someone's behalf through sudo, gets the
/// defaults and is authorised by the site RBAC file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Invoker {
    /// The uid decisions are made for.
    pub uid: u32,
    pub via: Via,
}

/// How the invoking user was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    /// Real uid 0 and no sign of acting for someone else.
    #[default]
    Root,
    /// Root on behalf of a user: `SUDO_UID`/`SUDO_USER`, `PKEXEC_UID`, `DOAS_USER`.
    Delegated(&'static str),
    /// A real uid other than 0 (a set-uid or daemon path, or no privilege at all).
    RealUid,
}

impl Invoker {
    pub fn is_root(&self) -> bool {
        self.via == Via::Root
    }

    /// `uid 1000 through sudo`, for notices.
    pub fn describe(&self) -> String {
        match self.via {
            Via::Root => "root".to_string(),
            Via::Delegated(var) => format!("uid {} ({var})", self.uid),
            Via::RealUid => format!("uid {} (real uid)", self.uid),
        }
    }
}

/// Who runs moat: the real uid, or, when that is root, the user root acts
/// for according to the variables sudo, pkexec and doas set. `var` reads
/// an environment variable; `passwd` resolves user names. A variable that
/// names no user is an error (never silently root).
pub fn invoker(
    real_uid: u32,
    var: impl Fn(&str) -> Option<String>,
    passwd: &Path,
) -> Result<Invoker, RbacError> {
    if real_uid != 0 {
        return Ok(Invoker {
            uid: real_uid,
            via: Via::RealUid,
        });
    }
    let delegated = |uid: u32, what: &'static str| Invoker {
        uid,
        via: if uid == 0 {
            Via::Root
        } else {
            Via::Delegated(what)
        },
    };
    for what in ["SUDO_UID", "PKEXEC_UID"] {
        if let Some(v) = var(what).filter(|v| !v.is_empty()) {
            let uid = v.parse::<u32>().map_err(|_| RbacError::Invoker {
                var: what,
                value: v.clone(),
            })?;
            return Ok(delegated(uid, what));
        }
    }
    for what in ["SUDO_USER", "DOAS_USER"] {
        if let Some(v) = var(what).filter(|v| !v.is_empty()) {
            let uid = match v.parse::<u32>() {
                Ok(u) => Some(u),
                Err(_) => Principal::lookup_in(&v, passwd, Path::new("/dev/null"))
                    .ok()
                    .map(|p| p.uid),
            };
            let uid = uid.ok_or(RbacError::Invoker {
                var: what,
                value: v.clone(),
            })?;
            return Ok(delegated(uid, what));
        }
    }
    Ok(Invoker {
        uid: 0,
        via: Via::Root,
    })
}

impl Principal {
    /// Resolve a uid with the system's `/etc/passwd` and `/etc/group`.
    pub fn from_uid(uid: u32) -> Principal {
        Principal::from_uid_in(uid, Path::new("/etc/passwd"), Path::new("/etc/group"))
    }

    /// A user name or a numeric uid (`--as USER`).
    pub fn lookup(user: &str) -> Result<Principal, RbacError> {
        Principal::lookup_in(user, Path::new("/etc/passwd"), Path::new("/etc/group"))
    }

    pub fn lookup_in(user: &str, passwd: &Path, group: &Path) -> Result<Principal, RbacError> {
        if let Ok(uid) = user.parse::<u32>() {
            return Ok(Principal::from_uid_in(uid, passwd, group));
        }
        let pw = std::fs::read_to_string(passwd).unwrap_or_default();
        let uid = pw
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == user)
            .and_then(|f| f[2].parse::<u32>().ok());
        match uid {
            Some(uid) => Ok(Principal::from_uid_in(uid, passwd, group)),
            None => Err(RbacError::LookupUser {
                name: user.to_string(),
            }),
        }
    }

    pub fn from_uid_in(uid: u32, passwd: &Path, group: &Path) -> Principal {
        let pw = std::fs::read_to_string(passwd).unwrap_or_default();
        let entry = pw
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid));
        let (name, gid) = match entry {
            Some(f) => (f[0].to_string(), f[3].parse::<u32>().ok()),
            None => (uid.to_string(), None),
        };
        let gr = std::fs::read_to_string(group).unwrap_or_default();
        let mut groups = Vec::new();
        for f in gr.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() < 4 {
                continue;
            }
            let primary = gid.is_some() && f[2].parse::<u32>().ok() == gid;
            let member = f[3].split(',').any(|m| m == name);
            if (primary || member) && !groups.contains(&f[0].to_string()) {
                groups.push(f[0].to_string());
            }
        }
        Principal { uid, name, groups }
    }
}

/// The outcome of an authorisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The roles that were considered.
    pub roles: Vec<String>,
    /// One line per offending grant (empty when allowed).
    pub reasons: Vec<String>,
    /// A warning to print once (root without an RBAC file).
    pub warning: Option<String>,
}

/// One thing a run asks for, in RBAC terms: what its policy grants, plus
/// what the command line adds (a `--rootfs` directory, the resolved form of
/// a volume whose path goes through a symbolic link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Capability(String),
    Network(String),
    Isolation(String),
    Volume(String),
    /// A named volume (or a policy's pattern of them).
    NamedVolume(String),
    Rootfs(String),
    Exec,
    Devices,
    /// Changing the host's trust roots: a grant of its own, asked by no
    /// policy.
    Trust,
}

impl Request {
    fn describe(&self) -> String {
        match self {
            Request::Capability(c) => format!("capability {c}"),
            Request::Network(n) => format!("network {n}"),
            Request::Isolation(i) => format!("isolation {i}"),
            Request::Volume(v) => format!("volume {v}"),
            Request::NamedVolume(v) => format!("named volume {v}"),
            Request::Rootfs(r) => format!("rootfs {r}"),
            Request::Exec => "exec".to_string(),
            Request::Devices => "devices".to_string(),
            Request::Trust => "trust (changing the host's trust roots)".to_string(),
        }
    }

    fn granted_by(&self, g: &Grants) -> bool {
        match self {
            Request::Capability(c) => g.capabilities.contains("ALL") || g.capabilities.contains(c),
            Request::Network(n) => g.network.contains(n),
            Request::Isolation(i) => g.isolation.contains(i),
            Request::Volume(v) => g.volumes.iter().any(|prefix| path_under(v, prefix)),
            Request::NamedVolume(v) => g
                .named_volumes
                .iter()
                .any(|p| crate::model::name_pattern_covers(p, v)),
            Request::Rootfs(r) => g.rootfs.iter().any(|prefix| path_under(r, prefix)),
            Request::Exec => g.exec,
            Request::Devices => g.devices,
            Request::Trust => g.trust,
        }
    }
}

/// Reads a file that decides what others may do (the RBAC file, the
/// trust file): it must be owned by root and not writable by group or
/// others, and so must every directory above it (a sticky directory such
/// as `/tmp` is accepted: only root may replace root's file there).
pub(crate) fn read_site_file(path: &Path, kind: &'static str) -> Result<String, RbacError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let read_err = |source| RbacError::Read {
        kind,
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let md = file.metadata().map_err(read_err)?;
    let insecure = |what, checked: &Path, md: &std::fs::Metadata| RbacError::RbacInsecure {
        kind,
        path: path.to_path_buf(),
        what,
        checked: checked.to_path_buf(),
        uid: md.uid(),
        mode: md.mode() & 0o7777,
    };
    if md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(insecure("the file", path, &md));
    }
    let real = std::fs::canonicalize(path).map_err(read_err)?;
    for dir in real.ancestors().skip(1) {
        let dmd = std::fs::metadata(dir).map_err(read_err)?;
        let sticky = dmd.mode() & 0o1000 != 0;
        if dmd.uid() != 0 || (dmd.mode() & 0o022 != 0 && !sticky) {
            return Err(insecure("its directory", dir, &dmd));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_err)?;
    Ok(text)
}

fn path_under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn requests(policy: &Policy) -> Vec<Request> {
    let s = &policy.spec;
    let mut r: Vec<Request> = s
        .capabilities
        .iter()
        .map(|c| Request::Capability(c.clone()))
        .collect();
    r.push(Request::Network(s.network.mode.as_str().to_string()));
    if !s.network.publish.is_empty() {
        r.push(Request::Network("publish".to_string()));
    }
    match s.isolation {
        IsolationRequirement::Vm => r.push(Request::Isolation("vm".into())),
        IsolationRequirement::Sandbox => r.push(Request::Isolation("sandbox".into())),
        // `any` may end up in either backend.
        IsolationRequirement::Any => {
            r.push(Request::Isolation("vm".into()));
            r.push(Request::Isolation("sandbox".into()));
        }
    }
    for v in &s.filesystem.volumes {
        r.push(Request::Volume(v.source.clone()));
    }
    for v in &s.filesystem.volume_grants {
        r.push(Request::Volume(v.source.clone()));
    }
    for v in &s.filesystem.named_volumes {
        r.push(Request::NamedVolume(v.name.clone()));
    }
    if s.exec {
        r.push(Request::Exec);
    }
    if !s.devices.is_empty() {
        r.push(Request::Devices);
    }
    r
}

/// Decide whether `who` may run `policy` under `rbac` (`None`: no RBAC file
/// at `rbac_path`).
pub fn authorize(
    rbac: Option<&Rbac>,
    rbac_path: &Path,
    who: &Principal,
    policy: &Policy,
) -> Decision {
    authorize_with(rbac, rbac_path, who, policy, &[])
}

/// [`authorize`], with requests the command line adds to the policy's.
pub fn authorize_with(
    rbac: Option<&Rbac>,
    rbac_path: &Path,
    who: &Principal,
    policy: &Policy,
    extra: &[Request],
) -> Decision {
    let all: Vec<Request> = requests(policy)
        .into_iter()
        .chain(extra.iter().cloned())
        .collect();
    authorize_requests(rbac, rbac_path, who, &all)
}

/// Decide whether `who` may do what `reqs` ask (all of them).
pub fn authorize_requests(
    rbac: Option<&Rbac>,
    rbac_path: &Path,
    who: &Principal,
    reqs: &[Request],
) -> Decision {
    let Some(rbac) = rbac else {
        return if who.uid == 0 {
            Decision {
                allowed: true,
                roles: Vec::new(),
                reasons: Vec::new(),
                warning: Some(format!(
                    "no RBAC file at {}: root may grant anything; create one to control who may grant what (see docs/policy.md)",
                    rbac_path.display()
                )),
            }
        } else {
            Decision {
                allowed: false,
                roles: Vec::new(),
                reasons: vec![format!(
                    "no RBAC file at {}: only root may run without one; ask an administrator to create it or pass --rbac FILE",
                    rbac_path.display()
                )],
                warning: None,
            }
        };
    };
    let mine = rbac.roles_of(who);
    let role_names: Vec<String> = mine.iter().map(|r| r.name.clone()).collect();
    let mut reasons = Vec::new();
    for req in reqs {
        if mine.iter().any(|r| req.granted_by(&r.grants)) {
            continue;
        }
        let held = if role_names.is_empty() {
            format!("{} has no role in {}", who.name, rbac.source)
        } else {
            format!(
                "not granted to {} (roles: {})",
                who.name,
                role_names.join(", ")
            )
        };
        let fix = match rbac.roles.iter().find(|r| req.granted_by(&r.grants)) {
            Some(r) => format!("role `{}` allows it", r.name),
            None => format!("no role in {} allows it", rbac.source),
        };
        reasons.push(format!("{}: {held}; {fix}", req.describe()));
    }
    Decision {
        allowed: reasons.is_empty(),
        roles: role_names,
        reasons,
        warning: None,
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    /// What was decided for: `check`, `run`, ...
    pub action: String,
    pub principal: String,
    pub uid: u32,
    pub policy: String,
    /// `sha256:<hex>` of the effective policy.
    pub policy_digest: String,
    /// `allow` or `deny`.
    pub decision: String,
    pub reasons: Vec<String>,
}

impl AuditRecord {
    pub fn new(action: &str, who: &Principal, policy: &Policy, d: &Decision) -> AuditRecord {
        AuditRecord {
            time: moat_plan::time::now_rfc3339(),
            action: action.to_string(),
            principal: who.name.clone(),
            uid: who.uid,
            policy: policy.name.clone(),
            policy_digest: format!("sha256:{}", policy.digest()),
            decision: if d.allowed { "allow" } else { "deny" }.to_string(),
            reasons: d.reasons.clone(),
        }
    }

    /// A decision about something other than a policy (the trust file):
    /// `object` and its content's `digest` take the policy's fields.
    pub fn for_object(
        action: &str,
        who: &Principal,
        object: &str,
        digest: &str,
        d: &Decision,
    ) -> AuditRecord {
        AuditRecord {
            time: moat_plan::time::now_rfc3339(),
            action: action.to_string(),
            principal: who.name.clone(),
            uid: who.uid,
            policy: object.to_string(),
            policy_digest: digest.to_string(),
            decision: if d.allowed { "allow" } else { "deny" }.to_string(),
            reasons: d.reasons.clone(),
        }
    }
}

/// The audit log under a state root.
pub fn audit_log_path(state_root: &Path) -> PathBuf {
    state_root.join("audit").join("policy.log")
}

/// Append one JSON line to `<state_root>/audit/policy.log` (created 0600 in
/// a 0700 directory). One `write` of a whole line in append mode, so that
/// concurrent writers do not interleave.
///
/// Neither the directory nor the file is followed if it is a symbolic
/// link, and both must belong to this process's user and not be writable
/// by group or others; the file must be a regular file with one link. A
/// planted link or file is refused, never appended to.
pub fn append_audit(state_root: &Path, rec: &AuditRecord) -> Result<PathBuf, RbacError> {
    use rustix::fs::{FileType, Mode, OFlags};
    use std::os::unix::fs::DirBuilderExt;
    let path = audit_log_path(state_root);
    let err = |source: std::io::Error| RbacError::AppendAudit {
        path: path.clone(),
        source,
    };
    let insecure = |why: String| RbacError::AuditInsecure {
        path: path.clone(),
        why,
    };
    let dir = path.parent().unwrap_or(state_root);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let me = rustix::process::geteuid().as_raw();
    let dfd = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    let st = rustix::fs::fstat(&dfd).map_err(|e| err(e.into()))?;
    let mode = st.st_mode & 0o7777;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(insecure(format!(
            "{} is not a directory (a symbolic link or other file was planted there)",
            dir.display()
        )));
    }
    if st.st_uid != me || mode & 0o022 != 0 {
        return Err(insecure(format!(
            "its directory {} is owned by uid {} with mode {mode:04o}; it must be owned by uid {me} and not writable by group or others",
            dir.display(),
            st.st_uid
        )));
    }
    let fd = rustix::fs::openat(
        &dfd,
        "policy.log",
        OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NOCTTY
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            insecure("it is a symbolic link".to_string())
        } else {
            err(e.into())
        }
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| err(e.into()))?;
    let mode = st.st_mode & 0o7777;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(insecure("it is not a regular file".to_string()));
    }
    if st.st_uid != me || mode & 0o022 != 0 || st.st_nlink != 1 {
        return Err(insecure(format!(
            "it is owned by uid {} with mode {mode:04o} and {} link(s); it must be owned by uid {me}, not writable by group or others, with one link",
            st.st_uid, st.st_nlink
        )));
    }
    let mut line = serde_json::to_string(rec).unwrap_or_default();
    line.push('\n');
    let mut f = std::fs::File::from(fd);
    f.write_all(line.as_bytes()).map_err(err)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_acts_as_itself_only_without_delegation() {
        let d = tempfile::tempdir().unwrap();
        let passwd = d.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let inv = |real, pairs| invoker(real, env(pairs), &passwd);
        assert!(inv(0, &[]).unwrap().is_root());
        assert_eq!(
            inv(0, &[("SUDO_UID", "1000")]).unwrap(),
            Invoker {
                uid: 1000,
                via: Via::Delegated("SUDO_UID")
            }
        );
        assert!(inv(0, &[("SUDO_UID", "0")]).unwrap().is_root());
        assert_eq!(
            inv(0, &[("SUDO_USER", "alice")]).unwrap(),
            Invoker {
                uid: 1000,
                via: Via::Delegated("SUDO_USER")
            }
        );
        assert_eq!(
            inv(1000, &[("SUDO_UID", "0")]).unwrap(),
            Invoker {
                uid: 1000,
                via: Via::RealUid
            }
        );
        assert_eq!(
            inv(0, &[("SUDO_UID", "x")]).unwrap_err().to_string(),
            "SUDO_UID=\"x\" names no user of this host; moat cannot tell whom it acts for (unset SUDO_UID or fix it)"
        );
        assert!(inv(0, &[("DOAS_USER", "mallory")]).is_err());
    }

    #[test]
    fn volume_prefixes_match_whole_components() {
        assert!(path_under("/srv/data", "/srv/data"));
        assert!(path_under("/srv/data/x", "/srv/data"));
        assert!(!path_under("/srv/database", "/srv/data"));
        assert!(path_under("/etc", "/"));
    }

    #[test]
    fn named_volume_patterns_cover_narrower_ones() {
        let rbac = Rbac::parse(
            "apiVersion: moat.dev/v1\nkind: RBAC\nroles:\n  - name: dev\n    grants:\n      isolation: [vm, sandbox]\n      network: [none]\n      named_volumes: [\"app-*\"]\nbindings:\n  - role: dev\n    users: [alice]\n",
            "rbac.yaml",
        )
        .unwrap();
        let alice = Principal {
            uid: 1000,
            name: "alice".into(),
            groups: vec![],
        };
        let policy = |grant: &str| {
            Policy::parse(
                &format!("apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: p\nspec:\n  extends: baseline\n  filesystem:\n    named_volumes:\n      - {{name: \"{grant}\"}}\n"),
                "p.yaml",
            )
            .unwrap()
        };
        let ok = |grant: &str, extra: &[Request]| {
            authorize_with(
                Some(&rbac),
                Path::new("rbac.yaml"),
                &alice,
                &policy(grant),
                extra,
            )
            .allowed
        };
        assert!(ok("app-1", &[]));
        assert!(ok("app-x*", &[Request::NamedVolume("app-x1".into())]));
        assert!(!ok("*", &[]));
        assert!(!ok("other", &[]));
        assert!(!ok("app-1", &[Request::NamedVolume("db".into())]));
        assert!(Rbac::parse(
            "apiVersion: moat.dev/v1\nkind: RBAC\nroles:\n  - name: r\n    grants:\n      named_volumes: [\"../x\"]\n",
            "bad.yaml"
        )
        .is_err());
    }
}
