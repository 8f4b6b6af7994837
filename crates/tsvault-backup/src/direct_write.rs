//! Writing a new file whose bytes nobody will read soon (a local repository's objects) past
//! the page cache.
//!
//! A backup writes as many bytes as the store holds; through the page cache each byte is
//! first copied into a cache page, which on the benchmark's VM cost a third of a large
//! backup's CPU (`copy_folio_from_iter_atomic`, 34% of the CLI's samples for a 316 MB store),
//! and then evicts pages the server could use. With `O_DIRECT` the device reads the bytes
//! from this process's buffer instead (`dd` of 300 MB with fsync: 0.05 s of system time
//! against 0.10–1.3 s buffered).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// The unit direct writes are aligned to: the largest logical block size of common devices.
#[cfg(target_os = "linux")]
const BLOCK: usize = 4096;
/// How much is copied into the aligned buffer and written at a time.
#[cfg(target_os = "linux")]
const CHUNK: usize = 1 << 20;

#[cfg(target_os = "linux")]
thread_local! {
    /// A buffer with room for a block-aligned chunk, kept by each thread that writes.
    static ALIGNED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Creates the file `path` (which must not exist), writes `body` into it and fsyncs it. On
/// Linux its whole 4 KiB blocks bypass the page cache where the filesystem and device allow
/// it, and the rest (a partial last block, or everything after a refusal) goes through the
/// cache; the fsync at the end makes both durable, as for any file.
pub(crate) fn write_new_durable(path: &Path, body: &[u8]) -> io::Result<()> {
    let (mut file, written) = match create_direct(path, body.len())? {
        Some(file) => {
            let written = write_direct(&file, body)?;
            clear_direct(&file)?;
            (file, written)
        }
        None => (new_file(path, body.len())?, 0),
    };
    file.write_all(&body[written..])?;
    file.sync_all()
}

/// The new file `path` opened for direct writes, or None where they cannot help: a body
/// shorter than a block, a filesystem that refuses the flag, or not Linux.
fn create_direct(path: &Path, len: usize) -> io::Result<Option<File>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if len < BLOCK {
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
        let _ = (path, len);
        Ok(None)
    }
}

/// The new file `path` for buffered writes, after [`create_direct`] declined.
fn new_file(path: &Path, len: usize) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    if len >= BLOCK {
        // A filesystem that refuses O_DIRECT does so when opening, after it has made the
        // file (an existing one is refused before, as EEXIST): the file is this call's.
        return OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path);
    }
    let _ = len;
    File::create_new(path)
}

/// Writes `body`'s whole blocks to `file` (opened with `O_DIRECT`, at offset 0) through an
/// aligned buffer; returns how many bytes it wrote. Stops early, without error, where the
/// device refuses the alignment (EINVAL): the caller writes the rest through the cache.
#[cfg(target_os = "linux")]
fn write_direct(mut file: &File, body: &[u8]) -> io::Result<usize> {
    let whole = body.len() / BLOCK * BLOCK;
    ALIGNED.with_borrow_mut(|buf| {
        if buf.is_empty() {
            buf.resize(CHUNK + BLOCK, 0);
        }
        let start = buf.as_ptr().align_offset(BLOCK);
        let aligned = &mut buf[start..start + CHUNK];
        let mut done = 0;
        while done < whole {
            let n = (whole - done).min(CHUNK);
            aligned[..n].copy_from_slice(&body[done..done + n]);
            match file.write(&aligned[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                // A short write leaves the offset unaligned: the next direct write is
                // refused, and the rest goes through the cache.
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    })
}

#[cfg(not(target_os = "linux"))]
fn write_direct(_file: &File, _body: &[u8]) -> io::Result<usize> {
    Ok(0)
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

    /// Every length around the block and chunk boundaries reads back as written, in a
    /// directory on disk and, where there is one, on tmpfs (which may refuse `O_DIRECT`).
    #[test]
    fn every_length_reads_back_whole() {
        let on_disk = tempfile::tempdir().unwrap();
        let shm = Path::new("/dev/shm");
        let on_tmpfs = shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap());
        let body: Vec<u8> = (0..3 * (1 << 20) + 5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let lengths = [
            0,
            1,
            4095,
            4096,
            4097,
            8192 + 17,
            (1 << 20) - 1,
            1 << 20,
            (1 << 20) + 4096,
            body.len(),
        ];
        for dir in std::iter::once(&on_disk).chain(on_tmpfs.as_ref()) {
            for &len in &lengths {
                let path = dir.path().join(format!("f{len}"));
                write_new_durable(&path, &body[..len]).unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), &body[..len], "{len}");
                // The file is new or nothing: a second write to the name fails.
                let err = write_new_durable(&path, &body[..len]).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{len}");
            }
        }
    }
}
