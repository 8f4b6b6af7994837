//! The tsvault HTTP server: the write protocols (InfluxDB line protocol, OpenTSDB `/api/put`),
//! the OpenTSDB query API, health, readiness and metrics, and the admin API for snapshots and
//! imports (online backup and restore) and for the backups the server takes itself into its
//! repository (`backups`), over one storage engine.
//!
//! It maps protocol requests onto `tsvault-ingest`, `tsvault-query` and `tsvault-storage`, and
//! each error onto the status code and body shape of the protocol it copies. It holds no data
//! of its own and never decides durability: a 2xx is sent only after the engine says durable.

mod admin;
mod app;
mod backups;
mod body;
mod error;
mod health;
mod http;
mod influx;
mod metrics;
mod opentsdb;
mod query_slots;

pub use app::{BodyLimits, ConnectionLimits, QueryLimits, ServerConfig, ServerError, Stop, serve};
pub use backups::BackupConfig;
