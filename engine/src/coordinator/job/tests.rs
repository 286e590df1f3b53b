//! Tests of the job state machine.

use super::*;

fn job(maps: usize, reducers: u32) -> Job {
    test_job(maps, reducers)
}

fn map_ok() -> Outcome {
    Outcome::Map(MapOutput {
        counters: Counters::new(),
    })
}

fn ids(a: &Assignment) -> (TaskId, AttemptId) {
    match a {
        Assignment::Map(m) => (m.task, m.attempt),
        Assignment::Reduce(r) => (r.task, r.attempt),
    }
}

#[test]
fn reduces_wait_for_every_map_and_the_first_success_commits() {
    let (w1, w2) = (WorkerId("w1".into()), WorkerId("w2".into()));
    let now = SystemTime::now();
    let mut j = job(2, 1);
    let a1 = j.next_assignment(&w1, now, None).unwrap();
    let a2 = j.next_assignment(&w2, now, None).unwrap();
    assert!(
        j.next_assignment(&w1, now, None).is_none(),
        "no reduce before maps commit"
    );
    let (t1, at1) = ids(&a1);
    assert_eq!(j.report(t1, at1, map_ok(), now), ReportResult::Committed);
    assert_eq!(
        j.report(t1, at1, map_ok(), now),
        ReportResult::Stale,
        "a duplicate report is refused"
    );
    // w2 dies; its map is re-queued and its late report refused.
    j.worker_lost(&w2, now, true);
    let (t2, at2) = ids(&a2);
    assert_eq!(j.report(t2, at2, map_ok(), now), ReportResult::Stale);
    let retry = j.next_assignment(&w1, now, None).unwrap();
    assert_eq!(ids(&retry).0, t2);
    assert_ne!(ids(&retry).1, at2);
    assert_eq!(j.report(t2, ids(&retry).1, map_ok(), now), ReportResult::Committed);
    let r = j.next_assignment(&w1, now, None).unwrap();
    let Assignment::Reduce(ra) = &r else {
        panic!("expected a reduce")
    };
    assert_eq!(ra.map_outputs.len(), 2);
    let out = Outcome::Reduce(ReduceOutput {
        checksum: 0,
        rows: 1,
        bytes: 1,
        counters: Counters::new(),
    });
    assert_eq!(j.report(ra.task, ra.attempt, out, now), ReportResult::Committed);
    assert_eq!(j.state, JobState::Committing);
    assert_eq!(j.counters()["wmr.attempts.retried"], 1);
}

#[test]
fn a_task_failing_max_attempts_fails_the_job_with_its_error() {
    let w = WorkerId("w".into());
    let now = SystemTime::now();
    let mut j = job(1, 1);
    let fail = || Outcome::Failed(AttemptFailure::new(FailureKind::Guest, "boom"));
    let (t, a) = ids(&j.next_assignment(&w, now, None).unwrap());
    assert_eq!(j.report(t, a, fail(), now), ReportResult::WillRetry);
    let (t, a) = ids(&j.next_assignment(&w, now, None).unwrap());
    assert_eq!(j.report(t, a, fail(), now), ReportResult::JobFailed);
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(
        j.error.as_deref(),
        Some("map task 0 failed 2 time(s); last error (guest): boom")
    );
    assert!(j.next_assignment(&w, now, None).is_none());
}

#[test]
fn store_outages_use_up_no_attempts_but_are_bounded_and_losses_count() {
    let w = WorkerId("w".into());
    let now = SystemTime::now();
    let mut j = job(1, 1);
    let outage = || Outcome::Failed(AttemptFailure::new(FailureKind::Storage, "s3 is down"));
    for _ in 0..MAX_UNCOUNTED_FAILURES - 1 {
        let (t, a) = ids(&j.next_assignment(&w, now, None).unwrap());
        assert_eq!(j.report(t, a, outage(), now), ReportResult::WillRetry);
    }
    assert_eq!(j.maps[0].failures, 0);
    let (t, a) = ids(&j.next_assignment(&w, now, None).unwrap());
    assert_eq!(j.report(t, a, outage(), now), ReportResult::JobFailed);
    assert_eq!(j.failure_kind, Some(FailureKind::Storage));
    // max_attempts is 2 in test jobs: two lost attempts fail the job.
    let mut j = job(1, 1);
    j.next_assignment(&w, now, None).unwrap();
    assert!(!j.worker_lost(&w, now, true).1);
    j.next_assignment(&w, now, None).unwrap();
    let (lost, failed) = j.worker_lost(&w, now, true);
    assert_eq!((lost.len(), failed), (1, true));
    assert_eq!(j.failure_kind, Some(FailureKind::Lost));
    assert!(j.error.as_deref().unwrap_or("").contains("died or went silent"));
    // Attempts handed back by a leaving worker never fail the job, and
    // a job that has ended loses nothing more.
    let mut j = job(1, 1);
    for _ in 0..5 {
        j.next_assignment(&w, now, None).unwrap();
        let (lost, failed) = j.worker_lost(&w, now, false);
        assert_eq!((lost.len(), failed), (1, false));
    }
    assert_eq!(j.maps[0].failures, 0);
    j.next_assignment(&w, now, None).unwrap();
    j.cancel();
    assert!(j.worker_lost(&w, now, true).0.is_empty());
}

