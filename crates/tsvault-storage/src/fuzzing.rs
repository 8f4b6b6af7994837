//! Entry points for the fuzz targets under `fuzz/` (not an API): each feeds arbitrary bytes
//! to a reader of the store's files, which must return an error, never panic, hang or
//! allocate without bound.

use std::path::Path;

use crate::manifest::Manifest;
use crate::segment::Segment;
use crate::wal::read_wal_bytes;

/// Reads `bytes` as a WAL file; returns the samples of the records before any damage.
pub fn wal(bytes: &[u8]) -> usize {
    let mut samples = 0;
    let _ = read_wal_bytes(bytes, |batch| {
        samples += batch.samples.len();
        Ok(())
    });
    samples
}

/// Decodes `bytes` as a manifest file.
pub fn manifest(bytes: &[u8]) -> bool {
    Manifest::decode(bytes).is_ok()
}

/// Writes `bytes` to `scratch` and reads it as a segment: open (footer, index, file hash),
/// then every block. Returns the samples read.
pub fn segment(bytes: &[u8], scratch: &Path) -> usize {
    if std::fs::write(scratch, bytes).is_err() {
        return 0;
    }
    let Ok(seg) = Segment::open(scratch, 0, None) else {
        return 0;
    };
    let mut out = Vec::new();
    let n = seg.blocks().map_or(0, <[_]>::len);
    for i in 0..n {
        let _ = seg.read_block_into(i, i64::MIN, i64::MAX, &mut out);
    }
    out.len()
}

/// Decodes `bytes` as one block of a segment: the first byte picks the format (1 or 2) and
/// the next two the sample count the index would give; the rest is the block.
pub fn segment_block(bytes: &[u8]) -> usize {
    let [v, c0, c1, block @ ..] = bytes else {
        return 0;
    };
    let version = 1 + (v & 1);
    let count = usize::from(u16::from_le_bytes([*c0, *c1]));
    crate::segment::decode_block(version, block, count).map_or(0, |s| s.len())
}

/// Parses `bytes` as a segment's (decompressed) index of up to 64 series.
pub fn segment_index(bytes: &[u8]) -> usize {
    let [n, rest @ ..] = bytes else {
        return 0;
    };
    crate::segment::parse_index(rest, u64::MAX / 2, usize::from(n & 63)).map_or(0, |b| b.len())
}

/// Seed inputs for [`segment_block`] and [`segment_index`] taken from the valid segment at
/// `path`: each block with its format and count in front, and the decompressed index with
/// its series count in front.
pub fn seeds_from_segment(path: &Path) -> crate::Result<(Vec<Vec<u8>>, Vec<u8>)> {
    let seg = Segment::open(path, 0, None)?;
    let bytes = std::fs::read(path).map_err(|e| crate::Error::Io {
        op: "read",
        path: path.to_owned(),
        source: e,
    })?;
    let mut blocks = Vec::new();
    let version = seg.version()?;
    for b in seg.keyed_blocks()? {
        let mut seed = vec![version - 1];
        seed.extend_from_slice(&u16::try_from(b.count).unwrap_or(u16::MAX).to_le_bytes());
        seed.extend_from_slice(&bytes[b.offset as usize..(b.offset + u64::from(b.len)) as usize]);
        blocks.push(seed);
    }
    let index_start = seg
        .blocks()?
        .iter()
        .map(|b| b.offset + u64::from(b.len))
        .max()
        .unwrap_or(0) as usize;
    let footer_start = bytes.len() - crate::segment::FOOTER_BYTES;
    let index =
        zstd::bulk::decompress(&bytes[index_start..footer_start], 64 << 20).unwrap_or_default();
    let mut index_seed = vec![u8::try_from(seg.info.series).unwrap_or(63)];
    index_seed.extend_from_slice(&index);
    Ok((blocks, index_seed))
}
