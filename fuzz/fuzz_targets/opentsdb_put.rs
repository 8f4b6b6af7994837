//! OpenTSDB `/api/put` JSON: any body is accepted, partly accepted or refused with an error,
//! never a panic; every accepted point has a finite value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = tsvault_ingest::parse_opentsdb_put(data) {
        for (_, p) in &out.points {
            assert!(p.value.is_finite(), "accepted a non-finite value: {p:?}");
        }
    }
});