#[test]
fn a_reduce_that_finds_a_map_output_corrupt_gets_that_map_run_again() {
    let w = WorkerId("w".into());
    let now = SystemTime::now();
    let mut j = job(2, 1);
    for _ in 0..2 {
        let (t, a) = ids(&j.next_assignment(&w, now, None).unwrap());
        assert_eq!(j.report(t, a, map_ok(), now), ReportResult::Committed);
    }
    let Assignment::Reduce(r) = j.next_assignment(&w, now, None).unwrap() else {
        panic!("expected a reduce")
    };
    let first_objects = r.map_outputs.clone();
    let mut lost = AttemptFailure::new(FailureKind::MapOutput, "bytes do not match their checksum");
    lost.bad_map = Some(1);
    assert_eq!(
        j.report(r.task, r.attempt, Outcome::Failed(lost), now),
        ReportResult::WillRetry
    );
    // Map 1 runs again before any reduce; the reduce's try was free.
    assert_eq!(j.progress().0, (1, 2));
    let again = j.next_assignment(&w, now, None).unwrap();
    assert_eq!(ids(&again).0, TaskId::map(1));
    assert_eq!(j.reduces[0].failures, 0);
    assert_eq!(
        j.report(ids(&again).0, ids(&again).1, map_ok(), now),
        ReportResult::Committed
    );
    let Assignment::Reduce(r2) = j.next_assignment(&w, now, None).unwrap() else {
        panic!("expected a reduce")
    };
    assert_eq!(r2.map_outputs[0], first_objects[0]);
    assert_ne!(r2.map_outputs[1], first_objects[1], "the new map attempt's object");
}

#[test]
fn a_slow_task_gets_one_backup_near_the_end_and_the_first_commit_wins() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let after = Some(Duration::from_secs(5));
    let (w1, w2) = (WorkerId("w1".into()), WorkerId("w2".into()));
    let mut j = job(3, 1);
    let slow = j.next_assignment(&w1, at(0), after).unwrap();
    let fast1 = j.next_assignment(&w2, at(0), after).unwrap();
    assert_eq!(
        j.report(ids(&fast1).0, ids(&fast1).1, map_ok(), at(1)),
        ReportResult::Committed
    );
    let fast2 = j.next_assignment(&w2, at(1), after).unwrap();
    assert_eq!(
        j.report(ids(&fast2).0, ids(&fast2).1, map_ok(), at(2)),
        ReportResult::Committed
    );
    // Nothing is pending now, but the slow task is not slow enough yet
    // (5 s and three times the 1 s mean), nor ever for its own worker.
    assert!(j.next_assignment(&w2, at(4), after).is_none());
    assert!(j.next_assignment(&w1, at(60), after).is_none());
    // Without speculation: never.
    assert!(j.next_assignment(&w2, at(60), None).is_none());
    let backup = j.next_assignment(&w2, at(7), after).expect("a backup");
    assert_eq!(ids(&backup).0, ids(&slow).0);
    assert_ne!(ids(&backup).1, ids(&slow).1);
    // Only one backup per task.
    assert!(j.next_assignment(&WorkerId("w3".into()), at(30), after).is_none());
    // The backup commits first; the original is superseded and its late
    // report refused.
    assert_eq!(
        j.report(ids(&backup).0, ids(&backup).1, map_ok(), at(8)),
        ReportResult::Committed
    );
    assert_eq!(
        j.report(ids(&slow).0, ids(&slow).1, map_ok(), at(9)),
        ReportResult::Stale
    );
    let states: Vec<&AttemptState> = j.maps[ids(&slow).0.index as usize]
        .attempts
        .iter()
        .map(|a| &a.state)
        .collect();
    assert_eq!(states, [&AttemptState::Superseded, &AttemptState::Succeeded]);
    assert_eq!(j.running_attempts(), 0);
    assert_eq!(j.progress().0, (3, 3));
}

#[test]
fn losing_the_original_keeps_the_task_with_its_backup() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let after = Some(Duration::from_secs(1));
    let (w1, w2) = (WorkerId("w1".into()), WorkerId("w2".into()));
    let mut j = job(2, 1);
    let slow = j.next_assignment(&w1, at(0), after).unwrap();
    let fast = j.next_assignment(&w2, at(0), after).unwrap();
    j.report(ids(&fast).0, ids(&fast).1, map_ok(), at(1));
    let backup = j.next_assignment(&w2, at(10), after).expect("a backup");
    j.worker_lost(&w1, at(11), true);
    // Not re-queued: the backup is still running.
    assert!(j.next_assignment(&WorkerId("w3".into()), at(11), None).is_none());
    assert_eq!(
        j.report(ids(&backup).0, ids(&backup).1, map_ok(), at(12)),
        ReportResult::Committed
    );
    assert_eq!(ids(&slow).0, ids(&backup).0);
}

#[test]
fn a_failed_task_is_retried_on_another_worker_where_possible() {
    let now = SystemTime::now();
    let (w1, w2) = (WorkerId("w1".into()), WorkerId("w2".into()));
    let mut j = job(2, 1);
    let first = j.next_assignment(&w1, now, None).unwrap();
    let failed = Outcome::Failed(AttemptFailure::new(FailureKind::Guest, "boom"));
    assert_eq!(
        j.report(ids(&first).0, ids(&first).1, failed.clone(), now),
        ReportResult::WillRetry
    );
    // w1 gets the other task, not the one that failed on it...
    let next = j.next_assignment(&w1, now, None).unwrap();
    assert_ne!(ids(&next).0, ids(&first).0);
    // ...which goes to w2.
    let retry = j.next_assignment(&w2, now, None).unwrap();
    assert_eq!(ids(&retry).0, ids(&first).0);
    // With no other choice, a task is retried on the worker it failed on.
    let mut j = job(1, 1);
    let only = j.next_assignment(&w1, now, None).unwrap();
    j.report(ids(&only).0, ids(&only).1, failed, now);
    assert_eq!(ids(&j.next_assignment(&w1, now, None).unwrap()).0, ids(&only).0);
}
