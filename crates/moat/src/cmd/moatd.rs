//! The client commands of moatd (`apply`, `delete`, `get`, `describe`,
//! `rollout`, `events`, `logs deployment/NAME`, `audit verify`): each is
//! one request on moatd's socket, rendered the way kubectl shows it. The
//! daemon decides who may do what from the socket's peer credentials;
//! nothing here is trusted by it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Where moatd listens.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArg {
    /// moatd's API socket.
    #[arg(long, env = "MOATD_SOCKET", default_value = "/run/moat/moatd.sock")]
    pub socket: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat apply -f web.yaml
  moat apply -f manifests/      # every .yaml, .yml and .json file, in name order

Objects: apps/v1 Deployment, v1 Pod, Secret, ConfigMap, PersistentVolumeClaim,
moat.dev/v1 Policy (docs/moatd.md). A field moatd does not implement is refused.")]
pub struct ApplyArgs {
    /// Manifest file or directory.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR",
        required = true
    )]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  moat delete -f web.yaml
  moat delete deployment/web")]
pub struct DeleteArgs {
    /// Manifest file or directory whose objects are deleted.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR")]
    pub files: Vec<PathBuf>,
    /// Objects as TYPE/NAME (deployment/web, pod/x, secret/s, configmap/c, pvc/v).
    pub objects: Vec<String>,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    Yaml,
    Wide,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// deployments, pods, volumes (PersistentVolumeClaims) or secrets.
    pub what: String,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    /// TYPE/NAME, or TYPE NAME.
    pub what: String,
    pub name: Option<String>,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Wait for a rollout to finish (exit 1 if it missed its deadline).
    Status {
        /// deployment/NAME
        target: String,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The revisions of a deployment.
    History {
        target: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Go back to the previous revision (or --to-revision N).
    Undo {
        target: String,
        #[arg(long)]
        to_revision: Option<u32>,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing new events.
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check that no entry of moatd's audit log was removed or edited.
    Verify {
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// One request; the JSON answer, or an error with moatd's message.
fn call(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach moatd at {} (is it running? systemctl start moatd; another socket: --socket or MOATD_SOCKET)",
            socket.display()
        )
    })?;
    let text = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: moatd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(500);
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if status != 200 {
        bail!("{}", v["error"].as_str().unwrap_or("moatd gave no answer"));
    }
    Ok(v)
}

/// Manifest files: FILE, or every .yaml/.yml/.json in DIR.
fn manifest_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    matches!(
                        f.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn read_manifest(f: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(f).with_context(|| {
        format!(
            "cannot read {}: pass a manifest file or directory",
            f.display()
        )
    })?;
    Ok(json!({"file": f.display().to_string(), "text": text}))
}

pub fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    for f in manifest_files(&args.files)? {
        let v = call(
            &args.socket.socket,
            "POST",
            "/v1/apply",
            Some(&read_manifest(&f)?),
        )?;
        for n in v["notices"].as_array().into_iter().flatten() {
            errln!("moat: notice: {}", n.as_str().unwrap_or(""));
        }
        for l in v["lines"].as_array().into_iter().flatten() {
            outln!("{}", l.as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `deployment/web` or (`deployment`, `web`) as the kind moatd stores.
fn kind_of(word: &str) -> anyhow::Result<&'static str> {
    Ok(match word {
        "deployment" | "deployments" | "deploy" | "deployment.apps" => "Deployment",
        "pod" | "pods" | "po" => "Pod",
        "secret" | "secrets" => "Secret",
        "configmap" | "configmaps" | "cm" => "ConfigMap",
        "pvc" | "persistentvolumeclaim" | "volume" | "volumes" => "PersistentVolumeClaim",
        "policy" | "policies" | "policy.moat.dev" => "Policy",
        other => bail!(
            "unknown object type {other:?}: deployment, pod, secret, configmap, pvc or policy"
        ),
    })
}

fn split_target(t: &str) -> anyhow::Result<(&'static str, String)> {
    match t.split_once('/') {
        Some((k, n)) if !n.is_empty() => Ok((kind_of(k)?, n.to_string())),
        _ => bail!("{t:?}: name the object as TYPE/NAME, such as deployment/web"),
    }
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    if args.files.is_empty() && args.objects.is_empty() {
        bail!("moat delete needs -f FILE or TYPE/NAME");
    }
    let mut lines = Vec::new();
    for f in manifest_files(&args.files)? {
        let v = call(
            &args.socket.socket,
            "POST",
            "/v1/delete",
            Some(&read_manifest(&f)?),
        )?;
        lines.extend(v["lines"].as_array().cloned().unwrap_or_default());
    }
    if !args.objects.is_empty() {
        let objects: Vec<Value> = args
            .objects
            .iter()
            .map(|o| split_target(o).map(|(k, n)| json!({"kind": k, "name": n})))
            .collect::<anyhow::Result<_>>()?;
        let v = call(
            &args.socket.socket,
            "POST",
            "/v1/delete",
            Some(&json!({"objects": objects})),
        )?;
        lines.extend(v["lines"].as_array().cloned().unwrap_or_default());
    }
    for l in lines {
        outln!("{}", l.as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

/// The table columns of each list, kubectl's.
fn columns(what: &str, wide: bool) -> &'static [&'static str] {
    match (what, wide) {
        ("deployments", false) => &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        ("deployments", true) => &[
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "REVISION",
            "POLICY",
            "ISOLATION",
            "IMAGE",
        ],
        ("pods", false) => &["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        ("pods", true) => &[
            "NAME", "READY", "STATUS", "RESTARTS", "AGE", "OWNER", "REVISION", "MESSAGE",
        ],
        ("volumes", _) => &[
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS MODES",
            "AGE",
        ],
        _ => &["NAME", "TYPE", "DATA", "AGE"],
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".to_string(),
        other => other.to_string(),
    }
}

fn table(rows: &[Value], cols: &[&str]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let width: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |parts: Vec<String>| -> String {
        let n = parts.len();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                if i + 1 == n {
                    p
                } else {
                    format!("{p:<w$}   ", w = width[i])
                }
            })
            .collect::<String>()
    };
    let mut out = vec![line(cols.iter().map(|c| c.to_string()).collect())];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

/// A small YAML rendering of JSON (for -o yaml).
fn yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                match x {
                    Value::Object(o) if !o.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        yaml(x, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        yaml(x, indent, out);
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(x))),
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for x in a {
                let mut inner = String::new();
                yaml(x, indent + 2, &mut inner);
                let inner = inner.trim_start().to_string();
                if matches!(x, Value::Object(o) if !o.is_empty())
                    || matches!(x, Value::Array(a) if !a.is_empty())
                {
                    out.push_str(&format!("{pad}- {inner}"));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(x)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Object(_) => "{}".to_string(),
        Value::Array(_) => "[]".to_string(),
        other => other.to_string(),
    }
}

fn print_as(v: &Value, output: Option<Output>, cols: &[&str]) {
    match output {
        Some(Output::Json) => outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Some(Output::Yaml) => {
            let mut s = String::new();
            yaml(v, 0, &mut s);
            print!("{}", crate::display::text(&s));
        }
        _ => outln!(
            "{}",
            table(v.as_array().map_or(&[][..], Vec::as_slice), cols)
        ),
    }
}

pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let what = match args.what.as_str() {
        "deployments" | "deployment" | "deploy" => "deployments",
        "pods" | "pod" | "po" => "pods",
        "volumes" | "volume" | "pvc" | "persistentvolumeclaims" => "volumes",
        "secrets" | "secret" => "secrets",
        other => bail!("moat get {other}: expected deployments, pods, volumes or secrets"),
    };
    let v = call(&args.socket.socket, "GET", &format!("/v1/{what}"), None)?;
    if v.as_array().is_some_and(Vec::is_empty) && args.output.is_none() {
        errln!("No resources found in default namespace.");
        return Ok(ExitCode::SUCCESS);
    }
    print_as(
        &v,
        args.output,
        columns(what, args.output == Some(Output::Wide)),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn describe(args: DescribeArgs) -> anyhow::Result<ExitCode> {
    let (kind, name) = match &args.name {
        Some(n) => (args.what.clone(), n.clone()),
        None => match args.what.split_once('/') {
            Some((k, n)) => (k.to_string(), n.to_string()),
            None => bail!("moat describe TYPE/NAME (or TYPE NAME)"),
        },
    };
    let v = call(
        &args.socket.socket,
        "GET",
        &format!("/v1/describe/{kind}/{name}"),
        None,
    )?;
    let mut s = String::new();
    yaml(&v, 0, &mut s);
    print!("{}", crate::display::text(&s));
    Ok(ExitCode::SUCCESS)
}

fn deployment_name(target: &str) -> anyhow::Result<String> {
    match split_target(target)? {
        ("Deployment", n) => Ok(n),
        _ => bail!("{target:?}: rollouts are of deployments: deployment/NAME"),
    }
}

pub fn rollout(cmd: RolloutCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RolloutCommand::Status {
            target,
            timeout,
            socket,
        } => {
            let name = deployment_name(&target)?;
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let mut last = String::new();
            loop {
                let v = call(
                    &socket.socket,
                    "GET",
                    &format!("/v1/rollout/status/{name}"),
                    None,
                )?;
                let msg = v["message"].as_str().unwrap_or("").to_string();
                match v["state"].as_str() {
                    Some("Complete") => {
                        outln!("{msg}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    Some("Failed") => bail!("{}", msg.trim_start_matches("error: ")),
                    _ => {}
                }
                if msg != last {
                    outln!("{msg}");
                    last = msg;
                }
                if Instant::now() > deadline {
                    bail!(
                        "timed out waiting for the rollout of deployment/{name} after {timeout} s"
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        RolloutCommand::History { target, socket } => {
            let name = deployment_name(&target)?;
            let v = call(
                &socket.socket,
                "GET",
                &format!("/v1/rollout/history/{name}"),
                None,
            )?;
            outln!("deployment.apps/{name}");
            outln!(
                "{}",
                table(
                    v.as_array().map_or(&[][..], Vec::as_slice),
                    &["REVISION", "CHANGE-CAUSE"]
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        RolloutCommand::Undo {
            target,
            to_revision,
            socket,
        } => {
            let name = deployment_name(&target)?;
            let v = call(
                &socket.socket,
                "POST",
                &format!("/v1/rollout/undo/{name}"),
                Some(&json!({"toRevision": to_revision})),
            )?;
            for l in v["lines"].as_array().into_iter().flatten() {
                outln!("{}", l.as_str().unwrap_or(""));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let mut after = 0i64;
    let mut first = true;
    loop {
        let v = call(
            &args.socket.socket,
            "GET",
            &format!("/v1/events?after={after}"),
            None,
        )?;
        let rows = v.as_array().cloned().unwrap_or_default();
        if first {
            outln!(
                "{:<22} {:<8} {:<26} {:<36} MESSAGE",
                "TIME",
                "TYPE",
                "REASON",
                "OBJECT"
            );
            first = false;
        }
        for e in &rows {
            after = after.max(e["seq"].as_i64().unwrap_or(0));
            outln!(
                "{:<22} {:<8} {:<26} {:<36} {}",
                cell(&e["time"]),
                cell(&e["type"]),
                cell(&e["reason"]),
                cell(&e["object"]),
                cell(&e["message"])
            );
        }
        if !args.follow && rows.len() < 1000 {
            return Ok(ExitCode::SUCCESS);
        }
        if rows.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `moat logs deployment/NAME`: the output of one of its pods.
pub fn logs(target: &str, tail: Option<usize>) -> anyhow::Result<ExitCode> {
    let name = deployment_name(target)?;
    let socket = SocketArg {
        socket: std::env::var_os("MOATD_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/moat/moatd.sock")),
    };
    let q = tail.map(|t| format!("?tail={t}")).unwrap_or_default();
    let v = call(&socket.socket, "GET", &format!("/v1/logs/{name}{q}"), None)?;
    print!("{}", v["text"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

pub fn audit(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify { socket } = cmd;
    let v = call(&socket.socket, "GET", "/v1/audit/verify", None)?;
    let problems = v["problems"].as_array().cloned().unwrap_or_default();
    if problems.is_empty() {
        outln!(
            "audit log intact: {} entries, hash chain verified",
            v["entries"]
        );
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        errln!("moat: audit: {}", p.as_str().unwrap_or(""));
    }
    errln!(
        "moat: error: the audit log was tampered with ({} problem(s))",
        problems.len()
    );
    Ok(ExitCode::from(crate::global::EXIT_FAILURE))
}
