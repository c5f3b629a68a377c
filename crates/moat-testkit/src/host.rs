//! What VM tests check on the host: the cross-process lock that serialises
//! VM boots, and what a VM may leave behind (jailed VMM processes, `vm-*`
//! cgroups, container directories).

use std::fs::{self, File};

/// Holds the cross-process lock that serialises VM tests.
pub struct VmLock(#[allow(dead_code)] File);

pub fn vm_lock() -> VmLock {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("moat-vm-tests.lock"))
        .unwrap();
    f.lock().unwrap();
    VmLock(f)
}

/// Whether micro-VMs can run here: QEMU and the guest kernel (`make
/// kernel`; prints `SKIP: TEST: ...` and returns false without them) and
/// the agent (`make agent`; panics without it: a build step was missed).
pub fn vm_available(test: &str) -> bool {
    if !std::path::Path::new("/usr/bin/qemu-system-x86_64").is_file() {
        println!("SKIP: {test}: qemu-system-x86_64 is not installed");
        return false;
    }
    if let Err(e) = moat_vm::kernel::locate(std::path::Path::new("/var/lib/moat")) {
        println!("SKIP: {test}: guest kernel not built ({e}; `make kernel`)");
        return false;
    }
    assert!(
        moat_vm::initramfs::locate_agent().is_ok(),
        "no guest agent build: run `make agent`"
    );
    true
}

/// PIDs of processes running under a jailed VMM uid.
pub fn jailed_processes() -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if (moat_vm::jail::UID_BASE..moat_vm::jail::UID_BASE + 0x10000).contains(&uid) {
            let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            out.push(format!("{name} {}", comm.trim()));
        }
    }
    out
}

/// Per-VM cgroups that still exist, in any hierarchy (v2, or each v1
/// controller's and the unified one of a hybrid host).
pub fn vm_cgroups() -> Vec<String> {
    let mut out = Vec::new();
    let mut parents = vec![std::path::PathBuf::from("/sys/fs/cgroup/moat")];
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        parents.extend(rd.flatten().map(|e| e.path().join("moat")));
    }
    for parent in parents {
        if let Ok(rd) = fs::read_dir(&parent) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("vm-") {
                    out.push(format!("{}/{n}", parent.display()));
                }
            }
        }
    }
    out
}

/// Everything a VM may leave behind: jailed processes, `vm-*` cgroups, and
/// container directories under `containers` (the records directory).
pub fn leftovers(containers: &std::path::Path) -> Vec<String> {
    let mut l = jailed_processes();
    l.extend(vm_cgroups());
    if let Ok(rd) = fs::read_dir(containers) {
        l.extend(
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n != ".lock"))
                .map(|p| p.display().to_string()),
        );
    }
    l
}

/// Waits (up to 20 s: the cleanup watcher of a killed supervisor is
/// asynchronous) until nothing of any VM is left, then asserts it.
pub fn assert_nothing_left(containers: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline && !leftovers(containers).is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(leftovers(containers), Vec::<String>::new());
}
