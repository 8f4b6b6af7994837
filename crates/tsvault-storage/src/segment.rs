//! Immutable segment files: one time partition, columnar per series (see FORMAT.md).
//!
//! A block holds one series' samples in the partition: timestamps compressed by pco with
//! delta-of-delta, values by pco (which finds integer, decimal and float patterns and
//! entropy-codes them). The index of blocks is zstd-compressed. Every block has a CRC32C,
//! checked on every read; the whole file has a BLAKE3 hash, checked when it is opened.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pco::{ChunkConfig, DeltaSpec};
use tsvault_model::{Sample, SeriesKey};

use crate::bytes::{Reader, put_ivarint, put_uvarint};
use crate::error::{Error, IoContext, Result, failpoint};
use crate::fsutil::sync_dir;

const HEADER_MAGIC: &[u8; 8] = b"TSVSEG\x00\x01";
const FOOTER_MAGIC: &[u8; 8] = b"TSVSEGND";
/// partition start/end, index offset/len, index crc, series count, sample count, file hash,
/// footer crc, magic.
const FOOTER_BYTES: usize = 8 + 8 + 8 + 8 + 4 + 4 + 8 + 32 + 4 + 8;
/// The largest compressed index or block a reader accepts.
const SECTION_BYTES_MAX: u64 = 1 << 30;
/// zstd level for the index: it is small and read once per open.
const INDEX_ZSTD_LEVEL: i32 = 9;

/// The file name of segment `seq`.
pub(crate) fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// Where one series' block lives in a segment.
#[derive(Debug, Clone)]
pub(crate) struct BlockMeta {
    pub key: SeriesKey,
    pub offset: u64,
    pub len: u32,
    pub count: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    pub crc: u32,
}

/// What a segment file says about itself in its footer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentInfo {
    /// The segment's sequence number; a larger number holds newer writes.
    pub seq: u64,
    /// First millisecond of the partition (inclusive).
    pub partition_start_ms: i64,
    /// End of the partition (exclusive).
    pub partition_end_ms: i64,
    /// File size in bytes.
    pub size_bytes: u64,
    /// BLAKE3 of every byte before the footer, hex.
    pub blake3: String,
    /// Number of series.
    pub series: u64,
    /// Number of samples.
    pub samples: u64,
}

fn ts_config() -> ChunkConfig {
    ChunkConfig::default().with_delta_spec(DeltaSpec::TryConsecutive(2))
}

fn encode_block(samples: &[Sample]) -> std::result::Result<Vec<u8>, pco::errors::PcoError> {
    let ts: Vec<i64> = samples.iter().map(|s| s.ts_ms).collect();
    let vals: Vec<f64> = samples.iter().map(|s| s.value).collect();
    let ts_bytes = pco::standalone::simple_compress(&ts, &ts_config())?;
    let val_bytes = pco::standalone::simple_compress(&vals, &ChunkConfig::default())?;
    let mut out = Vec::with_capacity(ts_bytes.len() + val_bytes.len() + 8);
    put_uvarint(&mut out, ts_bytes.len() as u64);
    out.extend_from_slice(&ts_bytes);
    out.extend_from_slice(&val_bytes);
    Ok(out)
}

fn decode_block(bytes: &[u8], count: usize) -> std::result::Result<Vec<Sample>, String> {
    let mut r = Reader::new(bytes);
    let ts_len = r.uvarint().ok_or("block header is truncated")? as usize;
    let ts_bytes = r.bytes(ts_len).ok_or("timestamp column is truncated")?;
    let val_bytes = r.rest();
    let ts: Vec<i64> = pco::standalone::simple_decompress(ts_bytes)
        .map_err(|e| format!("timestamp column does not decode: {e}"))?;
    let vals: Vec<f64> = pco::standalone::simple_decompress(val_bytes)
        .map_err(|e| format!("value column does not decode: {e}"))?;
    if ts.len() != count || vals.len() != count {
        return Err(format!(
            "block holds {} timestamps and {} values; the index says {count}",
            ts.len(),
            vals.len()
        ));
    }
    if ts.windows(2).any(|w| w[0] >= w[1]) {
        return Err("timestamps are not strictly increasing".into());
    }
    Ok(ts
        .into_iter()
        .zip(vals)
        .map(|(ts_ms, value)| Sample { ts_ms, value })
        .collect())
}

