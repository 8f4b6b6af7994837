//! Request bodies, read with named bounds: a size limit (refused up front when a declared
//! `Content-Length` is over it), a time limit (the whole body, and each wait for more of it),
//! and a budget of bytes held across every request at once (raw and decompressed alike),
//! so that slow or stalled clients cannot hold the server's memory. Decompression runs on
//! the blocking pool, where the caller parses.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How much of a gzip body is inflated between two claims on the byte budget.
const INFLATE_STEP_BYTES: usize = 1 << 20;

/// The bounds on request bodies.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Largest body accepted, after decompression.
    pub max_bytes: usize,
    /// Longest time a whole body may take to arrive.
    pub read_timeout: Duration,
    /// Longest wait for the next piece of a body.
    pub idle_timeout: Duration,
    /// Most bytes of request bodies held in memory at once, across all requests.
    pub buffered_bytes_max: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            max_bytes: 64 << 20,
            read_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(30),
            buffered_bytes_max: 256 << 20,
        }
    }
}

/// The byte budget shared by every request.
pub(crate) struct BodyBudget {
    limits: BodyLimits,
    bytes: Arc<Semaphore>,
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Larger than the limit (declared, received, or once decompressed).
    TooLarge(usize),
    /// Not readable as sent (bad gzip, unknown encoding, broken connection).
    Bad(String),
    /// It did not arrive in time.
    Timeout(String),
    /// The server holds as many body bytes as it may: retry later.
    Busy(usize),
    /// An answer larger than all the bytes the server may hold (its size, the limit).
    AnswerTooLarge(usize, usize),
}

impl BodyError {
    /// The status and message to answer with, in any protocol's shape.
    pub(crate) fn status_message(&self) -> (StatusCode, String) {
        match self {
            BodyError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than the limit of {limit} bytes; split the write into smaller requests or raise --max-body-bytes"
                ),
            ),
            BodyError::Bad(msg) => (StatusCode::BAD_REQUEST, msg.clone()),
            BodyError::Timeout(msg) => (StatusCode::REQUEST_TIMEOUT, msg.clone()),
            BodyError::AnswerTooLarge(size, limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the answer is {size} bytes, more than the {limit} bytes the server may hold for all requests (--max-buffered-bytes); ask for a shorter time range, fewer series, or a downsample"
                ),
            ),
            BodyError::Busy(budget) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server already holds {budget} bytes of request bodies and answers being received, processed or sent (its limit across all requests, --max-buffered-bytes); retry shortly"
                ),
            ),
        }
    }
}

/// A body as received, with its share of the byte budget (held until it is dropped).
pub(crate) struct Received {
    raw: Vec<u8>,
    gzip: bool,
    permit: Option<OwnedSemaphorePermit>,
    budget: Arc<Semaphore>,
    limits: BodyLimits,
}

impl BodyBudget {
    pub(crate) fn new(mut limits: BodyLimits) -> Self {
        // Beyond what a semaphore can count, the bound is the semaphore's (2^61 bytes).
        limits.buffered_bytes_max = limits.buffered_bytes_max.min(Semaphore::MAX_PERMITS);
        let bytes = Arc::new(Semaphore::new(limits.buffered_bytes_max));
        BodyBudget { limits, bytes }
    }

    /// An answer of `bytes`, counted against the same budget until it has been written to
    /// the client (an answer a slow or stalled client does not read holds memory as a body
    /// does); past the budget, Busy.
    pub(crate) fn hold_answer(&self, bytes: Vec<u8>) -> Result<Body, BodyError> {
        let too_large = || BodyError::AnswerTooLarge(bytes.len(), self.limits.buffered_bytes_max);
        if bytes.len() > self.limits.buffered_bytes_max {
            return Err(too_large());
        }
        let n = u32::try_from(bytes.len()).map_err(|_| too_large())?;
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(n.max(1))
            .map_err(|_| BodyError::Busy(self.limits.buffered_bytes_max))?;
        Ok(Body::from(bytes::Bytes::from_owner(HeldAnswer {
            bytes,
            _permit: permit,
        })))
    }

    /// Bytes of request bodies held now.
    pub(crate) fn held(&self) -> u64 {
        (self.limits.buffered_bytes_max - self.bytes.available_permits()) as u64
    }

