//! Merging an image's config with what the user asked for into the
//! container's first process, as podman and Docker do: a command replaces
//! the image's Cmd (the Entrypoint stays), `-e` overrides image Env by
//! key, `-w` and `--user` replace WorkingDir and User.

use anyhow::bail;
use moat_policy::ProcessSpec;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an image config merged with the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// What a front end asks for the first process (podman's options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessArgs {
    /// The image as the user wrote it (for error messages).
    pub image: String,
    /// `--entrypoint`: a command, a JSON array, or "" for none.
    pub entrypoint: Option<String>,
    /// The command after the image (replaces the image's Cmd).
    pub command: Vec<String>,
    /// `-e KEY=VALUE` or `-e KEY` (copied from this environment).
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `--user UID[:GID]` or `NAME[:GROUP]`.
    pub user: Option<String>,
    pub tty: bool,
    pub interactive: bool,
}

/// A user resolved inside the image: uid, gid, supplementary gids.
pub type Ids = (u32, u32, Vec<u32>);

/// Merges `image` with `args`; `resolve_user` maps the chosen user spec
/// (empty for root) to ids inside the image.
pub fn merge_process(
    image: &ImageDefaults,
    args: &ProcessArgs,
    hostname: &str,
    resolve_user: impl FnOnce(&str) -> anyhow::Result<Ids>,
) -> anyhow::Result<ProcessSpec> {
    let mut argv = match &args.entrypoint {
        Some(e) => parse_entrypoint(e)?,
        None => image.entrypoint.clone(),
    };
    if !args.command.is_empty() {
        argv.extend(args.command.iter().cloned());
    } else if args.entrypoint.is_none() {
        argv.extend(image.cmd.iter().cloned());
    }
    if argv.is_empty() {
        bail!(
            "image {:?} has no Entrypoint or Cmd; give a command: moat run {} CMD [ARG...]",
            args.image,
            args.image
        );
    }

    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    set(DEFAULT_PATH.to_string());
    set(format!("HOSTNAME={hostname}"));
    if args.tty {
        set("TERM=xterm".to_string());
    }
    for e in &image.env {
        set(e.clone());
    }
    for e in &args.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => set(e.clone()),
            Some(_) => bail!("invalid -e {e:?}: expected KEY=VALUE with a non-empty KEY"),
            None if e.is_empty() => bail!("invalid -e \"\": expected KEY=VALUE"),
            None => {
                if let Ok(v) = std::env::var(e) {
                    set(format!("{e}={v}"));
                }
            }
        }
    }

    let cwd = match args.workdir.as_deref() {
        Some(w) => w.to_string(),
        None if !image.working_dir.is_empty() => image.working_dir.clone(),
        None => "/".to_string(),
    };
    if !cwd.starts_with('/') {
        bail!("working directory {cwd:?} (-w) must be an absolute path");
    }
    let user = args.user.as_deref().unwrap_or(&image.user);
    let (uid, gid, additional_gids) = resolve_user(user)?;
    Ok(ProcessSpec {
        args: argv,
        env,
        cwd,
        uid,
        gid,
        additional_gids,
        tty: args.tty,
        interactive: args.interactive,
        hostname: hostname.to_string(),
    })
}

/// `--entrypoint`: a JSON array of strings, "" for none, else one command.
fn parse_entrypoint(e: &str) -> anyhow::Result<Vec<String>> {
    if e.is_empty() {
        return Ok(Vec::new());
    }
    if e.trim_start().starts_with('[') {
        return serde_json::from_str::<Vec<String>>(e).map_err(|err| {
            anyhow::anyhow!(
                "--entrypoint {e:?}: not a JSON array of strings ({err}); write a command, or [\"/bin/sh\",\"-c\"]"
            )
        });
    }
    Ok(vec![e.to_string()])
}

