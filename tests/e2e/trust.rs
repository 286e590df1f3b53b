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

/// A coordinator with [`TOKENS`]; clients act as alice, workers as pool.
fn cluster_with_tokens(t: &TestDir) -> Cluster {
    let tokens = t.write("tokens.csv", TOKENS);
    let mut c = Cluster::start_with_args(
        t,
        t.path("store").to_str().unwrap().to_string(),
        vec![("WMR_TOKEN".into(), "alice-token".into())],
        ("10s", "5s"),
        vec!["--tokens".into(), tokens.to_str().unwrap().into()],
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
    for args in [
        vec!["status", job.as_str()],
        vec!["cancel", job.as_str()],
    ] {
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
