//! `moat pull`, `moat push`, `moat login`, `moat logout`: registries.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use moat_image::import::{NoProgress, Progress};
use moat_image::registry::{
    self, auth, ClientOptions, Credentials, PullOptions, Reference, RegistriesConf, SignerGroup,
};
use moat_image::{Limits, Store, UnpackOptions};

use crate::cmd::image_trust::RuleSet;
use crate::global::GlobalArgs;

/// How to reach a registry; shared by pull, push and login.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Verify the registry's TLS certificate. `--tls-verify=false` also
    /// allows plain HTTP.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
    /// A directory of `*.crt` CA certificates to trust for this registry,
    /// besides the system roots and /etc/containers/certs.d/HOST/.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Credentials file to read (default: $REGISTRY_AUTH_FILE, then
    /// ${XDG_RUNTIME_DIR}/containers/auth.json, then ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Seconds to wait for a connection or for any data before giving up.
    #[arg(
        long,
        default_value_t = 30,
        value_name = "SECONDS",
        env = "MOAT_REGISTRY_TIMEOUT"
    )]
    pub timeout: u64,
    /// Per-registry settings and mirrors (registries.conf format). Default:
    /// $CONTAINERS_REGISTRIES_CONF, else /etc/containers/registries.conf.
    #[arg(long, value_name = "FILE")]
    pub registries_conf: Option<PathBuf>,
}

impl RegistryArgs {
    fn registries(&self) -> anyhow::Result<RegistriesConf> {
        Ok(
            match self
                .registries_conf
                .clone()
                .or_else(registry::config::default_path)
            {
                Some(p) => RegistriesConf::load(&p)?,
                None => RegistriesConf::default(),
            },
        )
    }

