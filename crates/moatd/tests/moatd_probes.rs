//! Probes and restart limits (issue 17): httpGet and tcpSocket readiness
//! probes inside a replica's network namespace, a failing liveness probe
//! that gets the replica killed and restarted, and a crash loop that ends
//! with moatd giving up and saying so.

mod common;

use common::{can_run, deployment, wait_for, Env, Spec};

const NET_POLICY: &str = "apiVersion: moat.dev/v1
kind: Policy
metadata:
  name: web-net
spec:
  extends: baseline
  isolation: sandbox
  network: loopback
  exec: true
---
";

fn ready_count(env: &Env) -> usize {
    env.pods().iter().filter(|p| p["READY"] == "1/1").count()
}

#[test]
fn http_and_tcp_probes_reach_the_replica_on_its_own_loopback() {
    if !can_run("http_and_tcp_probes_reach_the_replica_on_its_own_loopback") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    // httpd serves /tmp; the page appears after two seconds.
    let script = "(sleep 2; echo ok > /tmp/index.html) & exec httpd -f -p 8080 -h /tmp";
    let base = deployment(
        &env.image,
        &Spec {
            replicas: 1,
            script,
            ready: None,
            policy: Some("web-net"),
            ..Spec::default()
        },
    );
    let http = base.clone()
        + "        readinessProbe:\n          httpGet: {path: /index.html, port: 8080}\n          periodSeconds: 1\n";
    env.apply("http.yaml", &format!("{NET_POLICY}{http}"));
    // Not ready while the page is missing (404), ready once it is there.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(ready_count(&env), 0);
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    assert_eq!(ready_count(&env), 1);

    let tcp = base.replace("name: web", "name: tcp").replace("app: web", "app: tcp")
        + "        readinessProbe:\n          tcpSocket: {port: 8080}\n          periodSeconds: 1\n";
    env.apply("tcp.yaml", &tcp);
    env.ok(&["rollout", "status", "deployment/tcp", "--timeout", "60"]);
    // A port nothing listens on never becomes ready.
    let closed = base
        .replace("name: web", "name: closed")
        .replace("app: web", "app: closed")
        + "        readinessProbe:\n          tcpSocket: {port: 9}\n          periodSeconds: 1\n";
    env.apply(
        "closed.yaml",
        &closed.replace("progressDeadlineSeconds: 600", "progressDeadlineSeconds: 3"),
    );
    let o = env.run(&["rollout", "status", "deployment/closed", "--timeout", "60"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_failing_liveness_probe_restarts_the_replica() {
    if !can_run("a_failing_liveness_probe_restarts_the_replica") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let text = deployment(
        &env.image,
        &Spec {
            replicas: 1,
            script: "touch /tmp/ready; exec sleep 1000",
            ..Spec::default()
        },
    ) + "        livenessProbe:\n          exec: {command: [cat, /tmp/alive]}\n          periodSeconds: 1\n          failureThreshold: 2\n";
    env.apply("live.yaml", &format!("{}---\n{text}", common::EXEC_POLICY));
    wait_for(60, "a restart after the liveness probe failed", || {
        env.pods()
            .first()
            .is_some_and(|p| p["RESTARTS"].as_u64().unwrap_or(0) >= 1)
    });
    let events = env.ok(&["events"]);
    assert!(events.contains("Restarted"), "{events}");
}

#[test]
fn a_crash_loop_ends_with_moatd_giving_up() {
    if !can_run("a_crash_loop_ends_with_moatd_giving_up") {
        return;
    }
    let mut env = Env::new(None);
    env.extra = vec![
        "--restart-attempts".into(),
        "3".into(),
        "--restart-interval".into(),
        "60".into(),
    ];
    env.start();
    let text = deployment(
        &env.image,
        &Spec {
            replicas: 1,
            script: "exit 3",
            ready: None,
            policy: None,
            ..Spec::default()
        },
    );
    env.apply("crash.yaml", &text);
    wait_for(60, "moatd to give up", || {
        env.pods().first().is_some_and(|p| p["STATUS"] == "Failed")
    });
    let p = env.pods()[0].clone();
    assert_eq!(p["RESTARTS"], 3);
    assert_eq!(
        p["MESSAGE"],
        "restarted 3 times within 60 s: giving up (exit code 3)"
    );
    let events = env.ok(&["events"]);
    assert!(events.contains("BackOffLimitExceeded"), "{events}");
    // Given up means given up: no further restarts.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(env.pods()[0]["RESTARTS"], 3);
}
