//! The daemon's shared state: database, audit log, runtime, probes, and
//! the event sink (database, audit log, optional loopback webhook).

use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::audit::Audit;
use crate::probe::Probes;
use crate::runtime::Runtime;
use crate::store::Store;

/// Nomad-like restart limits: `attempts` restarts within `interval`, with
/// a back-off doubling from `delay` up to `max_delay`; then give up.
#[derive(Debug, Clone, Copy)]
pub struct RestartLimits {
    pub attempts: usize,
    pub interval: Duration,
    pub delay: Duration,
    pub max_delay: Duration,
}

impl Default for RestartLimits {
    fn default() -> Self {
        RestartLimits {
            attempts: 5,
            interval: Duration::from_secs(300),
            delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

pub struct Daemon {
    pub state: PathBuf,
    pub rbac: PathBuf,
    /// Where ConfigMap and Secret volumes are written (a tmpfs).
    pub files: PathBuf,
    pub store: Store,
    pub audit: Audit,
    pub runtime: Runtime,
    pub probes: Probes,
    pub limits: RestartLimits,
    /// This executable, for `moatd probe-net`.
    pub exe: PathBuf,
    /// `host:port/path` on a loopback address.
    pub webhook: Option<(std::net::SocketAddr, String)>,
    wake: (Mutex<bool>, Condvar),
    /// Per workload: no new replica before this time (ms), after a
    /// failed create, and the delay that led to it.
    pub create_after: Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// Replicas being stopped and removed (in their own threads).
    pub removing: Mutex<std::collections::HashSet<String>>,
}

impl Daemon {
    pub fn new(
        state: PathBuf,
        rbac: PathBuf,
        store: Store,
        audit: Audit,
        runtime: Runtime,
        limits: RestartLimits,
        webhook: Option<(std::net::SocketAddr, String)>,
    ) -> Daemon {
        Daemon {
            state,
            rbac,
            files: PathBuf::from("/run/moatd/files"),
            store,
            audit,
            runtime,
            probes: Probes::default(),
            limits,
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("moatd")),
            webhook,
            wake: (Mutex::new(false), Condvar::new()),
            create_after: Mutex::new(Default::default()),
            removing: Mutex::new(Default::default()),
        }
    }

    /// The current data of a file volume's ConfigMap or Secret; a Secret
    /// applied by someone other than the volume's reader counts as
    /// missing.
    pub fn file_source(&self, v: &crate::template::FileVolume) -> Option<crate::files::Source> {
        let s = self.store.object(&v.kind, &v.source).ok().flatten()?;
        if v.reader.as_ref().is_some_and(|r| *r != s.applied_by) {
            return None;
        }
        match s.object {
            crate::manifest::Object::Secret(d) => Some((true, d.data)),
            crate::manifest::Object::ConfigMap(d) => Some((false, d.data)),
            _ => None,
        }
    }

    /// Wakes the reconcile loop (after an apply).
    pub fn kick(&self) {
        let mut w = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        *w = true;
        self.wake.1.notify_all();
    }

    /// Sleeps until kicked or `d` passed.
    pub fn nap(&self, d: Duration) {
        let w = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        let (mut w, _) = self
            .wake
            .1
            .wait_timeout_while(w, d, |k| !*k)
            .unwrap_or_else(|e| e.into_inner());
        *w = false;
    }

    /// Records a decision in the audit log (and its head in the database).
    pub fn audit(
        &self,
        uid: u32,
        who: &str,
        action: &str,
        object: &str,
        decision: &str,
        reasons: &[String],
    ) {
        match self
            .audit
            .append(uid, who, action, object, decision, reasons)
        {
            Ok((seq, hash)) => {
                let _ = self.store.set_audit_head(seq, &hash);
            }
            Err(e) => eprintln!("moatd: error: {e}"),
        }
    }

    /// An event: stored for `moat events`, audited, sent to the webhook.
    pub fn event(&self, kind: &str, object: &str, reason: &str, message: &str) {
        let _ = self.store.add_event(kind, object, reason, message);
        self.audit(0, "moatd", reason, object, "event", &[message.to_string()]);
        if let Some((addr, path)) = self.webhook.clone() {
            let body = serde_json::json!({
                "type": kind, "object": object, "reason": reason, "message": message,
                "time": moat_policy::plan::time::now_rfc3339(),
            })
            .to_string();
            match self.runtime.spawner.clone() {
                // From a filtered thread: the spawner posts it.
                Some(sp) => {
                    std::thread::spawn(move || sp.ask(&crate::spawner::Op::Webhook { body }));
                }
                None => {
                    std::thread::spawn(move || post(addr, &path, &body));
                }
            }
        }
    }

    /// Makes the files root a tmpfs ([`crate::files::ensure_tmpfs`]),
    /// through the spawner when there is one (mounting is not among the
    /// reconcile thread's calls).
    pub fn files_tmpfs(&self) -> Result<(), crate::files::FilesError> {
        let Some(sp) = &self.runtime.spawner else {
            return crate::files::ensure_tmpfs(&self.files);
        };
        let r = sp
            .ask(&crate::spawner::Op::FilesTmpfs)
            .map_err(std::io::Error::other)
            .and_then(|r| match r.error {
                Some(e) => Err(std::io::Error::other(e)),
                None => Ok(()),
            });
        r.map_err(|source| crate::files::FilesError::Root {
            path: self.files.clone(),
            source,
        })
    }

    /// Creates a claim's named volume (mkfs runs), through the spawner
    /// when there is one.
    pub fn create_volume(
        &self,
        vs: &moat_runtime::volume_store::Store,
        name: &str,
        bytes: u64,
    ) -> Result<(), String> {
        let Some(sp) = &self.runtime.spawner else {
            return vs.create(name, bytes).map(drop).map_err(|e| e.to_string());
        };
        let op = crate::spawner::Op::CreateVolume {
            name: name.to_string(),
            bytes,
        };
        match sp.ask(&op) {
            Ok(r) => r.error.map_or(Ok(()), Err),
            Err(e) => Err(format!("{:#}", anyhow::Error::from(e))),
        }
    }
}

/// One POST of an event to the loopback webhook.
pub fn post(addr: std::net::SocketAddr, path: &str, body: &str) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_ok() {
        let mut sink = [0u8; 256];
        let _ = s.read(&mut sink);
    }
}

/// Parses `--webhook http://127.0.0.1:PORT/PATH`: loopback addresses only.
pub fn parse_webhook(url: &str) -> Result<(std::net::SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--webhook {url}: expected http://127.0.0.1:PORT/PATH"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr: std::net::SocketAddr = host
        .parse()
        .map_err(|_| format!("--webhook {url}: expected an IP:PORT, such as 127.0.0.1:9000"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--webhook {url}: events go to a loopback address only (a local relay forwards them further)"
        ));
    }
    Ok((addr, path))
}
