//! A generated profile: what a workload needs, with the evidence for each
//! grant, rendered as a moat policy that extends `restricted`.

use std::collections::{BTreeMap, BTreeSet};

use moat_policy::model::IoctlRule;
use moat_policy::Policy;

/// What a workload needs, each grant with the reasons it was added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// `metadata.name` of the emitted policy.
    pub name: String,
    /// Comment lines placed at the top of the policy (how it was made).
    pub header: Vec<String>,
    /// Syscall name -> why it is allowed.
    pub syscalls: BTreeMap<String, BTreeSet<String>>,
    /// Socket address families used (`AF_INET`, `AF_UNIX`, ...).
    pub socket_families: BTreeSet<String>,
    /// Paths the workload wrote to, which need a writable mount.
    pub writable: BTreeSet<String>,
    /// Paths the workload opened for writing, each with where that write
    /// lands under the policy (shown as comments; the policy model grants
    /// writable directories, not files).
    pub written: BTreeSet<String>,
    /// Privileged operations that failed (shown as comments; not granted).
    pub failed_privileged: BTreeSet<String>,
    /// Caveats (unresolved syscall sites, dlopen, ...), shown as comments.
    pub warnings: Vec<String>,
    /// `conditions.socket.families` to emit (replacing `restricted`'s
    /// AF_UNIX-only condition); `None` keeps the base policy's.
    pub socket_condition: Option<BTreeSet<String>>,
    /// `conditions.ioctl` to emit.
    pub ioctl_condition: IoctlGrant,
    /// Network and capabilities granted up front (`moat profile record
    /// --network`, `--cap-add`), emitted as they are.
    pub up_front: crate::record::UpFront,
}

/// The `ioctl` condition of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IoctlGrant {
    /// Keep the base policy's condition.
    #[default]
    Inherit,
    /// Any request but `TIOCSTI` and `TIOCLINUX` (written as
    /// `deny: [TIOCSTI, TIOCLINUX]`): what static analysis must assume.
    Any,
    /// Only these requests (names or 0x numbers).
    Allow(BTreeSet<String>),
}

/// Largest number of reasons shown beside one syscall.
const MAX_REASONS: usize = 3;

impl Profile {
    /// Records that `syscall` is needed because of `reason`.
    pub fn allow(&mut self, syscall: &str, reason: impl Into<String>) {
        self.syscalls
            .entry(syscall.to_string())
            .or_default()
            .insert(reason.into());
    }

    /// The union of two profiles (what `moat profile merge` writes).
    pub fn merge(&self, other: &Profile) -> Profile {
        let mut out = self.clone();
        for (name, reasons) in &other.syscalls {
            out.syscalls
                .entry(name.clone())
                .or_default()
                .extend(reasons.iter().cloned());
        }
        out.socket_families
            .extend(other.socket_families.iter().cloned());
        out.writable.extend(other.writable.iter().cloned());
        out.written.extend(other.written.iter().cloned());
        out.failed_privileged
            .extend(other.failed_privileged.iter().cloned());
        for w in &other.warnings {
            if !out.warnings.contains(w) {
                out.warnings.push(w.clone());
            }
        }
        out.socket_condition = match (&self.socket_condition, &other.socket_condition) {
            (Some(a), Some(b)) => Some(a.union(b).cloned().collect()),
            (Some(x), None) | (None, Some(x)) => Some(x.clone()),
            (None, None) => None,
        };
        out.ioctl_condition = match (&self.ioctl_condition, &other.ioctl_condition) {
            (IoctlGrant::Any, _) | (_, IoctlGrant::Any) => IoctlGrant::Any,
            (IoctlGrant::Allow(a), IoctlGrant::Allow(b)) => {
                IoctlGrant::Allow(a.union(b).cloned().collect())
            }
            (IoctlGrant::Allow(x), IoctlGrant::Inherit)
            | (IoctlGrant::Inherit, IoctlGrant::Allow(x)) => IoctlGrant::Allow(x.clone()),
            (IoctlGrant::Inherit, IoctlGrant::Inherit) => IoctlGrant::Inherit,
        };
        out
    }

