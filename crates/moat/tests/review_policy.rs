//! Attacks on moat's authorisation and on its own output, from the outside
//! reviews (issues 11 and 23) and the new-user report (issue 12): a second
//! local user acting through sudo, planted RBAC files and audit-log links,
//! hostile image text on the terminal, exit codes and closed pipes.
//!
//! The site RBAC file is the real default path, `/etc/moat/rbac.yaml`; the
//! tests never write it: each moat call runs in a private mount namespace
//! where an overlay over `/etc` adds the file.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{can_sandbox, stderr, stdout};

/// A host user made for one test (`moat-policy-N`), removed on drop.
struct User {
    name: String,
    uid: u32,
}

impl User {
    fn new(n: u32) -> User {
        let name = format!("moat-policy-{n}");
        let _ = Command::new("userdel").arg(&name).output();
        let out = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd: {}", stderr(&out));
        let out = Command::new("id").args(["-u", &name]).output().unwrap();
        let uid = stdout(&out).trim().parse().unwrap();
        User { name, uid }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A temp dir with a site RBAC file to overlay on `/etc/moat/rbac.yaml`.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(rbac: &str) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("moat-policy-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("upper/moat")).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        let f = dir.path().join("upper/moat/rbac.yaml");
        std::fs::write(&f, rbac).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        Site { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn site_file(&self) -> PathBuf {
        self.path("upper/moat/rbac.yaml")
    }

    /// `moat ARGS` with the site RBAC file in place, as `user` through
    /// sudo (`SUDO_UID`/`SUDO_USER` set) or as root itself.
    fn moat(&self, user: Option<&User>, args: &[&str]) -> Output {
        let d = self.dir.path().display();
        let script = format!(
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/upper,workdir={d}/work /etc && exec \"$0\" \"$@\""
        );
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(env!("CARGO_BIN_EXE_moat"))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .env_remove("SUDO_UID")
            .env_remove("SUDO_USER")
            .env_remove("MOAT_ROOT")
            .env_remove("MOAT_RUN_ROOT");
        if let Some(u) = user {
            c.env("SUDO_UID", u.uid.to_string())
                .env("SUDO_USER", &u.name)
                .env("SUDO_GID", u.uid.to_string());
        }
        c.output().unwrap()
    }
}

/// The review's site RBAC: volumes only under /srv/data; a rootfs only
/// under the test's own directory.
fn site_rbac(user: &User, rootfs_prefix: &str) -> String {
    format!(
        r#"apiVersion: moat.dev/v1
kind: RBAC
roles:
  - name: developer
    grants:
      network: [none, loopback]
      isolation: [vm, sandbox]
      volumes: ["/srv/data"]
      rootfs: ["{rootfs_prefix}"]
  - name: admin
    grants:
      capabilities: [ALL]
      network: [none, loopback, egress, publish]
      isolation: [vm, sandbox]
      volumes: ["/"]
      rootfs: ["/"]
      devices: true
      exec: true
bindings:
  - role: developer
    users: [{}]
  - role: admin
    users: [root]
"#,
        user.name
    )
}

const MINE: &str = r#"apiVersion: moat.dev/v1
kind: RBAC
roles:
  - name: everything
    grants:
      capabilities: [ALL]
      network: [none, loopback, egress, publish]
      isolation: [vm, sandbox]
      volumes: ["/"]
      rootfs: ["/"]
      devices: true
      exec: true
bindings:
  - role: everything
    users: ["*", root]
    groups: [root]
"#;

fn volume_policy(source: &str) -> String {
    format!(
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: hostvol\nspec:\n  extends: baseline\n  filesystem:\n    volumes:\n      - {{source: {source}, path: /hostvol, read_only: true}}\n"
    )
}

fn mine_for(user: &User) -> String {
    MINE.replace("\"*\"", &user.name)
}

#[test]
fn under_sudo_the_site_rbac_decides_volumes_and_rbac_flag_is_ignored() {
    if !can_sandbox("under_sudo_the_site_rbac_decides") {
        return;
    }
    let user = User::new(1);
    let site = Site::new("");
    let rootfs = site.path("rootfs");
    common::busybox_rootfs(&rootfs);
    std::fs::write(
        site.site_file(),
        site_rbac(&user, &site.dir.path().display().to_string()),
    )
    .unwrap();
    std::fs::write(site.path("etc.yaml"), volume_policy("/etc")).unwrap();
    std::fs::write(site.path("mine.yaml"), mine_for(&user)).unwrap();
    let r = rootfs.display().to_string();
    let run = |extra: &[&str]| {
        let mut a = vec!["run", "--isolation", "sandbox", "--policy", "etc.yaml"];
        a.extend_from_slice(extra);
        a.extend(["--rootfs", &r, "/bin/cat", "/hostvol/shadow"]);
        site.moat(Some(&user), &a)
    };
    let refused = format!(
        "  - volume /etc: not granted to {} (roles: developer); role `admin` allows it\n",
        user.name
    );

    // The site RBAC refuses a volume of /etc ...
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains(&refused), "{}", stderr(&out));
    assert!(!stdout(&out).contains("root:"));

    // ... and still does when the user brings their own RBAC file.
    let out = run(&["--rbac", "./mine.yaml"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "moat: notice: ignoring --rbac ./mine.yaml (the site RBAC file /etc/moat/rbac.yaml decides): moat runs for uid {} (SUDO_UID), and only root acting as itself may override moat's settings\n",
            user.uid
        )),
        "{err}"
    );
    assert!(err.contains(&refused), "{err}");
    assert!(!stdout(&out).contains("root:"));

    // A link under a granted prefix is authorised as what it resolves to.
    let data = site.path("data");
    std::fs::create_dir(&data).unwrap();
    symlink("/etc", data.join("link")).unwrap();
    std::fs::write(
        site.site_file(),
        site_rbac(&user, &site.dir.path().display().to_string()).replace(
            "volumes: [\"/srv/data\"]",
            &format!("volumes: [\"{}\"]", data.display()),
        ),
    )
    .unwrap();
    std::fs::write(
        site.path("link.yaml"),
        volume_policy(&data.join("link").display().to_string()),
    )
    .unwrap();
    let out = site.moat(
        Some(&user),
        &[
            "run",
            "--isolation",
            "sandbox",
            "--policy",
            "link.yaml",
            "--rootfs",
            &r,
            "/bin/cat",
            "/hostvol/shadow",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains(&refused), "{}", stderr(&out));
    assert!(!stdout(&out).contains("root:"));

    // mine.yaml would allow it: root acting as itself may choose it.
    let state = site.path("state");
    let out = site.moat(
        None,
        &[
            "--root",
            state.to_str().unwrap(),
            "policy",
            "check",
            "etc.yaml",
            "--as",
            &user.name,
            "--rbac",
            "mine.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Neither --root nor MOAT_* redirect moat under sudo.
    let other = site.path("elsewhere");
    let out = site.moat(
        Some(&user),
        &[
            "--root",
            other.to_str().unwrap(),
            "policy",
            "check",
            "etc.yaml",
        ],
    );
    assert!(
        stderr(&out).contains(&format!(
            "moat: notice: ignoring --root {}: moat runs for uid {} (SUDO_UID)",
            other.display(),
            user.uid
        )),
        "{}",
        stderr(&out)
    );
    assert!(!other.exists(), "the state root was redirected");
    assert!(stdout(&out).contains(&refused), "{}", stdout(&out));
}

#[test]
fn moat_env_overrides_are_ignored_under_sudo() {
    if !can_sandbox("moat_env_overrides_are_ignored_under_sudo") {
        return;
    }
    let user = User::new(2);
    let site = Site::new("");
    std::fs::write(site.site_file(), site_rbac(&user, "/nonexistent")).unwrap();
    let other = site.path("elsewhere");
    let d = site.dir.path().display();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/upper,workdir={d}/work /etc && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_moat"))
        .args(["policy", "check", "baseline"])
        .env("MOAT_ROOT", &other)
        .env("MOAT_AGENT", "/tmp/evil-agent")
        .env("SUDO_UID", user.uid.to_string())
        .env_remove("SUDO_USER")
        .env_remove("MOAT_RUN_ROOT")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("moat: notice: ignoring MOAT_")
            && err.contains("MOAT_ROOT")
            && err.contains("MOAT_AGENT"),
        "{err}"
    );
    assert!(!other.exists(), "MOAT_ROOT redirected the state root");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn rootfs_of_the_host_root_is_refused_and_rootfs_needs_a_grant() {
    if !can_sandbox("rootfs_of_the_host_root_is_refused") {
        return;
    }
    let user = User::new(3);
    let site = Site::new("");
    let rootfs = site.path("rootfs");
    common::busybox_rootfs(&rootfs);
    let r = rootfs.display().to_string();

    // Even a role that grants every rootfs cannot hand out the host's root.
    std::fs::write(site.site_file(), site_rbac(&user, "/")).unwrap();
    for who in [Some(&user), None] {
        let out = site.moat(
            who,
            &[
                "run",
                "--isolation",
                "sandbox",
                "--rootfs",
                "/",
                "sh",
                "-c",
                "head /etc/shadow",
            ],
        );
        assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("moat: error: rootfs \"/\" (--rootfs) is the host's root directory; moat never runs the host's own file system as a container's root"),
            "{}",
            stderr(&out)
        );
        assert!(!stdout(&out).contains("root:"));
    }
    // Nor through the commands that run `moat run` or crun for you.
    for args in [
        &[
            "profile",
            "record",
            "--rootfs",
            "/",
            "--",
            "sh",
            "-c",
            "head /etc/shadow",
        ][..],
        &[
            "surface",
            "measure",
            "--rootfs",
            "/",
            "--isolation",
            "crun",
            "--",
            "head",
            "/etc/shadow",
        ],
    ] {
        let out = site.moat(Some(&user), args);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is the host's root directory"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!stdout(&out).contains("root:"));
    }
    // crun runs under no moat policy: not for a sudo user at all.
    let out = site.moat(
        Some(&user),
        &[
            "surface",
            "measure",
            "--rootfs",
            &r,
            "--isolation",
            "crun",
            "--",
            "/bin/true",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .contains("crun: not measured: crun runs the workload without moat's policy or RBAC"),
        "{}",
        stdout(&out)
    );

    // Nor a parent of the state root.
    let out = site.moat(
        None,
        &[
            "--root",
            site.path("state").to_str().unwrap(),
            "run",
            "--isolation",
            "sandbox",
            "--rootfs",
            site.dir.path().to_str().unwrap(),
            "/bin/true",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(--rootfs) contains moat's state root"),
        "{}",
        stderr(&out)
    );

    // Without a rootfs grant for that directory, the user is refused.
    std::fs::write(site.site_file(), site_rbac(&user, "/srv/rootfs")).unwrap();
    let out = site.moat(
        Some(&user),
        &["run", "--isolation", "sandbox", "--rootfs", &r, "/bin/true"],
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "  - rootfs {r}: not granted to {} (roles: developer); role `admin` allows it\n",
            user.name
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn rbac_file_writable_by_others_is_refused_naming_its_mode() {
    if !can_sandbox("rbac_file_writable_by_others_is_refused_naming_its_mode") {
        return;
    }
    let site = Site::new(MINE);
    let f = site.path("rbac.yaml");
    std::fs::write(&f, MINE).unwrap();
    let check = || {
        site.moat(
            None,
            &[
                "--root",
                site.path("state").to_str().unwrap(),
                "policy",
                "check",
                "baseline",
                "--rbac",
                f.to_str().unwrap(),
            ],
        )
    };
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    let fp = f.display();
    assert_eq!(
        stderr(&out),
        format!("moat: error: RBAC file {fp}: the file {fp} is owned by uid 0 with mode 0666; it must be owned by root and not writable by group or others (chown root:root {fp}; chmod go-w {fp})\n")
    );

    // Owned by another user: refused too, as is a group-writable directory.
    let user = User::new(4);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&f, Some(user.uid), None).unwrap();
    let out = check();
    assert!(
        stderr(&out).contains(&format!("is owned by uid {} with mode 0644", user.uid)),
        "{}",
        stderr(&out)
    );
    std::os::unix::fs::chown(&f, Some(0), None).unwrap();
    let dir = site.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    let out = check();
    assert!(
        stderr(&out).contains(&format!(
            "its directory {} is owned by uid 0 with mode 0770",
            dir.display()
        )),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    // The site file is checked the same way.
    std::fs::set_permissions(site.site_file(), std::fs::Permissions::from_mode(0o646)).unwrap();
    let out = site.moat(
        None,
        &[
            "--root",
            site.path("state").to_str().unwrap(),
            "policy",
            "check",
            "baseline",
        ],
    );
    assert!(
        stderr(&out).contains("RBAC file /etc/moat/rbac.yaml: the file /etc/moat/rbac.yaml is owned by uid 0 with mode 0646"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn audit_log_symlink_is_not_followed() {
    if !can_sandbox("audit_log_symlink_is_not_followed") {
        return;
    }
    let site = Site::new(MINE);
    let state = site.path("state");
    std::fs::create_dir_all(state.join("audit")).unwrap();
    std::fs::set_permissions(state.join("audit"), std::fs::Permissions::from_mode(0o700)).unwrap();
    // The victim: a file only root should write.
    let victim = site.path("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    symlink(&victim, state.join("audit/policy.log")).unwrap();
    let empty_root = site.path("r");
    std::fs::create_dir(&empty_root).unwrap();
    let run = || {
        site.moat(
            None,
            &[
                "--root",
                state.to_str().unwrap(),
                "run",
                "--isolation",
                "sandbox",
                "--rootfs",
                empty_root.to_str().unwrap(),
                "/bin/true",
            ],
        )
    };
    let check = || {
        site.moat(
            None,
            &[
                "--root",
                state.to_str().unwrap(),
                "policy",
                "check",
                "baseline",
            ],
        )
    };
    let out = check();
    let log = state.join("audit/policy.log");
    assert_eq!(
        stderr(&out),
        format!(
            "moat: warning: refusing to append to the audit log {}: it is a symbolic link\n",
            log.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    // `run` refuses outright when the decision cannot be audited.
    let out = run();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("moat: error: refusing to append to the audit log"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");

    // A symlinked audit directory and a hard link are refused too.
    std::fs::remove_file(&log).unwrap();
    std::fs::remove_dir(state.join("audit")).unwrap();
    let elsewhere = site.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, state.join("audit")).unwrap();
    let out = check();
    assert!(
        stderr(&out)
            .contains("is not a directory (a symbolic link or other file was planted there)"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
    std::fs::remove_file(state.join("audit")).unwrap();
    std::fs::create_dir(state.join("audit")).unwrap();
    std::fs::hard_link(&victim, &log).unwrap();
    let out = check();
    assert!(
        stderr(&out).contains("with mode 0644 and 2 link(s)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");

    // A plain log is appended to.
    std::fs::remove_file(&log).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"decision\":\"allow\""), "{text}");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// An OCI layout of the busybox root with a hostile config: a `Cmd` and a
/// ref name full of terminal escape sequences. Returns the layout dir,
/// whose own name holds an escape sequence too (it becomes the source).
fn hostile_image(dir: &std::path::Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let rootfs = dir.join("rootfs");
    common::busybox_rootfs(&rootfs);
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", &rootfs).unwrap();
    let layer = b.into_inner().unwrap();
    let layout = dir.join("evil\x1b]0;pwned\x07layout");
    let blob = |data: &[u8]| {
        let d = hex::encode(Sha256::digest(data));
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(layout.join("blobs/sha256").join(&d), data).unwrap();
        format!("sha256:{d}")
    };
    let ld = blob(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Cmd": ["/bin/sh", "-c", "sleep 60 # \x1b]0;pwned\x07\x1b[2J\u{9b}31m"],
            "Env": ["PATH=/bin"],
            "Labels": {"x": "\x1b[8mhidden"},
        },
        "rootfs": {"type": "layers", "diff_ids": [ld]},
    })
    .to_string();
    let cd = blob(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
    })
    .to_string();
    let md = blob(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "evil\x1b[31m:1"},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout
}

/// No byte a terminal would act on: ESC, BEL, the C1 CSI.
fn assert_inert(what: &str, text: &str) {
    assert!(
        !text.contains(['\x1b', '\x07', '\u{9b}']),
        "{what} reached the terminal raw: {text:?}"
    );
}

#[test]
fn escape_sequences_from_images_are_not_printed_raw() {
    if !can_sandbox("escape_sequences_from_images_are_not_printed_raw") {
        return;
    }
    let env = common::Env::new();
    let work = env.dir.path().join("hostile");
    std::fs::create_dir(&work).unwrap();
    let layout = hostile_image(&work);
    let out = env
        .moat(&[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "hostile",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_inert("import", &stdout(&out));
    for args in [
        &["image", "ls"][..],
        &["image", "inspect", "hostile"],
        &["image", "inspect", "hostile", "--format", "json"],
        &["image", "ls", "--format", "json"],
    ] {
        let out = env.moat(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_inert(&format!("{args:?}"), &stdout(&out));
        assert_inert(&format!("{args:?}"), &stderr(&out));
    }
    let inspect = stdout(&env.moat(&["image", "inspect", "hostile"]).output().unwrap());
    assert!(
        inspect.contains("evil\\x1b]0;pwned\\x07layout"),
        "{inspect}"
    );
    assert!(inspect.contains("x=\\x1b[8mhidden"), "{inspect}");

    // `moat ps` prints the image's Cmd of a running container.
    let mut child = env
        .moat(&[
            "run",
            "--isolation",
            "sandbox",
            "--name",
            "hostile",
            "hostile",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ps = String::new();
    for _ in 0..100 {
        let out = env.moat(&["ps"]).output().unwrap();
        ps = stdout(&out);
        if ps.contains("hostile") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let json = stdout(&env.moat(&["ps", "--format", "json"]).output().unwrap());
    let _ = env.moat(&["kill", "hostile"]).output();
    let _ = child.wait();
    assert!(ps.contains("hostile"), "the container never appeared: {ps}");
    assert!(
        ps.contains("sleep 60 # \\x1b]0;pwned\\x07\\x1b[2J\\u{9b}31m"),
        "{ps}"
    );
    assert_inert("moat ps", &ps);
    assert_inert("moat ps --format json", &json);
    let states: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(states.to_string().contains("pwned"));

    // Error text quoting the image's command.
    let out = env
        .moat(&[
            "run",
            "--isolation",
            "sandbox",
            "hostile",
            "/bin/no\x1b]0;pwned\x07such",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert_inert("a run error", &stderr(&out));
    assert!(stderr(&out).contains("pwned"), "{}", stderr(&out));
}

#[test]
fn failures_before_the_workload_exit_125() {
    if !can_sandbox("failures_before_the_workload_exit_125") {
        return;
    }
    let env = common::Env::new();
    let code = |o: &Output| o.status.code();
    // The workload's own exit 1 stays 1.
    let out = env.run(&["--", "sh", "-c", "exit 1"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));

    let cases: Vec<(Output, &str)> = vec![
        (
            env.moat(&["run", "--isolation", "sandbox", "no-such-image", "true"])
                .output()
                .unwrap(),
            "moat: error: ",
        ),
        (
            env.run(&["--user", "nosuchuser", "--", "true"]),
            "nosuchuser",
        ),
        (
            env.run(&["--policy", "/nonexistent/p.yaml", "--", "true"]),
            "moat: error: cannot read policy file /nonexistent/p.yaml",
        ),
        (
            env.moat(&["run", "--bogus", "img"]).output().unwrap(),
            "unexpected argument '--bogus'",
        ),
        (
            env.moat(&["profile", "record", "no-such-image", "--", "true"])
                .output()
                .unwrap(),
            "moat: error: ",
        ),
        (
            env.moat(&["profile", "record", "--bogus"])
                .output()
                .unwrap(),
            "unexpected argument '--bogus'",
        ),
        (
            env.moat(&["surface", "measure", "no-such-image", "--", "true"])
                .output()
                .unwrap(),
            "moat: error: ",
        ),
    ];
    for (i, (out, text)) in cases.iter().enumerate() {
        assert_eq!(code(out), Some(125), "case {i}: {}", stderr(out));
        assert!(stderr(out).contains(text), "case {i}: {}", stderr(out));
    }
    // Commands that run nothing keep 1 for failure, 2 for usage.
    let out = env
        .moat(&["image", "inspect", "no-such-image"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let out = env.moat(&["image", "--bogus"]).output().unwrap();
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    let out = env.moat(&["run", "--help"]).output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
}

/// `moat ARGS | head -0`: the reader is gone before moat writes.
fn with_closed_stdout(mut c: Command) -> (std::process::ExitStatus, String) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (out.status, stderr(&out))
}

#[test]
fn no_command_panics_on_a_closed_pipe() {
    use std::os::unix::process::ExitStatusExt;
    let env = common::Env::new();
    std::fs::write(
        env.dir.path().join("web.yaml"),
        "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: web\nspec:\n  extends: baseline\n  capabilities: [NET_BIND_SERVICE]\n",
    )
    .unwrap();
    let web = env.dir.path().join("web.yaml");
    let web = web.to_str().unwrap();
    let rootfs = env.rootfs.to_str().unwrap().to_string();
    let mut commands: Vec<Vec<&str>> = vec![
        vec!["policy", "diff", "baseline", "restricted"],
        vec!["policy", "diff", "baseline", web, "--format", "json"],
        vec!["policy", "explain", "baseline"],
        vec!["policy", "check", "baseline"],
        vec!["policy", "compile", "baseline", "--format", "bpf-asm"],
        vec!["policy", "compile", "baseline", "--format", "seccomp-json"],
        vec!["policy", "export", "baseline", "--k8s"],
        vec!["surface", "restricted"],
        vec!["image", "ls"],
        vec!["ps"],
        vec!["image", "ls", "--format", "json"],
        vec![
            "profile",
            "static",
            "--rootfs",
            &rootfs,
            "--entrypoint",
            "/bin/busybox",
        ],
        vec!["--help"],
        vec!["run", "--help"],
    ];
    if can_sandbox("no_command_panics_on_a_closed_pipe (run)") {
        commands.push(vec![
            "run",
            "--isolation",
            "sandbox",
            "--rootfs",
            &rootfs,
            "sh",
            "-c",
            "yes",
        ]);
    }
    for args in &commands {
        let (status, err) = with_closed_stdout(env.moat(args));
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(status.code(), Some(101), "{args:?}: {err}");
        // Either it ended quietly on SIGPIPE, or it had nothing left to
        // write; `run` reports whatever the workload made of the closed
        // pipe (its exit status, or 128+SIGPIPE).
        let ok = status.signal() == Some(libc_sigpipe())
            || status.success()
            || (args[0] == "run" && status.code().is_some());
        assert!(ok, "{args:?}: {status:?}: {err}");
    }
}

fn libc_sigpipe() -> i32 {
    13
}

#[test]
fn podman_spellings_are_accepted() {
    let env = common::Env::new();
    // `moat images` is `moat image ls`.
    let ls = env.moat(&["image", "ls"]).output().unwrap();
    let images = env.moat(&["images"]).output().unwrap();
    assert!(images.status.success(), "{}", stderr(&images));
    assert_eq!(stdout(&images), stdout(&ls));
    assert!(stdout(&images).starts_with("NAME"), "{}", stdout(&images));
    let q = env
        .moat(&["images", "-q", "--format", "json"])
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", stderr(&q));
    let help = stdout(&env.moat(&["run", "--help"]).output().unwrap());
    assert!(help.contains("--rm"), "{help}");
    assert!(
        help.contains("Remove the container when it stops"),
        "{help}"
    );
    assert!(help.contains("-d, --detach"), "{help}");
    assert!(help.contains("--entrypoint <CMD>"), "{help}");
    if !can_sandbox("podman_spellings_are_accepted (run)") {
        return;
    }
    let out = env.run(&["--rm", "--entrypoint", "/bin/echo", "--", "hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello\n");
    let out = env.run(&["--entrypoint", r#"["/bin/sh","-c"]"#, "--", "echo $((6*7))"]);
    assert_eq!(stdout(&out), "42\n", "{}", stderr(&out));
}
