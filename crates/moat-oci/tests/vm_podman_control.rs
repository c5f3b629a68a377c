//! `podman pause`/`unpause` and `podman update` of a micro-VM container
//! through moat-oci: podman sees it paused and running again, the guest
//! makes no progress while paused, and `update --cpus` reaches the VM
//! while `update --memory` is refused by name. Needs root, podman, conmon,
//! QEMU and a built guest kernel; skips only without them.

#[path = "clients/mod.rs"]
mod clients;
use moat_testkit::host as vmhost;

use std::time::Duration;

use clients::{stderr, Podman, IMAGE};

fn state(p: &Podman, name: &str) -> String {
    p.ok(&["inspect", "-f", "{{.State.Status}}", name])
        .trim()
        .to_string()
}

/// The highest `tick-N` podman's log of `name` holds.
fn last_tick(p: &Podman, name: &str) -> u32 {
    p.ok(&["logs", name])
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("tick-")?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn vm_podman_pause_unpause_update() {
    if !clients::vm_ready("vm_podman_pause_unpause_update", &["podman", "conmon"]) {
        return;
    }
    let _lock = vmhost::vm_lock();
    let p = Podman::new();
    let mut args: Vec<String> = ["run", "-d", "--name", "t", "--network", "none"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(Podman::container_opts("vm"));
    args.extend(
        [
            IMAGE,
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.2; done",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    p.ok(&refs);
    clients::wait_until(Duration::from_secs(30), || {
        (last_tick(&p, "t") >= 3).then_some(())
    })
    .expect("no ticks from the VM container");

    p.ok(&["pause", "t"]);
    assert_eq!(state(&p, "t"), "paused");
    let before = last_tick(&p, "t");
    std::thread::sleep(Duration::from_secs(2));
    // At most the tick in flight when the guest stopped.
    assert!(
        last_tick(&p, "t") <= before + 1,
        "the guest ran while paused"
    );
    p.ok(&["unpause", "t"]);
    assert_eq!(state(&p, "t"), "running");
    let resumed = last_tick(&p, "t");
    clients::wait_until(Duration::from_secs(30), || {
        (last_tick(&p, "t") >= resumed + 3).then_some(())
    })
    .expect("the guest did not go on after unpause");

    // podman update: CPU reaches the VM, memory is refused by name.
    p.ok(&["update", "--cpus", "0.5", "t"]);
    let o = p.podman(&["update", "--memory", "128m", "t"]);
    assert!(!o.status.success(), "a VM's memory was updated");
    assert!(
        stderr(&o).contains("linux.resources.memory.limit"),
        "{}",
        stderr(&o)
    );
    assert_eq!(state(&p, "t"), "running");
    p.ok(&["rm", "-f", "t"]);
}
