//! moatd end to end (issue 17): apply, scale, a rollout gated by an exec
//! readiness probe, a rollout that misses its deadline and keeps the old
//! replicas, undo, a replica killed with kill -9, and moatd itself killed
//! with kill -9 in the middle of a rollout.

mod common;

use common::{can_run, deployment, stderr, stdout, wait_for, Env, Spec, EXEC_POLICY};

fn revisions_of(env: &Env) -> Vec<(String, u64, String)> {
    env.pods()
        .iter()
        .map(|p| {
            (
                p["NAME"].as_str().unwrap().to_string(),
                p["REVISION"].as_u64().unwrap(),
                p["STATUS"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn settled(env: &Env, rev: u64, n: usize) -> bool {
    let pods = revisions_of(env);
    pods.len() == n && pods.iter().all(|(_, r, s)| *r == rev && s == "Running")
}

#[test]
fn apply_scale_rollout_and_undo() {
    if !can_run("apply_scale_rollout_and_undo") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let v1 = format!(
        "{EXEC_POLICY}---\n{}",
        deployment(&env.image, &Spec::default())
    );
    let out = env.apply("web.yaml", &v1);
    assert_eq!(
        out,
        "policy.moat.dev/probe-exec created\ndeployment.apps/web created\n"
    );
    let status = env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );
    let table = env.ok(&["get", "deployments"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "NAME   READY   UP-TO-DATE   AVAILABLE   AGE");
    assert!(
        lines[1].starts_with("web    2/2     2            2           "),
        "{table}"
    );
    // Each replica is a container of the runtime core, named for its
    // deployment and revision.
    let names: Vec<String> = env
        .containers()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| n.starts_with("web-")), "{names:?}");

    // Scale: same revision, one more replica.
    let scaled = v1.replace("replicas: 2", "replicas: 3");
    assert_eq!(
        env.apply("web.yaml", &scaled),
        "policy.moat.dev/probe-exec unchanged\ndeployment.apps/web configured\n"
    );
    wait_for(60, "3 ready replicas of revision 1", || {
        settled(&env, 1, 3) && env.ok(&["get", "deployments"]).contains("3/3")
    });

    // A new template: a rollout to revision 2, old replicas stopped only
    // as new ones become ready (maxUnavailable 0).
    let v2 = scaled.replace("touch /tmp/ready;", "echo v2; touch /tmp/ready;");
    env.apply("web.yaml", &v2);
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "90"]);
    wait_for(60, "3 replicas of revision 2 only", || settled(&env, 2, 3));
    let history = env.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.starts_with(
            "deployment.apps/web\nREVISION   CHANGE-CAUSE\n1          image busybox@sha256:"
        ),
        "{history}"
    );
    assert_eq!(history.lines().count(), 4, "{history}");
    let logs = env.ok(&["logs", "deployment/web"]);
    assert_eq!(logs, "v2\n");

    // Undo: the template of revision 1 again, as revision 3.
    assert_eq!(
        env.ok(&["rollout", "undo", "deployment/web"]),
        "deployment.apps/web rolled back\n"
    );
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "90"]);
    wait_for(60, "3 replicas of revision 3 only", || settled(&env, 3, 3));
    assert_eq!(env.ok(&["logs", "deployment/web"]), "");

    // Delete: every replica goes, containers included.
    assert_eq!(
        env.ok(&["delete", "deployment/web"]),
        "deployment.apps/web deleted\n"
    );
    wait_for(30, "no containers", || env.containers().is_empty());
    assert!(env.pods().is_empty());
}

#[test]
fn a_rollout_that_misses_its_deadline_keeps_the_old_replicas() {
    if !can_run("a_rollout_that_misses_its_deadline_keeps_the_old_replicas") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let spec = Spec {
        deadline: 4,
        ..Spec::default()
    };
    let v1 = format!("{EXEC_POLICY}---\n{}", deployment(&env.image, &spec));
    env.apply("web.yaml", &v1);
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let old: Vec<String> = revisions_of(&env).into_iter().map(|p| p.0).collect();
    // Revision 2 never becomes ready.
    let v2 = v1.replace("touch /tmp/ready;", "echo broken;");
    env.apply("web.yaml", &v2);
    let o = env.run(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).ends_with("moat: error: deployment \"web\" exceeded its progress deadline\n"),
        "{}",
        stderr(&o)
    );
    wait_for(30, "only the old replicas", || {
        let now: Vec<String> = revisions_of(&env).into_iter().map(|p| p.0).collect();
        now == old
    });
    assert!(env.ok(&["get", "deployments"]).contains("2/2"));
    let events = env.ok(&["events"]);
    assert!(events.contains("ProgressDeadlineExceeded"), "{events}");
    // Undo goes back to the template the old replicas run: nothing new starts.
    env.ok(&["rollout", "undo", "deployment/web"]);
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let now: Vec<String> = revisions_of(&env).into_iter().map(|p| p.0).collect();
    assert_eq!(now, old);
}

