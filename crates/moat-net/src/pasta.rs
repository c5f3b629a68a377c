//! pasta (from the `passt` package) attached to a container's network
//! namespace: user-mode connectivity (a tap device whose traffic pasta
//! turns into ordinary host sockets) and the published ports.
//!
//! How it is started:
//! - `--userns /dev/net/userns --netns /dev/net/ns/ID`: join the user
//!   namespace that owns the container's network namespace (made for
//!   pasta's uid, [`crate::NetNs::create_owned`]), then the network
//!   namespace; pasta exits by itself when the bound file is removed (it
//!   watches the directory, which its jail binds at `/dev/net/ns`).
//! - `--config-net`: pasta copies the host's address and default route
//!   onto its tap device in the namespace.
//! - `--no-map-gw` unless [`PastaConfig::map_gateway`]: the gateway address
//!   does not lead to the host's loopback services.
//! - `-t`/`-u` per published port, `[ADDR/]HOST:CONTAINER`; no address
//!   binds every host address, as podman's `-p 8080:80` does. `-t none
//!   -u none` when nothing is published (pasta's default is `auto`).
//! - `-T none -U none`: no forwarding from the namespace to the host's
//!   loopback.
//! - `-f -q`, `-P /dev/net/pid` (written once set up: the readiness
//!   signal; a bind of `<state>.pid`, which moat creates for pasta's uid).
//! - `--runas UID:UID`: the uid moat already gave it.
//!
//! moat's jail around it ([`crate::sys::jail_before_exec`]): an
//! unprivileged uid and gid of its own ([`PastaConfig::uid`]), no groups,
//! no capability on the host but CAP_NET_BIND_SERVICE (published host
//! ports below 1024); a mount namespace of its own where `/dev/net` is a
//! tmpfs with a `tun` node owned by that uid (the host's is often 0600
//! root's) and the three paths above; its own session, SIGKILL when the
//! spawning thread ends (`PR_SET_PDEATHSIG`), no inherited descriptor;
//! [`Pasta`]'s drop kills and reaps it. Inside, pasta confines itself as
//! well: in the helper's user namespace it keeps only CAP_SYS_ADMIN
//! (entering the namespace for spliced loopback connections) and
//! CAP_NET_BIND_SERVICE, sets `no_new_privs`, installs its own seccomp
//! allowlist and moves into new mount (an empty tmpfs root), IPC and UTS
//! namespaces. What it can reach: host sockets as an ordinary user can
//! (any address: the filter sits in the container's namespace, before
//! pasta), the container's network namespace, no file of the host.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_plan::PortPublish;

use crate::sys;

/// How long pasta may take to set the namespace up.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum PastaError {
    #[error("cannot start pasta; install passt (apt-get install passt)")]
    Spawn(#[source] std::io::Error),
    #[error("cannot create pasta's file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pasta exited ({status}) before the network was set up: {log}")]
    Exited { status: String, log: String },
    #[error("pasta did not set the network up within {0:?}")]
    Timeout(Duration),
    #[error("published port {port}: `{ip}` is not an IP address; write e.g. 127.0.0.1 or ::1")]
    HostIp { port: u16, ip: String },
}

/// What pasta is started with.
#[derive(Debug, Clone)]
pub struct PastaConfig {
    /// The bound network namespace ([`crate::NetNs::path`]).
    pub netns: PathBuf,
    /// Ports to publish (host side bound by pasta).
    pub publish: Vec<PortPublish>,
    /// Let the gateway address reach the host's loopback (pasta's
    /// default); moat passes `false` unless a policy grants the host.
    pub map_gateway: bool,
    /// pasta's pid file and log are written next to this path
    /// (`<state>.pid`, `<state>.log`).
    pub state: PathBuf,
    /// The unprivileged host uid (and gid) pasta runs as; it owns the user
    /// namespace that owns the container's network namespace
    /// ([`crate::NetNs::create_owned`]). Unique to this container.
    pub uid: u32,
}

/// A running pasta. Dropping it kills and reaps the process.
#[derive(Debug)]
pub struct Pasta {
    child: Option<Child>,
    pid: u32,
}

