//! The TSBS cpu-only workload, generated in memory so that every system receives the same bytes.

use rand::{Rng, SeedableRng};

/// The ten TSBS cpu fields, in TSBS's order.
pub const FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];

const REGIONS: [(&str, [&str; 3]); 3] = [
    ("us-east-1", ["us-east-1a", "us-east-1b", "us-east-1c"]),
    ("eu-west-1", ["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
    (
        "ap-southeast-2",
        ["ap-southeast-2a", "ap-southeast-2b", "ap-southeast-2c"],
    ),
];

/// 2016-01-01T00:00:00Z, TSBS's default start.
pub const START_MS: i64 = 1_451_606_400_000;

/// The scale and value type of a run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hosts: usize,
    pub hours: i64,
    pub interval_s: i64,
    pub float_values: bool,
    /// Floats at full precision (the walk plus a pseudo-random part below 10^-6), which no
    /// system compresses well: a store of many gigabytes from a load this machine can send
    /// in minutes (for the start-up figures).
    pub noise: bool,
    pub batch_lines: usize,
}

/// One request body of line protocol (precision ms).
pub struct Batch {
    pub body: Vec<u8>,
    /// Lines in `body` (one per host per step, ten samples each).
    pub lines: u64,
}

/// The main load and the 1% more that follows it (for incremental backups).
pub struct Workload {
    pub shape: Shape,
    /// The main load's batches; `None` when it is generated while it is sent
    /// ([`Workload::streamed`]).
    main: Option<Vec<Batch>>,
    pub extra: Vec<Batch>,
    /// Timestamps (one per host per step) in the main load.
    pub steps: i64,
    pub extra_steps: i64,
}

/// Steps of the main load generated at a time when it is streamed: an hour at 10 s.
const STREAM_STEPS: i64 = 360;
/// ...or fewer, so that a chunk holds at most this many lines (100,000 hosts make 36 M
/// lines an hour: gigabytes).
const STREAM_LINES_MAX: i64 = 1_000_000;

impl Workload {
    /// Generates the data: each host's ten fields are random walks clamped to [0, 100], as
    /// integers (TSBS) or as floats with two decimals (realistic gauges).
    pub fn generate(shape: Shape) -> Workload {
        let mut g = Generator::new(shape);
        let steps = g.steps;
        let main = g.batches(0, steps);
        Workload::with_main(g, Some(main))
    }

    /// The same data as [`Workload::generate`], but the main load is not held: each
    /// [`Workload::load_main`] generates it again while it is sent, so that a load larger
    /// than memory can be sent. The 1% more is held (the generator is run through the main
    /// load's values once, without writing them, to reach it).
    pub fn streamed(shape: Shape) -> Workload {
        let mut g = Generator::new(shape);
        g.skip(0, g.steps);
        Workload::with_main(g, None)
    }

    /// `g` has generated the main load; the extra 1% follows.
    fn with_main(mut g: Generator, main: Option<Vec<Batch>>) -> Workload {
        let (steps, extra_steps) = (g.steps, g.extra_steps);
        let extra = g.batches(steps, steps + extra_steps);
        Workload {
            shape: g.shape,
            main,
            extra,
            steps,
            extra_steps,
        }
    }

    /// Sends the main load to `url` with `clients` concurrent clients (see
    /// [`crate::systems::load`]), counting lines on `progress`; a streamed load is generated
    /// an hour of steps (or a million lines) at a time by another thread while the chunk
    /// before is sent. Returns how long the sending took, and the bytes sent.
    pub fn load_main(
        &self,
        url: &str,
        clients: usize,
        progress: &indicatif::ProgressBar,
    ) -> anyhow::Result<(std::time::Duration, u64)> {
        if let Some(main) = &self.main {
            let took = crate::systems::load(url, main, clients, progress)?;
            return Ok((took, main.iter().map(|b| b.body.len() as u64).sum()));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Batch>>(1);
        let shape = self.shape;
        std::thread::scope(|s| {
            s.spawn(move || {
                for chunk in Generator::new(shape).hours() {
                    if tx.send(chunk).is_err() {
                        return; // the sender failed; its error is reported below
                    }
                }
            });
            let (mut took, mut bytes) = (std::time::Duration::ZERO, 0);
            for chunk in rx {
                took += crate::systems::load(url, &chunk, clients, progress)?;
                bytes += chunk.iter().map(|b| b.body.len() as u64).sum::<u64>();
            }
            Ok((took, bytes))
        })
    }

    /// Lines in the main load (the unit of [`Workload::load_main`]'s progress).
    pub fn lines(&self) -> u64 {
        self.steps as u64 * self.shape.hosts as u64
    }

    /// Samples in the main load.
    pub fn samples(&self) -> u64 {
        self.lines() * FIELDS.len() as u64
    }

    /// Samples of the main load with timestamps in `[from_ms, to_ms)`.
    pub fn samples_in(&self, from_ms: i64, to_ms: i64) -> u64 {
        let step_ms = self.shape.interval_s * 1000;
        // Steps k with from <= START + k * step < to, within [0, steps).
        let step_at_or_after = |t: i64| ((t - START_MS).max(0) as u64).div_ceil(step_ms as u64);
        let first = step_at_or_after(from_ms).min(self.steps as u64);
        let end = step_at_or_after(to_ms).min(self.steps as u64);
        end.saturating_sub(first) * self.shape.hosts as u64 * FIELDS.len() as u64
    }

    /// Samples in the extra 1%.
    pub fn extra_samples(&self) -> u64 {
        self.extra_steps as u64 * self.shape.hosts as u64 * FIELDS.len() as u64
    }

    /// Bytes of line protocol in the main load, when it is held.
    pub fn bytes(&self) -> Option<usize> {
        self.main
            .as_ref()
            .map(|m| m.iter().map(|b| b.body.len()).sum())
    }

    /// One past the last timestamp of the main load.
    pub fn end_ms(&self) -> i64 {
        START_MS + self.steps * self.shape.interval_s * 1000
    }

    /// One past the last timestamp of the extra load.
    pub fn extra_end_ms(&self) -> i64 {
        self.end_ms() + self.extra_steps * self.shape.interval_s * 1000
    }
}

/// The random walks, step after step: the same seed gives the same data whether it is
/// written out ([`Generator::batches`]) or only advanced ([`Generator::skip`]).
#[derive(Clone)]
struct Generator {
    shape: Shape,
    steps: i64,
    extra_steps: i64,
    rng: rand::rngs::StdRng,
    tags: Vec<String>,
    state: Vec<[f64; 10]>,
}

impl Generator {
    fn new(shape: Shape) -> Generator {
        let steps = shape.hours * 3600 / shape.interval_s;
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let state = (0..shape.hosts)
            .map(|_| std::array::from_fn(|_| rng.random_range(0.0..100.0)))
            .collect();
        Generator {
            shape,
            steps,
            extra_steps: (steps / 100).max(1),
            rng,
            tags: (0..shape.hosts).map(host_tags).collect(),
            state,
        }
    }

    /// Host `h`'s ten values at the next step.
    fn advance(&mut self, h: usize) -> [f64; 10] {
        let vals = &mut self.state[h];
        for v in vals.iter_mut() {
            *v = (*v + self.rng.random_range(-1.0..1.0) + self.rng.random_range(-1.0..1.0))
                .clamp(0.0, 100.0);
        }
        *vals
    }

    /// The main load, [`STREAM_STEPS`] steps at a time (fewer for many hosts: at most
    /// [`STREAM_LINES_MAX`] lines).
    fn hours(mut self) -> impl Iterator<Item = Vec<Batch>> {
        (0..self.steps)
            .step_by(Self::stream_steps(self.shape.hosts) as usize)
            .map(move |from| {
                let to = (from + Self::stream_steps(self.shape.hosts)).min(self.steps);
                self.batches(from, to)
            })
    }

    /// Steps per streamed chunk for `hosts` hosts.
    fn stream_steps(hosts: usize) -> i64 {
        (STREAM_LINES_MAX / hosts.max(1) as i64).clamp(1, STREAM_STEPS)
    }

    /// Advances through steps `[from, to)` without writing them.
    fn skip(&mut self, from: i64, to: i64) {
        for _ in from..to {
            for h in 0..self.shape.hosts {
                self.advance(h);
            }
        }
    }

    /// Steps `[from, to)` as line protocol, `batch_lines` lines per batch.
    fn batches(&mut self, from: i64, to: i64) -> Vec<Batch> {
        let shape = self.shape;
        let mut out = Vec::new();
        let mut body = Vec::new();
        let mut lines = 0;
        for step in from..to {
            let ts = START_MS + step * shape.interval_s * 1000;
            for h in 0..shape.hosts {
                let vals = self.advance(h);
                body.extend_from_slice(b"cpu,");
                body.extend_from_slice(self.tags[h].as_bytes());
                for (f, v) in vals.iter().enumerate() {
                    body.push(if f == 0 { b' ' } else { b',' });
                    let text = if shape.noise {
                        let bits = splitmix64(((step as u64) << 32) ^ ((h as u64) << 4) ^ f as u64);
                        let part = (bits >> 11) as f64 / (1u64 << 53) as f64 * 1e-6;
                        format!("{}={}", FIELDS[f], v + part)
                    } else if shape.float_values {
                        format!("{}={:.2}", FIELDS[f], v)
                    } else {
                        format!("{}={}i", FIELDS[f], *v as i64)
                    };
                    body.extend_from_slice(text.as_bytes());
                }
                body.extend_from_slice(format!(" {ts}\n").as_bytes());
                lines += 1;
                if lines == shape.batch_lines {
                    out.push(Batch {
                        body: std::mem::take(&mut body),
                        lines: lines as u64,
                    });
                    lines = 0;
                }
            }
        }
        if lines > 0 {
            out.push(Batch {
                body,
                lines: lines as u64,
            });
        }
        out
    }
}

/// A 64-bit mix of `x` (SplitMix64's finalizer): the noise of a sample, the same whether the
/// load is held or streamed.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The TSBS tag set of host `i`.
fn host_tags(i: usize) -> String {
    let (region, dcs) = REGIONS[i % REGIONS.len()];
    format!(
        "hostname=host_{i},region={region},datacenter={},rack={},os=Ubuntu16.04LTS,arch=x64,team=SF,service={},service_version={},service_environment=production",
        dcs[i % 3],
        i % 100,
        i % 20,
        i % 2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(float_values: bool) -> Shape {
        Shape {
            hosts: 3,
            hours: 3,
            interval_s: 10,
            float_values,
            noise: false,
            batch_lines: 7,
        }
    }

    fn text(batches: &[Batch]) -> Vec<u8> {
        batches.iter().flat_map(|b| b.body.clone()).collect()
    }

    #[test]
    fn a_streamed_load_is_the_held_one_in_hours() {
        for float_values in [false, true] {
            let held = Workload::generate(shape(float_values));
            let streamed = Workload::streamed(shape(float_values));
            let chunks: Vec<Batch> = Generator::new(shape(float_values))
                .hours()
                .flatten()
                .collect();
            let main = held.main.as_deref().expect("held");
            assert_eq!(text(&chunks), text(main));
            assert_eq!(
                chunks.iter().map(|b| b.lines).sum::<u64>(),
                held.lines(),
                "lines counted per batch"
            );
            assert_eq!(
                text(&chunks).iter().filter(|&&b| b == b'\n').count() as u64,
                held.lines()
            );
            assert!(streamed.main.is_none() && streamed.bytes().is_none());
            assert_eq!(text(&streamed.extra), text(&held.extra));
            assert!(!held.extra.is_empty());
            assert_eq!(held.samples_in(START_MS, held.end_ms()), held.samples());
            assert_eq!(
                held.samples_in(START_MS - 1, held.end_ms() + 1),
                held.samples()
            );
            // The last hour of 3 hours at 10 s: 360 steps of 3 hosts' 10 fields.
            assert_eq!(
                held.samples_in(held.end_ms() - 3_600_000, held.end_ms()),
                360 * 3 * 10
            );
            // One step: [t, t + 1 ms) holds the samples at t, (t, t + 10 s) none.
            assert_eq!(held.samples_in(START_MS, START_MS + 1), 30);
            assert_eq!(held.samples_in(START_MS + 1, START_MS + 10_000), 0);
        }
    }
}
