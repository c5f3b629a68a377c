//! `moat events -f` follows moatd's events as they happen, and `moat
//! describe` shows a deployment with its pods and events.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{can_run, deployment, Env, Spec};

#[test]
fn events_follow_and_describe_show_what_happened() {
    if !can_run("events_follow_and_describe_show_what_happened") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let mut follow = env
        .moat(&["events", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let text = deployment(
        &env.image,
        &Spec {
            replicas: 1,
            ready: None,
            policy: None,
            ..Spec::default()
        },
    );
    env.apply("web.yaml", &text);
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let header = lines.next().unwrap().unwrap();
    assert!(
        header.starts_with("TIME") && header.ends_with("MESSAGE"),
        "{header}"
    );
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        seen.push(l.clone());
        if l.contains("RolloutComplete") {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen.iter().any(|l| l.contains("Started")), "{seen:?}");
    let d = env.ok(&["describe", "deployment/web"]);
    assert!(d.contains("kind: \"Deployment\""), "{d}");
    assert!(d.contains("reason: \"RolloutComplete\""), "{d}");
    assert!(d.contains("desired: 1"), "{d}");
    // Follow takes a pod, and says so rather than ignoring -f.
    let o = env.run(&["logs", "-f", "deployment/web"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "moat: error: moat logs deployment/web: -f and --since take a pod (moat get pods), not a deployment\n"
    );
}
