//! Running a parsed request against a [`Source`], in OpenTSDB 2.4's order: filter, group,
//! then per series downsample and rate, then interpolate and aggregate each group. A `where`
//! row filter (a tsvault extension) trims each series' raw samples before all of that.
//!
//! Like OpenTSDB, the engine reads a little more than the query range: from the start aligned
//! down to the downsample interval and then to the hour, to the end aligned up likewise (the
//! hour-long rows OpenTSDB scans). Points in that margin feed the first bucket, the first rate
//! and interpolation at the edges; only points within `[start, end]` are returned.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;
use tsvault_model::{ReadCap, Sample, SeriesKey};

use crate::aggregator::Aggregator;
use crate::downsample::{FillPolicy, Interval};
use crate::error::{Error, Result};
use crate::merge::{merge, union_timestamps};
use crate::rate::rate;
use crate::request::{QueryRequest, SubQuery, tag_map};
use crate::result::QueryResult;
use crate::row_filter::{RowFilter, retain_passing, tag_set_of};
use crate::source::{Source, SourceError};

/// One series' key and its `(ts, value)` points.
pub(crate) type Series = (SeriesKey, Vec<(i64, f64)>);

/// Series of a sub-query are checked and downsampled in parallel from this many on.
const PARALLEL_SERIES_MIN: usize = 16;

/// What one series read counts for in a request's samples budget, in samples: its key, its
/// buffers and its share of the answer. Measured: a query answering 200,000 series of 5
/// samples each peaked at about 1.2 KB a series; one answering 2 M samples of one series at
/// about 63 bytes a sample (`tsvault serve` release build, peak RSS less RSS before).
pub const SERIES_WEIGHT: usize = 20;

/// How the charge of [`SERIES_WEIGHT`] is named in a refusal.
pub(crate) const SERIES_CHARGE: &str = "the number of series read, each counted as 20 samples";
const _: () = assert!(SERIES_WEIGHT == 20, "SERIES_CHARGE names the weight");

/// OpenTSDB's row width, which its scans align to.
const ROW_SPAN_MS: i64 = 3_600_000;

/// Bounds on the work one request may do; exceeding one is an [`Error::LimitExceeded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most sub-queries in one request.
    pub sub_queries_max: usize,
    /// Most series one sub-query may match.
    pub series_max: usize,
    /// Most samples one request may read, plus the filled buckets it may synthesize, each
    /// series read counted as [`SERIES_WEIGHT`] samples more.
    pub samples_max: usize,
    /// Most data points one request may return.
    pub datapoints_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sub_queries_max: 1_000,
            series_max: 1_000_000,
            samples_max: 100_000_000,
            datapoints_max: 10_000_000,
        }
    }
}

impl Limits {
    /// Refuses a request of more than [`Limits::sub_queries_max`] sub-queries.
    pub(crate) fn check_sub_queries(&self, count: usize) -> Result<()> {
        if count > self.sub_queries_max {
            return Err(Error::TooManyQueries {
                count,
                limit: self.sub_queries_max,
            });
        }
        Ok(())
    }
}

/// Runs `request` against `source` with the default [`Limits`].
pub fn execute(source: &dyn Source, request: &QueryRequest) -> Result<Vec<QueryResult>> {
    execute_with_limits(source, request, &Limits::default())
}

/// Runs `request` against `source`, refusing work beyond `limits`.
pub fn execute_with_limits(
    source: &dyn Source,
    request: &QueryRequest,
    limits: &Limits,
) -> Result<Vec<QueryResult>> {
    limits.check_sub_queries(request.queries.len())?;
    let mut budget = Budget::new(limits);
    let mut results = Vec::new();
    // Sub-queries are read, checked and processed a few at a time in parallel (as many as
    // rayon has threads); each records what it used of the budget, which is then charged in
    // request order. So errors are those of a sequential run, and a sub-query that alone would
    // pass the budget left at the start of its batch is not processed at all.
    let width = rayon::current_num_threads().max(1);
    for (chunk_index, chunk) in request.queries.chunks(width).enumerate() {
        let samples_left = limits.samples_max.saturating_sub(budget.samples);
        let prepared: Vec<Result<Prepared>> = chunk
            .par_iter()
            .enumerate()
            .map(|(offset, sub)| {
                prepare_sub_query(
                    source,
                    request,
                    chunk_index * width + offset,
                    sub,
                    limits,
                    samples_left,
                )
            })
            .collect();
        for (offset, (sub, prepared)) in chunk.iter().zip(prepared).enumerate() {
            let index = chunk_index * width + offset;
            finish_sub_query(request, index, sub, prepared?, &mut budget, &mut results)?;
        }
    }
    Ok(results)
}

