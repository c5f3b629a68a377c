//! A generated profile: what a workload needs, with the evidence for each
//! grant, rendered as a moat policy that extends `restricted`.

use std::collections::{BTreeMap, BTreeSet};

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
}

/// The `ioctl` condition of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IoctlGrant {
    /// Keep the base policy's condition.
    #[default]
    Inherit,
    /// Any request (`deny: []`): what static analysis must assume.
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
        let mut y = String::new();
        for line in &self.header {
            y.push_str(&format!("# {line}\n"));
        }
        for w in &self.warnings {
            y.push_str(&format!("# warning: {w}\n"));
        }
        y.push_str("apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n");
        y.push_str(&format!("  name: {}\n", yaml_scalar(&self.name)));
        y.push_str("spec:\n  extends: restricted\n");
        y.push_str(&format!(
            "  # {} syscalls needed by the workload\n",
            self.syscalls.len()
        ));
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
            y.push_str(&format!("      - {name:<width$}  # {}\n", shown.join(", ")));
        }
        if !deny.is_empty() {
            y.push_str("    # allowed by `restricted` but not needed by this workload\n");
            y.push_str("    deny:\n");
            for name in deny {
                y.push_str(&format!("      - {name}\n"));
            }
        }
        let has_conditions =
            self.socket_condition.is_some() || self.ioctl_condition != IoctlGrant::Inherit;
        if has_conditions {
            y.push_str("    conditions:\n");
        }
        if let Some(fams) = &self.socket_condition {
            let list: Vec<&str> = fams.iter().map(String::as_str).collect();
            y.push_str(&format!(
                "      socket:\n        families: [{}]\n",
                list.join(", ")
            ));
        }
        match &self.ioctl_condition {
            IoctlGrant::Inherit => {}
            IoctlGrant::Any => y.push_str("      ioctl:\n        deny: []\n"),
            IoctlGrant::Allow(reqs) => {
                let list: Vec<&str> = reqs.iter().map(String::as_str).collect();
                y.push_str(&format!(
                    "      ioctl:\n        allow: [{}]\n",
                    list.join(", ")
                ));
            }
        }
        if !self.socket_families.is_empty() {
            let fams: Vec<&str> = self.socket_families.iter().map(String::as_str).collect();
            y.push_str(&format!("  # socket families used: {}\n", fams.join(", ")));
            if self
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
        for w in &self.written {
            y.push_str(&format!("  # opened for writing: {w}\n"));
        }
        for op in &self.failed_privileged {
            y.push_str(&format!(
                "  # failed privileged operation (not granted): {op}\n"
            ));
        }
        y
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
            let (body, comment) = match raw.find(" #") {
                Some(idx) => (&raw[..idx], Some(raw[idx + 2..].trim())),
                None if raw.trim_start().starts_with('#') => {
                    ("", Some(raw.trim_start()[1..].trim()))
                }
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
                (8, "deny: []") if section == "ioctl" => p.ioctl_condition = IoctlGrant::Any,
                (8, _) if section == "ioctl" && t.starts_with("allow: [") => {
                    p.ioctl_condition = IoctlGrant::Allow(flow_list(&t["allow: ".len()..]));
                }
                (4, "writable:") => section = "writable",
                (6, _) if t.starts_with("- ") => {
                    let item = t[2..].trim();
                    match section {
                        "allow" => {
                            let reasons = p.syscalls.entry(item.to_string()).or_default();
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
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
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
        s.to_string()
    } else {
        format!("{:?}", s)
    }
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
            y.contains("    conditions:\n      ioctl:\n        deny: []\n"),
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

    #[test]
    fn scalars_are_quoted_when_needed() {
        assert_eq!(yaml_scalar("busybox-sh"), "busybox-sh");
        assert_eq!(yaml_scalar("a b"), "\"a b\"");
        assert_eq!(yaml_scalar("yes"), "\"yes\"");
    }
}
