//! `moat pull`, `moat login/logout` against a real registry (Debian's
//! docker-registry on 127.0.0.1, TLS from a test CA, htpasswd auth), with
//! images pushed there by skopeo; the pulled image runs.

#[path = "registry_common/mod.rs"]
mod registry_common;
#[path = "sandbox_common/mod.rs"]
mod sandbox_common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use registry_common::{have_tools, Registry, PASSWORD, USER};
use sandbox_common::{can_sandbox, Env};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct T {
    env: Env,
    reg: Registry,
    authfile: std::path::PathBuf,
}

impl T {
    fn new() -> T {
        let env = Env::new();
        let reg = Registry::start(&env.dir.path().join("registry"));
        let authfile = env.dir.path().join("auth/auth.json");
        T { env, reg, authfile }
    }

    fn moat(&self, args: &[&str]) -> Command {
        let mut c = self.env.moat(args);
        c.env("REGISTRY_AUTH_FILE", &self.authfile)
            .env("HOME", self.env.dir.path())
            .env_remove("XDG_RUNTIME_DIR");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.moat(args).output().unwrap();
        assert!(o.status.success(), "moat {args:?}: {}", err(&o));
        out(&o)
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.moat(args).output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "moat {args:?} should fail: {}",
            out(&o)
        );
        err(&o)
    }

    fn push_test_image(&self, name: &str) -> String {
        let tar = self.env.dir.path().join("busybox.oci.tar");
        if !tar.exists() {
            self.ok(&["dev", "test-image", "-o", tar.to_str().unwrap()]);
        }
        self.reg
            .skopeo_push(&format!("oci-archive:{}", tar.display()), name, &[]);
        self.reg.skopeo_digest(name)
    }

    fn login(&self) -> String {
        let mut c = self.moat(&[
            "login",
            &self.reg.host(),
            "-u",
            USER,
            "--password-stdin",
            "--cert-dir",
            self.reg.certs.to_str().unwrap(),
        ]);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "login: {}", err(&o));
        out(&o)
    }
}

#[test]
fn skopeo_pushed_image_is_pulled_after_login_and_runs() {
    if !have_tools("skopeo_pushed_image_is_pulled_after_login_and_runs")
        || !can_sandbox("skopeo_pushed_image_is_pulled_after_login_and_runs")
    {
        return;
    }
    let t = T::new();
    let host = t.reg.host();
    let digest = t.push_test_image("test/busybox:1");
    let reference = format!("{host}/test/busybox:1");
    let certs = t.reg.certs.to_str().unwrap();

    // No credentials: refused, naming the reference and the remedy.
    let e = t.fails(&["pull", &reference, "--cert-dir", certs]);
    assert_eq!(
        e,
        format!("moat: error: pull failed: {reference}: {host} refused access; log in first (moat login) or pass --creds USER:PASSWORD\n")
    );
    // Wrong password.
    let e = t.fails(&[
        "pull",
        &reference,
        "--cert-dir",
        certs,
        "--creds",
        &format!("{USER}:wrong"),
    ]);
    assert!(
        e.contains("refused access with the credentials given"),
        "{e}"
    );

    // The CA is not trusted without --cert-dir: a TLS error, nothing stored.
    let e = t.fails(&["pull", &reference, "--creds", &format!("{USER}:{PASSWORD}")]);
    assert!(
        e.starts_with(&format!(
            "moat: error: pull failed: {reference}: https://{host}/v2/: "
        )),
        "{e}"
    );
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    assert!(!t.env.state_root().join("images/names.json").exists());

    // moat login writes the credentials file (0600), verified first.
    let said = t.login();
    assert_eq!(
        said,
        format!("Login Succeeded ({host} in {})\n", t.authfile.display())
    );
    let mode = std::fs::metadata(&t.authfile).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&t.authfile).unwrap()).unwrap();
    assert!(doc["auths"][&host]["auth"].is_string(), "{doc}");

    let pulled = t.ok(&["pull", &reference, "--cert-dir", certs]);
    assert!(
        pulled.starts_with(&format!("pulled {reference}@{digest} (image ID sha256:")),
        "{pulled}"
    );
    let ls = t.ok(&["image", "ls", "--format", "json"]);
    let images: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let names = images[0]["names"].to_string();
    assert!(names.contains(&format!("\"{reference}\"")), "{names}");
    assert!(
        names.contains(&format!("\"{host}/test/busybox@{digest}\"")),
        "{names}"
    );
    assert_eq!(
        images[0]["source"].as_str(),
        Some(format!("docker://{reference}@{digest}").as_str())
    );

    // The pulled image runs, by tag and by the digest recorded at pull.
    let o = t
        .moat(&["run", "--isolation", "sandbox", &reference, "echo", "hi"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "hi\n");
    let o = t
        .moat(&[
            "run",
            "--isolation",
            "sandbox",
            &format!("{host}/test/busybox@{digest}"),
            "echo",
            "pinned",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "pinned\n");

    // Pull by digest; a second pull downloads nothing new and is the same image.
    let again = t.ok(&[
        "pull",
        "-q",
        &format!("{host}/test/busybox@{digest}"),
        "--cert-dir",
        certs,
    ]);
    assert!(pulled.contains(again.trim()), "{again} / {pulled}");

    // --tls-verify=false pulls without the CA.
    t.ok(&["pull", &reference, "--tls-verify=false"]);

    // Unknown tag: 404 named.
    let e = t.fails(&[
        "pull",
        &format!("{host}/test/busybox:nope"),
        "--cert-dir",
        certs,
    ]);
    assert!(
        e.starts_with(&format!("moat: error: pull failed: {host}/test/busybox:nope: not found in the registry (HTTP 404)")),
        "{e}"
    );

    // logout removes the entry; a second logout says so.
    assert_eq!(
        t.ok(&["logout", &host]),
        format!("Removed login credentials for {host}\n")
    );
    let e = t.fails(&["logout", &host]);
    assert_eq!(
        e,
        format!(
            "moat: error: {}: not logged in to {host} (no entry in this file)\n",
            t.authfile.display()
        )
    );
    let e = t.fails(&["pull", &reference, "--cert-dir", certs]);
    assert!(e.contains("refused access; log in first"), "{e}");
}

#[test]
fn docker_config_json_credentials_and_platform_flag() {
    if !have_tools("docker_config_json_credentials_and_platform_flag") {
        return;
    }
    let t = T::new();
    let host = t.reg.host();
    t.push_test_image("lib/bb:latest");
    // Credentials from ~/.docker/config.json when no auth.json exists.
    let docker = t.env.dir.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    use base64_encode as b64;
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"https://{host}":{{"auth":"{}"}}}}}}"#,
            b64(&format!("{USER}:{PASSWORD}"))
        ),
    )
    .unwrap();
    let certs = t.reg.certs.to_str().unwrap();
    let o = t.ok(&["pull", &format!("{host}/lib/bb"), "--cert-dir", certs]);
    assert!(
        o.starts_with(&format!("pulled {host}/lib/bb:latest@sha256:")),
        "{o}"
    );
    let e = t.fails(&[
        "pull",
        &format!("{host}/lib/bb"),
        "--platform",
        "linux/arm64",
    ]);
    assert_eq!(
        e,
        "moat: error: pull failed: --platform linux/arm64: moat runs linux/amd64 images only\n"
    );
}

