//! The series file (`SERIES`): every series key the segments hold, so that a start reads one
//! file of O(series) instead of every segment's index (see FORMAT.md).
//!
//! Derived data: the manifest records the length and CRC32C of the prefix that covers its
//! segments, and a file that is missing or disagrees is rebuilt from the segments (the slow
//! start of before), never trusted. Keys are appended and fsynced before a manifest that
//! needs them is installed; a tail past the recorded length (a flush whose manifest never
//! landed) is cut at start.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tsvault_model::SeriesKey;

use crate::bytes::Reader;
use crate::error::{IoContext, Result, failpoint};
use crate::fsutil;

/// The file's name in the data directory.
pub(crate) const SERIES_FILE: &str = "SERIES";
const MAGIC: &[u8; 8] = b"TSVSER\x00\x01";
/// The longest key a record may hold (keys are far shorter: see `tsvault_model::Limits`).
const KEY_BYTES_MAX: u32 = 1 << 20;

/// What the manifest records of the series file: the prefix that holds every key its
/// segments hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesFileMark {
    /// Bytes of the file covered.
    pub len: u64,
    /// CRC32C of those bytes.
    pub crc32c: u32,
}

/// The open series file, appended to by the thread that holds the manifest lock.
#[derive(Debug)]
pub(crate) struct SeriesFile {
    path: PathBuf,
    file: File,
    mark: SeriesFileMark,
}

/// Why a series file cannot be used (the start then reads every segment instead).
#[derive(Debug)]
pub(crate) struct Unusable {
    /// The manifest records a file and it is missing or damaged (not merely never written).
    pub damaged: bool,
    pub why: String,
}

impl Unusable {
    fn damaged(why: String) -> Self {
        Unusable { damaged: true, why }
    }
}

/// Reads the keys of the series file in `dir` that `mark` covers, and opens it for appends
/// (cutting what lies past the mark). `Ok(Err(why))` when the file cannot be used: none
/// recorded, missing, shorter, or its bytes or records disagree with the mark.
pub(crate) fn open(
    dir: &Path,
    mark: Option<SeriesFileMark>,
) -> Result<std::result::Result<(SeriesFile, Vec<SeriesKey>), Unusable>> {
    let Read {
        keys,
        file_len,
        mark,
    } = match read(dir, mark)? {
        Ok(read) => read,
        Err(why) => return Ok(Err(why)),
    };
    let path = dir.join(SERIES_FILE);
    let file = File::options()
        .read(true)
        .write(true)
        .open(&path)
        .ctx("open", &path)?;
    if file_len > mark.len {
        // Keys of a flush whose manifest was never installed: that flush's data is still in
        // the WAL, which registers them again.
        file.set_len(mark.len).ctx("truncate", &path)?;
        fsutil::fsync(&file, &path, false)?;
    }
    Ok(Ok((SeriesFile { path, file, mark }, keys)))
}

/// What [`read`] found: the keys the mark covers, the file's whole length, and the mark.
pub(crate) struct Read {
    pub keys: Vec<SeriesKey>,
    pub file_len: u64,
    pub mark: SeriesFileMark,
}

/// The keys the series file in `dir` holds within `mark`, the file's length, and the mark;
/// `Ok(Err(why))` when the file cannot be used (see [`open`]). Reads only: also what
/// `tsvault check` says of the file (never a loss: the file is derived from the segments).
pub(crate) fn read(
    dir: &Path,
    mark: Option<SeriesFileMark>,
) -> Result<std::result::Result<Read, Unusable>> {
    let path = dir.join(SERIES_FILE);
    let Some(mark) = mark else {
        return Ok(Err(Unusable {
            damaged: false,
            why: "the manifest records no series file".into(),
        }));
    };
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(Unusable::damaged(format!(
                "{} is missing",
                path.display()
            ))));
        }
        Err(e) => return Err(e).ctx("read", &path),
    };
    let Some(covered) = usize::try_from(mark.len)
        .ok()
        .and_then(|len| bytes.get(..len))
    else {
        return Ok(Err(Unusable::damaged(format!(
            "{} is {} bytes, shorter than the {} the manifest records",
            path.display(),
            bytes.len(),
            mark.len
        ))));
    };
    if crc32c::crc32c(covered) != mark.crc32c {
        return Ok(Err(Unusable::damaged(format!(
            "{}: the first {} bytes do not match the checksum the manifest records",
            path.display(),
            mark.len
        ))));
    }
    Ok(decode(covered)
        .map(|keys| Read {
            keys,
            file_len: bytes.len() as u64,
            mark,
        })
        .map_err(|d| Unusable::damaged(format!("{}: {d}", path.display()))))
}