/// Each series' key, and its points after downsampling and rate, in the same order.
type Processed = (Vec<SeriesKey>, Vec<Vec<(i64, f64)>>);

/// A sub-query read, checked and (when its own use fits the budget) processed.
struct Prepared {
    /// What it read and would build, in the order a sequential run charges the budget.
    charges: Vec<(usize, &'static str)>,
    /// After the charges: an error, no series, or each series' key and processed points.
    outcome: Result<Option<Processed>>,
}

/// What a read may take of the request's [`Limits`]: the samples budget less `used` (what
/// the request was charged before it), and `series_max` less `series_used`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allowance {
    pub(crate) used: usize,
    pub(crate) series_used: usize,
    /// What is read, for a refusal ("the number of samples read").
    pub(crate) reading: &'static str,
}

impl Allowance {
    fn cap(self, limits: &Limits) -> ReadCap {
        ReadCap {
            series_max: limits.series_max.saturating_sub(self.series_used),
            budget: limits.samples_max.saturating_sub(self.used),
            series_weight: SERIES_WEIGHT,
        }
    }

    /// The request's refusal when the source stopped at the read's cap (the limit it reached,
    /// with what was read by then); `failed` words a source's own failure.
    fn refusal(
        self,
        e: SourceError,
        query: usize,
        limits: &Limits,
        failed: impl Fn(String) -> Error,
    ) -> Error {
        match e {
            SourceError::Failed(message) => failed(message),
            SourceError::Capped { series, .. } if series > self.cap(limits).series_max => {
                Error::LimitExceeded {
                    query,
                    what: if self.series_used > 0 {
                        format!(
                            "the number of series read by this request's queries together (more than {})",
                            limits.series_max
                        )
                    } else {
                        format!(
                            "the number of matching series (more than {})",
                            limits.series_max
                        )
                    },
                    limit: limits.series_max,
                    limit_name: "series_max",
                }
            }
            SourceError::Capped { series, samples } => Error::LimitExceeded {
                query,
                what: format!(
                    "{}, each series counted as {SERIES_WEIGHT} more (at least {} so far)",
                    self.reading,
                    self.used
                        .saturating_add(series.saturating_mul(SERIES_WEIGHT))
                        .saturating_add(samples)
                ),
                limit: limits.samples_max,
                limit_name: "samples_max",
            },
        }
    }
}

/// What the request has used so far of its [`Limits`].
pub(crate) struct Budget<'a> {
    pub(crate) samples: usize,
    datapoints: usize,
    limits: &'a Limits,
}

impl<'a> Budget<'a> {
    /// Nothing used yet.
    pub(crate) fn new(limits: &'a Limits) -> Self {
        Budget {
            samples: 0,
            datapoints: 0,
            limits,
        }
    }

    /// Charges `n` samples, described by `what`, to sub-query `query` (numbered from 1).
    pub(crate) fn take_samples(&mut self, query: usize, n: usize, what: &str) -> Result<()> {
        self.samples = self.samples.saturating_add(n);
        if self.samples > self.limits.samples_max {
            return Err(Error::LimitExceeded {
                query,
                what: format!("{what} ({} so far)", self.samples),
                limit: self.limits.samples_max,
                limit_name: "samples_max",
            });
        }
        Ok(())
    }

    fn take_datapoints(&mut self, query: usize, n: usize) -> Result<()> {
        self.datapoints = self.datapoints.saturating_add(n);
        if self.datapoints > self.limits.datapoints_max {
            return Err(Error::LimitExceeded {
                query,
                what: format!(
                    "the number of data points returned ({} so far)",
                    self.datapoints
                ),
                limit: self.limits.datapoints_max,
                limit_name: "datapoints_max",
            });
        }
        Ok(())
    }
}

/// The range OpenTSDB scans for a query: `[start, end)` in ms, hour-aligned.
fn scan_range(start_ms: i64, end_ms: i64, sub: &SubQuery) -> (i64, i64) {
    let interval_ms = match sub.downsample.as_ref().map(|d| d.interval) {
        Some(Interval::Ms(iv)) => iv,
        _ => 0,
    };
    let row_s = ROW_SPAN_MS / 1000;
    let start_s = start_ms.div_euclid(1000);
    let mut aligned_s = start_s;
    if interval_ms > 0 {
        aligned_s -= (start_s * 1000).rem_euclid(interval_ms) / 1000;
    }
    let scan_start_s = (aligned_s - aligned_s.rem_euclid(row_s)).max(0);
    // OpenTSDB bumps the end by a second, then moves to the next interval and row boundary.
    let end_s = end_ms.div_euclid(1000) + 1;
    let scan_end_s = if interval_ms > 0 {
        let next = end_s + (interval_ms - (end_s * 1000).rem_euclid(interval_ms)) / 1000;
        if next.rem_euclid(row_s) == 0 {
            next
        } else {
            next + row_s - next.rem_euclid(row_s)
        }
    } else {
        end_s + row_s - end_s.rem_euclid(row_s)
    };
    (scan_start_s * 1000, scan_end_s * 1000)
}

