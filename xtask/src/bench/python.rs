//! `bench python`: the Python and JavaScript word counts against CPython
//! and PySpark, and the fixed cost of one task of a Python guest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use super::{Measured, PEER_ROUNDS, duckdb_python, duckdb_timed, measure, median_of, mib, parse_counts, print_row};
use crate::{guests, numeric_flag, root, run};

/// The bench venv's Python with PySpark too (and Java on PATH, which
/// PySpark needs).
fn pyspark_python() -> Result<PathBuf> {
    let python = duckdb_python()?;
    let has = Command::new(&python)
        .args(["-c", "import pyspark"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("installing PySpark from PyPI into the bench venv");
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "pyspark"]))?;
    }
    if Command::new("java").arg("-version").output().is_err() {
        bail!("PySpark needs Java: install a JDK (e.g. Debian's openjdk-17-jre-headless)");
    }
    Ok(python)
}

/// The words of a line as every side of the Python bench splits them: the
/// SDK's own alphabet (exec'd from sdk/python/wmr/_alphabet.py, `argv[1]`).
const PY_WORDS: &str = r#"
import re, sys
_alphabet = {}
exec(open(sys.argv[1]).read(), _alphabet)
_WORD = re.compile(_alphabet["ALPHABETIC"] + "+")
_ASCII = re.compile("[A-Za-z]+")
def words(line):
    return (_ASCII if line.isascii() else _WORD).findall(line)
"#;

/// Word count in one CPython process: a Counter over every line's words.
const CPYTHON_WORDCOUNT: &str = r#"
import os, time, collections
src, out = sys.argv[2], sys.argv[3]
start = time.monotonic()
counts = collections.Counter()
for name in sorted(os.listdir(src)):
    with open(os.path.join(src, name), encoding="utf-8", errors="replace") as f:
        for line in f:
            counts.update(words(line))
elapsed = time.monotonic() - start
with open(out, "w") as f:
    for w, c in counts.items():
        f.write(f"{w}\t{c}\n")
print(elapsed)
"#;

/// PySpark's RDD word count with Python lambdas, `local[2]`; the time is the
/// job's, from after the context has started to the collected counts.
const PYSPARK_WORDCOUNT: &str = r#"
import time
from operator import add
from pyspark import SparkConf, SparkContext
src, out = sys.argv[2], sys.argv[3]
conf = (SparkConf().setMaster("local[2]").setAppName("wordcount")
        .set("spark.ui.enabled", "false").set("spark.driver.memory", "4g"))
sc = SparkContext(conf=conf)
sc.setLogLevel("ERROR")
start = time.monotonic()
counts = (sc.textFile(src).flatMap(lambda line: words(line))
          .map(lambda w: (w, 1)).reduceByKey(add).collect())
elapsed = time.monotonic() - start
sc.stop()
with open(out, "w") as f:
    for w, c in counts:
        f.write(f"{w}\t{c}\n")
print(elapsed)
"#;