fn with_ext(p: &Path, ext: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

/// pasta's arguments for `cfg` (without the program name). The paths are
/// those of pasta's jail (see [`crate::sys::jail_before_exec`]): the
/// namespace's directory at `/dev/net/ns`, the user namespace at
/// `/dev/net/userns`, the pid file at `/dev/net/pid`.
pub fn args(cfg: &PastaConfig) -> Result<Vec<String>, PastaError> {
    let file = cfg
        .netns
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut a: Vec<String> = vec![
        "--config-net".into(),
        "--userns".into(),
        "/dev/net/userns".into(),
        "--netns".into(),
        format!("/dev/net/ns/{file}"),
        "-f".into(),
        "-q".into(),
        "--runas".into(),
        format!("{0}:{0}", cfg.uid),
        "-P".into(),
        "/dev/net/pid".into(),
        "-T".into(),
        "none".into(),
        "-U".into(),
        "none".into(),
    ];
    if !cfg.map_gateway {
        a.push("--no-map-gw".into());
    }
    for proto in ["tcp", "udp"] {
        let flag = if proto == "tcp" { "-t" } else { "-u" };
        let mut any = false;
        for p in cfg.publish.iter().filter(|p| p.protocol == proto) {
            let addr = match &p.host_ip {
                Some(ip) => {
                    let ip: std::net::IpAddr = ip.parse().map_err(|_| PastaError::HostIp {
                        port: p.host_port,
                        ip: ip.clone(),
                    })?;
                    format!("{ip}/")
                }
                None => String::new(),
            };
            a.push(flag.into());
            a.push(format!("{addr}{}:{}", p.host_port, p.container_port));
            any = true;
        }
        if !any {
            a.push(flag.into());
            a.push("none".into());
        }
    }
    Ok(a)
}

/// Starts pasta for `cfg`, jailed as `cfg.uid` in the user namespace
/// `userns`, and waits until it has configured the namespace (its pid
/// file is written). The namespace's filter should be installed first:
/// pasta carries traffic as soon as it runs.
pub fn spawn(cfg: &PastaConfig, userns: BorrowedFd<'_>) -> Result<Pasta, PastaError> {
    let args = args(cfg)?;
    let pid_file = with_ext(&cfg.state, ".pid");
    let log_file = with_ext(&cfg.state, ".log");
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PastaError::File { path, source }
    };
    let _ = std::fs::remove_file(&pid_file);
    // Created here and given to pasta's uid: pasta writes it through its
    // jail's bind mount, without any right on the directory.
    let pid = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&pid_file)
        .map_err(file_err(&pid_file))?;
    std::os::unix::fs::fchown(&pid, Some(cfg.uid), Some(cfg.uid)).map_err(file_err(&pid_file))?;
    drop(pid);
    let log = File::create(&log_file).map_err(file_err(&log_file))?;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| PastaError::File {
            path: p.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in the path"),
        })
    };
    let dir = cfg.netns.parent().unwrap_or(Path::new("/"));
    let jail = sys::JailPaths {
        uid: cfg.uid,
        userns: userns.as_raw_fd(),
        netns_dir: c(dir)?,
        pid_file: c(&pid_file)?,
    };
    let mut cmd = Command::new("pasta");
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // The jail first: its change of uid clears the parent-death signal
    // that the helper hook sets.
    sys::jail_before_exec(&mut cmd, jail);
    sys::helper_before_exec(&mut cmd);
    let child = cmd.spawn().map_err(PastaError::Spawn)?;
    let mut pasta = Pasta {
        pid: child.id(),
        child: Some(child),
    };
    let start = Instant::now();
    loop {
        if std::fs::metadata(&pid_file).is_ok_and(|m| m.len() > 0) {
            let _ = std::fs::remove_file(&pid_file);
            return Ok(pasta);
        }
        if let Some(status) = pasta
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            pasta.child = None;
            let mut text = String::new();
            let _ = File::open(&log_file).and_then(|mut f| f.read_to_string(&mut text));
            let log: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("Failed to send") && !l.trim().is_empty())
                .collect();
            return Err(PastaError::Exited {
                status: status.to_string(),
                log: log.join("; "),
            });
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(PastaError::Timeout(READY_TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Pasta {
    /// pasta's process id (on the host).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills pasta and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pasta {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(host: u16, container: u16, protocol: &str, ip: Option<&str>) -> PortPublish {
        PortPublish {
            host_port: host,
            container_port: container,
            protocol: protocol.into(),
            host_ip: ip.map(String::from),
        }
    }

    #[test]
    fn arguments() {
        let cfg = PastaConfig {
            netns: "/run/moat/netns/abc".into(),
            publish: vec![
                publish(8080, 80, "tcp", Some("127.0.0.1")),
                publish(8443, 443, "tcp", None),
                publish(5353, 53, "udp", Some("::1")),
            ],
            map_gateway: false,
            state: "/run/moat/netns/abc.pasta".into(),
            uid: crate::helper_uid(0, 5),
        };
        assert_eq!(
            args(&cfg).unwrap().join(" "),
            "--config-net --userns /dev/net/userns --netns /dev/net/ns/abc -f -q --runas 1912602629:1912602629 -P /dev/net/pid -T none -U none --no-map-gw -t 127.0.0.1/8080:80 -t 8443:443 -u ::1/5353:53"
        );
        let cfg = PastaConfig {
            publish: vec![],
            map_gateway: true,
            ..cfg
        };
        let a = args(&cfg).unwrap().join(" ");
        assert!(a.ends_with("-U none -t none -u none"), "{a}");
        let bad = PastaConfig {
            publish: vec![publish(8080, 80, "tcp", Some("localhost"))],
            ..cfg
        };
        assert_eq!(
            args(&bad).unwrap_err().to_string(),
            "published port 8080: `localhost` is not an IP address; write e.g. 127.0.0.1 or ::1"
        );
    }
}
