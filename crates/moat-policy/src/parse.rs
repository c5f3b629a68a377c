//! From YAML text to a validated [`Policy`], applying `extends` layers.
//!
//! Layering rules: a file is applied on top of what it extends. Scalars
//! replace, `capabilities` and `syscalls.allow` add, `syscalls.deny` removes,
//! `filesystem.writable` entries replace the entry at the same path, volumes
//! and devices are appended, `network` replaces as a whole, and `resources`,
//! `image`, `vulnerabilities` and each argument condition replace key by key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{hint, PolicyError};
use crate::model::*;
use crate::plan::{EgressRule, PortPublish};
use crate::yaml::{self, Node, Pos, Value};
use crate::{args, builtin, caps, suggest, syscalls};

pub const API_VERSION: &str = "moat.dev/v1";

/// Loads policies, following `extends`, detecting cycles.
pub(crate) struct Loader {
    /// (identity, label) of the files being loaded, outermost first.
    chain: Vec<(String, String)>,
    /// The image `auto` is narrowed to; without one `auto` is refused.
    image: Option<crate::auto::ImageSyscalls>,
}

impl Loader {
    pub(crate) fn new() -> Loader {
        Loader {
            chain: Vec::new(),
            image: None,
        }
    }

    pub(crate) fn for_image(image: crate::auto::ImageSyscalls) -> Loader {
        Loader {
            chain: Vec::new(),
            image: Some(image),
        }
    }

    pub(crate) fn load_file(&mut self, path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let label = path.display().to_string();
        let id = std::fs::canonicalize(path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| label.clone());
        self.load_with_id(&text, &label, &id, path.parent())
    }

    pub(crate) fn load_builtin(&mut self, name: &str) -> Result<Policy, PolicyError> {
        let text = builtin::text(name).ok_or_else(|| PolicyError::UnknownBuiltin {
            name: name.to_string(),
            hint: hint(suggest::closest(name, builtin::NAMES.iter().copied())),
        })?;
        let label = format!("builtin:{name}");
        if name == "auto" {
            let Some(image) = self.image.clone() else {
                let what = match self.chain.first() {
                    Some((_, file)) => format!("`extends: auto` in {file}"),
                    None => "this command".to_string(),
                };
                return Err(PolicyError::AutoWithoutImage { what });
            };
            let mut policy = self.load_with_id(text, &label, &label, None)?;
            crate::auto::narrow(&mut policy, &image);
            return Ok(policy);
        }
        self.load_with_id(text, &label, &label, None)
    }

    pub(crate) fn load_text(
        &mut self,
        text: &str,
        file: &str,
        dir: Option<&Path>,
    ) -> Result<Policy, PolicyError> {
        self.load_with_id(text, file, file, dir)
    }

    fn load_with_id(
        &mut self,
        text: &str,
        file: &str,
        id: &str,
        dir: Option<&Path>,
    ) -> Result<Policy, PolicyError> {
        if self.chain.iter().any(|(c, _)| c == id) {
            let mut chain: Vec<&str> = self.chain.iter().map(|(_, l)| l.as_str()).collect();
            chain.push(file);
            return Err(PolicyError::ExtendsCycle {
                chain: chain.join(" -> "),
            });
        }
        self.chain.push((id.to_string(), file.to_string()));
        let result = self.load_inner(text, file, dir);
        self.chain.pop();
        result
    }

    fn load_inner(
        &mut self,
        text: &str,
        file: &str,
        dir: Option<&Path>,
    ) -> Result<Policy, PolicyError> {
        let cx = Cx { file };
        let root = yaml::parse(text).map_err(|e| cx.err(e.pos, e.message))?;
        let top = cx.map(&root, "", &["apiVersion", "kind", "metadata", "spec"])?;
        cx.header(&root, &top, "Policy", "a policy file")?;
        let meta = cx.require(&root, &top, "metadata", "")?;
        let meta_m = cx.map(meta, "metadata", &["name", "description"])?;
        let name_n = cx.require(meta, &meta_m, "name", "metadata")?;
        let name = cx.string(name_n, "metadata.name")?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(cx.err(
                name_n.pos,
                format!("`metadata.name` `{name}` must be non-empty and use only letters, digits, `-`, `_` and `.`"),
            ));
        }
        let spec_n = cx.require(&root, &top, "spec", "")?;
        let spec_m = cx.entries(spec_n, "spec", SPEC_FIELDS)?;

        // `extends` first: everything else applies on top of it.
        let mut extends = Vec::new();
        let mut spec = Spec::empty();
        if let Some(ext) = get(&spec_m, "extends") {
            let target = cx.string(ext, "spec.extends")?;
            let base = if builtin::text(&target).is_some() {
                self.load_builtin(&target)?
            } else if target.contains('/') || target.ends_with(".yaml") || target.ends_with(".yml")
            {
                let path = match dir {
                    Some(d) if !Path::new(&target).is_absolute() => d.join(&target),
                    _ => PathBuf::from(&target),
                };
                self.load_file(&path)?
            } else {
                return Err(cx.err(
                    ext.pos,
                    format!(
                        "`extends: {target}` is neither a built-in policy ({}) nor a file path ending in .yaml{}",
                        builtin::NAMES.join(", "),
                        hint(suggest::closest(&target, builtin::NAMES.iter().copied()))
                    ),
                ));
            };
            extends.push(base.source.clone());
            extends.extend(base.extends.iter().cloned());
            spec = base.spec;
        }

        cx.read_entries(&spec_m, "spec", SPEC_FIELDS, &mut spec)?;

