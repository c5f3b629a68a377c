//! Every class of bad input gives file:line:column, what is wrong, and a fix.
//! The messages are asserted exactly.

use moat_policy::rbac::Rbac;
use moat_policy::Policy;

/// A policy extending baseline with `body` indented under `spec:` (line 6 on).
fn policy(body: &str) -> String {
    format!("apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: t\nspec:\n  extends: baseline\n{body}")
}

fn err(text: &str) -> String {
    Policy::parse(text, "t.yaml").unwrap_err().to_string()
}

#[test]
fn unknown_key_with_suggestion() {
    assert_eq!(
        err(&policy("  capabilites: [NET_BIND_SERVICE]\n")),
        "t.yaml:7:3: unknown key `capabilites` in `spec`; did you mean `capabilities`?"
    );
    assert_eq!(
        err(&policy("  resources:\n    memroy: 1Gi\n")),
        "t.yaml:8:5: unknown key `memroy` in `spec.resources`; did you mean `memory`?"
    );
    assert_eq!(
        err("apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {name: t}\nspecs: {}\n"),
        "t.yaml:4:1: unknown key `specs` at the top level; did you mean `spec`?"
    );
    assert_eq!(
        err(&policy("  zzz: 1\n")),
        "t.yaml:7:3: unknown key `zzz` in `spec`; expected one of: extends, isolation, process, capabilities, syscalls, filesystem, network, devices, resources, image, vulnerabilities, exec, audit"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        err(&policy("  resources:\n    pids: many\n")),
        "t.yaml:8:11: `spec.resources.pids` must be a whole number, found `many`"
    );
    assert_eq!(
        err(&policy("  capabilities: NET_ADMIN\n")),
        "t.yaml:7:17: `spec.capabilities` must be a list, found `NET_ADMIN`"
    );
    assert_eq!(
        err(&policy("  exec: \"yes\"\n")),
        "t.yaml:7:9: `spec.exec` must be `true` or `false`, found the string \"yes\""
    );
    assert_eq!(
        err(&policy("  resources:\n    memory: lots\n")),
        "t.yaml:8:13: `spec.resources.memory` must be a size such as `64Mi`, `1Gi` or a number of bytes, found `lots`"
    );
    assert_eq!(
        err(&policy("  network: everywhere\n")),
        "t.yaml:7:12: `spec.network` must be `none`, `loopback` or `egress`, found `everywhere`"
    );
    assert_eq!(
        err(&policy("  isolation: vn\n")),
        "t.yaml:7:14: `spec.isolation` must be `vm`, `sandbox` or `any`, found `vn`; did you mean `vm`?"
    );
}

#[test]
fn unknown_syscalls_and_groups() {
    assert_eq!(
        err(&policy("  syscalls:\n    deny: [mkdir, mkdir_at]\n")),
        "t.yaml:8:19: unknown syscall `mkdir_at`; did you mean `mkdirat`?"
    );
    assert_eq!(
        err(&policy("  syscalls:\n    allow: [\"@network\"]\n")),
        "t.yaml:8:13: unknown syscall group `@network`; did you mean `@network-io`?"
    );
    assert_eq!(
        err(&policy("  syscalls:\n    default: kil\n")),
        "t.yaml:8:14: `spec.syscalls.default` must be `errno`, `kill` or `log`, found `kil`; did you mean `kill`?"
    );
}

