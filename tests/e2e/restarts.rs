//! A coordinator that dies or restarts, cannot write its journal, never
//! answers, or is replaced by a standby: jobs resume from the journal
//! without running committed tasks again, and stale reports are refused.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::*;
use crate::harness::*;

#[test]
fn a_coordinator_killed_mid_job_resumes_without_rerunning_committed_tasks() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "2s");
    c.add_worker(1);
    let (input, texts) = generated_input(&t, 12, 40_000);
    let out = t.path("out");
    let job = c.submit(
        "wordcount",
        &input,
        &out,
        &["--reducers", "4", "--split-size", "256KiB"],
    );
    let before = c.wait_for(&job, "some maps to commit", |s| s["maps"]["done"].as_u64() >= Some(3));
    assert_eq!(
        before["state"], "running",
        "the job ended before the coordinator could be killed"
    );
    let committed: Vec<(String, u64, Value)> = attempts(&before)
        .into_iter()
        .filter(|(_, _, a)| a["state"] == "succeeded")
        .collect();
    c.restart_coordinator();
    let after = c.wait_finished(&job);
    assert_eq!(after["state"], "succeeded", "{after}");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    let all = attempts(&after);
    for (phase, index, attempt) in &committed {
        let of_task: Vec<&Value> = all
            .iter()
            .filter(|(p, i, _)| p == phase && i == index)
            .map(|(_, _, a)| a)
            .collect();
        assert_eq!(of_task, vec![attempt], "{phase} {index} ran again after the restart");
    }
}

#[test]
fn reports_after_the_job_ended_are_refused_cleanly() {
    use wmr::rpc::pb;
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    let (input, _) = generated_input(&t, 1, 2_000);
    let out = t.path("out");
    let job = c.submit("wordcount", &input, &out, &["--reducers", "1"]);
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded");
    let done = &attempts(&status)[0].2;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = wmr::rpc::client::connect(&c.addr, &Default::default()).await.unwrap();
        let mut client = wmr::rpc::client::workers(channel, None);
        let worker = client
            .register_worker(pb::RegisterWorkerRequest {
                name: "late".into(),
                slots: 1,
            })
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        let report = pb::ReportTaskRequest {
            worker_id: worker,
            job_id: job.clone(),
            task: Some(pb::TaskRef {
                phase: pb::Phase::Map as i32,
                index: 0,
            }),
            attempt: done["attempt"].as_u64().unwrap(),
            outcome: Some(pb::report_task_request::Outcome::Failed(pb::AttemptFailed {
                error: "late".into(),
                retryable: true,
                bad_record: None,
                kind: pb::FailureKind::Guest as i32,
                bad_map: None,
            })),
        };
        // Another worker's attempt, of a job that has ended: refused, and
        // the refusal says whose it is not.
        let refused = client.report_task(report).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        // The standard health service answers for both services.
        let channel = wmr::rpc::client::connect(&c.addr, &Default::default()).await.unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        for service in ["wmr.v1.JobService", "wmr.v1.WorkerService"] {
            let request = tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            };
            let status = health.check(request).await.unwrap().into_inner().status;
            assert_eq!(
                status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{service}"
            );
        }
    });
    // The job and its output are untouched.
    assert_eq!(c.status(&job)["state"], "succeeded");
    assert!(out.join("_SUCCESS").exists());
}

