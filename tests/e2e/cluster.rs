//! Distributed mode with real processes on loopback, in the spirit of the
//! classic MapReduce lab's test script: a `wmr coordinator`, `wmr worker`s
//! that are killed, frozen and restarted, and `wmr submit`/`status`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// A coordinator and its workers; every process is killed on drop.
pub(crate) struct Cluster {
    pub(crate) store: String,
    /// Environment for every process (S3 credentials and endpoint, token).
    pub(crate) env: Vec<(String, String)>,
    /// Environment for workers only, after `env` (their own credentials).
    pub(crate) worker_env: Vec<(String, String)>,
    /// Extra flags for the coordinator.
    pub(crate) coordinator_args: Vec<String>,
    pub(crate) addr: String,
    /// The status page's base URL, with `--http` among the coordinator's flags.
    pub(crate) http: Option<String>,
    lease: &'static str,
    backup_after: &'static str,
    coordinator: Child,
    workers: Vec<Child>,
    logs: PathBuf,
}

impl Cluster {
    pub(crate) fn start(t: &TestDir, lease: &'static str) -> Self {
        Self::start_with_backups(t, lease, "5s")
    }

    pub(crate) fn start_with_backups(t: &TestDir, lease: &'static str, backup_after: &'static str) -> Self {
        let store = t.path("store").to_str().unwrap().to_string();
        Self::start_on(t, store, Vec::new(), lease, backup_after)
    }

    pub(crate) fn start_on(
        t: &TestDir,
        store: String,
        env: Vec<(String, String)>,
        lease: &'static str,
        backup_after: &'static str,
    ) -> Self {
        Self::start_with_args(t, store, env, (lease, backup_after), Vec::new())
    }

    pub(crate) fn start_with_args(
        t: &TestDir,
        store: String,
        env: Vec<(String, String)>,
        (lease, backup_after): (&'static str, &'static str),
        coordinator_args: Vec<String>,
    ) -> Self {
        let logs = t.path("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let (coordinator, addr, http) = start_coordinator(
            &store,
            &env,
            "127.0.0.1:0",
            (lease, backup_after),
            &coordinator_args,
            &logs,
        );
        Cluster {
            store,
            env,
            worker_env: Vec::new(),
            coordinator_args,
            addr,
            http,
            lease,
            backup_after,
            coordinator,
            workers: Vec::new(),
            logs,
        }
    }

    pub(crate) fn add_worker(&mut self, slots: usize) {
        self.add_worker_with(slots, &[]);
    }

    /// Start a worker with `extra` flags; with `--metrics`, returns the URL
    /// of its metrics, which it prints.
    pub(crate) fn add_worker_with(&mut self, slots: usize, extra: &[&str]) -> Option<String> {
        let log = std::fs::File::create(self.worker_log(self.workers.len())).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wmr"))
            .args([
                "-v",
                "worker",
                "--coordinator",
                &self.addr,
                "--slots",
                &slots.to_string(),
            ])
            .args(extra)
            .envs(self.env.iter().cloned())
            .envs(self.worker_env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting wmr worker");
        let stdout = child.stdout.take().unwrap();
        self.workers.push(child);
        if !extra.contains(&"--metrics") {
            return None;
        }
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line.split_whitespace().nth(4);
        Some(
            url.unwrap_or_else(|| panic!("worker printed {line:?}, not its metrics URL"))
                .to_string(),
        )
    }

    /// The log file of worker `i`.
    pub(crate) fn worker_log(&self, i: usize) -> PathBuf {
        self.logs.join(format!("worker-{i}.log"))
    }

    /// Worker `i`'s process.
    pub(crate) fn worker(&mut self, i: usize) -> &mut Child {
        &mut self.workers[i]
    }

    /// SIGKILL the coordinator and start it again on the same address and store.
    pub(crate) fn restart_coordinator(&mut self) {
        self.coordinator.kill().unwrap();
        self.coordinator.wait().unwrap();
        let listen = self.addr.split_once("://").map_or(self.addr.as_str(), |(_, a)| a);
        let (coordinator, addr, _) = start_coordinator(
            &self.store,
            &self.env,
            listen,
            (self.lease, self.backup_after),
            &self.coordinator_args,
            &self.logs,
        );
        assert_eq!(addr, self.addr);
        self.coordinator = coordinator;
    }

    pub(crate) fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_wmr"))
            .arg(args[0])
            .args(["--coordinator", &self.addr])
            .args(&args[1..])
            .envs(self.env.iter().cloned())
            .output()
            .expect("running wmr")
    }

