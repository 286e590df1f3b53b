//! `cargo xtask bench NAME`: the dispatch, and what the benches share to
//! measure their sides. Most benches compare wmr with peers measured in the
//! same run: DuckDB (installed from PyPI into its own venv under
//! target/bench) and the hand-tuned native baselines in
//! ../shared/bench/native-wc, every side's output checked equal before a
//! figure is printed; figures are medians, with each side's peak RSS (from
//! wait4). `scale`, `cluster` and `coordinator` measure wmr against itself.

mod cluster;
mod groupby;
mod python;
mod sort;
mod wordcount;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{USAGE, numeric_flag, root, run};

/// Timed rounds per side in the peer benches.
const PEER_ROUNDS: usize = 3;

/// What one timed run of a process took.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub wall: Duration,
    /// Peak resident set size, in bytes.
    pub peak_rss: u64,
    /// User and system CPU time of the process and the descendants it
    /// reaped, where the whole process was timed (not for a side timed by
    /// its own clock, as DuckDB's query is). Steadier than wall time on a
    /// shared machine: another process's load delays a side more than it
    /// adds to its CPU.
    pub cpu: Option<Duration>,
}

/// What wait4 says of a reaped child.
struct Reaped {
    /// Its exit code (128 + the signal, when killed).
    code: i32,
    peak_rss: u64,
    cpu: Duration,
}

/// Run `cmd` to completion, timing it and reading its peak RSS from wait4.
pub fn measure(cmd: &mut Command) -> Result<Measured> {
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let reaped = wait_with_rusage(child)?;
    let wall = start.elapsed();
    if reaped.code != 0 {
        bail!("{cmd:?} failed with exit status {}", reaped.code);
    }
    Ok(Measured {
        wall,
        peak_rss: reaped.peak_rss,
        cpu: Some(reaped.cpu),
    })
}

/// Reap `child` with wait4, which reports the peak RSS of the child and of
/// the descendants it reaped itself, not of those still running when it
/// exits or reaped elsewhere (PySpark's driver does not reap its JVM);
/// getrusage's RUSAGE_CHILDREN would give the maximum over every child.
#[allow(unsafe_code, reason = "wait4 has no safe std equivalent; the pointers are to locals")]
fn wait_with_rusage(child: std::process::Child) -> Result<Reaped> {
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
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(Reaped {
        code,
        // ru_maxrss is in KiB on Linux.
        peak_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
    })
}

/// The median wall time and median CPU time (each of its own round), and
/// the highest peak RSS, of `v`'s rounds.
fn median_of(mut v: Vec<Measured>) -> Measured {
    v.sort_by_key(|m| m.wall);
    let mid = v[v.len() / 2];
    let mut cpu: Vec<Duration> = v.iter().filter_map(|m| m.cpu).collect();
    cpu.sort();
    Measured {
        wall: mid.wall,
        peak_rss: v.iter().map(|m| m.peak_rss).max().unwrap_or(0),
        cpu: cpu.get(cpu.len() / 2).copied(),
    }
}

/// One line of a bench's table: a side, its median time, CPU time (where
/// measured) and peak RSS.
fn print_row(label: &str, m: Measured, note: &str) {
    let cpu = m
        .cpu
        .map_or_else(|| " ".repeat(15), |c| format!("   CPU {:>6.2} s", c.as_secs_f64()));
    println!(
        "  {label}{:>7.2} s{cpu}   peak RSS {:>6.0} MiB{note}",
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

/// Run a DuckDB script (its own venv's Python) that prints the seconds its
/// timed part took as its last line; returns that time with the process's
/// peak RSS, and the lines it printed before.
fn duckdb_timed(python: &Path, script: &str, args: &[&Path]) -> Result<(Measured, String)> {
    let mut cmd = Command::new(python);
    cmd.args(["-c", script]).args(args).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("starting DuckDB")?;
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().context("DuckDB's stdout")?, &mut stdout)?;
    let reaped = wait_with_rusage(child)?;
    if reaped.code != 0 {
        bail!("the DuckDB script failed with status {}", reaped.code);
    }
    let trimmed = stdout.trim_end();
    let (before, last) = trimmed.rsplit_once('\n').unwrap_or(("", trimmed));
    let seconds: f64 = last
        .trim()
        .parse()
        .with_context(|| format!("DuckDB printed {stdout:?}"))?;
    let measured = Measured {
        wall: Duration::from_secs_f64(seconds),
        peak_rss: reaped.peak_rss,
        cpu: None,
    };
    Ok((measured, before.to_string()))
}

/// `cargo xtask bench NAME ...`.
pub fn run_bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("wordcount") => wordcount::wordcount(args),
        Some("scale") => wordcount::scale(args),
        Some("sort") => sort::sort(args),
        Some("groupby") => groupby::groupby(args),
        Some("cluster") => cluster::bench_cluster(args),
        Some("python") => python::python(args),
        Some("coordinator") => {
            let (workers, tasks) = (
                numeric_flag(args, "--workers", 1000)?,
                numeric_flag(args, "--tasks", 100_000)?,
            );
            run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(root())
                .args([
                    "run",
                    "--quiet",
                    "--release",
                    "-p",
                    "wmr",
                    "--example",
                    "coordinator_load",
                    "--",
                ])
                .args(["--workers", &workers.to_string(), "--tasks", &tasks.to_string()]))
        }
        _ => bail!("{USAGE}"),
    }
}