#[test]
fn a_whole_job_runs_on_s3_through_a_coordinator_restart() {
    let t = TestDir::new();
    // s3s-fs keeps bucket `wmr` as the directory s3/wmr.
    let root = t.path("s3");
    for (i, text) in gutenberg_texts().iter().enumerate() {
        t.write(&format!("s3/wmr/in/book-{i}.txt"), text);
    }
    let s3 = S3Server::start(&root);
    let mut c = Cluster::start_on(&t, "s3://wmr/store".into(), s3.env.clone(), "2s", "5s");
    c.add_worker(1);
    c.add_worker(1);
    let job = c.submit_to(
        "wordcount",
        "s3://wmr/in/*.txt",
        "s3://wmr/out",
        &["--reducers", "4", "--split-size", "64KiB"],
    );
    // Input, shuffle, output and the journal are all in S3: kill the
    // coordinator once some maps are in, and the job still completes.
    let before = c.wait_for(&job, "some maps to commit", |s| s["maps"]["done"].as_u64() >= Some(2));
    assert_eq!(
        before["state"], "running",
        "the job ended before the coordinator could be killed"
    );
    c.restart_coordinator();
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    let expected = as_lines(&reference_wordcount(&gutenberg_texts()));
    assert_eq!(text_output(&root.join("wmr/out")), expected);
    // Read back through S3 too, with `wmr cat`.
    let cat = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["cat", "s3://wmr/out"])
        .envs(s3.env.iter().cloned())
        .output()
        .unwrap();
    assert!(cat.status.success(), "{}", String::from_utf8_lossy(&cat.stderr));
    let mut lines: Vec<String> = String::from_utf8(cat.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    assert_eq!(lines, expected);
    // The journal lives in the bucket, and no scratch object is left.
    assert!(std::fs::read_dir(root.join("wmr/store/journal")).unwrap().count() >= 3);
    let leftovers = files_under(&root.join("wmr/out/_temporary"));
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { files_under(&p) } else { vec![p] }
        })
        .collect()
}

#[test]
fn a_coordinator_that_accepts_but_never_answers_is_named_within_the_probe_timeout() {
    // A listener whose connections are accepted (by the kernel) and then
    // left unread: what a hung coordinator looks like from outside.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let e = runtime
        .block_on(wmr::rpc::client::connect(&addr, &Default::default()))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    let e = e.to_string();
    assert!(
        e.contains(&format!("can't reach the coordinator at http://{addr}")),
        "{e}"
    );
    assert!(
        e.contains("accepted the connection but did not answer within 10s"),
        "{e}"
    );
    drop(listener);
}

#[test]
fn a_coordinator_that_cannot_write_its_journal_stops_and_a_restart_completes_the_job() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "2s");
    c.add_worker(1);
    // About a hundred maps: enough that the job is still running when the
    // store breaks.
    let (input, texts) = generated_input(&t, 8, 20_000);
    let out = t.path("out");
    let job = c.submit("wordcount", &input, &out, &["--split-size", "64KiB", "--reducers", "2"]);
    let before = c.wait_for(&job, "some maps to commit", |s| s["maps"]["done"].as_u64() >= Some(2));
    assert_eq!(before["state"], "running", "the job ended before the store broke");
    // The store stops taking journal writes: its directory becomes a file.
    let journal = t.path("store/journal");
    std::fs::rename(&journal, t.path("journal.aside")).unwrap();
    std::fs::write(&journal, "not a directory").unwrap();
    // The next report cannot be made durable: the coordinator stops.
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = c.coordinator.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the coordinator kept running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(3));
    let log = std::fs::read_to_string(t.path("logs/coordinator.log")).unwrap();
    let last = log.trim().lines().last().unwrap();
    assert!(last.starts_with("wmr: writing the journal in"), "{last}");
    assert!(last.contains("restart it on the same store"), "{last}");
    // Writable again: a restart resumes the job from what was durable.
    std::fs::remove_file(&journal).unwrap();
    std::fs::rename(t.path("journal.aside"), &journal).unwrap();
    c.restart_coordinator();
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
}

/// The attempt that committed each task: (phase, index) -> attempt id.
fn committed_attempts(status: &Value) -> BTreeMap<(String, u64), u64> {
    attempts(status)
        .into_iter()
        .filter(|(_, _, a)| a["state"] == "succeeded")
        .map(|(phase, index, a)| ((phase, index), a["attempt"].as_u64().unwrap()))
        .collect()
}

