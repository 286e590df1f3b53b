//! Every example guest against a sequential reference written here, embedded
//! and on a cluster, in Rust, Python and JavaScript.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};

use crate::harness::*;

// Every guest in guest-examples/ has a module of tests here, by construction:
// the build script lists the guests, and a guest without a module fails to compile.
macro_rules! assert_test_exists {
    ($name:ident) => {
        #[expect(unused_imports, reason = "only checks that the module exists")]
        use self::$name as _;
    };
}
include!(concat!(env!("OUT_DIR"), "/guest_examples.rs"));
foreach_example!(assert_test_exists);

/// `guest-examples/wordcount`
mod wordcount {
    use super::*;

    #[test]
    fn wordcount_over_gutenberg_matches_the_reference_figures() {
        let t = TestDir::new();
        let out = t.path("out");
        wmr_ok(&[
            "run",
            "--job",
            guest("wordcount").to_str().unwrap(),
            "--input",
            &gutenberg(),
            "--output",
            out.to_str().unwrap(),
            "--reducers",
            "10",
            "--format",
            "text",
            "--split-size",
            "200KiB",
        ]);
        let lines = text_output(&out);
        assert_eq!(lines.len(), 22_107);
        assert_eq!(lines[0], "A 509");
        let texts: Vec<String> = gutenberg_texts();
        assert_eq!(lines, as_lines(&reference_wordcount(&texts)));
        let total: u64 = lines
            .iter()
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 623_948);
    }

    #[test]
    fn wordcount_spills_and_combines_when_its_buffer_is_small() {
        let t = TestDir::new();
        // Many distinct words, so combining alone can't keep the buffer small.
        let text: String = (0..40_000)
            .map(|i| format!("w{} common word{}\n", i % 7, encode(i)))
            .collect();
        let input = t.write("in/a.txt", &text);
        let out = t.path("out");
        let o = wmr_ok(&[
            "run",
            "--job",
            guest("wordcount").to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--format",
            "text",
            "--reducers",
            "2",
            "--task-memory",
            "1MiB",
            "--json",
        ]);
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            summary["counters"]["wmr.map.spilled.bytes"].as_i64().unwrap_or(0) > 0,
            "{summary}"
        );
        assert_eq!(text_output(&out), as_lines(&reference_wordcount(&[text])));
    }

    /// `i` in letters only, so it stays one word.
    fn encode(mut i: usize) -> String {
        let mut s = String::new();
        loop {
            s.push((b'a' + (i % 26) as u8) as char);
            i /= 26;
            if i == 0 {
                return s;
            }
        }
    }

    #[test]
    fn wordcount_on_generated_input_for_many_splits_and_reducer_counts() {
        let t = TestDir::new();
        let texts: Vec<String> = (0..3).map(|i| corpus(3000, i + 1)).collect();
        for (i, text) in texts.iter().enumerate() {
            t.write(&format!("in/f{i}.txt"), text);
        }
        let expected = as_lines(&reference_wordcount(&texts));
        for r in ["1", "3", "10"] {
            let out = t.path(&format!("out-{r}"));
            wmr_ok(&[
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
                "4KiB",
                "--slots",
                "2",
            ]);
            assert_eq!(text_output(&out), expected, "with {r} reducers");
        }
    }
}

/// `guest-examples/indexer`
mod indexer {
    use super::*;

    #[test]
    fn indexer_gives_one_line_per_word_with_sorted_file_names() {
        let t = TestDir::new();
        let out = t.path("out");
        wmr_ok(&[
            "run",
            "--job",
            guest("indexer").to_str().unwrap(),
            "--input",
            &gutenberg(),
            "--output",
            out.to_str().unwrap(),
            "--reducers",
            "3",
            "--format",
            "text",
            "--split-size",
            "300KiB",
        ]);
        let lines = text_output(&out);
        let expected = reference_index_of_gutenberg();
        assert_eq!(lines.len(), 22_107);
        assert_eq!(lines, expected);
    }
}

/// `guest-examples/grep`
mod grep {
    use super::*;