/// The Python word count (2 slots) against PySpark's RDD word count
/// (`local[2]`) and one CPython process, on the same Zipf corpus; then the
/// JavaScript word count once; then the per-task overhead of a Python job
/// with its module compiled.
pub fn python(args: &[String]) -> Result<()> {
    let size_mib = numeric_flag(args, "--size-mib", 256)?;
    let root = root();
    let guests = guests()?;
    let wmr = root.join("target/release/wmr");
    let python = pyspark_python()?;
    let corpus = root.join(format!("target/bench/zipf-{size_mib}mib"));
    if !corpus.exists() {
        crate::generate_corpus(&corpus, size_mib << 20, 8, crate::BENCH_VOCABULARY)?;
    }
    let alphabet = root.join("sdk/python/wmr/_alphabet.py");
    let work = root.join("target/bench/python");
    std::fs::create_dir_all(&work)?;
    let (wmr_out, spark_tsv, cpython_tsv) = (work.join("wmr"), work.join("pyspark.tsv"), work.join("cpython.tsv"));
    let wmr_run = |module: &str, out: &Path| -> Result<Measured> {
        measure(
            Command::new(&wmr)
                .args(["run", "--quiet", "--overwrite", "--slots", "2", "--reducers", "2"])
                .args(["--split-size", "64MiB", "--job"])
                .arg(guests.join(module))
                .arg("--input")
                .arg(&corpus)
                .arg("--output")
                .arg(out),
        )
    };
    // Compiled once, into the machine's cache, before anything is timed.
    wmr_run("py-wordcount.wasm", &wmr_out)?;
    let cpython_script = format!("{PY_WORDS}{CPYTHON_WORDCOUNT}");
    let spark_script = format!("{PY_WORDS}{PYSPARK_WORDCOUNT}");
    let (mut w, mut s, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..PEER_ROUNDS {
        w.push(wmr_run("py-wordcount.wasm", &wmr_out)?);
        s.push(duckdb_timed(&python, &spark_script, &[&alphabet, &corpus, &spark_tsv])?.0);
        c.push(duckdb_timed(&python, &cpython_script, &[&alphabet, &corpus, &cpython_tsv])?.0);
        eprintln!(
            "round {round}: wmr {:.2?} ({:.0} MiB), PySpark {:.2?}, CPython {:.2?}",
            w[round].wall,
            mib(w[round].peak_rss),
            s[round].wall,
            c[round].wall
        );
    }
    let wmr_counts = crate::read_counts(&wmr, &wmr_out)?;
    for (name, tsv) in [("PySpark", &spark_tsv), ("CPython", &cpython_tsv)] {
        let counts = parse_counts(&std::fs::read_to_string(tsv)?, '\t', name)?;
        if counts != wmr_counts {
            bail!(
                "wmr and {name} disagree: {} vs {} distinct words",
                wmr_counts.len(),
                counts.len()
            );
        }
    }
    // JavaScript, once (its interpreter is far slower), checked equal too.
    let js_out = work.join("wmr-js");
    let js = wmr_run("js-wordcount.wasm", &js_out)?;
    if crate::read_counts(&wmr, &js_out)? != wmr_counts {
        bail!("the JavaScript word count disagrees with the Python one");
    }
    let overhead = task_overhead(&wmr, &guests.join("py-wordcount.wasm"), &work)?;
    let (w, s, c) = (median_of(w), median_of(s), median_of(c));
    println!(
        "Python word count, {size_mib} MiB of Zipf text ({} distinct words), median of {PEER_ROUNDS} rounds, outputs equal:",
        wmr_counts.len()
    );
    print_row("wmr run, Python job, 2 slots:  ", w, "");
    print_row(
        "PySpark RDD, local[2]:         ",
        s,
        " (job time; JVM and context start excluded; RSS is the Python driver's alone, not the JVM's or its workers')",
    );
    print_row("CPython, one process:          ", c, " (Counter over re.findall)");
    print_row("wmr run, JavaScript job, 2 slots:", js, " (one run)");
    let (ws, ss, cs) = (w.wall.as_secs_f64(), s.wall.as_secs_f64(), c.wall.as_secs_f64());
    println!("  wmr/PySpark throughput: {:.2}x (target: at least 2x)", ss / ws);
    println!("  wmr/CPython throughput: {:.2}x", cs / ws);
    println!(
        "  per-task overhead of a Python job, module compiled: {:.1} ms (target: under 50 ms)",
        overhead * 1000.0
    );
    Ok(())
}

/// Seconds a map task of a Python job costs beyond its work: one slot, 100
/// one-line files (100 maps) against one file of the same lines (1 map),
/// medians of 3, the difference over 99.
fn task_overhead(wmr: &Path, module: &Path, work: &Path) -> Result<f64> {
    let many = work.join("tiny-many");
    let one = work.join("tiny-one");
    for dir in [&many, &one] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
    }
    let mut all = String::new();
    for i in 0..100 {
        let line = format!("tiny file {i} has a few words in it\n");
        std::fs::write(many.join(format!("{i:03}.txt")), &line)?;
        all.push_str(&line);
    }
    std::fs::write(one.join("all.txt"), all)?;
    // 36-byte files with 40-byte splits: one map per file, none packed.
    let time = |input: &Path, split_size: &str| -> Result<Duration> {
        let mut rounds = Vec::new();
        for _ in 0..3 {
            rounds.push(
                measure(
                    Command::new(wmr)
                        .args(["run", "--quiet", "--overwrite", "--slots", "1", "--reducers", "1"])
                        .args(["--split-size", split_size, "--job"])
                        .arg(module)
                        .arg("--input")
                        .arg(input)
                        .arg("--output")
                        .arg(work.join("tiny-out")),
                )?
                .wall,
            );
        }
        rounds.sort();
        Ok(rounds[1])
    };
    let (t_many, t_one) = (time(&many, "40")?, time(&one, "64MiB")?);
    Ok((t_many.as_secs_f64() - t_one.as_secs_f64()).max(0.0) / 99.0)
}
