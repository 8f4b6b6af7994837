//! The storage error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed on a named file or directory.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "fsync", "open", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file failed a checksum or a structural check: it is never served.
    #[error("corrupt file {path}: {detail}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What check failed, and where.
        detail: String,
    },
    /// An earlier write or fsync failed; the store refuses writes until restarted.
    #[error(
        "the store refuses writes after a failed write or fsync ({0}); restart the server to recover from the write-ahead log"
    )]
    Poisoned(String),
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another tsvault process")]
    Locked(PathBuf),
    /// The engine is shutting down.
    #[error("the store is shutting down")]
    Closed,
    /// A write holds a value the store does not accept (parsers check this first).
    #[error("{0}")]
    OutOfRange(String),
    /// An internal invariant failed (a bug); the store refuses writes.
    #[error("internal error: {0}")]
    Internal(String),
    /// A snapshot (or a file of one) that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A bound was reached (too many snapshots): nothing was done; retry once below it.
    #[error("{0}")]
    Limit(String),
    /// A read stopped at its [`tsvault_model::ReadCap`], having read at least this much.
    #[error("the read stopped at its limit after {series} series and {samples} samples")]
    Capped {
        /// Series with samples in the range read so far.
        series: usize,
        /// Samples read so far.
        samples: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid storage configuration: {0}")]
    Config(String),
}

/// The storage result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches an operation and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.into(),
            source,
        })
    }
}

impl Error {
    /// True when the error means the disk is full (ENOSPC) and nothing was lost by it: a
    /// write, create or rename that found no room. A failed fsync never counts, whatever its
    /// errno: the kernel may have dropped the dirty pages it could not write, and what was
    /// renamed or created before it may or may not be durable, so it poisons.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Io { op, source, .. } if *op != "fsync" && source.raw_os_error() == Some(28))
    }
}

/// Returns an injected I/O error from the enclosing function when failpoint `$name` is
/// configured (builds with the `failpoints` feature only; otherwise it compiles to nothing).
/// The payload (`return(<payload>)`) picks the error: `enospc` (disk full), `eio`, anything
/// else a generic error; a `-partial` suffix is honoured where the point writes (half the
/// bytes are written first: a short write).
macro_rules! failpoint {
    ($name:literal, $op:literal, $path:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |arg: Option<String>| Err($crate::error::Error::Io {
            op: $op,
            path: $path.to_owned(),
            source: $crate::error::injected($name, arg.as_deref()),
        }));
    };
}
pub(crate) use failpoint;

/// The I/O error a failpoint with `payload` injects.
#[cfg(feature = "failpoints")]
pub(crate) fn injected(name: &str, payload: Option<&str>) -> io::Error {
    match payload.map(|p| p.trim_end_matches("-partial")) {
        Some("enospc") => io::Error::from_raw_os_error(28),
        Some("eio") => io::Error::from_raw_os_error(5),
        _ => io::Error::other(format!("injected failure at failpoint {name}")),
    }
}
