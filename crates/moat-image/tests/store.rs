//! The library interface other areas use: Store::open/resolve/rootfs/
//! open_layer on the bundled test image, and verification before use.

use std::io::Read;

use moat_image::import::ImportOptions;
use moat_image::{Store, StoreError};

fn store_with_test_image() -> (tempfile::TempDir, Store, moat_image::Image) {
    let t = tempfile::tempdir().unwrap();
    let ar = t.path().join("bb.tar");
    moat_image::testimage::write_busybox_oci_archive(&ar).unwrap();
    let store = Store::open(&t.path().join("root")).unwrap();
    let image = store.import(&ar, &ImportOptions::default()).unwrap();
    (t, store, image)
}

#[test]
fn resolve_rootfs_and_open_layer() {
    let (_t, store, image) = store_with_test_image();
    let by_name = store.resolve("busybox").unwrap();
    assert_eq!(by_name, image);
    assert_eq!(
        store
            .resolve(&image.config_digest[..12])
            .unwrap()
            .manifest_digest,
        image.manifest_digest
    );
    assert_eq!(image.config.entrypoint, vec!["/bin/busybox"]);
    assert_eq!(image.config.working_dir, "/root");
    assert!(image.config.env.iter().any(|e| e.starts_with("PATH=")));

    let rootfs = store.rootfs(&image).unwrap();
    assert!(rootfs.join("bin/busybox").is_file());

    // A layer stream is the uncompressed tar.
    let mut tar = Vec::new();
    store
        .open_layer(&image.layers[2].digest)
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    let names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&"etc/passwd".to_string()), "{names:?}");

    // The rootfs cache is rebuilt when missing.
    std::fs::remove_dir_all(&rootfs).unwrap();
    assert_eq!(store.rootfs(&image).unwrap(), rootfs);
    assert!(rootfs
        .join("bin/sh")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn corrupt_blobs_are_refused_before_use() {
    let (_t, store, image) = store_with_test_image();
    let layer = &image.layers[2].digest;
    let path = store.blob_path(layer).unwrap();
    let mut data = std::fs::read(&path).unwrap();
    let n = data.len();
    data[n - 10] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let err = store.open_layer(layer).err().unwrap();
    assert!(matches!(err, StoreError::CorruptBlob { .. }));
    assert!(
        err.to_string().starts_with(&format!(
            "blob {layer} is corrupt (its content hashes to sha256:"
        )),
        "{err}"
    );

    let rootfs = store.rootfs(&image).unwrap();
    std::fs::remove_dir_all(&rootfs).unwrap();
    let err = store.rootfs(&image).unwrap_err();
    assert!(matches!(err, StoreError::Materialise { .. }), "{err}");
    assert!(!rootfs.exists(), "no partial rootfs is left");

    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        store.open_layer(layer).err().unwrap().to_string(),
        format!("blob {layer} is missing from the store; re-import the image")
    );
}
