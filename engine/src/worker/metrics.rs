//! A worker's Prometheus metrics (`wmr worker --metrics ADDR`): the attempts
//! it ran by phase and outcome, their durations, the time spent in guests,
//! the bytes read, shuffled and written, and its slots, running attempts
//! and whether it is draining. No label carries a job id.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::TaskId;
use crate::attempt_metrics::{AttemptLabels, WorkTotals, phase_label};
use crate::protocol::Outcome;

/// A worker's metrics.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    attempts: Family<AttemptLabels, Counter>,
    totals: WorkTotals,
    /// Attempts running now.
    pub running: Gauge,
    /// Task slots.
    pub slots: Gauge,
    /// 1 while draining (after SIGTERM).
    pub draining: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wmr_worker");
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "attempts",
            "Attempts this worker ran, by phase and outcome (succeeded, failed, or stopped: cancelled, superseded or handed back)",
            attempts.clone(),
        );
        let totals = WorkTotals::register(&mut registry, "this worker's succeeded");
        let running = Gauge::default();
        registry.register("running_attempts", "Attempts running now", running.clone());
        let slots = Gauge::default();
        registry.register("slots", "Task slots", slots.clone());
        let draining = Gauge::default();
        registry.register(
            "draining",
            "1 while the worker drains (after SIGTERM): it finishes its attempts and takes no more",
            draining.clone(),
        );
        WorkerMetrics {
            registry,
            attempts,
            totals,
            running,
            slots,
            draining,
        }
    }

    /// Count an attempt of `task` that ended with `outcome` (`None`: it was
    /// stopped) after `seconds`.
    pub fn attempt_ended(&self, task: TaskId, outcome: Option<&Outcome>, seconds: f64) {
        let phase = phase_label(task.phase);
        let (name, counters) = match outcome {
            Some(Outcome::Map(m)) => ("succeeded", Some(&m.counters)),
            Some(Outcome::Reduce(r)) => ("succeeded", Some(&r.counters)),
            Some(Outcome::Failed(_)) => ("failed", None),
            None => ("stopped", None),
        };
        self.attempts
            .get_or_create(&AttemptLabels { phase, outcome: name })
            .inc();
        if let Some(counters) = counters {
            self.totals.add(phase, counters, seconds);
        }
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
