//! How the job changes when an attempt reports or is lost, and the same
//! changes replayed from the journal when a coordinator restarts.

use super::*;

impl Job {
    /// Record how attempt `attempt` of `task` ended.
    pub fn report(&mut self, task: TaskId, attempt: AttemptId, outcome: Outcome, now: SystemTime) -> ReportResult {
        if self.state != JobState::Running {
            return ReportResult::Stale;
        }
        let max_attempts = self.spec.max_attempts.max(1);
        // Fields, not `task_mut`, so the borrow of the task stays apart
        // from the counters changed below.
        let tasks = match task.phase {
            Phase::Map => &mut self.maps,
            Phase::Reduce => &mut self.reduces,
        };
        let Some(t) = tasks.get_mut(task.index as usize) else {
            return ReportResult::Stale;
        };
        if t.state != TaskState::Running {
            return ReportResult::Stale;
        }
        let Some(ai) = t
            .attempts
            .iter()
            .position(|a| a.id == attempt && a.state == AttemptState::Running)
        else {
            return ReportResult::Stale;
        };
        t.attempts[ai].ended = Some(now);
        let ran = now.duration_since(t.attempts[ai].started).unwrap_or_default();
        self.running -= 1;
        let succeeded = match &outcome {
            Outcome::Map(_) => task.phase == Phase::Map,
            Outcome::Reduce(_) => task.phase == Phase::Reduce,
            Outcome::Failed(_) => false,
        };
        if succeeded {
            t.attempts[ai].state = AttemptState::Succeeded;
            t.state = TaskState::Committed;
            // The first to commit wins; any other attempt is superseded.
            for other in t.attempts.iter_mut().filter(|o| o.state == AttemptState::Running) {
                other.state = AttemptState::Superseded;
                other.ended = Some(now);
                self.running -= 1;
            }
            let time = &mut self.committed_time[task.phase as usize];
            *time = (time.0 + 1, time.1 + ran);
        }
        let mut outcome = outcome;
        if succeeded {
            match &mut outcome {
                Outcome::Map(MapOutput { counters }) | Outcome::Reduce(ReduceOutput { counters, .. }) => {
                    cap_counters(&mut self.counter_names, counters);
                }
                Outcome::Failed(_) => {}
            }
        }
        match outcome {
            Outcome::Map(out) if succeeded => {
                self.map_outputs[task.index as usize] = Some(out);
                self.maps_committed += 1;
                ReportResult::Committed
            }
            Outcome::Reduce(out) if succeeded => {
                self.reduce_outputs[task.index as usize] = Some(out);
                self.reduces_committed += 1;
                if self.reduces_committed == self.reduces.len() {
                    self.state = JobState::Committing;
                }
                ReportResult::Committed
            }
            Outcome::Map(_) | Outcome::Reduce(_) => {
                t.attempts[ai].state = AttemptState::Failed {
                    error: "reported output of the wrong kind".into(),
                    kind: FailureKind::Internal,
                };
                if !t.attempts.iter().any(|o| o.state == AttemptState::Running) {
                    t.state = TaskState::Pending;
                    self.requeue(task);
                }
                ReportResult::WillRetry
            }
            Outcome::Failed(failure) => {
                let started = t.attempts[ai].started;
                t.attempts[ai].state = AttemptState::Failed {
                    error: failure.message.clone(),
                    kind: failure.kind,
                };
                // A record the guest fails on is skipped by the next attempts,
                // up to the job's budget (the MapReduce paper's section 4.6);
                // such a failure is not held against the task.
                let skip = failure.record.filter(|r| {
                    task.phase == Phase::Map
                        && !t.skipped.contains(r)
                        && t.skipped.len() < self.spec.skip_bad_records as usize
                });
                match skip {
                    Some(record) => t.skipped.push(record),
                    None if failure.counts() => t.failures += 1,
                    None => t.uncounted += 1,
                }
                let other_running = t.attempts.iter().any(|o| o.state == AttemptState::Running);
                if failure.retryable && t.failures < max_attempts && t.uncounted < MAX_UNCOUNTED_FAILURES {
                    // With a backup still running, let it finish rather than start a third.
                    if !other_running {
                        t.state = TaskState::Pending;
                        self.requeue(task);
                    }
                    // A map output this reduce found gone or corrupt: that
                    // map runs again (fetch-failure semantics), and the
                    // reduces wait for it.
                    if let Some(map) = failure
                        .bad_map
                        .filter(|_| task.phase == Phase::Reduce && failure.kind == FailureKind::MapOutput)
                    {
                        self.map_output_lost(map, started, now, &failure.message);
                    }
                    ReportResult::WillRetry
                } else {
                    t.state = TaskState::Failed;
                    let tries = t.failures + t.uncounted;
                    self.state = JobState::Failed;
                    self.failure_kind = Some(failure.kind);
                    self.error = Some(format!(
                        "{task} failed {tries} time(s); last error ({}): {}",
                        failure.kind.as_str(),
                        failure.message
                    ));
                    ReportResult::JobFailed
                }
            }
        }
    }

    /// Map task `map`'s committed output was found gone or corrupt by a
    /// reduce attempt that started at `seen_from`: the task is pending
    /// again, and its output no longer counts. A reduce that started before
    /// the map's output was last committed read an older one: ignored.
    fn map_output_lost(&mut self, map: u32, seen_from: SystemTime, now: SystemTime, why: &str) {
        let Some(t) = self.maps.get_mut(map as usize) else {
            return;
        };
        if t.state != TaskState::Committed {
            return;
        }
        let committed_after = t
            .attempts
            .iter()
            .find(|a| a.state == AttemptState::Succeeded)
            .and_then(|a| a.ended)
            .is_some_and(|ended| ended > seen_from);
        if committed_after {
            return;
        }
        if let Some(a) = t.attempts.iter_mut().find(|a| a.state == AttemptState::Succeeded) {
            a.state = AttemptState::Failed {
                error: format!("its output was found gone or corrupt: {why}"),
                kind: FailureKind::MapOutput,
            };
            a.ended = a.ended.or(Some(now));
        }
        t.state = TaskState::Pending;
        self.maps_committed -= 1;
        self.map_outputs[map as usize] = None;
        self.requeue(TaskId::map(map));
    }

