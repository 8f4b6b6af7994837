//! A backup's series index and digest blobs from a hostile repository.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((k, rest)) if k % 2 == 0 => {
            tsvault_backup::fuzzing::series_index(rest);
        }
        Some((_, rest)) => {
            tsvault_backup::fuzzing::digests(rest);
        }
        None => {}
    }
});
