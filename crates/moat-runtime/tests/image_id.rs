//! The image ID in container records is typed (`ImageId`) and keeps the
//! string form records have always had: records written before it load
//! and are written back byte for byte the same; a malformed value is
//! refused, naming it and the forms accepted.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use moat_image::digest::Digest;
use moat_runtime::record::{self, Record};
use moat_runtime::{ImageId, Isolation, Status};

const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A `state.json` as moat wrote it before the image ID was typed.
fn old_record(id: &str, image_id: &str) -> String {
    format!(
        r#"{{
  "version": 1,
  "id": "{id}",
  "name": "web",
  "status": "stopped",
  "image_id": "{image_id}",
  "pid": 0,
  "isolation": "sandbox",
  "created": "2026-11-25T14:06:08Z",
  "command": [
    "sh",
    "-c",
    "true"
  ],
  "pid_start_time": 0,
  "supervisor_pid": 0,
  "supervisor_start_time": 0,
  "cgroups": [],
  "userns_owner": 1879048192,
  "policy_digest": "sha256:ab",
  "exit_code": 0,
  "exit_time": "2026-11-25T14:06:09Z",
  "monitor_pid": 0,
  "monitor_start_time": 0,
  "boot_id": "b",
  "auto_remove": false,
  "creator_pid": 0,
  "creator_start_time": 0
}}"#
    )
}

#[test]
fn an_old_record_with_a_digest_loads_and_round_trips() {
    let text = old_record("c0ffee00c0ffee00", DIGEST);
    let r: Record = serde_json::from_str(&text).unwrap();
    assert_eq!(r.image_id, ImageId::Digest(Digest::parse(DIGEST).unwrap()));
    assert_eq!(r.image_id.digest().map(Digest::hex), Some(&DIGEST[7..]));
    assert_eq!(r.image_id.to_string(), DIGEST);
    assert_eq!(r.status, Status::Stopped);
    assert_eq!(serde_json::to_string_pretty(&r).unwrap(), text);
}

#[test]
fn an_old_record_of_a_rootfs_loads_and_round_trips() {
    let text = old_record("c0ffee00c0ffee00", "rootfs:/srv/roots/busybox");
    let r: Record = serde_json::from_str(&text).unwrap();
    assert_eq!(
        r.image_id,
        ImageId::Rootfs(PathBuf::from("/srv/roots/busybox"))
    );
    assert_eq!(r.image_id.digest(), None);
    assert_eq!(serde_json::to_string_pretty(&r).unwrap(), text);
    // The vm backend's version-0 form.
    let v0: Record = serde_json::from_str(&format!(
        r#"{{"id":"00112233aabbccdd","name":"v","image_id":"{DIGEST}","pid":1,"isolation":"vm","created":"x"}}"#
    ))
    .unwrap();
    assert_eq!((v0.version, v0.isolation), (0, Isolation::Vm));
    assert_eq!(v0.image_id.to_string(), DIGEST);
}

#[test]
fn a_malformed_image_id_is_refused_naming_it() {
    for bad in [
        "sha256:00",
        "sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
        "sha512:00",
        "latest",
        "rootfs:",
        "rootfs:relative/dir",
        "",
    ] {
        let want = format!(
            "invalid image ID {bad:?}: expected sha256:<64 lowercase hex digits> (an image config digest) or rootfs:<absolute directory>"
        );
        assert_eq!(ImageId::parse(bad).unwrap_err().to_string(), want);
        let err = serde_json::from_str::<Record>(&old_record("c0ffee00c0ffee00", bad))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&want), "{bad:?}: {err}");
    }
    // Not a string at all.
    let err = serde_json::from_str::<ImageId>("42")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("invalid type: integer `42`"), "{err}");
}

#[test]
fn the_one_reader_loads_old_records_from_disk() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIP: needs root (the run root must be root-owned)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let run = d.path();
    record::ensure_dirs(run).unwrap();
    let containers = record::containers_dir(run);
    for (id, image_id) in [
        ("c0ffee00c0ffee00", DIGEST),
        ("c0ffee00c0ffee01", "rootfs:/srv/roots/busybox"),
    ] {
        let dir = containers.join(id);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.join("state.json");
        std::fs::write(
            &file,
            old_record(id, image_id).replace("\"web\"", &format!("\"w{}\"", &id[15..])),
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let all = record::read_all(run).unwrap();
    let ids: Vec<String> = all.iter().map(|r| r.image_id.to_string()).collect();
    assert_eq!(ids, [DIGEST, "rootfs:/srv/roots/busybox"]);
    // Written back by the one writer, read again: the same record.
    for r in &all {
        record::write(run, r).unwrap();
    }
    assert_eq!(record::read_all(run).unwrap(), all);
}
