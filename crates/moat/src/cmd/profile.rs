//! `moat profile`: generate least-privilege policies from an image (record, static, merge).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use moat_profile::profile::Profile;
use moat_profile::rootfs::Root;
use moat_profile::static_analysis;
use moat_profile::{measure, record};

use crate::global::{BeforeStart, GlobalArgs};

#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// Derive a policy from the image's ELF files, without running anything.
    ///
    /// Analyses the entrypoint and every shared library it loads (resolved
    /// inside the image, never on the host), maps imported libc functions to
    /// the syscalls they can make and, for static binaries, finds the
    /// `syscall` instructions with constant numbers. The result
    /// over-approximates what the program can do.
    ///
    /// With --all, every ELF executable and shared library in the image is
    /// analysed instead: the image profile `auto` is narrowed to (made
    /// when an image is imported; --all makes it again and stores it).
    #[command(after_help = "Examples:\n  \
        moat profile static busybox --entrypoint /bin/busybox -o busybox.yaml\n  \
        moat profile static --rootfs ./rootfs --entrypoint /usr/bin/jq --format json\n  \
        moat profile static busybox --all")]
    Static(StaticArgs),
    /// Record what a workload really does and emit a policy allowing exactly that.
    ///
    /// Runs the workload in the sandbox (under `restricted` with every other
    /// syscall allowed and logged) while eBPF programs on the kernel's
    /// syscall tracepoints record its process tree from its first execve:
    /// syscalls, socket families, ioctl requests, paths opened for writing,
    /// failed privileged operations. Nothing of
    /// moat's own setup is recorded. The policy extends `restricted`, denies
    /// what `restricted` allows but the workload did not use, and is then
    /// verified: the workload runs again, enforcing, and must exit and print
    /// the same. Needs root.
    #[command(after_help = "Examples:\n  \
        moat profile record busybox -o sh.yaml -- /bin/sh -c 'echo hi; ls /; cat /etc/passwd'\n  \
        moat profile record myserver --duration 30 -o server.yaml\n  \
        moat profile record --recorder tracefs busybox -- /bin/true")]
    Record(RecordArgs),
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
    /// Analyse every ELF object of the image (the image profile of the
    /// `auto` policy) and store it with the image; prints a summary, or
    /// the profile with --format json.
    #[arg(long, conflicts_with_all = ["entrypoint", "verify", "name"])]
    pub all: bool,
    /// Run the image's command (or the one after `--`) in the sandbox
    /// under the generated profile and under `baseline`, and fail unless
    /// both exit and print the same.
    #[arg(long)]
    pub verify: bool,
    /// Command for --verify (default: the image's entrypoint and command).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub source: Source,
    /// Stop the workload (SIGTERM) after S seconds; for servers. With it,
    /// --verify compares exit codes only.
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Write the policy to FILE (atomically) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Skip the enforcing re-run (verification is on by default).
    #[arg(long)]
    pub no_verify: bool,
    /// `metadata.name` of the generated policy.
    #[arg(long)]
    pub name: Option<String>,
    /// How to record: `ebpf` (programs on the syscall tracepoints; about
    /// 1.1x; records the names of paths opened for writing), `tracefs`
    /// (the tracepoints' text trace; slower, no path names) or `auto`
    /// (eBPF where the kernel allows it, else tracefs with a notice).
    #[arg(long, default_value = "auto", value_parser = ["auto", "ebpf", "tracefs"])]
    pub recorder: String,
    /// Network of the recording and of the generated policy: `none` (the
    /// default, as `restricted`) or `loopback` (for servers that listen on
    /// loopback; `egress` needs rules written by hand).
    #[arg(long, value_name = "MODE", value_parser = ["none", "loopback"])]
    pub network: Option<String>,
    /// Grant a capability to the recording and the generated policy
    /// (podman's flag; e.g. `--cap-add SETUID` for a server that switches
    /// users). Repeatable. A failed privileged operation in the recording
    /// is listed in the policy's comments: it names what to add.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Command to record (default: the image's entrypoint and command).
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl RecordArgs {
    /// `--network` and `--cap-add`, checked.
    fn up_front(&self) -> anyhow::Result<record::UpFront> {
        let mut caps = std::collections::BTreeSet::new();
        for c in &self.cap_add {
            let Some(name) = moat_policy::caps::canonical(c.trim()) else {
                anyhow::bail!("--cap-add {c:?}: not a Linux capability (e.g. CHOWN, SETUID, NET_BIND_SERVICE)");
            };
            caps.insert(name.to_string());
        }
        Ok(record::UpFront {
            network: self.network.clone(),
            capabilities: caps,
        })
    }
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
        ProfileCommand::Record(args) => run_record(global, args),
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

/// A `--rootfs` that something will run from: never the host's own root
/// or a parent of moat's state (as for `moat run`, which checks again).
/// `profile static` only reads, and may analyse the host's programs.
pub fn check_runnable(global: &GlobalArgs, source: &Source) -> anyhow::Result<()> {
    if let Some(dir) = &source.rootfs {
        crate::cmd::run::checked_rootfs(global, &dir.to_string_lossy())?;
    }
    Ok(())
}

/// The command line of `moat run` for `backend` on `source`, re-using this
/// binary and the global options (for recording and measuring).
pub fn moat_run_argv(
    global: &GlobalArgs,
    source: &Source,
    backend: &str,
    policy: Option<&Path>,
    accel: Option<&str>,
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
    if let Some(a) = accel {
        v.push("--accel".into());
        v.push(a.into());
    }
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

/// Compiles a policy file, a built-in policy name or an image (the `auto`
/// policy for it, from its stored profile) into the [`moat_policy::Plan`]
/// a backend would get; with the image's profile when it is an image.
pub fn compile_target(
    global: &GlobalArgs,
    target: &str,
) -> anyhow::Result<(
    moat_policy::Plan,
    Option<moat_profile::image_profile::ImageProfile>,
)> {
    let is_policy = Path::new(target).is_file()
        || (moat_policy::builtin::text(target).is_some() && target != "auto");
    if is_policy {
        let policy = moat_policy::Policy::resolve(target)?;
        return Ok((moat_policy::compile(&policy)?, None));
    }
    let store = moat_image::Store::open(&global.root)
        .with_context(|| format!("cannot open the image store {}", global.root.display()))?;
    let image = store.resolve(target).with_context(|| {
        format!("{target}: neither a policy file, a built-in policy nor an image")
    })?;
    let profile = crate::cmd::auto::for_image(&store, &image)?;
    let policy = moat_policy::Policy::builtin_for_image(
        "auto",
        &crate::cmd::auto::image_syscalls(target, &profile),
    )?;
    Ok((moat_policy::compile(&policy)?, Some(profile)))
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

/// Runs the static analysis of `target` (its entrypoint, or `entrypoint`).
pub fn static_profile(
    target: &Target,
    entrypoint: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<(Profile, static_analysis::StaticReport)> {
    let argv0 = match (entrypoint, target.argv.first()) {
        (Some(e), _) => e.to_string(),
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
    profile.name = name
        .map(String::from)
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
    Ok((profile, report))
}

fn run_static(global: &GlobalArgs, args: StaticArgs) -> anyhow::Result<ExitCode> {
    if args.all {
        return run_static_all(global, &args);
    }
    let target = resolve_target(global, &args.source)?;
    let (profile, report) =
        static_profile(&target, args.entrypoint.as_deref(), args.name.as_deref())?;
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
        // What we write must be a policy moat itself accepts, granting
        // exactly what the analysis found.
        let text = profile.to_checked_policy_yaml(&[])?;
        moat_policy::Policy::parse(&text, "generated profile")
            .and_then(|p| moat_policy::compile(&p))
            .context("the generated profile does not compile (a bug in moat profile)")?;
        if args.verify {
            let command = command_of(&target, &args.command)?;
            let (code, out, err) = run_under(
                global,
                &args.source,
                &record::recording_policy(false, &record::UpFront::default()),
                &command,
                None,
            )?;
            let err = String::from_utf8_lossy(&err);
            if let Some(line) = err
                .lines()
                .find(|l| l.starts_with("moat: error:") || l.starts_with("error:"))
            {
                anyhow::bail!("the reference run of the workload did not start: {line}");
            }
            verify(global, &args.source, &text, &command, (code, &out), None)?;
        }
        emit(args.output.as_deref(), &text)?;
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

/// `moat profile static --all`: the image profile, stored for an image.
fn run_static_all(global: &GlobalArgs, args: &StaticArgs) -> anyhow::Result<ExitCode> {
    let profile = match (&args.source.rootfs, &args.source.image) {
        (Some(dir), _) => crate::cmd::auto::analyze_dir(dir)?,
        (None, Some(reference)) => {
            let store = moat_image::Store::open(&global.root).with_context(|| {
                format!("cannot open the image store {}", global.root.display())
            })?;
            let image = store.resolve(reference)?;
            crate::cmd::auto::compute_and_store(&store, &image)?
        }
        (None, None) => anyhow::bail!("name an image or pass --rootfs DIR"),
    };
    let label = match (&args.source.rootfs, &args.source.image) {
        (Some(dir), _) => dir.display().to_string(),
        (None, image) => image.clone().unwrap_or_default(),
    };
    let auto = moat_policy::Policy::builtin_for_image(
        "auto",
        &crate::cmd::auto::image_syscalls(&label, &profile),
    )?;
    let removed = moat_policy::auto::removed_from_baseline(&auto)?;
    let text = if args.format == "json" {
        let mut v = serde_json::to_value(&profile)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "auto".into(),
                serde_json::json!({
                    "allowed_count": auto.spec.syscalls.allow.len(),
                    "removed_count": removed.len(),
                }),
            );
        }
        crate::display::json(serde_json::to_string_pretty(&v)? + "\n")
    } else {
        let mut t = String::new();
        for line in crate::cmd::auto::describe(&profile) {
            t.push_str(&crate::display::line(&line));
            t.push('\n');
        }
        t.push_str(&format!(
            "auto allows {} of {} system calls (removes {} of baseline's)\n",
            auto.spec.syscalls.allow.len(),
            moat_policy::syscalls::X86_64.len(),
            removed.len()
        ));
        let names: Vec<&str> = profile.syscalls.keys().map(String::as_str).collect();
        t.push_str(&format!("calls: {}\n", names.join(" ")));
        t
    };
    emit(args.output.as_deref(), &text)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `command` in the sandbox under `policy_text`, keeping its output.
fn run_under(
    global: &GlobalArgs,
    source: &Source,
    policy_text: &str,
    command: &[String],
    timeout: Option<Duration>,
) -> anyhow::Result<(i32, Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_text).context("cannot write a temporary policy")?;
    let argv = moat_run_argv(global, source, "sandbox", Some(&path), None, command)?;
    Ok(measure::run_plain(&argv, timeout)?)
}

/// Whether this process holds CAP_SYS_ADMIN (the supervisor builds an
/// ephemeral root's overlay with it).
fn can_build_overlays() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Runs the workload under `generated` and compares it with a reference
/// run (exit code, and stdout unless `exit_only`).
fn verify(
    global: &GlobalArgs,
    source: &Source,
    generated: &str,
    command: &[String],
    reference: (i32, &[u8]),
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let (code, out, err) = run_under(global, source, generated, command, timeout)?;
    let exit_only = timeout.is_some();
    if code != reference.0 || (!exit_only && out != reference.1) {
        let what = if code != reference.0 {
            format!("exit code {code} instead of {}", reference.0)
        } else {
            "different output".to_string()
        };
        let err = String::from_utf8_lossy(&err);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        anyhow::bail!(
            "verification failed: under the generated policy the workload gave {what}; nothing written{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!(
                    "\nits stderr ended with:\n  {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
                )
            }
        );
    }
    eprintln!(
        "moat: verified: the workload exits {code}{} under the generated policy",
        if exit_only {
            ""
        } else {
            " with the same output"
        }
    );
    Ok(())
}

fn command_of(target: &Target, command: &[String]) -> anyhow::Result<Vec<String>> {
    let c = if command.is_empty() {
        target.argv.clone()
    } else {
        command.to_vec()
    };
    if c.is_empty() {
        anyhow::bail!("{}: no command to run; pass one after `--`", target.label);
    }
    Ok(c)
}

fn run_record(global: &GlobalArgs, args: RecordArgs) -> anyhow::Result<ExitCode> {
    // Everything up to the recorded run fails with 125 (`NotStarted`).
    check_runnable(global, &args.source).before_start()?;
    let target = resolve_target(global, &args.source).before_start()?;
    let command = command_of(&target, &args.command).before_start()?;
    let timeout = match args.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(anyhow::anyhow!(
                "--duration {s}: expected a positive number of seconds"
            ))
            .before_start()
        }
        None => None,
    };
    let dir = tempfile::tempdir()
        .context("cannot create a temporary directory")
        .before_start()?;
    let up_front = args.up_front().before_start()?;
    let rec_policy = dir.path().join("record.yaml");
    std::fs::write(
        &rec_policy,
        record::recording_policy(can_build_overlays(), &up_front),
    )
    .context("cannot write the recording policy")
    .before_start()?;
    let argv = moat_run_argv(
        global,
        &args.source,
        "sandbox",
        Some(&rec_policy),
        None,
        &command,
    )
    .before_start()?;
    let program = command[0].rsplit('/').next().map(String::from);
    let outcome = measure::trace(&measure::TraceRun {
        argv: &argv,
        after: Some("moat"),
        program: program.as_deref(),
        capture: true,
        timeout,
        recorder: args
            .recorder
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--recorder: {e}"))?,
        ..measure::TraceRun::default()
    })
    .context("recording failed")?;
    // The recorded `moat run` could not start the workload: say why, as
    // that run would have.
    if outcome.code == i32::from(crate::global::EXIT_NOT_STARTED) {
        let err = String::from_utf8_lossy(&outcome.stderr);
        if let Some(line) = err.lines().find(|l| l.starts_with("moat: error:")) {
            let why = line.trim_start_matches("moat: error:").trim();
            return Err(anyhow::anyhow!("the workload did not start: {why}")).before_start();
        }
    }
    if let Some(why) = &outcome.fallback {
        eprintln!("moat: notice: {why}");
    }
    let base = moat_policy::Policy::builtin("restricted")?;
    // Grants go where the image has directories (see `write_grants`).
    let root = Root::open(&target.rootfs)?;
    let entries = |d: &str| root.is_dir(d).then(|| root.list_dir(d).len());
    let (mut profile, deny) = record::to_profile(&outcome.recorded, &base, &entries);
    profile.up_front = up_front;
    profile.name = args.name.clone().unwrap_or_else(|| {
        format!(
            "{}-recorded",
            sanitize_name(command[0].rsplit('/').next().unwrap_or("app"))
        )
    });
    profile.header = vec![
        format!(
            "Recorded by `moat profile record` from {}: {}",
            target.label,
            command.join(" ")
        ),
        format!(
            "The workload ({} task(s), exit {}) made {} distinct syscalls; this policy allows exactly those.",
            outcome.recorded.tasks,
            outcome.code,
            outcome.recorded.syscalls.len()
        ),
        if outcome.recorder == "ebpf" {
            format!(
                "Recorded with eBPF on the syscall tracepoints; {} distinct path(s) opened for writing are listed below.",
                outcome.recorded.write_paths.len()
            )
        } else {
            "Recorded with tracefs: paths opened for writing are not recorded (the tracepoints carry only the pointer); see docs/profiles.md.".into()
        },
    ];
    let text = profile.to_checked_policy_yaml(&deny)?;
    moat_policy::Policy::parse(&text, "recorded profile")
        .and_then(|p| moat_policy::compile(&p))
        .context("the recorded profile does not compile (a bug in moat profile)")?;
    eprintln!(
        "moat: recorded {} distinct syscalls from {} task(s) with {}; the workload exited {}",
        outcome.recorded.syscalls.len(),
        outcome.recorded.tasks,
        outcome.recorder,
        outcome.code
    );
    let attempts = record::floor_attempts(&outcome.recorded);
    if !attempts.is_empty() {
        let list: Vec<&str> = attempts.iter().map(String::as_str).collect();
        eprintln!(
            "moat: the workload attempted calls that recording denies and the policy does not grant: {}",
            list.join(", ")
        );
    }
    if !args.no_verify {
        verify(
            global,
            &args.source,
            &text,
            &command,
            (outcome.code, &outcome.stdout),
            timeout,
        )?;
    }
    emit(args.output.as_deref(), &text)?;
    if let Some(out) = &args.output {
        eprintln!(
            "moat: wrote {} ({} syscalls)",
            out.display(),
            profile.syscalls.len()
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
    emit(args.output.as_deref(), &merged.to_checked_policy_yaml(&[])?)?;
    Ok(ExitCode::SUCCESS)
}
