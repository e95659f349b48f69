//! The benchmark harness behind `tern-bench`.
//!
//! A suite measures Tern against an anchor in the same process and run (raw vodozemac, a plain
//! AEAD loop, a plain SQLite file…) and reports every figure with that baseline and the ratio
//! `value / baseline_value`. For throughputs a ratio near 1 means "as fast as the anchor"; for
//! latencies a ratio near 1 means "no slower than the anchor".

use std::time::{Duration, Instant};

use serde::Serialize;

mod crypto;
mod delivery;
mod devices;
mod group;
mod media;
mod paths;
mod redundancy;
mod relay;
mod store;

pub use relay::{ATTACK_ARG, flood_attacker};

/// Options every suite receives.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    /// Run tiny sizes only (for the smoke test in CI; figures are meaningless).
    pub quick: bool,
}

impl Opts {
    /// `full` normally, `quick` in quick mode.
    pub fn size(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }
}

/// One reported figure.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Name of the figure, `suite.thing`.
    pub bench: String,
    /// The measured value.
    pub value: f64,
    /// Its unit (`msg/s`, `MB/s`, `ms`, `bytes`).
    pub unit: String,
    /// Name of the baseline, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// The baseline's value, same unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_value: Option<f64>,
    /// `value / baseline_value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

/// The rows a run has produced, printed as they come in (JSON lines) or as a table at the end.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    json: bool,
}

impl Report {
    /// A report that prints JSON lines (`json`) or a table.
    pub fn new(json: bool) -> Self {
        Report {
            rows: Vec::new(),
            json,
        }
    }

    /// Records a figure without a baseline.
    pub fn value(&mut self, bench: &str, value: f64, unit: &str) {
        self.push(Row {
            bench: bench.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline: None,
            baseline_value: None,
            ratio: None,
        });
    }

    /// Records a figure with its baseline.
    pub fn compare(&mut self, bench: &str, value: f64, unit: &str, baseline: &str, base: f64) {
        let ratio = if base > 0.0 { Some(value / base) } else { None };
        self.push(Row {
            bench: bench.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline: Some(baseline.to_owned()),
            baseline_value: Some(base),
            ratio,
        });
    }

    /// Records that a figure could not be measured here and why.
    pub fn skipped(&mut self, bench: &str, why: &str) {
        if self.json {
            println!("{}", serde_json::json!({ "bench": bench, "skipped": why }));
        } else {
            eprintln!("{bench}: skipped ({why})");
        }
    }

    fn push(&mut self, row: Row) {
        if self.json {
            // A row always serializes; fall back to the debug form rather than lose it.
            match serde_json::to_string(&row) {
                Ok(line) => println!("{line}"),
                Err(_) => println!("{row:?}"),
            }
        } else {
            eprintln!("  measured {} = {:.2} {}", row.bench, row.value, row.unit);
        }
        self.rows.push(row);
    }

    /// The rows so far.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Prints the table (table mode only).
    pub fn finish(&self) {
        if self.json {
            return;
        }
        println!(
            "{:<34} {:>14} {:<8} {:<28} {:>14} {:>7}",
            "bench", "value", "unit", "baseline", "baseline", "ratio"
        );
        for r in &self.rows {
            println!(
                "{:<34} {:>14.2} {:<8} {:<28} {:>14} {:>7}",
                r.bench,
                r.value,
                r.unit,
                r.baseline.as_deref().unwrap_or("-"),
                r.baseline_value.map_or("-".into(), |v| format!("{v:.2}")),
                r.ratio.map_or("-".into(), |v| format!("{v:.3}")),
            );
        }
    }
}

/// Runs `f` and returns how long it took.
pub fn time<F: FnOnce()>(f: F) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// The median of some durations (sorted in place).
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Milliseconds, for the figures.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (0.0..=1.0) of some durations, sorted in place.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let idx = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

/// Runs the anchor and the candidate alternately `rounds` times, so drift in machine load hits
/// both alike, and returns the median time of each: `(candidate, anchor)`.
pub fn alternate<A: FnMut() -> Duration, B: FnMut() -> Duration>(
    rounds: usize,
    mut candidate: A,
    mut anchor: B,
) -> (Duration, Duration) {
    let mut c = Vec::with_capacity(rounds);
    let mut a = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        a.push(anchor());
        c.push(candidate());
    }
    (median(&mut c), median(&mut a))
}

/// Operations per second for `ops` operations in `d`.
pub fn per_sec(ops: usize, d: Duration) -> f64 {
    ops as f64 / d.as_secs_f64().max(1e-9)
}

/// A suite: a name and the function that runs it.
pub type Suite = (&'static str, fn(&Opts, &mut Report) -> anyhow::Result<()>);

/// Suites that run a part of another one (`relay`), left out of `all`.
pub const PARTS: &[&str] = &["relay-flood", "relay-deposits", "relay-push"];

/// Every suite, in the order `all` runs them.
pub const SUITES: &[Suite] = &[
    ("crypto", crypto::run),
    ("store", store::run),
    ("relay", relay::run),
    ("relay-flood", relay::run_flood),
    ("relay-deposits", relay::run_deposits),
    ("relay-push", relay::run_push),
    ("relay-writer", relay::run_writer),
    ("delivery", delivery::run),
    ("redundancy", redundancy::run),
    ("paths", paths::run),
    ("group", group::run),
    ("devices", devices::run),
    ("media", media::run),
];
