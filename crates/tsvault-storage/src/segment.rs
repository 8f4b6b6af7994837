//! Immutable segment files: one time partition, columnar per series (see FORMAT.md).
//!
//! A block holds one series' samples in the partition: timestamps at a constant step as first
//! and step, others by pco with delta-of-delta; values that are decimals as scaled integers by
//! pco, others by pco's float modes. The index of blocks is zstd-compressed. Every block has a CRC32C,
//! checked on every read; the index has a CRC32C, checked before the segment is first read;
//! the whole file has a BLAKE3 hash, checked after each start in the background (a start
//! checks only the size and footer: see [`Segment`]).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use pco::{ChunkConfig, DeltaSpec};
use tsvault_model::{Sample, SeriesKey};

use crate::bytes::{Reader, put_ivarint, put_uvarint, zstd_decompress};
use crate::error::{Error, IoContext, Result, failpoint};
use crate::fsutil::{self, sync_dir};
use crate::open_files;

/// The header of the format written; format 1 (same layout, older block encoding) is read.
const HEADER_MAGIC: &[u8; 8] = b"TSVSEG\x00\x02";
const HEADER_MAGIC_V1: &[u8; 8] = b"TSVSEG\x00\x01";
const FOOTER_MAGIC: &[u8; 8] = b"TSVSEGND";
/// partition start/end, index offset/len, index crc, series count, sample count, file hash,
/// footer crc, magic.
pub(crate) const FOOTER_BYTES: usize = 8 + 8 + 8 + 8 + 4 + 4 + 8 + 32 + 4 + 8;
/// The largest compressed index or block a reader accepts.
const SECTION_BYTES_MAX: u64 = 1 << 30;
/// zstd level for the index: it is small and read once per open.
const INDEX_ZSTD_LEVEL: i32 = 9;

/// The file name of segment `seq`.
pub(crate) fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// Where one series' block lives in a segment, as its index says: its key as `K`.
#[derive(Debug, Clone, Copy)]
pub struct Block<K> {
    pub key: K,
    pub offset: u64,
    pub len: u32,
    /// Samples in the block.
    pub count: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    /// The block's CRC32C.
    pub crc: u32,
}

/// A block of a segment, with its series' key.
pub(crate) type BlockMeta = Block<SeriesKey>;

/// A block of an open segment as its cached index holds it: without its key, which the
/// series registry holds once for every segment (the cached index of a segment of a
/// million series is 40 MB rather than several hundred).
pub(crate) type BlockLoc = Block<()>;

/// An entry of a segment's index as it is walked: its key borrowed from the decompressed
/// index, UTF-8 (its canonical form is checked by [`parse_index`] only).
pub type IndexEntry<'a> = Block<&'a str>;

impl<K> Block<K> {
    /// The same block under key `key`.
    fn with_key<L>(self, key: L) -> Block<L> {
        Block {
            key,
            offset: self.offset,
            len: self.len,
            count: self.count,
            min_ts: self.min_ts,
            max_ts: self.max_ts,
            crc: self.crc,
        }
    }
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

/// Timestamp column encodings (format 2).
const TS_PCO: u8 = 0;
const TS_REGULAR: u8 = 1;
/// Value column encodings (format 2).
const VALUES_PCO_F64: u8 = 0;
const VALUES_DECIMAL: u8 = 1;
/// The most decimal places a value column is scaled by before being stored as integers.
const DECIMAL_PLACES_MAX: u8 = 9;

/// `values` as integers scaled by `10^places`, for the fewest places (up to
/// [`DECIMAL_PLACES_MAX`]) at which every value round-trips bit for bit; `None` when no such
/// scale exists (NaN, infinities, -0.0, more places, or magnitudes past 2^53).
fn as_decimal(values: &[f64]) -> Option<(u8, Vec<i64>)> {
    const EXACT_MAX: f64 = 9_007_199_254_740_992.0; // 2^53
    'places: for places in 0..=DECIMAL_PLACES_MAX {
        let scale = 10f64.powi(i32::from(places));
        let mut out = Vec::with_capacity(values.len());
        for &v in values {
            let x = (v * scale).round();
            // NaN and infinities fail here too.
            if x.is_nan() || x.abs() >= EXACT_MAX {
                continue 'places;
            }
            // Exactly what decoding computes, so that -0.0 (stored as 0) is refused.
            let n = x as i64;
            if (n as f64 / scale).to_bits() != v.to_bits() {
                continue 'places;
            }
            out.push(n);
        }
        return Some((places, out));
    }
    None
}

/// Format 2: each column starts with its encoding byte. Timestamps at a constant step are
/// stored as first and step; others as a pco chunk with delta-of-delta. Values that are all
/// decimals with at most [`DECIMAL_PLACES_MAX`] places are stored as scaled integers in a pco
/// chunk (smaller and faster to decode than pco's float modes); others as a pco f64 chunk.
fn encode_block(samples: &[Sample]) -> std::result::Result<Vec<u8>, pco::errors::PcoError> {
    let ts: Vec<i64> = samples.iter().map(|s| s.ts_ms).collect();
    let vals: Vec<f64> = samples.iter().map(|s| s.value).collect();
    let mut out = Vec::new();
    let step = ts.get(1).map_or(0, |t| t - ts[0]);
    if !ts.is_empty() && ts.windows(2).all(|w| w[1] - w[0] == step) {
        out.push(TS_REGULAR);
        put_ivarint(&mut out, ts[0]);
        put_uvarint(&mut out, step as u64);
    } else {
        let ts_bytes = pco::standalone::simple_compress(&ts, &ts_config())?;
        out.push(TS_PCO);
        put_uvarint(&mut out, ts_bytes.len() as u64);
        out.extend_from_slice(&ts_bytes);
    }
    match as_decimal(&vals) {
        Some((places, ints)) => {
            out.push(VALUES_DECIMAL);
            out.push(places);
            out.extend_from_slice(&pco::standalone::simple_compress(
                &ints,
                &ChunkConfig::default(),
            )?);
        }
        None => {
            out.push(VALUES_PCO_F64);
            out.extend_from_slice(&pco::standalone::simple_compress(
                &vals,
                &ChunkConfig::default(),
            )?);
        }
    }
    Ok(out)
}

