//! Operating a cluster: the status page (in headless Chromium), Prometheus
//! metrics parsed with the Prometheus project's own parser, tokens on both,
//! workers that drain on SIGTERM, and the CLI's comforts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::cluster::{Cluster, attempts, freeze_mid_attempt, generated_input};
use crate::harness::*;

const TOKENS: &str = "\
alice-token,alice,client
bob-token,bob,client
pool-token,pool,worker
prom-token,prometheus,metrics
";

fn client_py() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/web/client.py")
}

/// Run `client.py` with `args`; its JSON answer.
fn web_client(args: &[&str]) -> Value {
    let o = Command::new(test_python())
        .arg(client_py())
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "client.py {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// GET `url` (with a bearer `token`): status and body.
fn get(url: &str, token: Option<&str>) -> (u64, String) {
    let mut args = vec!["get", url];
    args.extend(token);
    let answer = web_client(&args);
    (
        answer["status"].as_u64().unwrap(),
        answer["body"].as_str().unwrap().to_string(),
    )
}

/// Scrape `url`: every sample as `name{label=value,...}` → value.
fn scrape(url: &str, token: Option<&str>) -> BTreeMap<String, f64> {
    let mut args = vec!["metrics", url];
    args.extend(token);
    samples(web_client(&args))
}

/// Scrape `url` over HTTPS, trusting `ca`.
fn scrape_with_ca(url: &str, token: &str, ca: &str) -> BTreeMap<String, f64> {
    samples(web_client(&["metrics", url, token, ca]))
}

/// A scrape's samples as `name{label=value,...}` → value.
fn samples(answer: Value) -> BTreeMap<String, f64> {
    assert_eq!(answer["status"], 200, "{answer}");
    answer["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels: Vec<String> = s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect();
            (
                format!("{}{{{}}}", s["name"].as_str().unwrap(), labels.join(",")),
                s["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include every one of `labels`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| {
            k.split_once('{').is_some_and(|(n, rest)| {
                n == name
                    && labels
                        .iter()
                        .all(|l| rest.trim_end_matches('}').split(',').any(|x| x == *l))
            })
        })
        .map(|(_, v)| v)
        .sum()
}

/// A cluster with tokens and a status page, and one worker serving its
/// metrics (whose URL is returned); clients act as alice.
fn cluster_with_a_page(t: &TestDir) -> (Cluster, String) {
    let tokens = t.write("tokens.csv", TOKENS);
    let mut c = Cluster::start_with_args(
        t,
        t.path("store").to_str().unwrap().to_string(),
        vec![("WMR_TOKEN".into(), "alice-token".into())],
        // A lease long enough for a worker frozen while a browser starts.
        ("60s", "5s"),
        vec![
            "--tokens".into(),
            tokens.to_str().unwrap().into(),
            "--allow-prefix".into(),
            t.path("").to_str().unwrap().into(),
            "--http".into(),
            "127.0.0.1:0".into(),
        ],
    );
    c.worker_env = vec![("WMR_TOKEN".into(), "pool-token".into())];
    let metrics = c.add_worker_with(1, &["--metrics", "127.0.0.1:0"]).unwrap();
    (c, metrics)
}

/// Submit a job of `lines` maps, each a one-line file taking 300 ms.
fn submit_slow_job(c: &Cluster, t: &TestDir, dir: &str, lines: usize) -> String {
    for i in 0..lines {
        // Eight bytes a line, and a split of eight bytes: one map per file.
        t.write(&format!("{dir}/{i:02}.txt"), format!("line {i:02}\n"));
    }
    let (input, out) = (t.path(dir), t.path(&format!("{dir}-out")));
    c.submit_to(
        "hostile",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--param", "mode=slow", "--split-size", "8B", "--reducers", "2"],
    )
}

/// Submit panicky word count over generated text with one bad line,
/// skipped after its attempt fails.
fn submit_failing_job(c: &Cluster, t: &TestDir) -> String {
    let (input, _) = generated_input(t, 3, 5_000);
    t.write("in/zz-bad.txt", "a line that goes BOOM\n");
    let out = t.path("out");
    c.submit(
        "panicky",
        &input,
        &out,
        &["--reducers", "2", "--split-size", "128KiB", "--skip-bad-records", "1"],
    )
}

fn signal(c: &mut Cluster, worker: usize, sig: &str) {
    let pid = c.worker(worker).id().to_string();
    assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
}

#[test]
fn metrics_during_and_after_a_job_match_its_status_and_tokens_guard_page_and_metrics() {
    let t = TestDir::new();
    let (mut c, worker_metrics) = cluster_with_a_page(&t);
    let http = c.http.clone().unwrap();
    let metrics_url = format!("{http}metrics");
    let slow = submit_slow_job(&c, &t, "slow", 6);
    // Frozen mid-attempt first: the job must still be running when scraped
    // below, and each request of the checks takes a process's start.
    freeze_mid_attempt(&c, 0, &slow, false);

    // Without a token, or with a wrong one: refused, page and metrics alike.
    for url in [http.as_str(), &format!("{http}jobs/{slow}"), &metrics_url] {
        assert_eq!(get(url, None).0, 401, "{url}");
        assert_eq!(get(url, Some("nobody-token")).0, 401, "{url}");
    }
    // Only a metrics (or admin) token reads metrics, and it reads no page.
    assert_eq!(get(&http, Some("pool-token")).0, 403);
    assert_eq!(get(&http, Some("prom-token")).0, 403);
    assert_eq!(get(&metrics_url, Some("pool-token")).0, 403);
    assert_eq!(get(&metrics_url, Some("alice-token")).0, 403);
    assert_eq!(get(&metrics_url, Some("prom-token")).0, 200);

    // During a job (its worker frozen mid-attempt): running, with a task running.
    let during = scrape(&metrics_url, Some("prom-token"));
    signal(&mut c, 0, "-CONT");
    assert_eq!(sum(&during, "wmr_jobs", &["state=running"]), 1.0, "{during:?}");
    assert!(sum(&during, "wmr_tasks", &["state=running"]) >= 1.0, "{during:?}");
    assert_eq!(sum(&during, "wmr_workers", &[]), 1.0);
    assert_eq!(sum(&during, "wmr_worker_slots", &[]), 1.0);
    let slow_status = c.wait_finished(&slow);
    assert_eq!(slow_status["state"], "succeeded", "{slow_status}");

    let job = submit_failing_job(&c, &t);
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    let after = scrape(&metrics_url, Some("prom-token"));
    let both = [&slow_status, &status];
    let count = |state: &str| {
        both.iter()
            .flat_map(|s| attempts(s))
            .filter(|(_, _, a)| a["state"] == state)
            .count() as f64
    };
    assert!(count("failed") >= 1.0, "the bad line failed an attempt: {status}");
    assert_eq!(
        sum(&after, "wmr_attempts_total", &["outcome=succeeded"]),
        count("succeeded")
    );
    assert_eq!(sum(&after, "wmr_attempts_total", &["outcome=failed"]), count("failed"));
    assert_eq!(sum(&after, "wmr_attempts_total", &["outcome=lost"]), count("lost"));
    let counter = |name: &str| {
        both.iter()
            .map(|s| s["counters"][name].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    assert!(counter("wmr.map.input.bytes") > 0.0);
    assert_eq!(
        sum(&after, "wmr_input_bytes_total", &[]),
        counter("wmr.map.input.bytes")
    );
    assert_eq!(
        sum(&after, "wmr_shuffle_bytes_total", &[]),
        counter("wmr.shuffle.bytes")
    );
    assert_eq!(sum(&after, "wmr_output_bytes_total", &[]), counter("wmr.output.bytes"));
    let maps: f64 = both.iter().map(|s| s["maps"]["total"].as_f64().unwrap()).sum();
    assert_eq!(sum(&after, "wmr_attempt_duration_seconds_count", &["phase=map"]), maps);
    assert!(
        sum(&after, "wmr_guest_seconds_total", &["phase=map"]) >= 6.0 * 0.3,
        "{after:?}"
    );
    assert_eq!(sum(&after, "wmr_jobs", &["state=succeeded"]), 2.0);
    assert_eq!(sum(&after, "wmr_jobs", &["state=running"]), 0.0);
    assert_eq!(sum(&after, "wmr_tasks", &["state=running"]), 0.0);
    // No job id in any label.
    assert!(after.keys().all(|k| !k.contains("job-")));

    // The worker saw the same attempts, and wrote the same bytes.
    let worker = scrape(&worker_metrics, None);
    assert_eq!(
        sum(&worker, "wmr_worker_attempts_total", &["outcome=succeeded"]),
        count("succeeded")
    );
    assert_eq!(
        sum(&worker, "wmr_worker_attempts_total", &["outcome=failed"]),
        count("failed")
    );
    assert_eq!(
        sum(&worker, "wmr_worker_output_bytes_total", &[]),
        counter("wmr.output.bytes")
    );
    assert_eq!(sum(&worker, "wmr_worker_running_attempts", &[]), 0.0);

    // One tenant does not see another's job, on the page or by its URL.
    let (code, page) = get(&http, Some("alice-token"));
    assert_eq!(code, 200);
    assert!(page.contains(&job));
    let (code, page) = get(&http, Some("bob-token"));
    assert_eq!(code, 200);
    assert!(!page.contains(&job), "bob sees alice's job: {page}");
    assert_eq!(get(&format!("{http}jobs/{job}"), Some("bob-token")).0, 404);
    let (code, page) = get(&format!("{http}jobs/{job}"), Some("alice-token"));
    assert_eq!(code, 200);
    assert!(page.contains("refusing to count a line with BOOM in it"), "{page}");
}

/// Where the tests leave screenshots: `target/test-artifacts/`.
fn artifacts() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_status_page_in_a_browser_shows_the_job_its_tasks_a_failure_and_the_timeline() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists() && std::path::Path::new("/usr/bin/chromedriver").exists(),
        "Chromium and ChromeDriver are missing: `cargo xtask test` installs Debian's chromium and chromium-driver"
    );
    let t = TestDir::new();
    let (mut c, _) = cluster_with_a_page(&t);
    let http = c.http.clone().unwrap();
    let shots = artifacts();
    let shots = shots.to_str().unwrap();

    // While a job runs (its worker frozen mid-attempt).
    let slow = submit_slow_job(&c, &t, "slow", 4);
    freeze_mid_attempt(&c, 0, &slow, false);
    let running = web_client(&["browser", &http, "alice-token", &slow, shots]);
    signal(&mut c, 0, "-CONT");
    assert_eq!(running["login_form"], true, "{running}");
    assert_eq!(running["jobs_listed"], serde_json::json!([slow]), "{running}");
    assert_eq!(running["workers"], 1, "{running}");
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(
        running["refreshes"], true,
        "a running job's page reloads itself: {running}"
    );
    assert!(running["timeline_bars"].as_u64().unwrap() >= 1, "{running}");
    assert_eq!(c.wait_finished(&slow)["state"], "succeeded");

    // After a job with a failed attempt ends.
    let job = submit_failing_job(&c, &t);
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    let done = web_client(&["browser", &http, "alice-token", &job, shots]);
    assert_eq!(
        done["jobs_listed"],
        serde_json::json!([job, slow]),
        "newest first: {done}"
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["refreshes"], false, "{done}");
    let tasks = status["tasks"].as_array().unwrap();
    let all_attempts = attempts(&status).len() as u64;
    let failed = attempts(&status)
        .iter()
        .filter(|(_, _, a)| a["state"] == "failed")
        .count() as u64;
    assert!(failed >= 1);
    // One row per attempt, one bar per attempt, a red one per failure.
    assert_eq!(done["tasks"].as_u64().unwrap(), all_attempts, "{done}");
    assert!(tasks.len() as u64 <= all_attempts);
    assert_eq!(done["timeline_bars"].as_u64().unwrap(), all_attempts, "{done}");
    assert_eq!(done["timeline_failed_bars"].as_u64().unwrap(), failed, "{done}");
    let failures = done["failures"].as_array().unwrap();
    assert_eq!(failures.len() as u64, failed, "{done}");
    assert!(
        failures
            .iter()
            .all(|f| f.as_str().unwrap().contains("refusing to count a line with BOOM in it")),
        "{done}"
    );
    assert_eq!(done["skipped"], true, "{done}");
    for shot in ["status-jobs.png", "status-job-running.png", "status-job-succeeded.png"] {
        let bytes = std::fs::read(std::path::Path::new(shots).join(shot)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is not a PNG");
    }

    // Bob logs in and sees no job.
    let bob = Command::new(test_python())
        .arg(client_py())
        .args(["browser", &http, "bob-token", &job, shots])
        .output()
        .unwrap();
    // His browser finds no job page (no #state element): the script fails.
    assert!(!bob.status.success());
    assert!(String::from_utf8_lossy(&bob.stderr).contains("NoSuchElement"));
}

/// Wait (a minute at most) for worker `i` to exit by itself, with success.
fn wait_for_clean_exit(c: &mut Cluster, i: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = c.worker(i).try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker {i} did not exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(exit.success(), "worker {i} exited with {exit}");
}

/// The label the coordinator gave worker `i`, from its log.
fn worker_label(c: &Cluster, i: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(c.worker_log(i)).unwrap_or_default();
        let label = log
            .lines()
            .filter(|l| l.contains("registered"))
            .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("worker=")))
            .map(String::from);
        if let Some(label) = label {
            return label;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker {i} never registered: {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_worker_drained_by_sigterm_mid_job_loses_no_attempt() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    c.add_worker(1);
    // 24 maps of one line each, 300 ms a line: both workers stay busy.
    let job = submit_slow_job(&c, &t, "in", 24);
    let out = t.path("in-out");
    let label = worker_label(&c, 0);
    let on_worker_0 = |a: &Value| a["state"] == "running" && a["worker"] == label.as_str();
    let status = c.wait_for(&job, "worker 0 to run an attempt", |s| {
        attempts(s).iter().any(|(_, _, a)| on_worker_0(a))
    });
    assert_eq!(status["maps"]["total"], 24, "one map per file");
    let (_, index, caught) = attempts(&status).into_iter().find(|(_, _, a)| on_worker_0(a)).unwrap();
    signal(&mut c, 0, "-TERM");
    // The drained worker exits by itself, cleanly, once its attempt is done.
    wait_for_clean_exit(&mut c, 0);

    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(text_output(&out), ["lines 24"]);
    // Nothing failed or was lost: every task ran exactly once.
    let all = attempts(&status);
    assert!(
        all.iter().all(|(_, _, a)| a["state"] == "succeeded"),
        "an attempt failed or was lost: {status}"
    );
    assert_eq!(all.len(), status["tasks"].as_array().unwrap().len(), "{status}");
    assert_eq!(status["counters"]["wmr.attempts.retried"], 0);
    // The attempt running when the signal came finished on its worker.
    let finished = all
        .iter()
        .find(|(p, i, a)| *p == "map" && *i == index && a["attempt"] == caught["attempt"])
        .unwrap();
    assert_eq!(finished.2["state"], "succeeded", "{status}");
    let log = std::fs::read_to_string(c.worker_log(0)).unwrap();
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("drained and left"), "{log}");
    // The coordinator forgot it at once: the other worker did the rest.
    let coordinator_log = std::fs::read_to_string(t.path("logs/coordinator.log")).unwrap();
    assert!(coordinator_log.contains("worker left"), "{coordinator_log}");
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef wmr"),
        ("fish", "complete -c wmr"),
    ] {
        let o = wmr_ok(&["completions", shell]);
        let script = String::from_utf8(o.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("coordinator") && script.contains("log-format"),
            "{shell}"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line_even_for_the_final_error() {
    let t = TestDir::new();
    let input = t.write("in.txt", "one two\n");
    let o = wmr(&[
        "-v",
        "--log-format",
        "json",
        "run",
        "--job",
        "/nonexistent/job.wasm",
        "--input",
        input.to_str().unwrap(),
        "--output",
        t.path("out").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8(o.stderr).unwrap();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    let last = lines.last().expect("the error is logged");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/job.wasm"),
        "{last}"
    );
    assert_eq!(last["fields"]["exit_code"], o.status.code().unwrap(), "{last}");
}

#[test]
fn health_answers_for_a_serving_coordinator_and_a_standby_is_alive_but_not_ready() {
    let t = TestDir::new();
    let c = Cluster::start_with_args(
        &t,
        t.path("store").to_str().unwrap().to_string(),
        Vec::new(),
        ("10s", "5s"),
        vec!["--http".into(), "127.0.0.1:0".into()],
    );
    let o = wmr_ok(&["health", "--coordinator", &c.addr]);
    assert!(String::from_utf8(o.stdout).unwrap().contains("is serving"));
    let http = c.http.clone().unwrap();
    assert_eq!(get(&format!("{http}readyz"), None).0, 200);

    // A standby on the same store: alive on its HTTP address, not ready.
    let mut standby = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--standby",
            "--store",
        ])
        .arg(t.path("store"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(standby.stdout.take().unwrap()), &mut line).unwrap();
    let standby_http = line.split_whitespace().nth(5).unwrap().to_string();
    assert_eq!(get(&format!("{standby_http}healthz"), None).0, 200);
    let (code, body) = get(&format!("{standby_http}readyz"), None);
    assert_eq!(code, 503);
    assert!(body.contains("standby"), "{body}");
    assert_eq!(get(&standby_http, None).0, 503);
    standby.kill().unwrap();
    standby.wait().unwrap();

    // Nothing listening: a clear failure, not a hang.
    let dead = wmr(&["health", "--coordinator", "127.0.0.1:1", "--timeout", "3s"]);
    assert!(!dead.status.success());
    assert!(String::from_utf8_lossy(&dead.stderr).contains("127.0.0.1:1"));
}

#[test]
fn attempts_still_running_at_the_drain_timeout_are_handed_back_without_counting_against_their_task() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker_with(1, &["--drain-timeout", "500ms"]);
    // One map of 20 lines at 300 ms each: 6 s, far past the drain timeout.
    let lines: String = (0..20).map(|i| format!("line {i:02}\n")).collect();
    t.write("in/long.txt", lines);
    let out = t.path("out");
    let job = c.submit_to(
        "hostile",
        t.path("in").to_str().unwrap(),
        out.to_str().unwrap(),
        // One attempt allowed: had the hand-back counted, the job would fail.
        &["--param", "mode=slow", "--max-attempts", "1", "--reducers", "1"],
    );
    c.wait_for(&job, "the map to run", |s| {
        attempts(s).iter().any(|(_, _, a)| a["state"] == "running")
    });
    signal(&mut c, 0, "-TERM");
    wait_for_clean_exit(&mut c, 0);
    // The coordinator re-queued the map at once; a new worker runs it.
    let status = c.wait_for(&job, "the map to be handed back", |s| {
        attempts(s).iter().any(|(_, _, a)| a["state"] == "lost")
    });
    assert_eq!(status["state"], "running", "{status}");
    c.add_worker(1);
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(text_output(&out), ["lines 20"]);
    let log = std::fs::read_to_string(c.worker_log(0)).unwrap();
    assert!(log.contains("handing them back"), "{log}");
}

#[test]
fn wmr_run_serves_its_status_page_on_loopback_while_the_job_runs() {
    let t = TestDir::new();
    for i in 0..4 {
        t.write(&format!("in/{i:02}.txt"), format!("line {i:02}\n"));
    }
    let out = t.path("out");
    let mut run = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["run", "--http", "127.0.0.1:0", "--slots", "1", "--job"])
        .arg(guest("hostile"))
        .args([
            "--param",
            "mode=slow",
            "--split-size",
            "8B",
            "--format",
            "text",
            "--input",
        ])
        .arg(t.path("in"))
        .arg("--output")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(run.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let http = line
        .strip_prefix("wmr run: status page on ")
        .unwrap_or_else(|| panic!("wmr run printed {line:?}"))
        .trim()
        .to_string();
    // While it runs (4 maps of 300 ms): the job is listed, running.
    let (code, page) = get(&http, None);
    assert_eq!(code, 200);
    assert!(page.contains("/jobs/job-") && page.contains("running"), "{page}");
    let during = scrape(&format!("{http}metrics"), None);
    assert_eq!(sum(&during, "wmr_jobs", &["state=running"]), 1.0, "{during:?}");
    assert!(run.wait().unwrap().success());
    assert_eq!(text_output(&out), ["lines 4"]);

    // Beyond loopback it has no tokens to guard the page with: refused.
    let o = wmr(&[
        "run",
        "--http",
        "0.0.0.0:0",
        "--job",
        "x.wasm",
        "--input",
        "x",
        "--output",
        "y",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("loopback only"));
}

#[test]
fn with_a_certificate_the_status_page_is_https_and_plain_http_gets_nothing() {
    let t = TestDir::new();
    let pki = crate::cluster::Pki::new("wmr test CA");
    let ca = pki.write_ca(&t, "ca");
    let (cert, key) = pki.issue(&t, "coordinator", &["localhost"]);
    let tokens = t.write("tokens.csv", TOKENS);
    let c = Cluster::start_with_args(
        &t,
        t.path("store").to_str().unwrap().to_string(),
        Vec::new(),
        ("10s", "5s"),
        [
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tokens",
            tokens.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec(),
    );
    let http = c.http.clone().unwrap();
    assert!(http.starts_with("https://127.0.0.1:"), "{http}");
    // The certificate names localhost.
    let https = http.replace("127.0.0.1", "localhost");
    let metrics = scrape_with_ca(&format!("{https}metrics"), "prom-token", &ca);
    assert_eq!(sum(&metrics, "wmr_workers", &[]), 0.0);
    let answer = web_client(&["get", &https, "alice-token", &ca]);
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(web_client(&["get", &https, "-", &ca])["status"], 401);
    // Plain HTTP, or a client that does not trust the CA: no answer at all.
    for args in [
        vec![
            "get".to_string(),
            https.replace("https://", "http://"),
            "alice-token".into(),
        ],
        vec!["get".to_string(), https.clone(), "alice-token".into()],
    ] {
        let o = Command::new(test_python())
            .arg(client_py())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "{args:?} got an answer: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}
