//! `bench sort`: TeraSort records through a total-order wmr job, against
//! the native sort and DuckDB's `ORDER BY`, every output validated.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{PEER_ROUNDS, duckdb_python, duckdb_timed, measure, median_of, mib, native_tools, print_row};
use crate::{build_wmr, numeric_flag, root, run, rust_guests};

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
