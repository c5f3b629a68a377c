//! `items`, `defaultMode` and `optional` of ConfigMap and Secret
//! volumes, `optional` of environment references: what parses, and the
//! exact refusals.

use super::*;

fn volumes(text: &str) -> Vec<Volume> {
    let objs = parse_stream(&POD.replace("VOLUMES", text), "p.yaml").unwrap();
    let Object::Pod(p) = &objs[0] else {
        panic!("{objs:?}")
    };
    p.pod.volumes.clone()
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  volumes:
  - name: cfg
    VOLUMES
  containers:
  - name: p
    image: busybox
    volumeMounts:
    - {name: cfg, mountPath: /etc/app}
";

fn refused(volume: &str) -> String {
    err(&POD.replace("VOLUMES", volume))
}

#[test]
fn items_modes_and_optional_parse_with_kubernetes_numbers() {
    let v = volumes("configMap: {name: app, defaultMode: 0440, optional: true, items: [{key: a, path: conf/a.conf, mode: 0o600}, {key: b, path: b, mode: 420}]}");
    assert_eq!(
        v[0].source,
        VolumeSource::ConfigMap {
            name: "app".into(),
            projection: Projection {
                items: vec![
                    KeyToPath {
                        key: "a".into(),
                        path: "conf/a.conf".into(),
                        mode: Some(0o600)
                    },
                    KeyToPath {
                        key: "b".into(),
                        path: "b".into(),
                        mode: Some(0o644)
                    },
                ],
                default_mode: Some(0o440),
                optional: true,
            }
        }
    );
    // JSON's decimal form, and 0 and 0777 are both in range.
    let v = volumes("secret: {\"secretName\": \"db\", \"defaultMode\": 511}");
    let VolumeSource::Secret { projection, .. } = &v[0].source else {
        panic!()
    };
    assert_eq!(projection.default_mode, Some(0o777));
    let v = volumes("secret: {secretName: db, defaultMode: 0}");
    let VolumeSource::Secret { projection, .. } = &v[0].source else {
        panic!()
    };
    assert_eq!(projection.default_mode, Some(0));
}

#[test]
fn bad_items_and_modes_are_refused_with_their_field() {
    let p = "p.yaml:8: Pod p: spec.volumes[0]";
    let mode_msg = "expected a file mode between 0 and 0777 (octal, as 0440 in YAML) or 0 and 511 (decimal, as in JSON)";
    assert_eq!(
        refused("configMap: {name: app, defaultMode: 512}"),
        format!("{p}.configMap.defaultMode: {mode_msg}, found `512`")
    );
    assert_eq!(
        refused("secret: {secretName: db, defaultMode: 0778}"),
        format!("{p}.secret.defaultMode: {mode_msg}, found `0778`")
    );
    assert_eq!(
        refused("secret: {secretName: db, defaultMode: -1}"),
        format!("{p}.secret.defaultMode: {mode_msg}, found `-1`")
    );
    assert_eq!(
        refused("secret: {secretName: db, defaultMode: '0440'}"),
        format!("{p}.secret.defaultMode: expected a file mode such as 0440 (octal) or 288 (decimal), found the string \"0440\"")
    );
    assert_eq!(
        refused(
            "configMap: {name: app, items: [{key: a, path: a}, {key: b, path: b, mode: 01000}]}"
        ),
        format!("{p}.configMap.items[1].mode: {mode_msg}, found `01000`")
    );
    let path = |path: &str| {
        refused(&format!(
            "configMap: {{name: app, items: [{{key: a, path: a}}, {{key: b, path: '{path}'}}]}}"
        ))
    };
    let at = format!("{p}.configMap.items[1].path");
    assert_eq!(
        path("/etc/passwd"),
        format!("{at}: \"/etc/passwd\": must be a relative path (inside the volume), not an absolute one")
    );
    assert_eq!(
        path("x/../../y"),
        format!("{at}: \"x/../../y\": must not contain a `..` component")
    );
    assert_eq!(
        path("..data"),
        format!("{at}: \"..data\": must not start with `..`")
    );
    assert_eq!(
        path(""),
        format!("{at}: \"\": must not be empty: a relative path such as app.conf or conf/app.conf")
    );
    assert_eq!(
        path("a//b"),
        format!("{at}: \"a//b\": every component is a file name (no empty or `.` components, at most 255 bytes)")
    );
    assert_eq!(
        path("a/b"),
        format!("{at}: \"a/b\" collides with spec.volumes[0].configMap.items[0].path \"a\": each item needs a path of its own, not inside another's")
    );
    assert_eq!(
        refused("secret: {secretName: db, items: [{key: a}]}"),
        format!("{p}.secret.items[0].path: required")
    );
    assert_eq!(
        refused("secret: {secretName: db, items: [{key: ../a, path: a}]}"),
        format!("{p}.secret.items[0].key: \"../a\": a key is letters, digits, '-', '_' and '.' (not `.` nor starting with `..`), as in Kubernetes")
    );
    assert_eq!(
        refused("secret: {secretName: db, optional: yes}"),
        format!("{p}.secret.optional: expected true or false, found `yes`")
    );
}

#[test]
fn optional_environment_references_parse() {
    let text = POD.replace("VOLUMES", "configMap: {name: app}").replace(
        "    volumeMounts:",
        "    env:\n    - {name: A, valueFrom: {configMapKeyRef: {name: c, key: k, optional: true}}}\n    - {name: B, valueFrom: {secretKeyRef: {name: s, key: k}}}\n    envFrom:\n    - {configMapRef: {name: c, optional: true}}\n    - {secretRef: {name: s, optional: false}}\n    volumeMounts:",
    );
    let objs = parse_stream(&text, "p.yaml").unwrap();
    let Object::Pod(p) = &objs[0] else { panic!() };
    let c = &p.pod.container;
    assert_eq!(
        c.env[0].source,
        EnvSource::ConfigMapKey {
            name: "c".into(),
            key: "k".into(),
            optional: true
        }
    );
    assert_eq!(
        c.env[1].source,
        EnvSource::SecretKey {
            name: "s".into(),
            key: "k".into(),
            optional: false
        }
    );
    assert_eq!(
        c.env_from,
        vec![
            EnvFrom::OptionalConfigMap("c".into()),
            EnvFrom::Secret("s".into())
        ]
    );
    // Objects stored before `optional` existed read as they were.
    let old: EnvSource = serde_json::from_str(r#"{"SecretKey":{"name":"s","key":"k"}}"#).unwrap();
    assert_eq!(
        old,
        EnvSource::SecretKey {
            name: "s".into(),
            key: "k".into(),
            optional: false
        }
    );
    let old: VolumeSource = serde_json::from_str(r#"{"ConfigMap":{"name":"app"}}"#).unwrap();
    assert_eq!(
        serde_json::to_string(&old).unwrap(),
        r#"{"ConfigMap":{"name":"app"}}"#
    );
}
