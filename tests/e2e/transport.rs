//! How a cluster is reached: TLS (with and without client certificates),
//! tokens, and what a coordinator refuses to do for the network: listen
//! publicly without a token, compile modules beyond its bounds.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::cluster::*;
use crate::harness::*;

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
