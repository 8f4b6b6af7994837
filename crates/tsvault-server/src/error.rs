//! Mapping storage errors to HTTP statuses shared by every protocol.

use axum::http::StatusCode;
use tsvault_storage::Error as StorageError;

/// The status and the person-readable message for a failed engine write or read.
pub(crate) fn storage_status(e: &StorageError) -> (StatusCode, String) {
    match e {
        StorageError::Poisoned(_) | StorageError::Closed => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        e if e.is_disk_full() => (
            StatusCode::INSUFFICIENT_STORAGE,
            format!("the data directory's disk is full; free space and retry ({e})"),
        ),
        StorageError::OutOfRange(msg) => (StatusCode::BAD_REQUEST, msg.clone()),
        StorageError::Limit(msg) => (StatusCode::TOO_MANY_REQUESTS, msg.clone()),
        StorageError::Corrupt { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored data failed a checksum and is not served: {e}"),
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storage error: {e}"),
        ),
    }
}
