//! The image config's `Volumes` (Docker's `VOLUME`: the directories an
//! image expects to write, databases and caches). moat never lets an image
//! widen its policy, so a declared volume is honoured only where the
//! policy already allows it: a path the plan makes writable keeps that
//! mount; where the policy grants writable named volumes whose pattern
//! covers `anon-*`, the path gets an anonymous volume, as in podman; every
//! other one gets a notice naming it and the grants that would provide it,
//! so that the workload's read-only failure does not come as a surprise.

use moat_policy::plan::{MountPlan, Plan, RootPlan};
use moat_policy::Policy;

/// The prefix of anonymous volumes' names; a policy allows them with a
/// writable `named_volumes` grant covering it (`anon-*` or `*`).
pub const ANONYMOUS_PREFIX: &str = "anon-";

/// Whether `path` is `dir` or below it (both absolute, normalised).
fn within(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir || dir.is_empty() || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// `p` without trailing slashes (`/` stays `/`).
fn normalise(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else {
        t.to_string()
    }
}

/// Whether the container can write at `path` under `plan`: the root is
/// ephemeral (the path keeps the image's contents, as a fresh volume
/// would), or a writable mount is at or above it.
pub fn provided(plan: &Plan, path: &str) -> bool {
    if matches!(plan.root, RootPlan::Ephemeral { .. }) {
        return true;
    }
    plan.mounts.iter().any(|m| {
        let writable = match m {
            MountPlan::Tmpfs { .. } => true,
            MountPlan::Volume { read_only, .. } | MountPlan::Named { read_only, .. } => !read_only,
        };
        writable && within(path, m.destination())
    })
}

/// The declared paths, normalised, absolute, each once.
fn declared_paths(declared: &[String]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    declared
        .iter()
        .map(|d| normalise(d))
        .filter(|d| d.starts_with('/') && d != "/" && seen.insert(d.clone()))
        .collect()
}

/// The anonymous volumes container `id` gets for the declared volumes the
/// plan does not already make writable, when `policy` grants writable
/// named volumes covering their names (`dir_of` names a volume's store
/// directory). Named `anon-<first 12 of id>-<n>`.
pub fn anonymous(
    policy: &Policy,
    plan: &Plan,
    declared: &[String],
    id: &str,
    dir_of: &dyn Fn(&str) -> String,
) -> Vec<MountPlan> {
    let short = &id[..id.len().min(12)];
    declared_paths(declared)
        .into_iter()
        .filter(|d| !provided(plan, d))
        .enumerate()
        .filter_map(|(n, d)| {
            let name = format!("{ANONYMOUS_PREFIX}{short}-{n}");
            let granted = policy
                .spec
                .filesystem
                .named_volumes
                .iter()
                .any(|g| !g.read_only && g.covers(&name));
            granted.then(|| MountPlan::Named {
                dir: dir_of(&name),
                name,
                destination: d,
                read_only: false,
            })
        })
        .collect()
}

/// One notice line for each declared volume the container will not get.
pub fn notices(plan: &Plan, declared: &[String]) -> Vec<String> {
    declared_paths(declared)
        .into_iter()
        .filter(|d| !provided(plan, d))
        .map(|d| {
            format!(
                "moat: notice: the image declares VOLUME {d}, but policy {:?} makes nothing writable there, so writes to it fail (read-only file system); \
                 grant it with `filesystem.writable: [{{path: {d}}}]` (a tmpfs), anonymous volumes (`filesystem.named_volumes: [{{name: \"anon-*\", read_only: false}}]`), a named volume (`-v NAME:{d}`), or `filesystem.root: ephemeral`",
                plan.policy_name
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(root: RootPlan, mounts: Vec<MountPlan>) -> Plan {
        let p = moat_policy::Policy::builtin("baseline").unwrap();
        let mut plan = moat_policy::compile(&p).unwrap();
        plan.root = root;
        plan.mounts = mounts;
        plan
    }

    fn tmpfs(d: &str) -> MountPlan {
        MountPlan::Tmpfs {
            destination: d.into(),
            size_bytes: 1,
            optional: false,
            mode: None,
        }
    }

    #[test]
    fn declared_volumes_are_met_by_writable_mounts_or_an_ephemeral_root() {
        let declared: Vec<String> = ["/data/", "/tmp/cache", "/srv", "/data", "/tmpx", "rel"]
            .map(String::from)
            .to_vec();
        let ro = MountPlan::Volume {
            source: "/h".into(),
            destination: "/srv".into(),
            read_only: true,
        };
        let p = plan(RootPlan::ReadOnly, vec![tmpfs("/tmp"), ro]);
        let n = notices(&p, &declared);
        assert_eq!(n.len(), 3, "{n:?}");
        assert!(n[0].contains("VOLUME /data,"), "{}", n[0]);
        assert!(
            n[0].contains("`filesystem.writable: [{path: /data}]`"),
            "{}",
            n[0]
        );
        assert!(n[1].contains("VOLUME /srv,"));
        assert!(n[2].contains("VOLUME /tmpx,"));
        let p = plan(RootPlan::Ephemeral { size_bytes: 1 }, vec![]);
        assert!(notices(&p, &declared).is_empty());
        let p = plan(
            RootPlan::ReadOnly,
            vec![tmpfs("/data"), tmpfs("/srv"), tmpfs("/tmpx")],
        );
        assert_eq!(notices(&p, &declared).len(), 1); // /tmp/cache
    }
}
