//! Feeds arbitrary bytes to the runtime's container-record parser, the one
//! reader of `containers/<id>/state.json`. It must never panic or allocate
//! without bound, and a record it accepts must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_runtime::record::parse_record;

fuzz_target!(|data: &[u8]| {
    // The id the reader expects is the directory name; try the one the
    // input names as well as a fixed one.
    let _ = parse_record(data, "0123456789abcdef0123456789abcdef");
    let id = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("id")?.as_str().map(str::to_string));
    if let Some(id) = id {
        if let Some(rec) = parse_record(data, &id) {
            let again = serde_json::to_vec(&rec).expect("a parsed record serialises");
            let back = parse_record(&again, &id).expect("a serialised record parses");
            assert_eq!(
                serde_json::to_value(&rec).unwrap(),
                serde_json::to_value(&back).unwrap()
            );
        }
    }
});
