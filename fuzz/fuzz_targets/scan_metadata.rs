//! Feeds arbitrary text to every package-metadata parser the scanner runs on
//! files read out of image layers (dpkg status, apk installed, os-release,
//! language lockfiles and manifests). The first byte picks the parser, so
//! that the fuzzer can specialise inputs per format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_scan::inventory::{lang, os};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let path = "fuzz/input";
    match which % 10 {
        0 => {
            let _ = os::parse_dpkg(&text, path, true);
            let _ = os::parse_dpkg(&text, path, false);
        }
        1 => drop(os::parse_apk(&text, path)),
        2 => drop(os::parse_os_release(&text)),
        3 => drop(lang::parse_cargo_lock(&text, path)),
        4 => drop(lang::parse_poetry_lock(&text, path)),
        5 => drop(lang::parse_package_lock(&text, path)),
        6 => drop(lang::parse_node_package_json(&text, path)),
        7 => drop(lang::parse_yarn_lock(&text, path)),
        8 => drop(lang::parse_python_metadata(&text, path)),
        _ => drop(lang::parse_requirements(&text, path)),
    }
});
