//! Shared helpers of the VM integration tests: a busybox rootfs, a plan
//! built by hand, the agent build, a cross-process lock that serialises VM
//! boots.

#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use moat_policy::plan::*;
use moat_policy::{Plan, ProcessSpec};

pub use moat_testkit::host::{jailed_processes, vm_cgroups, vm_lock};

/// Why the VM tests cannot run here, if they cannot.
pub fn missing_prerequisite() -> Option<String> {
    if !Path::new("/usr/bin/qemu-system-x86_64").is_file() {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    if let Err(e) = moat_vm::kernel::locate(Path::new("/nonexistent")) {
        return Some(format!("guest kernel not built ({e})"));
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("/bin/busybox (busybox-static) is not installed".into());
    }
    None
}

/// Skips the calling test (prints `SKIP: reason`) when a prerequisite is absent.
#[macro_export]
macro_rules! require_vm {
    () => {
        if let Some(why) = common::missing_prerequisite() {
            println!("SKIP: {why}");
            return;
        }
        common::ensure_agent();
    };
}

/// Builds the static agent once if no build of it is found.
pub fn ensure_agent() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if moat_vm::initramfs::locate_agent().is_ok() {
            return;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let st = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-p",
                "moat-agent",
                "--target",
                "x86_64-unknown-linux-gnu",
            ])
            .env(
                "RUSTFLAGS",
                "-C target-feature=+crt-static -C strip=symbols",
            )
            .status()
            .expect("cargo build of the agent");
        assert!(st.success(), "building the static agent failed");
    });
}

/// A busybox rootfs whose uid 1000 is `app`, as an image store would
/// materialise it.
pub fn make_rootfs(dir: &Path) {
    moat_testkit::rootfs::busybox_rootfs_as(dir, "app")
}

/// A state root with a busybox rootfs, shared by the tests of one binary.
pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub state: PathBuf,
    pub rootfs: PathBuf,
    pub image_id: String,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(new_fixture)
}

pub fn new_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    make_rootfs(&rootfs);
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    Fixture {
        state,
        rootfs,
        image_id: format!("sha256:{:064x}", std::process::id() as u128 * 7919 + 1),
        _dir: dir,
    }
}

pub fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        tty: false,
        interactive: false,
        hostname: "moat-test".into(),
    }
}

pub fn plan() -> Plan {
    Plan {
        policy_name: "test".into(),
        policy_digest: "0".repeat(64),
        isolation: IsolationRequirement::Vm,
        process: ProcessPlan {
            uid: None,
            gid: None,
            additional_gids: vec![],
            no_new_privs: true,
        },
        capabilities: vec![],
        namespaces: vec![],
        root: Default::default(),
        mounts: vec![MountPlan::Tmpfs {
            destination: "/tmp".into(),
            size_bytes: 16 << 20,
            optional: false,
            mode: None,
        }],
        rlimits: vec![Rlimit {
            resource: RlimitResource::Nofile,
            soft: 1024,
            hard: 1024,
        }],
        cgroup: CgroupLimits::default(),
        seccomp: SeccompProgram::default(),
        network: NetworkPlan::None,
        devices: vec![],
        vm: VmShape {
            vcpus: 1,
            memory_mib: 256,
            disk_mib: 0,
        },
        exec_allowed: false,
        audit_denied: false,
    }
}

pub fn options(f: &Fixture, process: ProcessSpec) -> moat_vm::VmRunOptions {
    moat_vm::VmRunOptions {
        state_root: f.state.clone(),
        run_root: f.state.join("run"),
        rootfs: f.rootfs.clone(),
        image_id: f.image_id.parse().unwrap(),
        id: None,
        process,
        plan: plan(),
        accel: Some(std::env::var("MOAT_TEST_ACCEL").unwrap_or_else(|_| "tcg".into())),
        name: "test".into(),
        stop_timeout: std::time::Duration::from_secs(10),
        supervisor_seccomp: moat_vm::supervisor::Scope::Thread,
        control: None,
        keep_record: false,
        started_notify: None,
        start_gate: None,
        extra_seccomp: Vec::new(),
        attach: None,
        pod_share: None,
        vm_start: moat_vm::VmStart::Cold,
    }
}

/// Output of one in-process run.
pub struct Outcome {
    pub code: Result<i32, String>,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Clone, Default)]
pub struct Buf(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Runs a container in-process, capturing its output. The supervisor runs
/// in a thread of its own, which its seccomp filter (scope `Thread`) binds
/// from the moment QEMU runs: the filter allows no second VM, no new thread
/// and no exec on that thread, so the test's own thread stays unfiltered.
pub fn run(opts: moat_vm::VmRunOptions, stdin: Option<&[u8]>) -> Outcome {
    let stdin = stdin.map(<[u8]>::to_vec);
    std::thread::spawn(move || run_here(opts, stdin.as_deref()))
        .join()
        .unwrap()
}

fn run_here(opts: moat_vm::VmRunOptions, stdin: Option<&[u8]>) -> Outcome {
    let (out, err) = (Buf::default(), Buf::default());
    let stdin_fd = stdin.map(|data| {
        let path = tempfile::NamedTempFile::new().unwrap();
        fs::write(path.path(), data).unwrap();
        std::os::fd::OwnedFd::from(File::open(path.path()).unwrap())
    });
    let stdio = moat_vm::session::Stdio {
        stdin: stdin_fd
            .or_else(|| Some(std::os::fd::OwnedFd::from(File::open("/dev/null").unwrap()))),
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
    };
    let code = moat_vm::run_container_with(opts, stdio, &mut |n| eprintln!("{n}")).map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            s.push_str(&format!(": {c}"));
            src = c.source();
        }
        s
    });
    Outcome {
        code,
        stdout: out.text(),
        stderr: err.text(),
    }
}
