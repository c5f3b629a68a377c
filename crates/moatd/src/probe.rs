//! Readiness and liveness probes, one thread per replica: exec probes run
//! through `moat exec` (under the container's own policy), httpGet and
//! tcpSocket probes connect to 127.0.0.1 inside the replica's network
//! namespace from a short-lived helper process (`moatd probe-net`). A
//! sandbox replica's namespace is its first process's; a micro-VM's is
//! the one its VMM runs in (`RUN_ROOT/netns/ID`, made for `network:
//! egress`), where slirp listens on each published container port and
//! forwards to the guest. The record's pid of a VM replica is its
//! supervisor on the host's network: never probed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::manifest::{Handler, Probe};
use crate::runtime::Runtime;
use crate::spawner::Program;
use crate::template::Template;

#[derive(Debug, Default)]
struct State {
    ready: bool,
    /// Since when `ready` holds (minReadySeconds counts from here).
    ready_since: Option<Instant>,
    /// Whether the replica runs (set by the reconcile loop).
    running: bool,
    /// The replica's network namespace (`/proc/PID/ns/net`, or a VM's
    /// bound namespace); `None`: unreachable.
    netns: Option<PathBuf>,
    /// A micro-VM: a connection is accepted by slirp whatever the guest
    /// does, so a tcpSocket probe also waits to see it is not closed.
    vm: bool,
    stop: bool,
    /// Liveness failed past its threshold: the replica was killed.
    killed: u32,
}

#[derive(Clone, Default)]
pub struct Probes {
    map: Arc<Mutex<HashMap<String, Arc<Mutex<State>>>>>,
}

impl Probes {
    /// Starts probing `name` (once) and tells the prober whether it runs.
    pub fn observe(
        &self,
        rt: &Runtime,
        name: &str,
        t: &Template,
        running: bool,
        target: Option<(PathBuf, bool)>,
    ) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let st = map.entry(name.to_string()).or_insert_with(|| {
            let st = Arc::new(Mutex::new(State::default()));
            if t.readiness.is_some() || t.liveness.is_some() {
                let (st2, rt, name, t) = (st.clone(), rt.clone(), name.to_string(), t.clone());
                std::thread::spawn(move || prober(st2, rt, name, t));
            }
            st
        });
        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
        if !running {
            s.set_ready(false);
        } else if t.readiness.is_none() {
            s.set_ready(true);
        }
        s.running = running;
        s.netns = target.as_ref().map(|t| t.0.clone());
        s.vm = target.is_some_and(|t| t.1);
    }

    pub fn ready(&self, name: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name)
            .is_some_and(|s| s.lock().unwrap_or_else(|e| e.into_inner()).ready)
    }

    /// Ready for at least `min_ready` (a Deployment's minReadySeconds):
    /// what Kubernetes calls available.
    pub fn available(&self, name: &str, min_ready: Duration) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).is_some_and(|s| {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            s.ready && s.ready_since.is_some_and(|t| t.elapsed() >= min_ready)
        })
    }

    pub fn forget(&self, name: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.remove(name) {
            s.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        }
    }
}

impl State {
    fn set_ready(&mut self, ready: bool) {
        if ready && !self.ready {
            self.ready_since = Some(Instant::now());
        } else if !ready {
            self.ready_since = None;
        }
        self.ready = ready;
    }
}

fn prober(st: Arc<Mutex<State>>, rt: Runtime, name: String, t: Template) {
    let started = Instant::now();
    let (mut r_ok, mut r_fail, mut l_fail) = (0u32, 0u32, 0u32);
    let mut next_r = Instant::now();
    let mut next_l = Instant::now();
    if let Some(p) = &t.readiness {
        next_r = started + Duration::from_secs(p.initial_delay_seconds);
    }
    if let Some(p) = &t.liveness {
        next_l = started + Duration::from_secs(p.initial_delay_seconds);
    }
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let (running, target) = {
            let s = st.lock().unwrap_or_else(|e| e.into_inner());
            if s.stop {
                return;
            }
            (s.running, (s.netns.clone(), s.vm))
        };
        if !running {
            (r_ok, r_fail, l_fail) = (0, 0, 0);
            continue;
        }
        let now = Instant::now();
        if let Some(p) = t.readiness.as_ref().filter(|_| now >= next_r) {
            next_r = now + Duration::from_secs(p.period_seconds);
            if run(&rt, &name, &target, p) {
                r_ok += 1;
                r_fail = 0;
            } else {
                r_fail += 1;
                r_ok = 0;
            }
            let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
            if r_ok >= p.success_threshold && s.running {
                s.set_ready(true);
            } else if r_fail >= p.failure_threshold {
                s.set_ready(false);
            }
        }
        if let Some(p) = t.liveness.as_ref().filter(|_| now >= next_l) {
            next_l = now + Duration::from_secs(p.period_seconds);
            if run(&rt, &name, &target, p) {
                l_fail = 0;
            } else {
                l_fail += 1;
                if l_fail >= p.failure_threshold {
                    l_fail = 0;
                    let _ = rt.kill(&name);
                    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                    s.killed += 1;
                    s.set_ready(false);
                    s.running = false;
                    next_l = now + Duration::from_secs(p.initial_delay_seconds.max(1));
                }
            }
        }
    }
}

type Target = (Option<PathBuf>, bool);

fn run(rt: &Runtime, name: &str, target: &Target, p: &Probe) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds);
    match &p.handler {
        Handler::Exec(cmd) => rt.exec_ok(name, cmd, timeout),
        Handler::TcpSocket { port } => net(rt, target, *port, None, timeout),
        Handler::HttpGet { path, port } => net(rt, target, *port, Some(path), timeout),
    }
}

fn net(rt: &Runtime, target: &Target, port: u16, path: Option<&String>, timeout: Duration) -> bool {
    let (Some(netns), vm) = target else {
        return false;
    };
    let mut args: Vec<std::ffi::OsString> = vec![
        "probe-net".into(),
        netns.into(),
        port.to_string().into(),
        if *vm { "vm" } else { "sandbox" }.into(),
    ];
    if let Some(p) = path {
        args.push(p.into());
    }
    rt.start(Program::ProbeNet, &args, Some(timeout), false)
        .is_ok_and(|r| r.code == Some(0))
}

/// `moatd probe-net NETNS PORT sandbox|vm [PATH]`: enters the network
/// namespace NETNS and connects to 127.0.0.1:PORT (and GETs PATH,
/// expecting 200-399). For a VM (slirp accepts before the guest does)
/// a tcpSocket probe passes only if the connection is not closed within
/// half a second.
pub fn probe_net_main(netns: &Path, port: u16, vm: bool, path: Option<&str>) -> bool {
    use std::io::{Read, Write};
    let Ok(ns) = std::fs::File::open(netns) else {
        return false;
    };
    if rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .is_err()
    {
        return false;
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let Some(path) = path else {
        if !vm {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut b = [0u8; 1];
        return match s.read(&mut b) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: moatd-probe\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}
