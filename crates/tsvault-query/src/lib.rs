//! The OpenTSDB 2.4 query language over a data source: parses `/api/query` requests (POST JSON
//! bodies and GET `m=` parameters), selects series through the [`Source`] trait, and applies
//! filters, grouping, downsampling, rates, interpolation and aggregation in OpenTSDB's order,
//! returning results in OpenTSDB's JSON shape. It also answers `/api/query/last` (each series'
//! last sample in a window), `/api/aggregators` and `/api/suggest`. Two extensions go beyond
//! OpenTSDB: a sub-query's `where` row filter, which keeps the samples whose row (same tag set
//! and timestamp) passes a condition on another metric; and `/api/query/last`'s `end`, which
//! asks for the last samples as of a time rather than now.
//!
//! It is not an HTTP layer (the server crate maps requests and errors to HTTP) and it never
//! writes: it reads through [`Source`] only, and refuses OpenTSDB's `delete` queries. The core
//! is pure: the current time comes in as a parameter, so every path can be tested by hand.
//!
//! Where OpenTSDB 2.4's code departs from its documentation through an evident bug, the engine
//! follows the documentation: a series stops taking part in a merge after its last point, the
//! first rate of a series is not computed against a phantom zero at the epoch, wildcards are
//! anchored globs, `ep*r3`/`ep*r7` use the estimators, `mimmax` substitutes the most
//! negative double, `<secs>.<frac>` reads the fraction as decimal, and `tags` are those every
//! series of a group shares. Values are doubles throughout (OpenTSDB keeps integer arithmetic
//! for integer data), and dates are read as UTC.

#![warn(missing_docs)]

mod aggregator;
mod downsample;
mod error;
mod executor;
mod filter;
mod last;
mod merge;
mod rate;
mod request;
mod result;
mod row_filter;
mod source;
mod suggest;
mod time;

pub use aggregator::{Aggregator, Estimation, Interpolation, aggregator_names};
pub use downsample::{Downsample, FillPolicy, Interval};
pub use error::{Error, Result};
pub use executor::{Limits, execute, execute_with_limits};
pub use filter::{Filter, FilterKind, iwildcard_matches};
pub use last::{
    BACK_SCAN_HOURS_DEFAULT, BACK_SCAN_HOURS_MAX, LastPoint, LastQuery, LastRequest, execute_last,
    last_points_to_json,
};
pub use rate::RateOptions;
pub use request::{QueryRequest, SubQuery};
pub use result::{QueryResult, results_to_bytes, results_to_json};
pub use row_filter::{CompareOp, RowFilter};
pub use source::{MemorySource, Selection, Source, SourceError};
pub use suggest::{SUGGEST_DEFAULT_MAX, suggest};
