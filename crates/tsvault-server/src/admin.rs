//! The admin API for online backups and restores (used by `tsvault backup create --server`
//! and `tsvault restore --server`):
//!
//! - `POST /api/admin/snapshots`: take a snapshot; answers its description (id, consistency
//!   point, files with size and BLAKE3).
//! - `GET /api/admin/snapshots`, `GET /api/admin/snapshots/{id}`: describe them.
//! - `GET /api/admin/snapshots/{id}/file?path=P`: the bytes of one file, with headers
//!   `x-tsvault-blake3` and `x-tsvault-size` (what the file held when the snapshot was taken).
//! - `GET /api/admin/snapshots/{id}/digests?path=P[&basis=samples|blocks|...]`: per-series
//!   digests of one file, of its samples (the default) or of a segment's stored blocks; the
//!   header `x-tsvault-digest-basis` names the basis.
//! - `DELETE /api/admin/snapshots/{id}`: release it.
//! - `POST /api/admin/import`: newline-delimited JSON, one series per line,
//!   `{"series":"<canonical key>","samples":[[ms,value],...]}`; samples merge, and a series'
//!   existing sample at a timestamp is never overwritten.
//!
//! A snapshot file up to 4 MiB is found, opened and read in one blocking step and sent as one
//! body; larger ones are streamed.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tsvault_model::{Point, SeriesKey};
use tsvault_storage::{DigestBasis, Error as StorageError};

use crate::app::{Shared, blocking};
use crate::body::BodyError;
use crate::error::storage_status;

fn error_response(e: &StorageError) -> Response {
    let (status, msg) = match e {
        StorageError::NotFound(msg) => (StatusCode::NOT_FOUND, msg.clone()),
        e => storage_status(e),
    };
    (status, Json(json!({ "error": msg }))).into_response()
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response()
}

/// `POST /api/admin/snapshots`.
pub(crate) async fn create_snapshot(State(st): State<Shared>) -> Response {
    let engine = st.engine.clone();
    // A client that goes away before the answer never learns the snapshot's id: it is
    // released at once instead of holding disk space until it expires.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let taken = engine.snapshot();
        if let Err(Ok(orphan)) = tx.send(taken) {
            tracing::info!(id = %orphan.id, "the client that asked for this snapshot went away; released");
            if let Err(e) = engine.release_snapshot(&orphan.id) {
                tracing::error!(id = %orphan.id, error = %e, "cannot release an orphaned snapshot; it expires later");
            }
        }
    });
    let taken = rx.await.expect("the snapshot task answers");
    match taken {
        Ok(info) => {
            tracing::info!(id = %info.id, files = info.files.len(), wal_position = info.wal_position, "snapshot taken");
            (StatusCode::CREATED, Json(info)).into_response()
        }
        Err(e) => error_response(&e),
    }
}

