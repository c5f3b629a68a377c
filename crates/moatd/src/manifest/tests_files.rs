//! ConfigMap and Secret volumes, `resources` and `minReadySeconds`: what
//! parses, and the exact refusals.

use super::*;

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  volumes:
  - name: cfg
    configMap: {name: app}
  - name: creds
    secret: {secretName: db}
  containers:
  - name: p
    image: busybox
    volumeMounts:
    - {name: cfg, mountPath: /etc/app}
    - {name: creds, mountPath: /var/run/db, readOnly: true}
    resources:
      limits: {cpu: 500m, memory: 64Mi}
      requests: {cpu: '0.25', memory: 32Mi}
";

fn err(text: &str) -> String {
    parse_stream(text, "p.yaml").unwrap_err().to_string()
}

#[test]
fn config_map_and_secret_volumes_and_resources_parse() {
    let objs = parse_stream(POD, "p.yaml").unwrap();
    let Object::Pod(p) = &objs[0] else {
        panic!("{objs:?}")
    };
    assert_eq!(
        p.pod.volumes[0].source,
        VolumeSource::ConfigMap {
            name: "app".into(),
            projection: Projection::default()
        }
    );
    assert_eq!(
        p.pod.volumes[1].source,
        VolumeSource::Secret {
            secret_name: "db".into(),
            projection: Projection::default()
        }
    );
    let r = &p.pod.container.resources;
    assert_eq!(r.limits.cpu_millis, Some(500));
    assert_eq!(r.limits.memory_bytes, Some(64 << 20));
    assert_eq!(r.requests.cpu_millis, Some(250));
    assert_eq!(r.requests.memory_bytes, Some(32 << 20));
}

#[test]
fn file_volumes_are_refused_exactly() {
    assert_eq!(
        err(&POD.replace("    configMap: {name: app}", "    configMap: {name: app}\n    secret: {secretName: x}")),
        "p.yaml:7: Pod p: spec.volumes[0]: a volume needs exactly one of persistentVolumeClaim, configMap, secret, emptyDir (the sources moatd supports)"
    );
    assert_eq!(
        err(&POD.replace("{name: app}", "{name: app, defaultMode: 01000}")),
        "p.yaml:8: Pod p: spec.volumes[0].configMap.defaultMode: expected a file mode between 0 and 0777 (octal, as 0440 in YAML) or 0 and 511 (decimal, as in JSON), found `01000`"
    );
    assert_eq!(
        err(&POD.replace(
            "{secretName: db}",
            "{secretName: db, items: [{key: a, path: b, owner: x}]}"
        )),
        "p.yaml:10: Pod p: spec.volumes[1].secret.items[0].owner: not supported by moatd"
    );
    assert_eq!(
        err(&POD.replace("/var/run/db, readOnly: true", "/var/run/db, readOnly: false")),
        "p.yaml:12: Pod p: spec.containers[0].volumeMounts[1].readOnly: volume \"creds\" is a ConfigMap or Secret, always mounted read-only: drop readOnly: false"
    );
    assert_eq!(
        err(&POD.replace("/etc/app}", "/etc/../app}")),
        "p.yaml:12: Pod p: spec.containers[0].volumeMounts[0].mountPath: \"/etc/../app\": a ConfigMap, Secret or emptyDir is mounted at a plain absolute directory, not `/` (letters, digits, '.', '_', '-'; no `..`)"
    );
    assert_eq!(
        err(&POD.replace("  - name: creds\n", "  - name: ../../etc\n")),
        "p.yaml:9: Pod p: spec.volumes[1].name: \"../../etc\": a volume name is 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit"
    );
    assert_eq!(
        err(&POD.replace("{name: cfg, mountPath", "{name: cfg, subPath: x, mountPath")),
        "p.yaml:15: Pod p: spec.containers[0].volumeMounts[0].subPath: not supported by moatd"
    );
}

#[test]
fn keys_that_are_not_file_names_are_refused() {
    let e = err("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {'../x': '1'}\n");
    assert_eq!(e, "p.yaml:4: ConfigMap c: data.../x: a key is letters, digits, '-', '_' and '.' (not `.` nor starting with `..`), as in Kubernetes");
    let e = err("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {..data: x}\n");
    assert_eq!(e, "p.yaml:4: Secret s: stringData...data: a key is letters, digits, '-', '_' and '.' (not `.` nor starting with `..`), as in Kubernetes");
}

#[test]
fn bad_quantities_and_requests_above_limits_are_refused() {
    assert_eq!(
        err(&POD.replace("memory: 64Mi", "memory: lots")),
        "p.yaml:18: Pod p: spec.containers[0].resources.limits.memory: expected a size such as 128Mi, 1Gi or 500M, found `lots`"
    );
    assert_eq!(
        err(&POD.replace("cpu: 500m", "cpu: 1.2345")),
        "p.yaml:18: Pod p: spec.containers[0].resources.limits.cpu: expected a CPU quantity such as 500m, 0.5 or 2, found `1.2345`"
    );
    assert_eq!(
        err(&POD.replace("memory: 32Mi", "memory: 128Mi")),
        "p.yaml:18: Pod p: spec.containers[0].resources.requests.memory: must be less than or equal to spec.containers[0].resources.limits.memory"
    );
    assert_eq!(
        err(&POD.replace("limits: {", "limits: {hugepages-2Mi: 1Gi, ")),
        "p.yaml:18: Pod p: spec.containers[0].resources.limits.hugepages-2Mi: not supported by moatd"
    );
}

#[test]
fn min_ready_seconds_parses_and_must_stay_below_the_deadline() {
    let dep = "apiVersion: apps/v1
kind: Deployment
metadata: {name: w}
spec:
  minReadySeconds: 5
  progressDeadlineSeconds: 60
  selector: {matchLabels: {app: w}}
  template:
    metadata: {labels: {app: w}}
    spec:
      containers: [{name: w, image: busybox}]
";
    let objs = parse_stream(dep, "d.yaml").unwrap();
    let Object::Deployment(d) = &objs[0] else {
        panic!()
    };
    assert_eq!(d.min_ready_seconds, 5);
    let e = parse_stream(
        &dep.replace("minReadySeconds: 5", "minReadySeconds: 60"),
        "d.yaml",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "d.yaml:5: Deployment w: spec.minReadySeconds: must be less than spec.progressDeadlineSeconds (60)"
    );
}

#[path = "tests_items.rs"]
mod items;
