//! Pure parsers for tsvault's write protocols: InfluxDB line protocol (`/write`,
//! `/api/v2/write`) and OpenTSDB `/api/put` JSON.
//!
//! Bytes in; [`Point`](tsvault_model::Point)s plus per-line or per-point errors out. A bad line
//! or data point never stops the others (partial-write semantics), and every error says what is
//! wrong and where (line, column, field, tag, data point index), for a person. This crate is not
//! for I/O, HTTP, decompression, body-size limits, retention or storage: the server reads and
//! bounds the body, calls a parser, and hands the points to the engine.

mod line_protocol;
mod opentsdb;
mod precision;

pub use line_protocol::{
    LINE_BYTES_MAX, LineError, LineProtocolOutcome, parse_line_protocol, parse_line_protocol_tagged,
};
pub use opentsdb::{PutBodyError, PutError, PutOutcome, parse_opentsdb_put};
pub use precision::{Precision, PrecisionError};

/// Every error this crate returns as a `Result` (per-line and per-point errors are data in the
/// outcomes instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An unknown `precision` value.
    #[error(transparent)]
    Precision(#[from] PrecisionError),
    /// An `/api/put` body that holds no usable data point list.
    #[error(transparent)]
    PutBody(#[from] PutBodyError),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
