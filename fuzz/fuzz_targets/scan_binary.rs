//! Feeds arbitrary bytes to the binary readers of the scanner: ELF section
//! lookup, Go build info, cargo-auditable data and rpm header blobs. These
//! read offsets and lengths out of the input, so they are where an
//! out-of-bounds or overflow would hide.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_scan::inventory::{binary, os};

fuzz_target!(|data: &[u8]| {
    let _ = binary::elf_section(data, ".go.buildinfo");
    let _ = binary::elf_section(data, ".dep-v0");
    let _ = binary::go_buildinfo(data);
    let _ = binary::go_packages(data, "fuzz/bin");
    let _ = binary::auditable_packages(data, "fuzz/bin");
    let _ = os::parse_rpm_header(data);
});