        if spec.syscalls.allow.is_empty() {
            return Err(cx.err(
                spec_n.pos,
                "the policy allows no system calls, so nothing could run; add `extends: baseline` or list `syscalls.allow`".to_string(),
            ));
        }
        if !spec.network.publish.is_empty() && spec.network.mode != NetworkMode::Egress {
            return Err(PolicyError::Validate {
                file: file.to_string(),
                message: "`network.publish` needs `mode: egress` (with no `egress` rules, only the published ports are reachable)".to_string(),
            });
        }
        Ok(Policy {
            name,
            source: file.to_string(),
            extends,
            spec,
        })
    }
}

pub(crate) fn get<'n>(m: &[(&'n str, &'n Node)], key: &str) -> Option<&'n Node> {
    m.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
}

/// One key of a section and how its value is read into the section (the
/// key's full path is the third argument). A section's table is the one
/// list of its keys: it drives both the unknown-key error and the reading.
pub(crate) type Field<T> = (
    &'static str,
    fn(&Cx<'_>, &Node, &str, &mut T) -> Result<(), PolicyError>,
);

/// Parsing context: the file name for error locations.
pub(crate) struct Cx<'a> {
    pub(crate) file: &'a str,
}

impl Cx<'_> {
    /// The `apiVersion` (moat's) and `kind` of a moat file (`what`: `a
    /// policy file`, ...), both required.
    pub(crate) fn header(
        &self,
        root: &Node,
        top: &[(&str, &Node)],
        kind: &str,
        what: &str,
    ) -> Result<(), PolicyError> {
        let api = self.require(root, top, "apiVersion", "")?;
        let api_s = self.string(api, "apiVersion")?;
        if api_s != API_VERSION {
            return Err(self.err(
                api.pos,
                format!("unsupported apiVersion `{api_s}`; expected `{API_VERSION}`"),
            ));
        }
        let k = self.require(root, top, "kind", "")?;
        let k_s = self.string(k, "kind")?;
        if k_s != kind {
            return Err(self.err(
                k.pos,
                format!("`kind` must be `{kind}` in {what}, found `{k_s}`"),
            ));
        }
        Ok(())
    }

    pub(crate) fn err(&self, pos: Pos, message: impl Into<String>) -> PolicyError {
        PolicyError::Parse {
            file: self.file.to_string(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        }
    }

    fn type_err(&self, node: &Node, path: &str, expected: &str) -> PolicyError {
        self.err(
            node.pos,
            format!("`{path}` must be {expected}, found {}", node.describe()),
        )
    }

    /// A mapping whose keys are all in `keys`.
    pub(crate) fn map<'n>(
        &self,
        node: &'n Node,
        path: &str,
        keys: &[&str],
    ) -> Result<Vec<(&'n str, &'n Node)>, PolicyError> {
        let Value::Map(items) = &node.value else {
            let what = if path.is_empty() {
                "the document"
            } else {
                path
            };
            return Err(self.err(
                node.pos,
                format!(
                    "{} must be a mapping, found {}",
                    if path.is_empty() {
                        what.to_string()
                    } else {
                        format!("`{what}`")
                    },
                    node.describe()
                ),
            ));
        };
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            let key = k.key_text();
            if !keys.contains(&key) {
                let place = if path.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in `{path}`")
                };
                let tail = match suggest::closest(key, keys.iter().copied()) {
                    Some(s) => format!("; did you mean `{s}`?"),
                    None => format!("; expected one of: {}", keys.join(", ")),
                };
                return Err(self.err(k.pos, format!("unknown key `{key}` {place}{tail}")));
            }
            out.push((key, v));
        }
        Ok(out)
    }

    /// The entries of the section mapping `node`, whose keys must be the
    /// table's.
    pub(crate) fn entries<'n, T>(
        &self,
        node: &'n Node,
        path: &str,
        fields: &[Field<T>],
    ) -> Result<Vec<(&'n str, &'n Node)>, PolicyError> {
        let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        self.map(node, path, &keys)
    }

    /// Reads each of `entries` into `target` with its key's function, in
    /// the file's order.
    pub(crate) fn read_entries<T>(
        &self,
        entries: &[(&str, &Node)],
        path: &str,
        fields: &[Field<T>],
        target: &mut T,
    ) -> Result<(), PolicyError> {
        for (key, node) in entries {
            if let Some((_, read)) = fields.iter().find(|(k, _)| k == key) {
                read(self, node, &format!("{path}.{key}"), target)?;
            }
        }
        Ok(())
    }

    /// One of `options` by name: `` `path` must be `a`, `b` or `c`, found
    /// `x`; did you mean `y`? `` otherwise.
    pub(crate) fn choice<T: Copy>(
        &self,
        node: &Node,
        path: &str,
        options: &[(&str, T)],
    ) -> Result<T, PolicyError> {
        let s = self.string(node, path)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Ok(*v);
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
        let list = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(self.err(
            node.pos,
            format!(
                "`{path}` must be {list}, found `{s}`{}",
                hint(suggest::closest(&s, options.iter().map(|(n, _)| *n)))
            ),
        ))
    }

    /// A capability name, canonical (`CAP_` and upper case), with the
    /// nearest name suggested when it is not one.
    pub(crate) fn capability(&self, node: &Node, path: &str) -> Result<&'static str, PolicyError> {
        let raw = self.string(node, path)?;
        caps::canonical(&raw).ok_or_else(|| {
            let bare = raw.to_ascii_uppercase();
            let bare = bare.strip_prefix("CAP_").unwrap_or(&bare).to_string();
            self.err(
                node.pos,
                format!(
                    "unknown capability `{raw}`{}",
                    hint(suggest::closest(&bare, caps::CAPABILITIES.iter().copied()))
                ),
            )
        })
    }

    /// A section: [`Cx::entries`], then [`Cx::read_entries`].
    pub(crate) fn section<T>(
        &self,
        node: &Node,
        path: &str,
        fields: &[Field<T>],
        target: &mut T,
    ) -> Result<(), PolicyError> {
        let entries = self.entries(node, path, fields)?;
        self.read_entries(&entries, path, fields, target)
    }

    pub(crate) fn require<'n>(
        &self,
        parent: &Node,
        m: &[(&'n str, &'n Node)],
        key: &str,
        path: &str,
    ) -> Result<&'n Node, PolicyError> {
        get(m, key).ok_or_else(|| {
            let full = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
            self.err(parent.pos, format!("missing `{full}`"))
        })
    }

    pub(crate) fn string(&self, node: &Node, path: &str) -> Result<String, PolicyError> {
        match &node.value {
            Value::Scalar { text, .. } => Ok(text.clone()),
            _ => Err(self.type_err(node, path, "a string")),
        }
    }

    pub(crate) fn bool(&self, node: &Node, path: &str) -> Result<bool, PolicyError> {
        match &node.value {
            Value::Scalar {
                text,
                quoted: false,
            } if text == "true" => Ok(true),
            Value::Scalar {
                text,
                quoted: false,
            } if text == "false" => Ok(false),
            _ => Err(self.type_err(node, path, "`true` or `false`")),
        }
    }

    fn u64(&self, node: &Node, path: &str) -> Result<u64, PolicyError> {
        match &node.value {
            Value::Scalar {
                text,
                quoted: false,
            } => text
                .parse::<u64>()
                .map_err(|_| self.type_err(node, path, "a whole number")),
            _ => Err(self.type_err(node, path, "a whole number")),
        }
    }

    pub(crate) fn u32(&self, node: &Node, path: &str) -> Result<u32, PolicyError> {
        let v = self.u64(node, path)?;
        u32::try_from(v).map_err(|_| self.err(node.pos, format!("`{path}` {v} is too large")))
    }

    pub(crate) fn list<'n>(&self, node: &'n Node, path: &str) -> Result<&'n [Node], PolicyError> {
        match &node.value {
            Value::Seq(items) => Ok(items),
            _ => Err(self.type_err(node, path, "a list")),
        }
    }

    /// `16Mi`, `1Gi`, `512M`, `1048576`.
    fn size(&self, node: &Node, path: &str) -> Result<u64, PolicyError> {
        let text = match &node.value {
            Value::Scalar { text, .. } => text.as_str(),
            _ => return Err(self.type_err(node, path, "a size such as `16Mi`")),
        };
        parse_size(text).ok_or_else(|| {
            self.err(
                node.pos,
                format!("`{path}` must be a size such as `64Mi`, `1Gi` or a number of bytes, found `{text}`"),
            )
        })
    }

    fn isolation(&self, node: &Node, path: &str) -> Result<IsolationRequirement, PolicyError> {
        self.choice(
            node,
            path,
            &[
                ("vm", IsolationRequirement::Vm),
                ("sandbox", IsolationRequirement::Sandbox),
                ("any", IsolationRequirement::Any),
            ],
        )
    }

    fn process(&self, node: &Node, p: &mut Process) -> Result<(), PolicyError> {
        self.section(node, "spec.process", PROCESS_FIELDS, p)
    }

    /// Syscall names and `@groups`, checked against the table.
    fn syscall_names(&self, node: &Node, path: &str) -> Result<BTreeSet<String>, PolicyError> {
        let mut out = BTreeSet::new();
        for item in self.list(node, path)? {
            let name = self.string(item, path)?;
            if name.starts_with('@') {
                let members = syscalls::expand_group(&name).ok_or_else(|| {
                    self.err(
                        item.pos,
                        format!(
                            "unknown syscall group `{name}`{}",
                            hint(suggest::closest(&name, syscalls::group_names()))
                        ),
                    )
                })?;
                out.extend(members.into_iter().map(str::to_string));
            } else if syscalls::number(&name).is_some() {
                out.insert(name);
            } else {
                return Err(self.err(
                    item.pos,
                    format!(
                        "unknown syscall `{name}`{}",
                        hint(suggest::closest(&name, syscalls::names()))
                    ),
                ));
            }
        }
        Ok(out)
    }

    fn syscalls(&self, node: &Node, s: &mut Syscalls) -> Result<(), PolicyError> {
        let m = self.map(
            node,
            "spec.syscalls",
            &["allow", "deny", "default", "conditions"],
        )?;
        // Allow first, then deny, whatever the order in the file.
        if let Some(n) = get(&m, "allow") {
            let allow = self.syscall_names(n, "spec.syscalls.allow")?;
            for name in &allow {
                s.denied.remove(name);
            }
            s.allow.extend(allow);
        }
        if let Some(n) = get(&m, "deny") {
            for name in self.syscall_names(n, "spec.syscalls.deny")? {
                s.allow.remove(&name);
                s.denied.insert(name);
            }
        }
        if let Some(n) = get(&m, "default") {
            s.default_action = self.choice(
                n,
                "spec.syscalls.default",
                &[
                    ("errno", DefaultAction::Errno),
                    ("kill", DefaultAction::Kill),
                    ("log", DefaultAction::Log),
                ],
            )?;
        }
        if let Some(n) = get(&m, "conditions") {
            self.conditions(n, &mut s.conditions)?;
        }
        Ok(())
    }

    fn conditions(&self, node: &Node, c: &mut Conditions) -> Result<(), PolicyError> {
        self.section(node, "spec.syscalls.conditions", CONDITION_FIELDS, c)
    }

    /// A name from `table` or a number (decimal or 0x hex).
    fn named(
        &self,
        node: &Node,
        path: &str,
        table: &[(&'static str, u32)],
        what: &str,
    ) -> Result<u32, PolicyError> {
        let text = self.string(node, path)?;
        if let Some(v) = parse_number(&text) {
            return Ok(v);
        }
        args::lookup(table, &text).map(|(_, v)| v).ok_or_else(|| {
            let upper = text.to_ascii_uppercase();
            self.err(
                node.pos,
                format!(
                    "unknown {what} `{text}`{}",
                    hint(suggest::closest(&upper, table.iter().map(|(n, _)| *n)))
                ),
            )
        })
    }

    fn filesystem(&self, node: &Node, fs: &mut Filesystem) -> Result<(), PolicyError> {
        self.section(node, "spec.filesystem", FILESYSTEM_FIELDS, fs)
    }

    /// An absolute, normalised path without `..`.
    pub(crate) fn abs_path(&self, node: &Node, path: &str) -> Result<String, PolicyError> {
        let s = self.string(node, path)?;
        if !s.starts_with('/') {
            return Err(self.err(
                node.pos,
                format!("`{path}` must be an absolute path, found `{s}`"),
            ));
        }
        if s.split('/').any(|c| c == "..") {
            return Err(self.err(
                node.pos,
                format!("`{path}` must not contain `..`, found `{s}`"),
            ));
        }
        let parts: Vec<&str> = s
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        Ok(format!("/{}", parts.join("/")))
    }

    fn network(&self, node: &Node) -> Result<Network, PolicyError> {
        let mode_of = |n: &Node, path: &str| {
            self.choice(
                n,
                path,
                &[
                    ("none", NetworkMode::None),
                    ("loopback", NetworkMode::Loopback),
                    ("egress", NetworkMode::Egress),
                ],
            )
        };
        if let Value::Scalar { .. } = node.value {
            let mode = mode_of(node, "spec.network")?;
            return Ok(Network {
                mode,
                egress: Vec::new(),
                publish: Vec::new(),
                dns: false,
            });
        }
        let m = self.map(node, "spec.network", &["mode", "egress", "publish", "dns"])?;
        let mode_n = self.require(node, &m, "mode", "spec.network")?;
        let mode = mode_of(mode_n, "spec.network.mode")?;
        let mut net = Network {
            mode,
            egress: Vec::new(),
            publish: Vec::new(),
            dns: false,
        };
        if let Some(d) = get(&m, "dns") {
            net.dns = self.bool(d, "spec.network.dns")?;
            if net.dns && mode != NetworkMode::Egress {
                return Err(self.err(
                    d.pos,
                    format!(
                        "`spec.network.dns: true` needs `mode: egress` (the resolver is reached through the egress network), found `mode: {}`",
                        mode.as_str()
                    ),
                ));
            }
        }
        if let Some(e) = get(&m, "egress") {
            if mode != NetworkMode::Egress {
                return Err(self.err(
                    e.pos,
                    format!(
                        "`spec.network.egress` rules need `mode: egress`, found `mode: {}`",
                        mode.as_str()
                    ),
                ));
            }
            for item in self.list(e, "spec.network.egress")? {
                let path = "spec.network.egress";
                let rm = self.map(item, path, &["to", "ports", "protocol"])?;
                let to = self.require(item, &rm, "to", path)?;
                let cidr = self.string(to, &format!("{path}.to"))?;
                if !valid_cidr(&cidr) {
                    return Err(self.err(
                        to.pos,
                        format!("`{path}.to` must be a CIDR such as `10.0.0.0/8` or `2001:db8::/32`, found `{cidr}`"),
                    ));
                }
                let ports = match get(&rm, "ports") {
                    None => None,
                    Some(p) => Some(self.port_range(p, &format!("{path}.ports"))?),
                };
                let protocol =
                    self.protocol(get(&rm, "protocol"), &format!("{path}.protocol"), true)?;
                net.egress.push(EgressRule {
                    cidr,
                    ports,
                    protocol,
                });
            }
        }
        if let Some(p) = get(&m, "publish") {
            for item in self.list(p, "spec.network.publish")? {
                let path = "spec.network.publish";
                let pm = self.map(item, path, &["host", "container", "protocol"])?;
                let h = self.require(item, &pm, "host", path)?;
                let c = self.require(item, &pm, "container", path)?;
                let host_port = self.port(h, &format!("{path}.host"))?;
                let container_port = self.port(c, &format!("{path}.container"))?;
                let protocol =
                    self.protocol(get(&pm, "protocol"), &format!("{path}.protocol"), false)?;
                net.publish.push(PortPublish {
                    host_port,
                    container_port,
                    protocol,
                    host_ip: None,
                });
            }
        }
        Ok(net)
    }

    fn port(&self, node: &Node, path: &str) -> Result<u16, PolicyError> {
        let v = self.u64(node, path)?;
        match u16::try_from(v) {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(self.err(
                node.pos,
                format!("`{path}` must be a port between 1 and 65535, found {v}"),
            )),
        }
    }

    /// `443` or `"8000-9000"`.
    fn port_range(&self, node: &Node, path: &str) -> Result<(u16, u16), PolicyError> {
        if let Value::Scalar { text, .. } = &node.value {
            if let Some((a, b)) = text.split_once('-') {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                    if a > 0 && a <= b {
                        return Ok((a, b));
                    }
                }
                return Err(self.err(
                    node.pos,
                    format!(
                        "`{path}` must be a port or a range such as `8000-9000`, found `{text}`"
                    ),
                ));
            }
        }
        let p = self.port(node, path)?;
        Ok((p, p))
    }

    fn protocol(
        &self,
        node: Option<&Node>,
        path: &str,
        any_ok: bool,
    ) -> Result<String, PolicyError> {
        let Some(n) = node else {
            return Ok(if any_ok { "any" } else { "tcp" }.to_string());
        };
        let s = self.string(n, path)?;
        let allowed: &[&str] = if any_ok {
            &["tcp", "udp", "any"]
        } else {
            &["tcp", "udp"]
        };
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            Err(self.err(
                n.pos,
                format!(
                    "`{path}` must be one of {}, found `{s}`",
                    allowed.join(", ")
                ),
            ))
        }
    }

    fn device(&self, node: &Node) -> Result<Device, PolicyError> {
        let path = "spec.devices";
        let m = self.map(node, path, &["path", "type", "major", "minor", "access"])?;
        let p = self.require(node, &m, "path", path)?;
        let dev_path = self.abs_path(p, &format!("{path}.path"))?;
        let (major, minor) = match (get(&m, "major"), get(&m, "minor")) {
            (Some(a), Some(b)) => (
                self.u32(a, &format!("{path}.major"))?,
                self.u32(b, &format!("{path}.minor"))?,
            ),
            _ => {
                return Err(self.err(
                    node.pos,
                    format!("device `{dev_path}` needs both `major` and `minor` (the numbers `ls -l {dev_path}` shows, e.g. `major: 10` and `minor: 229` for /dev/fuse)"),
                ))
            }
        };
        let kind = match get(&m, "type") {
            None => 'c',
            Some(t) => match self.string(t, &format!("{path}.type"))?.as_str() {
                "c" | "char" => 'c',
                "b" | "block" => 'b',
                other => {
                    return Err(self.err(
                        t.pos,
                        format!(
                            "`{path}.type` must be `c` (character) or `b` (block), found `{other}`"
                        ),
                    ))
                }
            },
        };
        let access = match get(&m, "access") {
            None => "rw".to_string(),
            Some(a) => {
                let s = self.string(a, &format!("{path}.access"))?;
                if s.is_empty() || !s.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                    return Err(self.err(
                        a.pos,
                        format!("`{path}.access` must be made of `r`, `w` and `m`, found `{s}`"),
                    ));
                }
                s
            }
        };
        Ok(Device {
            path: dev_path,
            kind,
            major,
            minor,
            access,
        })
    }

    fn resources(&self, node: &Node, r: &mut Resources) -> Result<(), PolicyError> {
        self.section(node, "spec.resources", RESOURCE_FIELDS, r)
    }

    fn positive(&self, node: &Node, path: &str) -> Result<u64, PolicyError> {
        let v = self.u64(node, path)?;
        if v == 0 {
            return Err(self.err(node.pos, format!("`{path}` must be at least 1")));
        }
        Ok(v)
    }

    /// An `image` section (`base` names it in errors: `spec.image` in a
    /// policy, `image` in the host's trust file).
    pub(crate) fn image(
        &self,
        node: &Node,
        base: &str,
        i: &mut ImageRules,
    ) -> Result<(), PolicyError> {
        self.section(node, base, IMAGE_FIELDS, i)
    }

    fn vulnerabilities(&self, node: &Node, v: &mut Vulnerabilities) -> Result<(), PolicyError> {
        self.section(node, "spec.vulnerabilities", VULNERABILITY_FIELDS, v)
    }
}

