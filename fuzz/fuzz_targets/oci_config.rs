//! A bundle's config.json is hostile input: parsed, checked against the
//! default policy and turned into the container's set-up (seccomp
//! translation included) without panicking, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<oci_spec::runtime::Spec>(data) else {
        return;
    };
    let b = moat_oci::bundle::Bundle {
        dir: "/nonexistent-fuzz-bundle".into(),
        rootfs: "/nonexistent-fuzz-bundle/rootfs".into(),
        annotations: config.annotations().clone().unwrap_or_default(),
        config,
    };
    let _ = moat_oci::bundle::prepare(&b, &moat_oci::site::Site::default(), "fuzz");
});
