//! The coordinator's Prometheus metrics (`/metrics` on its HTTP address):
//! counters bumped as attempts end (by phase and outcome, with the bytes and
//! guest time of committed attempts and their durations as histograms), and
//! gauges read off the cluster at each scrape (jobs by state, tasks pending
//! and running, workers and slots). No label carries a job id or any other
//! value without bound.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::cluster::Cluster;
use super::job::{AttemptState, JobState, TaskState};
use crate::Phase;
use crate::attempt_metrics::{AttemptLabels, WorkTotals, phase_label};
use crate::protocol::status::UserState;
use crate::task::Counters;

/// The content type of [`CoordinatorMetrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The coordinator's metrics.
#[derive(Debug)]
pub struct CoordinatorMetrics {
    registry: Registry,
    attempts: Family<AttemptLabels, Counter>,
    totals: WorkTotals,
    jobs: Family<StateLabel, Gauge>,
    tasks: Family<StateLabel, Gauge>,
    workers: Gauge,
    slots: Gauge,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CoordinatorMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wmr");
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "attempts",
            "Task attempts ended, by phase and outcome (succeeded: committed; failed: its error counts against the task; lost: its worker was lost)",
            attempts.clone(),
        );
        let totals = WorkTotals::register(&mut registry, "committed");
        let jobs = Family::<StateLabel, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs this coordinator knows, by state (finished jobs are kept up to a bound)",
            jobs.clone(),
        );
        let tasks = Family::<StateLabel, Gauge>::default();
        registry.register("tasks", "Tasks of unfinished jobs, pending or running", tasks.clone());
        let workers = Gauge::default();
        registry.register("workers", "Registered workers", workers.clone());
        let slots = Gauge::default();
        registry.register("worker_slots", "Task slots of the registered workers", slots.clone());
        CoordinatorMetrics {
            registry,
            attempts,
            totals,
            jobs,
            tasks,
            workers,
            slots,
        }
    }

    /// Count an attempt of `phase` that ended in `state`, with its
    /// `counters` and `seconds` of wall time if it committed.
    pub fn attempt_ended(&self, phase: Phase, state: &AttemptState, counters: Option<&Counters>, seconds: f64) {
        let phase = phase_label(phase);
        let outcome = match state {
            AttemptState::Succeeded => "succeeded",
            AttemptState::Failed { .. } => "failed",
            AttemptState::Lost => "lost",
            AttemptState::Running | AttemptState::Superseded => return,
        };
        self.attempts.get_or_create(&AttemptLabels { phase, outcome }).inc();
        if let (AttemptState::Succeeded, Some(counters)) = (state, counters) {
            self.totals.add(phase, counters, seconds);
        }
    }

    /// Set the gauges from `cluster`, then write every metric in the
    /// OpenMetrics text format.
    pub fn encode(&self, cluster: &Cluster) -> String {
        let mut jobs = [0i64; 5];
        let (mut pending, mut running) = (0i64, 0i64);
        let states = [
            UserState::Queued,
            UserState::Running,
            UserState::Succeeded,
            UserState::Failed,
            UserState::Cancelled,
        ];
        for j in cluster.jobs() {
            let state = super::status::user_state(&j.job);
            if let Some(i) = states.iter().position(|s| *s == state) {
                jobs[i] += 1;
            }
            if j.job.state != JobState::Running {
                continue;
            }
            for t in j.job.maps.iter().chain(&j.job.reduces) {
                match t.state {
                    TaskState::Pending => pending += 1,
                    TaskState::Running => running += 1,
                    TaskState::Committed | TaskState::Failed => {}
                }
            }
        }
        for (state, n) in states.iter().zip(jobs) {
            self.jobs.get_or_create(&StateLabel { state: state.as_str() }).set(n);
        }
        self.tasks.get_or_create(&StateLabel { state: "pending" }).set(pending);
        self.tasks.get_or_create(&StateLabel { state: "running" }).set(running);
        self.workers.set(cluster.workers().count() as i64);
        self.slots.set(cluster.workers().map(|(_, w)| i64::from(w.slots)).sum());
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_attempts_count_their_bytes_and_time_and_others_only_themselves() {
        let m = CoordinatorMetrics::new();
        let counters: Counters = [
            ("wmr.map.input.bytes".to_string(), 1000),
            ("wmr.shuffle.bytes".to_string(), 300),
            (crate::task::GUEST_TIME_COUNTER.to_string(), 1500),
        ]
        .into_iter()
        .collect();
        m.attempt_ended(Phase::Map, &AttemptState::Succeeded, Some(&counters), 2.0);
        m.attempt_ended(
            Phase::Map,
            &AttemptState::Failed {
                error: "x".into(),
                kind: crate::task::FailureKind::Guest,
            },
            Some(&counters),
            1.0,
        );
        m.attempt_ended(Phase::Reduce, &AttemptState::Lost, None, 1.0);
        m.attempt_ended(Phase::Reduce, &AttemptState::Superseded, None, 1.0);
        let cluster = Cluster::new(std::time::Duration::from_secs(10), 1, None);
        let text = m.encode(&cluster);
        for line in [
            "wmr_attempts_total{phase=\"map\",outcome=\"succeeded\"} 1",
            "wmr_attempts_total{phase=\"map\",outcome=\"failed\"} 1",
            "wmr_attempts_total{phase=\"reduce\",outcome=\"lost\"} 1",
            "wmr_input_bytes_total 1000",
            "wmr_shuffle_bytes_total 300",
            "wmr_output_bytes_total 0",
            "wmr_guest_seconds_total{phase=\"map\"} 1.5",
            "wmr_attempt_duration_seconds_count{phase=\"map\"} 1",
            "wmr_workers 0",
            "wmr_jobs{state=\"running\"} 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("superseded"));
    }
}
