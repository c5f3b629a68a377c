//! ConfigMaps and Secrets mounted as files (issue 17): one file per key,
//! read-only, Secrets mode 0400 for the pod's user on a tmpfs and never
//! in logs, events or the audit log; a changed ConfigMap reaches the
//! running replica in place without a new revision (as in Kubernetes);
//! a Secret is for whoever applied it and root.

mod common;

use common::{
    can_run, config_map, deployment, secret, stderr, stdout, wait_for, Env, Spec, EXEC_POLICY,
};

const SECRET_VALUE: &str = "s3cr3t-value-7f1c";

/// A Deployment mounting ConfigMap `app` at /home and Secret `db` at /var.
fn with_files(image: &str, s: &Spec, isolation: &str) -> String {
    deployment(image, s)
        .replace("moat.dev/isolation: sandbox", &format!("moat.dev/isolation: {isolation}"))
        .replace(
            "      containers:",
            "      volumes:\n      - {name: cfg, configMap: {name: app}}\n      - {name: creds, secret: {secretName: db}}\n      containers:",
        )
        + "        volumeMounts:\n        - {name: cfg, mountPath: /home}\n        - {name: creds, mountPath: /var, readOnly: true}\n"
}

fn exec(env: &Env, pod: &str, script: &str) -> std::process::Output {
    env.run(&["exec", pod, "/bin/sh", "-c", script])
}

#[test]
fn config_maps_and_secrets_are_read_only_files_and_follow_updates_in_place() {
    if !can_run("config_maps_and_secrets_are_read_only_files_and_follow_updates_in_place") {
        return;
    }
    let mut env = Env::new(None);
    let _unmount = env.start_with_files();
    let spec = Spec {
        replicas: 1,
        ..Spec::default()
    };
    let text = format!(
        "{EXEC_POLICY}---\n{}---\n{}---\n{}",
        config_map("hello"),
        secret(SECRET_VALUE),
        with_files(&env.image, &spec, "sandbox")
    );
    env.apply("files.yaml", &text);
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let pod = env.pods()[0]["NAME"].as_str().unwrap().to_string();

    let o = exec(&env, &pod, "cat /home/greeting; echo; cat /home/mode; echo; id -u; cat /var/password; echo; stat -L -c '%a %u:%g' /home/greeting /var/password");
    assert_eq!(
        stdout(&o),
        format!("hello\nfast\n1000\n{SECRET_VALUE}\n644 0:0\n400 1000:1000\n"),
        "{}",
        stderr(&o)
    );
    // Read-only, whatever the user tries.
    let o = exec(&env, &pod, "echo x > /home/greeting || echo refused; rm /var/password 2>/dev/null || echo refused; touch /var/new 2>/dev/null || echo refused");
    assert_eq!(stdout(&o), "refused\nrefused\nrefused\n", "{}", stderr(&o));
    // On a tmpfs: the files directory is one.
    let files = env.dir.path().join("files").display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(files.as_str())
                && l.split(' ').nth(2) == Some("tmpfs")),
        "{files} is not a tmpfs"
    );

    // A changed ConfigMap: the file changes under the running replica; no
    // new revision, no restart (Kubernetes makes neither).
    env.apply("cm.yaml", &config_map("bonjour"));
    wait_for(30, "the file to follow the ConfigMap", || {
        stdout(&exec(&env, &pod, "cat /home/greeting")) == "bonjour"
    });
    let p = env.pods();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["NAME"], pod.as_str());
    assert_eq!(p[0]["RESTARTS"], 0);
    let history = env.ok(&["rollout", "history", "deployment/web"]);
    let revisions = history
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(revisions, 1, "one revision: {history}");
    assert!(env.ok(&["events"]).contains("FilesUpdated"));

    // The secret's value is nowhere moatd writes for people to read.
    let seen = vec![
        ("events", env.ok(&["events"])),
        ("describe secret", env.ok(&["describe", "secret/db"])),
        (
            "describe deployment",
            env.ok(&["describe", "deployment/web"]),
        ),
        ("get secrets", env.ok(&["get", "secrets", "-o", "json"])),
        ("inspect", env.ok(&["inspect", &pod])),
        ("moatd's log", env.daemon_log()),
    ];
    env.assert_absent(SECRET_VALUE, seen);

    // Removing the Deployment removes its replica's files.
    env.ok(&["delete", "deployment/web"]);
    let dir = env.dir.path().join("files").join(&pod);
    wait_for(30, "the replica's files to go", || !dir.exists());
}

