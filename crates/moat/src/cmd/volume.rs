//! `moat volume create|ls|inspect|rm|prune`: named volumes, shared by both
//! backends (an ext4 image each; see docs/volumes.md). Wiring only: the
//! store is `moat_runtime::volume_store`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use moat_policy::plan::MountPlan;
use moat_policy::rbac::Request;
use moat_runtime::volume_store::{self, Store, VolumeError};
use moat_runtime::volumes::{TmpfsArg, VolumeArg};

use crate::cmd::ps::Format;
use crate::global::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a named volume (an ext4 filesystem image in the state root).
    #[command(after_help = "Examples:
  moat volume create data
  moat volume create --size 10g cache
  moat run --policy vols.yaml -v cache:/cache busybox sh -c 'echo hi > /cache/x'")]
    Create(CreateArgs),
    /// List named volumes.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show named volumes as JSON (name, size, where, which containers use them).
    Inspect(InspectArgs),
    /// Remove named volumes no container uses (running or stopped).
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Remove every named volume no container uses.
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Size of the filesystem (e.g. 512m, 10g; sparse on the host) [default: 1g].
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// RBAC file the volume name is authorised against (root acting as
    /// itself only) [default: /etc/moat/rbac.yaml].
    #[arg(long, value_name = "FILE")]
    pub rbac: Option<PathBuf>,
    /// Volume name: letters, digits, `_`, `.`, `-`.
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output format: a table, or a JSON array of volume objects.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Print names only.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// RBAC file the volume names are authorised against (root acting as
    /// itself only) [default: /etc/moat/rbac.yaml].
    #[arg(long, value_name = "FILE")]
    pub rbac: Option<PathBuf>,
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Output format of the list of removed volumes.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// RBAC file the volume names are authorised against (root acting as
    /// itself only) [default: /etc/moat/rbac.yaml]; volumes the invoking
    /// user's roles do not grant are kept, with a notice.
    #[arg(long, value_name = "FILE")]
    pub rbac: Option<PathBuf>,
}