    #[test]
    fn grep_spills_map_output_past_its_buffer_and_loses_nothing() {
        let t = TestDir::new();
        // Every line matches: map output as large as the input.
        let text: String = (0..20_000).map(|i| format!("line {i} has a needle\n")).collect();
        let input = t.write("in/a.txt", &text);
        let out = t.path("out");
        let o = wmr_ok(&[
            "run",
            "--job",
            guest("grep").to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--format",
            "text",
            "--param",
            "pattern=needle",
            "--reducers",
            "3",
            "--task-memory",
            "256KiB",
            "--json",
        ]);
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let spilled = summary["counters"]["wmr.map.spilled.bytes"].as_i64().unwrap_or(0);
        assert!(spilled > 100_000, "spilled only {spilled} bytes: {summary}");
        let mut offset = 0;
        let mut expected: Vec<String> = text
            .lines()
            .map(|l| {
                let line = format!("{} {offset} {l}", input.display());
                offset += l.len() + 1;
                line
            })
            .collect();
        expected.sort();
        assert_eq!(text_output(&out), expected);
    }

    #[test]
    fn grep_finds_matching_lines_with_file_and_offset() {
        let t = TestDir::new();
        let a = t.write("in/a.txt", "one needle\nno\nneedle two\n");
        t.write("in/b.txt", "nothing\r\nthe needle\r\n");
        let out = t.path("out");
        wmr_ok(&[
            "run",
            "--job",
            guest("grep").to_str().unwrap(),
            "--input",
            t.path("in").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--format",
            "text",
            "--param",
            "pattern=needle",
            "--reducers",
            "2",
        ]);
        let b = t.path("in/b.txt");
        let mut expected = vec![
            format!("{} 0 one needle", a.display()),
            format!("{} 14 needle two", a.display()),
            format!("{} 9 the needle", b.display()),
        ];
        expected.sort();
        assert_eq!(text_output(&out), expected);
        // Without its parameter the job is refused before it starts.
        let refused = wmr(&[
            "run",
            "--job",
            guest("grep").to_str().unwrap(),
            "--input",
            a.to_str().unwrap(),
            "--output",
            t.path("o2").to_str().unwrap(),
        ]);
        assert_eq!(refused.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&refused.stderr)
                .contains("missing job parameter \"pattern\"; give it with --param pattern=VALUE")
        );
    }
}

/// `guest-examples/groupby`
mod groupby {
    use super::*;

    #[test]
    fn parquet_output_reads_back_and_groupby_reads_parquet_input() {
        groupby_matches_the_reference("groupby", None);
    }
}

