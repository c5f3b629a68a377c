//! The `auto` built-in (issue 21): baseline narrowed to one image's calls.

use std::collections::BTreeSet;

use moat_policy::auto::ImageSyscalls;
use moat_policy::{compile, Policy};

fn image(calls: &[&str]) -> ImageSyscalls {
    ImageSyscalls {
        image: "test".into(),
        allow: Some(calls.iter().map(|s| s.to_string()).collect()),
        fallbacks: Vec::new(),
    }
}

#[test]
fn auto_is_the_intersection_with_baseline_and_keeps_the_rest_of_baseline() {
    let baseline = Policy::builtin("baseline").unwrap();
    // `reboot` is a call baseline denies: the image asking for it changes nothing.
    let auto =
        Policy::builtin_for_image("auto", &image(&["read", "write", "exit_group", "reboot"]))
            .unwrap();
    let allowed: Vec<&str> = auto
        .spec
        .syscalls
        .allow
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(allowed, ["exit_group", "read", "write"]);
    assert!(auto.spec.syscalls.denied.contains("openat"));
    assert_eq!(auto.name, "auto");
    assert_eq!(auto.extends, ["builtin:baseline"]);
    assert_eq!(auto.spec.capabilities, baseline.spec.capabilities);
    assert_eq!(auto.spec.network, baseline.spec.network);
    assert_eq!(auto.spec.filesystem, baseline.spec.filesystem);
    assert_eq!(auto.spec.resources, baseline.spec.resources);
    assert_eq!(
        auto.spec.syscalls.conditions,
        baseline.spec.syscalls.conditions
    );
    assert!(auto.spec.audit.denied_syscalls, "auto logs what it denies");
    let removed = moat_policy::auto::removed_from_baseline(&auto).unwrap();
    assert_eq!(removed.len(), baseline.spec.syscalls.allow.len() - 3);
    compile(&auto).unwrap();
}

#[test]
fn a_fallback_or_the_widest_auto_is_baseline_never_more() {
    let baseline = Policy::builtin("baseline").unwrap();
    let auto = Policy::builtin_for_image("auto", &ImageSyscalls::widest("x")).unwrap();
    assert_eq!(auto.spec.syscalls.allow, baseline.spec.syscalls.allow);
    assert!(!auto.spec.syscalls.allow.contains("reboot"));
}

#[test]
fn auto_without_an_image_is_refused_with_the_fix() {
    let err = Policy::builtin("auto").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the `auto` policy is made per image from its profile, and this command has no image; pass --image IMAGE, or name another policy (baseline)"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.yaml");
    std::fs::write(
        &file,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: mine\nspec:\n  extends: auto\n",
    )
    .unwrap();
    let err = Policy::load(&file).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the `auto` policy is made per image from its profile, and `extends: auto` in {} has no image; pass --image IMAGE, or name another policy (baseline)", file.display())
    );
}

#[test]
fn extends_auto_allows_a_call_back_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.yaml");
    std::fs::write(
        &file,
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: mine\nspec:\n  extends: auto\n  syscalls: {allow: [getcpu]}\n",
    )
    .unwrap();
    let p =
        Policy::resolve_for_image(file.to_str().unwrap(), &image(&["read", "exit_group"])).unwrap();
    let allowed: BTreeSet<&str> = p.spec.syscalls.allow.iter().map(String::as_str).collect();
    assert_eq!(allowed, BTreeSet::from(["exit_group", "getcpu", "read"]));
    assert!(!p.spec.syscalls.denied.contains("getcpu"));
    assert_eq!(p.extends, ["builtin:auto", "builtin:baseline"]);
}
