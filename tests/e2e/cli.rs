//! `wmr run` from a user's side: its flags, its errors and its exit codes.

use crate::harness::*;

#[test]
fn a_glob_matching_nothing_is_a_usage_error() {
    let t = TestDir::new();
    let pattern = format!("{}/*.txt", t.path("").display());
    let o = wmr(&[
        "run",
        "--job",
        guest("wordcount").to_str().unwrap(),
        "--input",
        &pattern,
        "--output",
        t.path("out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        format!("wmr: input glob {pattern} matched no files")
    );
    assert!(!t.path("out").exists(), "no output on a refused job");
}

#[test]
fn a_missing_input_and_a_non_wasm_module_are_refused() {
    let t = TestDir::new();
    let missing = t.path("nope.txt");
    let o = wmr(&[
        "run",
        "--job",
        guest("wordcount").to_str().unwrap(),
        "--input",
        missing.to_str().unwrap(),
        "--output",
        t.path("out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("input {} does not exist", missing.display())));
    let fake = t.write("fake.wasm", "not wasm at all");
    let input = t.write("in.txt", "x\n");
    let o = wmr(&[
        "run",
        "--job",
        fake.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        t.path("out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("is not a wmr job component: it does not start with the wasm magic bytes")
    );
}

#[test]
fn an_existing_output_is_refused_unless_overwrite() {
    let t = TestDir::new();
    let input = t.write("in.txt", "a b a\n");
    t.write("out/old.txt", "old");
    let (job, out) = (guest("wordcount"), t.path("out"));
    let args = [
        "run",
        "--job",
        job.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--format",
        "text",
    ];
    let o = wmr(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("already exists and is not empty; choose another --output or pass --overwrite")
    );
    assert!(t.path("out/old.txt").exists());
    let mut with = args.to_vec();
    with.push("--overwrite");
    wmr_ok(&with);
    assert_eq!(text_output(&t.path("out")), ["a 2", "b 1"]);
    assert!(!t.path("out/old.txt").exists());
}

#[test]
fn a_guest_panic_fails_the_run_with_its_message_and_position() {
    let t = TestDir::new();
    let input = t.write("in.txt", "fine line\nthis one goes BOOM\n");
    let o = wmr(&[
        "run",
        "--job",
        guest("panicky").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        t.path("out").to_str().unwrap(),
        "--max-attempts",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("map task 0 failed 2 time(s)"), "{err}");
    assert!(err.contains(&format!("at {} byte offset 10", input.display())), "{err}");
    assert!(
        err.contains("the job panicked: refusing to count a line with BOOM in it"),
        "{err}"
    );
    assert!(!t.path("out/_SUCCESS").exists());
}

#[test]
fn skip_bad_records_skips_at_most_its_budget() {
    let t = TestDir::new();
    let input = t.write("in.txt", "fine\nBOOM once\nfine again\nBOOM twice\n");
    let run = |budget: &str, out: &str| {
        wmr(&[
            "run",
            "--job",
            guest("panicky").to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            t.path(out).to_str().unwrap(),
            "--format",
            "text",
            "--skip-bad-records",
            budget,
            "--max-attempts",
            "2",
            "--json",
        ])
    };
    // Two bad records, budget two: both skipped, the job succeeds.
    let o = run("2", "out2");
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["counters"]["wmr.map.skipped.records"], 2);
    assert_eq!(text_output(&t.path("out2")), ["again 1", "fine 2"]);
    // Budget one: the second bad record fails the job as usual.
    let o = run("1", "out1");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("byte offset 26") && err.contains("BOOM"), "{err}");
    assert!(!t.path("out1/_SUCCESS").exists());
}

#[test]
fn skip_bad_records_names_records_of_small_files_packed_into_one_task() {
    let t = TestDir::new();
    // Three small files, packed into one map task; the bad line of the third
    // is at the same byte offset as a good line of the first.
    t.write("in/a.txt", "fine\nfine again\n");
    t.write("in/b.txt", "more\n");
    t.write("in/c.txt", "fine\nBOOM here\n");
    let o = wmr(&[
        "run",
        "--job",
        guest("panicky").to_str().unwrap(),
        "--input",
        t.path("in").to_str().unwrap(),
        "--output",
        t.path("out").to_str().unwrap(),
        "--format",
        "text",
        "--skip-bad-records",
        "1",
        "--max-attempts",
        "2",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["maps"], 1, "{summary}");
    assert_eq!(summary["counters"]["wmr.map.skipped.records"], 1);
    assert_eq!(text_output(&t.path("out")), ["again 1", "fine 3", "more 1"]);
}

#[test]
fn skip_bad_records_skips_parquet_rows_by_ordinal() {
    use std::sync::Arc;
    let t = TestDir::new();
    // Two row groups of three; the bad rows are records 2 and 4.
    let lines = ["fine", "fine again", "BOOM once", "more", "BOOM twice", "end"];
    let batch = arrow::array::RecordBatch::try_from_iter([(
        "line",
        Arc::new(arrow::array::StringArray::from(lines.to_vec())) as _,
    )])
    .unwrap();
    let input = write_parquet(&t, "in.parquet", &batch, 3);
    let run = |budget: &str, out: &str| {
        wmr(&[
            "run",
            "--job",
            guest("panicky").to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            t.path(out).to_str().unwrap(),
            "--format",
            "text",
            "--skip-bad-records",
            budget,
            "--max-attempts",
            "2",
            "--json",
        ])
    };
    let o = run("2", "out2");
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["counters"]["wmr.map.skipped.records"], 2);
    assert_eq!(text_output(&t.path("out2")), ["again 1", "end 1", "fine 2", "more 1"]);
    let o = run("1", "out1");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("record 4 of") && err.contains("BOOM"), "{err}");
    assert!(!t.path("out1/_SUCCESS").exists());
}

#[test]
fn a_zero_split_size_and_a_directory_as_the_job_are_refused_with_the_fix() {
    let t = TestDir::new();
    let input = t.write("in.txt", "a b a\n");
    let o = wmr(&[
        "run",
        "--job",
        guest("wordcount").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        t.path("out").to_str().unwrap(),
        "--split-size",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("invalid value '0' for '--split-size <BYTES>': it must be more than 0 bytes"),
        "{err}"
    );
    std::fs::create_dir_all(t.path("myjob")).unwrap();
    let o = wmr(&[
        "run",
        "--job",
        t.path("myjob").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        t.path("out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("myjob is a directory; give the .wasm file"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
