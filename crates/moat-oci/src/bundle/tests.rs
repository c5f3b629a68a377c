//! The policy intersection, without running anything: a config.json is
//! turned into a `Prepared` (or refused) under the built-in `baseline`,
//! the client tests' policy, and the default `auto`.

use serde_json::{json, Value};

use super::*;

/// runc's default config (`runc spec`), trimmed to what matters here.
fn config() -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 20000, "soft": 20000}]
        },
        "root": {"path": "rootfs", "readonly": true},
        "hooks": {
            "prestart": [{"path": "/bin/a"}],
            "createRuntime": [{"path": "/bin/b"}],
            "poststop": [{"path": "/bin/c", "timeout": 0}]
        },
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "resources": {"memory": {"limit": 1073741824}, "devices": [{"allow": true, "type": "c", "major": 4, "minor": 1, "access": "rw"}]},
            "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                        "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO"}]}
        }
    })
}

fn prepare_json(c: Value) -> Result<Prepared, BundleError> {
    let config: Spec = serde_json::from_value(c).expect("a valid config");
    let b = Bundle {
        dir: "/nonexistent-bundle".into(),
        rootfs: "/nonexistent-bundle/rootfs".into(),
        annotations: config.annotations().clone().unwrap_or_default(),
        config,
    };
    let site = Site {
        policy: "baseline".into(),
        ..Site::default()
    };
    prepare(&b, &site, "t")
}

fn with_test_policy(mut c: Value) -> Value {
    c["annotations"] = json!({"moat.dev/policy": format!(
        "{}/tests/clients/podman-defaults.yaml",
        env!("CARGO_MANIFEST_DIR")
    )});
    c
}

fn bit(name: &str) -> u64 {
    1 << moat_plan::caps::number(name).unwrap()
}

#[test]
fn baseline_narrows_the_callers_default_capabilities_to_none() {
    let p = prepare_json(config()).unwrap();
    assert_eq!(p.policy, "baseline");
    assert_eq!(p.init.drop.capability_sets(), CapSets::default());
    assert!(p.init.drop.no_new_privs());
}

#[test]
fn a_granting_policy_keeps_each_set_as_asked() {
    let p = prepare_json(with_test_policy(config())).unwrap();
    let sets = p.init.drop.capability_sets();
    // AUDIT_WRITE is a runc default the test policy does not grant:
    // narrowed away; the others are kept in every set asked for.
    let want = bit("KILL") | bit("NET_BIND_SERVICE") | bit("CHOWN");
    assert_eq!(sets.bounding, want);
    assert_eq!(sets.effective, want);
    assert_eq!(sets.ambient, want & sets.inheritable);
    assert_eq!(
        sets.inheritable, 0,
        "the config asked for no inheritable set"
    );
}

#[test]
fn a_capability_beyond_the_policy_is_refused_by_name() {
    let mut c = with_test_policy(config());
    c["process"]["capabilities"]["effective"] = json!(["CAP_SYS_PTRACE"]);
    let e = prepare_json(c).err().expect("refused").to_string();
    assert!(
        e.contains("capability CAP_SYS_PTRACE (process.capabilities.effective)")
            && e.contains("policy \"podman-defaults\""),
        "{e}"
    );
}

#[test]
fn limits_are_the_smaller_of_the_callers_and_the_policys() {
    let p = prepare_json(config()).unwrap();
    // baseline: 512 MiB, 256 pids, 4096 open files.
    assert_eq!(p.cgroup.memory, Some(512 << 20));
    assert_eq!(p.cgroup.pids, Some(256));
    let nofile = p
        .init
        .drop
        .raw_rlimits()
        .into_iter()
        .find(|(n, _, _)| *n == libc::RLIMIT_NOFILE)
        .unwrap();
    assert_eq!((nofile.1, nofile.2), (4096, 4096));
    let mut c = config();
    c["linux"]["resources"]["memory"]["limit"] = json!(64 << 20);
    assert_eq!(prepare_json(c).unwrap().cgroup.memory, Some(64 << 20));
}

#[test]
fn device_rules_deny_first_then_the_callers_then_the_standard_devices() {
    let p = prepare_json(config()).unwrap();
    let rules = &p.cgroup.devices;
    assert_eq!(rules[0], (false, "a".to_string()));
    assert_eq!(rules[1], (true, "c 4:1 rw".to_string()));
    assert!(rules.contains(&(true, "c 1:3 rwm".to_string())));
    assert!(!rules.iter().any(|(allow, r)| *allow && r == "a"));
}

#[test]
fn hooks_keep_their_order_and_the_filters_stack() {
    let p = prepare_json(config()).unwrap();
    let paths: Vec<&str> = p
        .hooks
        .create_runtime
        .iter()
        .map(|h| h.path.as_str())
        .collect();
    assert_eq!(paths, ["/bin/a", "/bin/b"]);
    assert_eq!(
        p.hooks.poststop[0].timeout,
        Some(1),
        "a zero timeout is not forever"
    );
    assert!(!p.caller_seccomp.instructions.is_empty());
    assert!(!p.plan.seccomp.instructions.is_empty());
}

#[test]
fn unknown_rootfs_propagation_and_time_namespaces_are_config_errors() {
    let mut c = config();
    c["linux"]["rootfsPropagation"] = json!("sideways");
    let e = prepare_json(c).err().expect("refused").to_string();
    assert!(e.contains("linux.rootfsPropagation \"sideways\""), "{e}");
    let mut c = config();
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "time"}));
    let e = prepare_json(c).err().expect("refused").to_string();
    assert!(e.contains("time namespaces are not supported"), "{e}");
}

/// The default `auto` is baseline narrowed to the programs in the bundle's
/// root; a root that cannot be analysed is refused, naming the way out.
#[test]
fn auto_is_the_default_and_narrows_baseline_to_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let Ok(bb) = std::fs::read("/bin/busybox") else {
        println!("SKIP: auto_is_the_default_and_narrows_baseline_to_the_root: no /bin/busybox");
        return;
    };
    std::fs::write(rootfs.join("bin/busybox"), bb).unwrap();
    assert_eq!(Site::default().policy, "auto");
    let site = Site {
        profile_cache: dir.path().join("cache"),
        ..Site::default()
    };
    let none = Default::default();
    let policy = site.policy_for(&none, dir.path(), &rootfs).unwrap();
    assert_eq!(policy.name, "auto");
    let baseline = moat_policy::Policy::builtin("baseline").unwrap();
    let (auto, base) = (&policy.spec.syscalls.allow, &baseline.spec.syscalls.allow);
    assert!(
        auto.len() < base.len() && auto.is_subset(base),
        "{} of {}",
        auto.len(),
        base.len()
    );
    assert_eq!(dir.path().join("cache").read_dir().unwrap().count(), 1);
    // The whole intersection runs under it.
    let config: Spec = serde_json::from_value(config()).unwrap();
    let b = Bundle {
        dir: dir.path().to_path_buf(),
        rootfs: rootfs.clone(),
        annotations: Default::default(),
        config,
    };
    assert_eq!(prepare(&b, &site, "t").unwrap().policy, "auto");
    let e = site
        .policy_for(&none, dir.path(), &dir.path().join("missing"))
        .unwrap_err();
    assert!(
        e.to_string().contains("the analysis for `auto` failed"),
        "{e}"
    );
}
