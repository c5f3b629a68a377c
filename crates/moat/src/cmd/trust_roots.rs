//! `moat image trust show|set`: the host's trust roots (podman's `image
//! trust` words). Changing them is the RBAC grant `trust`, audited as
//! `trust`; the file is written whole, staged and renamed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use moat_policy::rbac::Request;
use moat_policy::trust::TrustRoots;

use crate::cmd::image::Format;
use crate::cmd::image_trust::trust_path;
use crate::global::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum TrustCommand {
    /// Show which image sources and signers this host accepts.
    Show(ShowArgs),
    /// Accept a source, require a signer for it, or stop accepting it.
    #[command(after_help = "SCOPE is HOST/REPO exactly, or a prefix ending in `*`
(`registry.internal:5000/prod/*`). Once a trust file exists, only the
sources it accepts are pulled or run, whatever the policy says; each
policy's own image rules apply on top.

Examples:
  moat image trust set --type accept 'registry.internal:5000/*'
  moat image trust set --type signedBy --pubkeysfile release.pub 'registry.internal:5000/prod/*'
  moat image trust set --type reject 'registry.internal:5000/*'

Changing the trust roots needs the RBAC grant `trust` (docs/trust.md).")]
    Set(SetArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrustType {
    /// Accept images from SCOPE.
    Accept,
    /// Accept images from SCOPE signed by --pubkeysfile.
    #[value(name = "signedBy")]
    SignedBy,
    /// Stop accepting SCOPE (as it was written when accepted).
    Reject,
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    #[arg(long = "type", short = 't', value_enum)]
    pub kind: TrustType,
    /// Public key (PEM, cosign's `.pub`) for `--type signedBy`.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub pubkeysfile: Option<PathBuf>,
    /// RBAC file (root acting as itself only; default /etc/moat/rbac.yaml).
    #[arg(long, value_name = "FILE")]
    pub rbac: Option<PathBuf>,
    pub scope: String,
}

pub fn run(global: &GlobalArgs, cmd: TrustCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TrustCommand::Show(a) => show(a),
        TrustCommand::Set(a) => set(global, a),
    }
}

fn show(a: ShowArgs) -> anyhow::Result<ExitCode> {
    let path = trust_path();
    let roots = TrustRoots::load(&path)?;
    if a.format == Format::Json {
        let v = match &roots {
            None => serde_json::json!({ "file": path, "exists": false }),
            Some(t) => serde_json::json!({ "file": path, "exists": true, "image": t.image }),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(t) = roots else {
        println!(
            "no trust file at {}: any source is accepted (each policy's image rules still apply)",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    println!("{:<44} {:<9} KEY", "SCOPE", "TYPE");
    for scope in &t.image.allowed {
        let keys: Vec<&str> = t
            .image
            .signers
            .iter()
            .filter(|r| &r.repository == scope)
            .map(|r| r.key.as_str())
            .collect();
        match keys.is_empty() {
            true => println!("{scope:<44} {:<9} -", "accept"),
            false => println!("{scope:<44} {:<9} {}", "signedBy", keys.join(", ")),
        }
    }
    for r in t
        .image
        .signers
        .iter()
        .filter(|r| !t.image.allowed.contains(&r.repository))
    {
        println!("{:<44} {:<9} {}", r.repository, "signedBy", r.key);
    }
    if t.image.allowed.is_empty() {
        println!("(no source is accepted)");
    }
    if t.image.require_digest {
        println!("images must be named by digest (require_digest)");
    }
    Ok(ExitCode::SUCCESS)
}

fn set(global: &GlobalArgs, a: SetArgs) -> anyhow::Result<ExitCode> {
    let path = trust_path();
    let mut roots = TrustRoots::load(&path)?.unwrap_or_else(|| TrustRoots {
        source: path.display().to_string(),
        image: Default::default(),
    });
    check_scope(&a.scope)?;
    match a.kind {
        TrustType::Accept => roots.accept(&a.scope, None),
        TrustType::SignedBy => {
            let Some(f) = &a.pubkeysfile else {
                bail!("--type signedBy needs --pubkeysfile FILE (a PEM public key, e.g. from `moat key generate`)");
            };
            moat_image::registry::keys::load_public(f)
                .with_context(|| format!("--pubkeysfile {}", f.display()))?;
            let abs =
                std::path::absolute(f).with_context(|| format!("--pubkeysfile {}", f.display()))?;
            roots.accept(&a.scope, Some(&abs.display().to_string()));
        }
        TrustType::Reject => {
            if !roots.reject(&a.scope) {
                bail!(
                    "{}: {} is not accepted there (see `moat image trust show`)",
                    path.display(),
                    a.scope
                );
            }
        }
    }
    let text = roots.render();
    let who = crate::cmd::policy::invoking_principal(global);
    let digest = moat_image::digest::sha256_of(text.as_bytes());
    let decision = crate::cmd::policy::authorize_requests(
        global,
        "trust",
        &who,
        a.rbac.as_deref(),
        &[Request::Trust],
        &path.display().to_string(),
        &digest,
    )?;
    if !decision.allowed {
        eprintln!(
            "moat: error: changing the trust roots {}: refused for {}:",
            path.display(),
            who.name
        );
        for r in &decision.reasons {
            eprintln!("  - {r}");
        }
        return Ok(ExitCode::from(125));
    }
    write_atomic(&path, text.as_bytes())?;
    println!("{}: {:?} {}", path.display(), a.kind, a.scope);
    Ok(ExitCode::SUCCESS)
}

fn check_scope(scope: &str) -> anyhow::Result<()> {
    let bare = scope.strip_suffix('*').unwrap_or(scope);
    if scope.is_empty()
        || bare.contains('*')
        || scope.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        bail!("scope {scope:?}: write HOST/REPO, or a prefix ending in `*` (e.g. `registry.internal:5000/*`)");
    }
    Ok(())
}

/// Stage beside the file, then rename: a reader sees the old file or the
/// new one, never half of one. Mode 0644, root's (the loader checks).
fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::from(e).context(format!("writing {}", path.display()))
    })
}
