//! Feeds arbitrary bytes as one ELF object of an image and runs the whole
//! image-profile analysis on it (ELF parse, `.eh_frame`, disassembly,
//! libc and loader handling), as `moat image import` does on hostile
//! images. The first byte picks the object's path, since the name selects
//! the loader and JIT paths. It must never panic, hang or allocate without
//! bound.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use moat_profile::image_profile::analyze_image;
use moat_profile::rootfs::Root;

const PATHS: &[&str] = &[
    "bin/app",
    "lib/x86_64-linux-gnu/libfoo.so.1",
    "lib64/ld-linux-x86-64.so.2",
    "usr/bin/node",
];

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, elf)) = data.split_first() else {
        return;
    };
    let root_dir = dir().path().join("root");
    let _ = std::fs::remove_dir_all(&root_dir);
    let rel = PATHS[pick as usize % PATHS.len()];
    let file = root_dir.join(rel);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, elf).unwrap();
    let root = Root::open(&root_dir).unwrap();
    let _ = analyze_image(&root);
});
