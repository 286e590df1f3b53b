//! Failures on a cluster of real processes: workers killed, frozen,
//! straggling or lost over and over, jobs cancelled, guests that fail or
//! turn hostile, and input or shuffle data that vanishes or goes bad. Each
//! costs only the attempts it touched; the output stays exact.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::*;
use crate::harness::*;

#[test]
fn workers_killed_at_random_cost_only_their_running_attempts() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "1s");
    for _ in 0..3 {
        c.add_worker(1);
    }
    // Long enough for several kills however fast the guest gets: kills
    // come every 100-250 ms, and each costs a lost attempt.
    let (input, texts) = generated_input(&t, 10, 120_000);
    let expected = as_lines(&reference_wordcount(&texts));
    for round in 0..2 {
        let out = t.path(&format!("out-{round}"));
        let job = c.submit(
            "wordcount",
            &input,
            &out,
            &["--reducers", "6", "--split-size", "256KiB"],
        );
        // Kill a random worker and start a new one, again and again, until
        // the job ends; at least one worker is always alive.
        let mut seed = 0x2545_f491_4f6c_dd1du64 + round;
        let mut kills = 0;
        let status = loop {
            let s = c.status(&job);
            if matches!(s["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                break s;
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let victim = (seed % c.workers.len() as u64) as usize;
            let mut dead = c.workers.remove(victim);
            dead.kill().unwrap();
            dead.wait().unwrap();
            kills += 1;
            c.add_worker(1);
            std::thread::sleep(Duration::from_millis(100 + seed % 150));
        };
        assert_eq!(status["state"], "succeeded", "after {kills} kills: {status}");
        assert!(kills >= 3, "the job ended after only {kills} kills; make it longer");
        assert_eq!(text_output(&out), expected, "round {round}, after {kills} kills");
    }
}

#[test]
fn a_worker_frozen_past_its_lease_commits_nothing_stale() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "1s");
    c.add_worker(1);
    let (input, texts) = generated_input(&t, 8, 40_000);
    let out = t.path("out");
    let job = c.submit("wordcount", &input, &out, &["--reducers", "4", "--split-size", "32KiB"]);
    freeze_mid_attempt(&c, 0, &job, false);
    let frozen = c.workers[0].id().to_string();
    // Past the lease, the coordinator re-queues its attempt for a new worker.
    let lost = c.wait_for(&job, "the frozen worker's attempt to be lost", |s| {
        attempts(s).iter().any(|(_, _, a)| a["state"] == "lost")
    });
    let lost_attempts: BTreeSet<u64> = attempts(&lost)
        .iter()
        .filter(|(_, _, a)| a["state"] == "lost")
        .map(|(_, _, a)| a["attempt"].as_u64().unwrap())
        .collect();
    c.add_worker(1);
    assert!(
        Command::new("kill")
            .args(["-CONT", &frozen])
            .status()
            .unwrap()
            .success()
    );
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    // The resumed worker's lost attempts stay lost: their late reports were refused.
    for (_, _, a) in attempts(&status) {
        if lost_attempts.contains(&a["attempt"].as_u64().unwrap()) {
            assert_eq!(a["state"], "lost", "{a}");
        }
    }
}

/// Worker 0 is frozen (SIGSTOP, well within its lease) while it runs a map;
/// worker 1 does the rest. Returns the cluster, the job, its input's texts,
/// the output directory and the frozen map's index.
fn job_with_a_straggler(t: &TestDir, extra: &[&str]) -> (Cluster, String, Vec<String>, PathBuf, u64) {
    let mut c = Cluster::start_with_backups(t, "60s", "1s");
    c.add_worker(1);
    // Some 40 maps of 512 KiB: the job runs long enough (a few tenths of a
    // second) for a status poll, every 50 ms, to see an attempt running
    // (at 12 maps it once ended within 90 ms, before the first poll).
    let (input, texts) = generated_input(t, 6, 150_000);
    let out = t.path("out");
    let mut args = vec!["--reducers", "2", "--split-size", "512KiB"];
    args.extend_from_slice(extra);
    let job = c.submit("wordcount", &input, &out, &args);
    let frozen = freeze_mid_attempt(&c, 0, &job, true);
    c.add_worker(1);
    (c, job, texts, out, frozen)
}

