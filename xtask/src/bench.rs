//! Benchmarks against peers measured in the same run: DuckDB (installed from
//! PyPI into its own venv under target/bench) and the hand-tuned native
//! baselines in ../shared/bench/native-wc. Every side's output is checked
//! equal before a figure is printed; figures are medians, with each side's
//! peak RSS (from wait4).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{build_wmr, guests, numeric_flag, root, run, rust_guests};

/// Timed rounds per side in the peer benches.
const PEER_ROUNDS: usize = 3;

/// What one timed run of a process took.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub wall: Duration,
    /// Peak resident set size, in bytes.
    pub peak_rss: u64,
}

/// Run `cmd` to completion, timing it and reading its peak RSS from wait4.
pub fn measure(cmd: &mut Command) -> Result<Measured> {
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let (status, peak_rss) = wait_with_rusage(child)?;
    let wall = start.elapsed();
    if status != 0 {
        bail!("{cmd:?} failed with exit status {status}");
    }
    Ok(Measured { wall, peak_rss })
}

/// Reap `child` with wait4, which reports the peak RSS of the child and of
/// the descendants it reaped itself, not of those still running when it
/// exits or reaped elsewhere (PySpark's driver does not reap its JVM);
/// getrusage's RUSAGE_CHILDREN would give the maximum over every child.
#[allow(unsafe_code, reason = "wait4 has no safe std equivalent; the pointers are to locals")]
fn wait_with_rusage(child: std::process::Child) -> Result<(i32, u64)> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value of a plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid for writes for the call; `pid`
    // is our unreaped child (std does not reap it unless we call wait).
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if got != pid {
        bail!("wait4 on {pid} failed: {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    // ru_maxrss is in KiB on Linux.
    Ok((code, u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024))
}

fn median_of(mut v: Vec<Measured>) -> Measured {
    v.sort_by_key(|m| m.wall);
    let mid = v[v.len() / 2];
    Measured {
        wall: mid.wall,
        peak_rss: v.iter().map(|m| m.peak_rss).max().unwrap_or(0),
    }
}

/// One line of a bench's table: a side, its median time and peak RSS.
fn print_row(label: &str, m: Measured, note: &str) {
    println!(
        "  {label}{:>7.2} s   peak RSS {:>6.0} MiB{note}",
        m.wall.as_secs_f64(),
        mib(m.peak_rss)
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// The native baselines, built once into target/native-wc.
fn native_tools() -> Result<PathBuf> {
    let root = root();
    let manifest = root.join("../shared/bench/native-wc/Cargo.toml");
    if !manifest.exists() {
        bail!(
            "{} is missing: the native baselines live in ../shared/bench/native-wc",
            manifest.display()
        );
    }
    let target = root.join("target/native-wc");
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target))?;
    Ok(target.join("release"))
}

/// A Python venv with DuckDB in target/bench/venv; returns its python.
fn duckdb_python() -> Result<PathBuf> {
    let venv = root().join("target/bench/venv");
    let python = venv.join("bin/python");
    let has = Command::new(&python)
        .args(["-c", "import duckdb"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("installing DuckDB from PyPI into {}", venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "duckdb"]))?;
    }
    Ok(python)
}

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

/// `word<sep>count` lines into a map.
fn parse_counts(text: &str, sep: char, what: &str) -> Result<HashMap<String, u64>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.rsplit_once(sep)
                .and_then(|(w, c)| Some((w.to_string(), c.trim().parse().ok()?)))
                .with_context(|| format!("{what} printed {l:?}, not a word and a count"))
        })
        .collect()
}

/// A corpus where most words are distinct: letters spelling a 64-bit hash
/// of a counter, with one word in five from a small common set. About
/// `bytes` bytes in `files` files, written once.
pub fn distinct_corpus(dir: &Path, bytes: u64, files: usize) -> Result<()> {
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

/// Run a DuckDB script (its own venv's Python) that prints the seconds its
/// timed part took as its last line; returns that time with the process's
/// peak RSS, and the lines it printed before.
fn duckdb_timed(python: &Path, script: &str, args: &[&Path]) -> Result<(Measured, String)> {
    let mut cmd = Command::new(python);
    cmd.args(["-c", script]).args(args).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("starting DuckDB")?;
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().context("DuckDB's stdout")?, &mut stdout)?;
    let (status, peak_rss) = wait_with_rusage(child)?;
    if status != 0 {
        bail!("the DuckDB script failed with status {status}");
    }
    let trimmed = stdout.trim_end();
    let (before, last) = trimmed.rsplit_once('\n').unwrap_or(("", trimmed));
    let seconds: f64 = last
        .trim()
        .parse()
        .with_context(|| format!("DuckDB printed {stdout:?}"))?;
    let measured = Measured {
        wall: Duration::from_secs_f64(seconds),
        peak_rss,
    };
    Ok((measured, before.to_string()))
}

