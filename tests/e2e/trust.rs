//! The trust boundary around the coordinator, each test an attack driven
//! through real processes: callers with the wrong role, forged reports,
//! other tenants' jobs.

use std::process::Command;

use serde_json::Value;
use wmr::rpc::auth::Token;
use wmr::rpc::pb;

use crate::cluster::{Cluster, generated_input};
use crate::harness::*;

/// The tokens every test here uses: two tenants, an admin, two worker pools.
const TOKENS: &str = "\
# TOKEN,NAME,ROLE
alice-token,alice,client
bob-token,bob,client
ops-token,ops,admin
pool-token,pool,worker
pool2-token,pool2,worker
";

/// A coordinator with [`TOKENS`] that lets jobs use the whole test
/// directory; clients act as alice, workers as pool.
fn cluster_with_tokens(t: &TestDir) -> Cluster {
    cluster_with_tokens_allowing(t, &[""])
}

/// A coordinator with [`TOKENS`] that lets jobs use `allowed` (paths in the
/// test directory).
fn cluster_with_tokens_allowing(t: &TestDir, allowed: &[&str]) -> Cluster {
    let tokens = t.write("tokens.csv", TOKENS);
    let mut args = vec!["--tokens".to_string(), tokens.to_str().unwrap().into()];
    for a in allowed {
        args.push("--allow-prefix".into());
        args.push(t.path(a).to_str().unwrap().into());
    }
    let mut c = Cluster::start_with_args(
        t,
        t.path("store").to_str().unwrap().to_string(),
        vec![("WMR_TOKEN".into(), "alice-token".into())],
        ("10s", "5s"),
        args,
    );
    c.worker_env = vec![("WMR_TOKEN".into(), "pool-token".into())];
    c
}

/// Run a `wmr` client command against `c` as the holder of `token`.
fn as_holder(c: &Cluster, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wmr"));
    cmd.arg(args[0])
        .args(["--coordinator", &c.addr])
        .args(&args[1..])
        .env_remove("WMR_TOKEN");
    if let Some(token) = token {
        cmd.env("WMR_TOKEN", token);
    }
    cmd.output().unwrap()
}