fn base64_encode(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut o = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                o.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

#[test]
fn moat_pushed_image_is_pulled_by_skopeo_podman_and_moat() {
    if !have_tools("moat_pushed_image_is_pulled_by_skopeo_podman_and_moat") {
        return;
    }
    let t = T::new();
    let host = t.reg.host();
    let certs = t.reg.certs.to_str().unwrap();
    let creds = format!("{USER}:{PASSWORD}");
    let tar = t.env.dir.path().join("busybox.oci.tar");
    t.ok(&["dev", "test-image", "-o", tar.to_str().unwrap()]);
    t.ok(&["image", "import", tar.to_str().unwrap()]);
    let inspect: serde_json::Value =
        serde_json::from_str(&t.ok(&["image", "inspect", "busybox", "--format", "json"])).unwrap();
    let manifest = inspect["manifest_digest"].as_str().unwrap().to_string();

    let reference = format!("{host}/pushed/busybox:v1");
    // Without credentials the registry refuses the push.
    let e = t.fails(&["push", "busybox", &reference, "--cert-dir", certs]);
    assert!(e.contains("refused access; log in first"), "{e}");
    let said = t.ok(&[
        "push",
        "busybox",
        &reference,
        "--cert-dir",
        certs,
        "--creds",
        &creds,
    ]);
    let blobs = inspect["layers"].as_array().unwrap().len() + 1;
    assert_eq!(
        said,
        format!("pushed busybox to {reference}@{manifest} ({blobs} blobs uploaded)\n")
    );
    // Again: every blob is already there.
    let said = t.ok(&[
        "push",
        "busybox",
        &reference,
        "--cert-dir",
        certs,
        "--creds",
        &creds,
    ]);
    assert!(said.ends_with("(0 blobs uploaded)\n"), "{said}");
    // A pinned digest that is not the image's is refused.
    let other = format!("{host}/pushed/busybox@sha256:{}", "0".repeat(64));
    let e = t.fails(&[
        "push",
        "busybox",
        &other,
        "--cert-dir",
        certs,
        "--creds",
        &creds,
    ]);
    assert!(
        e.contains("is not the digest the reference names") || e.contains(", not the digest"),
        "{e}"
    );

    // skopeo reads it back, digest for digest, into an OCI layout.
    assert_eq!(t.reg.skopeo_digest("pushed/busybox:v1"), manifest);
    let layout = t.env.dir.path().join("skopeo-layout");
    let o = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-cert-dir",
            certs,
            "--src-creds",
            &creds,
        ])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:v1", layout.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo copy: {}", err(&o));
    // ... which moat imports as the same image.
    let root2 = t.env.dir.path().join("state2");
    let o = Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(&root2)
        .args([
            "image",
            "import",
            layout.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["manifest_digest"].as_str(), Some(manifest.as_str()));

    // podman pulls it (with the test CA and credentials) and runs it.
    if Command::new("podman").arg("--version").output().is_ok() {
        let o = Command::new("podman")
            .args([
                "pull",
                "-q",
                "--cert-dir",
                certs,
                "--creds",
                &creds,
                &reference,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "podman pull: {}", err(&o));
        let o = Command::new("podman")
            .args(["image", "inspect", "--format", "{{.Digest}}", &reference])
            .output()
            .unwrap();
        let podman_digest = out(&o).trim().to_string();
        let _ = Command::new("podman")
            .args(["rmi", "-f", &reference])
            .output();
        assert_eq!(podman_digest, manifest);
    }

    // And moat pulls it into a fresh store: same manifest.
    let o = Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(t.env.dir.path().join("state3"))
        .args(["pull", &reference, "--cert-dir", certs, "--creds", &creds])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains(&format!("manifest {manifest})")),
        "{}",
        out(&o)
    );
}

