//! The VMM's jail without QEMU (needs root and cgroups): a shell started
//! where the VMM would be shows the jail's credentials, its own PID
//! namespace with PID 1 hidden, only the descriptors it was handed, and
//! leaves nothing behind; a program that cannot be executed is an error of
//! `jail::spawn`, not a silent exit.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use moat_vm::hypervisor::VmmCommand;
use moat_vm::jail::{self, JailSpec, RunningVmm};

fn spec(name: &str, uid: u32) -> JailSpec {
    JailSpec {
        // A container-ID-shaped name, unique to this test and process.
        name: format!(
            "vm-{:08x}{:08x}",
            name.bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into())),
            std::process::id()
        ),
        uid,
        guest_memory_mib: 64,
        vcpus: 1,
        cpu_millis: None,
        cleanup: vec![],
        hide: vec![],
        device_group: None,
        netns: None,
    }
}

fn command(program: &str, script: &str) -> VmmCommand {
    VmmCommand {
        program: program.into(),
        args: vec!["-c".into(), script.into()],
        fds: vec![(File::open("/etc/hostname").unwrap().into(), 5)],
        overhead_mib: 64,
    }
}

/// Root (effective uid 0), else the test is skipped.
fn runnable() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("skipped: needs root");
    }
    root
}

/// Every cgroup directory named `name`: v2 (`/sys/fs/cgroup/moat`) or in
/// any v1 hierarchy (`/sys/fs/cgroup/<controller>/moat`).
fn cgroups_named(name: &str) -> Vec<String> {
    let mut dirs = vec![Path::new("/sys/fs/cgroup/moat").join(name)];
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        dirs.push(e.path().join("moat").join(name));
    }
    dirs.into_iter()
        .filter(|d| d.is_dir())
        .map(|d| d.display().to_string())
        .collect()
}

#[test]
fn the_jailed_process_has_the_jails_credentials_and_nothing_else() {
    if !runnable() {
        return;
    }
    let uid = jail::UID_BASE + 0xfff0;
    let spec = spec("creds", uid);
    let script = "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status
cat /proc/1/cmdline >/dev/null 2>&1 || echo pid1-hidden
echo pid=$$
echo fds $(ls /proc/self/fd)
pwd
exit 3";
    let mut vmm: RunningVmm = jail::spawn(command("/bin/sh", script), &spec).unwrap();
    assert!(!cgroups_named(&spec.name).is_empty());
    let mut out = String::new();
    vmm.console.read_to_string(&mut out).unwrap();
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let ids = format!("{uid} {uid} {uid} {uid}");
    assert_eq!(field("Uid:"), ids, "{out}");
    assert_eq!(field("Gid:"), ids, "{out}");
    assert_eq!(field("Groups:"), "", "{out}");
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(set), "0000000000000000", "{set}\n{out}");
    }
    assert_eq!(field("NoNewPrivs:"), "1", "{out}");
    assert!(out.contains("pid1-hidden\n"), "{out}");
    // PID 1 of its namespace is the jail's root process; the shell is 2.
    assert!(out.contains("pid=2\n"), "{out}");
    // stdio, the descriptor it was handed, and ls's own directory.
    let fds: Vec<u32> = field("fds ")
        .split(' ')
        .map(|f| f.parse().unwrap())
        .collect();
    assert!(fds.contains(&5), "{out}");
    assert!(
        fds.iter().filter(|&&f| f > 2 && f != 5).count() <= 1,
        "{out}"
    );
    assert!(out.ends_with("/\n"), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = vmm.try_wait() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the jail did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3));
    vmm.shutdown();
    assert_eq!(cgroups_named(&spec.name), Vec::<String>::new());
}

#[test]
fn a_vmm_that_cannot_be_executed_is_an_error_of_spawn() {
    if !runnable() {
        return;
    }
    let spec = spec("noexec", jail::UID_BASE + 0xfff1);
    let err = match jail::spawn(command("/nonexistent/qemu", "true"), &spec) {
        Ok(_) => panic!("a missing VMM started"),
        Err(e) => e,
    };
    let source = std::error::Error::source(&err).map(|s| s.to_string());
    assert_eq!(
        err.to_string(),
        "starting the jailed VMM (/nonexistent/qemu)"
    );
    assert_eq!(
        source.as_deref(),
        Some("/nonexistent/qemu: No such file or directory (os error 2) (PATH=/usr/sbin:/usr/bin:/sbin:/bin)")
    );
    // The cleanup watcher removes the cgroups once spawn gave up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cgroups_named(&spec.name).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            cgroups_named(&spec.name)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
