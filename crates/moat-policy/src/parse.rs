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
        let spec_m = cx.map(spec_n, "spec", SPEC_KEYS)?;

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

        for (key, node) in &spec_m {
            let path = format!("spec.{key}");
            match *key {
                "extends" => {}
                "isolation" => spec.isolation = cx.isolation(node, &path)?,
                "process" => cx.process(node, &mut spec.process)?,
                "capabilities" => {
                    for item in cx.list(node, &path)? {
                        let raw = cx.string(item, &path)?;
                        let canon = caps::canonical(&raw).ok_or_else(|| {
                            let bare = raw.to_ascii_uppercase();
                            let bare = bare.strip_prefix("CAP_").unwrap_or(&bare).to_string();
                            cx.err(
                                item.pos,
                                format!(
                                    "unknown capability `{raw}`{}",
                                    hint(suggest::closest(
                                        &bare,
                                        caps::CAPABILITIES.iter().copied()
                                    ))
                                ),
                            )
                        })?;
                        spec.capabilities.insert(canon.to_string());
                    }
                }
                "syscalls" => cx.syscalls(node, &mut spec.syscalls)?,
                "filesystem" => cx.filesystem(node, &mut spec.filesystem)?,
                "network" => spec.network = cx.network(node)?,
                "devices" => {
                    for item in cx.list(node, &path)? {
                        spec.devices.push(cx.device(item)?);
                    }
                }
                "resources" => cx.resources(node, &mut spec.resources)?,
                "image" => cx.image(node, "spec.image", &mut spec.image)?,
                "vulnerabilities" => cx.vulnerabilities(node, &mut spec.vulnerabilities)?,
                "exec" => spec.exec = cx.bool(node, &path)?,
                "audit" => {
                    let m = cx.map(node, &path, &["denied_syscalls"])?;
                    if let Some(n) = get(&m, "denied_syscalls") {
                        spec.audit.denied_syscalls = cx.bool(n, "spec.audit.denied_syscalls")?;
                    }
                }
                _ => unreachable!("checked by Cx::map"),
            }
        }

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

const SPEC_KEYS: &[&str] = &[
    "extends",
    "isolation",
    "process",
    "capabilities",
    "syscalls",
    "filesystem",
    "network",
    "devices",
    "resources",
    "image",
    "vulnerabilities",
    "exec",
    "audit",
];

