//! A whole layer through the inventory collector: arbitrary bytes as a tar
//! stream, then the inventory is finished. Hostile layers must give an
//! error or an inventory, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_scan::inventory::Collector;

fuzz_target!(|data: &[u8]| {
    let mut c = Collector::new();
    if c.add_layer("sha256:fuzz", data).is_ok() {
        let _ = c.finish();
    }
});
