//! Replicas in micro-VMs (issue 17): ten VM replicas of one Deployment,
//! ready through exec probes that reach each guest through its monitor.
//! On TCG (no KVM) each boot takes seconds; MOATD_VM_REPLICAS changes the
//! count. Skips with `SKIP:` without QEMU or a built guest kernel.

mod common;

use common::{can_run, deployment, Env, Spec, VM_POLICY};

#[test]
fn ten_vm_replicas_become_ready() {
    if !can_run("ten_vm_replicas_become_ready") {
        return;
    }
    if !std::path::Path::new("/usr/bin/qemu-system-x86_64").is_file() {
        println!("SKIP: ten_vm_replicas_become_ready: qemu-system-x86_64 is not installed");
        return;
    }
    let mut env = Env::new(None);
    let k = env.run(&["kernel", "path"]);
    if !k.status.success() {
        println!("SKIP: ten_vm_replicas_become_ready: guest kernel not built (make kernel)");
        return;
    }
    env.start();
    let n: u32 = std::env::var("MOATD_VM_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let text = deployment(
        &env.image,
        &Spec {
            replicas: n,
            policy: Some("probe-exec-vm"),
            surge: "100%",
            ..Spec::default()
        },
    )
    .replace("moat.dev/isolation: sandbox", "moat.dev/isolation: vm");
    let t = std::time::Instant::now();
    env.apply("vm.yaml", &format!("{VM_POLICY}---\n{text}"));
    env.ok(&["rollout", "status", "deployment/web", "--timeout", "900"]);
    println!("{n} VM replicas ready in {:?}", t.elapsed());
    let vms = env
        .containers()
        .iter()
        .filter(|c| c["status"] == "running" && c["isolation"] == "vm")
        .count();
    assert_eq!(vms, n as usize);
}