/// DuckDB's `ORDER BY` of the records (one line each) written to a text file.
const DUCKDB_SORT: &str = r#"
import sys, time, duckdb
src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect(config={"threads": 2})
con.execute("SET enable_progress_bar = false")
start = time.monotonic()
con.execute(f"""
COPY (SELECT line FROM read_csv('{src}', columns={{'line': 'VARCHAR'}}, header=false,
                                delim='\x01', quote='', escape='', auto_detect=false)
      ORDER BY line)
TO '{out}' (FORMAT csv, HEADER false, QUOTE '')""")
print(time.monotonic() - start)
"#;

/// `valsort`'s verdict on a file or directory: (records, sorted, checksum).
fn valsort(native: &Path, path: &Path) -> Result<String> {
    let out = Command::new(native.join("valsort"))
        .arg(path)
        .output()
        .context("running valsort")?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !text.contains("sorted=yes") {
        bail!("{} is not sorted: {text}", path.display());
    }
    Ok(text)
}

/// Whether the part files of `dir`, read in name order, equal `file` byte for byte.
fn parts_equal(dir: &Path, file: &Path) -> Result<bool> {
    use std::io::Read as _;
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    parts.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("part-")));
    parts.sort();
    let mut expected = std::io::BufReader::new(std::fs::File::open(file)?);
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for part in parts {
        let mut got = std::io::BufReader::new(std::fs::File::open(part)?);
        loop {
            let n = got.read(&mut a)?;
            if n == 0 {
                break;
            }
            expected.read_exact(&mut b[..n])?;
            if a[..n] != b[..n] {
                return Ok(false);
            }
        }
    }
    Ok(expected.read(&mut b)? == 0)
}

/// Sort 1 GiB (or `--size-mib`) of TeraSort records: wmr's `sort` example
/// against DuckDB's ORDER BY to a file and native-wc's parallel sort; every
/// output validated sorted with the input's checksum, and wmr's equal to
/// the native sort's byte for byte.
pub fn sort(args: &[String]) -> Result<()> {
    let size_mib = numeric_flag(args, "--size-mib", 1024)?;
    let root = root();
    let guests = rust_guests()?;
    let wmr = build_wmr()?;
    let native = native_tools()?;
    let python = duckdb_python()?;
    let dir = root.join(format!("target/bench/sort-{size_mib}mib"));
    let input = dir.join("records.txt");
    if !input.exists() {
        std::fs::create_dir_all(&dir)?;
        run(Command::new(native.join("gen_sort"))
            .args([
                "--records",
                &((size_mib << 20) / 100).to_string(),
                "--seed",
                "7",
                "--out",
            ])
            .arg(&input))?;
    }
    let input_check = Command::new(native.join("valsort")).arg(&input).output()?;
    let input_sum = String::from_utf8_lossy(&input_check.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("checksum="))
        .map(str::to_string)
        .context("valsort printed no checksum")?;
    let work = root.join("target/bench/sort");
    std::fs::create_dir_all(&work)?;
    let (wmr_out, native_out, duck_out) = (work.join("wmr"), work.join("native.txt"), work.join("duckdb.txt"));
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
                    "4",
                    "--format",
                    "text",
                ])
                .arg("--job")
                .arg(guests.join("sort.wasm"))
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(&wmr_out),
        )?);
        n.push(measure(
            Command::new(native.join("sort"))
                .args(["--threads", "2", "--out"])
                .arg(&native_out)
                .arg(&input)
                .stderr(std::process::Stdio::null()),
        )?);
        let _ = std::fs::remove_file(&duck_out);
        d.push(duckdb_timed(&python, DUCKDB_SORT, &[&input, &duck_out])?.0);
        eprintln!(
            "round {round}: wmr {:.2?} ({:.0} MiB), native {:.2?}, DuckDB {:.2?} ({:.0} MiB)",
            w[round].wall,
            mib(w[round].peak_rss),
            n[round].wall,
            d[round].wall,
            mib(d[round].peak_rss)
        );
    }
    for (name, path) in [("wmr", &wmr_out), ("native sort", &native_out), ("DuckDB", &duck_out)] {
        let verdict = valsort(&native, path)?;
        if !verdict.contains(&input_sum) {
            bail!("{name}'s output has other records than the input: {verdict} vs input {input_sum}");
        }
    }
    if !parts_equal(&wmr_out, &native_out)? {
        bail!("wmr's part files in order differ from the native sort's output");
    }
    let (w, n, d) = (median_of(w), median_of(n), median_of(d));
    println!(
        "sort, {size_mib} MiB of TeraSort records, median of {PEER_ROUNDS} rounds, every output sorted with the input's checksum, wmr's equal to the native sort's:"
    );
    print_row("wmr run, 2 slots, 4 reducers: ", w, "");
    print_row("native sort, 2 threads:       ", n, "");
    print_row("DuckDB ORDER BY to a file:    ", d, " (query time)");
    println!(
        "  wmr/DuckDB time: {:.2}x (target: at most 1.5x); wmr/native: {:.2}x",
        w.wall.as_secs_f64() / d.wall.as_secs_f64(),
        w.wall.as_secs_f64() / n.wall.as_secs_f64()
    );
    Ok(())
}

