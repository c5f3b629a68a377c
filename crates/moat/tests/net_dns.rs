//! `network.dns: true` (issue 15): the container's `/etc/resolv.conf`
//! names the host's resolver and the namespace's table lets exactly that
//! address, port 53, through; without the grant nothing reaches it.
//!
//! The "host's resolver" is one the test makes: `moat` runs in a mount
//! namespace of its own where a test file is bind-mounted over
//! `/etc/resolv.conf`, naming 10.231.K.2 in a network namespace of the
//! test (a veth pair, host side 10.231.K.1/29), where a tiny UDP DNS
//! responder answers every A query with 10.231.K.7 and an nftables table of
//! counters records what arrives. No query goes to any other address.

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::{can_sandbox, stderr, stdout, vm_ready, wait_for, Env};

const PYTHON: &str = "/usr/bin/python3";

/// Answers every query: an A question with `ANSWER`, anything else with
/// an empty NOERROR.
const RESPONDER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
ans = bytes(int(x) for x in sys.argv[2].split('.'))
while True:
    q, peer = s.recvfrom(512)
    i = 12
    while q[i] != 0:
        i += q[i] + 1
    question = q[12:i + 5]
    qtype = int.from_bytes(q[i + 1:i + 3], 'big')
    if qtype == 1:
        an = b'\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04' + ans
        count = b'\x00\x01'
    else:
        an, count = b'', b'\x00\x00'
    s.sendto(q[:2] + b'\x81\x80\x00\x01' + count + b'\x00\x00\x00\x00' + question + an, peer)
"#;

/// A network namespace of the test's own with the resolver at `.2`.
struct TestNet {
    name: String,
    net: String,
    host_if: String,
    responder: Option<Child>,
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

impl TestNet {
    fn new(k: u8) -> TestNet {
        let name = format!("moat-dns-{}-{k}", std::process::id());
        let net = format!("10.231.{k}");
        let host_if = format!("mdn{k}h{}", std::process::id() % 10000);
        sh(&format!("ip netns add {name}"));
        let mut t = TestNet {
            name: name.clone(),
            net: net.clone(),
            host_if: host_if.clone(),
            responder: None,
        };
        sh(&format!(
            "ip link add {host_if} type veth peer name eth1 netns {name} && \
             ip addr add {net}.1/29 dev {host_if} && ip link set {host_if} up && \
             ip -n {name} addr add {net}.2/29 dev eth1 && \
             ip -n {name} addr add {net}.3/29 dev eth1 && \
             ip -n {name} link set eth1 up && ip -n {name} link set lo up"
        ));
        let probe = format!(
            "table inet probe {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  \
             ip daddr {net}.2 udp dport 53 counter comment \"resolver\"\n  \
             ip daddr {net}.3 udp dport 53 counter comment \"other\"\n }}\n}}\n"
        );
        let probe_file = std::env::temp_dir().join(format!("{name}.nft"));
        std::fs::write(&probe_file, probe).unwrap();
        sh(&format!(
            "ip netns exec {name} nft -f {}",
            probe_file.display()
        ));
        let _ = std::fs::remove_file(&probe_file);
        t.responder = Some(
            Command::new("ip")
                .args(["netns", "exec", &name, PYTHON, "-c", RESPONDER])
                .arg(format!("{net}.2"))
                .arg(format!("{net}.7"))
                .spawn()
                .unwrap(),
        );
        wait_for("the test resolver", 10, || {
            let o = Command::new("ip")
                .args(["netns", "exec", &t.name, "ss", "-lunH"])
                .output()
                .unwrap();
            stdout(&o).contains(&format!("{net}.2:53 "))
        });
        t
    }

