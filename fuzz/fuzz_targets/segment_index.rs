//! A segment's index parser behind its checksum: arbitrary bytes parse or are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tsvault_storage::fuzzing::segment_index(data);
});