/// `moat exec`'s process: the container's first process (`first`) with
/// `args.command` as its command; `-e` adds to its environment by key,
/// `-w` and `--user` replace its working directory and user (else it
/// keeps the first process's). Capabilities, limits and the seccomp
/// filter are the container's plan's, never the request's.
pub fn exec_process(
    first: &ProcessSpec,
    args: &ProcessArgs,
    resolve_user: impl FnOnce(&str) -> anyhow::Result<Ids>,
) -> anyhow::Result<ProcessSpec> {
    if args.command.is_empty() {
        bail!("no command given: moat exec NAME CMD [ARG...]");
    }
    let mut p = first.clone();
    p.args = args.command.clone();
    for e in &args.env {
        let entry = match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => e.clone(),
            Some(_) => bail!("invalid -e {e:?}: expected KEY=VALUE with a non-empty KEY"),
            None if e.is_empty() => bail!("invalid -e \"\": expected KEY=VALUE"),
            None => match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            },
        };
        let key = entry.split('=').next().unwrap_or_default().to_string();
        p.env.retain(|x| x.split('=').next() != Some(key.as_str()));
        p.env.push(entry);
    }
    if let Some(w) = &args.workdir {
        if !w.starts_with('/') {
            bail!("working directory {w:?} (-w) must be an absolute path");
        }
        p.cwd = w.clone();
    }
    if let Some(u) = &args.user {
        let (uid, gid, groups) = resolve_user(u)?;
        (p.uid, p.gid, p.additional_gids) = (uid, gid, groups);
    }
    if args.tty && !p.env.iter().any(|e| e.starts_with("TERM=")) {
        p.env.push("TERM=xterm".to_string());
    }
    p.tty = args.tty;
    p.interactive = args.interactive;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first() -> ProcessSpec {
        ProcessSpec {
            args: vec!["/bin/server".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            cwd: "/srv".into(),
            uid: 7,
            gid: 8,
            additional_gids: vec![9],
            tty: false,
            interactive: false,
            hostname: "web".into(),
        }
    }

    #[test]
    fn exec_keeps_the_first_process_but_what_the_request_changes() {
        let req = ProcessArgs {
            command: vec!["sh".into()],
            env: vec!["A=2".into(), "B=3".into()],
            tty: true,
            interactive: true,
            ..ProcessArgs::default()
        };
        let p = exec_process(&first(), &req, |_| unreachable!()).unwrap();
        assert_eq!(p.args, ["sh"]);
        assert_eq!(p.env, ["PATH=/bin", "A=2", "B=3", "TERM=xterm"]);
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/srv", 7, 8));
        assert_eq!(p.additional_gids, [9]);
        assert_eq!(p.hostname, "web");
        assert!(p.tty && p.interactive);

        let req = ProcessArgs {
            command: vec!["id".into()],
            user: Some("1000".into()),
            workdir: Some("/tmp".into()),
            ..ProcessArgs::default()
        };
        let p = exec_process(&first(), &req, |u| {
            assert_eq!(u, "1000");
            Ok((1000, 1000, vec![]))
        })
        .unwrap();
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/tmp", 1000, 1000));
        assert!(p.additional_gids.is_empty() && !p.env.contains(&"TERM=xterm".to_string()));
    }

    #[test]
    fn exec_requests_are_checked() {
        let none = ProcessArgs::default();
        assert_eq!(
            exec_process(&first(), &none, |_| unreachable!())
                .unwrap_err()
                .to_string(),
            "no command given: moat exec NAME CMD [ARG...]"
        );
        let rel = ProcessArgs {
            command: vec!["x".into()],
            workdir: Some("tmp".into()),
            ..ProcessArgs::default()
        };
        assert_eq!(
            exec_process(&first(), &rel, |_| unreachable!())
                .unwrap_err()
                .to_string(),
            "working directory \"tmp\" (-w) must be an absolute path"
        );
        let bad = ProcessArgs {
            command: vec!["x".into()],
            env: vec!["=v".into()],
            ..ProcessArgs::default()
        };
        assert!(exec_process(&first(), &bad, |_| unreachable!()).is_err());
    }
}