    /// Packets the probe counted under `comment`.
    fn arrived(&self, comment: &str) -> u64 {
        let o = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "nft", "list", "table", "inet", "probe",
            ])
            .output()
            .unwrap();
        let text = stdout(&o);
        let line = text
            .lines()
            .find(|l| l.contains(&format!("comment \"{comment}\"")))
            .unwrap_or_else(|| panic!("no counter {comment} in {text}"));
        let n = line.split("packets ").nth(1).unwrap();
        n.split_whitespace().next().unwrap().parse().unwrap()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Some(mut r) = self.responder.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

fn ready(test: &str) -> bool {
    if !can_sandbox(test) {
        return false;
    }
    for tool in [
        "/usr/bin/pasta",
        PYTHON,
        "/usr/sbin/nft",
        "/usr/bin/unshare",
    ] {
        if !Path::new(tool).exists() {
            println!("SKIP: {test}: {tool} is not installed");
            return false;
        }
    }
    true
}

fn policy(env: &Env, name: &str, dns: bool) -> String {
    let p = env.dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!(
            "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  extends: baseline\n  network:\n    mode: egress\n    dns: {dns}\n"
        ),
    )
    .unwrap();
    p.display().to_string()
}

/// `moat run --policy P --rootfs ROOTFS sh -c SCRIPT` with `resolv` (a
/// file) over the host's `/etc/resolv.conf`, in a mount namespace of its
/// own (nothing of it reaches the host's).
fn run_with_resolv(env: &Env, resolv: &Path, policy: &str, script: &str) -> Output {
    run_isolated(env, resolv, policy, "sandbox", script)
}

fn run_isolated(env: &Env, resolv: &Path, policy: &str, isolation: &str, script: &str) -> Output {
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
        .arg(resolv)
        .arg(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(env.state_root())
        .args(["run", "-q", "--isolation", isolation, "--policy", policy]);
    if isolation == "vm" {
        c.args(["--accel", "tcg"]);
    }
    c.arg("--rootfs")
        .arg(&env.rootfs)
        .args(["/bin/sh", "-c", script])
        .stdin(Stdio::null());
    c.output().unwrap()
}

fn resolv_file(env: &Env, t: &TestNet) -> std::path::PathBuf {
    let f = env.dir.path().join("host-resolv.conf");
    std::fs::write(
        &f,
        format!(
            "# the test's host resolver\nnameserver 127.0.0.53\nnameserver {}.2\nsearch moat.test\n",
            t.net
        ),
    )
    .unwrap();
    f
}

const LOOKUPS: &str = "cat /etc/resolv.conf; \
     nslookup www.moat.test >/tmp/a 2>&1; echo lookup=$?; grep -o 'Address: 10[.0-9]*' /tmp/a; \
     nslookup www.moat.test OTHER >/dev/null 2>&1; echo other=$?";

#[test]
fn dns_grant_reaches_exactly_the_hosts_resolver() {
    if !ready("dns_grant_reaches_exactly_the_hosts_resolver") {
        return;
    }
    let env = Env::new();
    std::fs::write(env.rootfs.join("etc/resolv.conf"), "").unwrap();
    let t = TestNet::new(41);
    let resolv = resolv_file(&env, &t);
    let p = policy(&env, "dns", true);
    let script = LOOKUPS.replace("OTHER", &format!("{}.3", t.net));
    let o = run_with_resolv(&env, &resolv, &p, &script);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    // The loopback stub of the host's file is skipped: the container
    // cannot reach the host's loopback.
    assert_eq!(
        out,
        format!(
            "# moat: the host's resolver (network.dns: true)\nnameserver {net}.2\nsearch moat.test\nlookup=0\nAddress: {net}.7\nother=1\n",
            net = t.net
        ),
        "{}",
        stderr(&o)
    );
    assert!(t.arrived("resolver") > 0);
    assert_eq!(t.arrived("other"), 0, "a resolver not granted was reached");
    // The image's own file is unchanged.
    assert_eq!(
        std::fs::read_to_string(env.rootfs.join("etc/resolv.conf")).unwrap(),
        ""
    );
}

#[test]
fn without_the_grant_the_resolver_is_unreachable() {
    if !ready("without_the_grant_the_resolver_is_unreachable") {
        return;
    }
    let env = Env::new();
    std::fs::write(env.rootfs.join("etc/resolv.conf"), "").unwrap();
    let t = TestNet::new(42);
    let resolv = resolv_file(&env, &t);
    let p = policy(&env, "nodns", false);
    // The image's (empty) file stays; asking the resolver directly fails.
    let script = format!(
        "cat /etc/resolv.conf; nslookup www.moat.test {}.2 >/dev/null 2>&1; echo direct=$?",
        t.net
    );
    let o = run_with_resolv(&env, &resolv, &p, &script);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "direct=1\n", "{}", stderr(&o));
    assert_eq!(t.arrived("resolver"), 0);
}

