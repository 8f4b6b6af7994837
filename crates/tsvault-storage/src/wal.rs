//! The write-ahead log: numbered segment files of CRC32C-framed records (see FORMAT.md).
//!
//! Each process lifetime writes its own files and never appends to a file it did not create,
//! so a torn tail can only sit at the end of a file that was being written at a crash. Replay
//! cuts such a tail at the last valid record; a bad record followed by a valid one is
//! corruption, not a torn write, and is reported instead of silently dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use tsvault_model::SeriesKey;

use crate::bytes::{Reader, put_ivarint, put_uvarint};
use crate::error::{IoContext, Result, failpoint};
use crate::fsutil::{fsync, sync_dir};

/// Magic and version at the start of every WAL file.
pub(crate) const WAL_MAGIC: &[u8; 8] = b"TSVWAL\x00\x01";
/// Frame header: payload length (u32 LE) and CRC32C of the payload (u32 LE).
const FRAME_HEADER_BYTES: usize = 8;
/// The largest payload a frame may declare; anything larger is damage.
pub(crate) const WAL_RECORD_BYTES_MAX: usize = 256 << 20;
/// Record type of a write batch.
const RECORD_BATCH: u8 = 1;
/// Record type of the first record of a file: the number and final length of the file
/// before it (see [`check_predecessors`]).
const RECORD_PREDECESSOR: u8 = 3;
/// Record type of the only record of a file that stands in for a lost one (started with
/// `--quarantine-corrupt`): its length tells nothing.
const RECORD_STAND_IN: u8 = 4;

/// The bytes of a WAL file standing in for lost file: header and one stand-in record.
pub(crate) fn stand_in_file() -> Vec<u8> {
    let mut out = WAL_MAGIC.to_vec();
    out.extend_from_slice(&stand_in_record());
    out
}

