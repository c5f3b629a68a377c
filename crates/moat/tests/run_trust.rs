//! `moat run` enforces the policy's image rules on images already in the
//! store, against where each came from and the signature kept with it:
//! a signed image pulled under the policy runs; an image pulled without
//! its signature, a changed stored signature, a file imported under a
//! trusted name and a tag under `require_digest` are refused before
//! anything starts. Real registry (docker-registry on 127.0.0.1).

#[path = "registry_common/mod.rs"]
mod registry_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use registry_common::{have_tools, Registry, PASSWORD, USER};

fn moat(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(dir.join("state"))
        .args(args)
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"))
        .env("HOME", dir)
        .env_remove("COSIGN_PASSWORD")
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = moat(dir, args);
    assert!(
        o.status.success(),
        "moat {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// `moat run` refused: non-zero, nothing ran, the error returned.
fn refused(dir: &Path, policy: &Path, image: &str) -> String {
    let o = moat(
        dir,
        &[
            "run",
            "--rm",
            "--isolation",
            "sandbox",
            "--policy",
            policy.to_str().unwrap(),
            image,
            "echo",
            "RAN",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success() && !out.contains("RAN"),
        "{image} ran: {out}"
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn runs(dir: &Path, policy: &Path, image: &str) {
    let said = ok(
        dir,
        &[
            "run",
            "--rm",
            "--isolation",
            "sandbox",
            "--policy",
            policy.to_str().unwrap(),
            image,
            "echo",
            "RAN",
        ],
    );
    assert_eq!(said, "RAN\n");
}

fn policy(dir: &Path, name: &str, image: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  extends: baseline\n  image:\n{image}"),
    )
    .unwrap();
    p
}

#[test]
fn run_enforces_the_image_rules_of_the_policy() {
    if !have_tools("run_enforces_the_image_rules_of_the_policy") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let reg = Registry::start(&dir.join("registry"));
    let host = reg.host();
    let certs = reg.certs.to_str().unwrap().to_string();
    let creds = format!("{USER}:{PASSWORD}");
    std::fs::write(dir.join("pw"), "key password\n").unwrap();
    let pw = dir.join("pw");
    let prefix = dir.join("signer");
    ok(
        dir,
        &[
            "key",
            "generate",
            "--output-prefix",
            prefix.to_str().unwrap(),
            "--password-file",
            pw.to_str().unwrap(),
        ],
    );
    let public = dir.join("signer.pub");
    let tar = dir.join("bb.oci.tar");
    ok(dir, &["dev", "test-image", "-o", tar.to_str().unwrap()]);
    let src = format!("oci-archive:{}", tar.display());
    reg.skopeo_push(&src, "trust/signed:1", &[]);
    // The same image under another name (same digest), and another image
    // (Docker's manifest format: another digest).
    reg.skopeo_push(&src, "trust/copy:1", &[]);
    reg.skopeo_push(&src, "trust/unsigned:1", &["--format", "v2s2"]);
    let signed = format!("{host}/trust/signed:1");
    let copy = format!("{host}/trust/copy:1");
    let unsigned = format!("{host}/trust/unsigned:1");
    ok(
        dir,
        &[
            "sign",
            &signed,
            "--key",
            dir.join("signer.key").to_str().unwrap(),
            "--password-file",
            pw.to_str().unwrap(),
            "--cert-dir",
            &certs,
            "--creds",
            &creds,
        ],
    );
    let signers = policy(
        dir,
        "signers.yaml",
        &format!(
            "    signers:\n      - repository: \"{host}/trust/*\"\n        key: {}\n",
            public.display()
        ),
    );
    let pull = |r: &str, policy: Option<&Path>| {
        let mut args = vec!["pull", "-q", r, "--cert-dir", &certs, "--creds", &creds];
        if let Some(p) = policy {
            args.extend(["--policy", p.to_str().unwrap()]);
        }
        ok(dir, &args);
    };

    // Signed, pulled under the policy: its signature is kept and runs.
    pull(&signed, Some(&signers));
    runs(dir, &signers, &signed);

    // Pulled without the policy: no signature kept, refused by run.
    pull(&unsigned, None);
    let e = refused(dir, &signers, &unsigned);
    assert!(
        e.contains(&format!(
            "image {unsigned}: refused by the policy {}: spec.image.signers requires a signature of sha256:",
            signers.display()
        )) && e.contains("no signature is stored with the image")
            && e.contains("moat pull --policy"),
        "{e}"
    );

    // The signature names the repository: the same image pulled under
    // another name does not borrow it.
    pull(&copy, None);
    let e = refused(dir, &signers, &copy);
    assert!(
        e.contains(&format!(
            "signs it as \"{signed}\", not as {host}/trust/copy"
        )),
        "{e}"
    );

    // A changed stored signature is refused (checked offline, again).
    let images = dir.join("state/images");
    let sigs: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".signatures.json"))
        .collect();
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sigs[0]).unwrap()).unwrap();
    let mut s = v[0]["signature"].as_str().unwrap().to_string();
    let i = s.len() / 2;
    let c = if &s[i..i + 1] == "A" { "B" } else { "A" };
    s.replace_range(i..i + 1, c);
    v[0]["signature"] = serde_json::Value::String(s);
    std::fs::write(&sigs[0], serde_json::to_vec(&v).unwrap()).unwrap();
    let e = refused(dir, &signers, &signed);
    assert!(e.contains("not signed by this key"), "{e}");

    // A file imported under a trusted name does not pass `allowed`.
    let allowed = policy(
        dir,
        "allowed.yaml",
        &format!("    allowed: [\"{host}/trust/*\"]\n"),
    );
    runs(dir, &allowed, &unsigned);
    let fake = format!("{host}/trust/imported:1");
    ok(
        dir,
        &["image", "import", tar.to_str().unwrap(), "--name", &fake],
    );
    let e = refused(dir, &allowed, &fake);
    assert!(
        e.contains("apply to images pulled from a registry, and this one came from"),
        "{e}"
    );

    // require_digest: the tag is refused, the pinned reference runs.
    let pinned = policy(dir, "pinned.yaml", "    require_digest: true\n");
    let e = refused(dir, &pinned, &unsigned);
    assert!(e.contains("spec.image.require_digest"), "{e}");
    let digest = reg.skopeo_digest("trust/unsigned:1");
    runs(dir, &pinned, &format!("{host}/trust/unsigned@{digest}"));
}