#[test]
fn dns_grant_refusals_name_the_file_and_the_fix() {
    if !ready("dns_grant_refusals_name_the_file_and_the_fix") {
        return;
    }
    let env = Env::new();
    let p = policy(&env, "dns", true);
    // Only a loopback stub on the host, and no systemd-resolved list.
    let stub = env.dir.path().join("stub-resolv.conf");
    std::fs::write(&stub, "nameserver 127.0.0.53\n").unwrap();
    let o = run_with_resolv(&env, &stub, &p, "true");
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    if !Path::new("/run/systemd/resolve/resolv.conf").exists() {
        assert_eq!(
            stderr(&o).lines().last().unwrap(),
            "moat: error: cannot set up the container's network: `network.dns` grants the host's resolver, but /etc/resolv.conf names none a container can reach (only 127.0.0.53); configure a resolver outside the host's loopback there, or drop `network.dns` and grant one as an egress rule (`{to: ADDRESS/32, ports: 53, protocol: any}`) with the image's own /etc/resolv.conf"
        );
    }
    // A rootfs without /etc/resolv.conf: moat does not write to it.
    let t = TestNet::new(43);
    let resolv = resolv_file(&env, &t);
    let o = run_with_resolv(&env, &resolv, &p, "true");
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the image has no /etc/resolv.conf; moat mounts the resolver's file over it but never writes to the image: add an empty /etc/resolv.conf to the rootfs, or drop `network.dns`"),
        "{}",
        stderr(&o)
    );
    assert!(!env.rootfs.join("etc/resolv.conf").exists());
}

/// The VM: the guest's `/etc/resolv.conf` names slirp's relay
/// (10.0.2.3; the agent mounts it over the image's, from what the host
/// sent), which forwards to the host's resolver from QEMU's socket in the
/// filtered namespace; the table lets that one flow through only with the
/// grant. libslirp takes the first `nameserver` of the host's file, so the
/// test's file names only the test resolver.
#[test]
fn vm_dns_grant_lets_slirps_relay_reach_the_hosts_resolver() {
    let test = "vm_dns_grant_lets_slirps_relay_reach_the_hosts_resolver";
    let env = Env::new();
    if !ready(test) || !vm_ready(&env, test) {
        return;
    }
    let _l = vm_host::vm_lock();
    std::fs::write(env.rootfs.join("etc/resolv.conf"), "").unwrap();
    let t = TestNet::new(44);
    let resolv = env.dir.path().join("vm-resolv.conf");
    std::fs::write(&resolv, format!("nameserver {}.2\n", t.net)).unwrap();
    let script = "cat /etc/resolv.conf; nslookup www.moat.test >/tmp/a 2>&1; echo lookup=$?; \
                  grep -o 'Address: 10[.0-9]*' /tmp/a | tail -1; \
                  nslookup www.moat.test 10.0.2.3 >/dev/null 2>&1; echo relay=$?";
    let granted = policy(&env, "dns", true);
    let o = run_isolated(&env, &resolv, &granted, "vm", script);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "# moat: slirp's DNS relay (network.dns: true)\nnameserver 10.0.2.3\nlookup=0\nAddress: {}.7\nrelay=0\n",
            t.net
        ),
        "{}",
        stderr(&o)
    );
    let arrived = t.arrived("resolver");
    assert!(arrived > 0);
    // Without the grant: the image's (empty) file, and the relay's query
    // is dropped by the table before it leaves.
    let not_granted = policy(&env, "nodns", false);
    let o = run_isolated(&env, &resolv, &not_granted, "vm", script);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "lookup=1\nrelay=1\n", "{}", stderr(&o));
    assert_eq!(
        t.arrived("resolver"),
        arrived,
        "a query passed without the grant"
    );
}
