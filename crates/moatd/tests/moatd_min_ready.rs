//! `minReadySeconds` (issue 17): a new replica counts as available only
//! once it has been ready that long: the rollout completes no sooner,
//! and an old replica is kept until its replacement is available
//! (maxUnavailable 0).

mod common;

use std::time::{Duration, Instant};

use common::{can_run, deployment, wait_for, Env, Spec, EXEC_POLICY};

fn deployments(env: &Env) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["get", "deployments", "-o", "json"])).unwrap();
    v[0].clone()
}

fn ready_pods(env: &Env, revision: u64) -> usize {
    env.pods()
        .iter()
        .filter(|p| p["READY"] == "1/1" && p["REVISION"] == revision)
        .count()
}

#[test]
fn a_replica_is_available_only_after_min_ready_seconds() {
    if !can_run("a_replica_is_available_only_after_min_ready_seconds") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let spec = Spec {
        replicas: 1,
        ..Spec::default()
    };
    let v1 = format!("{EXEC_POLICY}---\n{}", deployment(&env.image, &spec)).replace(
        "  progressDeadlineSeconds: 600\n",
        "  progressDeadlineSeconds: 600\n  minReadySeconds: 4\n",
    );
    env.apply("web.yaml", &v1);
    wait_for(60, "the replica to be ready", || ready_pods(&env, 1) == 1);
    let ready_at = Instant::now();
    // Ready, not yet available.
    let d = deployments(&env);
    assert_eq!(d["READY"], "1/1", "{d}");
    assert_eq!(d["AVAILABLE"], 0, "{d}");
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let waited = ready_at.elapsed();
    assert!(
        waited >= Duration::from_millis(3500),
        "the rollout completed {waited:?} after the replica was ready"
    );
    assert_eq!(deployments(&env)["AVAILABLE"], 1);

    // A new revision: the old replica stays until the new one has been
    // ready for 4 s (maxSurge 1, maxUnavailable 0).
    let v2 = v1.replace("touch /tmp/ready;", "echo v2; touch /tmp/ready;");
    env.apply("web.yaml", &v2);
    wait_for(60, "the new replica to be ready", || {
        ready_pods(&env, 2) == 1
    });
    let ready_at = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let pods = env.pods();
    assert!(
        pods.iter()
            .any(|p| p["REVISION"] == 1 && p["STATUS"] == "Running"),
        "the old replica went before the new one was available: {pods:?}"
    );
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    assert!(ready_at.elapsed() >= Duration::from_millis(3500));
    wait_for(30, "the old replica to go", || {
        env.pods().iter().all(|p| p["REVISION"] == 2)
    });
}
