//! `emptyDir` volumes through the real moatd, seen from inside a running
//! sandbox replica (issue 17): a tmpfs of `sizeLimit` at the mount path,
//! writable by the pod's user while the image's root stays read-only,
//! full at its limit; bad `emptyDir` fields are refused with their path.

mod common;

use common::{can_run, deployment, stderr, stdout, Env, Spec, EXEC_POLICY};

/// A one-replica Deployment (user 1000) with `volumes` (YAML list items,
/// indented for `spec.volumes`) and the volume `cache` at /home.
fn with_scratch(image: &str, volumes: &str, mount: &str) -> String {
    let spec = Spec {
        replicas: 1,
        script: "touch /tmp/ready; exec sleep 1000",
        policy: Some("probe-exec"),
        ..Spec::default()
    };
    let d = deployment(image, &spec).replace(
        "      containers:",
        &format!("      volumes:\n{volumes}      containers:"),
    );
    format!("{EXEC_POLICY}---\n{d}        volumeMounts:\n        - {mount}\n")
}

const CACHE: &str = "      - name: cache\n        emptyDir: {sizeLimit: 8Mi}\n";

fn exec(env: &Env, pod: &str, script: &str) -> std::process::Output {
    env.run(&["exec", pod, "/bin/sh", "-c", script])
}

#[test]
fn an_empty_dir_is_a_tmpfs_of_its_size_limit() {
    if !can_run("an_empty_dir_is_a_tmpfs_of_its_size_limit") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    env.apply(
        "scratch.yaml",
        &with_scratch(&env.image, CACHE, "{name: cache, mountPath: /home}"),
    );
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let pod = env.pods()[0]["NAME"].as_str().unwrap().to_string();
    let o = exec(
        &env,
        &pod,
        "id -u; echo kept > /home/note && cat /home/note; \
         grep ' /home ' /proc/mounts | cut -d' ' -f3; df -k /home | tail -1 | tr -s ' ' | cut -d' ' -f2; \
         touch /etc/x 2>/dev/null && echo root-writable || echo root-read-only",
    );
    assert_eq!(
        stdout(&o),
        "1000\nkept\ntmpfs\n8192\nroot-read-only\n",
        "{}",
        stderr(&o)
    );
    // Full at its limit.
    let o = exec(
        &env,
        &pod,
        "dd if=/dev/zero of=/home/big bs=1M count=16 2>&1 | grep -c 'No space left'",
    );
    assert_eq!(stdout(&o), "1\n", "{}", stderr(&o));
}

#[test]
fn bad_empty_dirs_are_refused_with_their_field() {
    if !can_run("bad_empty_dirs_are_refused_with_their_field") {
        return;
    }
    let mut env = Env::new(None);
    env.start();
    let v = "spec.template.spec.volumes[0].emptyDir";
    let m = "spec.template.spec.containers[0].volumeMounts[0]";
    for (volumes, mount, want) in [
        (
            CACHE.replace("sizeLimit: 8Mi", "medium: HugePages"),
            "{name: cache, mountPath: /home}",
            format!("{v}.medium: \"HugePages\": moatd's emptyDir is memory (a tmpfs): use \"\" or Memory"),
        ),
        (
            CACHE.replace("8Mi", "lots"),
            "{name: cache, mountPath: /home}",
            format!("{v}.sizeLimit: expected a size such as 64Mi or 1Gi, found `lots`"),
        ),
        (
            CACHE.replace("sizeLimit: 8Mi", "path: /x"),
            "{name: cache, mountPath: /home}",
            format!("{v}.path: not supported by moatd"),
        ),
        (
            CACHE.to_string(),
            "{name: cache, mountPath: /home, readOnly: true}",
            format!("{m}.readOnly: volume \"cache\" is an emptyDir, which starts empty: mounted read-only it stays so; drop readOnly"),
        ),
        (
            CACHE.to_string(),
            "{name: cache, mountPath: /}",
            format!("{m}.mountPath: \"/\": a ConfigMap, Secret or emptyDir is mounted at a plain absolute directory, not `/` (letters, digits, '.', '_', '-'; no `..`)"),
        ),
    ] {
        let f = env.file("bad.yaml", &with_scratch(&env.image, &volumes, mount));
        let o = env.run(&["apply", "-f", &f]);
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
        assert!(
            stderr(&o).ends_with(&format!(": Deployment web: {want}\n")),
            "{}",
            stderr(&o)
        );
    }
    assert!(env.pods().is_empty());
}
