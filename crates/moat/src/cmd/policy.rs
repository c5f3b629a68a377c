//! `moat policy`: check, explain, compile, export and diff security policies.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use moat_policy::rbac::{self, AuditRecord, Decision, Principal, Rbac};
use moat_policy::{bpf, explain, render, Policy};

use crate::global::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy and authorise it for a user against RBAC.
    ///
    /// Exits 0 when the policy is valid and allowed, 1 with the reasons
    /// otherwise. Every decision is appended to ROOT/audit/policy.log.
    #[command(
        after_help = "Examples:\n  moat policy check web.yaml\n  moat policy check web.yaml --as alice --rbac /etc/moat/rbac.yaml\n  moat policy check baseline --format json"
    )]
    Check(CheckArgs),
    /// Explain what a policy grants, with numbers compared with Docker's defaults.
    #[command(
        after_help = "Examples:\n  moat policy explain baseline\n  moat policy explain web.yaml --format json\n  moat policy explain --image busybox        # what auto grants busybox, and what it removed"
    )]
    Explain(ExplainArgs),
    /// Compile a policy for another tool: OCI spec fragment, seccomp JSON,
    /// raw BPF, AppArmor profile, or moat's own plan.
    #[command(
        after_help = "Examples:\n  moat policy compile baseline --format seccomp-json -o baseline.json\n  podman run --security-opt seccomp=baseline.json IMAGE\n  moat policy compile web.yaml --format apparmor | apparmor_parser -Q\n  moat policy compile restricted --format bpf -o restricted.bpf\n  moat policy compile restricted --format bpf-asm"
    )]
    Compile(CompileArgs),
    /// Export a policy as Kubernetes objects (Pod securityContext, Localhost
    /// seccomp profile, RuntimeClass, NetworkPolicy).
    #[command(
        after_help = "Examples:\n  moat policy export web.yaml --k8s > web-k8s.yaml\n  kubectl apply --dry-run=client -f web-k8s.yaml"
    )]
    Export(ExportArgs),
    /// Show which grants policy B adds to or removes from policy A.
    #[command(
        after_help = "Examples:\n  moat policy diff baseline web.yaml\n  moat policy diff baseline restricted --format json"
    )]
    Diff(DiffArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TextOrJson {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy file, or a built-in name (baseline, restricted).
    pub policy: String,
    /// Check for this user (name or uid) instead of the invoking user.
    #[arg(long = "as", value_name = "USER")]
    pub as_user: Option<String>,
    /// RBAC file [default: /etc/moat/rbac.yaml].
    #[arg(long, value_name = "FILE")]
    pub rbac: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: TextOrJson,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Policy file, or a built-in name (auto, baseline, restricted);
    /// default with --image: auto.
    #[arg(required_unless_present = "image")]
    pub policy: Option<String>,
    /// Explain the policy as it applies to this image: `auto` narrowed to
    /// the image's profile, with what it removed from baseline.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: TextOrJson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompileFormat {
    /// OCI runtime-spec fragment (process, root, mounts, linux).
    Oci,
    /// Seccomp profile as Docker and podman read it (--security-opt seccomp=FILE).
    SeccompJson,
    /// The raw BPF program (struct sock_filter[], 8 bytes per instruction).
    Bpf,
    /// The BPF program as a readable listing.
    BpfAsm,
    /// An AppArmor profile.
    Apparmor,
    /// moat's execution plan as JSON (what the backends consume).
    Plan,
}

#[derive(Debug, Args)]
pub struct CompileArgs {
    /// Policy file, or a built-in name (baseline, restricted).
    pub policy: String,
    #[arg(long, value_enum)]
    pub format: CompileFormat,
    /// Write to FILE (atomically) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Policy file, or a built-in name (baseline, restricted).
    pub policy: String,
    /// Export as Kubernetes objects (the only target so far).
    #[arg(long, required = true)]
    pub k8s: bool,
    /// RuntimeClass name (and handler) the Pod uses.
    #[arg(long, default_value = "moat")]
    pub runtime_class: String,
    /// Write to FILE (atomically) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The old policy (file or built-in name).
    pub a: String,
    /// The new policy (file or built-in name).
    pub b: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: TextOrJson,
}

pub fn run(global: &GlobalArgs, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check(a) => check(global, a),
        PolicyCommand::Explain(a) => explain_cmd(global, a),
        PolicyCommand::Compile(a) => compile(a),
        PolicyCommand::Export(a) => {
            let p = load(&a.policy)?;
            let plan = moat_policy::compile(&p)?;
            let docs = render::k8s(&p, &plan, &a.runtime_class);
            emit(
                a.output.as_deref(),
                render::to_yaml_stream(&docs).as_bytes(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Diff(a) => {
            let pa = load(&a.a)?;
            let pb = load(&a.b)?;
            let changes = explain::diff(&pa, &pb);
            match a.format {
                TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&changes)?),
                TextOrJson::Text => {
                    if changes.is_empty() {
                        println!("no differences in grants");
                    }
                    for c in &changes {
                        println!("{} {} {}", c.sign, c.what, c.detail);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn explain_cmd(global: &GlobalArgs, a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let name = a.policy.clone().unwrap_or_else(|| "auto".to_string());
    let Some(reference) = &a.image else {
        let p = load(&name)?;
        let e = explain::explain(&p);
        match a.format {
            TextOrJson::Text => {
                print!("{}", e.to_text());
                println!("  host trust    {}", host_trust_summary()?);
            }
            TextOrJson::Json => {
                let mut v = serde_json::to_value(&e)?;
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("host_trust".into(), host_trust_json()?);
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let store = moat_image::Store::open(&global.root)
        .with_context(|| format!("cannot open the image store {}", global.root.display()))?;
    let image = store.resolve(reference)?;
    let profile = crate::cmd::auto::for_image(&store, &image)?;
    let p = Policy::resolve_for_image(
        &name,
        &crate::cmd::auto::image_syscalls(reference, &profile),
    )?;
    let e = explain::explain(&p);
    let removed = moat_policy::auto::removed_from_baseline(&p)?;
    let baseline = Policy::builtin("baseline")?.spec.syscalls.allow.len();
    let total = moat_policy::syscalls::X86_64.len();
    match a.format {
        TextOrJson::Json => {
            let mut v = serde_json::to_value(&e)?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "image".into(),
                    serde_json::json!({
                        "reference": reference,
                        "image_id": image.config_digest,
                        "allowed_count": p.spec.syscalls.allow.len(),
                        "baseline_count": baseline,
                        "total": total,
                        "removed_from_baseline": removed,
                        "fallbacks": profile.fallback_lines(),
                        "profile": profile,
                    }),
                );
            }
            println!(
                "{}",
                crate::display::json(serde_json::to_string_pretty(&v)?)
            );
        }
        TextOrJson::Text => {
            print!("{}", e.to_text());
            outln!(
                "image           {reference} ({}): {} of {total} system calls allowed, baseline {baseline}",
                image.short_id(),
                p.spec.syscalls.allow.len()
            );
            for line in crate::cmd::auto::describe(&profile) {
                outln!("                {line}");
            }
            if removed.is_empty() {
                outln!("removed         nothing: this image gets baseline's calls");
            } else {
                outln!(
                    "removed         {} of baseline's calls: {}",
                    removed.len(),
                    removed.join(" ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the host's trust file adds to every policy's image rules.
fn host_trust_summary() -> anyhow::Result<String> {
    let path = crate::cmd::image_trust::trust_path();
    let Some(t) = crate::cmd::image_trust::host_roots()? else {
        return Ok(format!("no trust file at {}: any source", path.display()));
    };
    let mut parts: Vec<String> = Vec::new();
    for a in &t.image.allowed {
        let keys: Vec<&str> = t
            .image
            .signers_for(a.trim_end_matches('*'))
            .iter()
            .filter(|r| &r.repository == a)
            .map(|r| r.key.as_str())
            .collect();
        match keys.is_empty() {
            true => parts.push(format!("accept {a}")),
            false => parts.push(format!("accept {a} signed by {}", keys.join(" or "))),
        }
    }
    if parts.is_empty() {
        parts.push("accepts no source".into());
    }
    if t.image.require_digest {
        parts.push("by digest only".into());
    }
    Ok(format!("{}: {}", t.source, parts.join("; ")))
}

fn host_trust_json() -> anyhow::Result<serde_json::Value> {
    let path = crate::cmd::image_trust::trust_path();
    Ok(match crate::cmd::image_trust::host_roots()? {
        None => serde_json::json!({ "file": path, "exists": false }),
        Some(t) => serde_json::json!({ "file": path, "exists": true, "image": t.image }),
    })
}

/// A policy file or built-in name.
pub fn load(name_or_path: &str) -> anyhow::Result<Policy> {
    Ok(Policy::resolve(name_or_path)?)
}

fn compile(a: CompileArgs) -> anyhow::Result<ExitCode> {
    let p = load(&a.policy)?;
    let plan = moat_policy::compile(&p)?;
    let bytes: Vec<u8> = match a.format {
        CompileFormat::Oci => pretty(&render::oci(&p, &plan))?,
        CompileFormat::SeccompJson => pretty(&render::seccomp_json(&p))?,
        CompileFormat::Plan => pretty(&serde_json::to_value(&plan)?)?,
        CompileFormat::Apparmor => render::apparmor(&p).into_bytes(),
        CompileFormat::BpfAsm => bpf::disassemble(&plan.seccomp.instructions).into_bytes(),
        CompileFormat::Bpf => {
            if a.output.is_none() && std::io::stdout().is_terminal() {
                bail!("refusing to write binary BPF to a terminal; use -o FILE, a pipe, or --format bpf-asm");
            }
            bpf::to_bytes(&plan.seccomp.instructions)
        }
    };
    emit(a.output.as_deref(), &bytes)?;
    Ok(ExitCode::SUCCESS)
}

fn pretty(v: &serde_json::Value) -> anyhow::Result<Vec<u8>> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s.into_bytes())
}

/// Write to a file atomically (stage, then rename) or to standard output.
fn emit(output: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match output {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()?;
        }
        Some(path) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let name = path
                .file_name()
                .with_context(|| format!("{} is not a file path", path.display()))?;
            let tmp = dir.join(format!(
                ".{}.tmp-{}",
                name.to_string_lossy(),
                std::process::id()
            ));
            std::fs::write(&tmp, bytes)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            if let Err(e) = std::fs::rename(&tmp, path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("cannot write {}", path.display()));
            }
        }
    }
    Ok(())
}

/// The invoking user: the real uid, or the user root acts for through
/// sudo (see [`moat_policy::rbac::invoker`]).
pub fn invoking_principal(global: &GlobalArgs) -> Principal {
    Principal::from_uid(global.invoker.uid)
}

/// Authorise `policy` for `who` (RBAC from `rbac_file` or the default
/// path), print the one-time warning, and append the decision to the audit
/// log. Used by `moat policy check` and by `moat run`. `extra` holds what
/// the command line asks for beyond the policy (a `--rootfs` directory).
///
/// Only root acting as itself may name another RBAC file: for anyone
/// else `--rbac` is ignored with a notice and the site file decides.
pub fn authorize(
    global: &GlobalArgs,
    action: &str,
    policy: &Policy,
    who: &Principal,
    rbac_file: Option<&Path>,
    extra: &[rbac::Request],
) -> anyhow::Result<Decision> {
    authorize_by(
        global,
        action,
        rbac_file,
        |rbac, path| rbac::authorize_with(rbac, path, who, policy, extra),
        |d| AuditRecord::new(action, who, policy, d),
    )
}

/// [`authorize`] for what no policy asks: `reqs` about `object` (a file
/// whose content has `digest`), audited under `action`.
pub fn authorize_requests(
    global: &GlobalArgs,
    action: &str,
    who: &Principal,
    rbac_file: Option<&Path>,
    reqs: &[rbac::Request],
    object: &str,
    digest: &str,
) -> anyhow::Result<Decision> {
    authorize_by(
        global,
        action,
        rbac_file,
        |rbac, path| rbac::authorize_requests(rbac, path, who, reqs),
        |d| AuditRecord::for_object(action, who, object, digest, d),
    )
}

fn authorize_by(
    global: &GlobalArgs,
    action: &str,
    rbac_file: Option<&Path>,
    decide: impl FnOnce(Option<&Rbac>, &Path) -> Decision,
    record: impl FnOnce(&Decision) -> AuditRecord,
) -> anyhow::Result<Decision> {
    let rbac_file = match rbac_file {
        Some(f) if !global.invoker.is_root() => {
            crate::global::ignored(
                &global.invoker,
                &format!(
                    "--rbac {} (the site RBAC file {} decides)",
                    f.display(),
                    rbac::DEFAULT_RBAC_PATH
                ),
            );
            None
        }
        other => other,
    };
    let path = rbac_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(rbac::DEFAULT_RBAC_PATH));
    // `symlink_metadata`: a dangling link at the default path is a broken
    // RBAC file, not a missing one.
    let rbac = if rbac_file.is_some() || path.symlink_metadata().is_ok() {
        Some(Rbac::load(&path)?)
    } else {
        None
    };
    let decision = decide(rbac.as_ref(), &path);
    let rec = record(&decision);
    let audited = rbac::append_audit(&global.root, &rec);
    if let Some(w) = &decision.warning {
        // Once per state root: a marker next to the audit log, created
        // only in the directory the audit append has just checked, and
        // never through a link (`create_new` does not follow one).
        let marker = global.root.join("audit").join(".no-rbac-warned");
        let first = audited.is_err()
            || std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&marker)
                .is_ok();
        if first {
            eprintln!("moat: warning: {w}");
        }
    }
    if let Err(e) = audited {
        let msg = format!("{:#}", anyhow::Error::from(e));
        if action == "check" {
            eprintln!("moat: warning: {msg}");
        } else {
            bail!(msg);
        }
    }
    Ok(decision)
}

fn check(global: &GlobalArgs, a: CheckArgs) -> anyhow::Result<ExitCode> {
    // `auto` is checked at its widest (baseline's calls): what any image
    // narrows it from.
    let widest = moat_policy::auto::ImageSyscalls::widest("policy check");
    let policy = match Policy::resolve_for_image(&a.policy, &widest).map_err(anyhow::Error::from) {
        Ok(p) => p,
        Err(e) => {
            if a.format == TextOrJson::Json {
                println!(
                    "{}",
                    serde_json::json!({ "policy": a.policy, "valid": false, "allowed": false, "reasons": [format!("{e:#}")] })
                );
            } else {
                eprintln!("moat: error: {e:#}");
            }
            return Ok(ExitCode::from(crate::global::EXIT_FAILURE));
        }
    };
    let who = match &a.as_user {
        Some(u) => Principal::lookup(u)?,
        None => invoking_principal(global),
    };
    let d = authorize(global, "check", &policy, &who, a.rbac.as_deref(), &[])?;
    match a.format {
        TextOrJson::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "policy": policy.name,
                "digest": format!("sha256:{}", policy.digest()),
                "valid": true,
                "principal": who.name,
                "uid": who.uid,
                "roles": d.roles,
                "allowed": d.allowed,
                "reasons": d.reasons,
            }))?
        ),
        TextOrJson::Text => {
            if d.allowed {
                let via = if d.roles.is_empty() {
                    "no RBAC file".to_string()
                } else {
                    format!("roles: {}", d.roles.join(", "))
                };
                println!(
                    "policy {}: valid, allowed for {} ({via})",
                    policy.name, who.name
                );
            } else {
                println!("policy {}: refused for {}:", policy.name, who.name);
                for r in &d.reasons {
                    println!("  - {r}");
                }
            }
        }
    }
    Ok(if d.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::global::EXIT_FAILURE)
    })
}