/// Make the group-by table with DuckDB: `rows` rows, `keys` string keys.
const DUCKDB_MAKE_GROUPBY: &str = r#"
import sys, duckdb
out, rows, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute(f"""
COPY (SELECT 'key-' || lpad(((hash(i) % {keys}))::VARCHAR, 6, '0') AS k, (i % 1000)::BIGINT - 300 AS v
      FROM range({rows}) t(i))
TO '{out}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)""")
"#;

/// DuckDB's group-by, written to Parquet; then (untimed) whether it equals
/// wmr's output, printed before the time.
const DUCKDB_GROUPBY: &str = r#"
import sys, time, duckdb
src, out, theirs = sys.argv[1], sys.argv[2], sys.argv[3]
con = duckdb.connect(config={"threads": 2})
con.execute("SET enable_progress_bar = false")
start = time.monotonic()
con.execute(f"COPY (SELECT k, sum(v)::DOUBLE AS sum, count(*)::UBIGINT AS count FROM '{src}' GROUP BY k) TO '{out}' (FORMAT parquet)")
took = time.monotonic() - start
diff = con.execute(f"""
SELECT count(*) FROM (
  (SELECT k, sum, count FROM '{out}' EXCEPT SELECT k, sum, count FROM '{theirs}/*.parquet')
  UNION ALL
  (SELECT k, sum, count FROM '{theirs}/*.parquet' EXCEPT SELECT k, sum, count FROM '{out}'))""").fetchone()[0]
rows = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0]
print(f"differing={diff} groups={rows}")
print(took)
"#;

/// Group-by over 20M Parquet rows with 100k string keys (sum and count):
/// wmr's `groupby` example against DuckDB, outputs compared row for row.
pub fn groupby(args: &[String]) -> Result<()> {
    let rows = numeric_flag(args, "--rows", 20_000_000)?;
    let keys = numeric_flag(args, "--keys", 100_000)?;
    let root = root();
    let guests = rust_guests()?;
    let wmr = build_wmr()?;
    let python = duckdb_python()?;
    let dir = root.join(format!("target/bench/groupby-{rows}-{keys}"));
    let input = dir.join("sales.parquet");
    if !input.exists() {
        std::fs::create_dir_all(&dir)?;
        run(Command::new(&python)
            .args(["-c", DUCKDB_MAKE_GROUPBY])
            .arg(&input)
            .args([rows.to_string(), keys.to_string()]))?;
    }
    let work = root.join("target/bench/groupby");
    std::fs::create_dir_all(&work)?;
    let (wmr_out, duck_out) = (work.join("wmr"), work.join("duckdb.parquet"));
    let (mut w, mut d) = (Vec::new(), Vec::new());
    let mut verdict = String::new();
    for round in 0..PEER_ROUNDS {
        w.push(measure(
            Command::new(&wmr)
                .args(["run", "--quiet", "--overwrite", "--slots", "2", "--reducers", "2"])
                .args(["--param", "key=k", "--param", "value=v", "--job"])
                .arg(guests.join("groupby.wasm"))
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(&wmr_out),
        )?);
        let _ = std::fs::remove_file(&duck_out);
        let (measured, printed) = duckdb_timed(&python, DUCKDB_GROUPBY, &[&input, &duck_out, &wmr_out])?;
        d.push(measured);
        verdict = printed;
        eprintln!(
            "round {round}: wmr {:.2?} ({:.0} MiB), DuckDB {:.2?} ({:.0} MiB); {verdict}",
            w[round].wall,
            mib(w[round].peak_rss),
            d[round].wall,
            mib(d[round].peak_rss)
        );
    }
    if !verdict.starts_with("differing=0 ") {
        bail!("wmr's and DuckDB's group-by outputs differ: {verdict}");
    }
    let (w, d) = (median_of(w), median_of(d));
    println!(
        "groupby, {rows} Parquet rows, {keys} string keys, sum and count, median of {PEER_ROUNDS} rounds, outputs equal ({verdict}):"
    );
    print_row("wmr run, 2 slots:   ", w, "");
    print_row("DuckDB, 2 threads:  ", d, " (query time)");
    println!(
        "  wmr/DuckDB time: {:.2}x (target: at most 1.5x)",
        w.wall.as_secs_f64() / d.wall.as_secs_f64()
    );
    Ok(())
}

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