#[test]
fn unknown_capabilities() {
    assert_eq!(
        err(&policy("  capabilities: [NET_BIND_SERVICES]\n")),
        "t.yaml:7:18: unknown capability `NET_BIND_SERVICES`; did you mean `NET_BIND_SERVICE`?"
    );
    assert_eq!(
        err(&policy("  capabilities: [CAP_SYS_ADMN]\n")),
        "t.yaml:7:18: unknown capability `CAP_SYS_ADMN`; did you mean `SYS_ADMIN`?"
    );
    // The prefix is optional and case does not matter.
    let p = Policy::parse(
        &policy("  capabilities: [cap_net_raw, CAP_CHOWN, KILL]\n"),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(
        p.spec.capabilities.iter().collect::<Vec<_>>(),
        ["CHOWN", "KILL", "NET_RAW"]
    );
}

#[test]
fn unknown_argument_condition_values() {
    assert_eq!(
        err(&policy(
            "  syscalls:\n    conditions:\n      socket:\n        families: [AF_INET, AF_INTE6]\n"
        )),
        "t.yaml:10:29: unknown socket family `AF_INTE6`; did you mean `AF_INET6`?"
    );
    assert_eq!(
        err(&policy(
            "  syscalls:\n    conditions:\n      ioctl:\n        allow: [TIOCGWINZ]\n"
        )),
        "t.yaml:10:17: unknown ioctl request `TIOCGWINZ`; did you mean `TIOCGWINSZ`?"
    );
    assert_eq!(
        err(&policy(
            "  syscalls:\n    conditions:\n      clone:\n        deny_flags: [CLONE_NEWUSR]\n"
        )),
        "t.yaml:10:22: unknown clone flag `CLONE_NEWUSR`; did you mean `CLONE_NEWUSER`?"
    );
}

#[test]
fn contradiction_writable_root() {
    assert_eq!(
        err(&policy("  filesystem:\n    writable:\n      - path: /\n")),
        "t.yaml:9:15: `/` cannot be a writable tmpfs: list the directories that need writes instead (e.g. `/tmp`), or set `filesystem.root: ephemeral` for a writable layer over the whole image"
    );
    assert_eq!(
        err(&policy("  filesystem:\n    root: read-write\n")),
        "t.yaml:8:11: unknown root `read-write`: use `read-only` (the default) or `ephemeral` (a writable layer over the image, discarded with the container; its size is `resources.disk`)"
    );
}

#[test]
fn a_tmpfs_mode_is_octal_permission_and_sticky_bits() {
    let text = policy("  filesystem:\n    writable:\n      - {path: /cache, mode: 1777}\n      - {path: /data, mode: '0750'}\n");
    let p = moat_policy::Policy::parse(&text, "t.yaml").unwrap();
    let plan = moat_policy::compile(&p).unwrap();
    let modes: Vec<(String, Option<u32>)> = plan
        .mounts
        .into_iter()
        .filter_map(|m| match m {
            moat_policy::plan::MountPlan::Tmpfs {
                destination, mode, ..
            } => Some((destination, mode)),
            _ => None,
        })
        .filter(|(d, _)| d == "/cache" || d == "/data")
        .collect();
    assert_eq!(
        modes,
        [
            ("/cache".to_string(), Some(0o1777)),
            ("/data".to_string(), Some(0o750))
        ]
    );
    for bad in ["4755", "888", "rwx"] {
        assert_eq!(
            err(&policy(&format!("  filesystem:\n    writable:\n      - {{path: /cache, mode: {bad}}}\n"))),
            format!("t.yaml:9:30: `spec.filesystem.writable.mode` must be a directory mode in octal such as `1777` or `0750` (permission and sticky bits only), found `{bad}`")
        );
    }
}

#[test]
fn contradiction_tmpfs_and_volume_at_the_same_path() {
    assert_eq!(
        err(&policy(
            "  filesystem:\n    writable:\n      - path: /data\n    volumes:\n      - source: /srv/data\n        path: /data/\n"
        )),
        "t.yaml:12:15: `/data` is both a writable tmpfs and a volume; keep one of them"
    );
    // Also against a path that comes from the extended policy (baseline's /tmp).
    assert_eq!(
        err(&policy(
            "  filesystem:\n    volumes:\n      - source: /srv/tmp\n        path: /tmp\n"
        )),
        "t.yaml:10:15: `/tmp` is both a writable tmpfs and a volume; keep one of them"
    );
}

#[test]
fn contradiction_device_without_major_minor() {
    assert_eq!(
        err(&policy("  devices:\n    - path: /dev/fuse\n      type: c\n")),
        "t.yaml:8:7: device `/dev/fuse` needs both `major` and `minor` (the numbers `ls -l /dev/fuse` shows, e.g. `major: 10` and `minor: 229` for /dev/fuse)"
    );
    let ok = Policy::parse(
        &policy(
            "  devices:\n    - {path: /dev/fuse, type: c, major: 10, minor: 229, access: rw}\n",
        ),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(ok.spec.devices[0].major, 10);
}

#[test]
fn no_new_privs_cannot_be_turned_off() {
    assert_eq!(
        err(&policy("  process:\n    no_new_privs: false\n")),
        "t.yaml:8:19: `no_new_privs` is always on and cannot be turned off; remove this line"
    );
}

#[test]
fn yaml_syntax_and_strictness() {
    assert_eq!(
        err(&policy("  capabilities: [NET_ADMIN\n")),
        "t.yaml:8:1: invalid YAML: while parsing a flow sequence, expected ',' or ']'"
    );
    assert_eq!(
        err(&policy("  exec: false\n  exec: true\n")),
        "t.yaml:8:3: duplicate key `exec` (first defined at line 7); keep one"
    );
    assert_eq!(
        err(&policy("  exec: &x false\n")),
        "t.yaml:7:9: YAML anchors (`&name`) are not allowed in policy files; write the value out"
    );
}

#[test]
fn header_errors() {
    assert_eq!(
        err("apiVersion: moat.dev/v2\nkind: Policy\nmetadata: {name: t}\nspec: {}\n"),
        "t.yaml:1:13: unsupported apiVersion `moat.dev/v2`; expected `moat.dev/v1`"
    );
    assert_eq!(
        err("apiVersion: moat.dev/v1\nkind: Pod\nmetadata: {name: t}\nspec: {}\n"),
        "t.yaml:2:7: `kind` must be `Policy` in a policy file, found `Pod`"
    );
    assert_eq!(
        err("apiVersion: moat.dev/v1\nkind: Policy\nspec: {}\n"),
        "t.yaml:1:1: missing `metadata`"
    );
    assert_eq!(
        err("apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {name: t}\nspec: {}\n"),
        "t.yaml:4:7: the policy allows no system calls, so nothing could run; add `extends: baseline` or list `syscalls.allow`"
    );
}

#[test]
fn extends_errors() {
    assert_eq!(
        err("apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {name: t}\nspec:\n  extends: baselin\n"),
        "t.yaml:5:12: `extends: baselin` is neither a built-in policy (auto, baseline, restricted) nor a file path ending in .yaml; did you mean `baseline`?"
    );
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    let doc = |name: &str, ext: &str| {
        format!("apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  extends: {ext}\n")
    };
    std::fs::write(&a, doc("a", "./b.yaml")).unwrap();
    std::fs::write(&b, doc("b", "./a.yaml")).unwrap();
    let e = Policy::load(&a).unwrap_err().to_string();
    let (da, db) = (
        a.display(),
        dir.path().join("./b.yaml").display().to_string(),
    );
    assert_eq!(
        e,
        format!(
            "`extends` cycle: {da} -> {db} -> {}",
            dir.path().join("./a.yaml").display()
        )
    );
    let missing = dir.path().join("missing.yaml");
    let e = Policy::load(&missing).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cannot read policy file {}", missing.display())
    );
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(
        Policy::builtin("strict").unwrap_err().to_string(),
        "unknown built-in policy `strict`; did you mean `restricted`?"
    );
}

#[test]
fn extends_another_file_layers_on_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("base.yaml"),
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {name: base}\nspec:\n  extends: restricted\n  capabilities: [CHOWN]\n",
    )
    .unwrap();
    let top = dir.path().join("top.yaml");
    std::fs::write(
        &top,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {name: top}\nspec:\n  extends: base.yaml\n  capabilities: [KILL]\n  syscalls:\n    deny: [chdir]\n",
    )
    .unwrap();
    let p = Policy::load(&top).unwrap();
    assert_eq!(
        p.extends,
        vec![
            dir.path().join("base.yaml").display().to_string(),
            "builtin:restricted".to_string()
        ]
    );
    assert_eq!(
        p.spec.capabilities.iter().collect::<Vec<_>>(),
        ["CHOWN", "KILL"]
    );
    assert!(!p.spec.syscalls.allow.contains("chdir"));
    assert!(p.spec.syscalls.allow.contains("read"));
    assert_eq!(p.spec.resources.pids, Some(64));
}