/// Decodes a block of segment format `version` holding `count` samples.
pub(crate) fn decode_block(
    version: u8,
    bytes: &[u8],
    count: usize,
) -> std::result::Result<Vec<Sample>, String> {
    let (ts, vals) = decode_columns(version, bytes, count)?;
    Ok((0..count)
        .map(|i| Sample {
            ts_ms: ts.get(i),
            value: vals[i],
        })
        .collect())
}

/// A decoded timestamp column, strictly increasing.
enum Timestamps {
    /// `first + i × step` for `i` in `0..count` (step > 0 when count > 1; checked not to
    /// overflow).
    Regular {
        first: i64,
        step: i64,
        count: usize,
    },
    Explicit(Vec<i64>),
}

impl Timestamps {
    fn len(&self) -> usize {
        match self {
            Timestamps::Regular { count, .. } => *count,
            Timestamps::Explicit(ts) => ts.len(),
        }
    }

    fn get(&self, i: usize) -> i64 {
        match self {
            Timestamps::Regular { first, step, .. } => first + i as i64 * step,
            Timestamps::Explicit(ts) => ts[i],
        }
    }

    /// The index of the first timestamp at or after `t` (`len()` when none is).
    fn lower_bound(&self, t: i64) -> usize {
        match *self {
            Timestamps::Regular { first, step, count } => {
                if t <= first {
                    0
                } else if step == 0 {
                    count
                } else {
                    let n = (i128::from(t) - i128::from(first) + i128::from(step) - 1)
                        / i128::from(step);
                    usize::try_from(n).map_or(count, |n| n.min(count))
                }
            }
            Timestamps::Explicit(ref ts) => ts.partition_point(|&x| x < t),
        }
    }

    /// The index of the first timestamp after `t` (`len()` when none is).
    fn upper_bound(&self, t: i64) -> usize {
        match *self {
            Timestamps::Regular { first, step, count } => {
                if t < first {
                    0
                } else if step == 0 {
                    count
                } else {
                    let n = (i128::from(t) - i128::from(first)) / i128::from(step) + 1;
                    usize::try_from(n).map_or(count, |n| n.min(count))
                }
            }
            Timestamps::Explicit(ref ts) => ts.partition_point(|&x| x <= t),
        }
    }
}

/// The timestamp and value columns of a block of segment format `version` holding `count`
/// samples, checked: both of that length, timestamps strictly increasing.
fn decode_columns(
    version: u8,
    bytes: &[u8],
    count: usize,
) -> std::result::Result<(Timestamps, Vec<f64>), String> {
    let mut r = Reader::new(bytes);
    let (ts, vals) = if version == 1 {
        let ts_len = r.uvarint().ok_or("block header is truncated")? as usize;
        let ts_bytes = r.bytes(ts_len).ok_or("timestamp column is truncated")?;
        (
            Timestamps::Explicit(decode_pco(ts_bytes, "timestamp", count)?),
            decode_pco(r.rest(), "value", count)?,
        )
    } else {
        let ts = match r.u8().ok_or("block header is truncated")? {
            TS_REGULAR => {
                let first = r.ivarint().ok_or("timestamp column is truncated")?;
                let step = r.uvarint().ok_or("timestamp column is truncated")?;
                let step = i64::try_from(step).map_err(|_| "timestamp step out of range")?;
                if count > 1 && step == 0 {
                    return Err("timestamps are not strictly increasing".into());
                }
                let span = i64::try_from(count.saturating_sub(1))
                    .ok()
                    .and_then(|n| n.checked_mul(step))
                    .and_then(|d| first.checked_add(d));
                if span.is_none() {
                    return Err("timestamps overflow".into());
                }
                Timestamps::Regular { first, step, count }
            }
            TS_PCO => {
                let len = r.uvarint().ok_or("timestamp column is truncated")? as usize;
                Timestamps::Explicit(decode_pco(
                    r.bytes(len).ok_or("timestamp column is truncated")?,
                    "timestamp",
                    count,
                )?)
            }
            other => return Err(format!("unknown timestamp encoding {other}")),
        };
        let vals = match r.u8().ok_or("value column is truncated")? {
            VALUES_DECIMAL => {
                let places = r.u8().ok_or("value column is truncated")?;
                if places > DECIMAL_PLACES_MAX {
                    return Err(format!("value column scaled by 10^{places}"));
                }
                let ints: Vec<i64> = decode_pco(r.rest(), "value", count)?;
                if places == 0 {
                    ints.into_iter().map(|x| x as f64).collect()
                } else {
                    let scale = 10f64.powi(i32::from(places));
                    ints.into_iter().map(|x| x as f64 / scale).collect()
                }
            }
            VALUES_PCO_F64 => decode_pco(r.rest(), "value", count)?,
            other => return Err(format!("unknown value encoding {other}")),
        };
        (ts, vals)
    };
    if ts.len() != count || vals.len() != count {
        return Err(format!(
            "block holds {} timestamps and {} values; the index says {count}",
            ts.len(),
            vals.len()
        ));
    }
    if let Timestamps::Explicit(ts) = &ts
        && ts.windows(2).any(|w| w[0] >= w[1])
    {
        return Err("timestamps are not strictly increasing".into());
    }
    Ok((ts, vals))
}