/// Reads the series of `metric` that pass `matches` over `[start_ms, end_ms)` and checks the
/// source's side of the contract (the right series, samples sorted by time), in parallel from
/// [`PARALLEL_SERIES_MIN`] series on; keeps each series' samples within the range, drops the
/// series left with none, and refuses more than [`Limits::series_max`] of them. `query`
/// (numbered from 1) names the sub-query in errors. The series come in the source's order.
/// Refuses a metric never written, as OpenTSDB does (a typo would otherwise look like a quiet
/// metric, which answers nothing); asked only when a read found no series, to keep the
/// name list off the common path.
pub(crate) fn known_metric(source: &dyn Source, query: usize, metric: &str) -> Result<()> {
    if source
        .metric_names()
        .binary_search_by(|m| m.as_str().cmp(metric))
        .is_err()
    {
        return Err(Error::UnknownMetric {
            query,
            metric: metric.to_owned(),
        });
    }
    Ok(())
}

pub(crate) fn read_series(
    source: &dyn Source,
    query: usize,
    metric: &str,
    matches: &(dyn Fn(&SeriesKey) -> bool + Sync),
    (start_ms, end_ms): (i64, i64),
    limits: &Limits,
    allowance: Allowance,
) -> Result<Vec<Series>> {
    let source_err = |message: String| {
        Error::Source(SourceError::Failed(format!(
            "query {query}, metric '{metric}': {message}"
        )))
    };
    let wanted = |key: &SeriesKey| key.metric() == metric && matches(key);
    let selected = source
        .select(metric, &wanted, start_ms, end_ms - 1, allowance.cap(limits))
        .map_err(|e| allowance.refusal(e, query, limits, source_err))?;
    let check = |(key, samples): (SeriesKey, Vec<Sample>)| {
        if !wanted(&key) {
            return Ok(None);
        }
        if samples.windows(2).any(|w| w[0].ts_ms >= w[1].ts_ms) {
            return Err(source_err(format!(
                "samples of {key} are not sorted by time"
            )));
        }
        let in_range: Vec<_> = samples
            .into_iter()
            .filter(|s| s.ts_ms >= start_ms && s.ts_ms < end_ms)
            .map(|s| (s.ts_ms, s.value))
            .collect();
        Ok((!in_range.is_empty()).then_some((key, in_range)))
    };
    let checked: Result<Vec<Option<Series>>> = if selected.len() >= PARALLEL_SERIES_MIN {
        selected.into_par_iter().map(check).collect()
    } else {
        selected.into_iter().map(check).collect()
    };
    let series: Vec<Series> = checked?.into_iter().flatten().collect();
    if series.len() > limits.series_max {
        return Err(Error::LimitExceeded {
            query,
            what: format!("the number of matching series ({})", series.len()),
            limit: limits.series_max,
            limit_name: "series_max",
        });
    }
    Ok(series)
}