fn token(text: &str) -> Option<Token> {
    Some(Token::new(text, "test").unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn each_service_takes_only_its_own_role_and_strangers_none() {
    let t = TestDir::new();
    let mut c = cluster_with_tokens(&t);
    c.add_worker(1);
    let (input, texts) = generated_input(&t, 1, 2_000);
    let out = t.path("out");
    let job = c.submit("wordcount", &input, &out, &["--reducers", "2"]);
    assert_eq!(c.wait_finished(&job)["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
    // No token, a wrong one, and a worker's: refused by the job service, one
    // line each naming the fix.
    for (token, expected) in [
        (None, "the coordinator refused the call: no token"),
        (Some("wrong"), "the coordinator refused the call: a wrong token"),
        (Some("pool-token"), "use a client token; worker tokens only run tasks"),
    ] {
        let o = as_holder(&c, token, &["status", &job]);
        assert_eq!(o.status.code(), Some(2), "{token:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expected), "{token:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A worker token cannot submit either.
    let o = as_holder(
        &c,
        Some("pool-token"),
        &[
            "submit",
            "--job",
            guest("wordcount").to_str().unwrap(),
            "--input",
            &input,
            "--output",
            t.path("out2").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("use a client token"));
    // The worker service refuses clients, admins and strangers.
    runtime().block_on(async {
        for (who, expected) in [
            (token("alice-token"), tonic::Code::PermissionDenied),
            (token("ops-token"), tonic::Code::PermissionDenied),
            (token("wrong"), tonic::Code::Unauthenticated),
            (None, tonic::Code::Unauthenticated),
        ] {
            let channel = wmr::rpc::client::connect(&c.addr, &Default::default()).await.unwrap();
            let refused = wmr::rpc::client::workers(channel, who)
                .register_worker(pb::RegisterWorkerRequest {
                    name: "intruder".into(),
                    slots: 1,
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), expected, "{refused:?}");
        }
    });
    let log = std::fs::read_to_string(t.path("logs/coordinator.log")).unwrap();
    assert!(log.contains("refused a call with no token"), "{log}");
    assert!(log.contains("refused a call with a wrong token"), "{log}");
    assert!(log.contains("refused a call with the wrong role"), "{log}");
}

#[test]
fn a_tenant_sees_and_cancels_only_its_own_jobs() {
    let t = TestDir::new();
    let c = cluster_with_tokens(&t);
    // No workers: alice's job stays queued while bob tries it.
    let (input, _) = generated_input(&t, 1, 100);
    let job = c.submit("wordcount", &input, &t.path("out"), &[]);
    let listed = |token: &str| -> Vec<String> {
        let o = as_holder(&c, Some(token), &["jobs", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let jobs: Value = serde_json::from_slice(&o.stdout).unwrap();
        jobs.as_array()
            .unwrap()
            .iter()
            .map(|j| j["job"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed("alice-token"), std::slice::from_ref(&job));
    assert_eq!(listed("ops-token"), std::slice::from_ref(&job));
    assert!(listed("bob-token").is_empty());
    // To bob, alice's job does not exist: not to see, watch or cancel.
    for args in [vec!["status", job.as_str()], vec!["cancel", job.as_str()]] {
        let o = as_holder(&c, Some("bob-token"), &args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("no job {job}")), "{args:?}: {err}");
    }
    runtime().block_on(async {
        let channel = wmr::rpc::client::connect(&c.addr, &Default::default()).await.unwrap();
        let refused = wmr::rpc::client::jobs(channel, token("bob-token"))
            .watch_job(pb::WatchJobRequest { job_id: job.clone() })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    });
    assert_eq!(c.status(&job)["state"], "queued");
    // An admin may cancel it.
    let o = as_holder(&c, Some("ops-token"), &["cancel", &job]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(c.status(&job)["state"], "cancelled");
}

#[test]
fn a_report_from_anyone_but_the_assigned_worker_is_refused() {
    let t = TestDir::new();
    let mut c = cluster_with_tokens(&t);
    let (input, texts) = generated_input(&t, 1, 1_000);
    let out = t.path("out");
    let job = c.submit("wordcount", &input, &out, &["--reducers", "1"]);
    let rt = runtime();
    let connect = |who: &str| {
        let addr = c.addr.clone();
        let who = who.to_string();
        async move {
            let channel = wmr::rpc::client::connect(&addr, &Default::default()).await.unwrap();
            wmr::rpc::client::workers(channel, token(&who))
        }
    };
    let (assigned_secret, assignment) = rt.block_on(async {
        // A worker of pool takes the map task.
        let mut a = connect("pool-token").await;
        let reg = a
            .register_worker(pb::RegisterWorkerRequest {
                name: "a".into(),
                slots: 1,
            })
            .await
            .unwrap()
            .into_inner();
        let assignment = a
            .poll_task(pb::PollTaskRequest {
                worker_id: reg.worker_id.clone(),
                wait_ms: 5_000,
            })
            .await
            .unwrap()
            .into_inner()
            .assignment
            .expect("the map task");
        (reg.worker_id, assignment)
    });
    let failed = |secret: &str| pb::ReportTaskRequest {
        worker_id: secret.to_string(),
        job_id: assignment.job_id.clone(),
        task: assignment.task,
        attempt: assignment.attempt,
        outcome: Some(pb::report_task_request::Outcome::Failed(pb::AttemptFailed {
            error: "forged".into(),
            retryable: false,
            bad_record: None,
            kind: pb::FailureKind::Guest as i32,
            bad_map: None,
        })),
    };
    rt.block_on(async {
        // Another registered worker, reporting on an attempt not its own.
        let mut b = connect("pool2-token").await;
        let b_secret = b
            .register_worker(pb::RegisterWorkerRequest {
                name: "b".into(),
                slots: 1,
            })
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        let refused = b.report_task(failed(&b_secret)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("assigned to another worker"), "{refused:?}");
        // The assigned worker's secret, with another identity's token.
        let refused = b.report_task(failed(&assigned_secret)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
        // A made-up registration.
        let refused = b.report_task(failed("0123456789abcdef")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    });
    // Nothing happened to the job: its one attempt still runs, unfailed,
    // and status does not give away the registration secret.
    let status = c.status(&job);
    assert_eq!(status["state"], "running", "{status}");
    assert!(!status.to_string().contains(&assigned_secret), "{status}");
    assert!(!status.to_string().contains("forged"), "{status}");
    // The assigned worker may report its own attempt; a real worker then
    // finishes the job, with the right output.
    rt.block_on(async {
        let mut a = connect("pool-token").await;
        let mut report = failed(&assigned_secret);
        if let Some(pb::report_task_request::Outcome::Failed(f)) = &mut report.outcome {
            f.retryable = true;
            f.error = "the assigned worker gave up".into();
        }
        let reply = a.report_task(report).await.unwrap().into_inner();
        assert_eq!(reply.result, pb::ReportResult::WillRetry as i32);
    });
    c.add_worker(1);
    assert_eq!(c.wait_finished(&job)["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
}

/// Submit `wordcount` reading `input` into `output` with `extra` flags,
/// from directory `cwd`; returns the failure's stderr, or panics if it was
/// accepted.
fn refused_submit(c: &Cluster, cwd: &std::path::Path, input: &str, output: &str, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .current_dir(cwd)
        .args(["submit", "--coordinator", &c.addr, "--job"])
        .arg(guest("wordcount"))
        .args(["--input", input, "--output", output])
        .args(extra)
        .envs(c.env.iter().cloned())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{input} -> {output} {extra:?} was accepted");
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

#[test]
fn data_outside_the_allowed_prefixes_or_in_the_store_is_refused() {
    let t = TestDir::new();
    // The store is allowed too, to show it is refused all the same.
    let mut c = cluster_with_tokens_allowing(&t, &["data", "store"]);
    let text = corpus(500, 3);
    t.write("data/in.txt", &text);
    t.write("outside/in.txt", &text);
    std::fs::create_dir_all(t.path("data/links")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", t.path("data/links/passwd.txt")).unwrap();
    let journal = t.path("store/journal");
    let journal_before = std::fs::read_dir(&journal).unwrap().count();
    assert!(journal_before > 0);
    let at = |p: &str| t.path(p).to_str().unwrap().to_string();
    let out = at("data/out");
    let root = t.path("");
    for (input, output, extra, expected) in [
        (
            "/etc/passwd".to_string(),
            out.clone(),
            vec![],
            "input /etc/passwd is outside the prefixes this coordinator allows",
        ),
        (
            at("outside/in.txt"),
            out.clone(),
            vec![],
            "is outside the prefixes this coordinator allows",
        ),
        (
            at("data/links"),
            out.clone(),
            vec![],
            "passwd.txt is outside the prefixes",
        ),
        (
            at("store/journal"),
            out.clone(),
            vec![],
            "overlaps the coordinator's own store",
        ),
        (
            at("data/in.txt"),
            at("store/out"),
            vec![],
            "overlaps the coordinator's own store",
        ),
        (
            at("data/in.txt"),
            at(""),
            vec!["--overwrite"],
            "overlaps the coordinator's own store",
        ),
        (
            at("data/in.txt"),
            at("outside/out"),
            vec![],
            "outside/out is outside the prefixes",
        ),
    ] {
        let err = refused_submit(&c, &root, &input, &output, &extra);
        assert!(err.contains(expected), "{input} -> {output}: {err}");
    }
    // Nothing was deleted or written.
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), journal_before);
    assert!(!t.path("outside/out").exists() && !t.path("data/out").exists());
    // Relative paths are the submitter's: resolved where `wmr submit` runs.
    c.add_worker(1);
    let o = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .current_dir(t.path("data"))
        .args([
            "submit",
            "--wait",
            "--format",
            "text",
            "--coordinator",
            &c.addr,
            "--job",
        ])
        .arg(guest("wordcount"))
        .args(["--input", "in.txt", "--output", "relative-out"])
        .envs(c.env.iter().cloned())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        text_output(&t.path("data/relative-out")),
        as_lines(&reference_wordcount(&[text]))
    );
}

#[test]
fn limits_over_the_ceilings_are_refused_by_name() {
    let t = TestDir::new();
    let c = Cluster::start_with_args(
        &t,
        t.path("store").to_str().unwrap().to_string(),
        vec![],
        ("10s", "5s"),
        [
            "--ceiling-memory",
            "2GiB",
            "--ceiling-reducers",
            "10",
            "--ceiling-map-tasks",
            "3",
            "--ceiling-call-time",
            "1m",
        ]
        .map(String::from)
        .to_vec(),
    );
    let (input, _) = generated_input(&t, 5, 100);
    let out = t.path("out");
    let out = out.to_str().unwrap();
    for (extra, expected) in [
        (
            vec!["--max-memory", "3GiB"],
            "--max-memory 3.0 GiB is over this coordinator's ceiling of 2.0 GiB (--ceiling-memory); ask for less",
        ),
        (
            vec!["--reducers", "11"],
            "--reducers 11 is over this coordinator's ceiling of 10 (--ceiling-reducers)",
        ),
        (vec!["--max-call-time", "2h"], "(--ceiling-call-time)"),
        (
            vec!["--split-size", "1KiB"],
            "is over this coordinator's ceiling of 3 (--ceiling-map-tasks); give a larger --split-size",
        ),
    ] {
        let err = refused_submit(&c, &t.path(""), &input, out, &extra);
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
    // At the ceilings, a job is accepted.
    let job = c.submit_to(
        "wordcount",
        &format!("{input}/part-0[0-2].txt"),
        out,
        &["--max-memory", "2GiB", "--reducers", "10"],
    );
    assert_eq!(c.status(&job)["state"], "queued");
}

#[test]
fn an_endless_configure_holds_up_no_other_submit() {
    let t = TestDir::new();
    let c = Cluster::start(&t, "10s");
    let (input, _) = generated_input(&t, 1, 100);
    // Warm: the module compiles once.
    c.submit_to("wordcount", &input, t.path("warm").to_str().unwrap(), &[]);
    let mut endless = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["submit", "--coordinator", &c.addr, "--job"])
        .arg(guest("hostile"))
        .args(["--param", "mode=loop-configure", "--input", &input, "--output"])
        .arg(t.path("endless"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Another submit gets through while the endless one is still being checked.
    let job = c.submit_to("wordcount", &input, t.path("other").to_str().unwrap(), &[]);
    assert_eq!(c.status(&job)["state"], "queued");
    assert!(
        endless.try_wait().unwrap().is_none(),
        "the endless configure ended early"
    );
    // And the endless one is refused once its configure runs out of time.
    let o = endless.wait_with_output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("time limit"), "{err}");
}

#[test]
fn an_old_output_is_deleted_only_once_the_job_is_accepted_and_never_under_a_running_job() {
    let t = TestDir::new();
    let mut c = Cluster::start_with_args(
        &t,
        t.path("store").to_str().unwrap().to_string(),
        vec![],
        ("10s", "5s"),
        vec!["--ceiling-reducers".into(), "4".into()],
    );
    let (input, texts) = generated_input(&t, 2, 500);
    let out = t.path("out");
    t.write("out/part-00000.txt", "old 1\n");
    t.write("out/notes.txt", "kept by nobody\n");
    t.write("out/_SUCCESS", "{}");
    let old: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    // Refused (over a ceiling) with --overwrite: the old output stays whole.
    let err = refused_submit(
        &c,
        &t.path(""),
        &input,
        out.to_str().unwrap(),
        &["--overwrite", "--reducers", "5"],
    );
    assert!(err.contains("--ceiling-reducers"), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), old.len());
    // Accepted: the old files go; the job (queued, no workers yet) holds the output.
    let job = c.submit("wordcount", &input, &out, &["--overwrite", "--reducers", "2"]);
    assert!(!out.join("_SUCCESS").exists() && !out.join("notes.txt").exists());
    // A second job into that output, or inside it, is refused while it runs.
    for target in [out.clone(), out.join("inner")] {
        let err = refused_submit(&c, &t.path(""), &input, target.to_str().unwrap(), &["--overwrite"]);
        assert!(err.contains(&format!("is in use by job {job}")), "{err}");
    }
    c.add_worker(1);
    assert_eq!(c.wait_finished(&job)["state"], "succeeded");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
}

#[test]
fn a_counter_flood_is_capped() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    c.add_worker(1);
    // One map attempt, so exactly one guest's 128 counters.
    let (input, texts) = generated_input(&t, 1, 50);
    let job = c.submit_to(
        "hostile",
        &input,
        t.path("out").to_str().unwrap(),
        &["--param", "mode=counter-flood"],
    );
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "succeeded", "{status}");
    let counters = status["counters"].as_object().unwrap();
    let flood = counters.keys().filter(|k| k.starts_with("flood.")).count();
    assert_eq!(flood, 128, "each attempt keeps its first 128 guest counters");
    assert!(counters["wmr.counters.dropped"].as_i64().unwrap() > 0);
    // The guest could not forge the engine's own counters.
    let lines: usize = texts.iter().map(|t| t.lines().count()).sum();
    assert_eq!(counters["wmr.map.input.records"].as_i64().unwrap(), lines as i64);
}

#[test]
fn reflection_is_served_as_v1_and_v1alpha() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let t = TestDir::new();
    let c = Cluster::start(&t, "10s");
    let services = runtime().block_on(async {
        let channel = wmr::rpc::client::connect(&c.addr, &Default::default()).await.unwrap();
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = ServerReflectionClient::new(channel)
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        match reply.message_response.unwrap() {
            MessageResponse::ListServicesResponse(list) => list.service.into_iter().map(|s| s.name).collect::<Vec<_>>(),
            other => panic!("unexpected {other:?}"),
        }
    });
    assert!(services.contains(&"wmr.v1.JobService".to_string()), "{services:?}");
    assert!(services.contains(&"wmr.v1.WorkerService".to_string()), "{services:?}");
}

#[test]
fn a_module_altered_in_the_store_is_refused_by_the_workers() {
    let t = TestDir::new();
    let mut c = Cluster::start(&t, "10s");
    let (input, _) = generated_input(&t, 1, 10);
    let job = c.submit("wordcount", &input, &t.path("out"), &[]);
    // Someone who can write the store swaps the module's bytes.
    for entry in std::fs::read_dir(t.path("store/modules")).unwrap() {
        std::fs::copy(guest("hostile"), entry.unwrap().path()).unwrap();
    }
    c.add_worker(1);
    let status = c.wait_finished(&job);
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["failure_kind"], "module", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("it was altered or corrupted there"), "{error}");
    assert!(!t.path("out/_SUCCESS").exists());
}

#[test]
fn a_python_grpc_client_lists_the_services_through_reflection_v1alpha() {
    let python = test_python();
    let t = TestDir::new();
    let c = Cluster::start(&t, "10s");
    let script = r#"
import sys
import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(sys.argv[1]))
request = reflection_pb2.ServerReflectionRequest(list_services="")
for response in stub.ServerReflectionInfo(iter([request]), timeout=30):
    for service in response.list_services_response.service:
        print(service.name)
"#;
    let addr = c.addr.trim_start_matches("http://");
    let o = Command::new(python).args(["-c", script, addr]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let services = String::from_utf8(o.stdout).unwrap();
    for expected in ["wmr.v1.JobService", "wmr.v1.WorkerService", "grpc.health.v1.Health"] {
        assert!(services.lines().any(|l| l == expected), "{expected} not in {services}");
    }
}