    /// The syscall names, sorted.
    pub fn syscall_names(&self) -> Vec<&str> {
        self.syscalls.keys().map(String::as_str).collect()
    }

    /// Renders the policy. `deny` lists syscalls the base policy allows but
    /// the workload does not need, so that the result allows exactly
    /// [`Profile::syscalls`].
    pub fn to_policy_yaml(&self, deny: &[String]) -> String {
        self.render(deny, true)
    }

    /// The policy text; `comments` false leaves out every comment (what the
    /// emitted file must mean once its comments are ignored).
    fn render(&self, deny: &[String], comments: bool) -> String {
        let mut y = String::new();
        // Every comment passes through `comment_text`: nothing recorded can
        // end a comment line and start a YAML line of its own.
        let c = |s: &str| {
            if comments {
                comment_text(s)
            } else {
                String::new()
            }
        };
        if comments {
            for line in &self.header {
                y.push_str(&format!("# {}\n", c(line)));
            }
            for w in &self.warnings {
                y.push_str(&format!("# warning: {}\n", c(w)));
            }
        }
        y.push_str("apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n");
        y.push_str(&format!("  name: {}\n", yaml_scalar(&self.name)));
        y.push_str("spec:\n  extends: restricted\n");
        if comments && self.up_front != crate::record::UpFront::default() {
            y.push_str("  # granted up front for the recording (--network, --cap-add)\n");
        }
        y.push_str(&self.up_front.spec_lines());
        if comments {
            y.push_str(&format!(
                "  # {} syscalls needed by the workload\n",
                self.syscalls.len()
            ));
        }
        y.push_str("  syscalls:\n    allow:\n");
        let width = self.syscalls.keys().map(String::len).max().unwrap_or(0);
        for (name, reasons) in &self.syscalls {
            let mut shown: Vec<&str> = reasons
                .iter()
                .map(String::as_str)
                .take(MAX_REASONS)
                .collect();
            if reasons.len() > MAX_REASONS {
                shown.push("...");
            }
            if comments {
                y.push_str(&format!(
                    "      - {:<width$}  # {}\n",
                    yaml_scalar(name),
                    c(&shown.join(", "))
                ));
            } else {
                y.push_str(&format!("      - {}\n", yaml_scalar(name)));
            }
        }
        if !deny.is_empty() {
            if comments {
                y.push_str("    # allowed by `restricted` but not needed by this workload\n");
            }
            y.push_str("    deny:\n");
            for name in deny {
                y.push_str(&format!("      - {}\n", yaml_scalar(name)));
            }
        }
        let has_conditions =
            self.socket_condition.is_some() || self.ioctl_condition != IoctlGrant::Inherit;
        if has_conditions {
            y.push_str("    conditions:\n");
        }
        if let Some(fams) = &self.socket_condition {
            let list: Vec<String> = fams.iter().map(|f| yaml_scalar(f)).collect();
            y.push_str(&format!(
                "      socket:\n        families: [{}]\n",
                list.join(", ")
            ));
        }
        match &self.ioctl_condition {
            IoctlGrant::Inherit => {}
            // Any request but the ones no generated policy ever allows.
            IoctlGrant::Any => y.push_str(&format!(
                "      ioctl:\n        deny: [{}]\n",
                NEVER_IOCTLS.join(", ")
            )),
            IoctlGrant::Allow(reqs) => {
                let list: Vec<String> = reqs
                    .iter()
                    .filter(|r| !is_never_ioctl(r))
                    .map(|r| yaml_scalar(r))
                    .collect();
                y.push_str(&format!(
                    "      ioctl:\n        allow: [{}]\n",
                    list.join(", ")
                ));
            }
        }
        if comments && !self.socket_families.is_empty() {
            let fams: Vec<&str> = self.socket_families.iter().map(String::as_str).collect();
            y.push_str(&format!(
                "  # socket families used: {}\n",
                c(&fams.join(", "))
            ));
            if self.up_front.network.is_none()
                && self
                    .socket_families
                    .iter()
                    .any(|f| f == "AF_INET" || f == "AF_INET6")
            {
                y.push_str(
                    "  # IP sockets were opened: choose `network: loopback` or `egress` with rules\n",
                );
            }
        }
        if !self.writable.is_empty() {
            y.push_str("  filesystem:\n    writable:\n");
            for p in &self.writable {
                y.push_str(&format!("      - path: {}\n", yaml_scalar(p)));
            }
        }
        if comments {
            for w in &self.written {
                y.push_str(&format!("  # opened for writing: {}\n", c(w)));
            }
            for op in &self.failed_privileged {
                y.push_str(&format!(
                    "  # failed privileged operation (not granted): {}\n",
                    c(op)
                ));
            }
        }
        y
    }
}

