//! The new fields on moatd and on `podman kube play` alike (issue 17): a
//! ConfigMap mounted as files (`items`, `defaultMode`), container
//! `resources` and `minReadySeconds` in one file that both run (podman
//! 4.3 ignores the Policy document and the moat annotations, and
//! `defaultMode`: its files are 0644; it makes no directories for a
//! nested `items` path, so the path here is flat).

mod common;

use std::process::Command;

use common::{can_run, deployment, stderr, stdout, Env, Spec};

const EXTRA: &str = "apiVersion: moat.dev/v1
kind: Policy
metadata:
  name: probe-exec
spec:
  extends: baseline
  isolation: sandbox
  exec: true
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {greeting: hello}
---
";

fn manifest(image: &str) -> String {
    let spec = Spec {
        replicas: 1,
        ..Spec::default()
    };
    let d = deployment(image, &spec)
        .replace(
            "  progressDeadlineSeconds: 600\n",
            "  progressDeadlineSeconds: 600\n  minReadySeconds: 1\n",
        )
        .replace(
            "        workingDir: /tmp\n",
            "        workingDir: /tmp\n        resources:\n          limits: {memory: 64Mi, cpu: 500m}\n        volumeMounts:\n        - {name: cfg, mountPath: /home, readOnly: true}\n",
        )
        .replace(
            "      containers:\n",
            "      volumes:\n      - name: cfg\n        configMap:\n          name: cfg\n          defaultMode: 0444\n          items: [{key: greeting, path: greeting.txt}]\n      containers:\n",
        );
    format!("{EXTRA}{d}")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn config_map_files_and_resources_run_on_moatd_and_on_podman_kube_play() {
    if !can_run("config_map_files_and_resources_run_on_moatd_and_on_podman_kube_play") {
        return;
    }
    let mut env = Env::new(None);
    let files = env.dir.path().join("files");
    env.extra = vec!["--files-dir".into(), files.display().to_string()];
    env.start();
    let _unmount = Unmount(files);
    let f = env.file("all.yaml", &manifest(&env.image));
    env.ok(&["apply", "-f", &f]);
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "90"]);
    let pod = env.pods()[0]["NAME"].as_str().unwrap().to_string();
    assert_eq!(
        env.ok(&["exec", &pod, "cat", "/home/greeting.txt"]),
        "hello"
    );
    assert_eq!(
        env.ok(&["exec", &pod, "stat", "-L", "-c", "%a", "/home/greeting.txt"]),
        "444\n"
    );

    for tool in ["podman", "crun", "catatonit", "unshare"] {
        if !have(tool) {
            println!("SKIP: the podman half: {tool} is not installed");
            return;
        }
    }
    // As in moatd_podman.rs: podman with its own storage, crun,
    // cgroupfs, this host's rlimit workaround.
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
$P exec web-pod-0-web cat /home/greeting.txt
echo
$P inspect web-pod-0-web --format '{{{{.HostConfig.Memory}}}}'
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
    assert!(out.lines().any(|l| l == "hello"), "{out}");
    assert!(out.lines().any(|l| l == "67108864"), "{out}");
}
