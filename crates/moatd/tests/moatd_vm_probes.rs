//! httpGet and tcpSocket probes of micro-VM replicas (issue 17): they
//! reach the guest through the VMM's network namespace and a published
//! port, never the host's loopback (a VM record's pid is its supervisor,
//! on the host's network: a listener on the host must not make a VM
//! replica ready). A port the policy does not publish is refused at
//! admission. Skips with `SKIP:` without QEMU or a built guest kernel.

mod common;

use common::{can_run, deployment, stderr, Env, Spec};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn vm_env(test: &str) -> Option<Env> {
    if !can_run(test) {
        return None;
    }
    if !std::path::Path::new("/usr/bin/qemu-system-x86_64").is_file() {
        println!("SKIP: {test}: qemu-system-x86_64 is not installed");
        return None;
    }
    let mut env = Env::new(None);
    if !env.run(&["kernel", "path"]).status.success() {
        println!("SKIP: {test}: guest kernel not built (make kernel)");
        return None;
    }
    env.start();
    Some(env)
}

/// A VM policy publishing container port `container` on host port `host`.
fn policy(name: &str, host: u16, container: u16) -> String {
    format!(
        "apiVersion: moat.dev/v1
kind: Policy
metadata:
  name: {name}
spec:
  extends: baseline
  isolation: vm
  network:
    mode: egress
    egress:
      - {{to: 127.0.0.1/32, ports: 9, protocol: tcp}}
    publish:
      - {{host: {host}, container: {container}}}
---
"
    )
}

fn vm_deployment(env: &Env, name: &str, script: &str, probe: &str) -> String {
    deployment(
        &env.image,
        &Spec {
            name,
            replicas: 1,
            script,
            ready: None,
            policy: Some(name),
            ..Spec::default()
        },
    )
    .replace("moat.dev/isolation: sandbox", "moat.dev/isolation: vm")
        + probe
}

#[test]
fn http_probes_reach_a_vm_replica_through_its_published_port() {
    let Some(env) = vm_env("http_probes_reach_a_vm_replica_through_its_published_port") else {
        return;
    };
    let script = "(sleep 2; echo ok > /tmp/index.html) & exec httpd -f -p 8080 -h /tmp";
    let probe = "        readinessProbe:\n          httpGet: {path: /index.html, port: 8080}\n          periodSeconds: 1\n          timeoutSeconds: 3\n        \
                 livenessProbe:\n          tcpSocket: {port: 8080}\n          initialDelaySeconds: 2\n          periodSeconds: 1\n          failureThreshold: 2\n";
    let text = policy("web", free_port(), 8080) + &vm_deployment(&env, "web", script, probe);
    env.apply("web.yaml", &text);
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "300"]);
    let vms = env
        .containers()
        .iter()
        .filter(|c| c["status"] == "running" && c["isolation"] == "vm")
        .count();
    assert_eq!(vms, 1);
    // The tcpSocket liveness probe passes too: no restart.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let pods = env.pods();
    assert_eq!(pods[0]["RESTARTS"], 0, "{pods:?}");
    assert_eq!(pods[0]["READY"], "1/1");
}

#[test]
fn a_listener_on_the_host_does_not_make_a_vm_replica_ready() {
    let Some(env) = vm_env("a_listener_on_the_host_does_not_make_a_vm_replica_ready") else {
        return;
    };
    // The host listens on the container port; the guest listens nowhere.
    let host_side = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host_side.local_addr().unwrap().port();
    let probe = format!(
        "        readinessProbe:\n          tcpSocket: {{port: {port}}}\n          periodSeconds: 1\n"
    );
    let text = policy("quiet", free_port(), port)
        + &vm_deployment(&env, "quiet", "exec sleep 1000", &probe).replace(
            "progressDeadlineSeconds: 600",
            "progressDeadlineSeconds: 60",
        );
    env.apply("quiet.yaml", &text);
    common::wait_for(300, "the VM replica to run", || {
        env.containers()
            .iter()
            .any(|c| c["status"] == "running" && c["isolation"] == "vm")
    });
    let o = env.run(&["rollout", "status", "deployment/quiet", "--timeout", "300"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(env.pods().iter().all(|p| p["READY"] == "0/1"));
    drop(host_side);
}

#[test]
fn an_unpublished_probe_port_of_a_vm_replica_is_refused() {
    if !can_run("an_unpublished_probe_port_of_a_vm_replica_is_refused") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let probe = "        livenessProbe:\n          tcpSocket: {port: 9000}\n";
    let text =
        policy("web", free_port(), 8080) + &vm_deployment(&env, "web", "exec sleep 1000", probe);
    let f = env.file("web.yaml", &text);
    let o = env.run(&["apply", "-f", &f]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "moat: error: Deployment web: spec.template.spec.containers[0].livenessProbe.tcpSocket.port: 9000 is not a TCP port policy web publishes (network: egress with publish), and a micro-VM is reached from the host only through published ports; publish it, or use an exec probe\n"
    );
}
