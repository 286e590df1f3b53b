//! The memory budget: with a task memory far smaller than the data, map
//! tasks spill and reduce tasks merge in passes through local disk, and the
//! output is still exactly the sequential reference. Records over the
//! limit, and outputs larger than one multipart part on S3.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};

use crate::harness::*;

/// A text of `lines` lines over a vocabulary where most words are rare.
fn many_distinct_words(lines: usize, seed: u64) -> String {
    let mut s = seed | 1;
    let mut out = String::new();
    for _ in 0..lines {
        for k in 0..6 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if k > 0 {
                out.push(' ');
            }
            // Letters only, so each is one word; a few common ones too.
            let mut n = if s.is_multiple_of(5) { s % 50 } else { s % 200_000 };
            loop {
                out.push((b'a' + (n % 26) as u8) as char);
                n /= 26;
                if n == 0 {
                    break;
                }
            }
        }
        out.push('\n');
    }
    out
}

fn counter(summary: &serde_json::Value, name: &str) -> i64 {
    summary["counters"][name].as_i64().unwrap_or(0)
}

#[test]
fn wordcount_with_a_tiny_budget_spills_both_sides_and_matches_the_reference() {
    let t = TestDir::new();
    let texts: Vec<String> = (0..3).map(|i| many_distinct_words(4000, i + 7)).collect();
    for (i, text) in texts.iter().enumerate() {
        t.write(&format!("in/f{i}.txt"), text);
    }
    let expected = as_lines(&reference_wordcount(&texts));
    for r in ["1", "3", "10"] {
        let out = t.path(&format!("out-{r}"));
        let o = wmr_ok(&[
            "run",
            "--job",
            guest("wordcount").to_str().unwrap(),
            "--input",
            t.path("in").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--reducers",
            r,
            "--format",
            "text",
            "--split-size",
            "64KiB",
            "--task-memory",
            "256KiB",
            "--slots",
            "2",
            "--json",
        ]);
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            counter(&summary, "wmr.map.spilled.bytes") > 0,
            "maps spilled: {summary}"
        );
        if r == "1" {
            // Far more map outputs than one merge may open: passes through disk.
            assert!(
                counter(&summary, "wmr.reduce.spilled.bytes") > 0,
                "the reduce merged in passes: {summary}"
            );
        }
        assert_eq!(text_output(&out), expected, "with {r} reducers");
    }
}

#[test]
fn indexer_with_a_tiny_budget_matches_the_reference() {
    let t = TestDir::new();
    let expected = reference_index_of_gutenberg();
    for r in ["1", "3", "10"] {
        let out = t.path(&format!("out-{r}"));
        let o = wmr_ok(&[
            "run",
            "--job",
            guest("indexer").to_str().unwrap(),
            "--input",
            &gutenberg(),
            "--output",
            out.to_str().unwrap(),
            "--reducers",
            r,
            "--format",
            "text",
            "--split-size",
            "200KiB",
            "--task-memory",
            "512KiB",
            "--json",
        ]);
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            counter(&summary, "wmr.map.spilled.bytes") > 0,
            "maps spilled: {summary}"
        );
        assert_eq!(text_output(&out), expected, "with {r} reducers");
    }
}

#[test]
fn groupby_with_a_tiny_budget_matches_the_reference() {
    let t = TestDir::new();
    let n = 60_000usize;
    let keys: Vec<String> = (0..n).map(|i| format!("key-{:05}", (i * 7919) % 5000)).collect();
    let amount: Vec<i64> = (0..n).map(|i| (i as i64 * 13) % 1000 - 300).collect();
    let batch = RecordBatch::try_from_iter([
        ("k", Arc::new(StringArray::from(keys.clone())) as _),
        ("amount", Arc::new(Int64Array::from(amount.clone())) as _),
    ])
    .unwrap();
    write_parquet(&t, "in/sales.parquet", &batch, 4000);
    let mut expected: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for (k, a) in keys.iter().zip(&amount) {
        let e = expected.entry(k.clone()).or_default();
        e.0 += *a as f64;
        e.1 += 1;
    }
    for r in ["1", "3", "10"] {
        let out = t.path(&format!("out-{r}"));
        wmr_ok(&[
            "run",
            "--job",
            guest("groupby").to_str().unwrap(),
            "--input",
            t.path("in/sales.parquet").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--param",
            "key=k",
            "--param",
            "value=amount",
            "--split-size",
            "8KiB",
            "--reducers",
            r,
            "--task-memory",
            "128KiB",
        ]);
        let got = groupby_output(&out, "k");
        assert_eq!(got, expected, "with {r} reducers");
    }
}