fn process_user(cx: &Cx<'_>, n: &Node, path: &str, p: &mut Process) -> Result<(), PolicyError> {
    p.user = Some(cx.u32(n, path)?);
    Ok(())
}

fn process_group(cx: &Cx<'_>, n: &Node, path: &str, p: &mut Process) -> Result<(), PolicyError> {
    p.group = Some(cx.u32(n, path)?);
    Ok(())
}

fn process_groups(cx: &Cx<'_>, n: &Node, path: &str, p: &mut Process) -> Result<(), PolicyError> {
    p.groups = cx
        .list(n, path)?
        .iter()
        .map(|g| cx.u32(g, path))
        .collect::<Result<_, _>>()?;
    Ok(())
}

fn process_no_new_privs(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    _p: &mut Process,
) -> Result<(), PolicyError> {
    if !cx.bool(n, path)? {
        return Err(cx.err(
            n.pos,
            "`no_new_privs` is always on and cannot be turned off; remove this line",
        ));
    }
    Ok(())
}

const PROCESS_FIELDS: &[Field<Process>] = &[
    ("user", process_user),
    ("group", process_group),
    ("groups", process_groups),
    ("no_new_privs", process_no_new_privs),
];

fn condition_socket(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    c: &mut Conditions,
) -> Result<(), PolicyError> {
    let sm = cx.map(n, path, &["families"])?;
    let f = cx.require(n, &sm, "families", path)?;
    let path = format!("{path}.families");
    let mut set = BTreeSet::new();
    for item in cx.list(f, &path)? {
        set.insert(cx.named(item, &path, args::SOCKET_FAMILIES, "socket family")?);
    }
    c.socket_families = Some(set);
    Ok(())
}