/// Reads one sub-query over its scan range, checks the source's answer, applies the row
/// filter and downsamples and rates each series, unless what it reads and builds exceeds
/// `samples_left` (the budget is charged later, in order, by [`finish_sub_query`]). An `Err`
/// is a failure found before anything is charged.
fn prepare_sub_query(
    source: &dyn Source,
    request: &QueryRequest,
    index: usize,
    sub: &SubQuery,
    limits: &Limits,
    samples_left: usize,
) -> Result<Prepared> {
    let query = index + 1;
    let (scan_start_ms, scan_end_ms) = scan_range(request.start_ms, request.end_ms, sub);
    let mut series = read_series(
        source,
        query,
        &sub.metric,
        &|key| sub.matches(key),
        (scan_start_ms, scan_end_ms),
        limits,
        Allowance {
            used: limits.samples_max.saturating_sub(samples_left),
            series_used: 0,
            reading: "the number of samples read",
        },
    )?;
    let mut prepared = Prepared {
        charges: Vec::new(),
        outcome: Ok(None),
    };
    if series.is_empty() {
        known_metric(source, query, &sub.metric)?;
        return Ok(prepared);
    }
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let raw: usize = series.iter().map(|(_, s)| s.len()).sum();
    prepared.charges.push((raw, "the number of samples read"));
    prepared
        .charges
        .push((series.len().saturating_mul(SERIES_WEIGHT), SERIES_CHARGE));
    let over = |p: &Prepared| {
        p.charges
            .iter()
            .fold(0usize, |a, (n, _)| a.saturating_add(*n))
            > samples_left
    };
    if over(&prepared) {
        return Ok(prepared);
    }
    if let Some(row_filter) = &sub.row_filter {
        let allowance = Allowance {
            used: limits
                .samples_max
                .saturating_sub(samples_left)
                .saturating_add(prepared.charges.iter().map(|(n, _)| n).sum()),
            series_used: 0,
            reading: "the number of samples read, with the 'where' metric's",
        };
        match apply_row_filter(
            source,
            query,
            sub,
            row_filter,
            &mut series,
            (scan_start_ms, scan_end_ms),
            (limits, allowance),
        ) {
            Ok(read) => prepared
                .charges
                .push((read, "the number of samples read, with the 'where' metric's (each of its series counted as 20 samples)")),
            Err(e) => {
                prepared.outcome = Err(e);
                return Ok(prepared);
            }
        }
        if series.is_empty() || over(&prepared) {
            return Ok(prepared);
        }
    }
    if let Some(ds) = &sub.downsample {
        let per_series = ds.filled_buckets(scan_start_ms, scan_end_ms);
        let filled = usize::try_from(per_series)
            .unwrap_or(usize::MAX)
            .saturating_mul(series.len());
        prepared
            .charges
            .push((filled, "the number of filled downsample buckets"));
        if over(&prepared) {
            return Ok(prepared);
        }
    }

    let process = |(key, points): (SeriesKey, Vec<(i64, f64)>)| {
        (
            key,
            process_series(points, sub, scan_start_ms, scan_end_ms, request),
        )
    };
    prepared.outcome = Ok(Some(if series.len() >= PARALLEL_SERIES_MIN {
        series.into_par_iter().map(process).unzip()
    } else {
        series.into_iter().map(process).unzip()
    }));
    Ok(prepared)
}

/// Charges a prepared sub-query's use to the budget, then groups, interpolates and
/// aggregates its series into results.
fn finish_sub_query(
    request: &QueryRequest,
    index: usize,
    sub: &SubQuery,
    prepared: Prepared,
    budget: &mut Budget<'_>,
    results: &mut Vec<QueryResult>,
) -> Result<()> {
    let query = index + 1;
    for (n, what) in prepared.charges {
        budget.take_samples(query, n, what)?;
    }
    let Some((keys, mut points)) = prepared.outcome? else {
        return Ok(());
    };
    let nan_as_null = sub
        .downsample
        .as_ref()
        .is_some_and(|d| d.fill == FillPolicy::Null);
    for members in group(&keys, sub).into_values() {
        // Each series is in exactly one group, so its points can be moved out.
        let group_points: Vec<Vec<(i64, f64)>> = members
            .iter()
            .map(|&i| std::mem::take(&mut points[i]))
            .collect();
        let timestamps = union_timestamps(&group_points, request.start_ms, request.end_ms);
        budget.take_datapoints(query, timestamps.len())?;
        let dps = merge(
            &group_points,
            &timestamps,
            sub.aggregator,
            sub.rate.is_some(),
        );
        if let Some((ts_ms, _)) = dps.iter().find(|(_, v)| v.is_infinite()) {
            return Err(Error::Infinite {
                query,
                ts_ms: *ts_ms,
            });
        }
        let group_keys: Vec<&SeriesKey> = members.iter().map(|&i| &keys[i]).collect();
        let (tags, aggregate_tags) = group_tags(&group_keys);
        results.push(QueryResult {
            query_index: index,
            metric: sub.metric.clone(),
            tags,
            aggregate_tags,
            dps,
            nan_as_null,
        });
    }
    Ok(())
}