/// Rewrites the OCI layout at `dir` (one image) so that its config claims
/// `diff_id` for the first layer: blobs still match their digests, the
/// layer's content does not match the config.
fn claim_wrong_diff_id(dir: &std::path::Path, diff_id: &str) {
    use sha2::Digest;
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        std::fs::write(blob(&d), bytes).unwrap();
        (d, bytes.len())
    };
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mdesc = &mut index["manifests"][0];
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(mdesc["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    config["rootfs"]["diff_ids"][0] = diff_id.into();
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    mdesc["digest"] = md.into();
    mdesc["size"] = ms.into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn pull_stores_verified_blobs_and_unpacks_at_first_use() {
    if !have_tools("pull_stores_verified_blobs_and_unpacks_at_first_use")
        || !can_sandbox("pull_stores_verified_blobs_and_unpacks_at_first_use")
    {
        return;
    }
    let t = T::new();
    let host = t.reg.host();
    t.push_test_image("lazy/busybox:1");
    let certs = t.reg.certs.to_str().unwrap();
    let creds = format!("{USER}:{PASSWORD}");
    let rootfs = t.env.state_root().join("rootfs");
    let unpacked = || std::fs::read_dir(&rootfs).map(|d| d.count()).unwrap_or(0);

    // Pulled: blobs and record, no root file system yet.
    let reference = format!("{host}/lazy/busybox:1");
    t.ok(&[
        "pull",
        "-q",
        &reference,
        "--cert-dir",
        certs,
        "--creds",
        &creds,
    ]);
    assert_eq!(unpacked(), 0);
    // The first run unpacks it (and it runs).
    let o = t
        .moat(&["run", "--isolation", "sandbox", &reference, "echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(out(&o), "hi\n", "{}", err(&o));
    assert_eq!(unpacked(), 1);

    // --unpack: unpacked by the pull (another image: Docker's format).
    t.reg.skopeo_push(
        &format!(
            "oci-archive:{}",
            t.env.dir.path().join("busybox.oci.tar").display()
        ),
        "lazy/v2s2:1",
        &["--format", "v2s2"],
    );
    t.ok(&[
        "pull",
        "-q",
        "--unpack",
        &format!("{host}/lazy/v2s2:1"),
        "--cert-dir",
        certs,
        "--creds",
        &creds,
    ]);
    assert_eq!(unpacked(), 2);

    // A config whose diff ID the layer does not match: every blob matches
    // its digest, so the pull stores it; the first run verifies the layer
    // as it unpacks it, refuses, and leaves no root file system.
    let layout = t.env.dir.path().join("hostile-layout");
    std::fs::create_dir_all(&layout).unwrap();
    let o = Command::new("tar")
        .arg("-xf")
        .arg(t.env.dir.path().join("busybox.oci.tar"))
        .arg("-C")
        .arg(&layout)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let claimed = format!("sha256:{}", "ab".repeat(32));
    claim_wrong_diff_id(&layout, &claimed);
    t.reg
        .skopeo_push(&format!("oci:{}", layout.display()), "lazy/hostile:1", &[]);
    let hostile = format!("{host}/lazy/hostile:1");
    t.ok(&[
        "pull",
        "-q",
        &hostile,
        "--cert-dir",
        certs,
        "--creds",
        &creds,
    ]);
    let o = t
        .moat(&["run", "--isolation", "sandbox", &hostile, "echo", "RAN"])
        .output()
        .unwrap();
    assert!(!o.status.success() && !out(&o).contains("RAN"));
    assert!(err(&o).contains(&claimed), "{}", err(&o));
    assert_eq!(unpacked(), 2, "a refused layer left a root file system");
    // With --unpack the same image is refused by the pull itself.
    t.ok(&["image", "rm", &hostile]);
    let e = t.fails(&[
        "pull",
        "--unpack",
        &hostile,
        "--cert-dir",
        certs,
        "--creds",
        &creds,
    ]);
    assert!(e.contains(&claimed), "{e}");
}
