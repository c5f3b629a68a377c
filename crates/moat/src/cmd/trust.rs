//! `moat key generate`, `moat sign`, `moat verify`: cosign-format keys and
//! signatures stored in the registry beside the image.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use moat_image::registry::{keys, sign, Reference};

use crate::cmd::registry::RegistryArgs;

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Generate an ECDSA P-256 key pair in cosign's formats: PREFIX.key
    /// (encrypted, mode 0600) and PREFIX.pub.
    #[command(after_help = "Example:
  moat key generate --output-prefix signer --password-file pw
  skopeo copy --sign-by-sigstore-private-key signer.key --sign-passphrase-file pw ...")]
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
pub struct PasswordArgs {
    /// File whose first line is the key's password (else $COSIGN_PASSWORD).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl PasswordArgs {
    fn password(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(f) = &self.password_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("{}: reading the password", f.display()))?;
            return Ok(text.lines().next().unwrap_or("").as_bytes().to_vec());
        }
        match std::env::var_os("COSIGN_PASSWORD") {
            Some(p) => Ok(p.into_encoded_bytes()),
            None => bail!("no key password: pass --password-file FILE or set COSIGN_PASSWORD"),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Writes PREFIX.key and PREFIX.pub.
    #[arg(long, default_value = "cosign")]
    pub output_prefix: PathBuf,
    #[command(flatten)]
    pub password: PasswordArgs,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The signature is stored as cosign stores it: tag sha256-<hex>.sig in the
same repository, a simple-signing payload naming the digest and the
reference, the ECDSA signature in its annotation. podman and skopeo verify
it with a policy.json requirement of type sigstoreSigned."
)]
pub struct SignArgs {
    /// Image in a registry: HOST[:PORT]/NAME[:TAG][@DIGEST].
    pub reference: String,
    /// Private key (cosign's encrypted format).
    #[arg(long)]
    pub key: PathBuf,
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Credentials USER:PASSWORD (else the credentials files).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Image in a registry: HOST[:PORT]/NAME[:TAG][@DIGEST].
    pub reference: String,
    /// Public key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// Credentials USER:PASSWORD (else the credentials files).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn write_new(path: &Path, data: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "{}: creating (an existing key is never overwritten)",
                path.display()
            )
        })?;
    f.write_all(data.as_bytes())
        .with_context(|| format!("{}: writing", path.display()))
}

pub fn key(cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::Generate(a) => {
            let password = a.password.password()?;
            let (private, public) = keys::generate(&password);
            let base = a.output_prefix.as_os_str().to_owned();
            let kp = PathBuf::from({
                let mut b = base.clone();
                b.push(".key");
                b
            });
            let pp = PathBuf::from({
                let mut b = base;
                b.push(".pub");
                b
            });
            write_new(&kp, &private, 0o600)?;
            write_new(&pp, &public, 0o644)?;
            println!("wrote {} and {}", kp.display(), pp.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn sign(a: SignArgs) -> anyhow::Result<ExitCode> {
    let r = Reference::parse(&a.reference)?;
    let key = keys::load_private(&a.key, &a.password.password()?)?;
    let opts = a.registry.client(a.creds.as_deref())?;
    let digest = sign::sign(&r, &key, &opts).context("sign failed")?;
    println!("signed {}@{digest} with {}", r.name(), a.key.display());
    Ok(ExitCode::SUCCESS)
}

pub fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let r = Reference::parse(&a.reference)?;
    let key = keys::load_public(&a.key)?;
    let opts = a.registry.client(a.creds.as_deref())?;
    let v = sign::verify(&r, &key, &opts).context("verify failed")?;
    println!(
        "verified {}@{} (signed as {}) with {}",
        r.name(),
        v.digest,
        v.identity,
        a.key.display()
    );
    Ok(ExitCode::SUCCESS)
}
