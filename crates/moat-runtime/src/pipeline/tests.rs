use std::path::Path;

use super::*;

const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Records what each step saw.
#[derive(Default)]
struct Fake {
    allow: bool,
    log: Vec<String>,
    authorised: Option<(usize, String)>,
    gated: Option<(usize, String)>,
    accel: bool,
}

impl Steps for Fake {
    fn authorize(&mut self, policy: &Policy, extra: &[Request]) -> anyhow::Result<Decision> {
        self.log.push(format!("authorize {}", extra.len()));
        self.authorised = Some((policy as *const Policy as usize, policy.digest()));
        Ok(Decision {
            allowed: self.allow,
            roles: vec![],
            reasons: vec!["no".into()],
            warning: None,
        })
    }
    fn resolve_image(
        &mut self,
        image: &ImageRef,
        _policy: &Policy,
    ) -> anyhow::Result<ResolvedImage> {
        self.log.push(format!("resolve {}", image.as_written()));
        Ok(ResolvedImage {
            image_id: ImageId::parse(DIGEST).unwrap(),
            rootfs: "/nonexistent".into(),
            defaults: ImageDefaults {
                cmd: vec!["sh".into()],
                ..ImageDefaults::default()
            },
            declared_volumes: Vec::new(),
        })
    }
    fn vulnerability_gate(&mut self, policy: &Policy, image: &ResolvedImage) -> anyhow::Result<()> {
        self.log.push(format!("gate {}", image.image_id));
        self.gated = Some((policy as *const Policy as usize, policy.digest()));
        Ok(())
    }
    fn resolve_user(&mut self, _rootfs: &Path, user: &str) -> anyhow::Result<Ids> {
        self.log.push(format!("user {user:?}"));
        Ok((0, 0, vec![]))
    }
    fn vm_accelerator_works(&mut self) -> bool {
        self.log.push("accel".into());
        self.accel
    }
}

fn request(policy: Policy, image: ImageRef) -> RunRequest {
    RunRequest {
        policy,
        process: ProcessArgs {
            image: image.as_written(),
            ..ProcessArgs::default()
        },
        image,
        name: None,
        hostname: None,
        isolation: RequestedIsolation::Auto,
        mounts: Default::default(),
    }
}

const POLICY: &str =
    "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: first\nspec:\n  extends: baseline\n  isolation: any\n";

#[test]
fn the_policy_authorised_is_the_policy_gated() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let policy = load_policy(Some(&file)).unwrap();
    let loaded = policy.digest();
    // The file changes after it was loaded (the gate used to reload it).
    std::fs::write(&file, POLICY.replace("first", "second")).unwrap();
    assert_ne!(load_policy(Some(&file)).unwrap().digest(), loaded);
    let mut steps = Fake {
        allow: true,
        ..Fake::default()
    };
    let Prepared::Ready(ready) =
        prepare(request(policy, ImageRef::parse("busybox")), &mut steps).unwrap()
    else {
        panic!("refused");
    };
    let (a, g) = (steps.authorised.unwrap(), steps.gated.unwrap());
    assert_eq!(a, g, "one policy object, authorised and gated");
    assert_eq!(g.1, loaded);
    assert_eq!(ready.plan.policy_digest, loaded);
    assert_eq!(
        steps.log,
        [
            "authorize 0",
            "resolve busybox",
            &format!("gate {DIGEST}"),
            "user \"\"",
            "accel"
        ]
    );
    assert_eq!(ready.isolation, Isolation::Sandbox);
    assert_eq!(ready.name.as_str(), ready.id.short());
    assert_eq!(ready.process.args, ["sh"]);
}

#[test]
fn a_refused_policy_resolves_nothing() {
    let policy = load_policy(None).unwrap();
    let mut steps = Fake::default();
    let dir = tempfile::tempdir().unwrap();
    let out = prepare(
        request(policy, ImageRef::Rootfs(dir.path().to_path_buf())),
        &mut steps,
    )
    .unwrap();
    let Prepared::Refused { policy, decision } = out else {
        panic!("not refused");
    };
    assert_eq!(policy, "baseline");
    assert!(!decision.allowed);
    // The rootfs was part of the request authorised; nothing else ran.
    assert_eq!(steps.log, ["authorize 1"]);
}

#[test]
fn a_rootfs_is_not_resolved_in_the_store_and_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut steps = Fake {
        allow: true,
        accel: true,
        ..Fake::default()
    };
    let mut req = request(
        load_policy(None).unwrap(),
        ImageRef::Rootfs(dir.path().to_path_buf()),
    );
    req.process.command = vec!["true".into()];
    req.name = Some("web".into());
    let Prepared::Ready(r) = prepare(req.clone(), &mut steps).unwrap() else {
        panic!("refused");
    };
    assert_eq!(
        r.image.image_id.to_string(),
        format!("rootfs:{}", dir.path().display())
    );
    assert_eq!(
        (r.name.as_str(), r.process.hostname.as_str()),
        ("web", "web")
    );
    assert_eq!(r.isolation, Isolation::Vm);
    assert!(!steps.log.iter().any(|l| l.starts_with("resolve")));
    req.name = Some("../x".into());
    assert_eq!(
        prepare(req, &mut steps).unwrap_err().to_string(),
        "invalid container name \"../x\": use 1-64 characters from [a-zA-Z0-9_.-], starting with a letter or digit"
    );
}

#[test]
fn isolation_follows_the_policy() {
    let mut plan = moat_policy::compile(&load_policy(None).unwrap()).unwrap();
    plan.isolation = IsolationRequirement::Vm;
    let err = pick_isolation(RequestedIsolation::Sandbox, &plan, || false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy \"baseline\" requires vm isolation; drop --isolation sandbox"
    );
    assert_eq!(
        pick_isolation(RequestedIsolation::Auto, &plan, || false).unwrap(),
        Isolation::Vm
    );
    plan.isolation = IsolationRequirement::Sandbox;
    assert!(pick_isolation(RequestedIsolation::Vm, &plan, || true).is_err());
    // `auto` under a policy that requires the sandbox: the sandbox, even
    // where a VM could boot (the accelerator is not even probed).
    assert_eq!(
        pick_isolation(RequestedIsolation::Auto, &plan, || panic!("probed")).unwrap(),
        Isolation::Sandbox
    );
    plan.isolation = IsolationRequirement::Any;
    assert_eq!(
        pick_isolation(RequestedIsolation::Auto, &plan, || false).unwrap(),
        Isolation::Sandbox
    );
    assert_eq!(
        pick_isolation(RequestedIsolation::Auto, &plan, || true).unwrap(),
        Isolation::Vm
    );
    // An ephemeral root: both backends build one, so `auto` chooses as
    // for any other policy.
    plan.root = moat_policy::plan::RootPlan::Ephemeral {
        size_bytes: 1 << 20,
    };
    assert_eq!(
        pick_isolation(RequestedIsolation::Auto, &plan, || true).unwrap(),
        Isolation::Vm
    );
}
