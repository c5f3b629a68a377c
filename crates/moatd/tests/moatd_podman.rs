//! The same manifest on moatd and on `podman kube play` (issue 17): a
//! moat Policy, a ConfigMap, a PersistentVolumeClaim and a Deployment
//! that passes Pod Security "restricted". podman 4.3 ignores the Policy
//! document and the moat annotations and runs the rest.

mod common;

use std::process::Command;

use common::{can_run, deployment, stderr, stdout, wait_for, Env, Spec};

const EXTRA: &str = "apiVersion: moat.dev/v1
kind: Policy
metadata:
  name: probe-exec
spec:
  extends: baseline
  isolation: sandbox
  exec: true
  filesystem:
    named_volumes:
      - {name: data, read_only: false}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {GREETING: hello}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
---
";

fn manifest(image: &str) -> String {
    let spec = Spec {
        replicas: 1,
        surge: "0",
        unavailable: "1",
        ..Spec::default()
    };
    let d = deployment(image, &spec)
        .replace(
            "        workingDir: /tmp\n",
            "        workingDir: /tmp\n        envFrom:\n        - configMapRef: {name: cfg}\n        volumeMounts:\n        - {name: data, mountPath: /home}\n",
        )
        .replace(
            "      containers:\n",
            "      volumes:\n      - name: data\n        persistentVolumeClaim: {claimName: data}\n      containers:\n",
        );
    format!("{EXTRA}{d}")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn one_manifest_runs_on_moatd_and_on_podman_kube_play() {
    if !can_run("one_manifest_runs_on_moatd_and_on_podman_kube_play") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let text = manifest(&env.image);
    let f = env.file("all.yaml", &text);
    let out = env.ok(&["apply", "-f", &f]);
    assert_eq!(
        out,
        "policy.moat.dev/probe-exec created\nconfigmap/cfg created\npersistentvolumeclaim/data created\ndeployment.apps/web created\n"
    );
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "90"]);
    let two = text.replace("replicas: 1", "replicas: 2");
    let f2 = env.file("two.yaml", &two);
    let o = env.run(&["apply", "-f", &f2]);
    assert_eq!(
        stderr(&o),
        "moat: error: Deployment web: spec.template.spec.containers[0].volumeMounts[0]: claim \"data\" is mounted read-write, and a moat volume has one writer at a time: use replicas: 1 with strategy.rollingUpdate.maxSurge: 0, or readOnly: true\n"
    );
    let pod = env.pods()[0]["NAME"].as_str().unwrap().to_string();
    let envs = env.ok(&["exec", &pod, "env"]);
    assert!(envs.lines().any(|l| l == "GREETING=hello"), "{envs}");
    let mounts = env.ok(&["exec", &pod, "cat", "/proc/mounts"]);
    assert!(mounts.contains(" /home "), "{mounts}");
    let vols = env.ok(&["get", "volumes"]);
    assert!(
        vols.lines()
            .nth(1)
            .unwrap()
            .starts_with("data   Bound    data     64Mi       RWO"),
        "{vols}"
    );

    for tool in ["podman", "crun", "catatonit", "unshare"] {
        if !have(tool) {
            println!("SKIP: the podman half: {tool} is not installed");
            return;
        }
    }
    // podman with its own storage, crun, cgroupfs, this host's rlimit
    // workaround (containers.conf default_ulimits), in a private mount
    // namespace that hides the cgroup v2 controllers from crun (see
    // bench/sandbox-start).
    let d = env.dir.path();
    std::fs::write(
        d.join("containers.conf"),
        "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n",
    )
    .unwrap();
    std::fs::write(d.join("empty"), "").unwrap();
    let tar = d.join("busybox.tar");
    let script = format!(
        "set -e
mount --bind {d}/empty /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null || true
export CONTAINERS_CONF={d}/containers.conf
P=\"podman --root {d}/podman-root --runroot {d}/podman-run --runtime crun --cgroup-manager cgroupfs --events-backend none\"
$P load -i {tar} >/dev/null 2>&1
$P kube play --network none {f}
$P ps --format '{{{{.Names}}}} {{{{.Status}}}}' | grep -- '-web ' | sort
$P exec web-pod-0-web env | grep GREETING
$P kube down {f} >/dev/null
",
        d = d.display(),
        tar = tar.display(),
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let running: Vec<&str> = out.lines().filter(|l| l.contains("-web Up")).collect();
    assert_eq!(running.len(), 1, "{out}");
    assert!(out.lines().any(|l| l == "GREETING=hello"), "{out}");
    wait_for(5, "moatd unaffected", || {
        env.ok(&["get", "deployments"]).contains("1/1")
    });
}
