//! The image's declared `VOLUME`s as anonymous volumes, and `--read-only`
//! narrowing the policy's root, end to end through the CLI. Needs root;
//! skips with `SKIP:` otherwise.

#[path = "sandbox_common/mod.rs"]
mod common;

use common::images::import_image_with_volumes;
use common::{can_sandbox, stderr, stdout, Env};

/// `moat run --isolation sandbox ARGS... volimg CMD...` (`--` splits).
fn run_image(env: &Env, args: &[&str]) -> std::process::Output {
    let i = args.iter().position(|a| *a == "sh").unwrap();
    let mut full = vec!["run", "--isolation", "sandbox"];
    full.extend(&args[..i]);
    full.push("volimg");
    full.extend(&args[i..]);
    env.moat(&full).output().unwrap()
}

/// The anonymous volumes `moat volume ls --format json` lists.
fn anonymous(env: &Env) -> Vec<serde_json::Value> {
    let out = env.ok(&["volume", "ls", "--format", "json"]);
    let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    all.into_iter()
        .filter(|v| !v["anonymous"].is_null())
        .collect()
}

#[test]
fn declared_volumes_become_anonymous_volumes_where_the_policy_allows_them() {
    if !can_sandbox("declared_volumes_become_anonymous_volumes_where_the_policy_allows_them") {
        return;
    }
    let env = Env::new();
    import_image_with_volumes(&env, &["/home"]);
    let anon = env.policy(
        "anon",
        "  filesystem:\n    named_volumes:\n      - {name: \"anon-*\", read_only: false}\n",
    );
    // Kept after the container stops, as in podman, and gone with `rm -v`.
    let o = run_image(
        &env,
        &[
            "--name",
            "keeps",
            "--policy",
            &anon,
            "sh",
            "-c",
            "echo kept > /home/f && cat /home/f",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "kept\n");
    assert!(!stderr(&o).contains("VOLUME /home"), "{}", stderr(&o));
    let id = env.inspect("keeps")["Id"].as_str().unwrap().to_string();
    let vols = anonymous(&env);
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(vols[0]["name"], format!("anon-{}-0", &id[..12]));
    assert_eq!(vols[0]["anonymous"]["container"], id.as_str());
    env.ok(&["rm", "-v", "keeps"]);
    assert!(anonymous(&env).is_empty());

    // `--rm`: the volume goes with the container.
    let o = run_image(
        &env,
        &["--rm", "--policy", &anon, "sh", "-c", "echo x > /home/f"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(anonymous(&env).is_empty());

    // A read-only grant does not make a writable volume: the notice names
    // the path and the grant that would.
    let ro = env.policy(
        "anonro",
        "  filesystem:\n    named_volumes:\n      - {name: \"anon-*\"}\n",
    );
    let o = run_image(
        &env,
        &["--rm", "--policy", &ro, "sh", "-c", "echo x > /home/f"],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("the image declares VOLUME /home")
            && err.contains("{name: \"anon-*\", read_only: false}"),
        "{err}"
    );
    assert!(anonymous(&env).is_empty());
}

#[test]
fn read_only_flag_narrows_the_root_and_never_widens_it() {
    if !can_sandbox("read_only_flag_narrows_the_root_and_never_widens_it") {
        return;
    }
    let env = Env::new();
    let write = "echo x > /etc/written && cat /etc/written";
    let run = |opts: &[&str]| {
        let mut a = vec!["--rm"];
        a.extend(opts);
        a.extend(["--", "sh", "-c", write]);
        env.run(&a)
    };
    // Under baseline the flag cannot make the root writable.
    let o = run(&["--policy", "baseline", "--read-only=false"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--read-only=false: policy \"baseline\" keeps the root read-only")
            && err.contains("filesystem.root: ephemeral"),
        "{err}"
    );
    // Under an ephemeral policy it may, and `--read-only` takes it back.
    let eph = env.policy("eph", "  filesystem:\n    root: ephemeral\n");
    let o = run(&["--policy", &eph, "--read-only=false"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "x\n");
    for flag in ["--read-only", "--read-only=true"] {
        let o = run(&["--policy", &eph, flag]);
        assert!(!o.status.success(), "{flag}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("Read-only file system"),
            "{flag}: {}",
            stderr(&o)
        );
    }
}

/// In a micro-VM too: the declared volume is an anonymous named volume,
/// attached as a disk and mounted by the agent, and it keeps what the
/// container wrote until `moat rm -v`.
#[test]
fn a_vm_gets_its_declared_volume_as_an_anonymous_volume() {
    let env = Env::new();
    if !common::vm_ready(&env, "a_vm_gets_its_declared_volume_as_an_anonymous_volume") {
        return;
    }
    import_image_with_volumes(&env, &["/home"]);
    let anon = env.policy(
        "anonvm",
        "  filesystem:\n    named_volumes:\n      - {name: \"anon-*\", read_only: false}\n",
    );
    let o = env
        .moat(&[
            "run",
            "-q",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "--name",
            "vmvol",
            "--policy",
            &anon,
            "volimg",
            "sh",
            "-c",
            "echo kept > /home/f && cat /home/f",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "kept\n");
    assert!(!stderr(&o).contains("VOLUME /home"), "{}", stderr(&o));
    let vols = anonymous(&env);
    assert_eq!(vols.len(), 1, "{vols:?}");
    // A VM run in the foreground is removed when it ends; its anonymous
    // volume stays (no --rm) until removed by hand.
    let name = vols[0]["name"].as_str().unwrap().to_string();
    env.ok(&["volume", "rm", &name]);
    assert!(anonymous(&env).is_empty());
}