fn condition_clone(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    c: &mut Conditions,
) -> Result<(), PolicyError> {
    let cm = cx.map(n, path, &["deny_flags"])?;
    let f = cx.require(n, &cm, "deny_flags", path)?;
    let path = format!("{path}.deny_flags");
    let mut mask = 0u32;
    for item in cx.list(f, &path)? {
        if matches!(&item.value, Value::Scalar { text, .. } if text == "namespaces") {
            for name in args::CLONE_NAMESPACE_FLAGS {
                mask |= args::lookup(args::CLONE_FLAGS, name).map_or(0, |x| x.1);
            }
        } else {
            mask |= cx.named(item, &path, args::CLONE_FLAGS, "clone flag")?;
        }
    }
    c.clone_deny_flags = mask;
    Ok(())
}

fn condition_ioctl(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    c: &mut Conditions,
) -> Result<(), PolicyError> {
    let im = cx.map(n, path, &["allow", "deny"])?;
    if im.len() != 1 {
        return Err(cx.err(
            n.pos,
            format!("`{path}` takes exactly one of `allow` (only these requests) or `deny` (all but these)"),
        ));
    }
    let (which, list) = im[0];
    let lpath = format!("{path}.{which}");
    let mut set = BTreeSet::new();
    for item in cx.list(list, &lpath)? {
        let v = cx.named(item, &lpath, args::IOCTL_REQUESTS, "ioctl request")?;
        if let Some(n) = never_allowed(v).filter(|_| which == "allow") {
            return Err(cx.err(
                item.pos,
                format!(
                    "`{lpath}` lists {} ({:#x}), which moat never allows: {}; remove it (it is denied whatever a policy says)",
                    n.name, n.request, n.why
                ),
            ));
        }
        set.insert(v);
    }
    c.ioctl = if which == "allow" {
        IoctlRule::Allow(set)
    } else {
        IoctlRule::Deny(set)
    };
    Ok(())
}

