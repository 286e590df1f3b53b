//! `bench wordcount` (Zipf or, with `--distinct`, high-cardinality text)
//! against native-wc and DuckDB, and `bench scale`: the high-cardinality
//! word count at growing sizes.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use super::{PEER_ROUNDS, duckdb_python, duckdb_timed, measure, median_of, mib, native_tools, parse_counts, print_row};
use crate::{build_wmr, numeric_flag, root, rust_guests};

/// DuckDB's word count: the same words (maximal runs of letters) from every
/// `*.txt` under a directory, written to Parquet; then (untimed) the counts
/// as `word\tcount` lines; last, the query's seconds.
const DUCKDB_WORDCOUNT: &str = r#"
import sys, time, duckdb
src, out, tsv = sys.argv[1], sys.argv[2], sys.argv[3]
con = duckdb.connect(config={"threads": 2})
con.execute("SET enable_progress_bar = false")
start = time.monotonic()
con.execute(f"""
COPY (
  SELECT word, count(*) AS count
  FROM (SELECT unnest(regexp_extract_all(line, '\p{{L}}+')) AS word
        FROM read_csv('{src}/*.txt', columns={{'line': 'VARCHAR'}}, header=false,
                      delim='\x01', quote='', escape='', auto_detect=false))
  GROUP BY word
) TO '{out}' (FORMAT parquet)""")
took = time.monotonic() - start
con.execute(f"COPY (SELECT word, count FROM '{out}') TO '{tsv}' (FORMAT csv, DELIMITER '\t', HEADER false, QUOTE '')")
print(took)
"#;

/// A corpus where most words are distinct: letters spelling a 64-bit hash
/// of a counter, with one word in five from a small common set. About
/// `bytes` bytes in `files` files, written once.
fn distinct_corpus(dir: &Path, bytes: u64, files: usize) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    eprintln!(
        "generating a {} MiB high-cardinality corpus in {}",
        bytes >> 20,
        dir.display()
    );
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let common = ["the", "of", "and", "to", "in", "that", "was", "with", "for", "as"];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let per_file = bytes / files as u64;
    for f in 0..files {
        let mut text = String::with_capacity(per_file as usize + 128);
        while (text.len() as u64) < per_file {
            for k in 0..10 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if k > 0 {
                    text.push(' ');
                }
                if state.is_multiple_of(5) {
                    text.push_str(common[(state >> 8) as usize % common.len()]);
                } else {
                    // 7 letters: 8 billion words, so nearly every one is new.
                    let mut n = state >> 16;
                    for _ in 0..7 {
                        text.push((b'a' + (n % 26) as u8) as char);
                        n /= 26;
                    }
                }
            }
            text.push('\n');
        }
        std::fs::write(tmp.join(format!("part-{f:03}.txt")), text)?;
    }
    std::fs::rename(&tmp, dir)?;
    Ok(())
}