#[test]
fn vulnerability_ignores_need_reason_and_expiry() {
    assert_eq!(
        err(&policy(
            "  vulnerabilities:\n    ignore:\n      - id: CVE-2024-1234\n        expires: 2027-01-01\n"
        )),
        "t.yaml:9:9: ignoring `CVE-2024-1234` needs a `reason`: say why it does not apply"
    );
    assert_eq!(
        err(&policy(
            "  vulnerabilities:\n    ignore:\n      - id: CVE-2024-1234\n        reason: not reachable\n"
        )),
        "t.yaml:9:9: ignoring `CVE-2024-1234` needs an `expires` date (YYYY-MM-DD) so that it is reviewed again"
    );
    assert_eq!(
        err(&policy(
            "  vulnerabilities:\n    ignore:\n      - {id: X, reason: r, expires: soon}\n"
        )),
        "t.yaml:9:37: `spec.vulnerabilities.ignore.expires` must be a date YYYY-MM-DD, found `soon`"
    );
}

#[test]
fn network_errors() {
    assert_eq!(
        err(&policy(
            "  network:\n    mode: loopback\n    egress:\n      - to: 10.0.0.0/8\n"
        )),
        "t.yaml:10:7: `spec.network.egress` rules need `mode: egress`, found `mode: loopback`"
    );
    assert_eq!(
        err(&policy(
            "  network:\n    mode: egress\n    egress:\n      - to: 10.0.0.0/33\n"
        )),
        "t.yaml:10:13: `spec.network.egress.to` must be a CIDR such as `10.0.0.0/8` or `2001:db8::/32`, found `10.0.0.0/33`"
    );
    assert_eq!(
        err(&policy("  network:\n    mode: loopback\n    dns: true\n")),
        "t.yaml:9:10: `spec.network.dns: true` needs `mode: egress` (the resolver is reached through the egress network), found `mode: loopback`"
    );
    assert_eq!(
        err(&policy("  network:\n    mode: egress\n    dns: yes\n")),
        "t.yaml:9:10: `spec.network.dns` must be `true` or `false`, found `yes`"
    );
}