/// Decodes a pco column that must hold exactly `count` values. Memory is bounded by
/// `count` (checked against the block's time range when the index is read), never by what
/// the column's own header claims: a crafted header could otherwise ask for any allocation.
fn decode_pco<T: pco::data_types::Number>(
    bytes: &[u8],
    column: &str,
    count: usize,
) -> std::result::Result<Vec<T>, String> {
    let bad = |e: pco::errors::PcoError| format!("{column} column does not decode: {e}");
    let short = || format!("{column} column does not hold the {count} values the index gives");
    let mut out = vec![T::default(); count];
    // The standalone format, chunk by chunk through pco's lower-level API, so that each
    // chunk's description is checked before pco sizes its buffers from it: a crafted
    // lookback window (2^32 entries) made it ask for 64 GiB (found by fuzzing).
    let (file, mut src) = pco::standalone::FileDecompressor::new(bytes).map_err(bad)?;
    let version = file.format_version();
    let header = if version.major >= 4 {
        vec![version.major, version.minor]
    } else {
        vec![version.major]
    };
    let (chunks, _) = pco::wrapped::FileDecompressor::new(header.as_slice()).map_err(bad)?;
    let mut done = 0;
    // Chunks: each its number type, its count less one (24 bits, LE), its description and
    // its one page; a 0 byte ends the stream.
    while src.first() != Some(&0) {
        let [kind, n0, n1, n2, rest @ ..] = src else {
            return Err(short());
        };
        if *kind != T::NUMBER_TYPE_BYTE {
            return Err(format!("{column} column holds numbers of another type"));
        }
        let n = 1 + (usize::from(*n0) | usize::from(*n1) << 8 | usize::from(*n2) << 16);
        if n > count - done {
            return Err(short());
        }
        let (chunk, page) = chunks.chunk_decompressor::<T, &[u8]>(rest).map_err(bad)?;
        // pco's encoder never picks a window over 2^15 (its LOOKBACK_MAX_WINDOW_N_LOG).
        if let pco::metadata::DeltaEncoding::Lookback(l) = &chunk.meta().delta_encoding
            && l.window_n_log > 15
        {
            return Err(format!(
                "{column} column claims a lookback window of 2^{} for {n} values",
                l.window_n_log
            ));
        }
        let mut pages = chunk.page_decompressor(page, n).map_err(bad)?;
        let progress = pages.decompress(&mut out[done..done + n]).map_err(bad)?;
        if progress.n_processed != n || !progress.finished {
            return Err(short());
        }
        done += n;
        src = pages.into_src();
    }
    if done == count { Ok(out) } else { Err(short()) }
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
            fsutil::rename(&tmp, &path)?;
            // No manifest names the file yet: if its directory's fsync fails, it goes (the
            // failed fsync itself poisons the store, see `Error::is_disk_full`).
            failpoint!("segment-dir-fsync", "fsync", dir);
            if let Err(e) = sync_dir(dir) {
                let _ = fsutil::remove_file(&path);
                return Err(e);
            }
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
    if result.is_err() && tmp.exists() {
        let _ = fsutil::remove_file(&tmp);
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
    fsutil::fsync(&file, tmp, false)?;
    Ok((w.pos, hash.to_hex().to_string(), n_series, n_samples))
}

/// What [`Segment::parse`] found in a segment's bytes.
pub(crate) struct ParsedSegment {
    pub info: SegmentInfo,
    pub blocks: Vec<BlockMeta>,
    pub version: u8,
    /// BLAKE3 of the whole file (footer included), hex.
    pub file_blake3: String,
}

/// A segment's index: known once it was read and checked (its CRC, bounds and order).
pub(crate) struct Contents {
    pub blocks: Vec<BlockLoc>,
    /// The segment format (1 or 2), which decides the block encoding.
    version: u8,
}

/// A live segment. Opened two ways: verified whole now ([`Segment::open`]: every byte read,
/// the BLAKE3 and the index checked), or from its footer alone ([`Segment::open_footer`]:
/// a start that does not grow with the data). Then its index is read and checked on first
/// use ([`Segment::contents`]), and the whole file's BLAKE3 by the verification that follows
/// a start or when a snapshot needs it ([`Segment::verify_whole`]). Every block read checks
/// its CRC32C. Once any check fails, nothing more is read from the file.
pub(crate) struct Segment {
    pub path: PathBuf,
    pub info: SegmentInfo,
    footer: Footer,
    contents: OnceLock<Contents>,
    /// BLAKE3 of the whole file (footer included), hex, once verified: how a snapshot names
    /// its bytes.
    file_blake3: OnceLock<String>,
    /// What a check found damaged: the file is not read again (every later read is this
    /// error).
    damaged: OnceLock<String>,
    /// Held while the index is read, and while the whole file is hashed.
    loading: Mutex<()>,
    hashing: Mutex<()>,
    /// Its key in the open files (unique in the process: a path can be used again).
    id: u64,
    /// No manifest names the file any more: it is removed when the last reader is done
    /// (a read in flight may still need to open it).
    obsolete: AtomicBool,
}

impl Drop for Segment {
    fn drop(&mut self) {
        open_files::forget(self.id);
        if self.obsolete.load(Ordering::Acquire)
            && let Err(e) = fsutil::remove_file(&self.path)
        {
            // A start removes every segment file no manifest names.
            tracing::warn!(error = %e, "could not remove a segment no longer in use; the next start removes it");
        }
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish()
    }
}

/// Bytes read at a time while a whole file is hashed.
const HASH_CHUNK_BYTES: usize = 1 << 20;

impl Segment {
    /// Opens `path` and verifies every structural check and the whole-file hash. When the
    /// manifest names a size and hash, they must match too.
    pub(crate) fn open(path: &Path, seq: u64, expected: Option<&SegmentInfo>) -> Result<Self> {
        let bytes = fs::read(path).ctx("read", path)?;
        let parsed = Self::parse(path, &bytes, seq, expected)?;
        let footer = parse_footer(&bytes[bytes.len() - FOOTER_BYTES..])
            .expect("segment invariant: a parsed segment has a valid footer");
        let seg = Self::unread(path, parsed.info, footer);
        let _ = seg.contents.set(Contents {
            blocks: parsed.blocks.into_iter().map(|b| b.with_key(())).collect(),
            version: parsed.version,
        });
        let _ = seg.file_blake3.set(parsed.file_blake3);
        Ok(seg)
    }

    /// Opens the segment the manifest describes as `info` and verifies it whole, as
    /// [`Segment::open`] does, reading the file a piece at a time rather than whole (a
    /// compaction's segment may be gigabytes).
    /// Returns its blocks with their keys too, from the one read of its index.
    pub(crate) fn open_verified(path: &Path, info: &SegmentInfo) -> Result<(Self, Vec<BlockMeta>)> {
        let seg = Self::open_footer(path, info)?;
        seg.verify_whole()?;
        let (keyed, version) = seg.read_keyed()?;
        let _ = seg.contents.set(Contents {
            blocks: keyed.iter().map(|b| b.clone().with_key(())).collect(),
            version,
        });
        Ok((seg, keyed))
    }

    /// Opens the segment the manifest describes as `info` from its size and footer alone:
    /// a file of another size, or whose footer is damaged or names another partition,
    /// count or hash, is refused now; the rest is checked later (see [`Segment`]).
    pub(crate) fn open_footer(path: &Path, info: &SegmentInfo) -> Result<Self> {
        let corrupt = |detail: String| Error::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let file = File::open(path).ctx("open", path)?;
        let size = file.metadata().ctx("stat", path)?.len();
        if size != info.size_bytes {
            return Err(corrupt(format!(
                "file does not match the manifest (manifest: {} bytes; file: {size} bytes)",
                info.size_bytes
            )));
        }
        if size < (HEADER_MAGIC.len() + FOOTER_BYTES) as u64 {
            return Err(corrupt(format!(
                "file is {size} bytes, too short for a segment"
            )));
        }
        let mut footer = [0u8; FOOTER_BYTES];
        file.read_exact_at(&mut footer, size - FOOTER_BYTES as u64)
            .ctx("read", path)?;
        let f = parse_footer(&footer).map_err(corrupt)?;
        let found = SegmentInfo {
            seq: info.seq,
            partition_start_ms: f.partition.0,
            partition_end_ms: f.partition.1,
            size_bytes: size,
            blake3: blake3::Hash::from_bytes(f.hash).to_hex().to_string(),
            series: u64::from(f.n_series),
            samples: f.n_samples,
        };
        if &found != info {
            return Err(corrupt(format!(
                "footer does not match the manifest (manifest: partition {}..{} ms, {} series, {} samples, hash {}; footer: partition {}..{} ms, {} series, {} samples, hash {})",
                info.partition_start_ms,
                info.partition_end_ms,
                info.series,
                info.samples,
                info.blake3,
                found.partition_start_ms,
                found.partition_end_ms,
                found.series,
                found.samples,
                found.blake3
            )));
        }
        f.check_index_position(size).map_err(corrupt)?;
        Ok(Self::unread(path, found, f))
    }

    fn unread(path: &Path, info: SegmentInfo, footer: Footer) -> Self {
        Segment {
            path: path.to_owned(),
            info,
            footer,
            contents: OnceLock::new(),
            file_blake3: OnceLock::new(),
            damaged: OnceLock::new(),
            loading: Mutex::new(()),
            hashing: Mutex::new(()),
            id: open_files::next_id(),
            obsolete: AtomicBool::new(false),
        }
    }

    /// The error of a file found damaged, if it was.
    fn refuse_if_damaged(&self) -> Result<()> {
        match self.damaged.get() {
            Some(detail) => Err(Error::Corrupt {
                path: self.path.clone(),
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Keeps `r`'s damage, if any: the file is not read again.
    fn note_damage<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(Error::Corrupt { detail, .. }) = &r {
            let _ = self.damaged.set(detail.clone());
        }
        r
    }

    /// The segment's index, read and checked on first use (its header, its CRC, every
    /// entry's bounds and order, the counts and the partition against the footer). A damaged
    /// file is an `Error::Corrupt` naming it, now and on every later call.
    pub(crate) fn contents(&self) -> Result<&Contents> {
        self.once_checked(&self.contents, &self.loading, || self.read_index())
    }

    /// What `cell` holds, or what `check` gives, found once (under `lock`): a failure is
    /// not kept, unless it is damage, which every later call returns.
    fn once_checked<'a, T>(
        &self,
        cell: &'a OnceLock<T>,
        lock: &Mutex<()>,
        check: impl FnOnce() -> Result<T>,
    ) -> Result<&'a T> {
        self.refuse_if_damaged()?;
        if let Some(c) = cell.get() {
            return Ok(c);
        }
        let _checking = lock.lock();
        self.refuse_if_damaged()?;
        if let Some(c) = cell.get() {
            return Ok(c);
        }
        let found = self.note_damage(check())?;
        Ok(cell.get_or_init(|| found))
    }

    fn read_index(&self) -> Result<Contents> {
        let mut blocks = Vec::with_capacity((self.footer.n_series as usize).min(1 << 20));
        let version = self.walk_index(|i, e| {
            // The key is checked here too, though not kept.
            blocks.push(BlockMeta::of(i, e)?.with_key(()));
            Ok(())
        })?;
        Ok(Contents { blocks, version })
    }

    /// The blocks of the segment's index with their keys, in key order, read from the file
    /// now (the cached index keeps no keys): for what needs them once (registering a
    /// segment's series, a compaction, a check).
    pub(crate) fn keyed_blocks(&self) -> Result<Vec<BlockMeta>> {
        self.read_keyed().map(|(blocks, _)| blocks)
    }

    /// [`Segment::keyed_blocks`], and the segment format.
    fn read_keyed(&self) -> Result<(Vec<BlockMeta>, u8)> {
        self.refuse_if_damaged()?;
        let mut blocks = Vec::with_capacity((self.footer.n_series as usize).min(1 << 20));
        let r = self.walk_index(|i, e| {
            blocks.push(BlockMeta::of(i, e)?);
            Ok(())
        });
        let version = self.note_damage(r)?;
        Ok((blocks, version))
    }

    /// Reads the index and checks it whole (header, CRC, every entry), calling `visit` with
    /// each entry; returns the segment format.
    fn walk_index(
        &self,
        visit: impl FnMut(usize, IndexEntry<'_>) -> std::result::Result<(), String>,
    ) -> Result<u8> {
        failpoint!("segment-read", "read", self.path);
        let file = self.file()?;
        let mut magic = [0u8; HEADER_MAGIC.len()];
        file.read_exact_at(&mut magic, 0).ctx("read", &self.path)?;
        let corrupt = |detail: String| Error::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let version = format_of(&magic).map_err(corrupt)?;
        let mut index = vec![0u8; self.footer.index_len as usize];
        file.read_exact_at(&mut index, self.footer.index_offset)
            .ctx("read", &self.path)?;
        check_index(&index, &self.footer, visit).map_err(corrupt)?;
        Ok(version)
    }

    /// The key of block `i`'s series, for an error message (its number when the index
    /// cannot be read again).
    fn series_of(&self, i: usize) -> String {
        let mut key = None;
        let _ = self.walk_index(|j, e| {
            if j == i {
                key = Some(e.key.to_string());
            }
            Ok(())
        });
        key.unwrap_or_else(|| format!("number {i} of the index"))
    }

    /// Hashes the whole file (BLAKE3) against its footer once, and returns the hash of all
    /// its bytes (footer included, hex), as a snapshot names it. A mismatch is an
    /// `Error::Corrupt` naming the file, now and on every later read of it.
    pub(crate) fn verify_whole(&self) -> Result<&str> {
        self.once_checked(&self.file_blake3, &self.hashing, || self.hash_file())
            .map(String::as_str)
    }

    fn hash_file(&self) -> Result<String> {
        failpoint!("segment-read", "read", self.path);
        let file = self.file()?;
        let body_len = self.info.size_bytes - FOOTER_BYTES as u64;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; HASH_CHUNK_BYTES];
        let mut pos = 0u64;
        while pos < body_len {
            let n = (body_len - pos).min(HASH_CHUNK_BYTES as u64) as usize;
            file.read_exact_at(&mut buf[..n], pos)
                .ctx("read", &self.path)?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        if hasher.finalize().as_bytes() != &self.footer.hash {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                detail: "file hash mismatch: some bytes were changed".into(),
            });
        }
        let mut footer = [0u8; FOOTER_BYTES];
        file.read_exact_at(&mut footer, body_len)
            .ctx("read", &self.path)?;
        // The footer was checked at open; bytes changed since are damage too.
        if parse_footer(&footer).ok().as_ref() != Some(&self.footer) {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                detail: "footer changed since the segment was opened".into(),
            });
        }
        Ok(hasher.update(&footer).finalize().to_hex().to_string())
    }

    /// The blocks of the segment's index, in key order (see [`Segment::contents`]).
    pub(crate) fn blocks(&self) -> Result<&[BlockLoc]> {
        Ok(&self.contents()?.blocks)
    }

    /// Whether the whole file was hashed and found as written.
    pub(crate) fn is_verified(&self) -> bool {
        self.file_blake3.get().is_some()
    }

    /// Marks the file for removal once no reader holds this segment.
    pub(crate) fn remove_when_unused(&self) {
        self.obsolete.store(true, Ordering::Release);
    }

    /// The open file, from the process's open segment files or opened now.
    fn file(&self) -> Result<Arc<File>> {
        open_files::get_or_open(self.id, &self.path)
    }

    /// Verifies and parses the bytes of a segment file (`path` names it in errors): its
    /// header, footer, whole-file hash and index.
    pub(crate) fn parse(
        path: &Path,
        bytes: &[u8],
        seq: u64,
        expected: Option<&SegmentInfo>,
    ) -> Result<ParsedSegment> {
        let mut blocks = Vec::new();
        let (info, file_blake3, version) = Self::parse_with(path, bytes, seq, expected, |i, e| {
            blocks.push(BlockMeta::of(i, e)?);
            Ok(())
        })?;
        Ok(ParsedSegment {
            info,
            blocks,
            version,
            file_blake3,
        })
    }

    /// Checks the segment in `bytes` whole (its footer, its BLAKE3, its index's CRC) and
    /// walks its index (see [`walk_index`]), calling `visit` with each entry. Returns what
    /// the footer says, the BLAKE3 of the whole file (hex) and the format.
    pub(crate) fn parse_with(
        path: &Path,
        bytes: &[u8],
        seq: u64,
        expected: Option<&SegmentInfo>,
        visit: impl FnMut(usize, IndexEntry<'_>) -> std::result::Result<(), String>,
    ) -> Result<(SegmentInfo, String, u8)> {
        let corrupt = |detail: String| Error::Corrupt {
            path: path.to_owned(),
            detail,
        };
        if bytes.len() < HEADER_MAGIC.len() + FOOTER_BYTES {
            return Err(corrupt(format!(
                "file is {} bytes, too short for a segment",
                bytes.len()
            )));
        }
        let version = format_of(&bytes[..HEADER_MAGIC.len()]).map_err(corrupt)?;
        let footer_start = bytes.len() - FOOTER_BYTES;
        let footer_bytes = &bytes[footer_start..];
        let footer = parse_footer(footer_bytes).map_err(corrupt)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&bytes[..footer_start]);
        let actual_hash = hasher.finalize();
        let file_blake3 = hasher.update(footer_bytes).finalize().to_hex().to_string();
        if actual_hash.as_bytes() != &footer.hash {
            return Err(corrupt(
                "file hash mismatch: some bytes were changed".into(),
            ));
        }
        let info = SegmentInfo {
            seq,
            partition_start_ms: footer.partition.0,
            partition_end_ms: footer.partition.1,
            size_bytes: bytes.len() as u64,
            blake3: actual_hash.to_hex().to_string(),
            series: u64::from(footer.n_series),
            samples: footer.n_samples,
        };
        if let Some(exp) = expected
            && exp != &info
        {
            return Err(corrupt(format!(
                "file does not match the manifest (manifest: {} bytes, hash {}; file: {} bytes, hash {})",
                exp.size_bytes, exp.blake3, info.size_bytes, info.blake3
            )));
        }
        footer
            .check_index_position(bytes.len() as u64)
            .map_err(corrupt)?;
        check_index(
            &bytes[footer.index_offset as usize..footer_start],
            &footer,
            visit,
        )
        .map_err(corrupt)?;
        Ok((info, file_blake3, version))
    }

    /// The segment format (1 or 2).
    pub(crate) fn version(&self) -> Result<u8> {
        Ok(self.contents()?.version)
    }

    /// Reads and verifies block `i`; a checksum failure is an error naming the file.
    #[cfg(test)]
    fn read_block(&self, i: usize) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        self.read_block_into(i, i64::MIN, i64::MAX, &mut out)?;
        Ok(out)
    }

    /// Reads and verifies block `i` and appends its samples within `[start_ms, end_ms]` to
    /// `out`; a checksum failure or a block that disagrees with the index is an error naming
    /// the file.
    pub(crate) fn read_block_into(
        &self,
        i: usize,
        start_ms: i64,
        end_ms: i64,
        out: &mut Vec<Sample>,
    ) -> Result<()> {
        let r = self.read_block_checked(i, start_ms, end_ms, out);
        self.note_damage(r)
    }

    fn read_block_checked(
        &self,
        i: usize,
        start_ms: i64,
        end_ms: i64,
        out: &mut Vec<Sample>,
    ) -> Result<()> {
        let contents = self.contents()?;
        let b = &contents.blocks[i];
        let mut buf = vec![0u8; b.len as usize];
        failpoint!("segment-read", "read", self.path);
        self.file()?
            .read_exact_at(&mut buf, b.offset)
            .ctx("read", &self.path)?;
        // The damaged block's series, named from the index read again (the cached one keeps
        // no keys).
        let corrupt = |what: String| Error::Corrupt {
            path: self.path.clone(),
            detail: format!("block of series {} {what}", self.series_of(i)),
        };
        if crc32c::crc32c(&buf) != b.crc {
            return Err(corrupt(format!("at byte {}: checksum mismatch", b.offset)));
        }
        let (ts, vals) = decode_columns(contents.version, &buf, b.count as usize)
            .map_err(|d| corrupt(format!("at byte {}: {d}", b.offset)))?;
        let n = ts.len();
        if n == 0 || ts.get(0) != b.min_ts || ts.get(n - 1) != b.max_ts {
            return Err(corrupt(
                "has a time range that disagrees with the index".into(),
            ));
        }
        let from = ts.lower_bound(start_ms);
        let to = ts.upper_bound(end_ms);
        if from < to {
            match &ts {
                Timestamps::Regular { first, step, .. } => {
                    out.extend((from..to).zip(&vals[from..to]).map(|(i, &value)| Sample {
                        ts_ms: first + i as i64 * step,
                        value,
                    }))
                }
                Timestamps::Explicit(ts) => out.extend(
                    ts[from..to]
                        .iter()
                        .zip(&vals[from..to])
                        .map(|(&ts_ms, &value)| Sample { ts_ms, value }),
                ),
            }
        }
        Ok(())
    }
}

