//! Distributed mode with real processes on loopback, in the spirit of the
//! classic MapReduce lab's test script. The harness every cluster test
//! uses (a `wmr coordinator` and `wmr worker`s that can be added, frozen,
//! killed and restarted, `wmr submit`/`status`, a test CA), and jobs on a
//! healthy cluster: outputs equal the references, tasks run in parallel and
//! once each, in key order when asked.

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
    pub(crate) coordinator: Child,
    pub(crate) workers: Vec<Child>,
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
        // A job is `queued` until its first attempt starts.
        let ended = |s: &Value| matches!(s["state"].as_str(), Some("succeeded" | "failed" | "cancelled"));
        let seen = c.wait_for(job, "an attempt to run", |s| running(s).is_some() || ended(s));
        assert!(
            !ended(&seen),
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