/// Writes a new series file in `dir` holding `keys` (atomically: temporary file, fsync,
/// rename, directory fsync) and opens it for appends.
pub(crate) fn create<'a>(
    dir: &Path,
    keys: impl IntoIterator<Item = &'a SeriesKey>,
) -> Result<SeriesFile> {
    let path = dir.join(SERIES_FILE);
    let mut bytes = MAGIC.to_vec();
    for k in keys {
        encode_key(k, &mut bytes);
    }
    failpoint!("series-create", "write", path.with_extension("tmp"));
    fsutil::write_atomic(&path, &bytes)?;
    let file = File::options()
        .read(true)
        .write(true)
        .open(&path)
        .ctx("open", &path)?;
    let mark = SeriesFileMark {
        len: bytes.len() as u64,
        crc32c: crc32c::crc32c(&bytes),
    };
    Ok(SeriesFile { path, file, mark })
}

impl SeriesFile {
    /// The prefix written so far.
    pub(crate) fn mark(&self) -> SeriesFileMark {
        self.mark
    }

    /// Appends `keys` and fsyncs; returns the mark that covers them. On an error the file
    /// is as before (anything written past the old mark is overwritten by the next append
    /// and cut by the next start).
    pub(crate) fn append<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a SeriesKey>,
    ) -> Result<SeriesFileMark> {
        let mut bytes = Vec::new();
        for k in keys {
            encode_key(k, &mut bytes);
        }
        if bytes.is_empty() {
            return Ok(self.mark);
        }
        failpoint!("series-write", "write", self.path);
        self.file
            .write_all_at(&bytes, self.mark.len)
            .ctx("write", &self.path)?;
        fsutil::fsync(&self.file, &self.path, true)?;
        self.mark = SeriesFileMark {
            len: self.mark.len + bytes.len() as u64,
            crc32c: crc32c::crc32c_append(self.mark.crc32c, &bytes),
        };
        Ok(self.mark)
    }
}

/// One record: the key's length (u32 LE), the CRC32C of the key (u32 LE), the canonical key.
fn encode_key(key: &SeriesKey, out: &mut Vec<u8>) {
    let k = key.as_str().as_bytes();
    out.extend_from_slice(&(k.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(k).to_le_bytes());
    out.extend_from_slice(k);
}

/// The keys of a series file's bytes; the error names the record that is wrong.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Vec<SeriesKey>, String> {
    let mut r = Reader::new(bytes);
    if r.bytes(MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err("bad magic: not a tsvault series file".into());
    }
    let mut keys = Vec::new();
    let mut at = MAGIC.len();
    while !r.is_empty() {
        let bad = |what: &str| format!("record at byte {at}: {what}");
        let len = r.u32().ok_or_else(|| bad("truncated"))?;
        let crc = r.u32().ok_or_else(|| bad("truncated"))?;
        if len > KEY_BYTES_MAX {
            return Err(bad("key length out of bounds"));
        }
        let k = r.bytes(len as usize).ok_or_else(|| bad("truncated"))?;
        if crc32c::crc32c(k) != crc {
            return Err(bad("checksum mismatch"));
        }
        let k = std::str::from_utf8(k).map_err(|_| bad("key is not UTF-8"))?;
        keys.push(SeriesKey::from_canonical(k).map_err(|e| bad(&e.to_string()))?);
        at += 8 + k.len();
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SeriesKey {
        SeriesKey::new(s, &[("host", "a")]).unwrap()
    }

    #[test]
    fn keys_round_trip_and_a_tail_past_the_mark_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = create(dir.path(), [&key("a"), &key("b")]).unwrap();
        let m1 = f.mark();
        let m2 = f.append([&key("c")]).unwrap();
        assert!(m2.len > m1.len);
        // Reopened at the first mark: only what it covers, the rest cut.
        let (f1, keys) = open(dir.path(), Some(m1)).unwrap().unwrap();
        assert_eq!(keys, vec![key("a"), key("b")]);
        assert_eq!(
            fs::metadata(dir.path().join(SERIES_FILE)).unwrap().len(),
            m1.len
        );
        drop(f1);
        assert!(open(dir.path(), Some(m2)).unwrap().is_err());
    }

    #[test]
    fn a_file_that_disagrees_with_the_mark_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let f = create(dir.path(), [&key("a"), &key("b")]).unwrap();
        let mark = f.mark();
        let path = dir.path().join(SERIES_FILE);
        assert!(!open(dir.path(), None).unwrap().unwrap_err().damaged);
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            let u = open(dir.path(), Some(mark)).unwrap().unwrap_err();
            assert!(u.damaged && u.why.contains("checksum"), "{u:?}");
        }
        fs::remove_file(&path).unwrap();
        let u = open(dir.path(), Some(mark)).unwrap().unwrap_err();
        assert!(u.damaged && u.why.contains("missing"), "{u:?}");
        assert!(
            decode(&good[..good.len() - 1])
                .unwrap_err()
                .contains("truncated")
        );
    }
}