/// What a segment's footer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footer {
    partition: (i64, i64),
    index_offset: u64,
    index_len: u64,
    index_crc: u32,
    n_series: u32,
    n_samples: u64,
    /// BLAKE3 of every byte before the footer.
    hash: [u8; 32],
}

/// Checks a segment's compressed index against its footer (CRC, decompression, every
/// entry's bounds and order, the sample count, the partition) and walks it, calling `visit`
/// with each entry. The error says what is wrong.
fn check_index(
    compressed: &[u8],
    f: &Footer,
    mut visit: impl FnMut(usize, IndexEntry<'_>) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    if crc32c::crc32c(compressed) != f.index_crc {
        return Err("index checksum mismatch".into());
    }
    let index = zstd_decompress(compressed, SECTION_BYTES_MAX as usize)
        .map_err(|e| format!("index does not decompress: {e}"))?;
    let (p_start, p_end) = f.partition;
    let mut samples = 0u64;
    let mut outside: Option<String> = None;
    walk_index(&index, f.index_offset, f.n_series as usize, |i, e| {
        samples += u64::from(e.count);
        if outside.is_none() && (e.min_ts < p_start || e.max_ts >= p_end) {
            outside = Some(e.key.to_string());
        }
        visit(i, e)
    })
    .map_err(|d| format!("index: {d}"))?;
    if samples != f.n_samples {
        return Err("index sample counts disagree with the footer".into());
    }
    if let Some(key) = outside {
        return Err(format!("block of {key} lies outside the partition"));
    }
    Ok(())
}