    /// Reads `body` within the limits; the content encoding is checked here and undone by
    /// [`Received::decode`].
    pub(crate) async fn read(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Received, BodyError> {
        let limits = &self.limits;
        let gzip = match headers.get(header::CONTENT_ENCODING).map(|v| {
            v.to_str()
                .unwrap_or("(not ASCII)")
                .trim()
                .to_ascii_lowercase()
        }) {
            None => false,
            Some(e) if e.is_empty() || e == "identity" => false,
            Some(e) if e == "gzip" => true,
            Some(other) => {
                return Err(BodyError::Bad(format!(
                    "Content-Encoding '{other}' is not supported; send the body plain or gzip-compressed"
                )));
            }
        };
        let declared = match headers.get(header::CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| BodyError::Bad("Content-Length is not a number".into()))?,
            ),
        };
        if declared.is_some_and(|n| n > limits.max_bytes as u64) {
            return Err(BodyError::TooLarge(limits.max_bytes));
        }
        let mut received = Received {
            raw: Vec::with_capacity(declared.unwrap_or(0) as usize),
            gzip,
            permit: None,
            budget: self.bytes.clone(),
            limits: limits.clone(),
        };
        // A declared length is claimed whole at once: twenty clients that each declare 60 MiB
        // and stall cannot hold more than the budget.
        if let Some(n) = declared {
            received.claim(n as usize)?;
        }
        let claimed_up_front = declared.is_some();
        let deadline = Instant::now() + limits.read_timeout;
        let mut body = body;
        loop {
            let wait = limits
                .idle_timeout
                .min(limits.read_timeout)
                .min(deadline.saturating_duration_since(Instant::now()));
            let frame = match tokio::time::timeout(wait, body.frame()).await {
                Ok(f) => f,
                Err(_) if Instant::now() + Duration::from_millis(1) >= deadline => {
                    return Err(BodyError::Timeout(format!(
                        "the request body did not arrive within {} s (received {} bytes)",
                        limits.read_timeout.as_secs(),
                        received.raw.len()
                    )));
                }
                Err(_) => {
                    return Err(BodyError::Timeout(format!(
                        "the request body stalled: nothing arrived for {} s (received {} bytes)",
                        limits.idle_timeout.min(limits.read_timeout).as_secs(),
                        received.raw.len()
                    )));
                }
            };
            let Some(frame) = frame else { break };
            let frame =
                frame.map_err(|e| BodyError::Bad(format!("cannot read the request body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if received.raw.len() + data.len() > limits.max_bytes {
                return Err(BodyError::TooLarge(limits.max_bytes));
            }
            if declared.is_some_and(|n| (received.raw.len() + data.len()) as u64 > n) {
                return Err(BodyError::Bad(
                    "the request body is longer than its Content-Length".into(),
                ));
            }
            if !claimed_up_front {
                received.claim(data.len())?;
            }
            received.raw.extend_from_slice(&data);
        }
        Ok(received)
    }
}

impl Received {
    /// Takes `n` more bytes of the shared budget, or refuses at once (Busy).
    fn claim(&mut self, n: usize) -> Result<(), BodyError> {
        if n == 0 {
            return Ok(());
        }
        let n32 = u32::try_from(n).map_err(|_| BodyError::TooLarge(self.limits.max_bytes))?;
        let more = self
            .budget
            .clone()
            .try_acquire_many_owned(n32)
            .map_err(|_| BodyError::Busy(self.limits.buffered_bytes_max))?;
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }

    /// The body's bytes, decompressed when it was sent gzip-compressed (every member of a
    /// multi-member stream; bytes after the last member are an error). Blocking work: call
    /// it on the blocking pool. The decompressed bytes are claimed from the budget as they
    /// grow, and the compressed ones released once done.
    pub(crate) fn decode(mut self) -> Result<Decoded, BodyError> {
        if !self.gzip {
            let bytes = std::mem::take(&mut self.raw);
            return Ok(Decoded {
                bytes,
                _permit: self.permit.take(),
            });
        }
        let raw = std::mem::take(&mut self.raw);
        let limit = self.limits.max_bytes;
        let mut out = Vec::new();
        let mut inflated = Received {
            raw: Vec::new(),
            gzip: false,
            permit: None,
            budget: self.budget.clone(),
            limits: self.limits.clone(),
        };
        let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
        let mut step = vec![0u8; INFLATE_STEP_BYTES];
        loop {
            let n = dec
                .read(&mut step)
                .map_err(|e| {
                    BodyError::Bad(format!(
                        "the body is not valid gzip ({e}): a member is cut short or damaged, or bytes that are not gzip follow the last one"
                    ))
                })?;
            if n == 0 {
                break;
            }
            if out.len() + n > limit {
                return Err(BodyError::TooLarge(limit));
            }
            inflated.claim(n)?;
            out.extend_from_slice(&step[..n]);
        }
        Ok(Decoded {
            bytes: out,
            _permit: inflated.permit.take(),
        })
    }
}

/// An answer's bytes with their share of the byte budget, released when hyper drops them.
struct HeldAnswer {
    bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for HeldAnswer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A decoded body and its share of the byte budget.
pub(crate) struct Decoded {
    pub bytes: Vec<u8>,
    _permit: Option<OwnedSemaphorePermit>,
}