/// Keeps the raw samples of each series whose row passes `row_filter`, and drops the series
/// left with none; returns how many condition samples it read. The condition metric is read
/// in one [`Source::select`] over the same scan range, restricted to the tag sets of
/// `series`, then joined by a merge walk per series.
fn apply_row_filter(
    source: &dyn Source,
    query: usize,
    sub: &SubQuery,
    row_filter: &RowFilter,
    series: &mut Vec<(SeriesKey, Vec<(i64, f64)>)>,
    (scan_start_ms, scan_end_ms): (i64, i64),
    (limits, allowance): (&Limits, Allowance),
) -> Result<usize> {
    if row_filter.metric == sub.metric {
        // The condition series is the series itself: its own values decide.
        for (_, points) in series.iter_mut() {
            points.retain(|&(_, value)| row_filter.passes(value));
        }
        series.retain(|(_, points)| !points.is_empty());
        return Ok(0);
    }
    let source_err = |message: String| {
        let metric = &row_filter.metric;
        Error::Source(SourceError::Failed(format!(
            "query {query}, where metric '{metric}': {message}"
        )))
    };
    let wanted: HashMap<&str, usize> = series
        .iter()
        .enumerate()
        .map(|(i, (key, _))| (tag_set_of(key), i))
        .collect();
    let matches =
        |key: &SeriesKey| key.metric() == row_filter.metric && wanted.contains_key(tag_set_of(key));
    let selected = source
        .select(
            &row_filter.metric,
            &matches,
            scan_start_ms,
            scan_end_ms - 1,
            allowance.cap(limits),
        )
        .map_err(|e| allowance.refusal(e, query, limits, source_err))?;
    // As for the sub-query's own metric: a name never written is a mistake, not an empty row
    // set (a typo would otherwise silently return nothing).
    if selected.is_empty() {
        known_metric(source, query, &row_filter.metric)?;
    }
    let mut conditions: Vec<Vec<Sample>> = vec![Vec::new(); series.len()];
    let mut read = 0usize;
    for (key, mut samples) in selected {
        // Check the source's side of the contract, as for the sub-query's own metric.
        let slot = match wanted.get(tag_set_of(&key)) {
            Some(&i) if key.metric() == row_filter.metric => i,
            _ => continue,
        };
        if samples.windows(2).any(|w| w[0].ts_ms >= w[1].ts_ms) {
            return Err(source_err(format!(
                "samples of {key} are not sorted by time"
            )));
        }
        samples.retain(|s| s.ts_ms >= scan_start_ms && s.ts_ms < scan_end_ms);
        read = read
            .saturating_add(samples.len())
            .saturating_add(SERIES_WEIGHT);
        conditions[slot] = samples;
    }
    for ((_, points), condition) in series.iter_mut().zip(&conditions) {
        retain_passing(points, condition, row_filter);
    }
    series.retain(|(_, points)| !points.is_empty());
    Ok(read)
}

/// Downsamples, then rates, one series; drops what falls before the scan start.
fn process_series(
    points: Vec<(i64, f64)>,
    sub: &SubQuery,
    scan_start_ms: i64,
    scan_end_ms: i64,
    request: &QueryRequest,
) -> Vec<(i64, f64)> {
    let mut points = match &sub.downsample {
        Some(ds) => ds.apply(
            &points,
            scan_start_ms,
            scan_end_ms,
            request.start_ms,
            request.end_ms,
        ),
        None => points,
    };
    if let Some(options) = &sub.rate {
        points = rate(&points, options);
    }
    points.retain(|(ts, _)| *ts >= scan_start_ms);
    points
}

/// Groups series indexes by the values of the group-by tags; `none` keeps each series alone.
fn group(keys: &[SeriesKey], sub: &SubQuery) -> BTreeMap<Vec<String>, Vec<usize>> {
    let mut groups: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    if sub.aggregator == Aggregator::None {
        for (i, key) in keys.iter().enumerate() {
            groups.insert(vec![key.as_str().to_owned()], vec![i]);
        }
        return groups;
    }
    let group_keys = sub.group_by_keys();
    for (i, key) in keys.iter().enumerate() {
        // Every group-by key is filtered on, so matched series have it.
        let values: Vec<String> = group_keys
            .iter()
            .map(|k| key.tag(k).unwrap_or_default().to_owned())
            .collect();
        groups.entry(values).or_default().push(i);
    }
    groups
}

/// Tags shared with equal values by every series, and keys every series has with varying values.
fn group_tags(keys: &[&SeriesKey]) -> (BTreeMap<String, String>, Vec<String>) {
    let Some((first, rest)) = keys.split_first() else {
        return (BTreeMap::new(), Vec::new());
    };
    let mut tags = tag_map(first);
    let mut varying = Vec::new();
    tags.retain(|k, v| {
        if rest.iter().any(|key| key.tag(k).is_none()) {
            return false;
        }
        if rest.iter().any(|key| key.tag(k) != Some(v.as_str())) {
            varying.push(k.clone());
            return false;
        }
        true
    });
    (tags, varying)
}

#[cfg(test)]
mod tests;
