//! The TSBS query types, written in each system's own language, and their answers reduced to
//! one comparable form.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use rand::Rng;
use rand::seq::index::sample;
use serde_json::{Value, json};

use crate::systems::{Kind, prom_time};
use crate::workload::{FIELDS, START_MS, Workload};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// The TSBS cpu-only query types measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    /// Max of usage_user of one host over 1 h, per minute.
    SingleGroupby111,
    /// Max of five fields of one host over 12 h, per minute.
    SingleGroupby5112,
    /// Max of all ten fields over 8 hosts (merged) over 8 h, per hour.
    CpuMaxAll8,
    /// Mean usage_user per host per hour over 12 h, every host.
    DoubleGroupby1,
    /// Every field of the rows of one host over 12 h where usage_user > 90.
    HighCpu1,
    /// The last sample (time and value) of every series as of a random time, looking back
    /// at most an hour.
    Lastpoint,
}

impl QueryType {
    pub const ALL: [QueryType; 6] = [
        QueryType::SingleGroupby111,
        QueryType::SingleGroupby5112,
        QueryType::CpuMaxAll8,
        QueryType::DoubleGroupby1,
        QueryType::HighCpu1,
        QueryType::Lastpoint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QueryType::SingleGroupby111 => "single-groupby-1-1-1",
            QueryType::SingleGroupby5112 => "single-groupby-5-1-12",
            QueryType::CpuMaxAll8 => "cpu-max-all-8",
            QueryType::DoubleGroupby1 => "double-groupby-1",
            QueryType::HighCpu1 => "high-cpu-1",
            QueryType::Lastpoint => "lastpoint",
        }
    }

    fn fields(self) -> &'static [&'static str] {
        match self {
            QueryType::SingleGroupby111 | QueryType::DoubleGroupby1 => &FIELDS[..1],
            QueryType::SingleGroupby5112 => &FIELDS[..5],
            _ => &FIELDS,
        }
    }

    /// Bucket width, for the bucketed types.
    fn bucket_ms(self) -> Option<i64> {
        match self {
            QueryType::SingleGroupby111 | QueryType::SingleGroupby5112 => Some(MINUTE),
            QueryType::CpuMaxAll8 | QueryType::DoubleGroupby1 => Some(HOUR),
            QueryType::HighCpu1 | QueryType::Lastpoint => None,
        }
    }

    /// Whether answers are per host (otherwise one host, or hosts merged).
    fn per_host(self) -> bool {
        matches!(self, QueryType::DoubleGroupby1 | QueryType::Lastpoint)
    }
}

/// One instance of a query type: the hosts and the time range `[start_ms, end_ms)`.
#[derive(Debug, Clone)]
pub struct Params {
    pub qt: QueryType,
    pub hosts: Vec<usize>,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Params {
    /// A random instance: random hosts, as TSBS draws them, and a random window anywhere in
    /// the data, aligned to its buckets (a minute for the per-minute types, an hour for the
    /// hourly ones and high-cpu; any minute for lastpoint's end), so that a longer data set
    /// gives as many different windows.
    pub fn random(qt: QueryType, rng: &mut impl Rng, wl: &Workload) -> Params {
        let n_hosts = wl.shape.hosts;
        let end = wl.end_ms();
        let window = |rng: &mut dyn rand::RngCore, length: i64, align: i64| {
            let latest = (end - START_MS - length) / align;
            let s = START_MS + rng.random_range(0..=latest.max(0)) * align;
            (s, (s + length).min(end))
        };
        let one = |rng: &mut dyn rand::RngCore| vec![rng.random_range(0..n_hosts)];
        let (hosts, (start_ms, end_ms)) = match qt {
            QueryType::SingleGroupby111 => (one(rng), window(rng, HOUR, MINUTE)),
            QueryType::SingleGroupby5112 => (one(rng), window(rng, 12 * HOUR, MINUTE)),
            QueryType::HighCpu1 => (one(rng), window(rng, 12 * HOUR, HOUR)),
            QueryType::CpuMaxAll8 => {
                let hosts = sample(rng, n_hosts, 8.min(n_hosts)).into_vec();
                (hosts, window(rng, 8 * HOUR, HOUR))
            }
            QueryType::DoubleGroupby1 => ((0..n_hosts).collect(), window(rng, 12 * HOUR, HOUR)),
            QueryType::Lastpoint => {
                // As of a minute anywhere after the first hour, the hour before it.
                let (_, at) = window(rng, HOUR, MINUTE);
                ((0..n_hosts).collect(), ((at - HOUR).max(START_MS), at))
            }
        };
        Params {
            qt,
            hosts,
            start_ms,
            end_ms,
        }
    }

    fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| format!("host_{h}")).collect()
    }
}

