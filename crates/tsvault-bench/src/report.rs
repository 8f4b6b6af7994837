//! The results table: each figure for each system, and tsvault's ratio to the best peer.

use serde_json::{Value, json};

/// Which direction is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// A table cell.
#[derive(Debug, Clone)]
pub enum Cell {
    Num(f64),
    Empty,
}

/// The largest share of a command's time its fixed cost may take for a speed net of it to
/// be shown.
pub const FIXED_SHARE_MAX: f64 = 0.8;

/// The systems' columns, in order.
pub const COLUMNS: [&str; 4] = ["tsvault", "VictoriaMetrics", "InfluxDB", "restic"];

/// One figure.
#[derive(Debug, Clone)]
pub struct Row {
    pub figure: String,
    pub unit: &'static str,
    pub better: Better,
    pub cells: [Cell; 4],
    /// The smallest difference the figure can show: values below it count as it in the
    /// ratio (a lag of 0.0001 s is not ten times better than one of 0.001 s).
    pub resolution: f64,
    /// Shown without a ratio: the figure does not compare the systems on equal terms.
    pub informational: bool,
}

impl Row {
    pub fn new(figure: impl Into<String>, unit: &'static str, better: Better) -> Row {
        Row {
            figure: figure.into(),
            unit,
            better,
            cells: [Cell::Empty, Cell::Empty, Cell::Empty, Cell::Empty],
            resolution: 0.0,
            informational: false,
        }
    }

    /// Shown, but without a ratio (see [`Row::informational`]).
    pub fn informational(mut self) -> Row {
        self.informational = true;
        self
    }

    /// The figure's resolution (see [`Row::resolution`]).
    pub fn with_resolution(mut self, resolution: f64) -> Row {
        self.resolution = resolution;
        self
    }

    pub fn set(mut self, column: usize, value: f64) -> Row {
        self.cells[column] = Cell::Num(value);
        self
    }

    /// A speed in MiB/s net of a fixed cost: `bytes` over `secs - fixed_secs`. Left empty
    /// when the fixed cost is more than [`FIXED_SHARE_MAX`] of the time: what is left is
    /// too small a difference of two medians to be a speed.
    pub fn set_net(self, column: usize, bytes: f64, secs: f64, fixed_secs: f64) -> Row {
        let net = secs - fixed_secs;
        if net < (1.0 - FIXED_SHARE_MAX) * secs {
            return self;
        }
        self.set(column, bytes / 1048576.0 / net)
    }

    /// tsvault's value divided by the best peer's.
    pub fn ratio(&self) -> Option<f64> {
        let Cell::Num(ours) = self.cells[0] else {
            return None;
        };
        if self.informational {
            return None;
        }
        let ours = ours.max(self.resolution);
        let peers = self.cells[1..].iter().filter_map(|c| match c {
            Cell::Num(v) => Some(v.max(self.resolution)),
            _ => None,
        });
        let best = match self.better {
            Better::Higher => peers.fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v)))),
            Better::Lower => peers.fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.min(v)))),
        }?;
        (best > 0.0).then(|| ours / best)
    }

    /// Whether tsvault leads (or ties) the best peer on this figure.
    pub fn leads(&self) -> Option<bool> {
        self.ratio().map(|r| match self.better {
            Better::Higher => r >= 1.0,
            Better::Lower => r <= 1.0,
        })
    }

    fn format(&self, v: f64) -> String {
        match self.unit {
            "samples/s" => format!("{} samples/s", thousands(v.round() as u64)),
            "bytes/sample" => format!("{v:.3}"),
            "ms" => format!("{v:.2} ms"),
            "s" if v < 10.0 => format!("{v:.3} s"),
            "s" => format!("{v:.2} s"),
            "MiB" => format!("{v:.1} MiB"),
            "MiB/s" => format!("{v:.1} MiB/s"),
            _ => format!("{v}"),
        }
    }

    pub fn to_json(&self) -> Value {
        let cells: serde_json::Map<String, Value> = COLUMNS
            .iter()
            .zip(&self.cells)
            .filter_map(|(name, c)| match c {
                Cell::Num(v) => Some((name.to_string(), json!(v))),
                Cell::Empty => None,
            })
            .collect();
        json!({"figure": self.figure, "unit": self.unit,
               "better": if self.better == Better::Higher { "higher" } else { "lower" },
               "values": cells, "ratio_to_best_peer": self.ratio(), "tsvault_leads": self.leads()})
    }
}

/// A markdown table of `rows`, each system's column headed by its name and `versions[i]`
/// (the version measured stands next to every figure).
pub fn markdown(rows: &[Row], versions: &[String; 4]) -> String {
    let mut s = String::from("| figure |");
    for (name, v) in COLUMNS.iter().zip(versions) {
        s.push_str(&format!(" {name} {v} |"));
    }
    s.push_str(" tsvault ÷ best peer |\n|---|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!("| {} |", r.figure));
        for c in &r.cells {
            let text = match c {
                Cell::Num(v) => r.format(*v),
                Cell::Empty => String::new(),
            };
            s.push_str(&format!(" {text} |"));
        }
        let ratio = match (r.ratio(), r.leads()) {
            (Some(1.0), Some(true)) => "1.00x (tie)".to_string(),
            (Some(x), Some(true)) => format!("{x:.2}x (leads)"),
            (Some(x), Some(false)) => format!("{x:.2}x (behind)"),
            _ => String::new(),
        };
        s.push_str(&format!(" {ratio} |\n"));
    }
    s
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_against_the_best_peer() {
        let r = Row::new("ingest", "samples/s", Better::Higher)
            .set(0, 300.0)
            .set(1, 200.0)
            .set(2, 100.0);
        assert_eq!(r.ratio(), Some(1.5));
        assert_eq!(r.leads(), Some(true));
        let r = Row::new("bytes", "bytes/sample", Better::Lower)
            .set(0, 1.0)
            .set(1, 0.5)
            .set(2, 2.0);
        assert_eq!(r.ratio(), Some(2.0));
        assert_eq!(r.leads(), Some(false));
        let r = Row::new("backup", "s", Better::Lower).set(1, 1.0);
        assert_eq!(r.ratio(), None);
        let r = Row::new("lag", "s", Better::Lower)
            .with_resolution(0.01)
            .set(0, 0.0001)
            .set(1, 0.001)
            .set(2, 1.0);
        assert_eq!(r.ratio(), Some(1.0), "both below the resolution: a tie");
        assert!(markdown(&[r], &Default::default()).contains("1.00x (tie)"));
        let r = Row::new("hwm", "MiB", Better::Lower)
            .informational()
            .set(0, 1.0)
            .set(1, 2.0);
        assert_eq!(r.ratio(), None, "no ratio on an informational row");
        let r = Row::new("speed", "MiB/s", Better::Higher)
            .set_net(0, 10.0 * 1048576.0, 2.0, 1.0)
            .set_net(1, 1048576.0, 1.0, 0.9);
        assert!(
            matches!(r.cells[0], Cell::Num(v) if v == 10.0),
            "10 MiB in 2 - 1 s"
        );
        assert!(
            matches!(r.cells[1], Cell::Empty),
            "fixed cost 90% of the time"
        );
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