/// Word count: wmr against DuckDB and native Rust, both at 2 threads, on a
/// Zipf corpus or (with `--distinct`) a high-cardinality one.
pub fn wordcount(args: &[String]) -> Result<()> {
    let size_mib = numeric_flag(args, "--size-mib", 256)?;
    let distinct = args.iter().any(|a| a == "--distinct");
    let root = root();
    let guests = rust_guests()?;
    let wmr = build_wmr()?;
    let native = native_tools()?;
    let python = duckdb_python()?;
    let corpus = if distinct {
        let dir = root.join(format!("target/bench/distinct-{size_mib}mib"));
        distinct_corpus(&dir, size_mib << 20, 8)?;
        dir
    } else {
        let dir = root.join(format!("target/bench/zipf-{size_mib}mib"));
        if !dir.exists() {
            crate::generate_corpus(&dir, size_mib << 20, 8, crate::BENCH_VOCABULARY)?;
        }
        dir
    };
    let work = root.join("target/bench/wordcount");
    std::fs::create_dir_all(&work)?;
    let (wmr_out, native_out, duck_out, duck_tsv) = (
        work.join("wmr"),
        work.join("native.txt"),
        work.join("duckdb.parquet"),
        work.join("duckdb.tsv"),
    );
    let (mut w, mut n, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..PEER_ROUNDS {
        w.push(measure(
            Command::new(&wmr)
                .args([
                    "run",
                    "--quiet",
                    "--overwrite",
                    "--slots",
                    "2",
                    "--reducers",
                    "2",
                    "--job",
                ])
                .arg(guests.join("wordcount.wasm"))
                .arg("--input")
                .arg(&corpus)
                .arg("--output")
                .arg(&wmr_out),
        )?);
        n.push(measure(
            Command::new(native.join("wc"))
                .args(["--threads", "2", "--out"])
                .arg(&native_out)
                .arg(&corpus),
        )?);
        let _ = std::fs::remove_file(&duck_out);
        d.push(duckdb_timed(&python, DUCKDB_WORDCOUNT, &[&corpus, &duck_out, &duck_tsv])?.0);
        eprintln!(
            "round {round}: wmr {:.2?} ({:.0} MiB), native {:.2?}, DuckDB {:.2?} ({:.0} MiB)",
            w[round].wall,
            mib(w[round].peak_rss),
            n[round].wall,
            d[round].wall,
            mib(d[round].peak_rss)
        );
    }
    let wmr_counts = crate::read_counts(&wmr, &wmr_out)?;
    let native_counts = parse_counts(&std::fs::read_to_string(&native_out)?, ' ', "native wc")?;
    let duck_counts = parse_counts(&std::fs::read_to_string(&duck_tsv)?, '\t', "DuckDB")?;
    for (name, counts) in [("native Rust", &native_counts), ("DuckDB", &duck_counts)] {
        if *counts != wmr_counts {
            let differing = wmr_counts.iter().find(|(k, v)| counts.get(*k) != Some(v));
            bail!(
                "wmr and {name} disagree: {} vs {} distinct words; e.g. {differing:?} vs {:?}",
                wmr_counts.len(),
                counts.len(),
                differing.and_then(|(k, _)| counts.get(k))
            );
        }
    }
    let (w, n, d) = (median_of(w), median_of(n), median_of(d));
    let kind = if distinct { "high-cardinality" } else { "Zipf" };
    println!(
        "wordcount, {size_mib} MiB of {kind} text ({} distinct words), median of {PEER_ROUNDS} rounds, outputs equal:",
        wmr_counts.len()
    );
    print_row("wmr run, 2 slots:        ", w, "");
    print_row("native Rust, 2 threads:  ", n, "");
    print_row(
        "DuckDB, 2 threads:       ",
        d,
        " (query time, Python's startup excluded)",
    );
    let (ws, ns, ds) = (w.wall.as_secs_f64(), n.wall.as_secs_f64(), d.wall.as_secs_f64());
    if distinct {
        println!("  wmr/DuckDB time:  {:.2}x (target: at most 1.5x)", ws / ds);
        println!("  wmr/native time:  {:.2}x", ws / ns);
        println!(
            "  wmr peak RSS:     {:.0} MiB (target: under 1024 MiB)",
            mib(w.peak_rss)
        );
    } else {
        println!("  wmr/native time:  {:.2}x (target: at most 1.7x)", ws / ns);
        println!("  wmr/DuckDB throughput: {:.2}x (target: at least 1.5x)", ds / ws);
    }
    if let (Some(wc), Some(nc)) = (w.cpu, n.cpu) {
        println!(
            "  wmr/native CPU:   {:.2}x (both on 2 threads; less swayed by the machine's other load)",
            wc.as_secs_f64() / nc.as_secs_f64()
        );
    }
    Ok(())
}

/// The high-cardinality word count at growing sizes: time per GiB and peak
/// RSS should stay flat.
pub fn scale(args: &[String]) -> Result<()> {
    let max_gib = numeric_flag(args, "--max-gib", 8)?;
    let root = root();
    let guests = rust_guests()?;
    let wmr = build_wmr()?;
    let mut rows = Vec::new();
    let mut gib = 1;
    while gib <= max_gib {
        let corpus = root.join(format!("target/bench/distinct-{gib}gib"));
        distinct_corpus(&corpus, gib << 30, (gib as usize) * 8)?;
        let out = root.join("target/bench/scale-out");
        let m = measure(
            Command::new(&wmr)
                .args([
                    "run",
                    "--quiet",
                    "--overwrite",
                    "--slots",
                    "2",
                    "--reducers",
                    "4",
                    "--job",
                ])
                .arg(guests.join("wordcount.wasm"))
                .arg("--input")
                .arg(&corpus)
                .arg("--output")
                .arg(&out),
        )?;
        eprintln!("{gib} GiB: {:.1?}, peak RSS {:.0} MiB", m.wall, mib(m.peak_rss));
        rows.push((gib, m));
        // The corpus is large; keep the disk for the next size.
        std::fs::remove_dir_all(&corpus)?;
        gib *= 2;
    }
    println!("high-cardinality wordcount, wmr run with 2 slots, one run per size:");
    println!(
        "  {:>5}  {:>9}  {:>10}  {:>13}",
        "GiB", "seconds", "s per GiB", "peak RSS MiB"
    );
    for (gib, m) in rows {
        println!(
            "  {gib:>5}  {:>9.1}  {:>10.1}  {:>13.0}",
            m.wall.as_secs_f64(),
            m.wall.as_secs_f64() / gib as f64,
            mib(m.peak_rss)
        );
    }
    Ok(())
}