/// Why a generated policy was not written.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("the generated policy does not parse (a bug in moat profile); nothing written")]
    Parse(#[source] moat_policy::PolicyError),
    #[error(
        "the generated policy would not grant exactly what was recorded ({what}); nothing written"
    )]
    Mismatch { what: String },
}

impl Profile {
    /// [`Profile::to_policy_yaml`], parsed back with moat's own policy
    /// parser and checked to grant exactly this profile on top of
    /// `restricted` (less `deny`): the same policy as the text without any
    /// comment, no capability, device, volume or network beyond the base,
    /// exactly these syscalls and writable paths, and never `TIOCSTI` or
    /// `TIOCLINUX`. Only text that passes is ever written.
    pub fn to_checked_policy_yaml(&self, deny: &[String]) -> Result<String, EmitError> {
        let text = self.to_policy_yaml(deny);
        let parsed = Policy::parse(&text, "generated profile").map_err(EmitError::Parse)?;
        let bare = Policy::parse(&self.render(deny, false), "generated profile")
            .map_err(EmitError::Parse)?;
        let base = Policy::builtin("restricted").map_err(EmitError::Parse)?;
        let mismatch = |what: String| Err(EmitError::Mismatch { what });
        if parsed.name != bare.name || parsed.spec != bare.spec || parsed.extends != bare.extends {
            return mismatch("its comments change what it grants".into());
        }
        if parsed.name != self.name {
            return mismatch(format!("the name {:?}", parsed.name));
        }
        let (got, want) = (&parsed.spec, &base.spec);
        // `restricted` with what was granted up front, as the parser reads it.
        let up = Policy::parse(
            &format!(
                "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: up-front\nspec:\n  extends: restricted\n{}",
                self.up_front.spec_lines()
            ),
            "up-front grants",
        )
        .map_err(EmitError::Parse)?;
        if got.capabilities != up.spec.capabilities {
            let caps: Vec<&str> = got.capabilities.iter().map(String::as_str).collect();
            return mismatch(format!("capabilities [{}]", caps.join(", ")));
        }
        let mut allow: BTreeSet<String> = want.syscalls.allow.clone();
        allow.extend(self.syscalls.keys().cloned());
        for d in deny {
            allow.remove(d);
        }
        if got.syscalls.allow != allow {
            let diff: Vec<&str> = got
                .syscalls
                .allow
                .symmetric_difference(&allow)
                .map(String::as_str)
                .collect();
            return mismatch(format!("syscalls differing in [{}]", diff.join(", ")));
        }
        let paths: BTreeSet<&str> = got
            .filesystem
            .writable
            .iter()
            .map(|t| t.path.as_str())
            .collect();
        let mut expected: BTreeSet<&str> = want
            .filesystem
            .writable
            .iter()
            .map(|t| t.path.as_str())
            .collect();
        expected.extend(self.writable.iter().map(String::as_str));
        if paths != expected {
            return mismatch(format!("writable paths {paths:?}"));
        }
        if got.filesystem.volumes != want.filesystem.volumes
            || got.devices != want.devices
            || got.network != up.spec.network
            || got.process != want.process
            || got.exec != want.exec
            || got.isolation != want.isolation
        {
            return mismatch("volumes, devices, network, user or isolation of its own".into());
        }
        let never: Vec<u32> = NEVER_IOCTLS
            .iter()
            .filter_map(|n| moat_policy::args::lookup(moat_policy::args::IOCTL_REQUESTS, n))
            .map(|(_, v)| v)
            .collect();
        let allows_never = match &got.syscalls.conditions.ioctl {
            IoctlRule::Any => true,
            IoctlRule::Allow(set) => never.iter().any(|v| set.contains(v)),
            IoctlRule::Deny(set) => never.iter().any(|v| !set.contains(v)),
        };
        if allows_never && got.syscalls.allow.contains("ioctl") {
            return mismatch("TIOCSTI or TIOCLINUX".into());
        }
        Ok(text)
    }
}

