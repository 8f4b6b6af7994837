//! Writing new files whose bytes nobody will read soon (a local repository's objects, a
//! restore's files) past the page cache.
//!
//! A backup writes as many bytes as the store holds, a restore as many as it restores;
//! through the page cache each byte is first copied into a cache page, which on the
//! benchmark's VM cost a third of a large backup's CPU (`copy_folio_from_iter_atomic`, 34% of
//! the CLI's samples for a 316 MB store) and most of a restore's system time, and then
//! evicts pages the server could use. With `O_DIRECT` the device reads the bytes from this
//! process's buffer instead (`dd` of 300 MB with fsync: 0.05 s of system time against
//! 0.10–1.3 s buffered).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

/// The unit direct writes are aligned to: the largest logical block size of common devices.
const BLOCK: usize = 4096;
/// How much is gathered in the aligned buffer and written at a time.
const CHUNK: usize = 1 << 20;

/// Buffers of `CHUNK + BLOCK` bytes that writers finished with, for the next ones: a restore
/// writes thousands of files, and a fresh buffer costs page faults.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// How many spare buffers are kept.
const SPARE_MAX: usize = 8;

/// Creates the file `path` (which must not exist), writes `body` into it and fsyncs it (see
/// [`NewFile`]).
pub(crate) fn write_new_durable(path: &Path, body: &[u8]) -> io::Result<()> {
    write_new_durable_with(path, body.len() as u64, |file| file.write_all(body))
}

/// [`write_new_durable`] of the `len` bytes `write` writes into the file.
pub(crate) fn write_new_durable_with(
    path: &Path,
    len: u64,
    write: impl FnOnce(&mut NewFile) -> io::Result<()>,
) -> io::Result<()> {
    let mut file = NewFile::create(path, len)?;
    write(&mut file)?;
    file.finish()?.sync_all()
}

/// A new file being written front to back. On Linux its whole 4 KiB blocks bypass the page
/// cache (gathered in an aligned buffer, written a MiB at a time) where the filesystem and
/// device allow it; the rest (a partial last block, a file expected to be shorter than a
/// block, or everything after a refusal) goes through the cache. Not durable until the
/// caller fsyncs the file [`NewFile::finish`] returns, as for any file.
pub(crate) struct NewFile {
    file: File,
    /// Set while writes go direct.
    direct: Option<Aligned>,
    /// Bytes gathered in the aligned part of the buffer, not written yet.
    pending: usize,
}

impl NewFile {
    /// Creates `path` (which must not exist); `expected` is about how many bytes will be
    /// written (a file shorter than a block is written through the cache).
    pub(crate) fn create(path: &Path, expected: u64) -> io::Result<NewFile> {
        if let Some(file) = create_direct(path, expected)? {
            return Ok(NewFile {
                file,
                direct: Some(Aligned::take()),
                pending: 0,
            });
        }
        #[cfg(target_os = "linux")]
        let file = if expected as usize >= BLOCK {
            // A filesystem that refuses O_DIRECT does so when opening, after it has made the
            // file (an existing one is refused before, as EEXIST): the file is this call's.
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?
        } else {
            File::create_new(path)?
        };
        #[cfg(not(target_os = "linux"))]
        let file = File::create_new(path)?;
        Ok(NewFile {
            file,
            direct: None,
            pending: 0,
        })
    }

