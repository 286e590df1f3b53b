//! The Prometheus metrics the coordinator and every worker keep alike,
//! about the attempts they saw end: how many by phase and outcome
//! ([`AttemptLabels`]), and what the succeeded ones did ([`WorkTotals`]).
//! Each side registers them in its own registry beside metrics of its own.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::Phase;
use crate::task::Counters;

/// A phase label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// `map` or `reduce`.
    pub phase: &'static str,
}

/// How an attempt ended, by phase.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// `map` or `reduce`.
    pub phase: &'static str,
    /// `succeeded`, `failed` or `lost`.
    pub outcome: &'static str,
}

/// Task durations: 10 ms to about 3 hours.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 2.5, 15)
}

/// The label of a phase.
pub fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Map => "map",
        Phase::Reduce => "reduce",
    }
}

/// What succeeded attempts did: their durations, guest time, and bytes
/// read, shuffled and written. The coordinator's and workers' metrics both
/// keep these.
#[derive(Debug, Clone)]
pub struct WorkTotals {
    durations: Family<PhaseLabel, Histogram>,
    guest_seconds: Family<PhaseLabel, Counter<f64, AtomicU64>>,
    input_bytes: Counter,
    shuffle_bytes: Counter,
    output_bytes: Counter,
}

impl WorkTotals {
    /// Register the totals in `registry`; `whose` says whose attempts, for
    /// the help texts.
    pub fn register(registry: &mut Registry, whose: &str) -> Self {
        let durations = Family::<PhaseLabel, Histogram>::new_with_constructor(|| Histogram::new(duration_buckets()));
        registry.register_with_unit(
            "attempt_duration",
            format!("Wall time of {whose} attempts"),
            Unit::Seconds,
            durations.clone(),
        );
        let guest_seconds = Family::<PhaseLabel, Counter<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "guest",
            format!("Time {whose} attempts spent in guest calls"),
            Unit::Seconds,
            guest_seconds.clone(),
        );
        let totals = WorkTotals {
            durations,
            guest_seconds,
            input_bytes: Counter::default(),
            shuffle_bytes: Counter::default(),
            output_bytes: Counter::default(),
        };
        for (name, help, counter) in [
            ("input", "Input bytes read by", &totals.input_bytes),
            ("shuffle", "Shuffle bytes written by", &totals.shuffle_bytes),
            ("output", "Output bytes written by", &totals.output_bytes),
        ] {
            registry.register_with_unit(name, format!("{help} {whose} attempts"), Unit::Bytes, counter.clone());
        }
        totals
    }

    /// Add a succeeded attempt of `phase` that took `seconds`, with its
    /// counters.
    pub fn add(&self, phase: &'static str, counters: &Counters, seconds: f64) {
        self.durations.get_or_create(&PhaseLabel { phase }).observe(seconds);
        // The counters are the engine's own (guests cannot write `wmr.`
        // names); a negative value would be our bug, and is not counted.
        let get = |name: &str| counters.get(name).copied().unwrap_or(0).max(0) as u64;
        self.guest_seconds
            .get_or_create(&PhaseLabel { phase })
            .inc_by(get(crate::task::GUEST_TIME_COUNTER) as f64 / 1000.0);
        self.input_bytes.inc_by(get("wmr.map.input.bytes"));
        self.shuffle_bytes.inc_by(get("wmr.shuffle.bytes"));
        self.output_bytes.inc_by(get("wmr.output.bytes"));
    }
}
