//! Fifty sandbox replicas of one Deployment (issue 17), all ready through
//! their exec probes, then scaled to zero.

mod common;

use common::{can_run, deployment, wait_for, Env, Spec, EXEC_POLICY};

#[test]
fn fifty_sandbox_replicas_become_ready_and_scale_to_zero() {
    if !can_run("fifty_sandbox_replicas_become_ready_and_scale_to_zero") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let text = format!(
        "{EXEC_POLICY}---\n{}",
        deployment(
            &env.image,
            &Spec {
                replicas: 50,
                surge: "25%",
                unavailable: "25%",
                ..Spec::default()
            }
        )
    );
    let t = std::time::Instant::now();
    env.apply("fifty.yaml", &text);
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "300"]);
    println!("50 replicas ready in {:?}", t.elapsed());
    assert!(env.ok(&["get", "deployments"]).contains("50/50"));
    let running = env
        .containers()
        .iter()
        .filter(|c| c["status"] == "running")
        .count();
    assert_eq!(running, 50);
    env.apply("fifty.yaml", &text.replace("replicas: 50", "replicas: 0"));
    wait_for(120, "no containers left", || env.containers().is_empty());
}
