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

/// `moat` on the test's state root and credentials; with `trust`, the
/// host trust file at that path (`MOAT_TRUST`: honoured for root acting as
/// itself only).
fn moat_with(dir: &Path, trust: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moat"));
    c.arg("--root")
        .arg(dir.join("state"))
        .args(args)
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"))
        .env("HOME", dir)
        .env_remove("COSIGN_PASSWORD");
    if let Some(t) = trust {
        c.env("MOAT_TRUST", t);
    }
    c.output().unwrap()
}

fn moat(dir: &Path, args: &[&str]) -> Output {
    moat_with(dir, None, args)
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

/// `moat run --rm --isolation sandbox --policy POLICY IMAGE echo RAN`.
fn run_echo(dir: &Path, policy: &Path, image: &str) -> Output {
    let policy = policy.to_str().unwrap();
    moat(
        dir,
        &[
            "run",
            "--rm",
            "--isolation",
            "sandbox",
            "--policy",
            policy,
            image,
            "echo",
            "RAN",
        ],
    )
}

/// `moat run` refused: non-zero, nothing ran, the error returned.
fn refused(dir: &Path, policy: &Path, image: &str) -> String {
    let o = run_echo(dir, policy, image);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success() && !out.contains("RAN"),
        "{image} ran: {out}"
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn runs(dir: &Path, policy: &Path, image: &str) {
    let o = run_echo(dir, policy, image);
    assert!(
        o.status.success(),
        "{image}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "RAN\n");
}

/// A plain rootfs tarball: an image no registry holds.
fn other_image(dir: &Path) -> PathBuf {
    let tar = dir.join("other-rootfs.tar");
    let o = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(dir)
        .arg("pw")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tar
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

/// A registry with `trust/signed:1` (signed by `signer.key`),
/// `trust/copy:1` (the same image, unsigned under that name) and
/// `trust/unsigned:1` (another image).
struct Env {
    reg: Registry,
    host: String,
    certs: String,
    creds: String,
    public: PathBuf,
    tar: PathBuf,
}

fn setup(dir: &Path) -> Env {
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
    let tar = dir.join("bb.oci.tar");
    ok(dir, &["dev", "test-image", "-o", tar.to_str().unwrap()]);
    let src = format!("oci-archive:{}", tar.display());
    reg.skopeo_push(&src, "trust/signed:1", &[]);
    // The same image under another name (same digest), and another image
    // (Docker's manifest format: another digest).
    reg.skopeo_push(&src, "trust/copy:1", &[]);
    reg.skopeo_push(&src, "trust/unsigned:1", &["--format", "v2s2"]);
    ok(
        dir,
        &[
            "sign",
            &format!("{host}/trust/signed:1"),
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
    Env {
        reg,
        host,
        certs,
        creds,
        public: dir.join("signer.pub"),
        tar,
    }
}

#[test]
fn run_enforces_the_image_rules_of_the_policy() {
    if !have_tools("run_enforces_the_image_rules_of_the_policy") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let Env {
        reg,
        host,
        certs,
        creds,
        public,
        tar: _,
    } = setup(dir);
    let signed = format!("{host}/trust/signed:1");
    let copy = format!("{host}/trust/copy:1");
    let unsigned = format!("{host}/trust/unsigned:1");
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
            "image {unsigned}: refused by the policy {}: signers: a signature of sha256:",
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
        &[
            "image",
            "import",
            other_image(dir).to_str().unwrap(),
            "--name",
            &fake,
        ],
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

fn moat_t(dir: &Path, trust: &Path, args: &[&str]) -> Output {
    moat_with(dir, Some(trust), args)
}

#[test]
fn host_trust_roots_bind_every_pull_and_run_and_need_their_own_grant() {
    if !have_tools("host_trust_roots_bind_every_pull_and_run_and_need_their_own_grant") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let env = setup(dir);
    let (host, certs, creds) = (&env.host, &env.certs, &env.creds);
    let trust = dir.join("etc/trust.yaml");
    let signed = format!("{host}/trust/signed:1");
    let unsigned = format!("{host}/trust/unsigned:1");
    let pull = |r: &str| {
        moat_t(
            dir,
            &trust,
            &["pull", "-q", r, "--cert-dir", certs, "--creds", creds],
        )
    };
    let run = |image: &str| {
        moat_t(
            dir,
            &trust,
            &[
                "run",
                "--rm",
                "--isolation",
                "sandbox",
                "--policy",
                "baseline",
                image,
                "echo",
                "RAN",
            ],
        )
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // No trust file: any source, as before.
    let o = pull(&unsigned);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = moat_t(dir, &trust, &["image", "trust", "show"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no trust file at"));

    // Changing the trust roots is the RBAC grant `trust`: a role without
    // it is refused (exit 125, audited), one with it may.
    let rbac = |name: &str, trust_grant: bool| {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!("apiVersion: moat.dev/v1\nkind: RBAC\nroles:\n  - name: ops\n    grants:\n      network: [none, loopback]\n      isolation: [sandbox]\n      trust: {trust_grant}\nbindings:\n  - role: ops\n    users: [root]\n"),
        )
        .unwrap();
        p
    };
    let no_grant = rbac("rbac-no.yaml", false);
    let grant = rbac("rbac-yes.yaml", true);
    let public = env.public.to_str().unwrap();
    let scope = format!("{host}/trust/*");
    let set = |rbac: &Path, args: &[&str]| {
        let mut a = vec!["image", "trust", "set", "--rbac", rbac.to_str().unwrap()];
        a.extend(args);
        moat_t(dir, &trust, &a)
    };
    let o = set(
        &no_grant,
        &["--type", "signedBy", "--pubkeysfile", public, &scope],
    );
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("trust (changing the host's trust roots): not granted to root"),
        "{}",
        stderr(&o)
    );
    assert!(!trust.exists(), "a refused change wrote the trust file");
    let log = std::fs::read_to_string(dir.join("state/audit/policy.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"action\":\"trust\"") && l.contains("\"decision\":\"deny\"")),
        "{log}"
    );
    let o = set(
        &grant,
        &["--type", "signedBy", "--pubkeysfile", public, &scope],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let shown: serde_json::Value = serde_json::from_slice(
        &moat_t(dir, &trust, &["image", "trust", "show", "--format", "json"]).stdout,
    )
    .unwrap();
    assert_eq!(shown["image"]["allowed"][0], scope.as_str(), "{shown}");
    assert_eq!(shown["image"]["signers"][0]["key"], public, "{shown}");
    // `moat policy explain` says what the host adds to any policy.
    let o = moat_t(dir, &trust, &["policy", "explain", "baseline"]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!(
            "  host trust    {}: accept {scope} signed by {public}\n",
            trust.display()
        )),
        "{said}"
    );

    // Now every pull and run needs the signer, whatever the policy says.
    let o = pull(&unsigned);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!(
            "refused by the trust file {}: signers: a signature of sha256:",
            trust.display()
        )),
        "{}",
        stderr(&o)
    );
    let o = run(&unsigned);
    assert!(!o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("RAN"));
    assert!(
        stderr(&o).contains("refused by the trust file")
            && stderr(&o).contains("no signature is stored with the image"),
        "{}",
        stderr(&o)
    );
    let o = pull(&signed);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&signed);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "RAN\n",
        "{}",
        stderr(&o)
    );
    // The signed content imported again from a file keeps its registry
    // origin (same digest, same content): it still runs.
    let again = format!("{host}/trust/again:1");
    let o = moat_t(
        dir,
        &trust,
        &[
            "image",
            "import",
            env.tar.to_str().unwrap(),
            "--name",
            &again,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&again);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "RAN\n",
        "{}",
        stderr(&o)
    );
    // Other content imported under a trusted name is not from a trusted
    // source.
    let fake = format!("{host}/trust/imported:1");
    let o = moat_t(
        dir,
        &trust,
        &[
            "image",
            "import",
            other_image(dir).to_str().unwrap(),
            "--name",
            &fake,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&fake);
    assert!(
        !o.status.success() && stderr(&o).contains("apply to images pulled from a registry"),
        "{}",
        stderr(&o)
    );

    // A trust file others could change is refused, naming the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&trust, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = run(&signed);
    assert!(
        !o.status.success()
            && stderr(&o).contains("it must be owned by root and not writable by group or others"),
        "{}",
        stderr(&o)
    );
    std::fs::set_permissions(&trust, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Rejecting the last source leaves nothing accepted.
    let o = set(&grant, &["--type", "reject", &scope]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&signed);
    assert!(
        !o.status.success() && stderr(&o).contains("it accepts no image source"),
        "{}",
        stderr(&o)
    );
}
