//! A backup manifest object from a hostile repository (body format, zstd, JSON, paths): an
//! error, never a panic or a path outside the restore target.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tsvault_backup::fuzzing::manifest(data);
});
