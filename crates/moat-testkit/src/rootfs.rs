//! Root filesystems built from the host's static busybox.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// A minimal root filesystem: busybox with every applet, `/etc/passwd`
/// and `/etc/group` naming root, `user` (1000, home `/home/user`) and
/// nobody, and the directories a container needs (`/tmp` 1777).
pub fn busybox_rootfs(root: &Path) {
    busybox_rootfs_as(root, "user")
}

/// [`busybox_rootfs`] whose uid 1000 is called `name`, home `/home/NAME`.
pub fn busybox_rootfs_as(root: &Path, name: &str) {
    let home = format!("home/{name}");
    for d in [
        "bin", "dev", "proc", "sys", "tmp", "run", "etc", "root", "var", &home,
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\n{name}:x:1000:1000:{name}:/{home}:/bin/sh\n\
             nobody:x:65534:65534::/:/bin/false\n"
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        format!("root:x:0:\n{name}:x:1000:\nnogroup:x:65534:\n"),
    )
    .unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}