impl Footer {
    /// The index must end where the footer of a file of `size` bytes begins.
    fn check_index_position(&self, size: u64) -> std::result::Result<(), String> {
        let footer_start = size - FOOTER_BYTES as u64;
        if self
            .index_offset
            .checked_add(self.index_len)
            .is_none_or(|e| e != footer_start)
            || self.index_len > SECTION_BYTES_MAX
        {
            return Err("index position is out of bounds".into());
        }
        Ok(())
    }
}

/// The segment format a header magic names.
fn format_of(magic: &[u8]) -> std::result::Result<u8, String> {
    match magic {
        m if m == HEADER_MAGIC => Ok(2),
        m if m == HEADER_MAGIC_V1 => Ok(1),
        _ => Err("bad header magic: not a tsvault segment".into()),
    }
}

/// Checks a footer's magic and CRC and reads its fields.
fn parse_footer(footer: &[u8]) -> std::result::Result<Footer, String> {
    if footer.len() != FOOTER_BYTES || &footer[FOOTER_BYTES - 8..] != FOOTER_MAGIC {
        return Err("bad footer magic: the file is truncated or damaged".into());
    }
    let mut r = Reader::new(footer);
    let f = (|| {
        Some(Footer {
            partition: (r.i64()?, r.i64()?),
            index_offset: r.u64()?,
            index_len: r.u64()?,
            index_crc: r.u32()?,
            n_series: r.u32()?,
            n_samples: r.u64()?,
            hash: r.bytes(32)?.try_into().ok()?,
        })
    })()
    .ok_or("footer is truncated")?;
    let footer_crc = r.u32().ok_or("footer is truncated")?;
    if crc32c::crc32c(&footer[..FOOTER_BYTES - 12]) != footer_crc {
        return Err("footer checksum mismatch".into());
    }
    Ok(f)
}

