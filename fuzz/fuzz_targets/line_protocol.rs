//! InfluxDB line protocol: any body parses into points and per-line errors, never a panic;
//! every accepted point has a valid key and a finite value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsvault_ingest::{Precision, parse_line_protocol};

fuzz_target!(|data: &[u8]| {
    let precision = match data.first().map(|b| b % 4) {
        Some(0) => Precision::Ns,
        Some(1) => Precision::Ms,
        Some(2) => Precision::S,
        _ => Precision::Us,
    };
    let out = parse_line_protocol(data, precision, 1_700_000_000_000);
    for p in &out.points {
        assert!(p.value.is_finite(), "accepted a non-finite value: {p:?}");
    }
});