#[test]
fn a_second_coordinator_is_refused_and_a_standby_takes_over_without_rerunning_commits() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "2s");
    // A second coordinator on the same store is refused, by name.
    let o = wmr(&[
        "coordinator",
        "--store",
        &c.store,
        "--listen",
        "127.0.0.1:0",
        "--lease",
        "2s",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is held by another coordinator"), "{err}");
    assert!(err.contains("--standby"), "{err}");
    // A standby waits on its own port, listening only once it holds the store.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let standby_log = std::fs::File::create(t.path("logs/standby.log")).unwrap();
    let mut standby = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["-v", "coordinator", "--standby", "--store", &c.store, "--lease", "2s"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(standby_log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(t.path("logs/standby.log"))
        .unwrap()
        .contains("standing by")
    {
        assert!(Instant::now() < deadline, "the standby never said it stands by");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Workers and clients know both addresses.
    c.addr = format!("{},http://127.0.0.1:{port}", c.addr);
    c.add_worker(1);
    c.add_worker(1);
    // About a hundred maps: enough that the job is still running when
    // the coordinator is killed.
    let (input, texts) = generated_input(&t, 8, 20_000);
    let out = t.path("out");
    let job = c.submit("wordcount", &input, &out, &["--split-size", "64KiB", "--reducers", "3"]);
    let before = c.wait_for(&job, "some maps to commit", |s| s["maps"]["done"].as_u64() >= Some(3));
    assert_eq!(
        before["state"], "running",
        "the job ended before the coordinator could be killed"
    );
    // SIGKILL the coordinator mid-job: the standby takes the store once its
    // lease lapses, and says where it listens.
    c.coordinator.kill().unwrap();
    c.coordinator.wait().unwrap();
    let mut line = String::new();
    BufReader::new(standby.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    // Every task committed before the kill kept its attempt: none re-ran.
    let after = committed_attempts(&status);
    for (task, attempt) in committed_attempts(&before) {
        assert_eq!(after.get(&task), Some(&attempt), "{task:?} re-ran: {status}");
        let runs = attempts(&status)
            .into_iter()
            .filter(|(p, i, _)| (p.clone(), *i) == task)
            .count();
        assert_eq!(runs, 1, "{task:?} ran again: {status}");
    }
    let _ = standby.kill();
    let _ = standby.wait();
}

#[test]
fn a_restart_folds_the_journal_into_one_snapshot_and_keeps_every_job() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "2s");
    c.add_worker(1);
    let (input, texts) = generated_input(&t, 2, 500);
    let jobs: Vec<String> = (0..3)
        .map(|i| {
            let job = c.submit("wordcount", &input, &t.path(&format!("out{i}")), &[]);
            assert_eq!(c.wait_finished(&job)["state"], "succeeded");
            job
        })
        .collect();
    let journal = t.path("store/journal");
    let before = std::fs::read_dir(&journal).unwrap().count();
    assert!(before > 3, "{before} journal objects");
    c.restart_coordinator();
    // Replay read the history once and folded it into one snapshot.
    let names: Vec<String> = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[1].ends_with(".snapshot") && names[0] == names[1].replace(".snapshot", ".json"),
        "{names:?}"
    );
    for job in &jobs {
        assert_eq!(c.status(job)["state"], "succeeded");
    }
    // And the next restart starts from it, with the next job's events after.
    let job = c.submit("wordcount", &input, &t.path("out3"), &[]);
    assert_eq!(c.wait_finished(&job)["state"], "succeeded");
    c.restart_coordinator();
    for job in jobs.iter().chain([&job]) {
        let s = c.status(job);
        assert_eq!(s["state"], "succeeded");
        assert_eq!(s["maps"]["done"], s["maps"]["total"]);
    }
    assert_eq!(text_output(&t.path("out3")), as_lines(&reference_wordcount(&texts)));
}