/// Appends to a file while hashing and counting every byte.
struct HashingWriter {
    out: std::io::BufWriter<File>,
    hasher: blake3::Hasher,
    pos: u64,
    path: PathBuf,
}

impl HashingWriter {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).ctx("write", &self.path)?;
        self.hasher.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// Writes a segment file for one partition from series given in ascending key order, each
/// one's samples strictly increasing in time and inside the partition (empty ones are
/// skipped). Memory stays bounded by one series and the index. The file is durable (fsynced,
/// renamed into place, directory fsynced) before this returns; on error no file is left.
pub(crate) fn write_segment(
    dir: &Path,
    seq: u64,
    partition: (i64, i64),
    series: impl IntoIterator<Item = Result<(SeriesKey, Vec<Sample>)>>,
) -> Result<SegmentInfo> {
    let path = dir.join(segment_file_name(seq));
    let tmp = path.with_extension("seg.tmp");
    let result = write_segment_file(&tmp, partition, series).and_then(
        |(size, hash, n_series, n_samples)| {
            fs::rename(&tmp, &path).ctx("rename", &tmp)?;
            sync_dir(dir)?;
            Ok(SegmentInfo {
                seq,
                partition_start_ms: partition.0,
                partition_end_ms: partition.1,
                size_bytes: size,
                blake3: hash,
                series: n_series,
                samples: n_samples,
            })
        },
    );
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_segment_file(
    tmp: &Path,
    partition: (i64, i64),
    series: impl IntoIterator<Item = Result<(SeriesKey, Vec<Sample>)>>,
) -> Result<(u64, String, u64, u64)> {
    let file = File::create(tmp).ctx("create", tmp)?;
    let mut w = HashingWriter {
        out: std::io::BufWriter::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
        pos: 0,
        path: tmp.to_owned(),
    };
    w.put(HEADER_MAGIC)?;
    let mut index = Vec::new();
    let mut n_series = 0u64;
    let mut n_samples = 0u64;
    let mut prev: Option<SeriesKey> = None;
    for item in series {
        let (key, samples) = item?;
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            continue;
        };
        // Pair assertions: the writer checks what the reader will check.
        assert!(
            prev.as_ref().is_none_or(|p| p < &key),
            "segment writer invariant: series in key order"
        );
        assert!(
            samples.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms),
            "segment writer invariant: samples of {key} are sorted and unique"
        );
        assert!(
            first.ts_ms >= partition.0 && last.ts_ms < partition.1,
            "segment writer invariant: samples of {key} lie inside the partition"
        );
        let block = encode_block(&samples).map_err(|e| Error::Corrupt {
            path: tmp.to_owned(),
            detail: format!("cannot encode block of {key}: {e}"),
        })?;
        put_uvarint(&mut index, key.as_str().len() as u64);
        index.extend_from_slice(key.as_str().as_bytes());
        put_uvarint(&mut index, w.pos);
        put_uvarint(&mut index, block.len() as u64);
        put_uvarint(&mut index, samples.len() as u64);
        put_ivarint(&mut index, first.ts_ms);
        put_ivarint(&mut index, last.ts_ms);
        index.extend_from_slice(&crc32c::crc32c(&block).to_le_bytes());
        w.put(&block)?;
        n_series += 1;
        n_samples += samples.len() as u64;
        prev = Some(key);
    }
    let index = zstd::bulk::compress(&index, INDEX_ZSTD_LEVEL).map_err(|e| Error::Io {
        op: "compress index of",
        path: tmp.to_owned(),
        source: e,
    })?;
    let index_offset = w.pos;
    w.put(&index)?;
    let hash = w.hasher.finalize();
    let mut footer = Vec::with_capacity(FOOTER_BYTES);
    footer.extend_from_slice(&partition.0.to_le_bytes());
    footer.extend_from_slice(&partition.1.to_le_bytes());
    footer.extend_from_slice(&index_offset.to_le_bytes());
    footer.extend_from_slice(&(index.len() as u64).to_le_bytes());
    footer.extend_from_slice(&crc32c::crc32c(&index).to_le_bytes());
    let n_series_u32 = u32::try_from(n_series).map_err(|_| {
        Error::Config(format!(
            "{n_series} series in one partition; the limit is 2^32"
        ))
    })?;
    footer.extend_from_slice(&n_series_u32.to_le_bytes());
    footer.extend_from_slice(&n_samples.to_le_bytes());
    footer.extend_from_slice(hash.as_bytes());
    let footer_crc = crc32c::crc32c(&footer);
    footer.extend_from_slice(&footer_crc.to_le_bytes());
    footer.extend_from_slice(FOOTER_MAGIC);
    debug_assert_eq!(footer.len(), FOOTER_BYTES);
    w.put(&footer)?;
    failpoint!("segment-write", "write", tmp);
    let file = w.out.into_inner().map_err(|e| Error::Io {
        op: "write",
        path: tmp.to_owned(),
        source: e.into_error(),
    })?;
    file.sync_all().ctx("fsync", tmp)?;
    Ok((w.pos, hash.to_hex().to_string(), n_series, n_samples))
}