pub(crate) fn get<'n>(m: &[(&'n str, &'n Node)], key: &str) -> Option<&'n Node> {
    m.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
}

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
        let s = self.string(node, path)?;
        match s.as_str() {
            "vm" => Ok(IsolationRequirement::Vm),
            "sandbox" => Ok(IsolationRequirement::Sandbox),
            "any" => Ok(IsolationRequirement::Any),
            _ => Err(self.err(
                node.pos,
                format!(
                    "`{path}` must be `vm`, `sandbox` or `any`, found `{s}`{}",
                    hint(suggest::closest(&s, ["vm", "sandbox", "any"]))
                ),
            )),
        }
    }

    fn process(&self, node: &Node, p: &mut Process) -> Result<(), PolicyError> {
        let m = self.map(
            node,
            "spec.process",
            &["user", "group", "groups", "no_new_privs"],
        )?;
        for (k, n) in m {
            match k {
                "user" => p.user = Some(self.u32(n, "spec.process.user")?),
                "group" => p.group = Some(self.u32(n, "spec.process.group")?),
                "groups" => {
                    p.groups = self
                        .list(n, "spec.process.groups")?
                        .iter()
                        .map(|g| self.u32(g, "spec.process.groups"))
                        .collect::<Result<_, _>>()?
                }
                "no_new_privs" => {
                    if !self.bool(n, "spec.process.no_new_privs")? {
                        return Err(self.err(
                            n.pos,
                            "`no_new_privs` is always on and cannot be turned off; remove this line",
                        ));
                    }
                }
                _ => unreachable!(),
            }
        }
        Ok(())
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
            let v = self.string(n, "spec.syscalls.default")?;
            s.default_action = match v.as_str() {
                "errno" => DefaultAction::Errno,
                "kill" => DefaultAction::Kill,
                "log" => DefaultAction::Log,
                _ => {
                    return Err(self.err(
                        n.pos,
                        format!(
                        "`spec.syscalls.default` must be `errno`, `kill` or `log`, found `{v}`{}",
                        hint(suggest::closest(&v, ["errno", "kill", "log"]))
                    ),
                    ))
                }
            };
        }
        if let Some(n) = get(&m, "conditions") {
            self.conditions(n, &mut s.conditions)?;
        }
        Ok(())
    }

    fn conditions(&self, node: &Node, c: &mut Conditions) -> Result<(), PolicyError> {
        let base = "spec.syscalls.conditions";
        let m = self.map(node, base, &["socket", "clone", "ioctl"])?;
        for (k, n) in m {
            match k {
                "socket" => {
                    let sm = self.map(n, &format!("{base}.socket"), &["families"])?;
                    let f = self.require(n, &sm, "families", &format!("{base}.socket"))?;
                    let path = format!("{base}.socket.families");
                    let mut set = BTreeSet::new();
                    for item in self.list(f, &path)? {
                        set.insert(self.named(
                            item,
                            &path,
                            args::SOCKET_FAMILIES,
                            "socket family",
                        )?);
                    }
                    c.socket_families = Some(set);
                }
                "clone" => {
                    let path = format!("{base}.clone");
                    let cm = self.map(n, &path, &["deny_flags"])?;
                    let f = self.require(n, &cm, "deny_flags", &path)?;
                    let path = format!("{path}.deny_flags");
                    let mut mask = 0u32;
                    for item in self.list(f, &path)? {
                        if matches!(&item.value, Value::Scalar { text, .. } if text == "namespaces")
                        {
                            for name in args::CLONE_NAMESPACE_FLAGS {
                                mask |= args::lookup(args::CLONE_FLAGS, name).map_or(0, |x| x.1);
                            }
                        } else {
                            mask |= self.named(item, &path, args::CLONE_FLAGS, "clone flag")?;
                        }
                    }
                    c.clone_deny_flags = mask;
                }
                "ioctl" => {
                    let path = format!("{base}.ioctl");
                    let im = self.map(n, &path, &["allow", "deny"])?;
                    if im.len() != 1 {
                        return Err(self.err(
                            n.pos,
                            format!("`{path}` takes exactly one of `allow` (only these requests) or `deny` (all but these)"),
                        ));
                    }
                    let (which, list) = im[0];
                    let lpath = format!("{path}.{which}");
                    let mut set = BTreeSet::new();
                    for item in self.list(list, &lpath)? {
                        let v = self.named(item, &lpath, args::IOCTL_REQUESTS, "ioctl request")?;
                        if let Some(n) = never_allowed(v).filter(|_| which == "allow") {
                            return Err(self.err(
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
                }
                _ => unreachable!(),
            }
        }
        Ok(())
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
        let m = self.map(
            node,
            "spec.filesystem",
            &["writable", "volumes", "named_volumes", "root"],
        )?;
        for (k, n) in m {
            match k {
                "root" => {
                    let v = self.string(n, "spec.filesystem.root")?;
                    fs.root = match v.as_str() {
                        "read-only" => RootMode::ReadOnly,
                        "ephemeral" => RootMode::Ephemeral,
                        _ => {
                            return Err(self.err(
                                n.pos,
                                format!("unknown root `{v}`: use `read-only` (the default) or `ephemeral` (a writable layer over the image, discarded with the container; its size is `resources.disk`)"),
                            ))
                        }
                    };
                }
                "writable" => {
                    for item in self.list(n, "spec.filesystem.writable")? {
                        let path = "spec.filesystem.writable";
                        let wm = self.map(item, path, &["path", "size"])?;
                        let p = self.require(item, &wm, "path", path)?;
                        let dest = self.abs_path(p, &format!("{path}.path"))?;
                        if dest == "/" {
                            return Err(self.err(
                                p.pos,
                                "`/` cannot be a writable tmpfs: list the directories that need writes instead (e.g. `/tmp`), or set `filesystem.root: ephemeral` for a writable layer over the whole image",
                            ));
                        }
                        let size = match get(&wm, "size") {
                            Some(s) => self.size(s, &format!("{path}.size"))?,
                            None => 64 << 20,
                        };
                        if fs.volumes.iter().any(|v| v.path == dest) {
                            return Err(self.err(
                                p.pos,
                                format!("`{dest}` is both a writable tmpfs and a volume; keep one of them"),
                            ));
                        }
                        fs.writable.retain(|t| t.path != dest);
                        fs.writable.push(Tmpfs {
                            path: dest,
                            size_bytes: size,
                            optional: self.file.starts_with("builtin:"),
                        });
                    }
                }
                "volumes" => {
                    for item in self.list(n, "spec.filesystem.volumes")? {
                        let path = "spec.filesystem.volumes";
                        let vm = self.map(item, path, &["source", "path", "read_only"])?;
                        let s = self.require(item, &vm, "source", path)?;
                        let source = self.abs_path(s, &format!("{path}.source"))?;
                        let read_only = match get(&vm, "read_only") {
                            Some(b) => self.bool(b, &format!("{path}.read_only"))?,
                            None => true,
                        };
                        // Without `path`: a grant for `moat run -v` only.
                        let Some(p) = get(&vm, "path") else {
                            fs.volume_grants.retain(|g| g.source != source);
                            fs.volume_grants
                                .push(crate::model::VolumeGrant { source, read_only });
                            continue;
                        };
                        let dest = self.abs_path(p, &format!("{path}.path"))?;
                        if dest == "/" {
                            return Err(self.err(
                                p.pos,
                                "a volume cannot be mounted at `/`: the root file system is always the image's, read-only",
                            ));
                        }
                        if fs.writable.iter().any(|t| t.path == dest) {
                            return Err(self.err(
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
                }
                "named_volumes" => {
                    for item in self.list(n, "spec.filesystem.named_volumes")? {
                        let path = "spec.filesystem.named_volumes";
                        let vm = self.map(item, path, &["name", "read_only"])?;
                        let nn = self.require(item, &vm, "name", path)?;
                        let name = self.string(nn, &format!("{path}.name"))?;
                        let bare = name.strip_suffix('*').unwrap_or(&name);
                        if !(bare.is_empty() || crate::model::valid_volume_name(bare)) {
                            return Err(self.err(
                                nn.pos,
                                format!("`{path}.name` must be a volume name (letters, digits, `_`, `.`, `-`), a prefix ending in `*`, or `*`; found `{name}`"),
                            ));
                        }
                        let read_only = match get(&vm, "read_only") {
                            Some(b) => self.bool(b, &format!("{path}.read_only"))?,
                            None => true,
                        };
                        fs.named_volumes.retain(|g| g.name != name);
                        fs.named_volumes
                            .push(crate::model::NamedVolumeGrant { name, read_only });
                    }
                }
                _ => unreachable!(),
            }
        }
        Ok(())
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
        let modes = ["none", "loopback", "egress"];
        let mode_of = |n: &Node, path: &str| -> Result<NetworkMode, PolicyError> {
            let s = self.string(n, path)?;
            match s.as_str() {
                "none" => Ok(NetworkMode::None),
                "loopback" => Ok(NetworkMode::Loopback),
                "egress" => Ok(NetworkMode::Egress),
                _ => Err(self.err(
                    n.pos,
                    format!(
                        "`{path}` must be `none`, `loopback` or `egress`, found `{s}`{}",
                        hint(suggest::closest(&s, modes))
                    ),
                )),
            }
        };
        if let Value::Scalar { .. } = node.value {
            let mode = mode_of(node, "spec.network")?;
            return Ok(Network {
                mode,
                egress: Vec::new(),
                publish: Vec::new(),
            });
        }
        let m = self.map(node, "spec.network", &["mode", "egress", "publish"])?;
        let mode_n = self.require(node, &m, "mode", "spec.network")?;
        let mode = mode_of(mode_n, "spec.network.mode")?;
        let mut net = Network {
            mode,
            egress: Vec::new(),
            publish: Vec::new(),
        };
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
        let base = "spec.resources";
        let m = self.map(
            node,
            base,
            &["memory", "cpus", "pids", "open_files", "disk"],
        )?;
        for (k, n) in m {
            let path = format!("{base}.{k}");
            match k {
                "memory" => r.memory_bytes = Some(self.size(n, &path)?),
                "disk" => r.disk_bytes = Some(self.size(n, &path)?),
                "pids" => r.pids = Some(self.positive(n, &path)?),
                "open_files" => r.open_files = Some(self.positive(n, &path)?),
                "cpus" => {
                    let text = match &n.value {
                        Value::Scalar { text, .. } => text.clone(),
                        _ => {
                            return Err(self.type_err(
                                n,
                                &path,
                                "a number of CPUs such as `1`, `0.5` or `500m`",
                            ))
                        }
                    };
                    let millis = parse_cpus(&text).filter(|m| *m > 0).ok_or_else(|| {
                        self.err(
                            n.pos,
                            format!("`{path}` must be a number of CPUs such as `1`, `0.5` or `500m`, found `{text}`"),
                        )
                    })?;
                    r.cpu_millis = Some(millis);
                }
                _ => unreachable!(),
            }
        }
        Ok(())
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
        let m = self.map(
            node,
            base,
            &["allowed", "digests", "require_digest", "signers"],
        )?;
        for (k, n) in m {
            let path = format!("{base}.{k}");
            match k {
                "allowed" => {
                    i.allowed = self
                        .list(n, &path)?
                        .iter()
                        .map(|x| self.string(x, &path))
                        .collect::<Result<_, _>>()?
                }
                "digests" => {
                    let mut v = Vec::new();
                    for x in self.list(n, &path)? {
                        let d = self.string(x, &path)?;
                        let ok = d.strip_prefix("sha256:").is_some_and(|h| {
                            h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())
                        });
                        if !ok {
                            return Err(self.err(
                                x.pos,
                                format!("`{path}` entries must be `sha256:` and 64 hex digits, found `{d}`"),
                            ));
                        }
                        v.push(d.to_ascii_lowercase());
                    }
                    i.digests = v;
                }
                "require_digest" => i.require_digest = self.bool(n, &path)?,
                "signers" => {
                    let mut v = Vec::new();
                    for item in self.list(n, &path)? {
                        let im = self.map(item, &path, &["repository", "key"])?;
                        let repository = self.string(
                            self.require(item, &im, "repository", &path)?,
                            &format!("{path}.repository"),
                        )?;
                        let key = self.string(
                            self.require(item, &im, "key", &path)?,
                            &format!("{path}.key"),
                        )?;
                        v.push(crate::model::SignerRule { repository, key });
                    }
                    i.signers = v;
                }
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    fn vulnerabilities(&self, node: &Node, v: &mut Vulnerabilities) -> Result<(), PolicyError> {
        let base = "spec.vulnerabilities";
        let m = self.map(node, base, &["fail_on", "ignore"])?;
        for (k, n) in m {
            match k {
                "fail_on" => {
                    let s = self.string(n, "spec.vulnerabilities.fail_on")?;
                    v.fail_on = match s.as_str() {
                        "none" => None,
                        "low" => Some(Severity::Low),
                        "medium" => Some(Severity::Medium),
                        "high" => Some(Severity::High),
                        "critical" => Some(Severity::Critical),
                        _ => {
                            let all = ["none", "low", "medium", "high", "critical"];
                            return Err(self.err(
                                n.pos,
                                format!(
                                    "`spec.vulnerabilities.fail_on` must be one of {}, found `{s}`{}",
                                    all.join(", "),
                                    hint(suggest::closest(&s, all))
                                ),
                            ));
                        }
                    };
                }
                "ignore" => {
                    let path = "spec.vulnerabilities.ignore";
                    let mut list = Vec::new();
                    for item in self.list(n, path)? {
                        let im = self.map(item, path, &["id", "reason", "expires"])?;
                        let id = self
                            .string(self.require(item, &im, "id", path)?, &format!("{path}.id"))?;
                        let reason_n = get(&im, "reason").ok_or_else(|| {
                            self.err(
                                item.pos,
                                format!(
                                    "ignoring `{id}` needs a `reason`: say why it does not apply"
                                ),
                            )
                        })?;
                        let reason = self.string(reason_n, &format!("{path}.reason"))?;
                        let exp_n = get(&im, "expires").ok_or_else(|| {
                            self.err(item.pos, format!("ignoring `{id}` needs an `expires` date (YYYY-MM-DD) so that it is reviewed again"))
                        })?;
                        let expires = self.string(exp_n, &format!("{path}.expires"))?;
                        if !valid_date(&expires) {
                            return Err(self.err(
                                exp_n.pos,
                                format!(
                                    "`{path}.expires` must be a date YYYY-MM-DD, found `{expires}`"
                                ),
                            ));
                        }
                        list.push(IgnoredVulnerability {
                            id,
                            reason,
                            expires,
                        });
                    }
                    v.ignore = list;
                }
                _ => unreachable!(),
            }
        }
        Ok(())
    }
}

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