const CONDITION_FIELDS: &[Field<Conditions>] = &[
    ("socket", condition_socket),
    ("clone", condition_clone),
    ("ioctl", condition_ioctl),
];

fn filesystem_root(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    fs: &mut Filesystem,
) -> Result<(), PolicyError> {
    let v = cx.string(n, path)?;
    fs.root = match v.as_str() {
        "read-only" => RootMode::ReadOnly,
        "ephemeral" => RootMode::Ephemeral,
        _ => {
            return Err(cx.err(
                n.pos,
                format!("unknown root `{v}`: use `read-only` (the default) or `ephemeral` (a writable layer over the image, discarded with the container; its size is `resources.disk`)"),
            ))
        }
    };
    Ok(())
}

fn filesystem_writable(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    fs: &mut Filesystem,
) -> Result<(), PolicyError> {
    for item in cx.list(n, path)? {
        let wm = cx.map(item, path, &["path", "size", "mode"])?;
        let p = cx.require(item, &wm, "path", path)?;
        let dest = cx.abs_path(p, &format!("{path}.path"))?;
        if dest == "/" {
            return Err(cx.err(
                p.pos,
                "`/` cannot be a writable tmpfs: list the directories that need writes instead (e.g. `/tmp`), or set `filesystem.root: ephemeral` for a writable layer over the whole image",
            ));
        }
        let size = match get(&wm, "size") {
            Some(s) => cx.size(s, &format!("{path}.size"))?,
            None => 64 << 20,
        };
        if fs.volumes.iter().any(|v| v.path == dest) {
            return Err(cx.err(
                p.pos,
                format!("`{dest}` is both a writable tmpfs and a volume; keep one of them"),
            ));
        }
        let mode = match get(&wm, "mode") {
            Some(m) => Some(tmpfs_mode(cx, m, &format!("{path}.mode"))?),
            None => None,
        };
        fs.writable.retain(|t| t.path != dest);
        fs.writable.push(Tmpfs {
            path: dest,
            size_bytes: size,
            optional: cx.file.starts_with("builtin:"),
            mode,
        });
    }
    Ok(())
}

