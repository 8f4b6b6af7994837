//! The WAL reader on arbitrary file contents: records before damage, then a clean end, a
//! torn tail, a hole or corruption; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tsvault_storage::fuzzing::wal(data);
});