fn attempts_of_map(status: &Value, index: u64) -> Vec<String> {
    attempts(status)
        .into_iter()
        .filter(|(p, i, _)| p == "map" && *i == index)
        .map(|(_, _, a)| a["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_straggler_gets_a_backup_and_the_first_to_commit_wins() {
    let t = TestDir::new();
    let (c, job, texts, out, frozen) = job_with_a_straggler(&t, &[]);
    // The job finishes while the straggler is still frozen.
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    assert_eq!(attempts_of_map(&status, frozen), ["superseded", "succeeded"]);
    // Every other task ran once: backups only for the slow.
    let backups = attempts(&status).len() - status["tasks"].as_array().unwrap().len();
    assert_eq!(backups, 1, "{status}");
    assert!(
        Command::new("kill")
            .args(["-CONT", &c.workers[0].id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn no_speculation_means_no_backups() {
    let t = TestDir::new();
    let (c, job, texts, out, frozen) = job_with_a_straggler(&t, &["--no-speculation"]);
    let total = c.status(&job)["maps"]["total"].as_u64().unwrap();
    c.wait_for(&job, "every other map to commit", |s| {
        s["maps"]["done"].as_u64() == Some(total - 1)
    });
    // Well past the 1 s backup threshold, the straggler is still alone.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(attempts_of_map(&c.status(&job), frozen), ["running"]);
    assert!(
        Command::new("kill")
            .args(["-CONT", &c.workers[0].id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    assert_eq!(attempts_of_map(&status, frozen), ["succeeded"]);
}

#[test]
fn a_task_that_keeps_failing_fails_the_job_with_every_attempts_error() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    c.add_worker(1);
    let input = t.write("in/a.txt", "fine line\nthis one goes BOOM\n");
    let guest = guest("panicky");
    let o = c.client(&[
        "submit",
        "--job",
        guest.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        t.path("out").to_str().unwrap(),
        "--max-attempts",
        "3",
        "--wait",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status["state"], "failed");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("map task 0 failed 3 time(s)"),
        "{status}"
    );
    let failed: Vec<Value> = attempts(&status).into_iter().map(|(_, _, a)| a).collect();
    assert_eq!(failed.len(), 3, "{status}");
    for a in &failed {
        assert_eq!(a["state"], "failed");
        let error = a["error"].as_str().unwrap();
        assert!(error.contains("refusing to count a line with BOOM in it"), "{error}");
        assert!(error.contains("a.txt byte offset 10"), "{error}");
    }
    // Retried on the other worker rather than where it just failed.
    let workers: BTreeSet<&str> = failed.iter().map(|a| a["worker"].as_str().unwrap()).collect();
    assert_eq!(workers.len(), 2, "{status}");
    assert_ne!(failed[0]["worker"], failed[1]["worker"]);
    assert!(!t.path("out/_SUCCESS").exists());
    // `wmr status` shows every attempt's error to people too.
    let job = status["job"].as_str().unwrap();
    let text = String::from_utf8(c.client(&["status", job]).stdout).unwrap();
    let attempt_lines = text
        .lines()
        .filter(|l| l.starts_with("  map 0 attempt") && l.contains("with BOOM"));
    assert_eq!(attempt_lines.count(), 3, "{text}");
}

#[test]
fn a_worker_survives_a_hostile_job_and_runs_the_next_one() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    let input = t.write("in/a.txt", "some words here\n");
    let hostile = guest("hostile");
    let o = c.client(&[
        "submit",
        "--job",
        hostile.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        t.path("bad").to_str().unwrap(),
        "--param",
        "mode=loop-map",
        "--max-call-time",
        "300ms",
        "--max-attempts",
        "2",
        "--wait",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("time limit of 300ms; raise it with --max-call-time"),
        "{text}"
    );
    assert!(c.workers[0].try_wait().unwrap().is_none(), "the worker died");
    let out = t.path("good");
    let job = c.submit("wordcount", input.to_str().unwrap(), &out, &["--reducers", "1"]);
    assert_eq!(c.wait_finished(&job)["state"], "succeeded");
    assert_eq!(text_output(&out), ["here 1", "some 1", "words 1"]);
}

#[test]
fn a_cancelled_job_ends_cancelled_and_commits_nothing() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    let (input, _) = generated_input(&t, 8, 40_000);
    let out = t.path("out");
    let job = c.submit(
        "wordcount",
        &input,
        &out,
        &["--reducers", "2", "--split-size", "128KiB"],
    );
    c.wait_for(&job, "a map to commit", |s| s["maps"]["done"].as_u64() >= Some(1));
    let o = c.client(&["cancel", "--json", &job]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reply: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(reply["state"], "cancelled");
    let status = c.status(&job);
    assert_eq!(status["state"], "cancelled");
    assert!(
        status["maps"]["done"].as_u64() < status["maps"]["total"].as_u64(),
        "{status}"
    );
    // What ran when it was cancelled shows as stopped, with an end; nothing runs on.
    let all = attempts(&status);
    assert!(
        all.iter()
            .all(|(_, _, a)| a["state"] != "running" && a["ended_ms"].is_u64()),
        "{status}"
    );
    assert!(
        status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] != "running"),
        "{status}"
    );
    // No output was committed, and the job list says so too.
    assert!(!out.join("_SUCCESS").exists());
    let jobs: Value = serde_json::from_slice(&c.client(&["jobs", "--json"]).stdout).unwrap();
    assert_eq!(jobs[0]["state"], "cancelled");
    // The worker is free for the next job.
    let out2 = t.path("out2");
    let small = t.write("small/a.txt", "one two two\n");
    let next = c.submit("wordcount", small.to_str().unwrap(), &out2, &["--reducers", "1"]);
    assert_eq!(c.wait_finished(&next)["state"], "succeeded");
    assert_eq!(text_output(&out2), ["one 1", "two 2"]);
}

#[test]
fn an_input_that_disappears_mid_job_fails_it_with_the_file_named() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    let (input, _) = generated_input(&t, 8, 40_000);
    let out = t.path("out");
    let job = c.submit(
        "wordcount",
        &input,
        &out,
        &["--reducers", "2", "--split-size", "128KiB", "--max-attempts", "2"],
    );
    c.wait_for(&job, "a map to commit", |s| s["maps"]["done"].as_u64() >= Some(1));
    let gone = t.path("in/part-07.txt");
    std::fs::remove_file(&gone).unwrap();
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("part-07.txt"), "{error}");
    assert!(!out.join("_SUCCESS").exists());
    // The other inputs are untouched.
    assert_eq!(std::fs::read_dir(t.path("in")).unwrap().count(), 7);
}

#[test]
fn bad_records_are_skipped_counted_and_listed_in_the_status() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    let input = t.write("in/a.txt", "one two\nBOOM here\nthree\n");
    let out = t.path("out");
    let job = c.submit("panicky", input.to_str().unwrap(), &out, &["--skip-bad-records", "1"]);
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(text_output(&out), ["one 1", "three 1", "two 1"]);
    assert_eq!(status["counters"]["wmr.map.skipped.records"], 1);
    // The status names the record by its byte offset, and the failure that found it.
    assert_eq!(status["tasks"][0]["skipped"], serde_json::json!([8]), "{status}");
    assert_eq!(status["tasks"][0]["attempts"][0]["state"], "failed");
}

#[test]
fn a_task_that_keeps_losing_its_worker_fails_the_job_after_max_attempts() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "1s");
    let (input, _) = generated_input(&t, 1, 10);
    let job = c.submit(
        "hostile",
        &input,
        &t.path("out"),
        &["--param", "mode=loop-map", "--max-attempts", "2", "--no-speculation"],
    );
    // Each time a worker runs the task, it dies (SIGKILL, as a crash would).
    for round in 1..=2 {
        c.add_worker(1);
        c.wait_for(&job, "the task to run on the new worker", |s| {
            attempts(s).iter().filter(|(_, _, a)| a["state"] == "running").count() == 1 && attempts(s).len() == round
        });
        let worker = c.workers.last_mut().unwrap();
        worker.kill().unwrap();
        worker.wait().unwrap();
    }
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["failure_kind"], "lost", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("map task 0 failed 2 time(s); last error (lost): its worker"),
        "{error}"
    );
    assert!(error.contains("died or went silent"), "{error}");
    let lost: Vec<_> = attempts(&status)
        .into_iter()
        .filter(|(_, _, a)| a["state"] == "lost")
        .collect();
    assert_eq!(lost.len(), 2, "{status}");
    // A worker that joins now lives on, and the coordinator gives it no more
    // of the failed job.
    c.add_worker(1);
    let later = c.submit("wordcount", &input, &t.path("out2"), &[]);
    assert_eq!(c.wait_finished(&later)["state"], "succeeded");
    assert!(c.workers.last_mut().unwrap().try_wait().unwrap().is_none());
}