fn stand_in_record() -> Vec<u8> {
    let payload = [RECORD_STAND_IN];
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Marks an older WAL file whose loss was accepted (`--quarantine-corrupt`: cut, or shorter
/// than its successor recorded) so its length is not checked again: the loss is reported
/// once. The only append to a file another process wrote; fsynced.
pub(crate) fn mark_stand_in(path: &Path) -> Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .ctx("open", path)?;
    file.write_all(&stand_in_record()).ctx("write", path)?;
    fsync(&file, path, false)
}

/// The file beside `wal/` (in the data directory) that names the newest WAL file ever
/// created (see [`missing_wal_files`]).
pub(crate) const NEWEST_FILE: &str = "WAL-NEWEST";

/// Where the record of the newest WAL file is, for the WAL directory `wal_dir`.
pub(crate) fn newest_path(wal_dir: &Path) -> PathBuf {
    wal_dir.parent().unwrap_or(Path::new(".")).join(NEWEST_FILE)
}
const NEWEST_MAGIC: &[u8; 8] = b"TSVNEW\x00\x01";

/// Records the newest WAL file of the data directory `data_dir` (for `tsvault restore`,
/// which writes WAL files without the record); nothing when it has none.
pub fn record_newest_wal(data_dir: &Path) -> Result<()> {
    let wal_dir = data_dir.join("wal");
    match wal_files(data_dir)?.last() {
        Some((n, _)) => write_newest(&wal_dir, *n),
        None => Ok(()),
    }
}

/// Records durably (atomic replace) that WAL file `n` of `wal_dir` exists and is the newest.
pub(crate) fn write_newest(wal_dir: &Path, n: u64) -> Result<()> {
    let mut bytes = NEWEST_MAGIC.to_vec();
    bytes.extend_from_slice(&n.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    crate::fsutil::write_atomic(&newest_path(wal_dir), &bytes)
}

/// The newest WAL file number recorded for `wal_dir` (None when no record: a directory
/// written before the record existed, or restored).
pub(crate) fn read_newest(wal_dir: &Path) -> Result<Option<u64>> {
    let path = newest_path(wal_dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx("read", path),
    };
    let ok = bytes.len() == 20
        && &bytes[..8] == NEWEST_MAGIC
        && crc32c::crc32c(&bytes[..16]).to_le_bytes() == bytes[16..20];
    if !ok {
        return Err(crate::error::Error::Corrupt {
            path,
            detail: "not a valid record of the newest WAL file (bad length, magic or checksum)"
                .into(),
        });
    }
    Ok(Some(u64::from_le_bytes(
        bytes[8..16].try_into().expect("8 bytes"),
    )))
}

/// The WAL files that must exist and do not, as inclusive ranges of numbers. Replay needs
/// every file from the manifest's `wal_start` (`stored_start`, when a manifest was on disk;
/// 1 for a directory never flushed) through the newest ever created (`newest`, the record
/// [`write_newest`] keeps): a gap, or a newest file that is gone, lost acknowledged writes.
/// With `start_required` (a manifest on disk: a flush created its start file before
/// storing it), the start file must be there even when no later one is.
pub(crate) fn missing_wal_files(
    numbers: &[u64],
    stored_start: Option<u64>,
    start_required: bool,
    newest: Option<u64>,
) -> Vec<(u64, u64)> {
    let mut missing = Vec::new();
    if numbers.is_empty()
        && start_required
        && let Some(start) = stored_start
    {
        return vec![(start, newest.unwrap_or(start).max(start))];
    }
    // Without a recorded start (a rebuilt manifest) and without files, the newest recorded
    // file is still missing.
    let mut expect = stored_start.or_else(|| numbers.first().copied()).or(newest);
    for &n in numbers {
        match expect {
            Some(e) if n > e => missing.push((e, n - 1)),
            _ => {}
        }
        expect = Some(expect.map_or(n, |e| e.max(n)) + 1);
    }
    if let (Some(newest), Some(e)) = (newest, expect.or(stored_start))
        && newest >= e
    {
        missing.push((e, newest));
    }
    missing
}

/// A WAL file as [`check_predecessors`] sees it: its number, its length (None for a stand-in)
/// and its predecessor record.
pub(crate) type ChainLink = (u64, Option<u64>, Option<(u64, u64)>);

/// Checks each file's predecessor record against the file it names: a file named there that
/// is not as long as recorded was cut (or replaced by another) after it was complete: the
/// records past its length are lost. `files` are (number, length, predecessor record) of the
/// files replay reads, ascending (`None` for a stand-in, whose length tells nothing); a
/// predecessor below them (flushed away) is not checked. Returns the file at fault and what
/// is wrong.
pub(crate) fn check_predecessors(files: &[ChainLink]) -> Vec<(u64, String)> {
    let mut problems = Vec::new();
    for (i, &(n, _, pred)) in files.iter().enumerate() {
        let Some((p, len)) = pred else { continue };
        if p + 1 != n {
            problems.push((
                n,
                format!(
                    "its first record names WAL file {} as the one before it, not {}: the files were renamed or reordered",
                    wal_file_name(p),
                    wal_file_name(n.saturating_sub(1))
                ),
            ));
            continue;
        }
        if let Some(&(_, Some(actual), _)) = i
            .checked_sub(1)
            .and_then(|j| files.get(j))
            .filter(|f| f.0 == p)
            && actual != len
        {
            problems.push((
                p,
                format!(
                    "{actual} bytes, but the WAL file after it recorded {len} when it was created: the file was cut or changed after it was complete, and the records past byte {} are lost",
                    actual.min(len)
                ),
            ));
        }
    }
    problems
}

/// The bytes of the newest WAL file `number` that were fsynced when it was created, if the
/// record of the newest file names it (`newest`): its header, and its predecessor record
/// when a file before it exists (`has_predecessor`; the record takes at least 11 bytes).
/// A file shorter than that lost bytes a crash cannot take.
pub(crate) fn durable_prefix(number: u64, newest: Option<u64>, has_predecessor: bool) -> u64 {
    if newest != Some(number) {
        return 0;
    }
    WAL_MAGIC.len() as u64
        + if has_predecessor {
            FRAME_HEADER_BYTES as u64 + 3
        } else {
            0
        }
}

/// Says which WAL files `missing` names, for an error or a report.
pub(crate) fn describe_missing(missing: &[(u64, u64)]) -> String {
    let names: Vec<String> = missing
        .iter()
        .map(|&(a, b)| {
            if a == b {
                wal_file_name(a)
            } else {
                format!("{} to {}", wal_file_name(a), wal_file_name(b))
            }
        })
        .collect();
    format!(
        "WAL file(s) {} missing: replay needs every file from the manifest's WAL start to the newest one created ({NEWEST_FILE}), and the acknowledged writes they held are not in any segment",
        names.join(", ")
    )
}

/// The file name of WAL file number `n`.
pub(crate) fn wal_file_name(n: u64) -> String {
    format!("{n:020}.wal")
}

/// The WAL files of the data directory `data_dir` as (number, path), ascending (none when
/// it has no `wal/`): for tools that read a stopped data directory.
pub fn wal_files(data_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = data_dir.join("wal");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    list_wal_files(&dir)
}

/// Lists WAL files in `dir` as (number, path), ascending. Files not named like WAL files are
/// ignored.
pub(crate) fn list_wal_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).ctx("list", dir)? {
        let entry = entry.ctx("list", dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name
            .strip_suffix(".wal")
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((num, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// Encodes one write batch as a framed record appended to `out`.
///
/// `defs` introduces series ids not yet defined in the current WAL file; `samples` reference
/// ids defined earlier in the same file or in this record.
pub(crate) fn encode_batch(
    out: &mut Vec<u8>,
    defs: &[(u32, &SeriesKey)],
    samples: &[(u32, i64, f64)],
) {
    let frame_start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let payload_start = out.len();
    out.push(RECORD_BATCH);
    put_uvarint(out, defs.len() as u64);
    for (id, key) in defs {
        put_uvarint(out, u64::from(*id));
        put_uvarint(out, key.as_str().len() as u64);
        out.extend_from_slice(key.as_str().as_bytes());
    }
    put_uvarint(out, samples.len() as u64);
    for &(id, ts, v) in samples {
        put_uvarint(out, u64::from(id));
        put_ivarint(out, ts);
        out.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    let payload_len = out.len() - payload_start;
    let crc = crc32c::crc32c(&out[payload_start..]);
    out[frame_start..frame_start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[frame_start + 4..frame_start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One decoded write batch (or the predecessor record, which carries no samples).
#[derive(Debug, Default)]
pub(crate) struct WalBatch {
    pub defs: Vec<(u32, SeriesKey)>,
    pub samples: Vec<(u32, i64, f64)>,
    /// The number and length of the file before this one, when this is its first record.
    pub predecessor: Option<(u64, u64)>,
    /// This file stands in for a lost one.
    pub stand_in: bool,
}

/// Encodes the predecessor record: WAL file `number` ended at `len` bytes when the file
/// that begins with this record was created.
fn encode_predecessor(out: &mut Vec<u8>, number: u64, len: u64) {
    let frame_start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let payload_start = out.len();
    out.push(RECORD_PREDECESSOR);
    put_uvarint(out, number);
    put_uvarint(out, len);
    let payload_len = out.len() - payload_start;
    let crc = crc32c::crc32c(&out[payload_start..]);
    out[frame_start..frame_start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[frame_start + 4..frame_start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn decode_batch(payload: &[u8]) -> Option<WalBatch> {
    let mut r = Reader::new(payload);
    match r.bytes(1)? {
        [RECORD_BATCH] => {}
        [RECORD_STAND_IN] => {
            return r.is_empty().then_some(WalBatch {
                stand_in: true,
                ..WalBatch::default()
            });
        }
        [RECORD_PREDECESSOR] => {
            let number = r.uvarint()?;
            let len = r.uvarint()?;
            return r.is_empty().then_some(WalBatch {
                predecessor: Some((number, len)),
                ..WalBatch::default()
            });
        }
        _ => return None,
    }
    let n_defs = r.uvarint()? as usize;
    let mut batch = WalBatch::default();
    for _ in 0..n_defs {
        let id = u32::try_from(r.uvarint()?).ok()?;
        let len = r.uvarint()? as usize;
        let key = std::str::from_utf8(r.bytes(len)?).ok()?;
        batch.defs.push((id, SeriesKey::from_canonical(key).ok()?));
    }
    let n_samples = r.uvarint()? as usize;
    // Each sample takes at least 10 bytes: refuse a count the payload cannot hold.
    if n_samples > payload.len() / 10 {
        return None;
    }
    batch.samples.reserve(n_samples);
    for _ in 0..n_samples {
        let id = u32::try_from(r.uvarint()?).ok()?;
        let ts = r.ivarint()?;
        let v = r.f64()?;
        batch.samples.push((id, ts, v));
    }
    r.is_empty().then_some(batch)
}

/// Whether the frame at `off` has a whole header whose length is one a writer could give and
/// whose payload ends within `buf` (whatever its checksum says).
fn whole_frame_at(buf: &[u8], off: usize) -> bool {
    let mut r = Reader::new(buf.get(off..).unwrap_or_default());
    r.u32().is_some_and(|len| {
        let len = len as usize;
        len > 0 && len <= WAL_RECORD_BYTES_MAX && r.u32().is_some() && r.bytes(len).is_some()
    })
}

/// Checks the frame at `off`: Some(frame length) when it is whole and its checksum holds.
fn valid_frame_at(buf: &[u8], off: usize) -> Option<usize> {
    let mut r = Reader::new(buf.get(off..)?);
    let len = r.u32()? as usize;
    let crc = r.u32()?;
    if len == 0 || len > WAL_RECORD_BYTES_MAX {
        return None;
    }
    let payload = r.bytes(len)?;
    (crc32c::crc32c(payload) == crc).then_some(FRAME_HEADER_BYTES + len)
}

/// How a WAL file ended when read.
#[derive(Debug, PartialEq)]
pub(crate) enum WalEnd {
    /// Every byte belonged to a valid record.
    Clean,
    /// The file ends inside a record (its bytes stop before the end its length gives, or
    /// its header is not whole) with nothing valid after it: a torn write. The valid prefix
    /// is `valid_len` bytes long.
    TornTail { valid_len: u64 },
    /// A record that was written whole fails its checksum: it is followed by a valid record,
    /// or it is the last one and all its bytes are there. In the newest file, what a power
    /// cut can leave when unsynced pages land out of order (or the disk rotted); elsewhere,
    /// corruption.
    Damaged { offset: u64, detail: String },
    /// Damage no crash can cause (bad magic, a record whose checksum holds but which does not
    /// decode): corruption at `offset`.
    Corrupt { offset: u64, detail: String },
}

/// Reads every record of a WAL file, handing each decoded batch to `apply`, and says how the
/// file ended. `apply` sees only records before the first damaged one.
pub(crate) fn read_wal_file(
    path: &Path,
    apply: impl FnMut(WalBatch) -> Result<()>,
) -> Result<WalEnd> {
    failpoint!("wal-read", "read", path);
    let buf = fs::read(path).ctx("read", path)?;
    read_wal_bytes(&buf, apply)
}

/// [`read_wal_file`] on the bytes of a WAL file.
pub(crate) fn read_wal_bytes(
    buf: &[u8],
    mut apply: impl FnMut(WalBatch) -> Result<()>,
) -> Result<WalEnd> {
    // A file whose header never reached the disk (created, then the power went before its
    // fsync): short, or zeros where the file system allocated blocks it never wrote. It held
    // no record, since records follow the header's fsync.
    if buf.len() < WAL_MAGIC.len() || buf.iter().all(|&b| b == 0) {
        return Ok(WalEnd::TornTail { valid_len: 0 });
    }
    if &buf[..WAL_MAGIC.len()] != WAL_MAGIC {
        return Ok(WalEnd::Corrupt {
            offset: 0,
            detail: "bad magic: not a tsvault WAL file".into(),
        });
    }
    let mut off = WAL_MAGIC.len();
    while off < buf.len() {
        let Some(frame_len) = valid_frame_at(buf, off) else {
            // Torn tail or corruption? If any valid frame starts after this point, the damage
            // is not a torn write: data written after it reached the disk.
            let later = (off + 1..buf.len().saturating_sub(FRAME_HEADER_BYTES))
                .find(|&o| valid_frame_at(buf, o).is_some());
            return Ok(match later {
                Some(o) => WalEnd::Damaged {
                    offset: off as u64,
                    detail: format!(
                        "damaged record at byte {off} is followed by a valid record at byte {o}"
                    ),
                },
                None if whole_frame_at(buf, off) => WalEnd::Damaged {
                    offset: off as u64,
                    detail: format!(
                        "the last record (at byte {off}) is whole but fails its checksum: damaged after it was written, not a write cut short"
                    ),
                },
                None => WalEnd::TornTail {
                    valid_len: off as u64,
                },
            });
        };
        let payload = &buf[off + FRAME_HEADER_BYTES..off + frame_len];
        let Some(batch) = decode_batch(payload) else {
            return Ok(WalEnd::Corrupt {
                offset: off as u64,
                detail: format!("record at byte {off} has a valid checksum but does not decode"),
            });
        };
        apply(batch)?;
        off += frame_len;
    }
    Ok(WalEnd::Clean)
}

/// The WAL file a process will write, before it is created: a start that finds the disk
/// full serves reads and refuses writes, and creates the file with the first write once
/// there is room (see `commit.rs`).
pub(crate) struct NextWal {
    pub(crate) dir: PathBuf,
    pub(crate) number: u64,
    /// The number and final length of the file before it, when there is one.
    pub(crate) predecessor: Option<(u64, u64)>,
    /// A directory without the record of the newest file (an earlier version's): it is
    /// written for this number first, so that no file with a predecessor record is ever
    /// there without it.
    pub(crate) record_first: Option<u64>,
}

impl NextWal {
    /// Creates the file (see [`WalWriter::create`]); on an error nothing is left behind to
    /// block the next try.
    pub(crate) fn create(&self) -> Result<WalWriter> {
        if let Some(n) = self.record_first {
            write_newest(&self.dir, n)?;
        }
        WalWriter::create(&self.dir, self.number, self.predecessor)
    }

    /// The path the file will have.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(wal_file_name(self.number))
    }
}

/// An open WAL file being appended to.
pub(crate) struct WalWriter {
    file: File,
    path: PathBuf,
    number: u64,
    size_bytes: u64,
}

impl WalWriter {
    /// Creates WAL file `number` in `dir`, beginning with the record of the file before it
    /// (`predecessor`: its number and final length) when there is one; the header, that
    /// record and the directory entry are durable before this returns.
    pub(crate) fn create(dir: &Path, number: u64, predecessor: Option<(u64, u64)>) -> Result<Self> {
        let path = dir.join(wal_file_name(number));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx("create", &path)?;
        let mut header = WAL_MAGIC.to_vec();
        if let Some((n, len)) = predecessor {
            encode_predecessor(&mut header, n, len);
        }
        let written = (|| {
            failpoint!("wal-create", "write", path);
            file.write_all(&header).ctx("write", &path)?;
            fsync(&file, &path, false)?;
            sync_dir(dir)
        })()
        // After the file is durable: the record never names a file that is not there. A
        // full disk leaves the old record in place (its temporary file goes); a failed fsync
        // after its rename leaves the file too, and poisons.
        .and_then(|()| {
            write_newest(dir, number).inspect_err(|e| {
                if e.is_disk_full() {
                    let _ = crate::fsutil::remove_file(&newest_path(dir).with_extension("tmp"));
                }
            })
        });
        if let Err(e) = written {
            if !e.is_disk_full() && matches!(&e, crate::error::Error::Io { op: "fsync", .. }) {
                return Err(e);
            }
            // No half-made file is left to block the next attempt at this number, nor comes
            // back after a power cut as an empty newest file (hence the directory's fsync,
            // whose own failure poisons instead).
            let _ = crate::fsutil::remove_file(&path);
            sync_dir(dir)?;
            return Err(e);
        }
        Ok(WalWriter {
            file,
            path,
            number,
            size_bytes: header.len() as u64,
        })
    }

    /// Appends already framed records (not yet durable).
    pub(crate) fn append(&mut self, frames: &[u8]) -> Result<()> {
        #[cfg(feature = "failpoints")]
        fail::fail_point!("wal-append", |arg: Option<String>| {
            if arg.as_deref().is_some_and(|a| a.ends_with("-partial")) {
                let _ = self.file.write_all(&frames[..frames.len() / 2]);
            }
            Err(crate::error::Error::Io {
                op: "write",
                path: self.path.clone(),
                source: crate::error::injected("wal-append", arg.as_deref()),
            })
        });
        self.file.write_all(frames).ctx("write", &self.path)?;
        // A process killed here leaves the records in the page cache, never fsynced: what
        // the next start must not take as durable (see `Engine::open`).
        #[cfg(feature = "failpoints")]
        fail::fail_point!("abort-after-wal-append", |_| std::process::abort());
        crate::powercut::point();
        self.size_bytes += frames.len() as u64;
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub(crate) fn sync(&mut self) -> Result<()> {
        failpoint!("wal-fsync", "fsync", self.path);
        fsync(&self.file, &self.path, true)
    }

    /// Cuts the file back to `len` bytes (its size before an append that failed part-way)
    /// and goes on writing there: the failed append's bytes are gone, so the next record
    /// follows the last whole one.
    pub(crate) fn rewind(&mut self, len: u64) -> Result<()> {
        self.file.set_len(len).ctx("truncate", &self.path)?;
        self.file
            .seek(std::io::SeekFrom::Start(len))
            .ctx("seek", &self.path)?;
        self.size_bytes = len;
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
}

/// Cuts a torn tail: truncates `path` to `len` bytes and makes that durable.
pub(crate) fn truncate_torn_tail(path: &Path, len: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .ctx("open", path)?;
    file.set_len(len).ctx("truncate", path)?;
    fsync(&file, path, false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_wal_files_finds_gaps_a_missing_start_and_a_missing_newest() {
        // Whole.
        assert_eq!(
            missing_wal_files(&[3, 4, 5], Some(3), true, Some(5)),
            vec![]
        );
        assert_eq!(
            missing_wal_files(&[3, 4, 5], Some(3), true, Some(4)),
            vec![]
        );
        // A gap.
        assert_eq!(
            missing_wal_files(&[3, 5], Some(3), true, None),
            vec![(4, 4)]
        );
        // The start file.
        assert_eq!(
            missing_wal_files(&[5, 6], Some(3), true, None),
            vec![(3, 4)]
        );
        assert_eq!(missing_wal_files(&[], Some(3), true, None), vec![(3, 3)]);
        // The newest, and the newest few.
        assert_eq!(
            missing_wal_files(&[3, 4], Some(3), true, Some(5)),
            vec![(5, 5)]
        );
        assert_eq!(
            missing_wal_files(&[3], Some(3), true, Some(6)),
            vec![(4, 6)]
        );
        // A directory never flushed starts at 1; with no record and no file, nothing.
        assert_eq!(
            missing_wal_files(&[2], Some(1), false, Some(2)),
            vec![(1, 1)]
        );
        assert_eq!(missing_wal_files(&[], Some(1), false, None), vec![]);
        assert_eq!(
            missing_wal_files(&[], Some(1), false, Some(2)),
            vec![(1, 2)]
        );
        // A rebuilt manifest: wherever the files start, but no gap.
        assert_eq!(missing_wal_files(&[7, 8], None, false, Some(8)), vec![]);
        // A rebuilt manifest and no file at all: the newest recorded one is missing.
        assert_eq!(missing_wal_files(&[], None, false, Some(4)), vec![(4, 4)]);
        assert_eq!(missing_wal_files(&[], None, false, None), vec![]);
        assert_eq!(
            missing_wal_files(&[7, 9], None, false, Some(9)),
            vec![(8, 8)]
        );
    }

    fn key(m: &str) -> SeriesKey {
        SeriesKey::new(m, &[("host", "a")]).unwrap()
    }

    /// Writes WAL file `n` in `data_dir`'s `wal/` (the record of the newest file goes in
    /// `data_dir`, never in the shared parent of temporary directories).
    fn write_file(data_dir: &Path, n: u64, batches: usize) -> PathBuf {
        let dir = &data_dir.join("wal");
        fs::create_dir_all(dir).unwrap();
        let mut w = WalWriter::create(dir, n, None).unwrap();
        let k = key("m");
        for i in 0..batches {
            let mut buf = Vec::new();
            let defs = if i == 0 { vec![(0u32, &k)] } else { vec![] };
            encode_batch(&mut buf, &defs, &[(0, i as i64 * 1000, i as f64 + 0.5)]);
            w.append(&buf).unwrap();
        }
        w.sync().unwrap();
        dir.join(wal_file_name(n))
    }

    fn read_all(path: &Path) -> (Vec<(u32, i64, f64)>, WalEnd) {
        let mut samples = Vec::new();
        let end = read_wal_file(path, |b| {
            samples.extend(b.samples);
            Ok(())
        })
        .unwrap();
        (samples, end)
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), 1, 5);
        let (samples, end) = read_all(&path);
        assert_eq!(end, WalEnd::Clean);
        assert_eq!(samples.len(), 5);
        assert_eq!(samples[4], (0, 4000, 4.5));
    }

    #[test]
    fn torn_tail_is_cut_at_every_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), 1, 3);
        let full = fs::read(&path).unwrap();
        let (_, end) = read_all(&path);
        assert_eq!(end, WalEnd::Clean);
        // Record boundaries: find the length of the first two records.
        for cut in 0..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let (samples, end) = read_all(&path);
            match end {
                WalEnd::TornTail { valid_len } => {
                    assert!(valid_len as usize <= cut);
                    assert!(samples.len() < 3);
                }
                WalEnd::Clean => assert!(cut == WAL_MAGIC.len() || samples.len() < 3),
                WalEnd::Corrupt { .. } | WalEnd::Damaged { .. } => {
                    panic!("a truncated file at {cut} is not corruption")
                }
            }
        }
        // Garbage appended after valid records is a torn tail too.
        let mut torn = full.clone();
        torn.extend_from_slice(&[0xAB; 13]);
        fs::write(&path, &torn).unwrap();
        let (samples, end) = read_all(&path);
        assert_eq!(samples.len(), 3);
        assert_eq!(
            end,
            WalEnd::TornTail {
                valid_len: full.len() as u64
            }
        );
    }

    #[test]
    fn damage_before_valid_records_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), 1, 3);
        let mut bytes = fs::read(&path).unwrap();
        // Flip a byte inside the first record's payload.
        bytes[WAL_MAGIC.len() + FRAME_HEADER_BYTES + 3] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let (samples, end) = read_all(&path);
        assert!(samples.is_empty());
        assert!(matches!(end, WalEnd::Damaged { offset: 8, .. }), "{end:?}");
    }
}
