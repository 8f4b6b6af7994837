//! Parsers for the write protocols: InfluxDB line protocol and OpenTSDB `/api/put` JSON.
//!
//! Bytes in, `Point`s and per-line or per-point errors out. A bad line or point never stops
//! the others from parsing (partial-write semantics), and every error says where (line
//! number, field, tag, data point index) and what is wrong. No I/O, no HTTP, no storage.

mod line_protocol;
mod opentsdb;

pub use line_protocol::{
    LineError, LineProtocolOutcome, Precision, PrecisionError, parse_line_protocol,
};
pub use opentsdb::{PutBodyError, PutError, PutOutcome, parse_opentsdb_put};