#[test]
fn a_cancelled_attempt_stops_its_guest_and_frees_its_slot() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "2s");
    // One worker with one slot (and so one compute thread).
    c.add_worker(1);
    let (input, texts) = generated_input(&t, 1, 200);
    let endless = c.submit(
        "hostile",
        &input,
        &t.path("endless"),
        &["--param", "mode=loop-map", "--max-call-time", "10m"],
    );
    c.wait_for(&endless, "the endless map to run", |s| {
        attempts(s).iter().any(|(_, _, a)| a["state"] == "running")
    });
    let o = c.client(&["cancel", &endless]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The next job needs that slot and its compute thread: it finishes only
    // if the looping guest really stopped (its call may run for 10 minutes).
    let job = c.submit("wordcount", &input, &t.path("out"), &[]);
    assert_eq!(c.wait_finished(&job)["state"], "succeeded");
    assert_eq!(text_output(&t.path("out")), as_lines(&reference_wordcount(&texts)));
    assert_eq!(c.status(&endless)["state"], "cancelled");
    let log = std::fs::read_to_string(t.path("logs/worker-0.log")).unwrap();
    assert!(
        log.contains("stopping an attempt the coordinator no longer needs"),
        "{log}"
    );
}

#[test]
fn a_corrupted_shuffle_object_gets_its_map_run_again_and_the_output_is_identical() {
    let t = TestDir::new();
    // A lease long enough that the frozen worker is never declared lost
    // while the other does two hundred maps, however loaded the machine: it
    // is lost when it is killed, as its connection drops.
    let mut c = Cluster::start_with_backups(&t, "10m", "1h");
    c.add_worker(1);
    // Some two hundred maps: with its module loaded from the compile cache,
    // a worker finishes a few dozen before a status poll could see one run.
    let (input, texts) = generated_input(&t, 8, 20_000);
    let out = t.path("out");
    let job = c.submit(
        "wordcount",
        &input,
        &out,
        &["--reducers", "2", "--split-size", "16KiB", "--no-speculation"],
    );
    // Freeze the first worker mid-map, so that no reduce can start while the
    // second worker does the other maps.
    freeze_mid_attempt(&c, 0, &job, true);
    c.add_worker(1);
    let before = c.wait_for(&job, "every other map to commit", |s| {
        s["maps"]["done"].as_u64().unwrap() + 1 == s["maps"]["total"].as_u64().unwrap()
    });
    // Flip bytes in the middle of one committed map's shuffle data.
    let scratch = out.join("_temporary").join(&job);
    let object = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "shuffle"))
        .expect("a committed shuffle object");
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 3;
    for b in &mut bytes[middle..middle + 8] {
        *b ^= 0xff;
    }
    std::fs::write(&object, &bytes).unwrap();
    let corrupted: u64 = object.file_name().unwrap().to_str().unwrap()[4..9].parse().unwrap();
    // The frozen worker dies; its map runs elsewhere, then the reduces.
    c.workers[0].kill().unwrap();
    c.workers[0].wait().unwrap();
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    // The corrupted map ran again; the reduce that found it was not counted.
    let runs = attempts_of_map(&status, corrupted);
    assert_eq!(runs.len(), 2, "{status}");
    let first = attempts(&status)
        .into_iter()
        .find(|(p, i, _)| p == "map" && *i == corrupted)
        .unwrap()
        .2;
    assert_eq!(first["kind"], "map_output", "{status}");
    assert!(
        attempts(&status)
            .iter()
            .any(|(p, _, a)| p == "reduce" && a["kind"] == "map_output"),
        "{status}"
    );
    assert_eq!(before["state"], "running");
}

#[test]
fn a_dead_worker_is_noticed_when_its_connection_drops_not_when_its_lease_lapses() {
    let t = TestDir::new();
    // A lease far longer than the test may take.
    let mut c = Cluster::start(&t, "10m");
    c.add_worker(1);
    // Some hundred and sixty maps of a few ms each (the module comes from
    // the compile cache), and the worker frozen while one is seen running,
    // so that the kill surely lands mid-attempt.
    let (input, texts) = generated_input(&t, 6, 40_000);
    let out = t.path("out");
    let job = c.submit("wordcount", &input, &out, &["--split-size", "32KiB", "--reducers", "2"]);
    freeze_mid_attempt(&c, 0, &job, false);
    c.workers[0].kill().unwrap();
    c.workers[0].wait().unwrap();
    c.add_worker(1);
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    let lost = attempts(&status)
        .into_iter()
        .filter(|(_, _, a)| a["state"] == "lost")
        .count();
    assert!(lost >= 1, "{status}");
    let log = std::fs::read_to_string(t.path("logs/coordinator.log")).unwrap();
    assert!(log.contains("worker lost"), "{log}");
}