/// Why a file could not be read back as a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "{file}:{line}: {what}; `moat profile merge` reads only policies written by `moat profile`"
    )]
    Parse {
        file: String,
        line: usize,
        what: String,
    },
}

impl Profile {
    /// Reads back a policy written by [`Profile::to_policy_yaml`] (the
    /// reasons come back from the comments). `file` names it in errors.
    pub fn from_policy_yaml(file: &str, text: &str) -> Result<Profile, ProfileError> {
        let err = |line: usize, what: &str| ProfileError::Parse {
            file: file.to_string(),
            line,
            what: what.to_string(),
        };
        let mut p = Profile::default();
        let mut section = "";
        let mut saw_kind = false;
        let mut saw_extends = false;
        let mut saw_api = false;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let (body, comment) = match comment_start(raw) {
                Some(idx) => (&raw[..idx], Some(raw[idx + 1..].trim())),
                None => (raw, None),
            };
            let body = body.trim_end();
            let indent = body.len() - body.trim_start().len();
            let t = body.trim();
            if t.is_empty() {
                if !saw_api {
                    if let Some(c) = comment {
                        if let Some(w) = c.strip_prefix("warning: ") {
                            p.warnings.push(w.to_string());
                        } else if !c.is_empty() {
                            p.header.push(c.to_string());
                        }
                    }
                }
                if let Some(c) = comment
                    .and_then(|c| c.strip_prefix("failed privileged operation (not granted): "))
                {
                    p.failed_privileged.insert(c.to_string());
                }
                if let Some(c) = comment.and_then(|c| c.strip_prefix("opened for writing: ")) {
                    p.written.insert(c.to_string());
                }
                if let Some(c) = comment.and_then(|c| c.strip_prefix("socket families used: ")) {
                    p.socket_families.extend(c.split(", ").map(String::from));
                }
                continue;
            }
            match (indent, t) {
                (0, "apiVersion: moat.dev/v1") => saw_api = true,
                (0, "kind: Policy") => saw_kind = true,
                (0, "metadata:") | (0, "spec:") => section = "",
                (2, _) if t.starts_with("name: ") => {
                    p.name = unquote(&t["name: ".len()..]);
                }
                (2, "extends: restricted") => saw_extends = true,
                (2, "syscalls:") | (2, "filesystem:") => section = "",
                (4, "allow:") => section = "allow",
                (4, "deny:") => section = "deny",
                (4, "conditions:") => section = "conditions",
                (6, "socket:") if section == "conditions" => section = "socket",
                (6, "ioctl:") if section == "socket" || section == "conditions" => {
                    section = "ioctl"
                }
                (8, _) if section == "socket" && t.starts_with("families: [") => {
                    p.socket_condition = Some(flow_list(&t["families: ".len()..]));
                }
                (8, _) if section == "ioctl" && t.starts_with("deny: [") => {
                    // `deny: []` (older files) or the never-allowed requests.
                    p.ioctl_condition = IoctlGrant::Any;
                }
                (8, _) if section == "ioctl" && t.starts_with("allow: [") => {
                    let list = flow_list(&t["allow: ".len()..]);
                    p.ioctl_condition = IoctlGrant::Allow(
                        list.into_iter().filter(|r| !is_never_ioctl(r)).collect(),
                    );
                }
                (4, "writable:") => section = "writable",
                (6, _) if t.starts_with("- ") => {
                    let item = t[2..].trim();
                    match section {
                        "allow" => {
                            let reasons = p.syscalls.entry(unquote(item)).or_default();
                            if let Some(c) = comment {
                                reasons.extend(
                                    c.split(", ").filter(|r| *r != "...").map(String::from),
                                );
                            }
                        }
                        "deny" => {}
                        "writable" => {
                            let path = item
                                .strip_prefix("path: ")
                                .ok_or_else(|| err(n, "expected `- path: PATH` under writable"))?;
                            p.writable.insert(unquote(path));
                        }
                        _ => return Err(err(n, "list item outside syscalls/filesystem")),
                    }
                }
                _ => return Err(err(n, &format!("unexpected `{t}`"))),
            }
        }
        if !saw_kind || !saw_extends {
            return Err(err(1, "not a `kind: Policy` that `extends: restricted`"));
        }
        Ok(p)
    }
}

