use std::os::unix::fs::PermissionsExt;

use super::*;

fn mk(id: &str) -> Record {
    Record::new(
        ContainerId::parse(id).unwrap(),
        ContainerName::parse("n").unwrap(),
        Isolation::Sandbox,
        ImageId::parse(&format!("sha256:{}", "0".repeat(64))).unwrap(),
    )
}

#[test]
fn status_machine_allows_only_its_transitions() {
    use Status::*;
    let all = [Created, Running, Paused, Stopped];
    let allowed = [
        (Created, Running),
        (Created, Stopped),
        (Running, Paused),
        (Paused, Running),
        (Running, Stopped),
        (Paused, Stopped),
        (Stopped, Created),
    ];
    for from in all {
        for to in all {
            assert_eq!(
                from.can_become(to),
                allowed.contains(&(from, to)),
                "{from} -> {to}"
            );
        }
    }
    let mut r = mk("0123456789abcdef");
    assert_eq!(r.status, Created);
    assert_eq!(r.version, RECORD_VERSION);
    r.started(std::process::id() as i32).unwrap();
    assert_eq!(r.status, Running);
    assert!(r.pid_start_time > 0);
    r.transition(Paused).unwrap();
    r.transition(Running).unwrap();
    r.stopped(3).unwrap();
    assert_eq!((r.status, r.exit_code), (Stopped, Some(3)));
    assert!(r.exit_time.is_some());
    // A stopped container does not run again, nor stop twice.
    assert_eq!(
        r.transition(Running).unwrap_err().to_string(),
        "container 0123456789abcdef is stopped: it cannot become running"
    );
    assert!(r.stopped(0).is_err());
    assert_eq!(r.exit_code, Some(3));
    let mut c = mk("0123456789abcdef");
    assert!(c.transition(Paused).is_err());
    assert_eq!(c.status, Created);
}

#[test]
fn records_round_trip_and_old_records_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = mk("0123456789abcdef");
    r.policy_digest = "abc".into();
    r.started(std::process::id() as i32).unwrap();
    write(dir.path(), &r).unwrap();
    assert_eq!(read_all(dir.path()).unwrap(), vec![r.clone()]);
    let json = fs::read_to_string(
        containers_dir(dir.path())
            .join(r.id.as_str())
            .join("state.json"),
    )
    .unwrap();
    assert!(json.contains("\"version\": 1") && json.contains("\"status\": \"running\""));
    assert!(!json.contains("exit_code"), "{json}");
    // A record as the vm backend writes it (no version, no status).
    let vm = "00112233aabbccdd";
    let d = containers_dir(dir.path()).join(vm);
    fs::create_dir(&d).unwrap();
    fs::write(
        d.join("state.json"),
        format!(r#"{{"id":"{vm}","name":"v","image_id":"sha256:0000000000000000000000000000000000000000000000000000000000000000","pid":1,"isolation":"vm","created":"x"}}"#),
    )
    .unwrap();
    let all = read_all(dir.path()).unwrap();
    let v = find(&all, "v").unwrap();
    assert_eq!(
        (v.version, v.status, v.isolation),
        (0, Status::Running, Isolation::Vm)
    );
}

#[test]
fn finds_by_name_id_and_prefix() {
    let mut a = mk(&"abcdef01".repeat(2));
    a.name = ContainerName::parse("web").unwrap();
    let mut b = mk(&"abcd9999".repeat(2));
    b.name = ContainerName::parse("db").unwrap();
    let v = vec![a, b];
    assert_eq!(find(&v, "web").unwrap().id.as_str(), "abcdef01".repeat(2));
    assert_eq!(find(&v, "abcd9").unwrap().name.as_str(), "db");
    assert!(find(&v, "abcd").is_none()); // ambiguous
    assert!(find(&v, "abc").is_none()); // too short
}