#[test]
fn a_replica_killed_with_kill_9_is_restarted() {
    if !can_run("a_replica_killed_with_kill_9_is_restarted") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let spec = Spec {
        replicas: 1,
        ..Spec::default()
    };
    env.apply(
        "web.yaml",
        &format!("{EXEC_POLICY}---\n{}", deployment(&env.image, &spec)),
    );
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let c = env.containers()[0].clone();
    let (name, pid) = (
        c["name"].as_str().unwrap().to_string(),
        c["pid"].as_i64().unwrap(),
    );
    assert!(pid > 0);
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_for(30, "the replica restarted", || {
        let p = env.pods();
        p.len() == 1
            && p[0]["NAME"] == name.as_str()
            && p[0]["RESTARTS"] == 1
            && p[0]["STATUS"] == "Running"
            && p[0]["READY"] == "1/1"
    });
    let c = env.containers()[0].clone();
    assert_ne!(c["pid"].as_i64().unwrap(), pid);
    assert_eq!(c["status"], "running");
    assert!(env
        .ok(&["events"])
        .contains("exited with code 137; restart 1"));
}

#[test]
fn moatd_killed_mid_rollout_finishes_it_after_restart() {
    if !can_run("moatd_killed_mid_rollout_finishes_it_after_restart") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let v1 = format!(
        "{EXEC_POLICY}---\n{}",
        deployment(&env.image, &Spec::default())
    );
    env.apply("web.yaml", &v1);
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let old_ids: Vec<String> = env
        .containers()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    // Revision 2 takes a few seconds to become ready.
    let v2 = v1.replace("touch /tmp/ready;", "sleep 3; touch /tmp/ready;");
    env.apply("web.yaml", &v2);
    wait_for(30, "a running replica of revision 2", || {
        revisions_of(&env)
            .iter()
            .any(|p| p.1 == 2 && p.2 == "Running")
    });
    env.kill_daemon();
    // The replicas outlive moatd.
    let running: Vec<String> = env
        .containers()
        .iter()
        .filter(|c| c["status"] == "running")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let ctx = format!("{running:?} {:?} {}", env.containers(), env.daemon_log());
    assert!(old_ids.iter().all(|id| running.contains(id)), "{ctx}");
    assert_eq!(running.len(), 3, "{ctx}");
    env.start();
    assert!(
        env.daemon_log()
            .contains("3 replica(s) from before adopted"),
        "{}",
        env.daemon_log()
    );
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "90"]);
    wait_for(60, "2 replicas of revision 2 only", || settled(&env, 2, 2));
    wait_for(30, "old containers removed", || {
        let ids: Vec<String> = env
            .containers()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        ids.len() == 2 && old_ids.iter().all(|o| !ids.contains(o))
    });
}

#[test]
fn revision_history_limit_keeps_only_that_many_old_revisions() {
    if !can_run("revision_history_limit_keeps_only_that_many_old_revisions") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let spec = Spec {
        replicas: 1,
        ..Spec::default()
    };
    let v1 = format!("{EXEC_POLICY}---\n{}", deployment(&env.image, &spec)).replace(
        "  progressDeadlineSeconds",
        "  revisionHistoryLimit: 1\n  progressDeadlineSeconds",
    );
    for i in 1..=3 {
        let v = v1.replace(
            "touch /tmp/ready;",
            &format!("echo v{i}; touch /tmp/ready;"),
        );
        env.apply("web.yaml", &v);
        env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
        wait_for(30, "one replica", || settled(&env, i, 1));
    }
    // Revision 3 (current) and one before it; revision 1 is gone.
    env.apply(
        "web.yaml",
        &v1.replace("touch /tmp/ready;", "echo v3; touch /tmp/ready;"),
    );
    let history = env.ok(&["rollout", "history", "deployment/web"]);
    let revs: Vec<&str> = history
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(revs, ["2", "3"], "{history}");
}