#[test]
fn a_record_over_the_limit_fails_with_one_line_and_no_output() {
    let t = TestDir::new();
    let long = "y".repeat(300_000);
    let text = format!("fine words here\n{long}\nmore words\n");
    let input = t.write("in/a.txt", &text);
    let out = t.path("out");
    let o = wmr(&[
        "run",
        "--job",
        guest("wordcount").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-record",
        "100KiB",
        "--quiet",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("wmr: ") && l.contains("record limit"))
        .unwrap_or_else(|| panic!("no line names the record limit: {stderr}"));
    assert!(line.contains(&input.display().to_string()), "{line}");
    assert!(line.contains("byte offset 16"), "{line}");
    assert!(line.contains("--max-record"), "{line}");
    // Not retried: the same line would fail every attempt.
    assert!(line.contains("failed 1 time"), "{line}");
    assert!(!out.join("_SUCCESS").exists());
    let visible: Vec<_> = std::fs::read_dir(&out)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("part-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(visible.is_empty(), "{visible:?}");
}

#[test]
fn outputs_bigger_than_one_multipart_part_reach_s3_whole() {
    let t = TestDir::new();
    let root = t.path("s3");
    // Every line matches: a shuffle object and an output of about 12 MiB,
    // more than one 8 MiB part.
    let text: String = (0..300_000)
        .map(|i| format!("line {i:07} carries the needle and some padding\n"))
        .collect();
    t.write("s3/wmr/in/a.txt", &text);
    let s3 = S3Server::start(&root);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args([
            "run",
            "--job",
            guest("grep").to_str().unwrap(),
            "--input",
            "s3://wmr/in/a.txt",
            "--output",
            "s3://wmr/out",
            "--format",
            "text",
            "--param",
            "pattern=needle",
            "--reducers",
            "1",
            "--json",
        ])
        .envs(s3.env.iter().cloned())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(counter(&summary, "wmr.shuffle.bytes") > 0, "{summary}");
    let part = std::fs::read_to_string(root.join("wmr/out/part-00000.txt")).unwrap();
    assert!(part.len() > 9 << 20, "the output is {} bytes", part.len());
    let mut offset = 0;
    let expected: Vec<String> = text
        .lines()
        .map(|l| {
            let line = format!("s3://wmr/in/a.txt {offset} {l}");
            offset += l.len() + 1;
            line
        })
        .collect();
    let mut got: Vec<String> = part.lines().map(str::to_string).collect();
    got.sort();
    let mut expected_sorted = expected;
    expected_sorted.sort();
    assert_eq!(got, expected_sorted);
}

#[test]
fn many_small_files_are_packed_into_few_maps_with_the_same_output() {
    let t = TestDir::new();
    let texts: Vec<String> = (0..300).map(|i| corpus(3, i + 1)).collect();
    for (i, text) in texts.iter().enumerate() {
        t.write(&format!("in/f{i:03}.txt"), text);
    }
    let out = t.path("out");
    let o = wmr_ok(&[
        "run",
        "--job",
        guest("wordcount").to_str().unwrap(),
        "--input",
        t.path("in").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--reducers",
        "3",
        "--slots",
        "2",
        "--format",
        "text",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Each tiny file counts as 1/64 of a split: 300 of them need 5 tasks,
    // rounded up to 6 so that the last wave fills both slots.
    assert_eq!(summary["maps"], 6, "{summary}");
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
}