    /// Mark the job succeeded once its output is committed.
    pub fn committed(&mut self) {
        if self.state == JobState::Committing {
            self.state = JobState::Succeeded;
        }
    }

    /// Mark every running attempt of `worker` lost and re-queue its task;
    /// committed output stays. A lost attempt counts against the task's
    /// `--max-attempts` (unless `counts` is false: its worker handed it back
    /// as it left), so a task that kills its worker every time fails the
    /// job. Returns the attempts lost (none of a job that has ended), and
    /// whether the job failed.
    pub fn worker_lost(
        &mut self,
        worker: &WorkerId,
        now: SystemTime,
        counts: bool,
    ) -> (Vec<(TaskId, AttemptId, SystemTime)>, bool) {
        let running: Vec<(TaskId, AttemptId, SystemTime)> = self
            .maps
            .iter()
            .chain(&self.reduces)
            .flat_map(|t| {
                t.attempts
                    .iter()
                    .filter(|a| &a.worker == worker && a.state == AttemptState::Running)
                    .map(|a| (t.id, a.id, a.started))
            })
            .collect();
        let mut failed = false;
        let mut lost = Vec::new();
        for (task, attempt, started) in running {
            if let Some(failed_job) = self.attempt_lost(task, attempt, now, counts) {
                failed |= failed_job;
                lost.push((task, attempt, started));
            }
        }
        (lost, failed)
    }

    /// Mark attempt `attempt` of `task` lost with its worker, counting it
    /// against the task if `counts`; `Some(true)` if that failed the job,
    /// `None` if nothing changed (the job has ended, or the attempt is not
    /// running).
    fn attempt_lost(&mut self, task: TaskId, attempt: AttemptId, now: SystemTime, counts: bool) -> Option<bool> {
        if self.state != JobState::Running {
            return None;
        }
        let max_attempts = self.spec.max_attempts.max(1);
        let tasks = match task.phase {
            Phase::Map => &mut self.maps,
            Phase::Reduce => &mut self.reduces,
        };
        let t = tasks.get_mut(task.index as usize)?;
        let a = t
            .attempts
            .iter_mut()
            .find(|a| a.id == attempt && a.state == AttemptState::Running)?;
        a.state = AttemptState::Lost;
        a.ended = Some(now);
        let worker = a.worker.clone();
        self.running -= 1;
        if counts {
            t.failures += 1;
        }
        if t.failures >= max_attempts {
            t.state = TaskState::Failed;
            let tries = t.failures;
            self.state = JobState::Failed;
            self.failure_kind = Some(FailureKind::Lost);
            self.error = Some(format!(
                "{task} failed {tries} time(s); last error (lost): its worker {worker} died or went silent \
                 while running it; a task that keeps killing its worker (a crash, or memory outside the \
                 sandbox's limits) fails the job after --max-attempts"
            ));
            return Some(true);
        }
        // Re-queue unless a backup attempt elsewhere is still running.
        if t.state == TaskState::Running && !t.attempts.iter().any(|a| a.state == AttemptState::Running) {
            t.state = TaskState::Pending;
            self.requeue(task);
        }
        Some(false)
    }

    /// Replay an attempt lost with its worker from the journal.
    pub fn restore_lost(
        &mut self,
        task: TaskId,
        attempt: AttemptId,
        worker: WorkerId,
        (started, at): (SystemTime, SystemTime),
        counts: bool,
    ) {
        self.restore_attempt(task, attempt, worker, started);
        self.attempt_lost(task, attempt, at, counts);
    }

    /// Replay a committed attempt from the journal: it ran from `started` to `at`.
    pub fn restore_commit(
        &mut self,
        task: TaskId,
        attempt: AttemptId,
        worker: WorkerId,
        outcome: Outcome,
        (started, at): (SystemTime, SystemTime),
    ) {
        self.restore_attempt(task, attempt, worker, started);
        self.report(task, attempt, outcome, at);
    }

    /// Replay a failed attempt from the journal.
    pub fn restore_failure(
        &mut self,
        task: TaskId,
        attempt: AttemptId,
        worker: WorkerId,
        failure: AttemptFailure,
        (started, at): (SystemTime, SystemTime),
    ) {
        self.restore_attempt(task, attempt, worker, started);
        self.report(task, attempt, Outcome::Failed(failure), at);
    }

    /// Put a journaled attempt back as running, so that its report replays.
    fn restore_attempt(&mut self, task: TaskId, attempt: AttemptId, worker: WorkerId, at: SystemTime) {
        self.next_attempt = self.next_attempt.max(attempt.0 + 1);
        let tasks = match task.phase {
            Phase::Map => &mut self.maps,
            Phase::Reduce => &mut self.reduces,
        };
        let Some(t) = tasks.get_mut(task.index as usize) else {
            return;
        };
        if t.state != TaskState::Pending {
            return;
        }
        t.state = TaskState::Running;
        t.attempts.push(Attempt {
            id: attempt,
            worker,
            started: at,
            ended: None,
            state: AttemptState::Running,
        });
        self.running += 1;
    }

    /// End the job as the journal says it ended.
    pub fn restore_end(&mut self, state: JobState, error: Option<String>) {
        self.state = state;
        self.error = error;
    }
}