#[test]
fn network_dns_grant_compiles_into_the_plan() {
    let p = Policy::parse(
        &policy("  network:\n    mode: egress\n    dns: true\n"),
        "t.yaml",
    )
    .unwrap();
    assert!(p.spec.network.dns);
    let plan = moat_policy::compile(&p).unwrap();
    assert!(matches!(
        plan.network,
        moat_policy::plan::NetworkPlan::Egress { dns: true, .. }
    ));
    let p = Policy::parse(&policy("  network:\n    mode: egress\n"), "t.yaml").unwrap();
    assert!(!p.spec.network.dns);
}

#[test]
fn rbac_errors() {
    let e = Rbac::parse(
        "apiVersion: moat.dev/v1\nkind: RBAC\nroles:\n  - name: dev\nbindings:\n  - role: devs\n    users: [alice]\n",
        "rbac.yaml",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "rbac.yaml:6:11: binding to unknown role `devs`; did you mean `dev`?"
    );
    let e = Rbac::parse(
        "apiVersion: moat.dev/v1\nkind: RBAC\nroles:\n  - name: dev\n    grants:\n      network: [internet]\n",
        "rbac.yaml",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "rbac.yaml:6:17: `roles.grants.network` must be `none`, `loopback`, `egress` or `publish`, found `internet`"
    );
    let e = Rbac::parse("apiVersion: moat.dev/v1\nkind: Policy\n", "rbac.yaml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "rbac.yaml:2:7: `kind` must be `RBAC` in an RBAC file, found `Policy`"
    );
}