#[test]
fn only_trusted_records_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let good = "0123456789abcdef";
    write(dir.path(), &mk(good)).unwrap();
    let containers = containers_dir(dir.path());
    let m = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(m(dir.path()), 0o700);
    assert_eq!(m(&containers), 0o700);
    assert_eq!(m(&containers.join(good)), 0o700);
    assert_eq!(m(&containers.join(good).join("state.json")), 0o600);
    let plant = |name: &str, json: String, mode: u32| {
        let d = containers.join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("state.json"), json).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        d
    };
    let json = |id: &str| {
        let mut v = serde_json::to_value(mk(good)).unwrap();
        v["id"] = id.into();
        serde_json::to_string(&v).unwrap()
    };
    // Its id is not its directory's name.
    plant("fedcba9876543210", json("1111222233334444"), 0o700);
    // An id that is a path, in a directory named like an ID.
    plant("fedcba9876543211", json("../../etc"), 0o700);
    // A directory that is not an ID.
    plant("..x", json("..x"), 0o700);
    plant("ABCDEF0123456789", json("ABCDEF0123456789"), 0o700);
    // Writable by others.
    plant("1111111111111111", json("1111111111111111"), 0o777);
    // A state.json writable by others.
    let d = plant("2222222222222222", json("2222222222222222"), 0o700);
    fs::set_permissions(d.join("state.json"), fs::Permissions::from_mode(0o666)).unwrap();
    // Owned by another user.
    let d = plant("3333333333333333", json("3333333333333333"), 0o700);
    std::os::unix::fs::chown(&d, Some(4242), None).unwrap();
    // state.json a symbolic link to a good record.
    let d = plant("4444444444444444", json("4444444444444444"), 0o700);
    fs::remove_file(d.join("state.json")).unwrap();
    std::os::unix::fs::symlink(
        containers.join(good).join("state.json"),
        d.join("state.json"),
    )
    .unwrap();
    // The record directory a symbolic link.
    std::os::unix::fs::symlink(containers.join(good), containers.join("5555555555555555")).unwrap();
    // Too large.
    let mut big = json("6666666666666666");
    big.pop();
    big.push_str(&format!(",\"pad\":\"{}\"}}", "x".repeat(1 << 20)));
    plant("6666666666666666", big, 0o700);
    // A name that is not a container name.
    plant(
        "7777777777777777",
        json("7777777777777777").replace("\"name\":\"n\"", "\"name\":\"../n\""),
        0o700,
    );
    let ids: Vec<String> = read_all(dir.path())
        .unwrap()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(ids, vec![good.to_string()]);
    // A run root writable by others is refused, naming the fix.
    fs::set_permissions(&containers, fs::Permissions::from_mode(0o777)).unwrap();
    let err = read_all(dir.path()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "refusing to trust the runtime directory {p}: it has mode 0777, writable by group or others; it must be a directory owned by root with mode 0700 (fix: chown root:root {p} && chmod 0700 {p}, or remove it)",
            p = containers.display()
        )
    );
    // Owned by another user: refused too.
    fs::set_permissions(&containers, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&containers, Some(4242), None).unwrap();
    assert!(read_all(dir.path())
        .unwrap_err()
        .to_string()
        .contains("it is owned by uid 4242"));
    std::os::unix::fs::chown(&containers, Some(euid()), None).unwrap();
    // Only readable by others (older versions): narrowed to 0700.
    fs::set_permissions(&containers, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(read_all(dir.path()).unwrap().len(), 1);
    assert_eq!(m(&containers), 0o700);
    // `containers` a symbolic link: refused.
    let elsewhere = dir.path().join("elsewhere");
    fs::rename(&containers, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &containers).unwrap();
    assert!(read_all(dir.path())
        .unwrap_err()
        .to_string()
        .contains("it is not a directory (a symlink?)"));
}

#[test]
fn parse_record_checks_id_and_size() {
    let rec = mk("0123456789abcdef");
    let json = serde_json::to_vec(&rec).unwrap();
    assert_eq!(parse_record(&json, "0123456789abcdef"), Some(rec));
    assert_eq!(parse_record(&json, "fedcba9876543210"), None);
    assert_eq!(parse_record(b"\xff{", "0123456789abcdef"), None);
    // Past the size limit even when the prefix is a valid record.
    let mut big = json.clone();
    big.resize(MAX_RECORD as usize + 1, b' ');
    assert_eq!(parse_record(&big, "0123456789abcdef"), None);
}
