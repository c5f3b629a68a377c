//! The vm backend through the runtime core's `Backend` trait (issue 13):
//! the record of a running VM container, its cgroup figures, the signals
//! it refuses, and cleanup after a dead supervisor, all derived from the
//! container's ID.

mod common;

use std::time::{Duration, Instant};

use common::*;
use moat_runtime::record::{self, Record};
use moat_runtime::{Backend, ContainerId, ContainerName, Isolation, Status};
use moat_vm::VmBackend;

fn backend(f: &Fixture) -> VmBackend {
    let mut b = VmBackend::new(f.state.clone());
    b.supervisor_seccomp = moat_vm::supervisor::Scope::Thread;
    b
}

/// The record of the one container under `run_root`, once it runs.
fn wait_running(run_root: &std::path::Path) -> Record {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(r) = record::read_all(run_root)
            .unwrap()
            .into_iter()
            .find(|r| r.status == Status::Running)
        {
            return r;
        }
        assert!(Instant::now() < deadline, "no running record appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_running_vm_container_through_the_backend_trait() {
    require_vm!();
    let _l = vm_lock();
    let f = new_fixture();
    let run_root = f.state.join("run");
    let mut opts = options(&f, process(&["sleep", "1000"]));
    opts.name = "trait1".into();
    opts.stop_timeout = Duration::from_secs(1);
    // The supervisor in a thread of its own; the container ends when the
    // test's cgroup kill below ends its VMM.
    let vm = std::thread::spawn(move || run(opts, None));
    let rec = wait_running(&run_root);
    let b = backend(&f);
    assert_eq!(b.isolation(), Isolation::Vm);
    assert_eq!(rec.name.as_str(), "trait1");
    assert_eq!(rec.isolation, Isolation::Vm);
    assert_eq!(rec.pid, std::process::id() as i32);

    let s = b.stats(&rec).expect("cgroup figures of a running VM");
    // Some: a VM restored from a template is charged only for the pages
    // it writes (the template's are the builder's), about 1 MiB idle.
    assert!(s.memory_bytes.unwrap() > 0, "{s:?}");
    assert!(s.cpu_usec.unwrap() > 0, "{s:?}");
    assert!(s.pids.unwrap() >= 1, "{s:?}");

    let e = b.signal(&rec, libc::SIGSTOP).unwrap_err();
    assert_eq!(
        e.to_string(),
        "container \"trait1\" runs in a micro-VM, whose supervisor forwards only INT, TERM, HUP, QUIT, USR1 and USR2 (KILL ends the VM); signal 19 cannot reach it"
    );
    let e = b.delete(&run_root, &rec).unwrap_err();
    assert_eq!(
        e.to_string(),
        "removing container trait1: it is still running (stop it first: moat kill trait1)"
    );
    assert_eq!(e.exit_code, 125);

    // End the VM as the cleanup watcher would (the supervisor is this
    // process: a signal to it would reach the test harness).
    let cg = vm_cgroups()
        .into_iter()
        .find(|c| c.ends_with(&format!("vm-{}", rec.id)))
        .expect("the VM's cgroup");
    let kill = std::path::Path::new(&cg).join("cgroup.kill");
    if kill.exists() {
        std::fs::write(kill, "1").unwrap();
    } else {
        for p in std::fs::read_to_string(std::path::Path::new(&cg).join("cgroup.procs"))
            .unwrap()
            .lines()
        {
            let _ = std::process::Command::new("kill").args(["-9", p]).status();
        }
    }
    let out = vm.join().unwrap();
    assert!(out.code.is_err(), "the VMM was killed: {:?}", out.code);
    assert!(record::read_all(&run_root).unwrap().is_empty());
    assert_eq!(jailed_processes(), Vec::<String>::new());
    assert!(b.stats(&rec).is_none());
}

#[test]
fn delete_removes_what_a_dead_supervisor_left() {
    // No VM needed: a record and a cgroup as a killed supervisor whose
    // watcher also died would leave them.
    let d = tempfile::tempdir().unwrap();
    let run_root = d.path().join("run");
    let id = ContainerId::generate();
    let mut rec = Record::new(
        id.clone(),
        ContainerName::parse("dead1").unwrap(),
        Isolation::Vm,
        format!("sha256:{}", "0".repeat(64)).parse().unwrap(),
    );
    rec.supervisor_pid = i32::MAX - 1;
    rec.supervisor_start_time = 1;
    record::write(&run_root, &rec).unwrap();
    // In a real hierarchy: v2, or v1's pids (hybrid hosts).
    let hierarchy = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .into_iter()
    .map(std::path::Path::new)
    .find(|h| h.join("cgroup.procs").exists());
    let cg = hierarchy.map(|h| h.join("moat").join(format!("vm-{id}")));
    let made_cgroup = rustix::process::geteuid().is_root()
        && cg
            .as_ref()
            .is_some_and(|cg| std::fs::create_dir_all(cg).is_ok());
    let b = VmBackend::new(d.path().join("state"));
    let e = b.signal(&rec, libc::SIGTERM).unwrap_err();
    assert_eq!(
        e.to_string(),
        "signalling container dead1: its supervisor is gone"
    );
    b.delete(&run_root, &rec).unwrap();
    assert!(record::read_all(&run_root).unwrap().is_empty());
    if let (true, Some(cg)) = (made_cgroup, &cg) {
        assert!(!cg.exists(), "{} was left", cg.display());
    }
    // A sandbox record is not the vm backend's to touch.
    let sb = Record::new(
        ContainerId::generate(),
        ContainerName::parse("sb").unwrap(),
        Isolation::Sandbox,
        format!("sha256:{}", "0".repeat(64)).parse().unwrap(),
    );
    assert_eq!(
        b.delete(&run_root, &sb).unwrap_err().to_string(),
        "container \"sb\" is a sandbox container, not a micro-VM"
    );
}