/// A tmpfs root's mode: octal digits as `chmod` takes them (`1777`,
/// `0755`), permission and sticky bits only.
fn tmpfs_mode(cx: &Cx<'_>, node: &Node, path: &str) -> Result<u32, PolicyError> {
    let text = match &node.value {
        Value::Scalar { text, .. } => text.trim().to_string(),
        _ => String::new(),
    };
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o1777)
        .ok_or_else(|| {
            cx.err(
                node.pos,
                format!("`{path}` must be a directory mode in octal such as `1777` or `0750` (permission and sticky bits only), found `{text}`"),
            )
        })
}

fn filesystem_volumes(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    fs: &mut Filesystem,
) -> Result<(), PolicyError> {
    for item in cx.list(n, path)? {
        let vm = cx.map(item, path, &["source", "path", "read_only"])?;
        let s = cx.require(item, &vm, "source", path)?;
        let source = cx.abs_path(s, &format!("{path}.source"))?;
        let read_only = match get(&vm, "read_only") {
            Some(b) => cx.bool(b, &format!("{path}.read_only"))?,
            None => true,
        };
        // Without `path`: a grant for `moat run -v` only.
        let Some(p) = get(&vm, "path") else {
            fs.volume_grants.retain(|g| g.source != source);
            fs.volume_grants
                .push(crate::model::VolumeGrant { source, read_only });
            continue;
        };
        let dest = cx.abs_path(p, &format!("{path}.path"))?;
        if dest == "/" {
            return Err(cx.err(
                p.pos,
                "a volume cannot be mounted at `/`: the root file system is always the image's, read-only",
            ));
        }
        if fs.writable.iter().any(|t| t.path == dest) {
            return Err(cx.err(
                p.pos,
                format!("`{dest}` is both a writable tmpfs and a volume; keep one of them"),
            ));
        }
        fs.volumes.retain(|v| v.path != dest);
        fs.volumes.push(Volume {
            source,
            path: dest,
            read_only,
        });
    }
    Ok(())
}

