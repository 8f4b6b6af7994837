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
    pub batch_lines: usize,
}

/// One request body of line protocol (precision ms).
pub struct Batch {
    pub body: Vec<u8>,
}

/// The main load and the 1% more that follows it (for incremental backups).
pub struct Workload {
    pub shape: Shape,
    pub main: Vec<Batch>,
    pub extra: Vec<Batch>,
    /// Timestamps (one per host per step) in the main load.
    pub steps: i64,
    pub extra_steps: i64,
}

impl Workload {
    /// Generates the data: each host's ten fields are random walks clamped to [0, 100], as
    /// integers (TSBS) or as floats with two decimals (realistic gauges).
    pub fn generate(shape: Shape) -> Workload {
        let steps = shape.hours * 3600 / shape.interval_s;
        let extra_steps = (steps / 100).max(1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let tags: Vec<String> = (0..shape.hosts).map(host_tags).collect();
        let mut state: Vec<[f64; 10]> = (0..shape.hosts)
            .map(|_| std::array::from_fn(|_| rng.random_range(0.0..100.0)))
            .collect();
        let mut gen_range = |from: i64, to: i64| {
            let mut out = Vec::new();
            let mut body = Vec::new();
            let mut lines = 0;
            for step in from..to {
                let ts = START_MS + step * shape.interval_s * 1000;
                for (h, vals) in state.iter_mut().enumerate() {
                    body.extend_from_slice(b"cpu,");
                    body.extend_from_slice(tags[h].as_bytes());
                    for (f, v) in vals.iter_mut().enumerate() {
                        *v = (*v + rng.random_range(-1.0..1.0) + rng.random_range(-1.0..1.0))
                            .clamp(0.0, 100.0);
                        body.push(if f == 0 { b' ' } else { b',' });
                        let text = if shape.float_values {
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
                        });
                        lines = 0;
                    }
                }
            }
            if lines > 0 {
                out.push(Batch { body });
            }
            out
        };
        let main = gen_range(0, steps);
        let extra = gen_range(steps, steps + extra_steps);
        Workload {
            shape,
            main,
            extra,
            steps,
            extra_steps,
        }
    }

    /// Samples in the main load.
    pub fn samples(&self) -> u64 {
        self.steps as u64 * self.shape.hosts as u64 * FIELDS.len() as u64
    }

    /// Samples in the extra 1%.
    pub fn extra_samples(&self) -> u64 {
        self.extra_steps as u64 * self.shape.hosts as u64 * FIELDS.len() as u64
    }

    /// Bytes of line protocol in the main load.
    pub fn bytes(&self) -> usize {
        self.main.iter().map(|b| b.body.len()).sum()
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
