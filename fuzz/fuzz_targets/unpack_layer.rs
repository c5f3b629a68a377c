//! Feeds arbitrary bytes (optionally gzip/zstd) to the layer unpacker and
//! checks that nothing appears outside the rootfs it unpacks into.
#![no_main]

use std::fs::File;
use std::os::fd::AsFd;

use libfuzzer_sys::fuzz_target;
use moat_image::unpack::{self, Budget, Limits, UnpackOptions};

fuzz_target!(|data: &[u8]| {
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    let outside = t.path().join("outside");
    std::fs::create_dir(&rootfs).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let root = File::open(&rootfs).unwrap();
    let opts = UnpackOptions {
        limits: Limits {
            max_bytes: 8 << 20,
            max_entries: 512,
        },
        allow_devices: false,
    };
    let mut budget = Budget::default();
    if let Ok((stream, _)) = unpack::decompress(std::io::BufReader::new(data)) {
        let _ = unpack::apply_layer(root.as_fd(), stream, &opts, &mut budget);
    }
    // Nothing may have been created next to the rootfs.
    let siblings: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        siblings.len(),
        2,
        "unpack wrote outside the rootfs: {siblings:?}"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "unpack wrote outside the rootfs"
    );
});