fn filesystem_named_volumes(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    fs: &mut Filesystem,
) -> Result<(), PolicyError> {
    for item in cx.list(n, path)? {
        let vm = cx.map(item, path, &["name", "read_only"])?;
        let nn = cx.require(item, &vm, "name", path)?;
        let name = cx.string(nn, &format!("{path}.name"))?;
        let bare = name.strip_suffix('*').unwrap_or(&name);
        if !(bare.is_empty() || crate::model::valid_volume_name(bare)) {
            return Err(cx.err(
                nn.pos,
                format!("`{path}.name` must be a volume name (letters, digits, `_`, `.`, `-`), a prefix ending in `*`, or `*`; found `{name}`"),
            ));
        }
        let read_only = match get(&vm, "read_only") {
            Some(b) => cx.bool(b, &format!("{path}.read_only"))?,
            None => true,
        };
        fs.named_volumes.retain(|g| g.name != name);
        fs.named_volumes
            .push(crate::model::NamedVolumeGrant { name, read_only });
    }
    Ok(())
}

const FILESYSTEM_FIELDS: &[Field<Filesystem>] = &[
    ("writable", filesystem_writable),
    ("volumes", filesystem_volumes),
    ("named_volumes", filesystem_named_volumes),
    ("root", filesystem_root),
];

fn resources_memory(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    r: &mut Resources,
) -> Result<(), PolicyError> {
    r.memory_bytes = Some(cx.size(n, path)?);
    Ok(())
}

fn resources_disk(cx: &Cx<'_>, n: &Node, path: &str, r: &mut Resources) -> Result<(), PolicyError> {
    r.disk_bytes = Some(cx.size(n, path)?);
    Ok(())
}

fn resources_pids(cx: &Cx<'_>, n: &Node, path: &str, r: &mut Resources) -> Result<(), PolicyError> {
    r.pids = Some(cx.positive(n, path)?);
    Ok(())
}

fn resources_open_files(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    r: &mut Resources,
) -> Result<(), PolicyError> {
    r.open_files = Some(cx.positive(n, path)?);
    Ok(())
}

fn resources_cpus(cx: &Cx<'_>, n: &Node, path: &str, r: &mut Resources) -> Result<(), PolicyError> {
    let text = match &n.value {
        Value::Scalar { text, .. } => text.clone(),
        _ => return Err(cx.type_err(n, path, "a number of CPUs such as `1`, `0.5` or `500m`")),
    };
    let millis = parse_cpus(&text).filter(|m| *m > 0).ok_or_else(|| {
        cx.err(
            n.pos,
            format!(
                "`{path}` must be a number of CPUs such as `1`, `0.5` or `500m`, found `{text}`"
            ),
        )
    })?;
    r.cpu_millis = Some(millis);
    Ok(())
}

const RESOURCE_FIELDS: &[Field<Resources>] = &[
    ("memory", resources_memory),
    ("cpus", resources_cpus),
    ("pids", resources_pids),
    ("open_files", resources_open_files),
    ("disk", resources_disk),
];

fn image_allowed(cx: &Cx<'_>, n: &Node, path: &str, i: &mut ImageRules) -> Result<(), PolicyError> {
    i.allowed = cx
        .list(n, path)?
        .iter()
        .map(|x| cx.string(x, path))
        .collect::<Result<_, _>>()?;
    Ok(())
}

fn image_digests(cx: &Cx<'_>, n: &Node, path: &str, i: &mut ImageRules) -> Result<(), PolicyError> {
    let mut v = Vec::new();
    for x in cx.list(n, path)? {
        let d = cx.string(x, path)?;
        let ok = d
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()));
        if !ok {
            return Err(cx.err(
                x.pos,
                format!("`{path}` entries must be `sha256:` and 64 hex digits, found `{d}`"),
            ));
        }
        v.push(d.to_ascii_lowercase());
    }
    i.digests = v;
    Ok(())
}

fn image_require_digest(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    i: &mut ImageRules,
) -> Result<(), PolicyError> {
    i.require_digest = cx.bool(n, path)?;
    Ok(())
}

fn image_signers(cx: &Cx<'_>, n: &Node, path: &str, i: &mut ImageRules) -> Result<(), PolicyError> {
    let mut v = Vec::new();
    for item in cx.list(n, path)? {
        let im = cx.map(item, path, &["repository", "key"])?;
        let repository = cx.string(
            cx.require(item, &im, "repository", path)?,
            &format!("{path}.repository"),
        )?;
        let key = cx.string(cx.require(item, &im, "key", path)?, &format!("{path}.key"))?;
        v.push(crate::model::SignerRule { repository, key });
    }
    i.signers = v;
    Ok(())
}

const IMAGE_FIELDS: &[Field<ImageRules>] = &[
    ("allowed", image_allowed),
    ("digests", image_digests),
    ("require_digest", image_require_digest),
    ("signers", image_signers),
];

fn vulnerabilities_on_new_advisory(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    v: &mut Vulnerabilities,
) -> Result<(), PolicyError> {
    v.on_new_advisory = cx.choice(
        n,
        path,
        &[
            ("alert", OnNewAdvisory::Alert),
            ("block", OnNewAdvisory::Block),
            ("stop", OnNewAdvisory::Stop),
        ],
    )?;
    Ok(())
}

