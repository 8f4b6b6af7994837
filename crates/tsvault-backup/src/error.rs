//! What can go wrong with a repository, each naming the object, backup or file involved.

use std::path::PathBuf;

/// A repository or backup error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store failed (network, permissions, missing bucket).
    #[error("repository {op} {path}: {source}")]
    Store {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    /// A local file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The repository URL or an option is wrong.
    #[error("{0}")]
    Config(String),
    /// The passphrase does not open the repository's key.
    #[error("wrong passphrase: it does not unlock the key of repository {repo}")]
    WrongPassword { repo: String },
    /// The repository is encrypted and no passphrase was given.
    #[error("repository {repo} is encrypted: set TSVAULT_REPO_PASSWORD or pass --password-file")]
    PasswordNeeded { repo: String },
    /// An object's bytes are not what they must be.
    #[error("{what} is damaged: {detail}")]
    Corrupt { what: String, detail: String },
    /// An object the repository must hold is missing.
    #[error("{what} is missing from the repository")]
    Missing { what: String },
    /// A tsvault server's admin API failed or refused.
    #[error("server {url}: {detail}")]
    Server { url: String, detail: String },
    /// The request itself is wrong (unknown backup id, non-empty target, unsafe path...).
    #[error("{0}")]
    Invalid(String),
    /// The storage engine of this process (a backup the server takes itself) failed.
    #[error("{0}")]
    Engine(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn store(
        op: &'static str,
        path: &object_store::path::Path,
    ) -> impl FnOnce(object_store::Error) -> Error {
        let path = path.to_string();
        move |source| match source {
            object_store::Error::NotFound { .. } => Error::Missing {
                what: format!("object {path}"),
            },
            source => Error::Store { op, path, source },
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// Runs `f` (reading data from outside: a restored directory, a repository's contents; or
/// writing a restored file) on the blocking pool, starting at once, not when first polled.
/// A panic in it, a bug, becomes an error naming what was being worked on rather than the
/// end of the whole command (`verify --all` goes on to the next backup).
pub(crate) fn off_thread<T, F>(what: &str, f: F) -> impl Future<Output = Result<T>> + use<T, F>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let task = tokio::task::spawn_blocking(f);
    let what = what.to_string();
    async move { task.await.map_err(|e| panicked(&what, e)) }
}

/// The error for a task working on `what` that panicked (a bug in tsvault).
pub(crate) fn panicked(what: &str, e: tokio::task::JoinError) -> Error {
    Error::Corrupt {
        what: what.to_string(),
        detail: format!("working on it panicked ({e}); this is a bug in tsvault"),
    }
}
