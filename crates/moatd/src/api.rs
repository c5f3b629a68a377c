//! The API on the unix socket. Who asks is the peer's uid from
//! `SO_PEERCRED`, never anything in the request; every request of a user
//! with no role in the RBAC file is refused, and each uid may have only a
//! few requests in flight, so that a burst from one user cannot starve
//! another (root has its own, larger allowance).

use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_policy::rbac::Principal;
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::http::{self, Request};

/// Requests in flight per non-root uid.
pub const PER_UID: usize = 4;
/// Requests in flight for root.
pub const ROOT: usize = 64;
/// Connections being refused with 429 at once.
const MAX_REJECTING: usize = 64;

#[derive(Default)]
struct InFlight(Mutex<HashMap<u32, usize>>);

impl InFlight {
    fn enter(&self, uid: u32) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(uid).or_default();
        let limit = if uid == 0 { ROOT } else { PER_UID };
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }
    fn leave(&self, uid: u32) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&uid) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The API threads' system calls, as data (DESIGN rule 9).
pub const ALLOWLIST: &str = include_str!("../seccomp/api.json");

/// The filter of [`ALLOWLIST`], compiled by the build (build.rs).
pub fn filter() -> Vec<moat_policy::plan::SockFilter> {
    moat_policy::allowlist::decode(include_bytes!(concat!(env!("OUT_DIR"), "/api.bpf")))
}

/// Confines the calling thread (and the request threads it starts) to
/// [`ALLOWLIST`].
pub fn confine() -> anyhow::Result<()> {
    moat_runtime::install_seccomp(&filter(), false)?;
    Ok(())
}

pub fn serve(d: Arc<Daemon>, listener: UnixListener) {
    let inflight = Arc::new(InFlight::default());
    let rejecting = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let Ok(cred) = rustix::net::sockopt::socket_peercred(&stream) else {
            continue;
        };
        let uid = cred.uid.as_raw();
        if !inflight.enter(uid) {
            // Answered without work, from a bounded number of threads;
            // past that the connection is just closed.
            if rejecting.fetch_add(1, Ordering::SeqCst) < MAX_REJECTING {
                let rejecting = rejecting.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                    let _ = http::read_request(&stream);
                    http::write_response(
                        &stream,
                        429,
                        &json!({"error": format!("too many requests in flight from uid {uid} (at most {PER_UID}); retry")}),
                    );
                    rejecting.fetch_sub(1, Ordering::SeqCst);
                });
            } else {
                rejecting.fetch_sub(1, Ordering::SeqCst);
            }
            continue;
        }
        let (d, inflight) = (d.clone(), inflight.clone());
        std::thread::spawn(move || {
            handle(&d, stream, uid);
            inflight.leave(uid);
        });
    }
}

fn handle(d: &Daemon, stream: UnixStream, uid: u32) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let (status, body) = match http::read_request(&stream) {
        Ok(req) => {
            let who = Principal::from_uid(uid);
            route(d, &who, &req)
        }
        Err((s, m)) => (s, json!({ "error": m })),
    };
    http::write_response(&stream, status, &body);
}

fn refused(reasons: Vec<String>) -> (u16, Value) {
    (403, json!({ "error": reasons.join("\n") }))
}

/// Whether `who` may use the API at all: root, or anyone with a role.
fn has_role(d: &Daemon, who: &Principal) -> Result<(), String> {
    if who.uid == 0 {
        return Ok(());
    }
    match moat_policy::rbac::Rbac::load(&d.rbac) {
        Ok(r) if !r.roles_of(who).is_empty() => Ok(()),
        Ok(r) => Err(format!(
            "{} (uid {}) has no role in {}: ask an administrator for one",
            who.name, who.uid, r.source
        )),
        Err(e) => Err(format!(
            "{} (uid {}) may not use moatd: {e}",
            who.name, who.uid
        )),
    }
}

