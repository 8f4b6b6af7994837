//! The manifest: the set of live segments and where WAL replay starts (see FORMAT.md).
//!
//! Replaced atomically (temporary file, fsync, rename, directory fsync); framed with a magic,
//! a length and a CRC32C so that a damaged manifest is reported, never half-read.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bytes::Reader;
use crate::error::{Error, IoContext, Result, failpoint};
use crate::fsutil::write_atomic;
use crate::segment::SegmentInfo;
use crate::series_file::SeriesFileMark;

const MAGIC: &[u8; 8] = b"TSVMAN\x00\x01";
/// The manifest file's name in the data directory.
pub(crate) const MANIFEST_FILE: &str = "MANIFEST";
/// The current payload format.
const FORMAT_VERSION: u32 = 1;

/// The durable state of the store apart from the WAL.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Payload format version.
    pub format: u32,
    /// The next segment sequence number to hand out.
    pub next_segment_seq: u64,
    /// WAL files numbered below this hold only data already in segments.
    pub wal_start: u64,
    /// The partition width the segments were written with (0: not yet recorded).
    #[serde(default)]
    pub segment_duration_ms: i64,
    /// Live segments, ascending by sequence number.
    pub segments: Vec<SegmentInfo>,
    /// The prefix of the series file that holds every series key of these segments (none:
    /// a start reads the keys from the segments and writes the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series_file: Option<SeriesFileMark>,
}

impl Manifest {
    /// An empty manifest for a new data directory.
    pub(crate) fn new() -> Self {
        Manifest {
            format: FORMAT_VERSION,
            next_segment_seq: 1,
            wal_start: 0,
            segment_duration_ms: 0,
            segments: Vec::new(),
            series_file: None,
        }
    }

    /// Encodes the manifest with its frame.
    pub fn encode(&self) -> Vec<u8> {
        let payload =
            serde_json::to_vec(self).expect("manifest invariant: plain data always serializes");
        let mut out = Vec::with_capacity(payload.len() + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes and checks a framed manifest; the error names what is wrong.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut r = Reader::new(bytes);
        if r.bytes(8) != Some(MAGIC.as_slice()) {
            return Err("bad magic: not a tsvault manifest".into());
        }
        let len = r.u32().ok_or("header is truncated")? as usize;
        let crc = r.u32().ok_or("header is truncated")?;
        let payload = r.rest();
        if payload.len() != len {
            return Err(format!(
                "payload is {} bytes; the header says {len}",
                payload.len()
            ));
        }
        if crc32c::crc32c(payload) != crc {
            return Err("checksum mismatch".into());
        }
        let m: Manifest = serde_json::from_slice(payload).map_err(|e| format!("payload: {e}"))?;
        if m.format != FORMAT_VERSION {
            return Err(format!(
                "format version {} is not supported (this build reads {FORMAT_VERSION})",
                m.format
            ));
        }
        if m.segments.windows(2).any(|w| w[0].seq >= w[1].seq)
            || m.segments
                .last()
                .is_some_and(|s| s.seq >= m.next_segment_seq)
        {
            return Err("segment sequence numbers are out of order".into());
        }
        Ok(m)
    }

    /// Reads the manifest in `dir`, or None when the directory has none yet.
    pub(crate) fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST_FILE);
        match fs::read(&path) {
            Ok(bytes) => Manifest::decode(&bytes)
                .map(Some)
                .map_err(|detail| Error::Corrupt { path, detail }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", path),
        }
    }

    /// Atomically replaces the manifest in `dir`.
    pub(crate) fn store(&self, dir: &Path) -> Result<()> {
        failpoint!("manifest-store", "write", dir.join(MANIFEST_FILE));
        write_atomic(&dir.join(MANIFEST_FILE), &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), None);
        let mut m = Manifest::new();
        m.wal_start = 4;
        m.next_segment_seq = 3;
        m.segments.push(SegmentInfo {
            seq: 2,
            partition_start_ms: 0,
            partition_end_ms: 7_200_000,
            size_bytes: 100,
            blake3: "ab".into(),
            series: 1,
            samples: 2,
        });
        m.store(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), Some(m.clone()));
        let good = m.encode();
        for pos in 0..good.len() {
            let mut bad = good.clone();
            bad[pos] ^= 0x04;
            assert!(
                Manifest::decode(&bad).is_err(),
                "flip at {pos} went unnoticed"
            );
        }
        for cut in 0..good.len() {
            assert!(Manifest::decode(&good[..cut]).is_err());
        }
    }
}
