//! Entry points for the fuzz targets under `fuzz/` (not an API): repository contents a
//! hostile or damaged repository could hold, which must be refused with an error, never a
//! panic, a hang or an unbounded allocation.

use crate::crypto::Keys;
use crate::data_dir::{SeriesIndex, safe_relative};
use crate::manifest::BackupManifest;

/// Reads `bytes` as the body of a manifest object of an unencrypted repository (or, when it
/// starts with `{`, as the manifest's JSON) and checks every path it names as a restore
/// would. Returns whether it was accepted.
pub fn manifest(bytes: &[u8]) -> bool {
    let json = if bytes.first() == Some(&b'{') {
        bytes.to_vec()
    } else {
        match Keys::plain([7; 32]).open("backup fuzz", bytes, 16 << 20) {
            Ok(p) => p,
            Err(_) => return false,
        }
    };
    let Ok(m) = serde_json::from_slice::<BackupManifest>(&json) else {
        return false;
    };
    m.files.iter().all(|f| safe_relative(&f.path).is_ok())
}

/// Decodes `bytes` as a series index blob.
pub fn series_index(bytes: &[u8]) -> bool {
    SeriesIndex::decode(bytes, "fuzz").is_ok()
}

/// Decodes `bytes` as a digest blob (binary, or JSON: per-series digests with their basis,
/// or a bare list).
pub fn digests(bytes: &[u8]) -> bool {
    crate::digest_blob::decode(bytes).is_ok()
}
