//! As root: a namespace, its table read back, pasta attached and gone
//! afterwards. Traffic goes to loopback only.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use moat_net::{Egress, EgressConfig};
use moat_plan::{EgressRule, PortPublish};

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Root, pasta, nft and busybox; prints `SKIP:` if any is missing.
fn can_run(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        println!("SKIP: {test}: needs root (network namespaces)");
        return false;
    }
    for tool in ["pasta", "nft", "busybox", "nsenter"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            println!("SKIP: {test}: {tool} is not installed (scripts/bootstrap)");
            return false;
        }
    }
    true
}

#[test]
fn table_installed_pasta_publishes_and_goes_away() {
    if !can_run("table_installed_pasta_publishes_and_goes_away") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netns/one");
    let egress = [EgressRule {
        cidr: "10.231.0.0/29".into(),
        ports: Some((8000, 8000)),
        protocol: "tcp".into(),
    }];
    let host_port = free_port();
    let publish = [PortPublish {
        host_port,
        container_port: 8080,
        protocol: "tcp".into(),
        host_ip: Some("127.0.0.1".into()),
    }];
    let net = Egress::start(&EgressConfig {
        path: path.clone(),
        egress: &egress,
        publish: &publish,
        dns: None,
        routed: false,
        map_gateway: false,
        helper_uid: moat_net::helper_uid(2, 7),
    })
    .unwrap();
    let pid = net.pasta().pid();
    assert!(alive(pid));
    // Jailed: its own uid and gid, no capability on the host but
    // CAP_NET_BIND_SERVICE, in a user namespace that is not the host's.
    // pasta confines itself (no_new_privs, its filter) just after it
    // says it is ready: wait for that, bounded.
    let read = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut status = read();
    while !(status.contains("NoNewPrivs:\t1") && status.contains("Seccomp:\t2"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        status = read();
    }
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let uid = moat_net::helper_uid(2, 7).to_string();
    assert_eq!(field("Uid:"), [uid.as_str(); 4].join(" "));
    assert_eq!(field("Gid:"), [uid.as_str(); 4].join(" "));
    assert_eq!(field("Groups:"), "");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/user")).unwrap();
    assert_ne!(ns(pid), ns(std::process::id()));
    let listing = Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["nft", "list", "table", "inet", "moat"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("ip daddr 10.231.0.0/29 tcp dport 8000 accept"),
        "{text}"
    );
    assert!(text.contains("policy drop"), "{text}");

    // A server in the namespace answers on the published host port.
    let mut server = Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["busybox", "nc", "-l", "-p", "8080", "-e", "echo", "from-ns"])
        .spawn()
        .unwrap();
    let mut got = String::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", host_port)) {
            // Read only: a write racing the server's close would turn
            // into a reset that discards what it sent.
            let _ = s.read_to_string(&mut got);
            if !got.is_empty() {
                break;
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(got.trim(), "from-ns");

    drop(net);
    assert!(!alive(pid), "pasta {pid} outlived its handle");
    assert!(!path.exists());
}

/// The VM's supervisor never kills pasta (it gives up root first): the
/// cleanup watcher removes the namespace's file, and pasta, jailed, sees
/// that through the directory its jail binds and exits by itself.
#[test]
fn jailed_pasta_exits_once_the_namespace_file_is_removed() {
    if !can_run("jailed_pasta_exits_once_the_namespace_file_is_removed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netns/two");
    let net = Egress::start(&EgressConfig {
        path: path.clone(),
        egress: &[],
        publish: &[],
        dns: None,
        routed: false,
        map_gateway: false,
        helper_uid: moat_net::helper_uid(2, 8),
    })
    .unwrap();
    let pid = net.pasta().pid();
    assert!(alive(pid));
    moat_net::netns::remove_bound(&path);
    let mut gone = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        // Exited (a zombie until the handle reaps it).
        if !alive(pid) {
            gone = true;
            break;
        }
    }
    assert!(gone, "pasta {pid} still runs after its namespace file went");
    drop(net);
}
