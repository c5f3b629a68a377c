//! Micro-VM containers on the caller's network (issue 14): podman 4.3
//! creates the network namespace with its bridge's veth, moat-oci connects
//! the guest's virtio-net to it (tap + tc redirects), and the guest takes
//! the veth's address. Needs root, podman, conmon, curl, QEMU and a guest
//! kernel with virtio-net (`make kernel`). Traffic stays on this machine.

#[path = "clients/mod.rs"]
mod clients;

use moat_testkit::host as vmhost;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use clients::{run, stderr, stdout, wait_until, Podman, IMAGE};

const VM: &str = "vm";

fn vm_ready(test: &str) -> bool {
    clients::vm_ready(test, &["podman", "conmon", "curl"])
}

/// `run -d --name NAME OPTS IMAGE CMD` in a VM; returns the container id.
fn run_d(p: &Podman, name: &str, opts: &[&str], cmd: &[&str]) -> String {
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.into()];
    args.extend(Podman::container_opts(VM));
    args.extend(opts.iter().map(|s| s.to_string()));
    args.push(IMAGE.into());
    args.extend(cmd.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    p.ok(&refs).trim().to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `podman run -p 127.0.0.1:PORT:80` of busybox httpd in a VM answers curl
/// on the host; the guest has the address podman gave the container.
#[test]
fn vm_published_port_serves_httpd_to_curl() {
    if !vm_ready("vm_published_port_serves_httpd_to_curl") {
        return;
    }
    let _lock = vmhost::vm_lock();
    let p = Podman::new();
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let serve = "mkdir -p /tmp/www && echo moat-vm-httpd-ok > /tmp/www/index.html && \
                 exec httpd -f -p 80 -h /tmp/www";
    run_d(&p, "web", &["-p", &publish], &["sh", "-c", serve]);
    let url = format!("http://127.0.0.1:{port}/index.html");
    let mut last = String::new();
    let body = wait_until(Duration::from_secs(60), || {
        let o = run(
            Command::new("curl").args(["-sS", "--max-time", "3", &url]),
            Duration::from_secs(5),
        );
        last = format!("{}{}", stdout(&o), stderr(&o));
        o.status.success().then(|| stdout(&o))
    });
    assert_eq!(
        body.as_deref(),
        Some("moat-vm-httpd-ok\n"),
        "curl {url}: {last}; podman logs: {}",
        p.ok(&["logs", "web"])
    );
    // The guest's eth0 carries the address podman assigned.
    let ip = p
        .ok(&[
            "container",
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            "web",
        ])
        .trim()
        .to_string();
    assert!(!ip.is_empty(), "podman gave the container no address");
    let o = p.podman(&["exec", "web", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(
        stdout(&o).contains(&format!("inet {ip}/")),
        "guest eth0: {}{}",
        stdout(&o),
        stderr(&o)
    );
    p.ok(&["rm", "-f", "-t", "0", "web"]);
    vmhost::assert_nothing_left(std::path::Path::new("/nonexistent"));
}

/// The guest reaches a server on the podman bridge's gateway address (this
/// machine) through its default route, and a container on
/// `--network none` still starts (no interface: loopback only).
#[test]
fn vm_reaches_the_bridge_gateway_and_none_stays_loopback() {
    if !vm_ready("vm_reaches_the_bridge_gateway_and_none_stays_loopback") {
        return;
    }
    let _lock = vmhost::vm_lock();
    let p = Podman::new();
    // The container's gateway is the host's address on podman's bridge.
    run_d(&p, "client", &[], &["sleep", "600"]);
    let route = wait_until(Duration::from_secs(60), || {
        let o = p.podman(&["exec", "client", "ip", "-4", "route", "show", "default"]);
        o.status.success().then(|| stdout(&o))
    })
    .expect("exec in the VM container");
    let gw = route
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .unwrap_or_else(|| panic!("no default route in the guest: {route:?}"))
        .to_string();
    let listener = TcpListener::bind((gw.as_str(), 0)).expect("bind the gateway address");
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, peer) = wait_until(Duration::from_secs(30), || listener.accept().ok())?;
        s.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nfrom-host\n")
            .unwrap();
        Some(peer)
    });
    // nc, not wget: Debian's static busybox wget crashes (on the host too).
    let get = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {} {}",
        addr.ip(),
        addr.port()
    );
    let o = p.podman(&["exec", "client", "sh", "-c", &get]);
    let peer = server.join().unwrap().unwrap_or_else(|| {
        panic!(
            "the guest never connected to {addr}: {}{}",
            stdout(&o),
            stderr(&o)
        )
    });
    assert!(
        stdout(&o).ends_with("\r\n\r\nfrom-host\n"),
        "nc: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let ip = p
        .ok(&[
            "container",
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            "client",
        ])
        .trim()
        .to_string();
    assert_eq!(peer.ip().to_string(), ip, "the guest's source address");
    p.ok(&["rm", "-f", "-t", "0", "client"]);
    let o = p.run_rm(VM, &["--network", "none"], &["cat", "/proc/net/dev"]);
    assert!(o.status.success(), "--network none: {}", stderr(&o));
    assert!(
        !stdout(&o).contains("eth0"),
        "a VM on --network none got an interface: {}",
        stdout(&o)
    );
    vmhost::assert_nothing_left(std::path::Path::new("/nonexistent"));
}
