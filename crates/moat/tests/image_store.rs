//! Store behaviour over time: rm (and its in-use check), prune, export to
//! the real skopeo and podman, concurrent commands, and kill -9 mid-import.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn test_image(root: &Path, dir: &Path) -> std::path::PathBuf {
    let ar = dir.join("bb.oci.tar");
    if !ar.exists() {
        ok(root, &["dev", "test-image", "-o", s(&ar)]);
    }
    ar
}

fn ls_json(root: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&ok(root, &["image", "ls", "--format", "json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn rm_refuses_while_a_container_uses_the_image() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let ar = test_image(&root, t.path());
    ok(&root, &["image", "import", s(&ar)]);
    let id = ls_json(&root)[0]["config_digest"]
        .as_str()
        .unwrap()
        .to_string();
    // A record the runtime core's reader trusts (its directory is named by
    // a container ID equal to its `id`) ...
    let state_dir = root.join("containers/c1c1c1c1c1c1c1c1");
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(
        state_dir.join("state.json"),
        format!(r#"{{"id":"c1c1c1c1c1c1c1c1","name":"web","image_id":"{id}","pid":1,"isolation":"sandbox","created":"2026-01-01T00:00:00Z"}}"#),
    )
    .unwrap();
    // ... and one it does not (not an ID): only the first blocks.
    let planted = root.join("containers/c1");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(
        planted.join("state.json"),
        format!(r#"{{"id":"c1","name":"evil","image_id":"{id}","pid":1,"isolation":"sandbox","created":"2026-01-01T00:00:00Z"}}"#),
    )
    .unwrap();
    let err = fails(&root, &["image", "rm", "busybox"]);
    assert_eq!(
        err.trim_end(),
        format!(
            "moat: error: image busybox:latest is used by container web (state in {}); remove it first (moat rm -f web) or pass --force",
            state_dir.join("state.json").display()
        )
    );
    assert_eq!(ls_json(&root).len(), 1);
    let out = ok(&root, &["image", "rm", "--force", "busybox"]);
    assert_eq!(out, format!("untagged busybox:latest\nremoved {id}\n"));
    assert!(ls_json(&root).is_empty());
    assert_eq!(
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "blobs removed"
    );
    assert_eq!(
        std::fs::read_dir(root.join("rootfs")).unwrap().count(),
        0,
        "rootfs removed"
    );
    let err = fails(&root, &["image", "rm", "busybox"]);
    assert_eq!(
        err.trim_end(),
        "moat: error: no image matches \"busybox\" (see `moat image ls`)"
    );
}

#[test]
fn rm_of_one_name_untags_and_prune_removes_unnamed() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let ar = test_image(&root, t.path());
    ok(&root, &["image", "import", s(&ar)]);
    ok(&root, &["image", "import", s(&ar), "--name", "second"]);
    assert_eq!(
        ok(&root, &["image", "rm", "second"]),
        "untagged second:latest\n"
    );
    assert_eq!(
        ls_json(&root)[0]["names"],
        serde_json::json!(["busybox:latest"])
    );

    // Moving a name to a new image leaves the old one unnamed: prune takes it.
    let raw = tar(&[file("x", b"x")]);
    let p = t.path().join("other.tar");
    std::fs::write(&p, &raw).unwrap();
    ok(&root, &["image", "import", s(&p), "--name", "busybox"]);
    let images = ls_json(&root);
    assert_eq!(images.len(), 2);
    let out: serde_json::Value =
        serde_json::from_str(&ok(&root, &["image", "prune", "--format", "json"])).unwrap();
    assert_eq!(out["images"].as_array().unwrap().len(), 1);
    assert_eq!(
        out["blobs"], 5,
        "manifest, config and three layers of the test image"
    );
    let images = ls_json(&root);
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["names"], serde_json::json!(["busybox:latest"]));
    assert_eq!(images[0]["layers"].as_array().unwrap().len(), 1);
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn export_is_read_by_skopeo_and_podman() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let ar = test_image(&root, t.path());
    ok(&root, &["image", "import", s(&ar)]);
    let img = ls_json(&root)[0].clone();
    let out = t.path().join("export.tar");
    assert_eq!(
        ok(&root, &["image", "export", "busybox", "-o", s(&out)]),
        format!("exported busybox:latest to {}\n", out.display())
    );
    // Round trip through moat itself.
    let root2 = t.path().join("root2");
    let back: serde_json::Value = serde_json::from_str(&ok(
        &root2,
        &["image", "import", s(&out), "--format", "json"],
    ))
    .unwrap();
    assert_eq!(back["manifest_digest"], img["manifest_digest"]);
    assert_eq!(back["names"], serde_json::json!(["busybox:latest"]));

    if !have("skopeo") {
        println!("SKIP: skopeo not installed (scripts/bootstrap installs it)");
    } else {
        let o = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", out.display()))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["Digest"], img["manifest_digest"]);
        assert_eq!(j["Layers"].as_array().unwrap().len(), 3);
        assert_eq!(j["Architecture"], "amd64");
    }
    if !have("podman") {
        println!("SKIP: podman not installed (scripts/bootstrap installs it)");
        return;
    }
    let proot = t.path().join("podman-root");
    let prun = t.path().join("podman-run");
    let podman = |args: &[&str]| {
        Command::new("podman")
            .arg("--root")
            .arg(&proot)
            .arg("--runroot")
            .arg(&prun)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap()
    };
    let o = podman(&["load", "-i", s(&out)]);
    assert!(
        o.status.success(),
        "podman load: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Loaded image: localhost/busybox:latest"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "localhost/busybox:latest",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        &img["config_digest"].as_str().unwrap()[7..]
    );
    // Clean podman's vfs layers (they may be read-only directories).
    let _ = podman(&["rmi", "-a", "-f"]);
}

#[test]
fn concurrent_imports_and_removals_keep_the_store_consistent() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let ar = test_image(&root, t.path());
    let raw = tar(&[dir("etc"), file("etc/other", b"x")]);
    let other = t.path().join("other.tar.gz");
    std::fs::write(&other, gzip(&raw)).unwrap();
    let bin = env!("CARGO_BIN_EXE_moat");
    let run = |args: Vec<String>| {
        let root = root.clone();
        std::thread::spawn(move || {
            for _ in 0..6 {
                let _ = Command::new(bin)
                    .arg("--root")
                    .arg(&root)
                    .args(&args)
                    .output()
                    .unwrap();
            }
        })
    };
    let threads = vec![
        run(vec![
            "image".into(),
            "import".into(),
            s(&ar).into(),
            "--name".into(),
            "a".into(),
        ]),
        run(vec![
            "image".into(),
            "import".into(),
            s(&ar).into(),
            "--name".into(),
            "b".into(),
        ]),
        run(vec![
            "image".into(),
            "import".into(),
            s(&other).into(),
            "--name".into(),
            "a".into(),
        ]),
        run(vec!["image".into(), "rm".into(), "a".into()]),
        run(vec!["image".into(), "prune".into()]),
    ];
    for th in threads {
        th.join().unwrap();
    }
    // Every image listed is whole: its blobs exist and hash to their names,
    // its rootfs exists, and nothing is left in staging.
    for img in ls_json(&root) {
        let mut digests = vec![
            img["manifest_digest"].as_str().unwrap().to_string(),
            img["config_digest"].as_str().unwrap().to_string(),
        ];
        digests.extend(
            img["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string()),
        );
        for d in digests {
            let data = std::fs::read(root.join("blobs/sha256").join(&d[7..]))
                .unwrap_or_else(|e| panic!("blob {d}: {e}"));
            assert_eq!(sha256(&data), d);
        }
        assert!(root
            .join("rootfs")
            .join(&img["manifest_digest"].as_str().unwrap()[7..])
            .is_dir());
    }
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

#[test]
fn kill_9_mid_import_leaves_nothing_visible_and_next_command_cleans() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let ar = test_image(&root, t.path());
    ok(&root, &["image", "import", s(&ar)]);
    let before = ok(&root, &["image", "ls", "--format", "json"]);
    // A large rootfs tarball, so that the import is still running when the
    // staging directory appears.
    let big = t.path().join("big.tar");
    {
        let f = std::fs::File::create(&big).unwrap();
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        let mut h = tar::Header::new_gnu();
        h.set_size(256 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(
            &mut h,
            "big",
            std::io::Read::take(std::io::repeat(7), 256 << 20),
        )
        .unwrap();
        b.finish().unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(&root)
        .args(["image", "import", s(&big)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let staged = loop {
        // Wait until the staging directory holds its lock (see lock.rs).
        let locked = std::fs::read_dir(root.join("tmp"))
            .unwrap()
            .flatten()
            .any(|e| {
                !e.file_name().to_string_lossy().starts_with(".init-")
                    && e.path().join(".lock").exists()
            });
        if locked {
            break true;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(staged, "the import finished before it could be killed");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).unwrap().count(),
        1,
        "the killed import left its staging directory"
    );
    // The next command sees the old store and removes the leftovers.
    assert_eq!(ok(&root, &["image", "ls", "--format", "json"]), before);
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "staging cleaned by the next command"
    );
}
