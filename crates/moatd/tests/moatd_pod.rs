//! A bare `v1 Pod` (issue 17): run once under `restartPolicy: Never`,
//! immutable once applied, deleted with its container.

mod common;

use common::{can_run, deployment, stderr, wait_for, Env, Spec};

fn pod(env: &Env, script: &str) -> String {
    // The pod spec of the test Deployment, as a Pod.
    let d = deployment(
        &env.image,
        &Spec {
            name: "once",
            script,
            ready: None,
            policy: None,
            ..Spec::default()
        },
    );
    let spec = d.split("    spec:\n").nth(1).unwrap();
    let spec: String = spec.lines().map(|l| format!("{}\n", &l[4..])).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: once\n  annotations:\n    moat.dev/isolation: sandbox\nspec:\n  restartPolicy: Never\n{spec}"
    )
}

#[test]
fn a_pod_runs_once_cannot_be_changed_and_is_deleted() {
    if !can_run("a_pod_runs_once_cannot_be_changed_and_is_deleted") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let text = pod(&env, "echo done");
    let f = env.file("pod.yaml", &text);
    let o = env.run(&["apply", "-f", &f]);
    assert!(o.status.success(), "{}\n{text}", stderr(&o));
    wait_for(60, "the pod to succeed", || {
        env.pods()
            .first()
            .is_some_and(|p| p["STATUS"] == "Succeeded")
    });
    assert_eq!(env.pods()[0]["RESTARTS"], 0);
    assert_eq!(env.pods()[0]["NAME"], "once");
    assert_eq!(env.ok(&["logs", "once"]), "done\n");
    let changed = env.file("pod2.yaml", &pod(&env, "echo other"));
    let o = env.run(&["apply", "-f", &changed]);
    assert_eq!(
        stderr(&o),
        "moat: error: Pod once: spec: a Pod cannot be changed; delete it first (moat delete pod/once), or use a Deployment\n"
    );
    assert_eq!(env.ok(&["delete", "pod/once"]), "pod/once deleted\n");
    wait_for(30, "no containers", || env.containers().is_empty());
}
