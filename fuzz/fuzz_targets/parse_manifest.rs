//! Feeds arbitrary bytes to the index/manifest/config parsers and to the
//! platform selection (nested indexes read back the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_image::oci;

fuzz_target!(|data: &[u8]| {
    let _ = oci::parse_manifest("manifest", data);
    let _ = oci::parse_config("sha256:x", data, 1);
    let _ = oci::parse_docker_manifest(data);
    if let Ok(index) = oci::parse_index("index.json", data) {
        let _ = oci::select_manifest("index.json", &index, &mut |_| Ok(data.to_vec()));
    }
});
