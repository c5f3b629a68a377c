use super::*;

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000
        command: [sleep, '1000']
        readinessProbe:
          exec: {command: [cat, /tmp/ready]}
          periodSeconds: 2
";

#[test]
fn a_stream_of_documents_parses_with_kubernetes_defaults() {
    let text = format!("# web\n---\n{DEPLOY}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg}}\ndata: {{A: '1'}}\n");
    let objs = parse_stream(&text, "web.yaml").unwrap();
    assert_eq!(objs.len(), 2);
    let Object::Deployment(d) = &objs[0] else {
        panic!("{objs:?}")
    };
    assert_eq!(d.replicas, 2);
    assert_eq!(d.max_surge, IntOrPercent::Int(1));
    assert_eq!(d.progress_deadline_seconds, 600);
    assert_eq!(d.pod.restart_policy, "Always");
    let p = d.pod.container.readiness.as_ref().unwrap();
    assert_eq!(p.period_seconds, 2);
    assert_eq!(p.failure_threshold, 3);
    assert_eq!(objs[1].kubectl_name(), "configmap/cfg");
}

#[test]
fn an_unimplemented_field_is_refused_with_its_path() {
    let text = DEPLOY.replace(
        "      containers:",
        "      hostNetwork: true\n      containers:",
    );
    let e = parse_stream(&text, "web.yaml").unwrap_err().to_string();
    assert_eq!(
        e,
        "web.yaml:15: Deployment web: spec.template.spec.hostNetwork: not supported by moatd"
    );
    let text = format!(
        "---\n{}",
        DEPLOY.replace(
            "        command:",
            "        lifecycle: {}\n        command:"
        )
    );
    let e = parse_stream(&text, "w.yaml").unwrap_err().to_string();
    assert_eq!(
        e,
        "w.yaml:19: Deployment web: spec.template.spec.containers[0].lifecycle: not supported by moatd"
    );
}

#[test]
fn malformed_documents_name_the_line_and_the_fix() {
    let e = parse_stream("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec:\n  replicas: three\n  selector: {}\n", "m.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "m.yaml:5: Deployment w: spec.replicas: expected an integer, found `three`"
    );
    let e = parse_stream(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\n",
        "j.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("j.yaml:1: batch/v1 Job is not supported by moatd (accepted: apps/v1 Deployment, v1 Pod,"), "{e}");
    let e = parse_stream("kind: Pod\n", "p.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "p.yaml:1: every document needs `apiVersion` and `kind`");
    let e = parse_stream(
        &DEPLOY.replace("app: web}\n  strategy", "app: other}\n  strategy"),
        "s.yaml",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "s.yaml:8: Deployment web: spec.selector.matchLabels: must be non-empty and match spec.template.metadata.labels");
}

#[test]
fn two_containers_and_a_deployment_restart_policy_never_are_refused() {
    let text = DEPLOY.replace(
        "        readinessProbe:",
        "      - name: side\n        image: x\n        readinessProbe:",
    );
    let e = parse_stream(&text, "t.yaml").unwrap_err().to_string();
    assert_eq!(e, "t.yaml:19: Deployment web: spec.template.spec.containers[1]: moatd runs one container per pod; make it its own Deployment");
    let text = DEPLOY.replace(
        "      containers:",
        "      restartPolicy: Never\n      containers:",
    );
    let e = parse_stream(&text, "t.yaml").unwrap_err().to_string();
    assert!(
        e.contains("spec.template.spec.restartPolicy: \"Never\" is not allowed here"),
        "{e}"
    );
}

#[test]
fn secrets_decode_base64_and_string_data() {
    let text =
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {A: aGk=}\nstringData: {B: yo}\n";
    let objs = parse_stream(text, "s.yaml").unwrap();
    let Object::Secret(d) = &objs[0] else {
        panic!()
    };
    assert_eq!(d.data.get("A").unwrap(), "hi");
    assert_eq!(d.data.get("B").unwrap(), "yo");
    let e = parse_stream(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {A: '!!'}\n",
        "s.yaml",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "s.yaml:4: Secret s: data.A: not valid base64");
}

#[test]
fn fields_moatd_would_not_honour_are_refused() {
    let text = DEPLOY.replace("  replicas: 2", "  replicas: 2\n  paused: true");
    let e = parse_stream(&text, "m.yaml").unwrap_err().to_string();
    assert_eq!(
        e,
        "m.yaml:7: Deployment web: spec.paused: not supported by moatd"
    );
    let text = DEPLOY.replace(
        "        command:",
        "        securityContext: {readOnlyRootFilesystem: false}\n        command:",
    );
    let e = parse_stream(&text, "r.yaml").unwrap_err().to_string();
    assert_eq!(e, "r.yaml:18: Deployment web: spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem: moat's root file system is read-only; for a writable layer that dies with the container use a policy with filesystem.root: ephemeral");
}
