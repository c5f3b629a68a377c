//! The issue's RBAC example, accepted exactly as written, and its decisions.

use std::path::Path;

use moat_policy::rbac::{self, AuditRecord, Principal, Rbac};
use moat_policy::Policy;
use moat_testkit::fixtures::{RBAC, WEB};

struct Users {
    _dir: tempfile::TempDir,
    passwd: std::path::PathBuf,
    group: std::path::PathBuf,
}

fn users() -> Users {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let group = dir.path().join("group");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\ncarol:x:1002:1002::/home/carol:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        &group,
        "root:x:0:\nalice:x:1000:\nbob:x:1001:\ncarol:x:1002:\ndev:x:2000:bob\n",
    )
    .unwrap();
    Users {
        _dir: dir,
        passwd,
        group,
    }
}

fn who(u: &Users, name: &str) -> Principal {
    Principal::lookup_in(name, &u.passwd, &u.group).unwrap()
}

#[test]
fn issue_example_is_accepted() {
    let r = Rbac::parse(RBAC, "rbac.yaml").expect("the issue's RBAC example must parse");
    assert_eq!(r.roles.len(), 2);
    assert!(r.roles[1].grants.capabilities.contains("ALL"));
    assert_eq!(r.bindings[0].groups, vec!["dev".to_string()]);
}

#[test]
fn developer_is_refused_a_capability_naming_the_role_that_allows_it() {
    let u = users();
    let r = Rbac::parse(RBAC, "rbac.yaml").unwrap();
    let web = Policy::parse(WEB, "web.yaml").unwrap();
    let alice = who(&u, "alice");
    let d = rbac::authorize(Some(&r), Path::new("rbac.yaml"), &alice, &web);
    assert!(!d.allowed);
    assert_eq!(d.roles, vec!["developer".to_string()]);
    assert_eq!(
        d.reasons,
        vec![
            "capability NET_BIND_SERVICE: not granted to alice (roles: developer); role `platform-admin` allows it"
                .to_string()
        ]
    );
    // Without the capability the same user may run it.
    let plain = Policy::parse(&WEB.replace("[NET_BIND_SERVICE]", "[]"), "web.yaml").unwrap();
    assert!(rbac::authorize(Some(&r), Path::new("rbac.yaml"), &alice, &plain).allowed);
}

#[test]
fn roles_come_from_groups_and_root_is_admin() {
    let u = users();
    let r = Rbac::parse(RBAC, "rbac.yaml").unwrap();
    let bob = who(&u, "bob");
    assert_eq!(bob.groups, vec!["bob".to_string(), "dev".to_string()]);
    let base = Policy::builtin("baseline").unwrap();
    let d = rbac::authorize(Some(&r), Path::new("rbac.yaml"), &bob, &base);
    assert!(d.allowed, "{:?}", d.reasons);
    assert_eq!(d.roles, vec!["developer".to_string()]);
    let web = Policy::parse(WEB, "web.yaml").unwrap();
    let root = who(&u, "0");
    let d = rbac::authorize(Some(&r), Path::new("rbac.yaml"), &root, &web);
    assert!(d.allowed);
    assert_eq!(d.roles, vec!["platform-admin".to_string()]);
}

#[test]
fn every_offending_grant_is_named() {
    let u = users();
    let r = Rbac::parse(RBAC, "rbac.yaml").unwrap();
    let greedy = Policy::parse(
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {name: greedy}\nspec:\n  extends: baseline\n  capabilities: [SYS_ADMIN]\n  exec: true\n  devices: [{path: /dev/fuse, major: 10, minor: 229}]\n  filesystem:\n    volumes:\n      - {source: /srv/data/x, path: /data}\n      - {source: /etc, path: /hostetc}\n  network:\n    mode: egress\n    egress: [{to: 0.0.0.0/0, ports: 443, protocol: tcp}]\n    publish: [{host: 8080, container: 80}]\n",
        "greedy.yaml",
    )
    .unwrap();
    let alice = who(&u, "alice");
    let d = rbac::authorize(Some(&r), Path::new("rbac.yaml"), &alice, &greedy);
    let p = "role `platform-admin` allows it";
    assert_eq!(
        d.reasons,
        vec![
            format!("capability SYS_ADMIN: not granted to alice (roles: developer); {p}"),
            format!("network egress: not granted to alice (roles: developer); {p}"),
            format!("network publish: not granted to alice (roles: developer); {p}"),
            format!("volume /etc: not granted to alice (roles: developer); {p}"),
            format!("exec: not granted to alice (roles: developer); {p}"),
            format!("devices: not granted to alice (roles: developer); {p}"),
        ]
    );
    let carol = who(&u, "carol");
    let d = rbac::authorize(
        Some(&r),
        Path::new("rbac.yaml"),
        &carol,
        &Policy::builtin("baseline").unwrap(),
    );
    assert_eq!(
        d.reasons[0],
        "network none: carol has no role in rbac.yaml; role `developer` allows it"
    );
}

#[test]
fn without_a_file_root_is_allowed_with_a_warning_and_others_refused() {
    let u = users();
    let base = Policy::builtin("baseline").unwrap();
    let path = Path::new("/etc/moat/rbac.yaml");
    let d = rbac::authorize(None, path, &who(&u, "root"), &base);
    assert!(d.allowed);
    assert_eq!(
        d.warning.as_deref(),
        Some("no RBAC file at /etc/moat/rbac.yaml: root may grant anything; create one to control who may grant what (see docs/policy.md)")
    );
    let d = rbac::authorize(None, path, &who(&u, "alice"), &base);
    assert!(!d.allowed);
    assert_eq!(
        d.reasons,
        vec!["no RBAC file at /etc/moat/rbac.yaml: only root may run without one; ask an administrator to create it or pass --rbac FILE".to_string()]
    );
    assert_eq!(
        Principal::lookup_in("mallory", &u.passwd, &u.group)
            .unwrap_err()
            .to_string(),
        "unknown user `mallory`: not in /etc/passwd and not a number"
    );
}

#[test]
fn decisions_are_appended_as_json_lines() {
    let u = users();
    let root = tempfile::tempdir().unwrap();
    let r = Rbac::parse(RBAC, "rbac.yaml").unwrap();
    let web = Policy::parse(WEB, "web.yaml").unwrap();
    for name in ["alice", "root"] {
        let w = who(&u, name);
        let d = rbac::authorize(Some(&r), Path::new("rbac.yaml"), &w, &web);
        rbac::append_audit(root.path(), &AuditRecord::new("check", &w, &web, &d)).unwrap();
    }
    let log = std::fs::read_to_string(root.path().join("audit/policy.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["principal"], "alice");
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[0]["reasons"].as_array().unwrap().len(), 1);
    assert_eq!(lines[1]["principal"], "root");
    assert_eq!(lines[1]["decision"], "allow");
    assert_eq!(
        lines[1]["policy_digest"],
        format!("sha256:{}", web.digest())
    );
    assert!(lines[1]["time"].as_str().unwrap().ends_with('Z'));
}