/// `[A, B]` -> {A, B}.
fn flow_list(s: &str) -> BTreeSet<String> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(unquote)
        .filter(|x| !x.is_empty())
        .collect()
}

/// Where the comment of a line starts (its `#`: the first character of
/// the line, or one after a space outside a double-quoted scalar).
fn comment_start(raw: &str) -> Option<usize> {
    if raw.trim_start().starts_with('#') {
        return Some(raw.len() - raw.trim_start().len());
    }
    let mut quoted = false;
    let mut escaped = false;
    let mut prev = ' ';
    for (i, ch) in raw.char_indices() {
        if quoted {
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
        } else if ch == '"' {
            quoted = true;
        } else if ch == '#' && prev == ' ' {
            return Some(i);
        }
        prev = ch;
    }
    None
}

/// The ioctl requests no generated policy allows, whatever was recorded:
/// both push input into a terminal (`TIOCSTI` as typed characters,
/// `TIOCLINUX` through the console's selection).
pub const NEVER_IOCTLS: &[&str] = &["TIOCSTI", "TIOCLINUX"];

/// Whether `req` (a name or a number) is one of [`NEVER_IOCTLS`].
pub fn is_never_ioctl(req: &str) -> bool {
    let value = moat_policy::args::lookup(moat_policy::args::IOCTL_REQUESTS, req)
        .map(|(_, v)| v)
        .or_else(|| {
            let hex = req.strip_prefix("0x").or_else(|| req.strip_prefix("0X"))?;
            u32::from_str_radix(hex, 16).ok()
        })
        .or_else(|| req.parse::<u32>().ok());
    NEVER_IOCTLS.iter().any(|n| {
        *n == req
            || moat_policy::args::lookup(moat_policy::args::IOCTL_REQUESTS, n)
                .is_some_and(|(_, v)| Some(v) == value)
    })
}

/// Text for a comment: control characters (a line break above all) are
/// written as escapes, so recorded text cannot end the comment.
pub fn comment_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if needs_escape(ch) {
            out.push_str(&escape_char(ch));
        } else {
            out.push(ch);
        }
    }
    out
}

