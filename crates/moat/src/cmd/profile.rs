//! `moat profile`: generate least-privilege policies from an image (record, static, merge).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use moat_profile::profile::Profile;
use moat_profile::rootfs::Root;
use moat_profile::static_analysis;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// Derive a policy from the image's ELF files, without running anything.
    ///
    /// Analyses the entrypoint and every shared library it loads (resolved
    /// inside the image, never on the host), maps imported libc functions to
    /// the syscalls they can make and, for static binaries, finds the
    /// `syscall` instructions with constant numbers. The result
    /// over-approximates what the program can do.
    #[command(after_help = "Examples:\n  \
        moat profile static busybox --entrypoint /bin/busybox -o busybox.yaml\n  \
        moat profile static --rootfs ./rootfs --entrypoint /usr/bin/jq --format json")]
    Static(StaticArgs),
    /// Combine two generated profiles into one that allows what either allows.
    #[command(after_help = "Example:\n  moat profile merge static.yaml recorded.yaml -o app.yaml")]
    Merge(MergeArgs),
}

/// Where the files to analyse come from.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// Image reference (name[:tag], ID or unique prefix) in the store.
    #[arg(required_unless_present = "rootfs")]
    pub image: Option<String>,
    /// Analyse an unpacked root filesystem directory instead of an image.
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub rootfs: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StaticArgs {
    #[command(flatten)]
    pub source: Source,
    /// Program to analyse (absolute, or searched in the image's PATH).
    /// Default: the image's entrypoint, or its command.
    #[arg(long, value_name = "PATH")]
    pub entrypoint: Option<String>,
    /// Write the policy to FILE (atomically) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// `yaml`: the policy; `json`: the analysis (objects, syscalls, reasons).
    #[arg(long, default_value = "yaml", value_parser = ["yaml", "json"])]
    pub format: String,
    /// `metadata.name` of the generated policy.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// First profile (written by `moat profile static` or `record`).
    pub a: PathBuf,
    /// Second profile.
    pub b: PathBuf,
    /// Write the merged policy to FILE (atomically) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// `metadata.name` of the merged policy (default: the first one's).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run(global: &GlobalArgs, cmd: ProfileCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ProfileCommand::Static(args) => run_static(global, args),
        ProfileCommand::Merge(args) => run_merge(args),
    }
}

/// An image's root filesystem and the process the image would run.
pub struct Target {
    pub rootfs: PathBuf,
    /// Entrypoint + command of the image (empty for a bare rootfs).
    pub argv: Vec<String>,
    pub env: Vec<String>,
    /// How to name the target in messages.
    pub label: String,
}

pub fn resolve_target(global: &GlobalArgs, source: &Source) -> anyhow::Result<Target> {
    if let Some(dir) = &source.rootfs {
        if !dir.is_dir() {
            anyhow::bail!(
                "--rootfs {}: not a directory; pass an unpacked root filesystem",
                dir.display()
            );
        }
        return Ok(Target {
            rootfs: dir.clone(),
            argv: Vec::new(),
            env: Vec::new(),
            label: dir.display().to_string(),
        });
    }
    let reference = source.image.as_deref().unwrap_or_default();
    let store = moat_image::Store::open(&global.root)
        .with_context(|| format!("cannot open the image store {}", global.root.display()))?;
    let image = store.resolve(reference)?;
    let rootfs = store.rootfs(&image)?;
    let mut argv = image.config.entrypoint.clone();
    argv.extend(image.config.cmd.iter().cloned());
    Ok(Target {
        rootfs,
        argv,
        env: image.config.env.clone(),
        label: format!("image {reference} ({})", image.short_id()),
    })
}

/// The command line of `moat run` for `backend` on `source`, re-using this
/// binary and the global options (for recording and measuring).
pub fn moat_run_argv(
    global: &GlobalArgs,
    source: &Source,
    backend: &str,
    policy: Option<&Path>,
    command: &[String],
) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("cannot locate the moat binary")?;
    let mut v = vec![
        exe.display().to_string(),
        "--root".to_string(),
        global.root.display().to_string(),
    ];
    if let Some(rr) = &global.run_root {
        v.push("--run-root".into());
        v.push(rr.display().to_string());
    }
    v.extend(["run".to_string(), "--isolation".into(), backend.into()]);
    if let Some(p) = policy {
        v.push("--policy".into());
        v.push(p.display().to_string());
    }
    match (&source.rootfs, &source.image) {
        (Some(dir), _) => {
            v.push("--rootfs".into());
            v.push(dir.display().to_string());
        }
        (None, Some(image)) => v.push(image.clone()),
        (None, None) => anyhow::bail!("name an image or pass --rootfs DIR"),
    }
    v.push("--".into());
    v.extend(command.iter().cloned());
    Ok(v)
}