pub(crate) fn parse_index(
    index: &[u8],
    body_end: u64,
    n_series: usize,
) -> std::result::Result<Vec<BlockMeta>, String> {
    let mut blocks = Vec::with_capacity(n_series.min(1 << 20));
    walk_index(index, body_end, n_series, |i, e| {
        blocks.push(BlockMeta::of(i, e)?);
        Ok(())
    })?;
    Ok(blocks)
}

impl BlockMeta {
    /// Index entry `i`, its key checked to be canonical.
    fn of(i: usize, e: IndexEntry<'_>) -> std::result::Result<BlockMeta, String> {
        let key = SeriesKey::from_canonical(e.key).map_err(|err| format!("entry {i}: {err}"))?;
        Ok(e.with_key(key))
    }
}

/// Calls `visit` with each of the `n_series` entries of decompressed index `index`, in
/// order, after checking what an entry alone can say: it is whole, its key is UTF-8 and
/// after the key before it, its block lies in the data section (`..body_end`) and its
/// count fits its time range. Allocates nothing.
pub(crate) fn walk_index<'a>(
    index: &'a [u8],
    body_end: u64,
    n_series: usize,
    mut visit: impl FnMut(usize, IndexEntry<'a>) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut r = Reader::new(index);
    let mut prev: Option<&str> = None;
    for i in 0..n_series {
        let short = || format!("entry {i} is truncated");
        let key_len = r.uvarint().ok_or_else(short)? as usize;
        let key = std::str::from_utf8(r.bytes(key_len).ok_or_else(short)?)
            .map_err(|_| format!("entry {i}: series key is not UTF-8"))?;
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
        // Timestamps are distinct milliseconds: a block cannot hold more samples than its
        // time range has; this bounds what decoding the block may allocate.
        if i128::from(count) > i128::from(max_ts) - i128::from(min_ts) + 1 {
            return Err(format!(
                "entry {i} ({key}) claims {count} samples in {min_ts}..={max_ts} ms"
            ));
        }
        // Keys order as their bytes (a `SeriesKey` orders as its string).
        if prev.is_some_and(|p| p >= key) {
            return Err(format!("entry {i} ({key}) is out of order"));
        }
        prev = Some(key);
        visit(
            i,
            Block {
                key,
                offset,
                len,
                count,
                min_ts,
                max_ts,
                crc,
            },
        )?;
    }
    if !r.is_empty() {
        return Err("trailing bytes after the last entry".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `segment_block` fuzz target: a pco column whose header claims about 13
    /// trillion values made decoding ask for that much memory (the process aborted). The
    /// column is now decoded into exactly the count the index gives.
    #[test]
    fn a_column_claiming_more_values_than_the_index_is_refused_without_allocating_them() {
        let block: &[u8] = &[
            0x01, 0x80, 0xa0, 0xab, 0xfe, 0xf9, 0x62, 0x90, 0x4e, 0x01, 0x02, 0x70, 0x63, 0x6f,
            0x21, 0x02, 0x2d, 0x19, 0x03, 0xa6, 0x04, 0x63, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0xc8, 0x00, 0x00, 0x00, 0x00, 0x41, 0x40,
            0x00, 0x00, 0x40, 0x00, 0x04, 0x00, 0x10, 0x00, 0x43, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0xb8, 0x1e, 0x85, 0xeb, 0x51, 0xb8, 0x1e, 0x05, 0x00,
        ];
        let err = decode_block(2, block, 100).unwrap_err();
        assert!(err.contains("column"), "{err}");
    }

    /// Found by the `segment_block` fuzz target after 16 M runs: a chunk whose description
    /// claims a lookback window of 2^32 made pco size a 64 GiB buffer before decoding. Each
    /// chunk's count and window are now checked before pco sees its page.
    #[test]
    fn a_chunk_claiming_a_huge_lookback_window_is_refused_without_allocating_it() {
        let block: &[u8] = &[
            0x01, 0x62, 0x32, 0x01, 0x02, 0x70, 0x63, 0x6f, 0x21, 0x02, 0x06, 0x19, 0x03, 0x04,
            0x00, 0x00, 0x00, 0x01, 0x4b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x1e, 0x2a,
            0x01, 0x80, 0xa0, 0x3b, 0x00, 0x00, 0x00, 0x00, 0x88, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x57, 0x00, 0x3a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x21, 0xfa, 0xfb, 0x00,
        ];
        for count in [0, 1, 100, 5000] {
            assert!(decode_block(2, block, count).is_err(), "count {count}");
        }
    }

    /// Blocks larger than one pco chunk (2^18 values) decode chunk by chunk.
    #[test]
    fn blocks_of_several_pco_chunks_round_trip() {
        let samples: Vec<Sample> = (0..600_000i64)
            .map(|i| Sample {
                ts_ms: i * 3 + (i * i) % 2,
                value: ((i * 7919) % 10007) as f64 * 0.125 + (i % 3) as f64 * 1e-9,
            })
            .collect();
        let bytes = encode_block(&samples).unwrap();
        assert_eq!(decode_block(2, &bytes, samples.len()).unwrap(), samples);
        assert!(decode_block(2, &bytes, samples.len() - 1).is_err());
        assert!(decode_block(2, &bytes, samples.len() + 1).is_err());
    }

    /// An index entry cannot claim more samples than its time range has milliseconds.
    #[test]
    fn an_index_entry_claiming_more_samples_than_its_range_is_refused() {
        let key = SeriesKey::new("m", &[("h", "a")]).unwrap();
        let mut index = Vec::new();
        put_uvarint(&mut index, key.as_str().len() as u64);
        index.extend_from_slice(key.as_str().as_bytes());
        put_uvarint(&mut index, HEADER_MAGIC.len() as u64); // offset
        put_uvarint(&mut index, 10); // len
        put_uvarint(&mut index, 11); // count: 11 samples in 10 ms
        put_ivarint(&mut index, 1000);
        put_ivarint(&mut index, 1009);
        index.extend_from_slice(&0u32.to_le_bytes());
        let err = parse_index(&index, 1 << 20, 1).unwrap_err();
        assert!(err.contains("claims 11 samples"), "{err}");
    }

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

    fn samples_of(ts: &[i64], values: &[f64]) -> Vec<Sample> {
        ts.iter()
            .zip(values)
            .map(|(&ts_ms, &value)| Sample { ts_ms, value })
            .collect()
    }

    fn same_bits(a: &[Sample], b: &[Sample]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.ts_ms == y.ts_ms && x.value.to_bits() == y.value.to_bits())
    }

    #[test]
    fn block_encodings_are_chosen_by_content() {
        let regular: Vec<i64> = (0..5).map(|i| 1_000 + i * 10_000).collect();
        let irregular = [1_000, 2_000, 2_500, 9_000, 9_001];
        /// Timestamps, values, the expected timestamp encoding and decimal places.
        type Case<'a> = (&'a [i64], [f64; 5], u8, Option<u8>);
        let cases: [Case; 6] = [
            (&regular, [1.0, 2.0, 3.0, -4.0, 0.0], TS_REGULAR, Some(0)),
            (&irregular, [1.25, 2.5, 3.75, 4.0, 99.99], TS_PCO, Some(2)),
            (&regular, [0.1, 0.2, 0.3, 1e-9, 5.0], TS_REGULAR, Some(9)),
            // Not decimals that round-trip: stored as f64 bit patterns.
            (&regular, [f64::NAN, 1.0, 2.0, 3.0, 4.0], TS_REGULAR, None),
            (&regular, [-0.0, 1.0, 2.0, 3.0, 4.0], TS_REGULAR, None),
            (
                &regular,
                [1e300, f64::INFINITY, 0.1 + 0.2, 1e-10, 4.0],
                TS_REGULAR,
                None,
            ),
        ];
        for (ts, values, ts_enc, places) in cases {
            let samples = samples_of(ts, &values);
            let block = encode_block(&samples).unwrap();
            assert_eq!(block[0], ts_enc, "{values:?}");
            let value_start = if ts_enc == TS_REGULAR {
                let mut r = Reader::new(&block[1..]);
                r.ivarint().unwrap();
                r.uvarint().unwrap();
                block.len() - r.rest().len()
            } else {
                let mut r = Reader::new(&block[1..]);
                let len = r.uvarint().unwrap() as usize;
                block.len() - r.rest().len() + len
            };
            match places {
                Some(p) => assert_eq!(block[value_start..value_start + 2], [VALUES_DECIMAL, p]),
                None => assert_eq!(block[value_start], VALUES_PCO_F64, "{values:?}"),
            }
            let back = decode_block(2, &block, samples.len()).unwrap();
            assert!(same_bits(&back, &samples), "{values:?}");
            // The count comes from the index; a disagreeing one is corruption.
            assert!(decode_block(2, &block, samples.len() + 1).is_err());
        }
        // A single sample is a regular column of one.
        let one = samples_of(&[42], &[7.5]);
        let block = encode_block(&one).unwrap();
        assert_eq!(block[0], TS_REGULAR);
        assert!(same_bits(&decode_block(2, &block, 1).unwrap(), &one));
    }

    #[test]
    fn format_1_blocks_still_decode() {
        let samples = samples_of(&[1_000, 2_000, 4_000], &[1.5, f64::NAN, -0.0]);
        let ts: Vec<i64> = samples.iter().map(|s| s.ts_ms).collect();
        let vals: Vec<f64> = samples.iter().map(|s| s.value).collect();
        let ts_bytes = pco::standalone::simple_compress(&ts, &ts_config()).unwrap();
        let mut v1 = Vec::new();
        put_uvarint(&mut v1, ts_bytes.len() as u64);
        v1.extend_from_slice(&ts_bytes);
        v1.extend_from_slice(
            &pco::standalone::simple_compress(&vals, &ChunkConfig::default()).unwrap(),
        );
        assert!(same_bits(&decode_block(1, &v1, 3).unwrap(), &samples));
    }

    proptest::proptest! {
        #[test]
        fn regular_timestamp_bounds_match_a_search(
            first in -(1i64 << 60)..(1i64 << 60),
            step in 1i64..1_000_000,
            count in 1usize..500,
            probes in proptest::collection::vec(proptest::num::i64::ANY, 10),
            near in proptest::collection::vec(-2_000_000i64..600_000_000, 10),
        ) {
            let regular = Timestamps::Regular { first, step: if count == 1 { 0 } else { step }, count };
            let explicit = Timestamps::Explicit((0..count).map(|i| regular.get(i)).collect());
            let edges = [i64::MIN, i64::MAX, first, first - 1, first + 1];
            for t in probes.iter().copied().chain(near.iter().map(|d| first.saturating_add(*d))).chain(edges) {
                proptest::prop_assert_eq!(regular.lower_bound(t), explicit.lower_bound(t), "lower {}", t);
                proptest::prop_assert_eq!(regular.upper_bound(t), explicit.upper_bound(t), "upper {}", t);
            }
        }

        #[test]
        fn blocks_round_trip_every_value_bit_for_bit(
            start in -(1i64 << 60)..(1i64 << 60),
            steps in proptest::collection::vec(1i64..100_000, 1..200),
            regular in proptest::bool::ANY,
            kind in 0u8..5,
            raw in proptest::collection::vec(proptest::num::u64::ANY, 200),
        ) {
            let mut ts = vec![start];
            for step in &steps[1..] {
                let step = if regular { steps[0] } else { *step };
                ts.push(ts.last().unwrap().saturating_add(step));
            }
            ts.dedup();
            let values: Vec<f64> = raw[..ts.len()]
                .iter()
                .map(|&r| match kind {
                    0 => f64::from_bits(r),                          // any bit pattern
                    1 => (r % 10_000) as f64 - 5_000.0,              // integers
                    2 => ((r % 100_000) as f64 - 50_000.0) / 100.0,  // two decimals
                    3 => (r % 1_000) as f64 / 1e6,                   // six decimals
                    _ => [-0.0, 0.0, 1.0, f64::NAN, f64::INFINITY][(r % 5) as usize],
                })
                .collect();
            let samples = samples_of(&ts, &values);
            let block = encode_block(&samples).unwrap();
            let back = decode_block(2, &block, samples.len()).unwrap();
            proptest::prop_assert!(same_bits(&back, &samples));
        }
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
            assert_eq!(&seg.keyed_blocks().unwrap()[i].key, key);
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
        bad[seg.blocks().unwrap()[3].offset as usize + 2] ^= 0x10;
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