pub fn run(global: &GlobalArgs, cmd: VolumeCommand) -> anyhow::Result<ExitCode> {
    let store = Store::new(&global.root);
    match cmd {
        VolumeCommand::Create(a) => {
            let size = match &a.size {
                Some(s) => moat_runtime::volumes::parse_flag_size(s)
                    .with_context(|| format!("--size {s:?} is not a size; use e.g. 512m or 10g"))?,
                None => volume_store::DEFAULT_SIZE,
            };
            if !moat_policy::model::valid_volume_name(&a.name) {
                return Err(VolumeError::BadName(a.name.clone()).into());
            }
            if let Err(refusal) = authorise(global, a.rbac.as_deref(), "create", &a.name)? {
                errln!("moat: error: {refusal}");
                return Ok(ExitCode::from(125));
            }
            let v = store.create(&a.name, size)?;
            println!("{}", v.name);
        }
        VolumeCommand::Ls(a) => {
            let vols = store.list()?;
            if a.quiet {
                for v in &vols {
                    println!("{}", v.name);
                }
            } else if a.format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&vols)?);
            } else {
                println!("{:<24} {:>10} {:>10}", "NAME", "SIZE", "USED");
                for v in &vols {
                    println!(
                        "{:<24} {:>10} {:>10}",
                        v.name,
                        human(v.size_bytes),
                        human(v.used_bytes)
                    );
                }
            }
        }
        VolumeCommand::Inspect(a) => {
            let users = users(global)?;
            let mut out = Vec::new();
            for n in &a.names {
                let v = store.get(n)?;
                let by: Vec<&str> = users
                    .iter()
                    .filter(|(vol, _)| vol == n)
                    .map(|(_, c)| c.as_str())
                    .collect();
                let mut j = serde_json::to_value(&v)?;
                j["containers"] = serde_json::json!(by);
                out.push(j);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Rm(a) => {
            let users = users(global)?;
            let mut failed = false;
            for n in &a.names {
                if let Err(refusal) = authorise(global, a.rbac.as_deref(), "rm", n)? {
                    errln!("moat: error: {refusal}");
                    failed = true;
                    continue;
                }
                match remove(&store, &users, n) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        errln!("moat: error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::from(crate::global::EXIT_FAILURE));
            }
        }
        VolumeCommand::Prune(a) => {
            let users = users(global)?;
            let mut removed = Vec::new();
            for v in store.list()? {
                if users.iter().any(|(n, _)| *n == v.name) {
                    continue;
                }
                if let Err(refusal) = authorise(global, a.rbac.as_deref(), "prune", &v.name)? {
                    errln!("moat: notice: kept: {refusal}");
                    continue;
                }
                match remove(&store, &users, &v.name) {
                    Ok(()) => removed.push(v.name),
                    Err(VolumeError::InUse { .. }) => {}
                    Err(e) => errln!("moat: warning: {e}"),
                }
            }
            match a.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&removed)?),
                Format::Table => removed.iter().for_each(|n| println!("{n}")),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Authorises `verb` (`create`, `rm`, `prune`) of the named volume `name`
/// for the invoking user, as `moat run` authorises a policy's
/// `named_volumes`: one of the user's roles must grant the name
/// (`named_volumes` patterns, docs/policy.md); without an RBAC file only
/// root may. Audited as `volume-VERB`. `Ok(Err(text))`: refused, `text`
/// names the volume, the user, their roles and the role that would allow it.
fn authorise(
    global: &GlobalArgs,
    rbac: Option<&Path>,
    verb: &str,
    name: &str,
) -> anyhow::Result<Result<(), String>> {
    let who = crate::cmd::policy::invoking_principal(global);
    let decision = crate::cmd::policy::authorize_requests(
        global,
        &format!("volume-{verb}"),
        &who,
        rbac,
        &[Request::NamedVolume(name.to_string())],
        &format!("volume {name}"),
        "",
    )?;
    if decision.allowed {
        return Ok(Ok(()));
    }
    let what = match verb {
        "create" => "creating",
        "rm" => "removing",
        _ => "pruning",
    };
    let mut text = format!("{what} volume {name:?}: refused for {}:", who.name);
    for r in &decision.reasons {
        text.push_str(&format!("\n  - {r}"));
    }
    Ok(Err(text))
}

/// Removes `name` unless a container record (running or stopped) names it
/// or a running container holds its lock.
fn remove(store: &Store, users: &[(String, String)], name: &str) -> Result<(), VolumeError> {
    let by: Vec<&str> = users
        .iter()
        .filter(|(v, _)| v == name)
        .map(|(_, c)| c.as_str())
        .collect();
    if !by.is_empty() {
        let _ = store.get(name)?;
        return Err(VolumeError::InUse {
            name: name.into(),
            by: format!(
                "container {} (running or stopped: `moat rm` it first)",
                by.join(", ")
            ),
        });
    }
    store.remove(name)
}

/// `(volume, container name)` for every container record whose plan
/// mounts a named volume.
fn users(global: &GlobalArgs) -> anyhow::Result<Vec<(String, String)>> {
    let root = global.records_root();
    let mut out = Vec::new();
    for r in crate::cmd::container::records(global)? {
        let Ok(spec) = moat_runtime::spec::read(&root, &r.id) else {
            continue;
        };
        for m in &spec.plan.mounts {
            if let MountPlan::Named { name, .. } = m {
                out.push((name.clone(), r.name.to_string()));
            }
        }
    }
    Ok(out)
}

/// The pipeline's mount arguments from `moat run`'s `-v` and `--tmpfs`.
/// Named volumes the policy grants are created on first use, as podman does.
pub fn mount_args(
    global: &GlobalArgs,
    volumes: &[String],
    tmpfs: &[String],
) -> anyhow::Result<moat_runtime::pipeline::MountArgs> {
    let volumes = volumes
        .iter()
        .map(|v| VolumeArg::parse(v))
        .collect::<Result<Vec<_>, _>>()?;
    let tmpfs = tmpfs
        .iter()
        .map(|t| TmpfsArg::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(moat_runtime::pipeline::MountArgs {
        volumes,
        tmpfs,
        state_root: global.root.clone(),
        run_root: global.run_root(),
    })
}

/// Creates the named volumes of `ready`'s mounts that do not exist yet
/// (after the pipeline has checked them against the policy and RBAC); its
/// anonymous ones are recorded as made for it (and to go with it on `--rm`).
pub fn create_missing(
    global: &GlobalArgs,
    ready: &moat_runtime::pipeline::Ready,
    auto_remove: bool,
) -> anyhow::Result<()> {
    let store = Store::new(&global.root);
    for m in &ready.plan.mounts {
        if let MountPlan::Named { name, .. } = m {
            let anonymous =
                ready
                    .anonymous_volumes
                    .contains(name)
                    .then(|| volume_store::Anonymous {
                        container: ready.id.as_str().to_string(),
                        remove_with_container: auto_remove,
                    });
            match store.get(name) {
                Ok(_) => {}
                Err(VolumeError::NotFound(_)) => {
                    match store.create_as(name, volume_store::DEFAULT_SIZE, anonymous) {
                        Ok(_) | Err(VolumeError::Exists(_)) => {}
                        Err(e) => bail!("creating volume {name:?}: {e}"),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{b}B"),
        _ => format!("{v:.1}{}", UNITS[u]),
    }
}