/// `GET /api/admin/snapshots`.
pub(crate) async fn list_snapshots(State(st): State<Shared>) -> Response {
    let engine = st.engine.clone();
    match blocking(move || engine.snapshots()).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `GET /api/admin/snapshots/{id}`.
pub(crate) async fn show_snapshot(State(st): State<Shared>, Path(id): Path<String>) -> Response {
    let engine = st.engine.clone();
    match blocking(move || engine.snapshot_info(&id)).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `DELETE /api/admin/snapshots/{id}`.
pub(crate) async fn release_snapshot(State(st): State<Shared>, Path(id): Path<String>) -> Response {
    let engine = st.engine.clone();
    let which = id.clone();
    match blocking(move || engine.release_snapshot(&which)).await {
        Ok(()) => {
            tracing::info!(%id, "snapshot released");
            Json(json!({ "released": id })).into_response()
        }
        Err(e) => error_response(&e),
    }
}

#[derive(Deserialize)]
pub(crate) struct FileQuery {
    path: String,
}

/// Files up to this size are read whole and sent as one body; larger ones are streamed.
const FILE_WHOLE_MAX: u64 = 4 << 20;

/// `GET /api/admin/snapshots/{id}/file?path=P`: a small file read whole in one step on the
/// blocking pool (a backup asks for a snapshot's files one after another: finding, opening
/// and reading each in separate steps, each a hand-off between threads, was most of the
/// server's time for 300 KB segments); a larger one streamed, so memory stays bounded
/// whatever the file's size.
pub(crate) async fn snapshot_file(
    State(st): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Response {
    enum Opened {
        Whole(Vec<u8>),
        Stream(std::fs::File, std::path::PathBuf),
    }
    let engine = st.engine.clone();
    let found = blocking(move || {
        let (path, meta) = engine.snapshot_file(&id, &q.path)?;
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| StorageError::Io { op, path, source }
        };
        let mut file = std::fs::File::open(&path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        // The client checks the BLAKE3; a size that is not the listed one is refused here,
        // before a body shorter or longer than its Content-Length is sent.
        let wrong_size = |len: u64| StorageError::Corrupt {
            path: path.clone(),
            detail: format!("{len} bytes; the snapshot lists {}", meta.size),
        };
        if len != meta.size {
            return Err(wrong_size(len));
        }
        if len > FILE_WHOLE_MAX {
            return Ok((meta, Opened::Stream(file, path.clone())));
        }
        let bytes = tsvault_storage::read_listed(&mut file, len).map_err(io("read"))?;
        if bytes.len() as u64 != len {
            return Err(wrong_size(bytes.len() as u64));
        }
        // Never served when its bytes are not the listed ones.
        let hash = blake3::hash(&bytes).to_hex().to_string();
        if hash != meta.blake3 {
            let e = StorageError::Corrupt {
                path: path.clone(),
                detail: format!("BLAKE3 {hash}; the snapshot lists {}", meta.blake3),
            };
            engine.report_corruption(path.clone(), e.to_string());
            return Err(e);
        }
        Ok((meta, Opened::Whole(bytes)))
    })
    .await;
    let (meta, opened) = match found {
        Ok(f) => f,
        Err(e) => return error_response(&e),
    };
    let body = match opened {
        Opened::Whole(bytes) => Body::from(bytes),
        Opened::Stream(file, path_of) => {
            // Hashed as it is sent: bytes that are not the listed ones end the body with an
            // error (the client sees a broken transfer, never a whole corrupt file) and are
            // reported in /health.
            use futures::StreamExt;
            let hasher = std::sync::Arc::new(std::sync::Mutex::new(blake3::Hasher::new()));
            let fed = hasher.clone();
            let data = tokio_util::io::ReaderStream::with_capacity(
                tokio::fs::File::from_std(file),
                1 << 20,
            )
            .map(move |chunk| {
                if let Ok(c) = &chunk {
                    fed.lock().expect("not poisoned").update(c);
                }
                chunk
            });
            let (expected, engine, what) =
                (meta.blake3.clone(), st.engine.clone(), path_of.clone());
            let tail = futures::stream::once(async move {
                let got = hasher.lock().expect("not poisoned").finalize().to_hex().to_string();
                if got == expected {
                    return None;
                }
                let detail = format!("BLAKE3 {got}; the snapshot lists {expected}");
                tracing::error!(file = %what.display(), %detail, "a snapshot file no longer matches its hash; its transfer is cut off");
                engine.report_corruption(what, detail.clone());
                Some(Err(std::io::Error::other(detail)))
            })
            .filter_map(|x| async move { x });
            Body::from_stream(data.chain(tail))
        }
    };
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, meta.size.to_string()),
            (
                header::HeaderName::from_static("x-tsvault-blake3"),
                meta.blake3,
            ),
            (
                header::HeaderName::from_static("x-tsvault-size"),
                meta.size.to_string(),
            ),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct DigestQuery {
    path: String,
    /// `samples` (the default, what servers before `blocks` existed computed), `blocks`,
    /// `blocks-xxh3` or `blocks-crc32c`.
    basis: Option<String>,
}

/// `GET /api/admin/snapshots/{id}/digests?path=P[&basis=B]`, `B` one of `samples`,
/// `blocks`, `blocks-xxh3`, `blocks-crc32c`: the file's per-series digests; the
/// `x-tsvault-digest-basis` header says which basis they use. An unknown basis is refused
/// as "basis: 'B' is none of ...", which the CLI takes to mean an older server.
pub(crate) async fn snapshot_digests(
    State(st): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<DigestQuery>,
) -> Response {
    let basis = match q.basis.as_deref() {
        None => DigestBasis::Samples,
        Some(name) => match DigestBasis::parse(name) {
            Some(b) => b,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({
                        "error": format!("basis: '{name}' is none of 'samples', 'blocks', 'blocks-xxh3' and 'blocks-crc32c'")
                    })),
                )
                    .into_response();
            }
        },
    };
    if basis.is_blocks() && !DigestBasis::for_file(&q.path).is_blocks() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": format!("basis: digests of blocks are for segment files only, not {}", q.path)
            })),
        )
            .into_response();
    }
    let engine = st.engine.clone();
    let r = blocking(move || {
        let (path, _) = engine.snapshot_file(&id, &q.path)?;
        tsvault_storage::file_digests(&path, basis)
    })
    .await;
    match r {
        Ok(d) => (
            [(
                header::HeaderName::from_static(DIGEST_BASIS_HEADER),
                basis.as_str(),
            )],
            Json(d),
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

/// The response header naming the basis of a digests answer.
const DIGEST_BASIS_HEADER: &str = "x-tsvault-digest-basis";

/// One line of an import body.
#[derive(Deserialize)]
struct ImportLine {
    series: String,
    samples: Vec<(i64, f64)>,
}

/// Parses an import body into points; an error names the line and what is wrong with it.
fn parse_import(body: &[u8]) -> Result<Vec<Point>, String> {
    let mut points = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let n = i + 1;
        let l: ImportLine = serde_json::from_slice(line)
            .map_err(|e| format!("line {n}: not an import record ({e})"))?;
        let key = SeriesKey::from_canonical(&l.series)
            .map_err(|e| format!("line {n}: series {:?}: {e}", l.series))?;
        for (ts_ms, value) in l.samples {
            if !value.is_finite() {
                return Err(format!(
                    "line {n}: series {}: value {value} at {ts_ms} is not finite",
                    l.series
                ));
            }
            points.push(Point {
                key: key.clone(),
                ts_ms,
                value,
            });
        }
    }
    Ok(points)
}

/// A body that could not be read, as this API's JSON error.
fn body_error(e: &BodyError) -> Response {
    let (status, msg) = e.status_message();
    (status, Json(json!({ "error": msg }))).into_response()
}

/// `POST /api/admin/import`.
pub(crate) async fn import(State(st): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let received = match st.bodies.read(&headers, body).await {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    // Decoding, parsing and importing all run off the async workers, like every write
    // protocol.
    let engine = st.engine.clone();
    let result = blocking(move || {
        let body = received.decode().map_err(Err)?;
        let points = parse_import(&body.bytes).map_err(Ok)?;
        Ok(engine.import(&points))
    })
    .await;
    match result {
        Err(Ok(msg)) => bad_request(msg),
        Err(Err(e)) => body_error(&e),
        Ok(Ok(outcome)) => Json(outcome).into_response(),
        Ok(Err(e)) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_lines_parse_and_errors_name_the_line() {
        let ok = b"{\"series\":\"cpu{host=a}\",\"samples\":[[1,1.5],[2,-0.0]]}\n\n{\"series\":\"mem\",\"samples\":[]}\n";
        let p = parse_import(ok).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].key.as_str(), "cpu{host=a}");
        assert_eq!((p[1].ts_ms, p[1].value.to_bits()), (2, (-0.0f64).to_bits()));
        let e = parse_import(b"{\"series\":\"cpu\",\"samples\":[]}\nnot json\n").unwrap_err();
        assert!(e.starts_with("line 2: not an import record"), "{e}");
        let e = parse_import(b"{\"series\":\"\",\"samples\":[[1,1]]}").unwrap_err();
        assert!(e.starts_with("line 1: series \"\""), "{e}");
    }
}