/// An open, verified segment.
pub(crate) struct Segment {
    pub path: PathBuf,
    pub info: SegmentInfo,
    pub blocks: Vec<BlockMeta>,
    file: File,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish()
    }
}

impl Segment {
    /// Opens `path` and verifies every structural check and the whole-file hash. When the
    /// manifest names a size and hash, they must match too.
    pub(crate) fn open(path: &Path, seq: u64, expected: Option<&SegmentInfo>) -> Result<Self> {
        let corrupt = |detail: String| Error::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let bytes = fs::read(path).ctx("read", path)?;
        if bytes.len() < HEADER_MAGIC.len() + FOOTER_BYTES {
            return Err(corrupt(format!(
                "file is {} bytes, too short for a segment",
                bytes.len()
            )));
        }
        if &bytes[..HEADER_MAGIC.len()] != HEADER_MAGIC {
            return Err(corrupt("bad header magic: not a tsvault segment".into()));
        }
        let footer_start = bytes.len() - FOOTER_BYTES;
        let footer = &bytes[footer_start..];
        if &footer[FOOTER_BYTES - 8..] != FOOTER_MAGIC {
            return Err(corrupt(
                "bad footer magic: the file is truncated or damaged".into(),
            ));
        }
        let mut r = Reader::new(footer);
        let fields = (|| {
            Some((
                r.i64()?,
                r.i64()?,
                r.u64()?,
                r.u64()?,
                r.u32()?,
                r.u32()?,
                r.u64()?,
                r.bytes(32)?,
                r.u32()?,
            ))
        })()
        .ok_or_else(|| corrupt("footer is truncated".into()))?;
        let (
            p_start,
            p_end,
            index_offset,
            index_len,
            index_crc,
            n_series,
            n_samples,
            hash,
            footer_crc,
        ) = fields;
        if crc32c::crc32c(&footer[..FOOTER_BYTES - 12]) != footer_crc {
            return Err(corrupt("footer checksum mismatch".into()));
        }
        let actual_hash = blake3::hash(&bytes[..footer_start]);
        if actual_hash.as_bytes() != hash {
            return Err(corrupt(
                "file hash mismatch: some bytes were changed".into(),
            ));
        }
        let size = bytes.len() as u64;
        let info = SegmentInfo {
            seq,
            partition_start_ms: p_start,
            partition_end_ms: p_end,
            size_bytes: size,
            blake3: actual_hash.to_hex().to_string(),
            series: u64::from(n_series),
            samples: n_samples,
        };
        if let Some(exp) = expected
            && exp != &info
        {
            return Err(corrupt(format!(
                "file does not match the manifest (manifest: {} bytes, hash {}; file: {} bytes, hash {})",
                exp.size_bytes, exp.blake3, info.size_bytes, info.blake3
            )));
        }
        let index_end = index_offset
            .checked_add(index_len)
            .filter(|&e| e == footer_start as u64);
        if index_end.is_none() || index_len > SECTION_BYTES_MAX {
            return Err(corrupt("index position is out of bounds".into()));
        }
        let index = &bytes[index_offset as usize..footer_start];
        if crc32c::crc32c(index) != index_crc {
            return Err(corrupt("index checksum mismatch".into()));
        }
        let index = zstd::bulk::decompress(index, SECTION_BYTES_MAX as usize)
            .map_err(|e| corrupt(format!("index does not decompress: {e}")))?;
        let blocks = parse_index(&index, index_offset, n_series as usize)
            .map_err(|d| corrupt(format!("index: {d}")))?;
        if blocks.iter().map(|b| u64::from(b.count)).sum::<u64>() != n_samples {
            return Err(corrupt(
                "index sample counts disagree with the footer".into(),
            ));
        }
        if let Some(b) = blocks
            .iter()
            .find(|b| b.min_ts < p_start || b.max_ts >= p_end)
        {
            return Err(corrupt(format!(
                "block of {} lies outside the partition",
                b.key
            )));
        }
        let file = File::open(path).ctx("open", path)?;
        Ok(Segment {
            path: path.to_owned(),
            info,
            blocks,
            file,
        })
    }