    pub fn client(&self, creds: Option<&str>) -> anyhow::Result<ClientOptions> {
        let credentials = match creds {
            Some(c) => Some(
                Credentials::parse(c)
                    .with_context(|| "--creds: expected USER:PASSWORD".to_string())?,
            ),
            None => None,
        };
        Ok(ClientOptions {
            tls_verify: self.tls_verify,
            cert_dirs: self.cert_dir.iter().cloned().collect(),
            credentials,
            auth_files: match &self.authfile {
                Some(f) => vec![f.clone()],
                None => auth::auth_files(),
            },
            timeout: Duration::from_secs(self.timeout.max(1)),
            ..ClientOptions::default()
        })
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat pull alpine                      # docker.io/library/alpine:latest
  moat pull quay.io/org/app:1.2 --creds user:token
  moat pull 127.0.0.1:5000/test/busybox --cert-dir ./certs

Multi-platform indexes resolve to linux/amd64. Every blob is checked
against its digest before it is stored; the image is stored atomically
under REGISTRY/REPO:TAG and REGISTRY/REPO@DIGEST. As `skopeo copy`, the
pull stores the verified blobs; the root file system is unpacked (every
layer verified again) at first use, and the package inventory is taken by
the next `moat scan`, advisory update or vulnerability gate. `--unpack`
does both now.")]
pub struct PullArgs {
    /// Image reference: [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST].
    pub reference: String,
    /// Platform to pull (moat runs linux/amd64 only).
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Credentials USER:PASSWORD (else the credentials files).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print only the image ID.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Unpack the root file system and take the package inventory now,
    /// not at first use.
    #[arg(long)]
    pub unpack: bool,
    /// Refuse images the policy's `image` rules do not allow (allowed
    /// names, digests, require_digest), before anything is downloaded.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  moat push busybox 127.0.0.1:5000/team/busybox:1 --cert-dir ./certs

Blobs the registry already has are not uploaded again; every blob is read
back from the store with its digest checked before it is sent. The manifest
is sent byte for byte as stored, so REF@DIGEST names the same content.")]
pub struct PushArgs {
    /// Image in the store (name, ID or digest).
    pub image: String,
    /// Destination: HOST[:PORT]/NAME[:TAG].
    pub reference: String,
    /// Credentials USER:PASSWORD (else the credentials files).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Registry host[:port] (docker.io for Docker Hub).
    pub registry: String,
    #[arg(long, short = 'u')]
    pub username: String,
    /// Password (visible to other users in the process list; prefer
    /// --password-stdin).
    #[arg(long, short = 'p', conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry_args: RegistryArgs,
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// Registry host[:port].
    pub registry: String,
    /// Credentials file to change (default: $REGISTRY_AUTH_FILE, else
    /// ${XDG_RUNTIME_DIR}/containers/auth.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

/// A progress bar on stderr (shared by parallel downloads).
pub struct Bar(pub indicatif::ProgressBar);

impl Progress for Bar {
    fn phase(&self, what: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

pub fn bar() -> Option<Bar> {
    std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("template is valid")
            .progress_chars("=> "),
        );
        Bar(pb)
    })
}

pub fn pull(global: &GlobalArgs, a: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&a.reference)?;
    let policy = match &a.policy {
        Some(p) => Some(moat_policy::Policy::resolve(&p.to_string_lossy())?),
        None => None,
    };
    let name = reference.to_string();
    let pinned = reference.digest.is_some();
    // The host's trust roots and the policy's image rules: both must pass.
    let host = crate::cmd::image_trust::host_roots()?;
    let mut sets = Vec::new();
    if let Some(t) = &host {
        sets.push(RuleSet::host(t));
    }
    if let Some(p) = &policy {
        sets.push(RuleSet::policy(p));
    }
    for set in &sets {
        if let Err(why) = set.check_name(&name, pinned, &[]) {
            bail!("pull failed: {name}: refused by {}: {why}", set.by);
        }
    }
    let check = |digests: &[&str]| -> Result<(), String> {
        for set in &sets {
            set.check_name(&name, pinned, digests)
                .map_err(|why| format!("{}: {why}", set.by))?;
        }
        Ok(())
    };
    let mut signers = Vec::new();
    for set in &sets {
        let mut keys = Vec::new();
        for rule in set.rules.signers_for(&name) {
            let key = registry::keys::load_public(std::path::Path::new(&rule.key))
                .with_context(|| format!("{}: signers", set.by))?;
            keys.push((rule.key.clone(), key));
        }
        if !keys.is_empty() {
            signers.push(SignerGroup {
                by: set.by.clone(),
                keys,
            });
        }
    }
    let store = Store::open(&global.root)?;
    let bar = if a.quiet { None } else { bar() };
    let opts = PullOptions {
        client: a.registry.client(a.creds.as_deref())?,
        platform: a.platform.clone(),
        unpack: UnpackOptions {
            limits: Limits::default(),
            allow_devices: false,
            // File capabilities and other security.* / trusted.* xattrs of a
            // pulled image are dropped, as for `moat image import`.
            keep_security_xattrs: false,
        },
        progress: bar
            .as_ref()
            .map(|b| b as &(dyn Progress + Sync))
            .unwrap_or(&NoProgress),
        registries: a.registry.registries()?,
        check: Some(&check),
        signers,
        materialise: a.unpack,
    };
    let result = store.pull(&reference, &opts);
    if let Some(b) = &bar {
        b.0.finish_and_clear();
    }
    let pulled = result.context("pull failed")?;
    if a.unpack {
        crate::cmd::scan::record_inventory(&store, &pulled.image);
    }
    if a.quiet {
        println!("{}", pulled.image.config_digest);
    } else {
        println!(
            "pulled {} (image ID {}, manifest {})",
            pulled.pinned, pulled.image.config_digest, pulled.image.manifest_digest
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn push(global: &GlobalArgs, a: PushArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&a.reference)?;
    let store = Store::open(&global.root)?;
    let opts = a.registry.client(a.creds.as_deref())?;
    let pushed = store
        .push(&a.image, &reference, &opts, &a.registry.registries()?)
        .context("push failed")?;
    println!(
        "pushed {} to {} ({} blobs uploaded)",
        a.image, pushed.pinned, pushed.uploaded
    );
    Ok(ExitCode::SUCCESS)
}

pub fn login(a: LoginArgs) -> anyhow::Result<ExitCode> {
    let password = match (&a.password, a.password_stdin) {
        (Some(p), _) => p.clone(),
        (None, true) => {
            let mut s = String::new();
            std::io::stdin()
                .take(64 << 10)
                .read_to_string(&mut s)
                .context("reading the password from standard input")?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("moat login: give the password with --password-stdin (or -p)"),
    };
    let creds = Credentials {
        username: a.username.clone(),
        password,
    };
    let mut opts = a.registry_args.client(None)?;
    opts.credentials = Some(creds.clone());
    registry::check_login(&a.registry, &opts).context("login failed")?;
    let file = a
        .registry_args
        .authfile
        .clone()
        .unwrap_or_else(auth::default_write_file);
    auth::store(&file, &a.registry, Some(&creds))?;
    println!("Login Succeeded ({} in {})", a.registry, file.display());
    Ok(ExitCode::SUCCESS)
}

pub fn logout(a: LogoutArgs) -> anyhow::Result<ExitCode> {
    let file = a.authfile.unwrap_or_else(auth::default_write_file);
    if !auth::store(&file, &a.registry, None)? {
        bail!(
            "{}: not logged in to {} (no entry in this file)",
            file.display(),
            a.registry
        );
    }
    println!("Removed login credentials for {}", a.registry);
    Ok(ExitCode::SUCCESS)
}
