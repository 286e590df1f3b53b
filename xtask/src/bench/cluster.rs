//! `bench cluster`: word count on a cluster of real processes against the
//! same job embedded, with 1 and 2 workers, a tiny job, and a worker killed
//! mid-run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{BENCH_VOCABULARY, build_wmr, generate_corpus, numeric_flag, root, run, rust_guests};

/// Timed rounds per side; the median is reported (the machine is shared and noisy).
const ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A coordinator and `workers` workers of one slot each, killed on drop.
struct BenchCluster {
    processes: Vec<std::process::Child>,
    addr: String,
}

impl BenchCluster {
    fn start(wmr: &Path, store: &Path, workers: usize) -> Result<Self> {
        use std::io::BufRead as _;
        let _ = std::fs::remove_dir_all(store);
        let mut coordinator = Command::new(wmr)
            .args(["coordinator", "--listen", "127.0.0.1:0", "--store"])
            .arg(store)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting wmr coordinator")?;
        let mut line = String::new();
        std::io::BufReader::new(coordinator.stdout.take().context("coordinator stdout")?).read_line(&mut line)?;
        let addr = line
            .split_whitespace()
            .nth(4)
            .with_context(|| format!("coordinator printed {line:?}"))?
            .trim_end_matches(',')
            .to_string();
        let mut cluster = BenchCluster {
            processes: vec![coordinator],
            addr,
        };
        for _ in 0..workers {
            cluster.add_worker(wmr)?;
        }
        Ok(cluster)
    }

    fn add_worker(&mut self, wmr: &Path) -> Result<()> {
        self.processes.push(
            Command::new(wmr)
                .args(["worker", "--slots", "1", "--coordinator", &self.addr])
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("starting wmr worker")?,
        );
        Ok(())
    }

    /// SIGKILL the oldest worker and start a new one at once.
    fn replace_a_worker(&mut self, wmr: &Path) -> Result<()> {
        let mut victim = self.processes.remove(1);
        let killed = victim.kill();
        victim.wait()?;
        killed?;
        self.add_worker(wmr)
    }

    /// `wmr submit --wait` of a job with `args`, to run.
    fn submit(&self, wmr: &Path, args: &[std::ffi::OsString]) -> Command {
        let mut cmd = Command::new(wmr);
        cmd.args(["submit", "--wait", "--coordinator", &self.addr]).args(args);
        cmd
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Word count on a cluster against the same job embedded, with 1 and 2
/// workers (1 slot each), a tiny job end to end, and a third of 3 workers
/// SIGKILLed mid-run; each timed through `wmr submit --wait`.
pub fn bench_cluster(args: &[String]) -> Result<()> {
    let size_mib = numeric_flag(args, "--size-mib", 256)?;
    let guests = rust_guests()?;
    let wmr = build_wmr()?;
    let root = root();
    // Eighty files of about book size, packed several to a map task.
    let corpus = root.join(format!("target/bench/books-{size_mib}mib"));
    if !corpus.exists() {
        eprintln!("generating a {size_mib} MiB corpus of 80 files in {}", corpus.display());
        generate_corpus(&corpus, size_mib << 20, 80, BENCH_VOCABULARY)?;
    }
    let tiny = root.join("../shared/data/gutenberg");
    let job = guests.join("wordcount.wasm");
    let out = root.join("target/bench/cluster-out");
    let job_args = |input: &Path| -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["--job".into(), job.clone().into(), "--input".into()];
        a.push(input.into());
        a.extend(["--output".into(), out.clone().into()]);
        a.extend(["--overwrite", "--reducers", "2", "--split-size", "32MiB"].map(Into::into));
        a
    };
    let embedded = |input: &Path, label: &str| -> Result<Duration> {
        let mut times = Vec::new();
        for round in 0..ROUNDS {
            let t = Instant::now();
            run(Command::new(&wmr)
                .args(["run", "--quiet", "--slots", "1"])
                .args(job_args(input))
                .stdout(std::process::Stdio::null()))?;
            times.push(t.elapsed());
            eprintln!("embedded {label}, round {round}: {:.2?}", times[round]);
        }
        Ok(median(times))
    };
    let submitted = |cluster: &BenchCluster, input: &Path, label: &str| -> Result<Duration> {
        let mut times = Vec::new();
        for round in 0..ROUNDS {
            let t = Instant::now();
            run(cluster
                .submit(&wmr, &job_args(input))
                .stdout(std::process::Stdio::null()))?;
            times.push(t.elapsed());
            eprintln!("{label}, round {round}: {:.2?}", times[round]);
        }
        Ok(median(times))
    };
    let run1 = embedded(&corpus, "1 slot")?.as_secs_f64();
    let one = {
        let cluster = BenchCluster::start(&wmr, &root.join("target/bench/store"), 1)?;
        submitted(&cluster, &corpus, "1 worker")?.as_secs_f64()
    };
    let (two, tiny_cluster) = {
        let cluster = BenchCluster::start(&wmr, &root.join("target/bench/store"), 2)?;
        let two = submitted(&cluster, &corpus, "2 workers")?.as_secs_f64();
        (two, submitted(&cluster, &tiny, "tiny job, 2 workers")?.as_secs_f64())
    };
    let tiny_embedded = embedded(&tiny, "tiny job")?.as_secs_f64();
    // A third of the workers dies mid-run; a new one starts at once.
    let (clean, killed) = {
        let mut cluster = BenchCluster::start(&wmr, &root.join("target/bench/store"), 3)?;
        let clean = submitted(&cluster, &corpus, "3 workers")?;
        let mut times = Vec::new();
        for round in 0..ROUNDS {
            let t = Instant::now();
            let mut submit = cluster
                .submit(&wmr, &job_args(&corpus))
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("starting wmr submit")?;
            std::thread::sleep(clean / 3);
            cluster.replace_a_worker(&wmr)?;
            let status = submit.wait()?;
            anyhow::ensure!(status.success(), "the job with a killed worker failed");
            times.push(t.elapsed());
            eprintln!("3 workers, one SIGKILLed, round {round}: {:.2?}", times[round]);
        }
        (clean.as_secs_f64(), median(times).as_secs_f64())
    };
    println!("wordcount over {size_mib} MiB in 80 files, median of {ROUNDS} rounds:");
    println!("  embedded (wmr run --slots 1):      {run1:.2} s");
    println!(
        "  1 worker  (1 slot):                {one:.2} s   {:.2}x embedded (target: at most 1.15x)",
        one / run1
    );
    println!(
        "  2 workers (1 slot each):           {two:.2} s   speedup {:.2}x (target: at least 1.85x)",
        one / two
    );
    println!(
        "  3 workers, one SIGKILLed at 1/3:   {killed:.2} s   {:.2}x the clean {clean:.2} s (target: at most 1.3x)",
        killed / clean
    );
    println!(
        "  tiny job (3 MiB), submit --wait:   {tiny_cluster:.2} s   (embedded {tiny_embedded:.2} s; target: under 0.3 s)"
    );
    Ok(())
}
