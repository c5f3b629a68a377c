//! Network of micro-VM containers through the CLI (issue 15): `moat run -d
//! --isolation vm -p` under an egress policy publishes a busybox httpd in
//! the guest on a host port, and `moat rm -f` leaves no pasta and no
//! namespace file behind. Traffic goes to loopback only. Skips with
//! `SKIP:` without QEMU or a guest kernel.

#[path = "sandbox_common/mod.rs"]
mod common;
use moat_testkit::host as vm_host;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{stderr, vm_ready, wait_for, Env};
use vm_host::{jailed_processes, vm_lock};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `moat rm -f web` if the test fails before it does.
struct RmOnDrop<'a>(&'a Env);

impl Drop for RmOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.moat(&["rm", "-f", "web"]).output();
    }
}

#[test]
fn a_detached_vm_publishes_httpd_and_rm_leaves_no_network_behind() {
    let env = Env::new();
    if !vm_ready(
        &env,
        "a_detached_vm_publishes_httpd_and_rm_leaves_no_network_behind",
    ) {
        return;
    }
    let _l = vm_lock();
    let www = env.rootfs.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "vm-published-ok\n").unwrap();
    let port = free_port();
    let policy = env.dir.path().join("web.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: web\nspec:\n  extends: baseline\n  \
             network:\n    mode: egress\n    egress:\n      - to: 127.0.0.1/32\n        ports: 9\n        protocol: tcp\n    \
             publish:\n      - host: {port}\n        container: 80\n"
        ),
    )
    .unwrap();
    let publish = format!("127.0.0.1:{port}:80");
    let root = env.rootfs.to_str().unwrap().to_string();
    let o = env
        .moat(&[
            "run",
            "-d",
            "-q",
            "--isolation",
            "vm",
            "--accel",
            "tcg",
            "--name",
            "web",
            "--policy",
            policy.to_str().unwrap(),
            "-p",
            &publish,
            "--rootfs",
            &root,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "run -d: {}", stderr(&o));
    let _rm = RmOnDrop(&env);
    let url = format!("http://127.0.0.1:{port}/index.html");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut body = String::new();
    let mut last = String::new();
    while Instant::now() < deadline {
        let c = Command::new("curl")
            .args(["-sS", "--max-time", "3", &url])
            .output()
            .unwrap();
        if c.status.success() {
            body = String::from_utf8_lossy(&c.stdout).into_owned();
            break;
        }
        last = String::from_utf8_lossy(&c.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(300));
    }
    let logs = env.moat(&["logs", "web"]).output().unwrap();
    assert_eq!(
        body,
        "vm-published-ok\n",
        "curl {url}: {last}; logs: {}",
        stderr(&logs)
    );
    // pasta runs for the VM, on a namespace bound under the state root.
    let state = env.state_root();
    // (Its log, stderr, is under the state root: jailed, its command
    // line names only paths of its own mount namespace.)
    let pastas = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let log = std::fs::read_link(format!("/proc/{pid}/fd/2")).unwrap_or_default();
                cmd.starts_with(b"pasta\0") && log.starts_with(&state)
            })
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let bound = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(state.to_str().unwrap()) && l.contains("nsfs"))
            .count()
    };
    assert!(!pastas().is_empty(), "no pasta for the VM");
    assert_eq!(
        bound(),
        1,
        "the VM's namespace is not bound under the state root"
    );
    let o = env.moat(&["rm", "-f", "web"]).output().unwrap();
    assert!(o.status.success(), "rm -f: {}", stderr(&o));
    wait_for("pasta, the namespace's mount and the VMM to go", 15, || {
        pastas().is_empty() && bound() == 0 && jailed_processes().is_empty()
    });
    assert!(
        Command::new("curl")
            .args(["-sS", "--max-time", "2", &url])
            .output()
            .is_ok_and(|c| !c.status.success()),
        "the port still answers after rm"
    );
}
