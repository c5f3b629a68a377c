//! `moat key generate`, `moat sign`, `moat verify`, interoperating with
//! skopeo 1.9's sigstore signatures on a real registry (docker-registry on
//! 127.0.0.1): skopeo signs with a moat key and moat verifies; moat signs
//! and skopeo's `sigstoreSigned` policy accepts it, and refuses it once the
//! signature is changed.

#[path = "registry_common/mod.rs"]
mod registry_common;

use std::path::Path;
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

fn fails(dir: &Path, args: &[&str]) -> String {
    let o = moat(dir, args);
    assert_eq!(o.status.code(), Some(1), "moat {args:?} should fail");
    String::from_utf8(o.stderr).unwrap()
}

/// skopeo with a registries.d that turns sigstore attachments on.
fn skopeo(dir: &Path, args: &[&str]) -> Output {
    let regd = dir.join("registries.d");
    std::fs::create_dir_all(&regd).unwrap();
    std::fs::write(
        regd.join("default.yaml"),
        "default-docker:\n  use-sigstore-attachments: true\n",
    )
    .unwrap();
    Command::new("skopeo")
        .arg("--registries.d")
        .arg(&regd)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn signatures_interoperate_with_skopeo() {
    if !have_tools("signatures_interoperate_with_skopeo") {
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
    let pw = pw.to_str().unwrap();

    // Keys: the private one 0600, both in cosign's PEM types.
    let prefix = dir.join("signer");
    let said = ok(
        dir,
        &[
            "key",
            "generate",
            "--output-prefix",
            prefix.to_str().unwrap(),
            "--password-file",
            pw,
        ],
    );
    assert_eq!(
        said,
        format!("wrote {0}.key and {0}.pub\n", prefix.display())
    );
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("signer.key");
    let public = dir.join("signer.pub");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"));
    assert!(std::fs::read_to_string(&public)
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    let e = fails(
        dir,
        &[
            "key",
            "generate",
            "--output-prefix",
            prefix.to_str().unwrap(),
            "--password-file",
            pw,
        ],
    );
    assert!(e.contains("an existing key is never overwritten"), "{e}");
    let other = dir.join("other");
    ok(
        dir,
        &[
            "key",
            "generate",
            "--output-prefix",
            other.to_str().unwrap(),
            "--password-file",
            pw,
        ],
    );

    let tar = dir.join("bb.oci.tar");
    ok(dir, &["dev", "test-image", "-o", tar.to_str().unwrap()]);
    let src = format!("oci-archive:{}", tar.display());
    let base = [
        "--dest-cert-dir",
        certs.as_str(),
        "--dest-creds",
        creds.as_str(),
    ];

    // 1. Unsigned: moat verify refuses.
    reg.skopeo_push(&src, "trust/unsigned:1", &[]);
    let r_unsigned = format!("{host}/trust/unsigned:1");
    let e = fails(
        dir,
        &[
            "verify",
            &r_unsigned,
            "--key",
            public.to_str().unwrap(),
            "--cert-dir",
            &certs,
            "--creds",
            &creds,
        ],
    );
    assert!(
        e.contains("signature check of sha256:") && e.contains(": no signatures (no sha256-"),
        "{e}"
    );

    // 2. skopeo signs with the moat-generated key; moat verifies.
    let r_skopeo = format!("{host}/trust/by-skopeo:1");
    let mut args = vec!["--insecure-policy", "copy", "--quiet"];
    args.extend(base);
    args.extend([
        "--sign-by-sigstore-private-key",
        key.to_str().unwrap(),
        "--sign-passphrase-file",
        pw,
    ]);
    let dest = format!("docker://{r_skopeo}");
    args.extend([src.as_str(), dest.as_str()]);
    let o = skopeo(dir, &args);
    // Debian's skopeo 1.9 is built with sigstore disabled ("Debian-local
    // change: sigstore disabled"): the interoperability checks then skip.
    let sigstore = !String::from_utf8_lossy(&o.stderr).contains("sigstore disabled");
    if sigstore {
        assert!(
            o.status.success(),
            "skopeo sign: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let said = ok(
            dir,
            &[
                "verify",
                &r_skopeo,
                "--key",
                public.to_str().unwrap(),
                "--cert-dir",
                &certs,
                "--creds",
                &creds,
            ],
        );
        assert!(
            said.starts_with(&format!("verified {host}/trust/by-skopeo@sha256:")),
            "{said}"
        );
        assert!(said.contains(&format!("(signed as {r_skopeo})")), "{said}");
        // ... and not with another key.
        let e = fails(
            dir,
            &[
                "verify",
                &r_skopeo,
                "--key",
                dir.join("other.pub").to_str().unwrap(),
                "--cert-dir",
                &certs,
                "--creds",
                &creds,
            ],
        );
        assert!(e.contains("not signed by this key"), "{e}");
    } else {
        println!(
            "SKIP (part): this skopeo cannot sign with sigstore keys: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }

    // 3. moat signs; skopeo's sigstoreSigned policy with the public key accepts.
    reg.skopeo_push(&src, "trust/by-moat:1", &[]);
    let r_moat = format!("{host}/trust/by-moat:1");
    let e = fails(
        dir,
        &[
            "sign",
            &r_moat,
            "--key",
            key.to_str().unwrap(),
            "--password-file",
            pw,
            "--cert-dir",
            &certs,
        ],
    );
    assert!(e.contains("refused access"), "{e}");
    let wrong_pw = dir.join("wrong");
    std::fs::write(&wrong_pw, "nope\n").unwrap();
    let e = fails(
        dir,
        &[
            "sign",
            &r_moat,
            "--key",
            key.to_str().unwrap(),
            "--password-file",
            wrong_pw.to_str().unwrap(),
        ],
    );
    assert_eq!(
        e,
        format!(
            "moat: error: {}: wrong password, or the key file is damaged\n",
            key.display()
        )
    );
    let said = ok(
        dir,
        &[
            "sign",
            &r_moat,
            "--key",
            key.to_str().unwrap(),
            "--password-file",
            pw,
            "--cert-dir",
            &certs,
            "--creds",
            &creds,
        ],
    );
    let digest = said
        .split('@')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        said,
        format!(
            "signed {host}/trust/by-moat@{digest} with {}\n",
            key.display()
        )
    );
    ok(
        dir,
        &[
            "verify",
            &r_moat,
            "--key",
            public.to_str().unwrap(),
            "--cert-dir",
            &certs,
            "--creds",
            &creds,
        ],
    );

    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{host}/trust":[{{"type":"sigstoreSigned","keyPath":"{}","signedIdentity":{{"type":"matchRepoDigestOrExact"}}}}]}},"dir":{{"":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#,
            public.display()
        ),
    )
    .unwrap();
    let skopeo_pull = |r: &str, out: &str| {
        skopeo(
            dir,
            &[
                "--policy",
                policy.to_str().unwrap(),
                "copy",
                "--quiet",
                "--src-cert-dir",
                &certs,
                "--src-creds",
                &creds,
                &format!("docker://{r}"),
                &format!("dir:{}", dir.join(out).display()),
            ],
        )
    };
    let o = skopeo_pull(&r_moat, "pulled-moat");
    if sigstore {
        assert!(
            o.status.success(),
            "skopeo refused moat's signature: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The unsigned image is refused by the same policy (the policy bites).
    let o = skopeo_pull(&r_unsigned, "pulled-unsigned");
    assert!(!o.status.success());
    // moat refuses a valid signature by another key.
    let e = fails(
        dir,
        &[
            "verify",
            &r_moat,
            "--key",
            dir.join("other.pub").to_str().unwrap(),
            "--cert-dir",
            &certs,
            "--creds",
            &creds,
        ],
    );
    assert!(e.contains("not signed by this key"), "{e}");

    // 4. A policy requiring signer keys: moat pull enforces it.
    let trust_policy = |name: &str, key: &Path| {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                "apiVersion: moat.dev/v1\nkind: Policy\nmetadata: {{name: trust}}\nspec:\n  extends: baseline\n  image:\n    signers:\n      - repository: \"{host}/trust/*\"\n        key: {}\n",
                key.display()
            ),
        )
        .unwrap();
        p
    };
    let ours = trust_policy("ours.yaml", &public);
    let theirs = trust_policy("theirs.yaml", &dir.join("other.pub"));
    let pull = |r: &str, policy: &Path| {
        moat(
            dir,
            &[
                "pull",
                r,
                "--policy",
                policy.to_str().unwrap(),
                "--cert-dir",
                &certs,
                "--creds",
                &creds,
            ],
        )
    };
    let o = pull(&r_moat, &ours);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = pull(&r_unsigned, &ours);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.starts_with(&format!("moat: error: pull failed: {r_unsigned}: refused by the policy {}: signers: a signature of sha256:", ours.display()))
            && e.contains(&format!("is required: {}: ", public.display()))
            && e.contains("no signatures"),
        "{e}"
    );
    let o = pull(&r_moat, &theirs);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!(
            "refused by the policy {}: signers",
            theirs.display()
        )) && e.contains("not signed by this key"),
        "{e}"
    );
    // Nothing was stored by the refused pulls (only the accepted image).
    let ls: serde_json::Value =
        serde_json::from_str(&ok(dir, &["image", "ls", "--format", "json"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");

    // 5. Change the signature: both skopeo and moat refuse.
    let sig_ref = format!("{host}/trust/by-moat:sha256-{}.sig", &digest[7..]);
    let o = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--cert-dir",
            &certs,
            "--creds",
            &creds,
            &format!("docker://{sig_ref}"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ann = &mut m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"];
    let mut s = ann.as_str().unwrap().to_string();
    // Flip one base64 digit in the middle of the DER signature.
    let i = s.len() / 2;
    let c = if &s[i..i + 1] == "A" { "B" } else { "A" };
    s.replace_range(i..i + 1, c);
    *ann = serde_json::Value::String(s);
    let body = dir.join("sig.json");
    std::fs::write(&body, serde_json::to_vec(&m).unwrap()).unwrap();
    let o = Command::new("curl")
        .args([
            "-sf",
            "--cacert",
            &format!("{certs}/ca.crt"),
            "-u",
            &creds,
            "-X",
            "PUT",
        ])
        .args([
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!(
            "https://{host}/v2/trust/by-moat/manifests/sha256-{}.sig",
            &digest[7..]
        ))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = skopeo_pull(&r_moat, "pulled-tampered");
    assert!(!o.status.success(), "skopeo accepted a changed signature");
    let _ = sigstore;
    let e = fails(
        dir,
        &[
            "verify",
            &r_moat,
            "--key",
            public.to_str().unwrap(),
            "--cert-dir",
            &certs,
            "--creds",
            &creds,
        ],
    );
    assert!(e.contains("not signed by this key"), "{e}");
    let o = pull(&r_moat, &ours);
    assert_eq!(o.status.code(), Some(1), "a changed signature still pulled");
}