fn vulnerabilities_stop_after(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    v: &mut Vulnerabilities,
) -> Result<(), PolicyError> {
    let s = cx.string(n, path)?;
    v.stop_after = Some(s.parse::<u64>().map_err(|_| {
        cx.err(
            n.pos,
            format!("`{path}` is a number of seconds, found `{s}`"),
        )
    })?);
    Ok(())
}

fn vulnerabilities_fail_on(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    v: &mut Vulnerabilities,
) -> Result<(), PolicyError> {
    v.fail_on = cx.choice(
        n,
        path,
        &[
            ("none", None),
            ("low", Some(Severity::Low)),
            ("medium", Some(Severity::Medium)),
            ("high", Some(Severity::High)),
            ("critical", Some(Severity::Critical)),
        ],
    )?;
    Ok(())
}

fn vulnerabilities_ignore(
    cx: &Cx<'_>,
    n: &Node,
    path: &str,
    v: &mut Vulnerabilities,
) -> Result<(), PolicyError> {
    let mut list = Vec::new();
    for item in cx.list(n, path)? {
        let im = cx.map(item, path, &["id", "reason", "expires"])?;
        let id = cx.string(cx.require(item, &im, "id", path)?, &format!("{path}.id"))?;
        let reason_n = get(&im, "reason").ok_or_else(|| {
            cx.err(
                item.pos,
                format!("ignoring `{id}` needs a `reason`: say why it does not apply"),
            )
        })?;
        let reason = cx.string(reason_n, &format!("{path}.reason"))?;
        let exp_n = get(&im, "expires").ok_or_else(|| {
            cx.err(item.pos, format!("ignoring `{id}` needs an `expires` date (YYYY-MM-DD) so that it is reviewed again"))
        })?;
        let expires = cx.string(exp_n, &format!("{path}.expires"))?;
        if !valid_date(&expires) {
            return Err(cx.err(
                exp_n.pos,
                format!("`{path}.expires` must be a date YYYY-MM-DD, found `{expires}`"),
            ));
        }
        list.push(IgnoredVulnerability {
            id,
            reason,
            expires,
        });
    }
    v.ignore = list;
    Ok(())
}

const VULNERABILITY_FIELDS: &[Field<Vulnerabilities>] = &[
    ("fail_on", vulnerabilities_fail_on),
    ("ignore", vulnerabilities_ignore),
    ("on_new_advisory", vulnerabilities_on_new_advisory),
    ("stop_after", vulnerabilities_stop_after),
];

/// The keys of `spec`. `extends` is read first, by the loader.
const SPEC_FIELDS: &[Field<Spec>] = &[
    ("extends", |_, _, _, _| Ok(())),
    ("isolation", |cx, n, path, spec| {
        spec.isolation = cx.isolation(n, path)?;
        Ok(())
    }),
    ("process", |cx, n, _, spec| cx.process(n, &mut spec.process)),
    ("capabilities", |cx, n, path, spec| {
        for item in cx.list(n, path)? {
            spec.capabilities
                .insert(cx.capability(item, path)?.to_string());
        }
        Ok(())
    }),
    ("syscalls", |cx, n, _, spec| {
        cx.syscalls(n, &mut spec.syscalls)
    }),
    ("filesystem", |cx, n, _, spec| {
        cx.filesystem(n, &mut spec.filesystem)
    }),
    ("network", |cx, n, _, spec| {
        spec.network = cx.network(n)?;
        Ok(())
    }),
    ("devices", |cx, n, path, spec| {
        for item in cx.list(n, path)? {
            spec.devices.push(cx.device(item)?);
        }
        Ok(())
    }),
    ("resources", |cx, n, _, spec| {
        cx.resources(n, &mut spec.resources)
    }),
    ("image", |cx, n, path, spec| {
        cx.image(n, path, &mut spec.image)
    }),
    ("vulnerabilities", |cx, n, _, spec| {
        cx.vulnerabilities(n, &mut spec.vulnerabilities)
    }),
    ("exec", |cx, n, path, spec| {
        spec.exec = cx.bool(n, path)?;
        Ok(())
    }),
    ("audit", |cx, n, path, spec| {
        let m = cx.map(n, path, &["denied_syscalls"])?;
        if let Some(d) = get(&m, "denied_syscalls") {
            spec.audit.denied_syscalls = cx.bool(d, &format!("{path}.denied_syscalls"))?;
        }
        Ok(())
    }),
];

/// Parse a size: plain bytes, or with a binary (`Ki`, `Mi`, `Gi`, `Ti`) or
/// decimal (`K`/`k`, `M`, `G`, `T`) suffix.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// CPUs as millicpus: `1`, `0.5`, `2.25`, `500m`.
pub fn parse_cpus(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Some(m) = t.strip_suffix('m') {
        return m.parse().ok();
    }
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if frac.len() > 3 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let i: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let f: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().ok()?
    };
    i.checked_mul(1000)?.checked_add(f)
}

fn parse_number(text: &str) -> Option<u32> {
    if let Some(h) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).ok()
    } else if text.chars().all(|c| c.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

fn valid_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 32,
        Ok(std::net::IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}

fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Ok(_y), Ok(m), Ok(d)) = (
        s[0..4].parse::<u32>(),
        s[5..7].parse::<u32>(),
        s[8..10].parse::<u32>(),
    ) else {
        return false;
    };
    (1..=12).contains(&m) && (1..=31).contains(&d)
}