fn needs_escape(ch: char) -> bool {
    ch.is_control() || matches!(ch, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// A JSON escape, which YAML's double-quoted style reads the same way.
fn escape_char(ch: char) -> String {
    match ch {
        '\n' => "\\n".into(),
        '\t' => "\\t".into(),
        '\r' => "\\r".into(),
        c => format!("\\u{:04x}", c as u32),
    }
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        serde_json::from_str(s).unwrap_or_else(|_| s[1..s.len() - 1].to_string())
    } else {
        s.to_string()
    }
}

/// Quotes a scalar when plain YAML would misread it.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !s.starts_with(['-', '.'])
        && !matches!(
            s,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
        );
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if needs_escape(c) => out.push_str(&escape_char(c)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path (or any recorded string) as a double-quoted YAML scalar when it
/// is not plainly safe; for comments that name paths.
pub fn quote(s: &str) -> String {
    yaml_scalar(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_policy_with_reasons_and_denies() {
        let mut p = Profile {
            name: "web".into(),
            header: vec!["made by a test".into()],
            ..Profile::default()
        };
        p.allow("read", "libc:read");
        p.allow("read", "libc:fread");
        p.allow("exit_group", "libc runtime");
        p.writable.insert("/tmp".into());
        let y = p.to_policy_yaml(&["mkdir".to_string()]);
        assert_eq!(
            y,
            "# made by a test\n\
             apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: web\n\
             spec:\n  extends: restricted\n  # 2 syscalls needed by the workload\n\
             \x20 syscalls:\n    allow:\n\
             \x20     - exit_group  # libc runtime\n\
             \x20     - read        # libc:fread, libc:read\n\
             \x20   # allowed by `restricted` but not needed by this workload\n\
             \x20   deny:\n      - mkdir\n\
             \x20 filesystem:\n    writable:\n      - path: /tmp\n"
        );
    }

    #[test]
    fn yaml_round_trip() {
        let mut p = Profile {
            name: "a b".into(),
            header: vec!["generated".into()],
            warnings: vec!["x: 2 sites".into()],
            ..Profile::default()
        };
        p.allow("read", "libc:read");
        p.allow("openat", "syscall in /bin/busybox");
        p.writable.insert("/tmp".into());
        p.socket_families.insert("AF_UNIX".into());
        p.failed_privileged.insert("mount: EPERM".into());
        p.socket_condition = Some(["AF_INET".to_string(), "AF_UNIX".to_string()].into());
        p.ioctl_condition = IoctlGrant::Allow(["TCGETS".to_string(), "0x1234".to_string()].into());
        let y = p.to_policy_yaml(&["mkdir".into()]);
        let back = Profile::from_policy_yaml("p.yaml", &y).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn any_ioctl_round_trips_and_dominates_merge() {
        let p = Profile {
            ioctl_condition: IoctlGrant::Any,
            ..Profile::default()
        };
        let y = p.to_policy_yaml(&[]);
        assert!(
            y.contains("    conditions:\n      ioctl:\n        deny: [TIOCSTI, TIOCLINUX]\n"),
            "{y}"
        );
        assert_eq!(
            Profile::from_policy_yaml("p", &y).unwrap().ioctl_condition,
            IoctlGrant::Any
        );
        let q = Profile {
            ioctl_condition: IoctlGrant::Allow(["TCGETS".to_string()].into()),
            ..Profile::default()
        };
        assert_eq!(q.merge(&p).ioctl_condition, IoctlGrant::Any);
    }

    #[test]
    fn foreign_yaml_is_refused() {
        let err = Profile::from_policy_yaml(
            "x.yaml",
            "apiVersion: moat.dev/v1\nkind: Policy\nspec:\n  extends: baseline\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.yaml:4: unexpected `extends: baseline`; `moat profile merge` reads only policies written by `moat profile`"
        );
    }

    #[test]
    fn merge_is_a_union() {
        let mut a = Profile::default();
        a.allow("read", "a");
        let mut b = Profile::default();
        b.allow("write", "b");
        b.allow("read", "b");
        let m = a.merge(&b);
        assert_eq!(m.syscall_names(), vec!["read", "write"]);
        assert_eq!(m.syscalls["read"].len(), 2);
    }

    /// Issue 23 item 1: a path opened for writing, with a line break and a
    /// YAML line after it, stays inside its comment; the policy grants no
    /// capability and reads back the same.
    #[test]
    fn recorded_text_cannot_write_grants() {
        let evil = "/tmp/a\n  capabilities: [SYS_ADMIN, SYS_PTRACE]\n  #";
        let mut p = Profile {
            name: "recorded".into(),
            header: vec![format!("Recorded from sh -c 'echo > {evil}'")],
            warnings: vec![format!("opened for writing outside: {}", quote(evil))],
            ..Profile::default()
        };
        p.allow("openat", format!("reason {evil}"));
        p.written
            .insert(format!("{} (writable tmpfs /tmp)", quote(evil)));
        p.written.insert("/tmp/\u{2028}x\u{7f}\"\\ #y (z)".into());
        p.failed_privileged.insert(format!("{evil}: EPERM"));
        p.writable.insert("/tmp/w\n  capabilities: [ALL]".into());
        let y = p.to_checked_policy_yaml(&[]).unwrap();
        for line in y.lines() {
            let t = line.trim_start();
            assert!(
                !line.contains("capabilities")
                    || t.starts_with('#')
                    || t.starts_with("- path: \"")
                    || t.starts_with("name: \"")
                    || line.contains(" # "),
                "a recorded string became YAML: {line:?}\n{y}"
            );
        }
        let policy = Policy::parse(&y, "p").unwrap();
        assert!(policy.spec.capabilities.is_empty(), "{y}");
        assert_eq!(policy.name, p.name);
        assert!(policy
            .spec
            .filesystem
            .writable
            .iter()
            .any(|t| t.path == "/tmp/w\n  capabilities: [ALL]"));
        let back = Profile::from_policy_yaml("p.yaml", &y).unwrap();
        assert_eq!(
            back.written,
            p.written.iter().map(|w| comment_text(w)).collect()
        );
        assert_eq!(back.writable, p.writable);
        assert_eq!(back.name, p.name);
    }

    /// Issue 11 item 2: whatever was recorded, no generated policy allows
    /// `TIOCSTI` or `TIOCLINUX`, by name or by number.
    #[test]
    fn never_ioctls_are_never_emitted() {
        let mut p = Profile {
            name: "t".into(),
            ..Profile::default()
        };
        p.allow("ioctl", "recorded");
        p.ioctl_condition = IoctlGrant::Allow(
            ["TCGETS", "TIOCSTI", "0x541c", "0x5412", "TIOCLINUX"]
                .map(String::from)
                .into(),
        );
        let y = p.to_checked_policy_yaml(&[]).unwrap();
        assert!(y.contains("        allow: [TCGETS]\n"), "{y}");
        let any = Profile {
            ioctl_condition: IoctlGrant::Any,
            ..p.clone()
        };
        let y = any.to_checked_policy_yaml(&[]).unwrap();
        assert!(y.contains("        deny: [TIOCSTI, TIOCLINUX]\n"), "{y}");
        let policy = Policy::parse(&y, "p").unwrap();
        moat_policy::compile(&policy).unwrap();
        let rule = &policy.spec.syscalls.conditions.ioctl;
        assert!(
            matches!(rule, IoctlRule::Deny(d) if d.contains(&0x5412) && d.contains(&0x541c)),
            "{rule:?}"
        );
    }

    #[test]
    fn comments_start_outside_quotes() {
        assert_eq!(comment_start(r#"  - path: "/a #b" # c"#), Some(18));
        assert_eq!(comment_start(r#"  - path: "/a \" #b""#), None);
        assert_eq!(comment_start("  # x \" # y"), Some(2));
    }

    #[test]
    fn scalars_are_quoted_when_needed() {
        assert_eq!(yaml_scalar("busybox-sh"), "busybox-sh");
        assert_eq!(yaml_scalar("a b"), "\"a b\"");
        assert_eq!(yaml_scalar("yes"), "\"yes\"");
        assert_eq!(yaml_scalar("a\n\u{1b}\"\\"), r#""a\n\u001b\"\\""#);
    }
}
