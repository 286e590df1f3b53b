//! Coordinator load bench (run by `cargo xtask bench coordinator`): one job
//! of many map tasks, many simulated workers over real gRPC on loopback, no
//! wasm and no data. Each worker polls for a task and reports it done at
//! once; the figure is task assignments plus reports per second, journal
//! writes included.

#![expect(clippy::print_stdout, clippy::unwrap_used, reason = "a benchmark program")]

use std::time::{Duration, Instant};

use wmr::coordinator::JobSpec;
use wmr::coordinator::access::DataAccess;
use wmr::coordinator::ceilings::Ceilings;
use wmr::coordinator::grpc::{bind, serve};
use wmr::coordinator::journal::Journal;
use wmr::coordinator::service::{Service, ServiceConfig, SubmitPolicy};
use wmr::data::output::OutputFormat;
use wmr::data::{Location, MapInput, Split, SplitKind};
use wmr::limits::Limits;
use wmr::protocol::JobRef;
use wmr::rpc::pb;
use wmr::{JobId, ModuleDigest};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let workers = arg("--workers", 1000);
    let tasks = arg("--tasks", 100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Location::parse(store_dir.path().to_str().unwrap()).unwrap();
        let policy = SubmitPolicy {
            access: DataAccess::new(vec![], store.clone(), false),
            ceilings: Ceilings::default(),
        };
        let config = ServiceConfig {
            lease: Duration::from_secs(30),
            backup_after: None,
            runtime: std::sync::Arc::new(wmr::runtime::Runtime::new(wmr::runtime::Compiler::InProcess).unwrap()),
            policy,
        };
        let journal = Journal::open(&store).await.unwrap();
        let state = Service::open(store, journal, config).await.unwrap();
        let id = JobId::generate();
        let spec = JobSpec {
            id: id.clone(),
            inputs: vec!["synthetic".into()],
            output: store_dir.path().join("out").to_str().unwrap().to_string(),
            work_dir: store_dir.path().join("work").to_str().unwrap().to_string(),
            reducers: 1,
            format: OutputFormat::Parquet,
            max_attempts: 4,
            speculation: false,
            task_memory: 1 << 20,
            skip_bad_records: 0,
            partitioner: Default::default(),
        };
        let splits = (0..tasks as u64)
            .map(|i| MapInput {
                splits: vec![Split {
                    file: format!("/synthetic/part-{i}"),
                    file_size: 1,
                    kind: SplitKind::Text { start: 0, end: 1 },
                }],
            })
            .collect();
        let job_ref = JobRef {
            job: id.clone(),
            module: ModuleDigest::of(b"synthetic"),
            params: vec![],
            limits: Limits::default(),
        };
        state
            .accept(spec, splits, job_ref, "load".into(), "load".into())
            .await
            .unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = serve(state, listener, Default::default(), async {
            let _ = stopped.await;
        });
        // Clients run beside the server: connecting already asks it a question.
        let clients = async {
            let channel = wmr::rpc::client::connect(&addr, &Default::default()).await.unwrap();
            let started = Instant::now();
            let simulated = (0..workers).map(|w| {
                let mut client = wmr::rpc::client::workers(channel.clone(), None);
                async move {
                    let worker_id = client
                        .register_worker(pb::RegisterWorkerRequest {
                            name: format!("sim-{w}"),
                            slots: 1,
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .worker_id;
                    let mut done = 0u64;
                    let mut last = Instant::now();
                    loop {
                        let polled = client
                            .poll_task(pb::PollTaskRequest {
                                worker_id: worker_id.clone(),
                                wait_ms: 200,
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        let Some(a) = polled.assignment else {
                            return (done, last);
                        };
                        let Some(pb::assignment::Work::Map(_)) = a.work else {
                            return (done, last);
                        };
                        let outcome = pb::report_task_request::Outcome::Map(pb::MapDone {
                            counters: Default::default(),
                        });
                        client
                            .report_task(pb::ReportTaskRequest {
                                worker_id: worker_id.clone(),
                                job_id: a.job_id,
                                task: a.task,
                                attempt: a.attempt,
                                outcome: Some(outcome),
                            })
                            .await
                            .unwrap();
                        done += 1;
                        last = Instant::now();
                    }
                }
            });
            let counts = futures::future::join_all(simulated).await;
            let _ = stop.send(());
            (counts, started)
        };
        let ((counts, started), served) = tokio::join!(clients, server);
        served.unwrap();
        // Until the last map report: idle workers' final empty polls don't count.
        let elapsed = counts.iter().map(|c| c.1).max().unwrap_or(started) - started;
        let maps: u64 = counts.iter().map(|c| c.0).sum();
        let ops = 2 * maps;
        println!(
            "{maps} map tasks by {workers} simulated workers in {:.2} s: {:.0} assignments+reports/s",
            elapsed.as_secs_f64(),
            ops as f64 / elapsed.as_secs_f64()
        );
    });
}
