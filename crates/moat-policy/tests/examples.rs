//! The issue's policy example, accepted exactly as written, and what it means.

use moat_policy::model::{DefaultAction, NetworkMode};
use moat_policy::plan::{IsolationRequirement, MountPlan, NetworkPlan, RlimitResource};
use moat_policy::{compile, Policy};
use moat_testkit::fixtures::WEB;

#[test]
fn issue_example_is_accepted_and_means_what_it_says() {
    let p = Policy::parse(WEB, "web.yaml").expect("the issue's example must parse");
    assert_eq!(p.name, "web");
    assert_eq!(p.extends, vec!["builtin:baseline".to_string()]);
    let s = &p.spec;
    assert_eq!(s.isolation, IsolationRequirement::Any);
    assert_eq!(
        s.capabilities.iter().collect::<Vec<_>>(),
        vec!["NET_BIND_SERVICE"]
    );
    assert!(!s.syscalls.allow.contains("mkdir"));
    assert!(!s.syscalls.allow.contains("mkdirat"));
    assert!(s.syscalls.allow.contains("openat"));
    assert_eq!(s.syscalls.default_action, DefaultAction::Errno);
    assert_eq!(s.network.mode, NetworkMode::None);
    assert_eq!(s.resources.memory_bytes, Some(256 << 20));
    assert_eq!(s.resources.pids, Some(64));
    assert_eq!(s.resources.cpu_millis, Some(1000));
    // /tmp is replaced (16Mi), /run still comes from baseline.
    let tmp = s
        .filesystem
        .writable
        .iter()
        .find(|t| t.path == "/tmp")
        .unwrap();
    assert_eq!(tmp.size_bytes, 16 << 20);
    assert!(s.filesystem.writable.iter().any(|t| t.path == "/run"));

    let plan = compile(&p).unwrap();
    assert_eq!(plan.policy_name, "web");
    assert_eq!(plan.capabilities, vec!["NET_BIND_SERVICE".to_string()]);
    assert_eq!(plan.namespaces.len(), 7);
    assert!(plan.process.no_new_privs);
    assert_eq!(plan.network, NetworkPlan::None);
    assert_eq!(plan.cgroup.memory_bytes, Some(256 << 20));
    assert_eq!(plan.cgroup.pids, Some(64));
    assert_eq!(plan.cgroup.cpu_millis, Some(1000));
    assert_eq!(plan.vm.vcpus, 1);
    assert_eq!(plan.vm.memory_mib, 256);
    assert!(plan.mounts.contains(&MountPlan::Tmpfs {
        destination: "/tmp".into(),
        size_bytes: 16 << 20,
        optional: false,
        mode: None,
    }));
    let core = plan
        .rlimits
        .iter()
        .find(|r| r.resource == RlimitResource::Core)
        .unwrap();
    assert_eq!((core.soft, core.hard), (0, 0));
    let nproc = plan
        .rlimits
        .iter()
        .find(|r| r.resource == RlimitResource::Nproc)
        .unwrap();
    assert_eq!(nproc.hard, 64);
    assert_eq!(plan.policy_digest.len(), 64);
}

#[test]
fn builtins_have_their_documented_numbers() {
    let b = Policy::builtin("baseline").unwrap();
    assert!(b.spec.capabilities.is_empty());
    assert_eq!(
        b.spec.syscalls.allow.len(),
        301,
        "docs/policy.md states this count"
    );
    let r = Policy::builtin("restricted").unwrap();
    assert!(r.spec.capabilities.is_empty());
    assert_eq!(
        r.spec.syscalls.allow.len(),
        122,
        "docs/policy.md states this count"
    );
    for p in [&b, &r] {
        assert!(!p.spec.syscalls.allow.contains("mount"));
        assert!(!p.spec.syscalls.allow.contains("ptrace"));
        assert!(!p.spec.syscalls.allow.contains("keyctl"));
        assert!(!p.spec.syscalls.allow.contains("io_uring_setup"));
        assert!(compile(p).unwrap().seccomp.instructions.len() < 300);
    }
}

/// tests/data/full.yaml uses every key of the format once.
#[test]
fn every_key_at_once() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/full.yaml");
    let p = Policy::load(&path).unwrap();
    let s = &p.spec;
    assert_eq!(s.isolation, IsolationRequirement::Vm);
    assert_eq!(s.process.user, Some(1000));
    assert_eq!(s.syscalls.default_action, DefaultAction::Kill);
    assert_eq!(s.network.mode, NetworkMode::Egress);
    assert_eq!(s.network.egress[0].ports, Some((8000, 9000)));
    assert_eq!(s.network.egress[1].protocol, "any");
    assert_eq!(s.network.publish[0].host_port, 8080);
    assert_eq!(s.devices[0].access, "rwm");
    assert_eq!(s.resources.cpu_millis, Some(1500));
    assert_eq!(s.resources.disk_bytes, Some(2_000_000_000));
    assert!(s.image.require_digest);
    assert_eq!(s.vulnerabilities.ignore[0].expires, "2027-01-31");
    assert!(s.exec && s.audit.denied_syscalls);
    let plan = compile(&p).unwrap();
    assert_eq!(plan.vm.vcpus, 2);
    assert!(plan.exec_allowed && plan.audit_denied);
    assert!(matches!(plan.network, NetworkPlan::Egress { .. }));
}

#[test]
fn builtin_tmpfs_defaults_are_optional_and_file_paths_are_not() {
    let tmpfs = |plan: &moat_policy::Plan| -> Vec<(String, bool)> {
        plan.mounts
            .iter()
            .filter_map(|m| match m {
                MountPlan::Tmpfs {
                    destination,
                    optional,
                    ..
                } => Some((destination.clone(), *optional)),
                _ => None,
            })
            .collect()
    };
    let baseline = compile(&Policy::builtin("baseline").unwrap()).unwrap();
    assert_eq!(
        tmpfs(&baseline),
        [("/tmp".to_string(), true), ("/run".to_string(), true)]
    );
    // `web` lists /tmp itself: required; /run stays the baseline's default.
    let web = compile(&Policy::parse(WEB, "web.yaml").unwrap()).unwrap();
    let mut got = tmpfs(&web);
    got.sort();
    assert_eq!(
        got,
        [("/run".to_string(), true), ("/tmp".to_string(), false)]
    );
    // The wire format: `optional` only when true, absent reads as false.
    let json = serde_json::to_value(&web.mounts).unwrap();
    let tmp = json
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/tmp")
        .unwrap();
    assert!(tmp.get("optional").is_none(), "{tmp}");
    let back: MountPlan = serde_json::from_value(tmp.clone()).unwrap();
    assert!(matches!(
        back,
        MountPlan::Tmpfs {
            optional: false,
            ..
        }
    ));
    let run = json
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/run")
        .unwrap();
    assert_eq!(run["optional"], true);
}
