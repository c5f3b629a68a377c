//! The VMM's cgroups through the shared cgroup layer: a running VM has
//! figures by its container ID (what `moat stats` needs of the VM
//! backend), can be frozen and thawed (pause/resume) and still ends
//! normally, and afterwards nothing is left under its ID.

#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_running_vm_has_figures_and_pauses_by_its_container_id() {
    require_vm!();
    let _l = vm_lock();
    let f = fixture();
    let containers = f.state.join("run/containers");
    let o = options(f, process(&["sh", "-c", "sleep 3; echo done"]));
    let vm = std::thread::spawn(move || run(o, None));

    let deadline = Instant::now() + Duration::from_secs(120);
    let (id, stats) = loop {
        assert!(Instant::now() < deadline, "no VM record with figures");
        let ids: Vec<String> = std::fs::read_dir(&containers)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let found = ids
            .into_iter()
            .find_map(|id| Some((id.clone(), moat_cgroup::stats_for(&id)?)));
        if let Some((id, s)) = found {
            // Once QEMU runs (the jail's shell alone is about 1 MiB).
            if s.memory_bytes.is_some_and(|m| m > 16 << 20) {
                break (id, s);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // QEMU's threads (main loop, RCU, a vCPU) and the jail's processes.
    assert!(stats.pids.is_some_and(|p| p > 3), "{stats:?}");
    assert!(stats.cpu_usec.is_some_and(|u| u > 0), "{stats:?}");
    let cg = moat_cgroup::find(&id).unwrap().expect("the VM's cgroup");
    assert!(cg.name().as_str().starts_with("vm-"), "{}", cg.name());
    cg.freeze().unwrap();
    assert!(cg.is_frozen());
    std::thread::sleep(Duration::from_millis(500));
    cg.thaw().unwrap();

    let r = vm.join().unwrap();
    assert_eq!(r.code, Ok(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "done\n");
    assert!(moat_cgroup::stats_for(&id).is_none());
    assert!(moat_cgroup::find(&id).unwrap().is_none());
}