    pub(crate) fn submit(&self, job: &str, input: &str, out: &Path, extra: &[&str]) -> String {
        self.submit_to(job, input, out.to_str().unwrap(), extra)
    }

    pub(crate) fn submit_to(&self, job: &str, input: &str, out: &str, extra: &[&str]) -> String {
        let guest = guest(job);
        let mut args = vec![
            "submit",
            "--job",
            guest.to_str().unwrap(),
            "--input",
            input,
            "--output",
            out,
            "--format",
            "text",
        ];
        args.extend_from_slice(extra);
        let o = self.client(&args);
        assert!(
            o.status.success(),
            "submit failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let stdout = String::from_utf8(o.stdout).unwrap();
        stdout
            .lines()
            .last()
            .expect("submit prints the job id last")
            .to_string()
    }

    pub(crate) fn status(&self, job: &str) -> Value {
        let o = self.client(&["status", "--json", job]);
        assert!(
            o.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Poll until `done(status)` or the deadline; returns the last status.
    pub(crate) fn wait_for(&self, job: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.status(job);
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn wait_finished(&self, job: &str) -> Value {
        self.wait_for(job, "the job to end", |s| {
            matches!(s["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
    }
}

fn start_coordinator(
    store: &str,
    env: &[(String, String)],
    listen: &str,
    (lease, backup_after): (&str, &str),
    extra: &[String],
    logs: &Path,
) -> (Child, String, Option<String>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("coordinator.log"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args([
            "-v",
            "coordinator",
            "--listen",
            listen,
            "--store",
            store,
            "--lease",
            lease,
            "--backup-after",
            backup_after,
        ])
        .args(extra)
        .envs(env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("starting wmr coordinator");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // With --http, the status page comes first (it serves while a standby waits).
    let http = extra.iter().any(|a| a == "--http").then(|| {
        let url = line.split_whitespace().nth(5);
        let url = url.unwrap_or_else(|| panic!("coordinator printed {line:?}, not its status page"));
        let url = url.to_string();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        url
    });
    let addr = line
        .split_whitespace()
        .nth(4)
        .unwrap_or_else(|| panic!("coordinator printed {line:?}, not its address"))
        .trim_end_matches(',')
        .to_string();
    (child, addr, http)
}

/// Every attempt of every task of a status: (phase, index, attempt json).
pub(crate) fn attempts(status: &Value) -> Vec<(String, u64, Value)> {
    status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| {
            let (phase, index) = (t["phase"].as_str().unwrap().to_string(), t["index"].as_u64().unwrap());
            t["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |a| (phase.clone(), index, a.clone()))
        })
        .collect()
}

/// Whether two attempts of `phase` on different workers ran at the same
/// time, and every worker in `workers` ran at least one.
fn ran_in_parallel(status: &Value, phase: &str) -> (bool, BTreeSet<String>) {
    let spans: Vec<(u64, u64, String)> = attempts(status)
        .into_iter()
        .filter(|(p, _, a)| p == phase && a["state"] == "succeeded")
        .map(|(_, _, a)| {
            (
                a["started_ms"].as_u64().unwrap(),
                a["ended_ms"].as_u64().unwrap(),
                a["worker"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let workers = spans.iter().map(|s| s.2.clone()).collect();
    let overlap = spans
        .iter()
        .enumerate()
        .any(|(i, a)| spans[i + 1..].iter().any(|b| a.2 != b.2 && a.0 < b.1 && b.0 < a.1));
    (overlap, workers)
}

/// SIGSTOP worker `worker` of `c` while one of `job`'s attempts (a map's,
/// with `maps_only`) is seen running, retrying until one is (a report sent
/// just before the signal does not count; a task of a few ms may end
/// between a status poll and the signal). Returns that task's index.
pub(crate) fn freeze_mid_attempt(c: &Cluster, worker: usize, job: &str, maps_only: bool) -> u64 {
    let pid = c.workers[worker].id().to_string();
    let signal = |sig: &str| assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    let running = |s: &Value| {
        attempts(s)
            .into_iter()
            .find(|(p, _, a)| a["state"] == "running" && (!maps_only || p == "map"))
            .map(|(_, index, _)| index)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "never caught the worker mid-attempt");
        let seen = c.wait_for(job, "an attempt to run", |s| {
            running(s).is_some() || s["state"] != "running"
        });
        assert_eq!(
            seen["state"], "running",
            "the job ended before an attempt was seen running: {seen}"
        );
        signal("-STOP");
        if let Some(index) = running(&c.status(job)) {
            return index;
        }
        signal("-CONT");
    }
}

/// A generated text input: `files` files of about `lines` lines each.
pub(crate) fn generated_input(t: &TestDir, files: u64, lines: usize) -> (String, Vec<String>) {
    let texts: Vec<String> = (0..files).map(|i| corpus(lines, i + 7)).collect();
    for (i, text) in texts.iter().enumerate() {
        t.write(&format!("in/part-{i:02}.txt"), text);
    }
    (t.path("in").to_str().unwrap().to_string(), texts)
}

#[test]
fn wordcount_and_indexer_with_three_workers_equal_the_references() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    for _ in 0..3 {
        c.add_worker(1);
    }
    let out = t.path("wc");
    let job = c.submit(
        "wordcount",
        &gutenberg(),
        &out,
        &["--reducers", "10", "--split-size", "300KiB"],
    );
    assert_eq!(c.wait_finished(&job)["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&gutenberg_texts())));
    // _SUCCESS lists every file with the checksum of its bytes.
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("_SUCCESS")).unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    assert_eq!(files.len(), 10);
    for f in files {
        let bytes = std::fs::read(out.join(f["name"].as_str().unwrap())).unwrap();
        assert_eq!(f["bytes"].as_u64(), Some(bytes.len() as u64));
        assert_eq!(f["xxh3"], format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)), "{f}");
    }
    let out = t.path("ix");
    let job = c.submit(
        "indexer",
        &gutenberg(),
        &out,
        &["--reducers", "3", "--split-size", "300KiB"],
    );
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(text_output(&out), reference_index_of_gutenberg());
    // The counters are those of committed attempts only.
    assert_eq!(status["counters"]["wmr.reduce.output.records"], 22_107);
}

#[test]
fn maps_and_reduces_run_in_parallel_on_both_workers() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    c.add_worker(1);
    let (input, texts) = generated_input(&t, 8, 40_000);
    let out = t.path("out");
    let job = c.submit(
        "wordcount",
        &input,
        &out,
        &["--reducers", "8", "--split-size", "512KiB"],
    );
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    for phase in ["map", "reduce"] {
        let (overlap, workers) = ran_in_parallel(&status, phase);
        assert!(overlap, "no two {phase} attempts overlapped in time: {status}");
        assert_eq!(workers.len(), 2, "{phase}s ran only on {workers:?}");
    }
}

#[test]
fn each_task_runs_once_without_failures_even_when_workers_join_late() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    let (input, texts) = generated_input(&t, 6, 30_000);
    let out = t.path("out");
    let job = c.submit(
        "wordcount",
        &input,
        &out,
        &["--reducers", "4", "--split-size", "256KiB"],
    );
    // Two more workers join once the job is under way.
    c.wait_for(&job, "the first map to commit", |s| {
        s["maps"]["done"].as_u64() >= Some(1)
    });
    c.add_worker(1);
    c.add_worker(2);
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    let mut per_task: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for (phase, index, _) in attempts(&status) {
        *per_task.entry((phase, index)).or_default() += 1;
    }
    assert!(
        per_task.values().all(|&n| n == 1),
        "some task ran more than once: {per_task:?}"
    );
    assert_eq!(status["counters"]["wmr.attempts.retried"], 0);
}

#[test]
fn submit_wait_returns_only_once_the_output_is_complete() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(2);
    let (input, texts) = generated_input(&t, 4, 20_000);
    let out = t.path("out");
    let guest = guest("wordcount");
    let o = c.client(&[
        "submit",
        "--job",
        guest.to_str().unwrap(),
        "--input",
        &input,
        "--output",
        out.to_str().unwrap(),
        "--format",
        "text",
        "--reducers",
        "5",
        "--split-size",
        "256KiB",
        "--wait",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(printed["state"], "succeeded");
    // The moment `--wait` returns, the output is whole and committed...
    let expected = as_lines(&reference_wordcount(&texts));
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("_SUCCESS")).unwrap()).unwrap();
    assert_eq!(manifest["files"].as_array().unwrap().len(), 5);
    let snapshot = dir_contents(&out);
    assert_eq!(text_output(&out), expected);
    // ...and stays exactly so: nothing is written after the job ends.
    let job = printed["job"].as_str().unwrap();
    assert_eq!(c.status(job)["state"], "succeeded");
    c.add_worker(1);
    assert_eq!(dir_contents(&out), snapshot);
}

fn dir_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_str().unwrap().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

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

/// Worker 0 is frozen (SIGSTOP, well within its lease) while it runs a map;
/// worker 1 does the rest. Returns the cluster, the job, its input's texts,
/// the output directory and the frozen map's index.
fn job_with_a_straggler(t: &TestDir, extra: &[&str]) -> (Cluster, String, Vec<String>, PathBuf, u64) {
    let mut c = Cluster::start_with_backups(t, "60s", "1s");
    c.add_worker(1);
    let (input, texts) = generated_input(t, 6, 30_000);
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

/// A CA, and certificates it signs, made for one test.
pub(crate) struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    /// Write the CA certificate as `NAME.pem` and return its path.
    pub(crate) fn write_ca(&self, t: &TestDir, name: &str) -> String {
        t.write(&format!("{name}.pem"), self.ca.pem())
            .to_str()
            .unwrap()
            .to_string()
    }

    /// A certificate for `names`, signed by the CA: (cert path, key path).
    pub(crate) fn issue(&self, t: &TestDir, file: &str, names: &[&str]) -> (String, String) {
        self.issue_in(t, file, names, None)
    }

    /// A certificate for `names` in Organization `organization` (which
    /// gives its role), signed by the CA: (cert path, key path).
    pub(crate) fn issue_in(
        &self,
        t: &TestDir,
        file: &str,
        names: &[&str],
        organization: Option<&str>,
    ) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(o) = organization {
            params.distinguished_name.push(rcgen::DnType::OrganizationName, o);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = t.write(&format!("{file}.pem"), cert.pem());
        let key_path = t.write(&format!("{file}.key"), key.serialize_pem());
        (
            cert_path.to_str().unwrap().to_string(),
            key_path.to_str().unwrap().to_string(),
        )
    }
}

#[test]
fn tls_with_client_certificates_runs_jobs_and_refuses_strangers() {
    use wmr::rpc::pb;
    let t = TestDir::new();
    let pki = Pki::new("wmr test CA");
    let ca = pki.write_ca(&t, "ca");
    let (server_cert, server_key) = pki.issue(&t, "coordinator", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = pki.issue(&t, "client", &["wmr-client"]);
    let (worker_cert, worker_key) = pki.issue_in(&t, "worker", &["wmr-worker"], Some("wmr:worker"));
    let env = vec![
        ("WMR_CA".to_string(), ca.clone()),
        ("WMR_TLS_CERT".to_string(), client_cert.clone()),
        ("WMR_TLS_KEY".to_string(), client_key.clone()),
    ];
    let mut c = Cluster::start_with_args(
        &t,
        t.path("store").to_str().unwrap().to_string(),
        env,
        ("10s", "5s"),
        [
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--ca",
            &ca,
            "--allow-prefix",
            t.path("").to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec(),
    );
    assert!(c.addr.starts_with("https://127.0.0.1:"), "{}", c.addr);
    c.worker_env = vec![
        ("WMR_TLS_CERT".to_string(), worker_cert.clone()),
        ("WMR_TLS_KEY".to_string(), worker_key.clone()),
    ];
    c.add_worker(1);
    let (input, texts) = generated_input(&t, 2, 2_000);
    let out = t.path("out");
    let job = c.submit("wordcount", &input, &out, &["--reducers", "2"]);
    assert_eq!(c.wait_finished(&job)["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));

    // Each way of getting TLS wrong is one line naming the fix.
    let stranger = Pki::new("someone else's CA");
    let other_ca = stranger.write_ca(&t, "other-ca");
    let (stranger_cert, stranger_key) = stranger.issue(&t, "stranger", &["stranger"]);
    let host_port = c.addr.trim_start_matches("https://").to_string();
    let plain = format!("http://{host_port}");
    /// An address, the TLS environment, and what the error must say.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (&c.addr, &[], "give its CA with --ca"),
        (&c.addr, &[("WMR_CA", &other_ca)], "give its CA with --ca"),
        (
            &c.addr,
            &[("WMR_CA", &ca)],
            "client certificate: give --tls-cert and --tls-key",
        ),
        (
            &c.addr,
            &[
                ("WMR_CA", &ca),
                ("WMR_TLS_CERT", &stranger_cert),
                ("WMR_TLS_KEY", &stranger_key),
            ],
            "give one signed by the CA the coordinator trusts",
        ),
        (&plain, &[], "if it serves TLS, use https://"),
    ];
    for (addr, env, expected) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_wmr"))
            .args(["jobs", "--coordinator", addr])
            .env_remove("WMR_CA")
            .env_remove("WMR_TLS_CERT")
            .env_remove("WMR_TLS_KEY")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{addr} {env:?} got through");
        assert!(err.contains(expected), "{addr} {env:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A bare host:port means https once TLS settings are given.
    let o = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["jobs", "--json", "--coordinator", &host_port])
        .envs(c.env.iter().cloned())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let jobs: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(jobs[0]["job"], job.as_str());
    // The worker service is behind the same TLS: no client certificate, no
    // registration.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tls = wmr::rpc::tls::ClientTls::from_flags(Some(Path::new(&ca)), None, None).unwrap();
        let refused = match wmr::rpc::client::connect(&c.addr, &tls).await {
            Err(e) => e.to_string(),
            Ok(channel) => wmr::rpc::client::workers(channel, None)
                .register_worker(pb::RegisterWorkerRequest {
                    name: "intruder".into(),
                    slots: 1,
                })
                .await
                .unwrap_err()
                .to_string(),
        };
        assert!(refused.contains("client certificate: give --tls-cert"), "{refused}");
    });
    // The coordinator logged the refused handshakes.
    let log = std::fs::read_to_string(t.path("logs/coordinator.log")).unwrap();
    assert!(log.contains("tls accept error"), "{log}");
}

#[test]
fn tls_for_the_server_only_carries_the_token_and_checks_files() {
    let t = TestDir::new();
    let pki = Pki::new("wmr test CA");
    let ca = pki.write_ca(&t, "ca");
    let (cert, key) = pki.issue(&t, "coordinator", &["localhost"]);
    let token_file = t.write("tokens", "tls-token,me,client\nworker-token,pool,worker\n");
    let env = vec![
        ("WMR_CA".to_string(), ca.clone()),
        ("WMR_TOKEN".to_string(), "tls-token".to_string()),
    ];
    let args = ["--tls-cert", &cert, "--tls-key", &key, "--tokens"]
        .map(String::from)
        .into_iter()
        .chain([token_file.to_str().unwrap().to_string()])
        .chain(["--allow-prefix".to_string(), t.path("").to_str().unwrap().to_string()])
        .collect();
    let mut c = Cluster::start_with_args(
        &t,
        t.path("store").to_str().unwrap().to_string(),
        env,
        ("10s", "5s"),
        args,
    );
    // The certificate names localhost, so that is the address to use.
    c.addr = c.addr.replace("127.0.0.1", "localhost");
    c.worker_env = vec![("WMR_TOKEN".to_string(), "worker-token".to_string())];
    c.add_worker(1);
    let (input, texts) = generated_input(&t, 1, 1_000);
    let out = t.path("out");
    let job = c.submit("wordcount", &input, &out, &[]);
    assert_eq!(c.wait_finished(&job)["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    // TLS does not replace the token.
    let o = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["jobs", "--coordinator", &c.addr])
        .env("WMR_CA", &ca)
        .env_remove("WMR_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the coordinator refused the call: no token"), "{err}");
    // An address by IP is not one the certificate names.
    let by_ip = c.addr.replace("localhost", "127.0.0.1");
    let err = String::from_utf8(c.client(&["jobs"]).stderr).unwrap();
    assert!(err.is_empty(), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["jobs", "--coordinator", &by_ip])
        .envs(c.env.iter().cloned())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not name the host in the address"), "{err}");
    // TLS settings with an http:// address contradict each other.
    let plain = c.addr.replace("https://", "http://");
    let o = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["jobs", "--coordinator", &plain])
        .envs(c.env.iter().cloned())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("says http://; use https://"), "{err}");
    // Files that are not PEM are refused by name, before anything starts.
    let junk = t.write("junk.pem", "not pem");
    let o = wmr(&[
        "coordinator",
        "--store",
        t.path("store2").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        junk.to_str().unwrap(),
        "--tls-key",
        &key,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("junk.pem (given to --tls-cert) holds no PEM certificate"),
        "{err}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["jobs", "--coordinator", &c.addr, "--tls-cert", &cert])
        .env("WMR_CA", &ca)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--tls-cert and --tls-key go together"), "{err}");
}

#[test]
fn a_coordinator_compiles_submitted_modules_within_its_bounds() {
    let t = TestDir::new();
    let mut c = Cluster::start_with_args(
        &t,
        t.path("store").to_str().unwrap().to_string(),
        Vec::new(),
        ("10s", "5s"),
        vec!["--max-compile-memory".into(), "64MiB".into()],
    );
    c.add_worker(1);
    let bomb = crate::hostile::compile_bomb(&t, 200_000);
    let input = t.write("in/a.txt", "one two two\n");
    let o = c.client(&[
        "submit",
        "--job",
        bomb.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        t.path("bomb-out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("needed more than 64.0 MiB of memory, the limit; raise it with --max-compile-memory"),
        "{err}"
    );
    // A module over the size limit is refused before it is sent.
    let huge = t.path("huge.wasm");
    std::fs::File::create(&huge).unwrap().set_len((256 << 20) + 1).unwrap();
    let o = c.client(&[
        "submit",
        "--job",
        huge.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        t.path("huge-out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("huge.wasm is 268435457 bytes, over the 256 MiB"), "{err}");
    // The coordinator is unharmed and runs the next job.
    let out = t.path("out");
    let job = c.submit("wordcount", input.to_str().unwrap(), &out, &[]);
    assert_eq!(c.wait_finished(&job)["state"], "succeeded");
    assert_eq!(text_output(&out), vec!["one 1", "two 2"]);
}

#[test]
fn a_coordinator_refuses_a_public_address_without_a_token() {
    let t = TestDir::new();
    let store = t.path("store");
    let o = wmr(&[
        "coordinator",
        "--listen",
        "0.0.0.0:0",
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0:0 without a token"), "{err}");
    // --insecure says the network is private: it starts.
    let mut child = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args([
            "coordinator",
            "--listen",
            "0.0.0.0:0",
            "--insecure",
            "--store",
            store.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.starts_with("wmr coordinator listening on http://0.0.0.0:"),
        "{line}"
    );
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
fn a_total_order_job_on_a_cluster_writes_parts_in_key_order() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    c.add_worker(1);
    let texts: Vec<String> = (0..4).map(|i| corpus(3000, i + 21)).collect();
    for (i, text) in texts.iter().enumerate() {
        t.write(&format!("in/f{i}.txt"), text);
    }
    let out = t.path("out");
    let job = c.submit(
        "wordcount",
        t.path("in").to_str().unwrap(),
        &out,
        &["--reducers", "3", "--split-size", "16KiB", "--total-order"],
    );
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    let mut words = Vec::new();
    for p in 0..3 {
        let part = std::fs::read_to_string(out.join(format!("part-{p:05}.txt"))).unwrap();
        words.extend(part.lines().map(|l| l.rsplit_once(' ').unwrap().0.to_string()));
    }
    let mut sorted = words.clone();
    sorted.sort_unstable();
    assert_eq!(words, sorted, "the parts in order are in key order");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
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
fn a_corrupted_shuffle_object_gets_its_map_run_again_and_the_output_is_identical() {
    let t = TestDir::new();
    // A lease long enough that the frozen worker is not declared lost while
    // the other does two hundred maps on a loaded machine: it is lost when
    // it is killed, as its connection drops.
    let mut c = Cluster::start_with_backups(&t, "30s", "1h");
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