/// Compiles a policy file, a built-in policy name or an image's static
/// profile into the [`moat_policy::Plan`] a backend would get.
pub fn compile_target(target: &str) -> anyhow::Result<moat_policy::Plan> {
    anyhow::bail!("{target}: this build of moat has no policy compiler yet")
}

/// Writes `data` to `path` through a temporary file in the same directory
/// and a rename, so that a failure never leaves a half-written file.
pub fn write_atomically(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot rename into {}", path.display()))?;
    Ok(())
}

fn emit(output: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match output {
        Some(p) => write_atomically(p, text.as_bytes()),
        None => {
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
    }
}

fn sanitize_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let n = n.trim_matches('-').to_string();
    if n.is_empty() {
        "profile".to_string()
    } else {
        n
    }
}

fn run_static(global: &GlobalArgs, args: StaticArgs) -> anyhow::Result<ExitCode> {
    let target = resolve_target(global, &args.source)?;
    let argv0 = match (&args.entrypoint, target.argv.first()) {
        (Some(e), _) => e.clone(),
        (None, Some(a)) => a.clone(),
        (None, None) => anyhow::bail!(
            "{}: no entrypoint or command to analyse; pass --entrypoint PATH",
            target.label
        ),
    };
    let root = Root::open(&target.rootfs)?;
    let report = static_analysis::analyze(&root, &argv0, &target.env)
        .with_context(|| format!("static analysis of {}", target.label))?;
    let mut profile = report.profile.clone();
    let base = report.entrypoint.rsplit('/').next().unwrap_or("app");
    profile.name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-static", sanitize_name(base)));
    profile.header = vec![
        format!(
            "Generated by `moat profile static` from {} (entrypoint {}).",
            target.label, report.entrypoint
        ),
        "Static analysis over-approximates: it allows every syscall the program's code can reach."
            .into(),
        format!(
            "Objects analysed: {}.",
            report
                .objects
                .iter()
                .map(|o| format!("{} ({})", o.path, o.role))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ];
    if args.format == "json" {
        let objects: Vec<serde_json::Value> = report
            .objects
            .iter()
            .map(|o| {
                serde_json::json!({
                    "path": o.path, "role": o.role,
                    "syscall_sites": o.sites, "unresolved_sites": o.unresolved,
                })
            })
            .collect();
        let syscalls: serde_json::Map<String, serde_json::Value> = profile
            .syscalls
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect();
        let doc = serde_json::json!({
            "entrypoint": report.entrypoint,
            "objects": objects,
            "syscalls": { "allowed_count": syscalls.len(), "allowed": syscalls },
            "warnings": profile.warnings,
        });
        emit(
            args.output.as_deref(),
            &(serde_json::to_string_pretty(&doc)? + "\n"),
        )?;
    } else {
        emit(args.output.as_deref(), &profile.to_policy_yaml(&[]))?;
    }
    if let Some(out) = &args.output {
        eprintln!(
            "moat: wrote {} ({} syscalls, {} objects analysed)",
            out.display(),
            profile.syscalls.len(),
            report.objects.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_profile(path: &Path) -> anyhow::Result<Profile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read profile {}", path.display()))?;
    Ok(Profile::from_policy_yaml(
        &path.display().to_string(),
        &text,
    )?)
}

fn run_merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let a = read_profile(&args.a)?;
    let b = read_profile(&args.b)?;
    let mut merged = a.merge(&b);
    if let Some(n) = args.name {
        merged.name = n;
    }
    merged.header = vec![format!(
        "Merged by `moat profile merge` from {} ({} syscalls) and {} ({} syscalls).",
        args.a.display(),
        a.syscalls.len(),
        args.b.display(),
        b.syscalls.len()
    )];
    emit(args.output.as_deref(), &merged.to_policy_yaml(&[]))?;
    Ok(ExitCode::SUCCESS)
}
