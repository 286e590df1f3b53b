//! Bad input of every kind: one clear line naming what and where, a
//! non-zero exit, the input untouched, and no half-written output visible.

use std::path::Path;

use crate::harness::*;

/// Run `wmr run` of `job` over `inputs` into `out` with `extra` flags;
/// returns (exit code, stderr).
fn run(job: &str, inputs: &[&str], out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let guest = guest(job);
    let mut args = vec!["run", "--job", guest.to_str().unwrap(), "--input"];
    args.extend_from_slice(inputs);
    args.extend_from_slice(&["--output", out.to_str().unwrap(), "--format", "text", "--quiet"]);
    args.extend_from_slice(extra);
    let o = wmr(&args);
    (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
}

/// Every case must fail with `code`, say all of `expected` in one line
/// (`wmr: ...`, or clap's `error: ...` for a flag it parses), and leave no
/// `_SUCCESS` behind.
fn refused(case: &str, (code, err): (Option<i32>, String), expected_code: i32, expected: &[&str], out: &Path) {
    assert_eq!(code, Some(expected_code), "{case}: {err}");
    assert!(!err.contains("thread '"), "{case}: the host panicked: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("wmr: ") || l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{case}: no error line in {err:?}"));
    for e in expected {
        assert!(line.contains(e), "{case}: expected {e:?} in {line:?}");
    }
    assert!(!out.join("_SUCCESS").exists(), "{case}: output committed");
}

#[test]
fn bad_locations_and_flags_are_refused_with_one_clear_line() {
    let t = TestDir::new();
    let input = t.write("in/a.txt", "some words\n");
    let input = input.to_str().unwrap();
    let out = t.path("out");
    refused(
        "unknown scheme",
        run("wordcount", &["ftp://host/a.txt"], &out, &[]),
        2,
        &["unknown scheme \"ftp\"", "file://, memory:// or s3://"],
        &out,
    );
    refused(
        "missing file",
        run("wordcount", &[t.path("nope.txt").to_str().unwrap()], &out, &[]),
        2,
        &["nope.txt does not exist"],
        &out,
    );
    refused(
        "reducers 0",
        run("wordcount", &[input], &out, &["--reducers", "0"]),
        2,
        &["--reducers 0 is out of range; use 1 to 100000"],
        &out,
    );
    refused(
        "reducers absurd",
        run("wordcount", &[input], &out, &["--reducers", "1000000000"]),
        2,
        &["--reducers 1000000000 is out of range"],
        &out,
    );
    refused(
        "malformed param",
        run("wordcount", &[input], &out, &["--param", "novalue"]),
        2,
        &["\"novalue\" is not NAME=VALUE"],
        &out,
    );
    refused(
        "slots 0",
        run("wordcount", &[input], &out, &["--slots", "0"]),
        2,
        &["--slots must be at least 1"],
        &out,
    );
}

#[test]
fn a_directory_where_a_module_is_expected_is_refused() {
    let t = TestDir::new();
    let input = t.write("in/a.txt", "some words\n");
    let out = t.path("out");
    let o = wmr(&[
        "run",
        "--job",
        t.path("in").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "--job {} is a directory; give the .wasm file",
            t.path("in").display()
        )),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn an_output_inside_the_input_is_refused() {
    let t = TestDir::new();
    t.write("in/a.txt", "some words\n");
    let out = t.path("in/out");
    let result = run("wordcount", &[t.path("in").to_str().unwrap()], &out, &[]);
    refused(
        "output inside input",
        result,
        2,
        &["is inside the input", "choose an --output outside the input"],
        &out,
    );
    // The input is untouched.
    assert_eq!(std::fs::read_dir(t.path("in")).unwrap().count(), 1);
    // So is an output a glob input would match...
    let pattern = format!("{}/**/*.txt", t.path("in").display());
    let result = run("wordcount", &[&pattern], &out, &[]);
    refused("output matched by a glob", result, 2, &["is inside the input"], &out);
    // ...but not one beside the files a glob reads.
    let pattern = format!("{}/*.txt", t.path("in").display());
    let (code, err) = run("wordcount", &[&pattern], &out, &[]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn empty_files_only_give_an_empty_committed_output() {
    let t = TestDir::new();
    t.write("in/a.txt", "");
    t.write("in/b.txt", "");
    let out = t.path("out");
    wmr_ok(&[
        "run",
        "--job",
        guest("wordcount").to_str().unwrap(),
        "--input",
        t.path("in").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--format",
        "text",
    ]);
    assert!(text_output(&out).is_empty());
}

#[test]
fn corrupt_and_truncated_parquet_files_are_named() {
    let t = TestDir::new();
    let out = t.path("out");
    let corrupt = t.write("in/corrupt.parquet", b"PAR1 this is not really parquet at all PAR1");
    let result = run(
        "groupby",
        &[corrupt.to_str().unwrap()],
        &out,
        &["--param", "key=k", "--param", "value=v"],
    );
    refused("corrupt parquet", result, 2, &["corrupt.parquet"], &out);
    let tiny = t.write("in2/tiny.parquet", b"PAR");
    let result = run(
        "groupby",
        &[tiny.to_str().unwrap()],
        &out,
        &["--param", "key=k", "--param", "value=v"],
    );
    refused("truncated parquet", result, 2, &["tiny.parquet"], &out);
}

#[test]
fn a_parquet_file_without_the_jobs_columns_fails_with_the_column_named() {
    let t = TestDir::new();
    let out = t.path("out");
    let input = t.path("in/data.parquet");
    write_parquet(&input);
    let result = run(
        "groupby",
        &[input.to_str().unwrap()],
        &out,
        &[
            "--param",
            "key=nosuchcolumn",
            "--param",
            "value=v",
            "--max-attempts",
            "1",
        ],
    );
    refused("missing column", result, 1, &["nosuchcolumn", "data.parquet"], &out);
}

fn write_parquet(path: &Path) {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let batch = RecordBatch::try_from_iter([
        ("k", Arc::new(StringArray::from(vec!["a", "b"])) as _),
        ("v", Arc::new(Int64Array::from(vec![1, 2])) as _),
    ])
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn modules_that_are_not_wmr_jobs_are_refused_before_any_work() {
    let t = TestDir::new();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "core.wasm",
            wat::parse_str("(module (func (export \"map\")))").unwrap(),
            "it is a core wasm module, not a component",
        ),
        (
            "other-world.wasm",
            wat::parse_str("(component (core module (func (export \"run\"))))").unwrap(),
            "it does not export the wmr:job world",
        ),
        (
            "foreign-import.wasm",
            wat::parse_str("(component (import \"evil:host/steal\" (instance (export \"secrets\" (func)))))").unwrap(),
            "it imports what a wmr job may not",
        ),
    ];
    for (name, bytes, expected) in cases {
        let (code, err) = run_module(&t, &t.write(name, &bytes), &[]);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(
            err.contains(&format!("{name} is not a wmr job component")),
            "{name}: {err}"
        );
        assert!(err.contains(expected), "{name}: expected {expected:?} in {err}");
        assert!(!t.path("out/_SUCCESS").exists());
    }
    // A module over the size limit is refused before it is compiled.
    let mut huge = b"\0asm\x0d\0\x01\0".to_vec();
    huge.resize((256 << 20) + 1, 0);
    let (code, err) = run_module(&t, &t.write("huge.wasm", &huge), &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("huge.wasm is 268435457 bytes, over the 256 MiB wmr accepts"),
        "{err}"
    );
}