fn rbac() -> String {
    "apiVersion: moat.dev/v1
kind: RBAC
roles:
  - name: admin
    grants:
      capabilities: [ALL]
      network: [none, loopback, egress, publish]
      isolation: [vm, sandbox]
      volumes: [\"/\"]
      named_volumes: [\"*\"]
      exec: true
  - name: deployer
    grants:
      network: [none]
      isolation: [sandbox]
bindings:
  - role: admin
    users: [root]
  - role: deployer
    users: [nobody]
"
    .to_string()
}

const PLAIN_POLICY: &str = "apiVersion: moat.dev/v1
kind: Policy
metadata:
  name: plain
spec:
  extends: baseline
  isolation: sandbox
";

#[test]
fn a_secret_is_for_whoever_applied_it_and_root() {
    if !can_run("a_secret_is_for_whoever_applied_it_and_root") {
        return;
    }
    let mut env = Env::new(Some(&rbac()));
    let _unmount = env.start_with_files();
    env.apply(
        "root.yaml",
        &format!("{}---\n{}", secret(SECRET_VALUE), config_map("hi")),
    );
    let spec = Spec {
        replicas: 1,
        ready: None,
        policy: Some("plain"),
        ..Spec::default()
    };
    // nobody mounts root's Secret: refused, and nothing is stored.
    let f = env.file(
        "steal.yaml",
        &format!(
            "{PLAIN_POLICY}---\n{}",
            with_files(&env.image, &spec, "sandbox")
        ),
    );
    let o = env.as_nobody(&["apply", "-f", &f]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "moat: error: Deployment web: spec.template.spec.volumes[1].secret.secretName: Secret \"db\" was applied by root: only root may use it\n"
    );
    // ... nor through the environment.
    let env_ref = deployment(&env.image, &spec).replace(
        "        workingDir: /tmp\n",
        "        workingDir: /tmp\n        env:\n        - name: PW\n          valueFrom: {secretKeyRef: {name: db, key: password}}\n",
    );
    let f = env.file("steal-env.yaml", &format!("{PLAIN_POLICY}---\n{env_ref}"));
    let o = env.as_nobody(&["apply", "-f", &f]);
    assert_eq!(
        stderr(&o),
        "moat: error: Deployment web: spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef: Secret \"db\" was applied by root: only root may use it\n"
    );
    // ... and may neither replace nor delete it (its data would reach
    // root's replicas), nor replace root's ConfigMap.
    let f = env.file(
        "swap.yaml",
        &format!("{}---\n{}", secret(SECRET_VALUE), config_map("evil")),
    );
    let o = env.as_nobody(&["apply", "-f", &f]);
    assert_eq!(
        stderr(&o),
        "moat: error: Secret db: applied by root; only root may change or delete it\nConfigMap app: applied by root; only root may change or delete it\n"
    );
    let o = env.as_nobody(&["delete", "secret/db"]);
    assert_eq!(
        stderr(&o),
        "moat: error: Secret db: applied by root; only root may change or delete it\n"
    );
    assert!(env.ok(&["get", "deployments"]).lines().count() <= 1);
    // A Secret of one's own is fine (the ConfigMap is anyone's to read).
    let own = format!(
        "{}---\n{PLAIN_POLICY}---\n{}",
        secret(SECRET_VALUE).replace("name: db", "name: mine"),
        with_files(&env.image, &spec, "sandbox").replace("secretName: db", "secretName: mine")
    );
    let f = env.file("own.yaml", &own);
    let o = env.as_nobody(&["apply", "-f", &f]);
    assert!(o.status.success(), "{}", stderr(&o));
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    let pod = env.pods()[0]["NAME"].as_str().unwrap().to_string();
    let data = env
        .dir
        .path()
        .join("files")
        .join(&pod)
        .join("creds/password");
    assert_eq!(std::fs::read_to_string(data).unwrap(), SECRET_VALUE);
}

#[test]
fn file_volumes_admission_names_the_field_and_the_rule() {
    if !can_run("file_volumes_admission_names_the_field_and_the_rule") {
        return;
    }
    let mut env = Env::new(None);
    let _unmount = env.start_with_files();
    let spec = Spec {
        replicas: 1,
        ..Spec::default()
    };
    // Missing objects.
    let f = env.file(
        "missing.yaml",
        &format!(
            "{EXEC_POLICY}---\n{}",
            with_files(&env.image, &spec, "sandbox")
        ),
    );
    let o = env.run(&["apply", "-f", &f]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "moat: error: Deployment web: spec.template.spec.volumes[0].configMap.name: no ConfigMap named \"app\" in this apply or applied before\n\
         Deployment web: spec.template.spec.volumes[1].secret.secretName: no Secret named \"db\" in this apply or applied before\n"
    );
}
