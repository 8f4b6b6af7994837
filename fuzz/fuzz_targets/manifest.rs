//! The store's manifest decoder (frame, checksum, JSON) on arbitrary file contents.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tsvault_storage::fuzzing::manifest(data);
});
