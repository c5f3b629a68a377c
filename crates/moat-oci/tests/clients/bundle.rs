//! A busybox bundle for moat-oci driven directly (no client): runc's
//! default `config.json` with a small seccomp profile, edited per test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use super::{busybox_rootfs, run, stderr};

pub const STEP: Duration = Duration::from_secs(20);

pub struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    /// A busybox bundle with runc's default config running `args`.
    pub fn new(args: &[&str]) -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        busybox_rootfs(&dir.path().join("rootfs"));
        let o = run(
            Command::new("runc")
                .args(["spec", "--bundle"])
                .arg(dir.path()),
            STEP,
        );
        assert!(o.status.success(), "runc spec: {}", stderr(&o));
        let b = Bundle { dir };
        b.edit(|c| {
            c["process"]["terminal"] = json!(false);
            c["process"]["args"] = json!(args);
            // containerd's default profile is not at hand: a small one.
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO"}]
            });
        });
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let file = self.path().join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        f(&mut c);
        std::fs::write(&file, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    }

    pub fn state_root(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn oci(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat-oci"));
        cmd.arg("--root").arg(self.state_root()).args(args);
        cmd.env_remove("MOAT_OCI_CONFIG");
        run(&mut cmd, STEP)
    }

    /// `create`: its stderr goes to a file, since a created container
    /// keeps create's stdio (runc's contract) and would hold a pipe open.
    pub fn create(&self, id: &str) -> Output {
        self.create_with(&[], id)
    }

    /// [`Bundle::create`] with more flags (`--pid-file F`).
    pub fn create_with(&self, flags: &[&str], id: &str) -> Output {
        let err_file = self.path().join("create.err");
        let err = std::fs::File::create(&err_file).unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_moat-oci"))
            .arg("--root")
            .arg(self.state_root())
            .args(["create", "--bundle"])
            .arg(self.path())
            .args(flags)
            .arg(id)
            .env_remove("MOAT_OCI_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .status()
            .unwrap();
        Output {
            status,
            stdout: Vec::new(),
            stderr: std::fs::read(&err_file).unwrap(),
        }
    }
}
