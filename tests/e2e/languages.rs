//! Jobs in Python and JavaScript: hostile guests contained as Rust ones
//! are, `wmr new` then `wmr build` then `wmr run` from an empty directory
//! in every language, and a module compiled once per machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::*;

/// PATH with the build tools `cargo xtask test` installs under target/tools
/// (componentize-py, componentize-js) first.
fn tools_path() -> std::ffi::OsString {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools");
    let dirs = [tools.join("python/bin"), tools.join("js/node_modules/.bin")];
    for dir in &dirs {
        assert!(
            dir.is_dir(),
            "{} is missing: install the build tools with `cargo xtask test`",
            dir.display()
        );
    }
    std::env::join_paths(
        dirs.into_iter()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap()
}

fn wmr_in(dir: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wmr"));
    cmd.current_dir(dir).args(args).env("PATH", tools_path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running wmr")
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Run the `hostile` test guest of `lang` (`py` or `js`) in `mode`.
fn run_hostile(lang: &str, mode: &str, flags: &[&str]) -> (Option<i32>, String, TestDir) {
    crate::hostile::run_hostile_guest(&format!("{lang}-hostile"), mode, flags)
}

/// The `hostile` test guest of `lang` in `mode` is contained.
fn assert_contained(lang: &str, mode: &str, flags: &[&str], expected: &[&str]) {
    crate::hostile::assert_hostile_guest_contained(&format!("{lang}-hostile"), mode, flags, expected);
}

#[test]
fn python_and_javascript_guests_that_loop_forever_hit_the_call_time_limit() {
    for lang in ["py", "js"] {
        assert_contained(
            lang,
            "loop-map",
            &["--max-call-time", "500ms"],
            &["map task 0", "time limit of 500ms; raise it with --max-call-time"],
        );
    }
}

#[test]
fn python_and_javascript_guests_that_grow_without_end_hit_the_memory_limit() {
    for lang in ["py", "js"] {
        assert_contained(
            lang,
            "grow",
            &["--max-memory", "256MiB"],
            &["memory limit of 256 MiB; raise it with --max-memory"],
        );
    }
}

#[test]
fn an_exception_is_the_attempts_error_with_its_message_and_row() {
    for (lang, expected) in [
        (
            "py",
            "ValueError: refusing the line at offset 125 (job.py line 36, in map)",
        ),
        ("js", "RangeError: refusing the line at offset 125"),
    ] {
        assert_contained(
            lang,
            "raise",
            &[],
            &["map task 0", "a.txt byte offset 125: map failed", expected],
        );
    }
}

#[test]
fn an_interpreter_that_aborts_is_reported_with_the_last_line_it_wrote() {
    assert_contained(
        "py",
        "abort",
        &[],
        &["the job trapped", "its stderr ended: hostile: giving up on purpose"],
    );
}

#[test]
fn files_sockets_and_the_environment_are_out_of_reach_of_python() {
    // A listener the guest could reach, were sockets open to it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = format!("port={}", listener.local_addr().unwrap().port());
    let (code, err, t) = run_hostile("py", "escape", &["--param", &port]);
    assert_eq!(code, Some(0), "{err}");
    let lines = text_output(&t.path("out"));
    assert_eq!(lines, ["args 0", "dir 0", "env 0", "file 0", "socket 0"]);
}

#[test]
fn node_and_the_network_are_out_of_reach_of_javascript() {
    let (code, err, t) = run_hostile("js", "escape", &[]);
    assert_eq!(code, Some(0), "{err}");
    let lines = text_output(&t.path("out"));
    assert!(lines.contains(&"process absent".to_string()), "{lines:?}");
    assert!(lines.contains(&"require absent".to_string()), "{lines:?}");
    // fetch exists, but with no wasi:http linked it traps in its first
    // step, and nothing reaches the listener.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = format!("port={}", listener.local_addr().unwrap().port());
    assert_contained("js", "fetch", &["--param", &port], &["the job trapped"]);
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept();
    assert!(
        accepted
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the guest reached the listener: {accepted:?}"
    );
}

/// Word count by `guest` over text of 120,000 distinct words, each twice
/// in different batches: the SDK's in-mapper combining holds more keys
/// than it may, sends them on and stops grouping (the keys being mostly
/// distinct), and the counts still come out right.
fn wordcount_past_the_held_keys(guest_name: &str) {
    let t = TestDir::new();
    let word = |i: usize| -> String {
        let mut w = String::new();
        let mut n = i;
        loop {
            w.push(char::from(b'a' + (n % 26) as u8));
            n /= 26;
            if n == 0 {
                break w;
            }
        }
    };
    let mut text = String::new();
    for round in 0..2 {
        for line in 0..12_000 {
            let words: Vec<String> = (0..10).map(|k| word(line * 10 + k)).collect();
            text.push_str(&words.join(" "));
            text.push('\n');
        }
        let _ = round;
    }
    let input = t.write("in/distinct.txt", &text);
    let out = t.path("out");
    wmr_ok(&[
        "run",
        "--job",
        guest(guest_name).to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--format",
        "text",
        "--reducers",
        "2",
    ]);
    assert_eq!(
        text_output(&out),
        as_lines(&reference_wordcount(&[text])),
        "{guest_name}"
    );
}

#[test]
fn python_combining_stops_when_keys_are_distinct_and_loses_nothing() {
    wordcount_past_the_held_keys("py-wordcount");
}

#[test]
fn javascript_combining_stops_when_keys_are_distinct_and_loses_nothing() {
    wordcount_past_the_held_keys("js-wordcount");
}

/// `wmr new NAME --lang LANG`, `wmr build NAME`, `wmr run` of what it built
/// over a small text: the word counts come out.
fn new_build_run(lang: &str, env: &[(&str, &std::ffi::OsStr)]) -> PathBuf {
    let t = TestDir::new();
    let work = t.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let o = wmr_in(&work, &["new", "counter", "--lang", lang], env);
    assert_ok(&o, "wmr new");
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("wmr build counter"), "{printed}");
    let o = wmr_in(&work, &["build", "counter"], env);
    assert_ok(&o, "wmr build");
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("it is a wmr job"), "{printed}");
    let module = work.join("counter/counter.wasm");
    assert!(module.is_file(), "{printed}");
    std::fs::write(work.join("in.txt"), "to be or not to be\nthat is the question\n").unwrap();
    let o = wmr_in(
        &work,
        &[
            "run",
            "--job",
            "counter/counter.wasm",
            "--input",
            "in.txt",
            "--output",
            "out",
            "--format",
            "text",
            "--quiet",
        ],
        env,
    );
    assert_ok(&o, "wmr run");
    assert_eq!(
        text_output(&work.join("out")),
        ["be 2", "is 1", "not 1", "or 1", "question 1", "that 1", "the 1", "to 2"]
    );
    // Kept so the caller may look further; the directory goes with `t`.
    std::mem::forget(t);
    work
}

#[test]
fn a_new_python_job_builds_and_runs_as_it_is() {
    let work = new_build_run("python", &[]);
    // Nothing but the job, its component and its ignore file.
    let mut names: Vec<String> = std::fs::read_dir(work.join("counter"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".gitignore", "counter.wasm", "job.py"]);
    let _ = std::fs::remove_dir_all(work.parent().unwrap());
}

#[test]
fn a_new_javascript_job_builds_and_runs_as_it_is() {
    let work = new_build_run("js", &[]);
    let _ = std::fs::remove_dir_all(work.parent().unwrap());
}

#[test]
fn a_new_rust_job_builds_and_runs_as_it_is() {
    // The guests' target directory: its dependencies are built already.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-build");
    let work = new_build_run("rust", &[("CARGO_TARGET_DIR", target.as_os_str())]);
    let _ = std::fs::remove_dir_all(work.parent().unwrap());
}

#[test]
fn a_missing_build_tool_is_one_line_saying_how_to_install_it() {
    let t = TestDir::new();
    t.write("wc/job.py", "");
    let o = Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(["build", t.path("wc").to_str().unwrap()])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("componentize-py, which builds Python jobs, was not found"),
        "{err}"
    );
    assert!(err.contains("pip install componentize-py==0.25.1"), "{err}");
}

#[test]
fn a_second_run_of_a_python_module_loads_it_from_the_compile_cache() {
    let t = TestDir::new();
    let cache = t.path("cache");
    let input = t.write("in/a.txt", "one two two\n");
    let run = |out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_wmr"))
            .args(["-v", "run", "--job"])
            .arg(guest("py-wordcount"))
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(t.path(out))
            .arg("--quiet")
            .env("WMR_COMPILE_CACHE", &cache)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let first = run("out1");
    assert!(first.contains("py-wordcount.wasm: compiled in"), "{first}");
    let second = run("out2");
    assert!(
        second.contains("py-wordcount.wasm: loaded its compiled code from the compile cache"),
        "{second}"
    );
    assert!(!second.contains("compiled in"), "{second}");
    // A damaged entry is noticed, deleted and compiled again.
    let entry = std::fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&entry).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let third = run("out3");
    assert!(
        third.contains("fails its checksum; deleting it and compiling again"),
        "{third}"
    );
    assert!(third.contains("py-wordcount.wasm: compiled in"), "{third}");
}