    /// Reads and verifies block `i`; a checksum failure is an error naming the file.
    pub(crate) fn read_block(&self, i: usize) -> Result<Vec<Sample>> {
        let b = &self.blocks[i];
        let mut buf = vec![0u8; b.len as usize];
        self.file
            .read_exact_at(&mut buf, b.offset)
            .ctx("read", &self.path)?;
        let corrupt = |detail: String| Error::Corrupt {
            path: self.path.clone(),
            detail,
        };
        if crc32c::crc32c(&buf) != b.crc {
            return Err(corrupt(format!(
                "block of series {} at byte {}: checksum mismatch",
                b.key, b.offset
            )));
        }
        let samples = decode_block(&buf, b.count as usize).map_err(|d| {
            corrupt(format!(
                "block of series {} at byte {}: {d}",
                b.key, b.offset
            ))
        })?;
        if samples.first().map(|s| s.ts_ms) != Some(b.min_ts)
            || samples.last().map(|s| s.ts_ms) != Some(b.max_ts)
        {
            return Err(corrupt(format!(
                "block of series {}: time range disagrees with the index",
                b.key
            )));
        }
        Ok(samples)
    }
}

fn parse_index(
    index: &[u8],
    body_end: u64,
    n_series: usize,
) -> std::result::Result<Vec<BlockMeta>, String> {
    let mut r = Reader::new(index);
    let mut blocks = Vec::with_capacity(n_series.min(1 << 20));
    let mut prev: Option<SeriesKey> = None;
    for i in 0..n_series {
        let short = || format!("entry {i} is truncated");
        let key_len = r.uvarint().ok_or_else(short)? as usize;
        let key = std::str::from_utf8(r.bytes(key_len).ok_or_else(short)?)
            .map_err(|_| format!("entry {i}: series key is not UTF-8"))?;
        let key = SeriesKey::from_canonical(key).map_err(|e| format!("entry {i}: {e}"))?;
        let offset = r.uvarint().ok_or_else(short)?;
        let len = u32::try_from(r.uvarint().ok_or_else(short)?).map_err(|_| short())?;
        let count = u32::try_from(r.uvarint().ok_or_else(short)?).map_err(|_| short())?;
        let min_ts = r.ivarint().ok_or_else(short)?;
        let max_ts = r.ivarint().ok_or_else(short)?;
        let crc = r.u32().ok_or_else(short)?;
        if offset < HEADER_MAGIC.len() as u64
            || offset
                .checked_add(u64::from(len))
                .is_none_or(|end| end > body_end)
            || count == 0
            || min_ts > max_ts
        {
            return Err(format!("entry {i} ({key}) points outside the data section"));
        }
        if prev.as_ref().is_some_and(|p| p >= &key) {
            return Err(format!("entry {i} ({key}) is out of order"));
        }
        prev = Some(key.clone());
        blocks.push(BlockMeta {
            key,
            offset,
            len,
            count,
            min_ts,
            max_ts,
            crc,
        });
    }
    if !r.is_empty() {
        return Err("trailing bytes after the last entry".into());
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize) -> Vec<(SeriesKey, Vec<Sample>)> {
        let mut out: Vec<_> = (0..n)
            .map(|i| {
                let key = SeriesKey::new("cpu", &[("host", format!("h{i}"))]).unwrap();
                let samples = (0..720)
                    .map(|j| Sample {
                        ts_ms: 7_200_000 + j * 10_000,
                        value: ((i as i64 * 7 + j) % 100) as f64,
                    })
                    .collect();
                (key, samples)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn round_trip_and_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let data = series(20);
        let info = write_segment(
            dir.path(),
            7,
            (7_200_000, 14_400_000),
            data.clone().into_iter().map(Ok),
        )
        .unwrap();
        assert_eq!(info.samples, 20 * 720);
        let path = dir.path().join(segment_file_name(7));
        let seg = Segment::open(&path, 7, Some(&info)).unwrap();
        for (i, (key, samples)) in data.iter().enumerate() {
            assert_eq!(&seg.blocks[i].key, key);
            assert_eq!(&seg.read_block(i).unwrap(), samples);
        }
        // Every single flipped byte is detected when the file is opened.
        let good = fs::read(&path).unwrap();
        for pos in (0..good.len()).step_by(97).chain([good.len() - 1]) {
            let mut bad = good.clone();
            bad[pos] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            let err = Segment::open(&path, 7, None).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "byte {pos}: {err}");
        }
        // A byte flipped after opening is caught by the block checksum on read.
        fs::write(&path, &good).unwrap();
        let seg = Segment::open(&path, 7, Some(&info)).unwrap();
        let mut bad = good.clone();
        bad[seg.blocks[3].offset as usize + 2] ^= 0x10;
        fs::write(&path, &bad).unwrap();
        let err = seg.read_block(3).unwrap_err().to_string();
        assert!(
            err.contains("checksum mismatch") && err.contains(&segment_file_name(7)),
            "{err}"
        );
    }

    #[test]
    fn special_values_survive() {
        let dir = tempfile::tempdir().unwrap();
        let key = SeriesKey::new::<&str, &str>("m", &[]).unwrap();
        let vals = [
            0.0,
            -0.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            1e-300,
            -123.456,
            5e15,
            0.1,
        ];
        let samples: Vec<Sample> = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| Sample {
                ts_ms: i as i64 * 3 - 5,
                value: v,
            })
            .collect();
        write_segment(dir.path(), 1, (-100, 100), [Ok((key, samples.clone()))]).unwrap();
        let seg = Segment::open(&dir.path().join(segment_file_name(1)), 1, None).unwrap();
        let back = seg.read_block(0).unwrap();
        for (a, b) in back.iter().zip(&samples) {
            assert_eq!(a.ts_ms, b.ts_ms);
            assert_eq!(a.value.to_bits(), b.value.to_bits());
        }
    }
}
