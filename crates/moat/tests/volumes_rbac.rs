//! `moat volume create|rm|prune` are authorised through RBAC like `moat
//! run`'s named volumes (issue 15): the invoking user's roles must grant
//! the volume's name (`named_volumes` patterns); a refusal names the
//! volume, the user, their roles and the role that would allow it, and is
//! audited. Needs root (mkfs.ext4 into a root-only state root).

#[path = "sandbox_common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;

use common::{can_sandbox, stderr, stdout, Env};

/// Root may create and remove `app-*`; role `db-admin` (bound to someone
/// else) would allow `db*`.
fn rbac(env: &Env) -> String {
    let f = env.dir.path().join("rbac.yaml");
    std::fs::write(
        &f,
        "apiVersion: moat.dev/v1\nkind: RBAC\nroles:\n  - name: apps\n    grants:\n      named_volumes: [\"app-*\"]\n  - name: db-admin\n    grants:\n      named_volumes: [\"db*\"]\nbindings:\n  - role: apps\n    users: [root]\n  - role: db-admin\n    users: [nobody]\n",
    )
    .unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    f.display().to_string()
}

fn names(env: &Env) -> String {
    env.ok(&["volume", "ls", "-q"])
}

#[test]
fn volume_create_rm_and_prune_need_a_role_granting_the_name() {
    if !can_sandbox("volume_create_rm_and_prune_need_a_role_granting_the_name") {
        return;
    }
    let env = Env::new();
    let rbac = rbac(&env);
    let refusal = |verb: &str, name: &str| {
        format!("{verb} volume \"{name}\": refused for root:\n  - named volume {name}: not granted to root (roles: apps); role `db-admin` allows it")
    };

    // Create: refused outside the role, nothing made.
    let o = env
        .moat(&["volume", "create", "--rbac", &rbac, "db1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!("moat: error: {}\n", refusal("creating", "db1"))
    );
    assert_eq!(names(&env), "");
    // Within it: made.
    for n in ["app-1", "app-2"] {
        assert_eq!(
            env.ok(&["volume", "create", "--size", "16m", "--rbac", &rbac, n]),
            format!("{n}\n")
        );
    }
    // Root without an RBAC file may (as for `moat run`): made.
    env.ok(&["volume", "create", "--size", "16m", "db1"]);
    assert_eq!(names(&env), "app-1\napp-2\ndb1\n");

    // Remove: refused for the name the role does not grant, the other
    // name of the same command still removed.
    let o = env
        .moat(&["volume", "rm", "--rbac", &rbac, "db1", "app-2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), "app-2\n");
    assert_eq!(
        stderr(&o),
        format!("moat: error: {}\n", refusal("removing", "db1"))
    );
    assert_eq!(names(&env), "app-1\ndb1\n");

    // Prune: only what the role grants; the rest is kept, with a notice.
    let o = env
        .moat(&["volume", "prune", "--rbac", &rbac])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "app-1\n");
    assert_eq!(
        stderr(&o),
        format!("moat: notice: kept: {}\n", refusal("pruning", "db1"))
    );
    assert_eq!(names(&env), "db1\n");

    // Every decision is in the audit log, the refusals with their reason.
    let log = std::fs::read_to_string(env.state_root().join("audit/policy.log")).unwrap();
    let denied: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["decision"] == "deny")
        .collect();
    let actions: Vec<&str> = denied
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["volume-create", "volume-rm", "volume-prune"]);
    assert!(denied.iter().all(|r| r["policy"] == "volume db1"));
    assert!(log.contains("\"action\":\"volume-create\",\"principal\":\"root\""));

    // A bad name is refused as such before any authorisation.
    let o = env
        .moat(&["volume", "create", "--rbac", &rbac, "../x"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("../x"), "{}", stderr(&o));
}
