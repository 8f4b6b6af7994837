//! Loading one system and measuring it: acknowledged, visible, settled, its memory and its
//! size on disk.

use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::bar;
use crate::systems::{self, Running, dir_size};
use crate::workload::{self, Workload};

/// What one load of one system measured.
#[derive(Debug, Clone)]
pub(crate) struct LoadMeasure {
    pub(crate) sent_bytes: u64,
    /// From the first request to the last acknowledgement.
    pub(crate) acked_s: f64,
    /// From the last acknowledgement to the start of the first count that sees every sample
    /// of the last hour.
    pub(crate) lag_s: f64,
    /// From the last acknowledgement to the last change of the settle.
    pub(crate) settle_s: f64,
    /// Through ingest and settle.
    pub(crate) memory: systems::PeakMemory,
    /// After a forced merge.
    pub(crate) size: systems::DirSize,
}

/// Loads the main load into `sys` and measures it: acknowledged, the lag until the last
/// hour of data is queryable (a count of that hour), settled (the system's own flush and
/// background merges, timed to the last change), peak memory at that point; then, untimed, a
/// forced merge into the final form, its size, and a count of every sample.
pub(crate) fn load_one(
    sys: &Running,
    wl: &Workload,
    clients: usize,
) -> anyhow::Result<LoadMeasure> {
    let n = wl.samples();
    let name = sys.kind.name();
    let pb = bar(wl.lines(), &format!("loading {name}"));
    let t0 = Instant::now();
    let (_, sent_bytes) = wl.load_main(&sys.write_url(), clients, &pb)?;
    let acked = t0.elapsed();
    pb.finish_and_clear();
    // Queryable: once the system says so, checked by counting the last hour of samples;
    // should the count fall short, the start of the first count that sees all of them.
    let hour_from = (wl.end_ms() - 3_600_000).max(workload::START_MS);
    let hour_samples = wl.samples_in(hour_from, wl.end_ms());
    sys.wait_searchable()?;
    let visible = loop {
        let t = t0.elapsed();
        let got = sys.count_samples(hour_from, wl.end_ms())?;
        if got == hour_samples {
            break t;
        }
        ensure!(
            got < hour_samples,
            "{name} holds {got} samples in the last hour, more than the {hour_samples} written"
        );
        ensure!(
            t0.elapsed() < acked + Duration::from_secs(300),
            "{name} shows {got} of {hour_samples} samples of the last hour 5 minutes after the last acknowledgement"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let settle_from = t0.elapsed();
    let settled = settle_from + sys.settle_with(false)?;
    let memory = sys.peak_memory();
    sys.settle()?;
    let size = dir_size(&sys.data_dir)?;
    let got = sys.count_samples(workload::START_MS, wl.end_ms())?;
    ensure!(got == n, "{name} holds {got} of the {n} samples written");
    Ok(LoadMeasure {
        sent_bytes,
        acked_s: acked.as_secs_f64(),
        lag_s: (visible - acked).as_secs_f64(),
        settle_s: (settled - acked).as_secs_f64(),
        memory,
        size,
    })
}
