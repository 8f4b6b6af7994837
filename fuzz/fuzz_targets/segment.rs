//! The segment reader on arbitrary file contents (open: footer, index, hash; then every
//! block): an error naming the damage, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static SCRATCH: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = SCRATCH.get_or_init(|| tempfile::tempdir().expect("scratch directory"));
    tsvault_storage::fuzzing::segment(data, &dir.path().join("fuzz.seg"));
});
