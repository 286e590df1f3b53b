//! Hostile guests (`tests/guests/hostile`): each misbehaviour ends its
//! attempts with an error naming the limit, its value and the flag that
//! raises it; the job fails after its attempts; nothing escapes the sandbox.
//! A module costly to compile is stopped by the compile bounds.

use crate::harness::*;

/// Run the hostile guest in `mode` over a small text with `flags`; returns
/// (exit code, stderr, test dir).
fn run_hostile(mode: &str, flags: &[&str]) -> (Option<i32>, String, TestDir) {
    run_hostile_guest("hostile", mode, flags)
}

/// Run the guest `guest_name` (a hostile one, taking `--param mode=`) in
/// `mode` over a small text with two attempts and `flags`; returns (exit
/// code, the last line of stderr, test dir).
pub(crate) fn run_hostile_guest(guest_name: &str, mode: &str, flags: &[&str]) -> (Option<i32>, String, TestDir) {
    let t = TestDir::new();
    let text: String = (0..3000).map(|i| format!("{i} some text on this line\n")).collect();
    let input = t.write("in/a.txt", text);
    let param = format!("mode={mode}");
    let (job, out) = (guest(guest_name), t.path("out"));
    let mut args = vec![
        "run",
        "--job",
        job.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--format",
        "text",
        "--param",
        &param,
        "--max-attempts",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(flags);
    let o = wmr(&args);
    let stderr = String::from_utf8_lossy(&o.stderr)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    (o.status.code(), stderr, t)
}

fn assert_contained(mode: &str, flags: &[&str], expected: &[&str]) {
    assert_hostile_guest_contained("hostile", mode, flags, expected);
}

/// The guest `guest_name` in `mode` failed both its attempts with every
/// `expected` text in its error, and left no output.
pub(crate) fn assert_hostile_guest_contained(guest_name: &str, mode: &str, flags: &[&str], expected: &[&str]) {
    let (code, err, t) = run_hostile_guest(guest_name, mode, flags);
    assert_eq!(code, Some(1), "{guest_name} {mode}: {err}");
    assert!(err.contains("failed 2 time(s)"), "{guest_name} {mode}: {err}");
    for e in expected {
        assert!(err.contains(e), "{guest_name} {mode}: expected {e:?} in {err}");
    }
    assert!(
        !t.path("out/_SUCCESS").exists(),
        "{guest_name} {mode} left output behind"
    );
}

#[test]
fn an_endless_map_hits_the_call_time_limit() {
    assert_contained(
        "loop-map",
        &["--max-call-time", "300ms"],
        &["map task 0", "time limit of 300ms; raise it with --max-call-time"],
    );
}

#[test]
fn an_endless_reduce_hits_the_call_time_limit() {
    assert_contained(
        "loop-reduce",
        &["--max-call-time", "300ms"],
        &["reduce task", "time limit of 300ms; raise it with --max-call-time"],
    );
}

#[test]
fn unbounded_memory_growth_hits_the_memory_limit() {
    assert_contained(
        "grow",
        &["--max-memory", "64MiB"],
        &["memory limit of 64 MiB; raise it with --max-memory"],
    );
}

#[test]
fn a_stack_overflow_traps_with_the_guest_function() {
    assert_contained("recurse", &[], &["the job trapped", "stack", "in hostile::recurse"]);
}

#[test]
fn too_much_output_hits_the_output_limit() {
    assert_contained(
        "output",
        &["--max-memory", "512MiB", "--max-output", "1MiB"],
        &["over the task output limit of 1048576 bytes; raise it with --max-output"],
    );
}

#[test]
fn files_sockets_environment_and_arguments_are_out_of_reach() {
    let (code, err, t) = run_hostile("escape", &[]);
    assert_eq!(code, Some(0), "{err}");
    let lines = text_output(&t.path("out"));
    // Clocks and random numbers are real (WASI's, from the host); the rest is absent.
    assert_eq!(lines, ["args 0", "clock 1", "env 0", "file 0", "random 1", "socket 0"]);
}

#[test]
fn a_log_flood_is_dropped_and_counted_not_an_error() {
    let t = TestDir::new();
    let text: String = (0..3000).map(|i| format!("{i} some text on this line\n")).collect();
    let input = t.write("in/a.txt", text);
    let out = t.path("out");
    let o = wmr_ok(&[
        "run",
        "--job",
        guest("hostile").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--format",
        "text",
        "--param",
        "mode=log-flood",
        "--max-log",
        "64KiB",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["state"], "succeeded");
    // 3000 lines of about 50 bytes, 100 times, to stdout alone.
    let dropped = summary["counters"]["wmr.log.dropped.bytes"].as_i64().unwrap_or(0);
    assert!(dropped > 10_000_000, "{summary}");
    assert_eq!(text_output(&out), ["lines 3000"]);
}

/// A component whose one core function pushes `n` constants and then adds
/// them up: small to send, costly to compile, as every value is live at once.
/// At 200,000 it is 1 MB, and compiling it takes about a second and 170 MB.
pub fn compile_bomb(t: &TestDir, n: usize) -> std::path::PathBuf {
    let mut body = String::with_capacity(n * 24);
    for i in 0..n {
        body.push_str(&format!("i32.const {i}\n"));
    }
    for _ in 1..n {
        body.push_str("i32.add\n");
    }
    let wat = format!("(component (core module (func (export \"f\") (result i32)\n{body})))");
    t.write("bomb.wasm", wat::parse_str(&wat).unwrap())
}

#[test]
fn compiling_a_module_is_bounded_in_memory() {
    let t = TestDir::new();
    let bomb = compile_bomb(&t, 200_000);
    let (code, err) = run_module(&t, &bomb, &["--max-compile-memory", "64MiB"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bomb.wasm needed more than 64.0 MiB of memory, the limit; raise it with --max-compile-memory"),
        "{err}"
    );
    // Under the default bound it compiles, and is refused only for what it is.
    let (code, err) = run_module(&t, &bomb, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not a wmr job component"), "{err}");
    assert!(!err.contains("compiling"), "{err}");
    // A real job fits easily under the small bound.
    let (code, err) = run_module(&t, &guest("wordcount"), &["--max-compile-memory", "64MiB"]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn compiling_a_module_is_bounded_in_time() {
    let t = TestDir::new();
    let bomb = compile_bomb(&t, 200_000);
    let (code, err) = run_module(&t, &bomb, &["--max-compile-time", "200ms"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bomb.wasm took longer than 200ms, the limit; raise it with --max-compile-time"),
        "{err}"
    );
    let (code, err) = run_module(&t, &guest("wordcount"), &["--max-compile-time", "20s"]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn ctrl_c_cancels_an_embedded_run_and_leaves_no_output() {
    use std::io::BufRead;
    let t = TestDir::new();
    let input = t.write("in.txt", "one line\n");
    let out = t.path("out");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["-v", "run", "--job"])
        .arg(guest("hostile"))
        .args(["--param", "mode=loop-map", "--max-call-time", "60s", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    // The guest is looping once its attempt has started.
    while !log.contains("attempt started") {
        assert!(stderr.read_line(&mut log).unwrap() > 0, "wmr ended early: {log}");
    }
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(rest.contains("failed: cancelled"), "{rest}");
    // Nothing committed, and the scratch data is gone.
    assert!(!out.join("_SUCCESS").exists());
    assert!(
        !out.join("_temporary").exists(),
        "{:?}",
        std::fs::read_dir(&out).ok().map(|d| d.count())
    );
}
