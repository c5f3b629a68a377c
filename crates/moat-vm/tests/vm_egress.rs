//! The `egress` network of a micro-VM (issue 15): QEMU's libslirp in a
//! namespace the host made and filtered (moat-net's table), pasta attached
//! outside. Real QEMU (TCG is enough), the real guest kernel and agent.
//! Traffic goes only to loopback and to a network namespace this test
//! creates (`moat-vmeg-<pid>`, a veth pair on 10.234.N.0/30).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use moat_policy::plan::{EgressRule, NetworkPlan, PortPublish};

/// A busybox rootfs with the network applets and a CGI page that tells
/// the workload it was served (so the VM can end).
fn net_fixture() -> Fixture {
    let f = new_fixture();
    let bin = f.rootfs.join("bin");
    for app in ["nc", "httpd", "ping", "ip", "test", "["] {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(app));
    }
    let cgi = f.rootfs.join("www/cgi-bin");
    std::fs::create_dir_all(&cgi).unwrap();
    std::fs::write(
        cgi.join("page"),
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho moat-vm-httpd-ok\ntouch /tmp/served\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cgi.join("page"), std::fs::Permissions::from_mode(0o755)).unwrap();
    f
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn egress(rules: Vec<EgressRule>, publish: Vec<PortPublish>) -> NetworkPlan {
    NetworkPlan::Egress {
        rules,
        publish,
        dns: false,
    }
}

fn tcp_rule(cidr: &str, port: u16) -> EgressRule {
    EgressRule {
        cidr: cidr.into(),
        ports: Some((port, port)),
        protocol: "tcp".into(),
    }
}

/// A network namespace of the test's own joined to the host by a veth
/// pair: host side `.1`, namespace side `.2` of 10.234.N.0/30. A packet
/// counter in the namespace's input hook counts everything that arrives
/// from outside it. Removed on drop.
struct TestNet {
    name: String,
    host_if: String,
    host: String,
    peer: String,
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

impl TestNet {
    fn new() -> TestNet {
        let pid = std::process::id();
        let n = pid % 250 + 1;
        let t = TestNet {
            name: format!("moat-vmeg-{pid}"),
            host_if: format!("mvh{}", pid % 100_000),
            host: format!("10.234.{n}.1"),
            peer: format!("10.234.{n}.2"),
        };
        let (ns, hi) = (&t.name, &t.host_if);
        sh(&format!(
            "ip netns add {ns} && ip link add {hi} type veth peer name eth0 netns {ns} && \
             ip addr add {}/30 dev {hi} && ip link set {hi} up && \
             ip -n {ns} addr add {}/30 dev eth0 && ip -n {ns} link set eth0 up && \
             ip -n {ns} link set lo up && \
             ip netns exec {ns} nft add table ip moattest && \
             ip netns exec {ns} nft 'add chain ip moattest in {{ type filter hook input priority 0; }}' && \
             ip netns exec {ns} nft add rule ip moattest in iifname eth0 ip protocol != 0 counter",
            t.host, t.peer
        ));
        t
    }

    /// `busybox nc -l` in the namespace on `port`, answering `reply` once.
    fn serve(&self, port: u16, reply: &str) -> Child {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.name, "busybox", "nc", "-l", "-p"])
            .arg(port.to_string())
            .args(["-e", "echo", reply])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        c
    }

    /// Packets that arrived on the namespace's eth0 so far.
    fn packets_in(&self) -> u64 {
        let o = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "nft", "list", "table", "ip", "moattest",
            ])
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&o.stdout);
        t.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {t}"))
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Nothing of the VM's network is left: no namespace file, no pasta.
fn assert_network_gone(run_root: &Path) {
    assert_eq!(
        jailed_processes(),
        Vec::<String>::new(),
        "jailed processes left"
    );
    assert_eq!(vm_cgroups(), Vec::<String>::new(), "VM cgroups left");
    let dir = run_root.join("netns");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        // pasta by its log (stderr) in that directory: jailed, its
        // command line names only paths of its own mount namespace.
        let pasta: Vec<i32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let log = std::fs::read_link(format!("/proc/{pid}/fd/2")).unwrap_or_default();
                cmd.starts_with(b"pasta\0") && log.starts_with(&dir)
            })
            .collect();
        if left.is_empty() && pasta.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind in {}: {left:?}; pasta: {pasta:?}",
            dir.display(),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn published_httpd_answers_curl() {
    require_vm!();
    let _l = vm_lock();
    let f = net_fixture();
    let port = free_port();
    let mut o = options(
        &f,
        process(&[
            "sh",
            "-c",
            "httpd -p 80 -h /www && i=0; \
             while [ ! -e /tmp/served ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done; \
             sleep 1; test -e /tmp/served",
        ]),
    );
    o.plan.network = egress(
        vec![],
        vec![PortPublish {
            host_port: port,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: Some("127.0.0.1".into()),
        }],
    );
    let run_root = o.run_root.clone();
    let vm = std::thread::spawn(move || run(o, None));
    let url = format!("http://127.0.0.1:{port}/cgi-bin/page");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    let mut body = None;
    while Instant::now() < deadline && !vm.is_finished() {
        let c = Command::new("curl")
            .args(["-sS", "--max-time", "3", &url])
            .output()
            .unwrap();
        if c.status.success() && !c.stdout.is_empty() {
            body = Some(String::from_utf8_lossy(&c.stdout).into_owned());
            break;
        }
        last = String::from_utf8_lossy(&c.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = vm.join().unwrap();
    assert_eq!(
        body.as_deref(),
        Some("moat-vm-httpd-ok\n"),
        "curl {url}: {last}; VM: {:?} {}",
        r.code,
        r.stderr
    );
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_network_gone(&run_root);
}

#[test]
fn egress_reaches_the_allowed_port_only() {
    require_vm!();
    let _l = vm_lock();
    let net = TestNet::new();
    let allowed = net.serve(8000, "allowed-ok");
    let denied_port = net.serve(8001, "denied-port");
    // The host's own side of the veth, not in the rules.
    let host_side = TcpListener::bind((net.host.as_str(), 8000)).unwrap();
    host_side.set_nonblocking(true).unwrap();
    let f = net_fixture();
    let script = format!(
        "echo x | nc -w 5 {p} 8000; echo rc=$?; \
         echo x | nc -w 5 {p} 8001; echo rc=$?; \
         echo x | nc -w 5 {h} 8000; echo rc=$?",
        p = net.peer,
        h = net.host
    );
    let mut o = options(&f, process(&["sh", "-c", &script]));
    o.plan.network = egress(vec![tcp_rule(&format!("{}/32", net.peer), 8000)], vec![]);
    let run_root = o.run_root.clone();
    let r = run(o, None);
    kill(allowed);
    kill(denied_port);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("allowed-ok"),
        "stdout: {}",
        r.stdout
    );
    assert!(!r.stdout.contains("denied-port"), "stdout: {}", r.stdout);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("rc=")).count(),
        3,
        "stdout: {}",
        r.stdout
    );
    assert_eq!(lines[1], "rc=0", "stdout: {}", r.stdout);
    assert_eq!(&lines[2..], ["rc=1", "rc=1"], "stdout: {}", r.stdout);
    assert!(
        host_side.accept().is_err(),
        "a denied address (the host's side) was reached"
    );
    assert_network_gone(&run_root);
}