    /// Appends `bytes`.
    pub(crate) fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while let Some(aligned) = &mut self.direct {
            if bytes.is_empty() {
                return Ok(());
            }
            let n = bytes.len().min(CHUNK - self.pending);
            aligned.chunk()[self.pending..self.pending + n].copy_from_slice(&bytes[..n]);
            self.pending += n;
            bytes = &bytes[n..];
            if self.pending == CHUNK {
                self.flush_direct()?;
            }
        }
        self.file.write_all(bytes)
    }

    /// Writes what is pending and returns the file, for the caller to fsync.
    pub(crate) fn finish(mut self) -> io::Result<File> {
        if self.direct.is_some() {
            self.flush_direct()?;
        }
        Ok(self.file)
    }

    /// Writes the pending bytes' whole blocks direct; when they are not all whole blocks
    /// (the end of the file), or the device refuses the alignment, turns direct writes off
    /// and writes the rest through the cache.
    fn flush_direct(&mut self) -> io::Result<()> {
        let Some(aligned) = &mut self.direct else {
            return Ok(());
        };
        let pending = &aligned.chunk()[..self.pending];
        let whole = pending.len() / BLOCK * BLOCK;
        let mut done = 0;
        while done < whole {
            match (&self.file).write(&pending[done..whole]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                // A short write leaves the offset unaligned: the next direct write is
                // refused, and the rest goes through the cache.
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_alignment_refusal(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if done == pending.len() {
            self.pending = 0;
            return Ok(());
        }
        clear_direct(&self.file)?;
        (&self.file).write_all(&pending[done..])?;
        self.pending = 0;
        self.direct = None;
        Ok(())
    }
}

/// A buffer with room for a block-aligned chunk, from [`SPARE`] and back to it when dropped.
struct Aligned {
    buf: Vec<u8>,
    /// Where its aligned part starts.
    start: usize,
}

impl Aligned {
    fn take() -> Aligned {
        let mut buf = SPARE
            .lock()
            .expect("not poisoned")
            .pop()
            .unwrap_or_default();
        buf.resize(CHUNK + BLOCK, 0);
        let start = buf.as_ptr().align_offset(BLOCK);
        Aligned { buf, start }
    }

    /// The aligned chunk.
    fn chunk(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + CHUNK]
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let mut spare = SPARE.lock().expect("not poisoned");
        if spare.len() < SPARE_MAX {
            spare.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Whether a direct write failed for its alignment (which the cache then takes).
fn is_alignment_refusal(e: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    return e.raw_os_error() == Some(libc::EINVAL);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = e;
        false
    }
}

/// The new file `path` opened for direct writes, or None where they cannot help: a file
/// expected shorter than a block, a filesystem that refuses the flag, or not Linux.
fn create_direct(path: &Path, expected: u64) -> io::Result<Option<File>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if expected < BLOCK as u64 {
            return Ok(None);
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (path, expected);
        Ok(None)
    }
}

/// Turns `O_DIRECT` off on `file`, so that a partial last block can be written.
fn clear_direct(file: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: fcntl with F_GETFL and F_SETFL on a descriptor open for the whole call
        // reads and writes no memory of this process.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the block and chunk boundaries reads back as written, whole or
    /// in uneven pieces, and with a wrong expectation of its length, in a directory on disk
    /// and, where there is one, on tmpfs (which may refuse `O_DIRECT`).
    #[test]
    fn every_length_reads_back_whole() {
        let on_disk = tempfile::tempdir().unwrap();
        let shm = Path::new("/dev/shm");
        let on_tmpfs = shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap());
        let body: Vec<u8> = (0..3 * CHUNK as u32 + 5000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let lengths = [
            0,
            1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK + 17,
            CHUNK - 1,
            CHUNK,
            CHUNK + BLOCK,
            body.len(),
        ];
        for dir in std::iter::once(&on_disk).chain(on_tmpfs.as_ref()) {
            for &len in &lengths {
                let path = dir.path().join(format!("whole-{len}"));
                write_new_durable(&path, &body[..len]).unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), &body[..len], "{len}");
                // The file is new or nothing: a second write to the name fails.
                let err = write_new_durable(&path, &body[..len]).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{len}");

                // In pieces of uneven sizes, expecting the wrong length either way.
                for (i, expected) in [0, len as u64, 2 * CHUNK as u64].into_iter().enumerate() {
                    let path = dir.path().join(format!("pieces-{len}-{i}"));
                    let mut file = NewFile::create(&path, expected).unwrap();
                    let mut at = 0;
                    for piece in [1, 4095, 3, CHUNK + 7, 100_000].iter().cycle() {
                        if at == len {
                            break;
                        }
                        let n = (*piece).min(len - at);
                        file.write_all(&body[at..at + n]).unwrap();
                        at += n;
                    }
                    file.finish().unwrap().sync_all().unwrap();
                    assert_eq!(std::fs::read(&path).unwrap(), &body[..len], "{len}");
                }
            }
        }
    }
}
