//! `resources` of a container (issue 17): limits narrow the replica's
//! policy (the kernel's cgroup then holds them), a limit or request above
//! the policy's is refused at admission naming both values, and a
//! changed limit is a new revision.

mod common;

use common::{can_run, deployment, stderr, Env, Spec};

const CAPPED: &str = "apiVersion: moat.dev/v1
kind: Policy
metadata:
  name: capped
spec:
  extends: baseline
  isolation: sandbox
  exec: true
  resources:
    memory: 256Mi
    cpus: 1
---
";

fn with_resources(image: &str, resources: &str) -> String {
    let spec = Spec {
        replicas: 1,
        policy: Some("capped"),
        ..Spec::default()
    };
    format!(
        "{CAPPED}{}        resources: {resources}\n",
        deployment(image, &spec)
    )
}

/// The first value of a cgroup file of container `id`, v1 or v2.
fn cgroup_value(id: &str, v1: &str, v2: &str) -> Option<String> {
    let v1_path = format!(
        "/sys/fs/cgroup/{}/moat/{id}/{}",
        v1.split('/').next()?,
        v1.split('/').nth(1)?
    );
    let v2_path = format!("/sys/fs/cgroup/moat/{id}/{v2}");
    [v1_path, v2_path]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
}

#[test]
fn limits_narrow_the_policy_and_reach_the_cgroup() {
    if !can_run("limits_narrow_the_policy_and_reach_the_cgroup") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    env.apply(
        "r.yaml",
        &with_resources(
            &env.image,
            "{limits: {memory: 64Mi, cpu: 500m}, requests: {memory: 32Mi, cpu: 250m}}",
        ),
    );
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let pod = env.pods()[0]["NAME"].as_str().unwrap().to_string();
    let inspect: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", &pod])).unwrap();
    let c = if inspect.is_array() {
        inspect[0].clone()
    } else {
        inspect
    };
    assert_eq!(c["Plan"]["cgroup"]["memory_bytes"], 64 << 20, "{c}");
    assert_eq!(c["Plan"]["cgroup"]["cpu_millis"], 500);
    // The policy's name is kept; only its limits are narrower.
    assert_eq!(c["Plan"]["policy_name"], "capped");
    let id = c["Id"].as_str().unwrap();
    assert_eq!(
        cgroup_value(id, "memory/memory.limit_in_bytes", "memory.max").as_deref(),
        Some("67108864")
    );
    assert_eq!(
        cgroup_value(id, "cpu/cpu.cfs_quota_us", "cpu.max").as_deref(),
        Some("50000")
    );
    // A changed limit is a new revision (a rollout), as in Kubernetes.
    env.apply(
        "r2.yaml",
        &with_resources(&env.image, "{limits: {memory: 128Mi}}"),
    );
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    common::wait_for(30, "the old replica to go", || {
        let p = env.pods();
        p.len() == 1 && p[0]["NAME"] != pod.as_str()
    });
    assert_eq!(env.pods()[0]["REVISION"], 2);
}

#[test]
fn a_limit_above_the_policy_is_refused_naming_both_values() {
    if !can_run("a_limit_above_the_policy_is_refused_naming_both_values") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let refused = |resources: &str| {
        let f = env.file("r.yaml", &with_resources(&env.image, resources));
        let o = env.run(&["apply", "-f", &f]);
        assert_eq!(o.status.code(), Some(1));
        stderr(&o)
    };
    assert_eq!(
        refused("{limits: {memory: 1Gi, cpu: 2}}"),
        "moat: error: Deployment web: spec.template.spec.containers[0].resources.limits.cpu: 2 is above policy capped's resources.cpus (1); lower it or use a policy that allows more\n\
         Deployment web: spec.template.spec.containers[0].resources.limits.memory: 1Gi is above policy capped's resources.memory (256Mi); lower it or use a policy that allows more\n"
    );
    // A request the replica could never get is refused too.
    assert_eq!(
        refused("{requests: {memory: 300Mi}}"),
        "moat: error: Deployment web: spec.template.spec.containers[0].resources.requests.memory: 300Mi is above policy capped's resources.memory (256Mi); lower it or use a policy that allows more\n"
    );
    // ephemeral-storage is the policy's resources.disk (baseline: 256Mi).
    assert_eq!(
        refused("{limits: {ephemeral-storage: 1Gi}}"),
        "moat: error: Deployment web: spec.template.spec.containers[0].resources.limits.ephemeral-storage: 1Gi is above policy capped's resources.disk (256Mi); lower it or use a policy that allows more\n"
    );
    // A policy without resources.disk has no writable layer to limit.
    let bare = "apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {name: bare}\nspec:\n  isolation: sandbox\n  exec: true\n  syscalls: {allow: [read, write, exit_group]}\n---\n";
    let text = with_resources(&env.image, "{limits: {ephemeral-storage: 64Mi}}")
        .replace(CAPPED, bare)
        .replace("moat.dev/policy: capped", "moat.dev/policy: bare");
    let f = env.file("bare.yaml", &text);
    let o = env.run(&["apply", "-f", &f]);
    assert_eq!(
        stderr(&o),
        "moat: error: Deployment web: spec.template.spec.containers[0].resources.limits.ephemeral-storage: policy bare has no resources.disk (the size of a writable layer: filesystem.root: ephemeral, or a micro-VM's), so there is nothing to limit; drop it or use a policy that sets resources.disk\n"
    );
    assert!(!env.ok(&["get", "deployments"]).contains("web"));
}