/// A request in one system's language.
pub enum Request {
    Get {
        path: &'static str,
        params: Vec<(&'static str, String)>,
    },
    Post {
        path: &'static str,
        body: String,
    },
}

/// The query in `kind`'s own language: tsvault's `/api/query` (OpenTSDB), VictoriaMetrics'
/// PromQL (`/api/v1/query_range`, with `nocache=1` so its result cache does not answer
/// repeated ranges), InfluxDB's InfluxQL.
pub fn request(kind: Kind, p: &Params) -> Request {
    let qt = p.qt;
    let fields = qt.fields();
    let hosts = p.host_names();
    let (s, e) = (p.start_ms, p.end_ms);
    match kind {
        Kind::Tsvault => {
            let host_filter = || json!([{"type": "literal_or", "tagk": "hostname", "filter": hosts.join("|"), "groupBy": false}]);
            let sub = |f: &str| -> Value {
                let metric = format!("cpu_{f}");
                match qt {
                    QueryType::SingleGroupby111
                    | QueryType::SingleGroupby5112
                    | QueryType::CpuMaxAll8 => {
                        let ds = format!(
                            "{}-max",
                            if qt == QueryType::CpuMaxAll8 {
                                "1h"
                            } else {
                                "1m"
                            }
                        );
                        json!({"metric": metric, "aggregator": "max", "downsample": ds, "filters": host_filter()})
                    }
                    QueryType::DoubleGroupby1 => {
                        json!({"metric": metric, "aggregator": "avg", "downsample": "1h-avg",
                        "filters": [{"type": "wildcard", "tagk": "hostname", "filter": "*", "groupBy": true}]})
                    }
                    QueryType::HighCpu1 => {
                        json!({"metric": metric, "aggregator": "none", "filters": host_filter(),
                        "where": {"metric": "cpu_usage_user", "op": "gt", "value": 90}})
                    }
                    QueryType::Lastpoint => unreachable!("lastpoint asks /api/query/last"),
                }
            };
            if qt == QueryType::Lastpoint {
                // OpenTSDB's last-point query: each series' last sample with its own time.
                let body = json!({"end": e - 1, "backScan": (e - s) / HOUR,
                    "queries": fields.iter().map(|f| json!({"metric": format!("cpu_{f}")})).collect::<Vec<_>>()});
                return Request::Post {
                    path: "/api/query/last",
                    body: body.to_string(),
                };
            }
            let body = json!({"start": s, "end": e - 1, "msResolution": true,
                "queries": fields.iter().map(|f| sub(f)).collect::<Vec<_>>()});
            Request::Post {
                path: "/api/query",
                body: body.to_string(),
            }
        }
        Kind::Victoria => {
            let names = format!("cpu_({})", fields.join("|"));
            let host_re = hosts.join("|");
            let (query, range) = match qt {
                QueryType::SingleGroupby111 => (
                    format!("max(max_over_time(cpu_usage_user{{hostname=\"{host_re}\"}}[1m]))"),
                    true,
                ),
                QueryType::SingleGroupby5112 => (
                    format!(
                        "max_over_time({{__name__=~\"{names}\",hostname=\"{host_re}\"}}[1m]) keep_metric_names"
                    ),
                    true,
                ),
                QueryType::CpuMaxAll8 => (
                    format!(
                        "max by (__name__) (max_over_time({{__name__=~\"{names}\",hostname=~\"{host_re}\"}}[1h]) keep_metric_names)"
                    ),
                    true,
                ),
                QueryType::DoubleGroupby1 => (
                    "avg by (hostname) (avg_over_time(cpu_usage_user[1h]))".to_string(),
                    true,
                ),
                QueryType::HighCpu1 => (
                    format!(
                        "{{__name__=~\"{names}\",hostname=\"{host_re}\"}} and on() (cpu_usage_user{{hostname=\"{host_re}\"}} > 90)"
                    ),
                    true,
                ),
                QueryType::Lastpoint => (
                    format!("last_over_time({{__name__=~\"{names}\"}}[1h]) keep_metric_names"),
                    false,
                ),
            };
            if range {
                // A bucket [b, b + w) is PromQL's window (t - w, t] at t = b + w - 1 ms; the
                // raw rows of high-cpu are read at each sample's own timestamp.
                let (first, step) = match qt.bucket_ms() {
                    Some(w) => (s + w - 1, w),
                    None => (s, 10_000),
                };
                Request::Get {
                    path: "/api/v1/query_range",
                    params: vec![
                        ("query", query),
                        ("start", prom_time(first)),
                        ("end", prom_time(e - 1)),
                        ("step", format!("{step}ms")),
                        ("nocache", "1".into()),
                    ],
                }
            } else {
                Request::Get {
                    path: "/api/v1/query",
                    params: vec![
                        ("query", query),
                        ("time", prom_time(e - 1)),
                        ("nocache", "1".into()),
                    ],
                }
            }
        }
        Kind::Influx => {
            let time = format!("time >= {s}ms AND time < {e}ms");
            let host_or = hosts
                .iter()
                .map(|h| format!("hostname = '{h}'"))
                .collect::<Vec<_>>()
                .join(" OR ");
            let select = |agg: &str| {
                fields
                    .iter()
                    .map(|f| format!("{agg}({f}) AS {f}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let q = match qt {
                QueryType::SingleGroupby111 | QueryType::SingleGroupby5112 => format!(
                    "SELECT {} FROM cpu WHERE ({host_or}) AND {time} GROUP BY time(1m)",
                    select("max")
                ),
                QueryType::CpuMaxAll8 => format!(
                    "SELECT {} FROM cpu WHERE ({host_or}) AND {time} GROUP BY time(1h)",
                    select("max")
                ),
                QueryType::DoubleGroupby1 => format!(
                    "SELECT {} FROM cpu WHERE {time} GROUP BY time(1h), hostname",
                    select("mean")
                ),
                QueryType::HighCpu1 => {
                    format!("SELECT * FROM cpu WHERE usage_user > 90 AND ({host_or}) AND {time}")
                }
                // One statement per field: `last(*)` stamps every row with the window's start,
                // a single selector with its sample's own time.
                // Its rows are stamped with the window's start: the times come from
                // `times_request`.
                QueryType::Lastpoint => format!("SELECT last(*) FROM cpu WHERE {time} GROUP BY *"),
            };
            Request::Get {
                path: "/query",
                params: vec![("db", "bench".into()), ("epoch", "ms".into()), ("q", q)],
            }
        }
    }
}

/// For lastpoint on a peer whose cheapest query for the last values answers them stamped with
/// another time (VictoriaMetrics' `last_over_time`: the evaluation time; InfluxDB's `last(*)`:
/// the window's start): the untimed query of each series' last sample's time
/// (`tlast_over_time`; one `last(field)` statement per field), so that its answer is compared
/// on times too (see [`with_times`]). tsvault's `/api/query/last` answers both at once.
pub fn times_request(kind: Kind, p: &Params) -> Option<Request> {
    if p.qt != QueryType::Lastpoint {
        return None;
    }
    let fields = p.qt.fields();
    match kind {
        Kind::Tsvault => None,
        Kind::Victoria => {
            let names = format!("cpu_({})", fields.join("|"));
            Some(Request::Get {
                path: "/api/v1/query",
                params: vec![
                    (
                        "query",
                        format!("tlast_over_time({{__name__=~\"{names}\"}}[1h]) keep_metric_names"),
                    ),
                    ("time", prom_time(p.end_ms - 1)),
                    ("nocache", "1".into()),
                ],
            })
        }
        Kind::Influx => {
            let time = format!("time >= {}ms AND time < {}ms", p.start_ms, p.end_ms);
            let q = fields
                .iter()
                .map(|f| format!("SELECT last({f}) AS {f} FROM cpu WHERE {time} GROUP BY *"))
                .collect::<Vec<_>>()
                .join("; ");
            Some(Request::Get {
                path: "/query",
                params: vec![("db", "bench".into()), ("epoch", "ms".into()), ("q", q)],
            })
        }
    }
}

/// `answer` (a peer's lastpoint, times unknown: -1) with each series' time taken from
/// `times`, `kind`'s answer to [`times_request`]; a series in one and not the other is an
/// error.
pub fn with_times(kind: Kind, answer: Answer, times: &str) -> anyhow::Result<Answer> {
    let v: Value = serde_json::from_str(times).context("times answer is not JSON")?;
    let mut at = BTreeMap::new();
    match kind {
        Kind::Victoria => {
            ensure!(v["status"] == "success", "times: status {}", v["status"]);
            for r in v["data"]["result"].as_array().context("times: no result")? {
                let field = field_of(r["metric"]["__name__"].as_str().context("times: no name")?)?;
                let secs: f64 = r["value"][1].as_str().context("times: no value")?.parse()?;
                at.insert(
                    (hostname(&r["metric"])?, field),
                    (secs * 1000.0).round() as i64,
                );
            }
        }
        // One `last(field)` per field: each series' own time, in its field's statement.
        _ => {
            for ((host, field, t), _) in parse(kind, QueryType::Lastpoint, &v)? {
                at.insert((host, field), t);
            }
        }
    }
    ensure!(
        at.len() == answer.len(),
        "{} series have a last time, {} a last value",
        at.len(),
        answer.len()
    );
    answer
        .into_iter()
        .map(|((host, field, _), value)| {
            let t = *at
                .get(&(host.clone(), field.clone()))
                .with_context(|| format!("no last time for {field} of {host}"))?;
            Ok(((host, field, t), value))
        })
        .collect()
}

/// An answer reduced to (host or "", field, bucket start or sample time) → value; -1 for
/// the time of a VictoriaMetrics lastpoint until [`with_times`].
pub type Answer = BTreeMap<(String, String, i64), f64>;

/// Reduces `kind`'s answer to `p` to an [`Answer`].
pub fn parse_answer(kind: Kind, p: &Params, text: &str) -> anyhow::Result<Answer> {
    let v: Value = serde_json::from_str(text).context("answer is not JSON")?;
    parse(kind, p.qt, &v)
}

/// [`parse_answer`] of JSON already read.
fn parse(kind: Kind, qt: QueryType, v: &Value) -> anyhow::Result<Answer> {
    let mut out = Answer::new();
    match kind {
        Kind::Tsvault if qt == QueryType::Lastpoint => {
            for r in v.as_array().context("not an array")? {
                let field = field_of(r["metric"].as_str().context("no metric")?)?;
                let host = hostname(&r["tags"])?;
                let t = r["timestamp"].as_i64().context("no timestamp")?;
                let val: f64 = r["value"]
                    .as_str()
                    .context("value not a string")?
                    .parse()
                    .context("value not a number")?;
                out.insert((host, field, t), val);
            }
        }
        Kind::Tsvault => {
            for r in v.as_array().context("not an array")? {
                let field = field_of(r["metric"].as_str().context("no metric")?)?;
                let host = if qt.per_host() {
                    hostname(&r["tags"])?
                } else {
                    String::new()
                };
                for (t, val) in r["dps"].as_object().context("no dps")? {
                    let t: i64 = t.parse().context("bad timestamp")?;
                    let val = val.as_f64().context("value not a number")?;
                    out.insert((host.clone(), field.clone(), t), val);
                }
            }
        }
        Kind::Victoria => {
            ensure!(v["status"] == "success", "status {}", v["status"]);
            for r in v["data"]["result"].as_array().context("no result")? {
                let field = match r["metric"]["__name__"].as_str() {
                    Some(n) => field_of(n)?,
                    None => {
                        ensure!(qt.fields().len() == 1, "series without a name: {r}");
                        qt.fields()[0].to_string()
                    }
                };
                let host = if qt.per_host() {
                    r["metric"]["hostname"]
                        .as_str()
                        .context("no hostname")?
                        .to_string()
                } else {
                    String::new()
                };
                let points: Vec<&Value> = match r["values"].as_array() {
                    Some(vals) => vals.iter().collect(),
                    None => vec![&r["value"]],
                };
                for pt in points {
                    let t_ms = (pt[0].as_f64().context("bad time")? * 1000.0).round() as i64;
                    let val: f64 = pt[1].as_str().context("bad value")?.parse()?;
                    let t = match qt.bucket_ms() {
                        Some(w) => t_ms + 1 - w,
                        None if qt == QueryType::Lastpoint => -1, // see with_times
                        None => t_ms,
                    };
                    out.insert((host.clone(), field.clone(), t), val);
                }
            }
        }
        Kind::Influx => {
            // One result per statement (lastpoint has one per field).
            for res in v["results"].as_array().context("no results")? {
                ensure!(res["error"].is_null(), "error: {}", res["error"]);
                for s in res["series"].as_array().into_iter().flatten() {
                    let host = if qt.per_host() {
                        hostname(&s["tags"])?
                    } else {
                        String::new()
                    };
                    let cols: Vec<&str> = s["columns"]
                        .as_array()
                        .context("no columns")?
                        .iter()
                        .map(|c| c.as_str().unwrap_or(""))
                        .collect();
                    for row in s["values"].as_array().context("no values")? {
                        let row = row.as_array().context("bad row")?;
                        let t = row[0].as_i64().context("bad time")?;
                        for (c, val) in cols.iter().zip(row).skip(1) {
                            // `last(*)` names its columns last_<field>, its rows stamped with
                            // the window's start (see times_request).
                            let (f, t) = match c.strip_prefix("last_") {
                                Some(f) => (f, -1),
                                None => (*c, t),
                            };
                            if !f.starts_with("usage_") {
                                continue; // a tag column of SELECT *
                            }
                            if let Some(val) = val.as_f64() {
                                out.insert((host.clone(), f.to_string(), t), val);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The `hostname` of a tsvault or InfluxDB series' tags.
fn hostname(tags: &Value) -> anyhow::Result<String> {
    Ok(tags["hostname"]
        .as_str()
        .context("no hostname tag")?
        .to_string())
}

fn field_of(metric: &str) -> anyhow::Result<String> {
    Ok(metric
        .strip_prefix("cpu_")
        .with_context(|| format!("unexpected metric {metric}"))?
        .to_string())
}

/// Ok if both answers hold the same keys and values equal to 1e-9 relative; else the first
/// differences.
pub fn compare(a: &Answer, b: &Answer) -> Result<(), String> {
    let mut diffs = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => diffs.push(format!("{k:?}: {va} vs missing")),
            Some(vb) if !close(*va, *vb) => diffs.push(format!("{k:?}: {va} vs {vb}")),
            Some(_) => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            diffs.push(format!("{k:?}: missing vs {vb}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        let n = diffs.len();
        diffs.truncate(5);
        Err(format!(
            "{n} differences ({} vs {} points), first: {}",
            a.len(),
            b.len(),
            diffs.join("; ")
        ))
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}
