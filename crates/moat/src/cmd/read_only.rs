//! Writes the read-only root refused, and the grant that allows them.
//!
//! While a sandbox container runs in the foreground, an eBPF watch
//! ([`moat_profile::ebpf::rofs`]) keeps the paths its processes (the
//! container's host uid range) failed to create or write with `EROFS`.
//! When the workload exits non-zero, `moat run` names each path and the
//! policy line that would make it writable: a tmpfs at the nearest
//! directory the image has (as `moat profile record` grants it), or, in the
//! image's system directories where a tmpfs would hide its files, an
//! ephemeral root. Nothing reruns the workload.
//!
//! In a micro-VM the guest agent, the guest kernel's audit daemon, sees
//! the same failures (an audit rule on calls failing with `EROFS`) and
//! sends them with the exit status ([`from_guest`]); both backends' hits
//! go through the one [`report`].
//!
//! Limits: containers running at the same time share the id range, so one
//! may see another's refused writes; a relative path is named relative to
//! the process's working directory at start. The guest's report is
//! whatever the guest says: advice, never enforcement.

use moat_policy::plan::{MountPlan, Plan, RootPlan};
use moat_profile::ebpf::rofs::ReadOnlyWatch;
use moat_profile::record::write_grants;
use moat_profile::rootfs::Root;

/// One refused write, from either backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// As the program passed it (absolute or relative to its directory).
    pub path: String,
    /// The call's name.
    pub syscall: String,
    /// `path` is the directory a new entry was refused in (the guest's
    /// audit names only the parent of a name it did not create).
    pub entry_in_dir: bool,
}

/// The guest's refused writes (paths absolute, bounded by the host).
pub fn from_guest(r: &moat_vm::GuestReport) -> Vec<Refused> {
    r.read_only
        .iter()
        .map(|h| Refused {
            path: h.path.clone(),
            syscall: moat_policy::syscalls::name(h.nr).unwrap_or_else(|| format!("#{}", h.nr)),
            entry_in_dir: h.path.len() > 1 && h.path.ends_with('/'),
        })
        .collect()
}

/// The watch, or nothing where eBPF is not to be had (the report is then
/// empty).
pub struct Watch(Option<ReadOnlyWatch>);

impl Watch {
    /// Starts watching the host uids `[uid_base, uid_base + count)`, unless
    /// `plan`'s root is writable anyway.
    pub fn start(plan: &Plan, uid_base: u32, count: u32) -> Watch {
        if matches!(plan.root, RootPlan::Ephemeral { .. }) {
            return Watch(None);
        }
        Watch(ReadOnlyWatch::start(uid_base, count).ok())
    }

    /// The writes refused so far.
    pub fn hits(self) -> Vec<Refused> {
        let Some(Ok(hits)) = self.0.map(|w| w.hits()) else {
            return Vec::new();
        };
        hits.into_iter()
            .map(|h| Refused {
                path: h.path,
                syscall: h.syscall,
                entry_in_dir: false,
            })
            .collect()
    }
}

/// How many names the image at `rootfs` has in a directory (`None`: no
/// such directory). Reads the image: not for a VM's supervisor, whose
/// filter allows no open (a VM's report carries the guest's view,
/// [`guest_entries`]).
pub fn image_entries(rootfs: &std::path::Path) -> impl Fn(&str) -> Option<usize> {
    let root = Root::open(rootfs).ok();
    move |d: &str| {
        let r = root.as_ref()?;
        r.is_dir(d).then(|| r.list_dir(d).len())
    }
}

/// The image's directories as the guest saw them, for [`report`]: the
/// nearest image directory of each refused write and its number of names.
pub fn guest_entries(r: &moat_vm::GuestReport) -> impl Fn(&str) -> Option<usize> {
    let dirs: std::collections::BTreeMap<String, usize> = r
        .read_only
        .iter()
        .filter(|h| !h.image_dir.is_empty())
        .map(|h| (h.image_dir.clone(), h.image_dir_entries as usize))
        .collect();
    move |d: &str| dirs.get(d).copied()
}

