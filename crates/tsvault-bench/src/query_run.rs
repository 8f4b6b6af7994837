//! The query phase: every TSBS query type on every running system, interleaved, timed, and
//! every answer compared.

use std::time::Instant;

use anyhow::{Context, ensure};
use rand::SeedableRng;

use crate::queries::{self, Params, QueryType};
use crate::report::{Better, Row};
use crate::rounds::balanced_order;
use crate::systems::{Kind, Running};
use crate::workload::Workload;
use crate::{Args, bar, http};

/// Each TSBS query type on each running system, the same random instances for every
/// system, every answer compared with tsvault's: a p50 and a p99 row per type (the largest
/// time, called so, when there are fewer than 1,000 runs per type). The instances of all
/// types are sent in one shuffled order, each to every system, the systems' order going
/// through every permutation in turn, so that no system or type always runs on a cache
/// another warmed or right after the same other.
pub(crate) fn queries(
    args: &Args,
    wl: &Workload,
    running: &[Running],
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    use rand::seq::SliceRandom;
    let params: Vec<Vec<Params>> = QueryType::ALL
        .into_iter()
        .enumerate()
        .map(|(qi, qt)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + qi as u64);
            (0..args.query_runs)
                .map(|_| Params::random(qt, &mut rng, wl))
                .collect()
        })
        .collect();
    let mut order: Vec<(usize, usize)> = (0..params.len())
        .flat_map(|qi| (0..args.query_runs).map(move |i| (qi, i)))
        .collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    let agents: Vec<ureq::Agent> = running.iter().map(|_| http::agent()).collect();
    // Latencies per query type and system (in `running`'s order).
    let mut lat = vec![vec![Vec::with_capacity(args.query_runs); running.len()]; params.len()];
    let mut points = vec![0usize; params.len()];
    let mut distinct: Vec<std::collections::BTreeSet<(i64, i64, Vec<usize>)>> =
        vec![Default::default(); params.len()];
    let pb = bar(order.len() as u64, "queries");
    for (k, &(qi, i)) in order.iter().enumerate() {
        let p = &params[qi][i];
        let qt = p.qt;
        distinct[qi].insert((p.start_ms, p.end_ms, p.hosts.clone()));
        let mut answers: Vec<Option<queries::Answer>> = vec![None; running.len()];
        for si in balanced_order(running.len(), k) {
            let sys = &running[si];
            let send = |req: &queries::Request| match req {
                queries::Request::Get { path, params } => {
                    http::get(&agents[si], &format!("{}{path}", sys.base), params)
                }
                queries::Request::Post { path, body } => http::post(
                    &agents[si],
                    &format!("{}{path}", sys.base),
                    "application/json",
                    body.as_bytes(),
                ),
            };
            let req = queries::request(sys.kind, p);
            let t = Instant::now();
            let text =
                send(&req).with_context(|| format!("{} on {}", qt.name(), sys.kind.name()))?;
            lat[qi][si].push(t.elapsed().as_secs_f64() * 1000.0);
            let mut answer = queries::parse_answer(sys.kind, p, &text).with_context(|| {
                format!(
                    "{} answer of {} to {p:?}: {}",
                    qt.name(),
                    sys.kind.name(),
                    text.chars().take(500).collect::<String>()
                )
            })?;
            if let Some(times) = queries::times_request(sys.kind, p) {
                let text = send(&times)?;
                answer = queries::with_times(sys.kind, answer, &text).with_context(|| {
                    format!("{} times of {} to {p:?}", qt.name(), sys.kind.name())
                })?;
            }
            answers[si] = Some(answer);
        }
        let answers: Vec<queries::Answer> = answers
            .into_iter()
            .map(|a| a.expect("every system answered"))
            .collect();
        points[qi] += answers[0].len();
        for (si, other) in answers.iter().enumerate().skip(1) {
            queries::compare(&answers[0], other).map_err(|e| {
                anyhow::anyhow!(
                    "{} answers differ between tsvault and {} for {p:?}: {e}",
                    qt.name(),
                    running[si].kind.name()
                )
            })?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let tail = if args.query_runs >= 1000 {
        "p99"
    } else {
        "max"
    };
    for (qi, qt) in QueryType::ALL.into_iter().enumerate() {
        ensure!(
            points[qi] > 0,
            "{}: every answer is empty, nothing was compared",
            qt.name()
        );
        let mut p50 = Row::new(format!("{} p50", qt.name()), "ms", Better::Lower);
        let mut high = Row::new(format!("{} {tail}", qt.name()), "ms", Better::Lower);
        for (si, sys) in running.iter().enumerate() {
            let col = Kind::ALL
                .iter()
                .position(|k| *k == sys.kind)
                .expect("a known system");
            let l = &mut lat[qi][si];
            l.sort_by(f64::total_cmp);
            let pct = |q: f64| l[((l.len() as f64 - 1.0) * q).round() as usize];
            let top = if tail == "p99" { pct(0.99) } else { pct(1.0) };
            say!(
                "{:<22} {:<16} p50 {:>9.2} ms  {tail} {:>9.2} ms",
                qt.name(),
                sys.kind.name(),
                pct(0.5),
                top
            );
            p50 = p50.set(col, pct(0.5));
            high = high.set(col, top);
        }
        rows.push(p50);
        rows.push(high);
    }
    notes.push(format!(
        "Answers: all {} query instances ({} per type; distinct instances per type: {}) answered the same numbers on {} ({} data points compared with each peer; lastpoint compared on each series' last time and value). The instances of all types were sent in one shuffled order, each to every system, the systems' order through every permutation in turn (a balanced Latin square); {tail} is {}.",
        order.len(),
        args.query_runs,
        QueryType::ALL
            .iter()
            .zip(&distinct)
            .map(|(qt, d)| format!("{} {}", qt.name(), d.len()))
            .collect::<Vec<_>>()
            .join(", "),
        running
            .iter()
            .map(|s| s.kind.name())
            .collect::<Vec<_>>()
            .join(", "),
        points.iter().sum::<usize>(),
        if tail == "p99" {
            "the 99th percentile of each type's times"
        } else {
            "the largest of each type's times (fewer than 1,000 runs: no real 99th percentile)"
        }
    ));
    Ok(())
}
