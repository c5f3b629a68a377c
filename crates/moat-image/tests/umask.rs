//! The importer's umask does not reach the image: under `UMask=0077` (as
//! moatd's systemd unit sets) the container's `/` is still 0755, so a
//! non-root user in the container can reach `/tmp`. Its own test binary:
//! the umask is per process.

use std::os::unix::fs::PermissionsExt;

use moat_image::import::ImportOptions;
use moat_image::Store;

#[test]
fn a_restrictive_umask_does_not_close_the_containers_root() {
    let t = tempfile::tempdir().unwrap();
    let ar = t.path().join("bb.tar");
    moat_image::testimage::write_busybox_oci_archive(&ar).unwrap();
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let store = Store::open(&t.path().join("root")).unwrap();
    let image = store.import(&ar, &ImportOptions::default()).unwrap();
    let rootfs = store.rootfs(&image).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&rootfs), 0o755, "the container's /");
    assert_eq!(mode(&rootfs.join("tmp")), 0o1777);
    assert_eq!(mode(&rootfs.join("bin")), 0o755);
}
