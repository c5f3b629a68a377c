//! Helpers shared by the integration tests.
#![allow(dead_code)]
// Not every test binary builds a root.
#![allow(unused_imports)]

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

pub use moat_testkit::rootfs::busybox_rootfs;