/// A hostile workload with CAP_NET_RAW and CAP_NET_ADMIN in the guest
/// (raw sockets, its own routes and addresses) still sends nothing the
/// policy does not grant: slirp turns only what it understands into
/// sockets, and those pass the host's table. Nothing arrives in the test
/// namespace at all.
#[test]
fn hostile_guest_with_raw_sockets_reaches_no_denied_address() {
    require_vm!();
    let _l = vm_lock();
    let net = TestNet::new();
    let server = net.serve(8001, "denied-port");
    let f = net_fixture();
    let before = net.packets_in();
    let script = format!(
        "ping -c 2 -W 2 {p} 2>&1; echo ping-rc=$?; \
         ip addr add {h}/30 dev eth0 2>&1; ip route add {p}/32 dev eth0 2>&1; \
         ping -c 2 -W 2 {p} 2>&1; echo ping2-rc=$?; \
         echo x | nc -w 5 {p} 8001; echo nc-rc=$?",
        p = net.peer,
        h = net.host
    );
    let mut o = options(&f, process(&["sh", "-c", &script]));
    o.plan.capabilities = vec!["CAP_NET_RAW".into(), "CAP_NET_ADMIN".into()];
    // Allowed: only a port nobody listens on; the workload tries others.
    o.plan.network = egress(vec![tcp_rule(&format!("{}/32", net.peer), 9)], vec![]);
    let run_root = o.run_root.clone();
    let r = run(o, None);
    kill(server);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    // The raw socket itself was allowed in the guest (ping ran), and failed.
    assert!(r.stdout.contains("PING "), "stdout: {}", r.stdout);
    assert!(!r.stdout.contains("not permitted"), "stdout: {}", r.stdout);
    assert!(r.stdout.contains("ping-rc=1"), "stdout: {}", r.stdout);
    assert!(r.stdout.contains("ping2-rc=1"), "stdout: {}", r.stdout);
    assert!(r.stdout.contains("nc-rc=1"), "stdout: {}", r.stdout);
    assert!(!r.stdout.contains("denied-port"), "stdout: {}", r.stdout);
    assert_eq!(
        net.packets_in(),
        before,
        "packets from the VM arrived in the test namespace"
    );
    assert_network_gone(&run_root);
}

/// The agent configured eth0 as the host said: slirp's guest address,
/// prefix and default route.
#[test]
fn guest_interface_is_configured_by_the_host() {
    require_vm!();
    let _l = vm_lock();
    let f = net_fixture();
    let mut o = options(
        &f,
        process(&["sh", "-c", "ip -4 -o addr show eth0; ip route"]),
    );
    o.plan.network = egress(vec![], vec![]);
    let r = run(o, None);
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert!(
        r.stdout.contains("inet 10.0.2.15/24")
            && r.stdout.contains("default via 10.0.2.2 dev eth0"),
        "stdout: {}",
        r.stdout
    );
}

/// A VM has one network: an attached namespace and the policy's egress
/// together are refused before anything starts.
#[test]
fn attach_and_egress_together_are_refused() {
    let f = new_fixture();
    let mut o = options(&f, process(&["true"]));
    o.plan.policy_name = "web".into();
    o.plan.network = egress(vec![], vec![]);
    o.attach = Some(moat_vm::net::Attach {
        netns: "/run/netns/x".into(),
        interface: "eth0".into(),
    });
    let r = run(o, None);
    assert_eq!(
        r.code.unwrap_err(),
        "policy \"web\" grants network egress, and the VM was also asked to take over an existing network namespace's interface: a guest has one network; use a policy with `network: loopback` for an attached VM"
    );
    assert!(!f.state.join("run/containers").exists());
}
