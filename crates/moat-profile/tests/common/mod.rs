//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

/// Why a privileged test cannot run here, if it cannot.
pub fn skip_reason(need_crun: bool) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox (busybox-static) is not installed".into());
    }
    if need_crun && !Path::new("/usr/bin/crun").exists() {
        return Some("crun is not installed".into());
    }
    if moat_profile::trace::ensure_tracefs().is_err() {
        return Some("tracefs is not available".into());
    }
    None
}

/// A minimal busybox root filesystem.
pub fn busybox_rootfs(dir: &Path) {
    for d in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "ls", "cat", "echo", "true"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}