fn route(d: &Daemon, who: &Principal, req: &Request) -> (u16, Value) {
    if let Err(e) = has_role(d, who) {
        d.audit(
            who.uid,
            &who.name,
            &format!("{} {}", req.method, req.path),
            "api",
            "deny",
            std::slice::from_ref(&e),
        );
        return (403, json!({ "error": e }));
    }
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let body = || serde_json::from_slice::<Value>(&req.body).unwrap_or(Value::Null);
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["v1", "ping"]) => (200, json!({"uid": who.uid, "user": who.name})),
        ("POST", ["v1", "apply"]) => {
            let b = body();
            let text = b["text"].as_str().unwrap_or("");
            let file = b["file"].as_str().unwrap_or("-");
            match crate::manifest::parse_stream(text, file) {
                Err(e) => (422, json!({ "error": e.to_string() })),
                Ok(objs) if objs.is_empty() => {
                    (422, json!({"error": format!("{file}: no objects")}))
                }
                Ok(objs) => match crate::apply::apply(d, who, &objs) {
                    Ok(o) => (200, serde_json::to_value(o).unwrap_or_default()),
                    Err(e) => refused(e),
                },
            }
        }
        ("POST", ["v1", "delete"]) => {
            let b = body();
            if let Some(text) = b["text"].as_str() {
                let file = b["file"].as_str().unwrap_or("-");
                let list: Vec<(String, String)> = match crate::manifest::parse_stream(text, file) {
                    Ok(objs) => objs
                        .iter()
                        .map(|o| (o.kind().to_string(), o.name().to_string()))
                        .collect(),
                    Err(e) => return (422, json!({ "error": e.to_string() })),
                };
                return match crate::apply::delete(d, who, &list) {
                    Ok(o) => (200, serde_json::to_value(o).unwrap_or_default()),
                    Err(e) => refused(e),
                };
            }
            let list: Vec<(String, String)> = b["objects"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| {
                    Some((
                        o["kind"].as_str()?.to_string(),
                        o["name"].as_str()?.to_string(),
                    ))
                })
                .collect();
            match crate::apply::delete(d, who, &list) {
                Ok(o) => (200, serde_json::to_value(o).unwrap_or_default()),
                Err(e) => refused(e),
            }
        }
        ("POST", ["v1", "rollout", "undo", name]) => {
            let to = body()["toRevision"].as_u64().map(|n| n as u32);
            match crate::apply::undo(d, who, name, to) {
                Ok(o) => (200, serde_json::to_value(o).unwrap_or_default()),
                Err(e) => refused(e),
            }
        }
        ("GET", ["v1", "rollout", "status", name]) => crate::views::rollout_status(d, name),
        ("GET", ["v1", "rollout", "history", name]) => crate::views::history(d, name),
        ("GET", ["v1", "deployments"]) => crate::views::deployments(d),
        ("GET", ["v1", "pods"]) => crate::views::pods(d),
        ("GET", ["v1", "volumes"]) => crate::views::volumes(d),
        ("GET", ["v1", "secrets"]) => crate::views::secrets(d),
        ("GET", ["v1", "describe", kind, name]) => crate::views::describe(d, kind, name),
        ("GET", ["v1", "events"]) => {
            let after = req.param("after").and_then(|a| a.parse().ok()).unwrap_or(0);
            match d.store.events(after) {
                Ok(e) => (200, json!(e)),
                Err(e) => (500, json!({"error": e.to_string()})),
            }
        }
        ("GET", ["v1", "logs", name]) => {
            crate::views::logs(d, name, req.param("tail").and_then(|t| t.parse().ok()))
        }
        ("GET", ["v1", "audit", "verify"]) => {
            let head = d.store.audit_head().ok().flatten();
            match crate::audit::verify(&crate::audit::Audit::path_in(&d.state), head) {
                Ok(v) => (200, serde_json::to_value(v).unwrap_or_default()),
                Err(e) => (500, json!({"error": e.to_string()})),
            }
        }
        _ => (
            404,
            json!({"error": format!("no such API: {} {}", req.method, req.path)}),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_api_threads_cannot_start_processes_or_reach_the_network() {
        let calls = moat_policy::allowlist::parse("seccomp/api.json", super::ALLOWLIST).unwrap();
        for denied in [
            "execve",
            "execveat",
            "fork",
            "vfork",
            "socket",
            "connect",
            "ptrace",
            "mount",
            "setns",
            "unshare",
            "bpf",
            "keyctl",
            "add_key",
            "kill",
            "setuid",
            "init_module",
        ] {
            assert!(!calls.allow.contains(denied), "{denied} is allowed");
        }
        assert!(calls.allow.contains("accept4") && calls.allow.contains("getsockopt"));
        // The build's program is the list's.
        assert_eq!(
            super::filter(),
            moat_policy::allowlist::compile("seccomp/api.json", super::ALLOWLIST).unwrap()
        );
    }
}