/// `path` made absolute against `cwd`, without `.` and `..` components.
fn absolute(path: &str, cwd: &str) -> String {
    let joined = match path.starts_with('/') {
        true => path.to_string(),
        false => format!("{}/{path}", cwd.trim_end_matches('/')),
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// The report for `hits` (pure: `entries` says how many names the image
/// has in a directory, `None` where it has none; `policy` is what a
/// policy granting the writes would extend).
pub fn report(
    policy: &str,
    plan: &Plan,
    code: i32,
    hits: &[Refused],
    cwd: &str,
    entries: &dyn Fn(&str) -> Option<usize>,
) -> Vec<String> {
    if hits.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![format!(
        "moat: the workload exited {code} after {} write(s) refused by a read-only file system:",
        hits.len()
    )];
    let mut root_paths = Vec::new();
    for h in hits {
        let path = absolute(&h.path, cwd);
        // What the grant must cover: the file, or a new entry in `path`.
        let written = match h.entry_in_dir {
            true => {
                lines.push(format!("  {} of a new entry in {path}", h.syscall));
                format!("{}/*", path.trim_end_matches('/'))
            }
            false => {
                lines.push(format!("  {} {path}", h.syscall));
                path.clone()
            }
        };
        let mount = plan
            .mounts
            .iter()
            .filter(|m| under(&path, m.destination()))
            .max_by_key(|m| m.destination().len());
        if let Some(m) = mount {
            let what = match m {
                MountPlan::Named { name, .. } => format!("named volume {name:?}"),
                MountPlan::Volume { source, .. } => format!("host directory {source}"),
                MountPlan::Tmpfs { .. } => "tmpfs".to_string(),
            };
            lines.push(format!(
                "    {path} is on the {what} mounted read-only at {}: a writable grant for it and `-v ...:{}:rw`",
                m.destination(),
                m.destination()
            ));
        } else if ["/proc", "/sys", "/dev"].iter().any(|k| under(&path, k)) {
            lines.push(format!(
                "    {path} is a kernel file, read-only in every container"
            ));
        } else {
            root_paths.push(written);
        }
    }
    let refs: Vec<&str> = root_paths.iter().map(String::as_str).collect();
    let g = write_grants(&refs, entries);
    if !g.writable.is_empty() {
        let list: Vec<String> = g
            .writable
            .iter()
            .map(|d| format!("{{path: {d}}}"))
            .collect();
        lines.push(format!(
            "  to allow the writes under {}: `filesystem.writable: [{}]` (a tmpfs there) in a policy file with `extends: {policy}`, or `filesystem.root: ephemeral` (a writable layer over the whole image)",
            g.writable.iter().cloned().collect::<Vec<_>>().join(", "),
            list.join(", ")
        ));
        for d in &g.hiding {
            lines.push(format!("    (a tmpfs at {d} hides the image's files there; if the workload needs them, use `filesystem.root: ephemeral`)"));
        }
    }
    if !g.ungrantable.is_empty() {
        lines.push(format!(
            "  {} in the image's system directories, where a tmpfs would hide its files: allow them with `filesystem.root: ephemeral` in a policy file with `extends: {policy}`",
            g.ungrantable
                .iter()
                .map(|p| match p.strip_suffix("/*") {
                    Some(d) => format!("a new entry in {d}"),
                    None => p.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(path: &str, syscall: &str) -> Refused {
        Refused {
            path: path.into(),
            syscall: syscall.into(),
            entry_in_dir: false,
        }
    }

    /// The guest's report of a refused mkdir names the directory only.
    #[test]
    fn a_guest_report_names_the_directory_and_its_grant() {
        let plan =
            moat_policy::compile(&moat_policy::Policy::builtin("baseline").unwrap()).unwrap();
        let guest = moat_vm::GuestReport {
            denied: Vec::new(),
            read_only: vec![
                moat_vm::GuestReadOnly {
                    nr: 83,
                    path: "/var/lib/nginx/".into(),
                    image_dir: "/var/lib/nginx".into(),
                    image_dir_entries: 0,
                },
                moat_vm::GuestReadOnly {
                    nr: 257,
                    path: "/etc/".into(),
                    image_dir: "/etc".into(),
                    image_dir_entries: 40,
                },
            ],
            omitted: 0,
        };
        let hits = from_guest(&guest);
        let entries = guest_entries(&guest);
        let text = report("baseline", &plan, 1, &hits, "/", &entries).join("\n");
        assert!(
            text.contains("  mkdir of a new entry in /var/lib/nginx\n"),
            "{text}"
        );
        assert!(
            text.contains("`filesystem.writable: [{path: /var/lib/nginx}]`"),
            "{text}"
        );
        assert!(
            text.contains("  a new entry in /etc in the image's system directories"),
            "{text}"
        );
    }

    #[test]
    fn names_each_path_and_the_grant_at_the_nearest_image_directory() {
        let mut plan =
            moat_policy::compile(&moat_policy::Policy::builtin("baseline").unwrap()).unwrap();
        plan.mounts.push(MountPlan::Named {
            name: "data".into(),
            dir: "/store/data".into(),
            destination: "/data".into(),
            read_only: true,
        });
        // The image has /var/lib/nginx (empty), /var/log (two names), /etc.
        let entries = |d: &str| match d {
            "/var/lib/nginx" => Some(0),
            "/var/log" => Some(2),
            "/var/lib" | "/var" | "/etc" => Some(1),
            _ => None,
        };
        let hits = [
            hit("/var/lib/nginx/body", "mkdir"),
            hit("../log/app.log", "openat"),
            hit("/etc/app.conf", "openat"),
            hit("/data/x", "creat"),
            hit("/proc/sys/kernel/hostname", "openat"),
        ];
        let r = report("auto", &plan, 1, &hits, "/var/lib", &entries);
        let text = r.join("\n");
        assert!(
            r[0].starts_with("moat: the workload exited 1 after 5 write(s) refused"),
            "{text}"
        );
        assert!(text.contains("  mkdir /var/lib/nginx/body\n"), "{text}");
        assert!(text.contains("  openat /var/log/app.log\n"), "{text}");
        assert!(
            text.contains("`filesystem.writable: [{path: /var/lib/nginx}, {path: /var/log}]`"),
            "{text}"
        );
        assert!(
            text.contains("a tmpfs at /var/log hides the image's files"),
            "{text}"
        );
        assert!(
            text.contains("/etc/app.conf in the image's system directories")
                && text.contains("`filesystem.root: ephemeral`"),
            "{text}"
        );
        assert!(
            text.contains("named volume \"data\" mounted read-only at /data"),
            "{text}"
        );
        assert!(
            text.contains("/proc/sys/kernel/hostname is a kernel file"),
            "{text}"
        );
        assert!(report("auto", &plan, 1, &[], "/", &entries).is_empty());
    }
}
