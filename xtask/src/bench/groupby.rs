//! `bench groupby`: a Parquet group-by (sum and count by string key)
//! against DuckDB.

use std::process::Command;

use anyhow::{Result, bail};

use super::{PEER_ROUNDS, duckdb_python, duckdb_timed, measure, median_of, mib, print_row};
use crate::{build_wmr, numeric_flag, root, run, rust_guests};

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
