//! Network of sandbox containers (issue 15): `egress` through pasta,
//! filtered by moat's nftables table in a namespace the workload does not
//! own; published ports; `--network` and `-p` narrowing the policy.
//!
//! Traffic goes only to loopback and to a network namespace each test
//! makes: a veth pair, host side 10.231.K.1/29, namespace side .2 and .3,
//! where busybox httpd answers on ports 8000 and 8001 and an nftables
//! table of counters records what arrives.

#[path = "sandbox_common/mod.rs"]
mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::{can_sandbox, stderr, stdout, wait_for, Env};

/// A network namespace of the test's own, joined to the host by a veth.
struct TestNet {
    name: String,
    net: String,
    host_if: String,
    servers: Vec<Child>,
}

impl TestNet {
    fn new(k: u8) -> TestNet {
        let name = format!("moat-nt-{}-{k}", std::process::id());
        let net = format!("10.231.{k}");
        let host_if = format!("mnt{k}h{}", std::process::id() % 10000);
        let sh = |cmd: &str| {
            let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
            assert!(st.success(), "{cmd}");
        };
        sh(&format!("ip netns add {name}"));
        let mut t = TestNet {
            name: name.clone(),
            net: net.clone(),
            host_if: host_if.clone(),
            servers: Vec::new(),
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
             ip daddr {net}.3 counter comment \"denied-addr\"\n  \
             tcp dport 8001 counter comment \"denied-port\"\n  \
             ip protocol icmp counter comment \"icmp\"\n  \
             udp dport 53 counter comment \"udp\"\n  \
             ip daddr {net}.2 tcp dport 8000 counter comment \"allowed\"\n }}\n}}\n"
        );
        let probe_file = std::env::temp_dir().join(format!("{name}.nft"));
        std::fs::write(&probe_file, probe).unwrap();
        sh(&format!(
            "ip netns exec {name} nft -f {}",
            probe_file.display()
        ));
        let _ = std::fs::remove_file(&probe_file);
        let www = std::env::temp_dir().join(format!("{name}-www"));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "egress-ok\n").unwrap();
        t.servers = [8000, 8001]
            .iter()
            .map(|port| {
                Command::new("ip")
                    .args(["netns", "exec", &name, "busybox", "httpd", "-f", "-p"])
                    .arg(port.to_string())
                    .arg("-h")
                    .arg(&www)
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Listening (no connection: it would linger in the counters).
        wait_for("the test servers", 10, || {
            let o = Command::new("ip")
                .args(["netns", "exec", &t.name, "ss", "-ltnH"])
                .output()
                .unwrap();
            let text = stdout(&o);
            text.contains(":8000 ") && text.contains(":8001 ")
        });
        t.reset();
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

    fn reset(&self) {
        let st = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "reset", "counters"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        // Removing the namespace removes the veth pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-www", self.name)));
    }
}

fn write_policy(env: &Env, name: &str, body: &str) -> String {
    let p = env.dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!("apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n{body}"),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

/// `baseline` with egress to NET.2:8000/tcp and port `host` published to 80.
fn web_policy(env: &Env, net: &str, host: u16) -> String {
    write_policy(
        env,
        "web",
        &format!(
            "  extends: baseline\n  network:\n    mode: egress\n    egress:\n      - to: {net}.2/32\n        ports: 8000\n        protocol: tcp\n    publish:\n      - host: {host}\n        container: 80\n"
        ),
    )
}

/// Every system call, CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN, and
/// the same egress: all a policy can hand a workload that wants to change
/// its own filter.
fn admin_policy(env: &Env, net: &str) -> String {
    write_policy(
        env,
        "netadmin",
        &format!(
            "  isolation: any\n  capabilities: [NET_ADMIN, NET_RAW, SYS_ADMIN]\n  syscalls:\n    default: errno\n    allow: [\"@all\"]\n  filesystem:\n    writable:\n      - path: /tmp\n        size: 16Mi\n  network:\n    mode: egress\n    egress:\n      - to: {net}.2/32\n        ports: 8000\n        protocol: tcp\n"
        ),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `moat run -q --isolation sandbox --policy P [OPTS] --rootfs ROOTFS CMD`.
fn run(env: &Env, policy: &str, opts: &[&str], cmd: &[&str]) -> Output {
    let root = env.rootfs.to_str().unwrap().to_string();
    let mut args = vec!["run", "-q", "--isolation", "sandbox", "--policy", policy];
    args.extend(opts);
    args.extend(["--rootfs", &root]);
    args.extend(cmd);
    env.moat(&args).output().unwrap()
}

/// A shell snippet: GET / from ADDR PORT, prints `LABEL=ok` or `LABEL=fail`.
fn get(label: &str, addr: &str, port: u16) -> String {
    format!(
        "if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 4 nc -w 2 {addr} {port} 2>/dev/null | grep -q egress-ok; \
         then echo {label}=ok; else echo {label}=fail; fi; "
    )
}

/// pasta processes whose log (their stderr, which moat opens at
/// `<run root>/netns/<id>.pasta.log`) is under `root`: jailed, pasta's
/// command line names only the paths of its own mount namespace.
fn pastas_under(root: &Path) -> Vec<i32> {
    let needle = root.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let log = std::fs::read_link(format!("/proc/{pid}/fd/2")).unwrap_or_default();
            cmd.starts_with(b"pasta\0")
                && log.to_string_lossy().starts_with(needle)
                && common::alive(*pid as i64)
        })
        .collect()
}

#[test]
fn egress_reaches_exactly_what_the_policy_allows() {
    if !can_sandbox("egress_reaches_exactly_what_the_policy_allows") {
        return;
    }
    let env = Env::new();
    let t = TestNet::new(1);
    let policy = web_policy(&env, &t.net, free_port());
    let script = format!(
        "{}{}{}",
        get("allowed", &format!("{}.2", t.net), 8000),
        get("denied_port", &format!("{}.2", t.net), 8001),
        get("denied_addr", &format!("{}.3", t.net), 8000),
    );
    let o = run(&env, &policy, &[], &["/bin/sh", "-c", &script]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        stdout(&o),
        "allowed=ok\ndenied_port=fail\ndenied_addr=fail\n",
        "{}",
        stderr(&o)
    );
    assert!(t.arrived("allowed") > 0);
    assert_eq!(t.arrived("denied-port"), 0);
    assert_eq!(t.arrived("denied-addr"), 0);
    // pasta and the namespace's file are gone with the container.
    assert_eq!(pastas_under(&env.state_root()), Vec::<i32>::new());
    let netns = env.state_root().join("netns");
    let left: Vec<_> = std::fs::read_dir(&netns)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(!common::host_mounts().contains(netns.to_str().unwrap()));
}

#[test]
fn a_published_httpd_answers_curl_and_pasta_ends_with_the_container() {
    if !can_sandbox("a_published_httpd_answers_curl_and_pasta_ends_with_the_container") {
        return;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.rootfs.join("var/www")).unwrap();
    std::fs::write(env.rootfs.join("var/www/index.html"), "hello from moat\n").unwrap();
    let port = free_port();
    let policy = web_policy(&env, "10.231.2", port);
    let publish = format!("127.0.0.1:{port}:80");
    let root = env.rootfs.to_str().unwrap().to_string();
    let id = env.ok(&[
        "run",
        "-d",
        "-q",
        "--isolation",
        "sandbox",
        "--policy",
        &policy,
        "--name",
        "web",
        "-p",
        &publish,
        "--rootfs",
        &root,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/var/www",
    ]);
    assert_eq!(id.trim().len(), 64, "{id}");
    let mut body = String::new();
    wait_for("httpd behind the published port", 10, || {
        let o = Command::new("curl")
            .args(["-s", "-m", "2"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .unwrap();
        body = stdout(&o);
        o.status.success()
    });
    assert_eq!(body, "hello from moat\n");
    let pastas = pastas_under(&env.state_root());
    assert_eq!(pastas.len(), 1, "{pastas:?}");
    // Jailed: an unprivileged uid of the helpers' range, not root.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pastas[0])).unwrap();
    let uid: u32 = common::line(&status, "Uid:")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (0x7200_0000..0x7201_0000).contains(&uid),
        "pasta runs as {uid}"
    );
    env.ok(&["stop", "-t", "1", "web"]);
    wait_for("pasta to end with the container", 10, || {
        !common::alive(pastas[0] as i64)
    });
    assert!(Command::new("curl")
        .args(["-s", "-m", "2"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .status()
        .unwrap()
        .code()
        .is_some_and(|c| c != 0));

    // Started again, then removed by force: pasta goes too.
    env.ok(&["start", "web"]);
    let pastas = pastas_under(&env.state_root());
    assert_eq!(pastas.len(), 1, "{pastas:?}");
    env.ok(&["rm", "-f", "web"]);
    wait_for("pasta to end with moat rm -f", 10, || {
        !common::alive(pastas[0] as i64)
    });
    assert!(!common::host_mounts().contains(env.state_root().to_str().unwrap()));
}

/// Copies the host's `nft` and its libraries into the rootfs.
fn install_nft(rootfs: &Path) {
    let ldd = Command::new("ldd").arg("/usr/sbin/nft").output().unwrap();
    let mut files = vec!["/usr/sbin/nft".to_string()];
    for w in stdout(&ldd).split_whitespace() {
        if w.starts_with('/') {
            files.push(w.to_string());
        }
    }
    for f in files {
        let dst = rootfs.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dst).unwrap();
    }
}

#[test]
fn the_workload_cannot_change_its_filter_with_any_capability() {
    if !can_sandbox("the_workload_cannot_change_its_filter_with_any_capability") {
        return;
    }
    let env = Env::new();
    install_nft(&env.rootfs);
    let t = TestNet::new(3);
    let policy = admin_policy(&env, &t.net);
    let (allowed, denied) = (format!("{}.2", t.net), format!("{}.3", t.net));
    let script = format!(
        "grep CapEff /proc/self/status; \
         /usr/sbin/nft flush ruleset 2>/dev/null; echo nft_flush=$?; \
         /usr/sbin/nft delete table inet moat 2>/dev/null; echo nft_delete=$?; \
         ip route del default 2>/dev/null; echo route_del=$?; \
         ip route add {denied}/32 dev eth0 2>/dev/null; echo route_add=$?; \
         ip link set eth0 down 2>/dev/null; echo link_down=$?; \
         ping -c 1 -W 1 {denied} >/dev/null 2>&1; echo raw_ping=$?; \
         arping -c 1 -w 1 -I eth0 {denied} >/dev/null 2>&1; echo packet_socket=$?; \
         nslookup moat.test {denied} >/dev/null 2>&1; echo udp_dns=$?; \
         unshare -n sh -c 'ip link set lo up; printf x | nc -w 2 {allowed} 8000' >/dev/null 2>&1; echo unshare_net=$?; \
         {}{}{}",
        get("allowed", &allowed, 8000),
        get("denied_port", &allowed, 8001),
        get("denied_addr", &denied, 8000),
    );
    t.reset();
    let o = run(&env, &policy, &[], &["/bin/sh", "-c", &script]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    // CAP_SYS_ADMIN (21), CAP_NET_RAW (13), CAP_NET_ADMIN (12): granted.
    assert_eq!(common::line(&out, "CapEff:"), "CapEff:\t0000000000203000");
    for failed in [
        "nft_flush",
        "nft_delete",
        "route_del",
        "route_add",
        "link_down",
        "raw_ping",
        "packet_socket",
        "unshare_net",
    ] {
        let l = common::line(&out, &format!("{failed}="));
        assert_ne!(l, format!("{failed}=0"), "{out}");
    }
    assert!(
        out.ends_with("allowed=ok\ndenied_port=fail\ndenied_addr=fail\n"),
        "{out}"
    );
    // Nothing but the allowed connection reached the test namespace.
    assert_eq!(t.arrived("icmp"), 0, "{out}");
    assert_eq!(t.arrived("udp"), 0, "{out}");
    assert_eq!(t.arrived("denied-port"), 0, "{out}");
    assert_eq!(t.arrived("denied-addr"), 0, "{out}");
    assert!(t.arrived("allowed") > 0);
}

#[test]
fn network_flags_narrow_the_policy_and_never_widen_it() {
    if !can_sandbox("network_flags_narrow_the_policy_and_never_widen_it") {
        return;
    }
    let env = Env::new();
    let policy = web_policy(&env, "10.231.4", 18181);
    let o = run(&env, "baseline", &["--network", "egress"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(
        stderr(&o).lines().last().unwrap(),
        "moat: error: --network egress: policy baseline grants network `none`, and a flag cannot widen the policy; run under a policy with `network: {mode: egress}` or drop --network"
    );
    let o = run(&env, &policy, &["-p", "18182:80"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(
        stderr(&o).lines().last().unwrap(),
        format!("moat: error: --publish 18182:80: policy {policy} does not publish host port 18182 to container port 80/tcp; add `{{host: 18182, container: 80, protocol: tcp}}` to its `network.publish`, or drop -p")
    );
    let o = run(&env, "baseline", &["-p", "8080"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(
        stderr(&o).lines().last().unwrap(),
        "moat: error: --publish \"8080\": write [IP:]HOST:CONTAINER[/tcp|udp], e.g. 8080:80 or 127.0.0.1:8080:80/tcp"
    );
    // Narrowed to loopback: no pasta, no interface but lo.
    let o = run(
        &env,
        &policy,
        &["--network", "loopback"],
        &["/bin/sh", "-c", "ls /sys/class/net"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "lo\n");
    // Egress as granted: pasta's interface is there.
    let o = run(
        &env,
        &policy,
        &["--network", "egress"],
        &["/bin/sh", "-c", "ls /sys/class/net"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "eth0\nlo\n");
}