/// Group-by sales per region by `guest` over a generated Parquet file of
/// several row groups, embedded (or submitted to `cluster`): the sums and
/// counts equal the reference, and the rows with nulls are counted.
pub(crate) fn groupby_matches_the_reference(guest_name: &str, cluster: Option<&crate::cluster::Cluster>) {
    let t = TestDir::new();
    // A Parquet input with several row groups.
    let regions = ["north", "south", "east", "west"];
    let n = 10_000;
    let region: Vec<Option<&str>> = (0..n)
        .map(|i| if i % 97 == 0 { None } else { Some(regions[i % 4]) })
        .collect();
    let amount: Vec<i64> = (0..n).map(|i| (i as i64 * 7) % 1000).collect();
    let batch = RecordBatch::try_from_iter([
        ("region", Arc::new(StringArray::from(region.clone())) as _),
        ("amount", Arc::new(Int64Array::from(amount.clone())) as _),
    ])
    .unwrap();
    write_parquet(&t, "in/sales.parquet", &batch, 1000);
    let out = t.path("out");
    let module = guest(guest_name);
    let input = t.path("in/sales.parquet");
    let mut args = vec![
        "--job",
        module.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--param",
        "key=region",
        "--param",
        "value=amount",
        "--split-size",
        "4KiB",
        "--reducers",
        "3",
        "--json",
    ];
    let summary = match cluster {
        None => wmr_ok(&[&["run"], args.as_slice()].concat()),
        Some(c) => {
            args.insert(0, "submit");
            args.push("--wait");
            let o = c.client(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            o
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert_eq!(json["state"], "succeeded");
    // `run --json` counts maps; a cluster's status gives their progress.
    let maps = json["maps"].as_u64().or_else(|| json["maps"]["total"].as_u64());
    assert!(maps.unwrap() > 1, "row groups were split over several maps: {json}");
    assert_eq!(
        json["counters"]["rows.skipped_null"],
        (0..n).filter(|i| i % 97 == 0).count() as i64
    );
    let mut expected: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for (r, a) in region.iter().zip(&amount) {
        if let Some(r) = r {
            let e = expected.entry(r.to_string()).or_default();
            e.0 += *a as f64;
            e.1 += 1;
        }
    }
    let got = groupby_output(&out, "region");
    assert_eq!(got, expected);
}

/// Word count by `guest` over the Gutenberg books with 1, 3 and 10
/// reducers equals the reference.
fn wordcount_over_gutenberg_matches_the_reference(guest_name: &str) {
    let expected = as_lines(&reference_wordcount(&gutenberg_texts()));
    for reducers in ["1", "3", "10"] {
        let t = TestDir::new();
        let out = t.path("out");
        wmr_ok(&[
            "run",
            "--job",
            guest(guest_name).to_str().unwrap(),
            "--input",
            &gutenberg(),
            "--output",
            out.to_str().unwrap(),
            "--reducers",
            reducers,
            "--format",
            "text",
            "--split-size",
            "1MiB",
        ]);
        assert_eq!(text_output(&out), expected, "{guest_name} with {reducers} reducers");
    }
}

/// Word count by `guest` submitted to a cluster of two workers equals the
/// reference.
fn wordcount_on_a_cluster_matches_the_reference(guest_name: &str) {
    let t = TestDir::new();
    let mut c = crate::cluster::Cluster::start(&t, "10s");
    c.add_worker(1);
    c.add_worker(1);
    let out = t.path("out");
    let o = c.client(&[
        "submit",
        "--job",
        guest(guest_name).to_str().unwrap(),
        "--input",
        &gutenberg(),
        "--output",
        out.to_str().unwrap(),
        "--format",
        "text",
        "--reducers",
        "3",
        "--split-size",
        "1MiB",
        "--wait",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&gutenberg_texts())));
}

/// `guest-examples/python/wordcount`
mod py_wordcount {
    #[test]
    fn python_wordcount_over_gutenberg_matches_the_reference() {
        super::wordcount_over_gutenberg_matches_the_reference("py-wordcount");
    }

    #[test]
    fn python_wordcount_on_a_cluster_matches_the_reference() {
        super::wordcount_on_a_cluster_matches_the_reference("py-wordcount");
    }
}

/// `guest-examples/js/wordcount`
mod js_wordcount {
    #[test]
    fn javascript_wordcount_over_gutenberg_matches_the_reference() {
        super::wordcount_over_gutenberg_matches_the_reference("js-wordcount");
    }

    #[test]
    fn javascript_wordcount_on_a_cluster_matches_the_reference() {
        super::wordcount_on_a_cluster_matches_the_reference("js-wordcount");
    }

    /// One split of 32 MiB whose vocabulary is some 200,000 words: what a
    /// JavaScript mapper holds must stay well inside its engine's 32 MiB
    /// collected heap (holding 100,000 words, this aborted some 20 MB in).
    #[test]
    fn javascript_wordcount_of_a_large_vocabulary_runs_through_one_big_split() {
        use crate::harness::*;
        let t = TestDir::new();
        let (mut state, mut text) = (0x9e37_79b9_7f4a_7c15_u64, String::with_capacity(33 << 20));
        let mut line = 0;
        while text.len() < 32 << 20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Skewed: low indices far more often, as in a Zipf vocabulary.
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            let mut i = (u * u * u * 200_000.0) as usize;
            loop {
                text.push((b'a' + (i % 26) as u8) as char);
                i /= 26;
                if i == 0 {
                    break;
                }
            }
            line += 1;
            text.push(if line % 12 == 0 { '\n' } else { ' ' });
        }
        let input = t.write("in/big.txt", &text);
        let out = t.path("out");
        wmr_ok(&[
            "run",
            "--job",
            guest("js-wordcount").to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--slots",
            "1",
            "--format",
            "text",
        ]);
        let expected = reference_wordcount(&[text]);
        assert!(expected.len() > 100_000, "{} words", expected.len());
        assert_eq!(text_output(&out), as_lines(&expected));
    }
}

/// `guest-examples/python/groupby`
mod py_groupby {
    #[test]
    fn python_groupby_matches_the_reference_embedded_and_on_a_cluster() {
        super::groupby_matches_the_reference("py-groupby", None);
        let t = crate::harness::TestDir::new();
        let mut c = crate::cluster::Cluster::start(&t, "10s");
        c.add_worker(2);
        super::groupby_matches_the_reference("py-groupby", Some(&c));
    }
}

/// `guest-examples/js/groupby`
mod js_groupby {
    #[test]
    fn javascript_groupby_matches_the_reference_embedded_and_on_a_cluster() {
        super::groupby_matches_the_reference("js-groupby", None);
        let t = crate::harness::TestDir::new();
        let mut c = crate::cluster::Cluster::start(&t, "10s");
        c.add_worker(2);
        super::groupby_matches_the_reference("js-groupby", Some(&c));
    }
}

/// `guest-examples/sort`
mod sort {
    use super::*;

    /// `n` TeraSort-style records (as `gen_sort` lays them out): a 10-byte
    /// key of printable ASCII, a space, the record number in hex, a space,
    /// filler, a newline; 100 bytes each.
    fn records(n: usize, seed: u64) -> String {
        let mut s = seed | 1;
        let mut out = String::with_capacity(n * 100);
        for i in 0..n {
            for _ in 0..10 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                out.push((b'!' + (s % 94) as u8) as char);
            }
            out.push_str(&format!(" {i:016X} "));
            for k in 0..71 {
                out.push((b'A' + ((i + k) % 26) as u8) as char);
            }
            out.push('\n');
        }
        out
    }

    /// The part files of `dir` concatenated in name order.
    fn parts_in_order(dir: &std::path::Path) -> String {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("part-"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|n| std::fs::read_to_string(dir.join(n)).unwrap())
            .collect()
    }

    #[test]
    fn sort_output_concatenated_in_order_is_the_sorted_input() {
        let t = TestDir::new();
        let input = records(20_000, 11);
        t.write("in/a.txt", &input);
        t.write("in/b.txt", records(5_000, 12));
        let mut lines: Vec<&str> = input.lines().collect();
        let b = std::fs::read_to_string(t.path("in/b.txt")).unwrap();
        lines.extend(b.lines());
        lines.sort_unstable();
        let expected: String = lines.iter().map(|l| format!("{l}\n")).collect();
        for r in ["1", "3", "10"] {
            let out = t.path(&format!("out-{r}"));
            wmr_ok(&[
                "run",
                "--job",
                guest("sort").to_str().unwrap(),
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
            ]);
            let got = parts_in_order(&out);
            assert!(
                got == expected,
                "with {r} reducers the parts in order are not the sorted input"
            );
            // The sampled ranges spread the records over every partition.
            if r == "3" {
                for p in 0..3 {
                    let part = std::fs::read_to_string(out.join(format!("part-{p:05}.txt"))).unwrap();
                    let n = part.lines().count();
                    assert!(n > 25_000 / 6, "part {p} has only {n} records");
                }
            }
        }
    }

    #[test]
    fn total_order_is_a_flag_for_any_job() {
        let t = TestDir::new();
        let texts: Vec<String> = (0..4).map(|i| corpus(2000, i + 3)).collect();
        for (i, text) in texts.iter().enumerate() {
            t.write(&format!("in/f{i}.txt"), text);
        }
        let out = t.path("out");
        wmr_ok(&[
            "run",
            "--job",
            guest("wordcount").to_str().unwrap(),
            "--input",
            t.path("in").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--reducers",
            "4",
            "--format",
            "text",
            "--total-order",
        ]);
        // In part order the words are already sorted, and the counts right.
        let got: Vec<String> = parts_in_order(&out).lines().map(str::to_string).collect();
        let words: Vec<&str> = got.iter().map(|l| l.rsplit_once(' ').unwrap().0).collect();
        let mut sorted = words.clone();
        sorted.sort_unstable();
        assert_eq!(words, sorted);
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, as_lines(&reference_wordcount(&texts)));
    }
}
