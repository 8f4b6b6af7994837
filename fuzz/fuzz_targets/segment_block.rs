//! A segment block's decoder (timestamp and value columns, both formats) behind its
//! checksum: arbitrary bytes decode or are refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tsvault_storage::fuzzing::segment_block(data);
});
