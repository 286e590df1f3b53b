//! Project tasks: `cargo xtask guests | demo | test | lint | image | bench ...`.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a developer tool that talks on the terminal"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod bench;

const USAGE: &str = "usage: cargo xtask <command>
  guests                          build every guest into target/guests/NAME.wasm
  demo                            build, generate a sample corpus, run wordcount embedded
  test                            build guests, then run every test (what CI runs)
  lint                            rustfmt --check and clippy -D warnings on every workspace (CI runs it too)
  image [--if-possible]           build the container image localhost/wmr:latest (deploy/Containerfile) with
                                  podman or buildah; --if-possible: skip with a line where neither can
  bench wordcount [--size-mib N] [--distinct]
                                  wmr (2 slots) against DuckDB and native Rust (2 threads), outputs
                                  checked equal; Zipf text, or --distinct for most words distinct
  bench scale [--max-gib N]       the high-cardinality word count at 1, 2, 4 .. N GiB (default 8)
  bench sort [--size-mib N]       TeraSort records (default 1 GiB): wmr against DuckDB ORDER BY and a native sort
  bench groupby [--rows N] [--keys K]
                                  Parquet group-by (default 20M rows, 100k keys) against DuckDB
  bench cluster [--size-mib N]    word count embedded, on 1 and 2 workers, with a worker killed; a tiny job
  bench python [--size-mib N]     the Python word count (2 slots) against PySpark (local[2]) and CPython,
                                  then the JavaScript one, and a Python job's per-task overhead
  bench coordinator [--workers N] [--tasks N]
                                  assignments+reports/s with simulated workers (default 1000, 100000)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("guests") => guests().map(|_| ()),
        Some("demo") => demo(),
        Some("test") => test(),
        Some("lint") => lint(),
        Some("bench") => bench::run_bench(&args[1..]),
        Some("image") => image(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Build every guest into target/guests/: the Rust ones with cargo, then
/// (with `wmr build`, so a release wmr is built first) the Python and
/// JavaScript ones.
fn guests() -> Result<PathBuf> {
    let out = rust_guests()?;
    let wmr = build_wmr()?;
    script_guests(&wmr)?;
    Ok(out)
}

/// Build the Rust guests (examples and test guests) into target/guests/.
fn rust_guests() -> Result<PathBuf> {
    let root = root();
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let has_target = installed
        .as_ref()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"));
    if !has_target {
        eprintln!("installing the wasm32-wasip2 target with rustup");
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    let build_dir = root.join("target/guest-build");
    let out = root.join("target/guests");
    std::fs::create_dir_all(&out)?;
    for workspace in ["guest-examples", "tests/guests"] {
        run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--quiet",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join(workspace).join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &build_dir))?;
    }
    let built = build_dir.join("wasm32-wasip2/release");
    for entry in std::fs::read_dir(&built)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(&path, out.join(path.file_name().expect("a file")))?;
        }
    }
    Ok(out)
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_in(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).unwrap_or(newest)
        };
        newest = newest.max(time);
    }
    newest
}

fn newest_in(dir: &Path) -> std::time::SystemTime {
    if dir
        .file_name()
        .is_some_and(|n| n == "__pycache__" || n == "node_modules")
    {
        return std::time::SystemTime::UNIX_EPOCH;
    }
    newest(dir)
}

/// Build the Python and JavaScript guests (examples and test guests) with
/// `wmr build` into target/guests/py-NAME.wasm and js-NAME.wasm, skipping
/// those newer than their sources and the SDK.
fn script_guests(wmr: &Path) -> Result<()> {
    let root = root();
    let tools = script_tools()?;
    let out = root.join("target/guests");
    std::fs::create_dir_all(&out)?;
    let path = std::env::join_paths(
        tools
            .iter()
            .cloned()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )?;
    for (lang, prefix) in [("python", "py"), ("js", "js")] {
        let sdk = newest(&root.join("sdk").join(lang)).max(newest(&root.join("sdk/wit")));
        for parent in [
            root.join("guest-examples").join(lang),
            root.join("tests/guests").join(lang),
        ] {
            for entry in std::fs::read_dir(&parent)? {
                let dir = entry?.path();
                let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                    continue;
                };
                let target = out.join(format!("{prefix}-{name}.wasm"));
                let built = std::fs::metadata(&target).and_then(|m| m.modified()).ok();
                if built.is_some_and(|b| b > sdk.max(newest(&dir))) {
                    continue;
                }
                eprintln!("building {} with wmr build", dir.display());
                run(Command::new(wmr)
                    .arg("build")
                    .arg(&dir)
                    .arg("--output")
                    .arg(&target)
                    .env("PATH", &path))?;
            }
        }
    }
    Ok(())
}

/// componentize-py (in the tests' venv) and componentize-js (in
/// target/tools/js), installed from PyPI and npm on first use; returns the
/// directories to put on PATH.
fn script_tools() -> Result<Vec<PathBuf>> {
    let python = python_tools()?;
    let js = root().join("target/tools/js");
    let bin = js.join("node_modules/.bin");
    if !bin.join("componentize-js").exists() {
        eprintln!(
            "installing componentize-js (builds JavaScript jobs) into {}",
            js.display()
        );
        std::fs::create_dir_all(&js)?;
        run(Command::new("npm").current_dir(&js).args([
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            ".",
            "@bytecodealliance/componentize-js@0.23.0",
        ]))?;
    }
    Ok(vec![python.join("bin"), bin])
}

fn build_wmr() -> Result<PathBuf> {
    let root = root();
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--quiet", "--release", "-p", "wmr"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join("release/wmr"))
}

/// Distinct words in the demo's corpus.
const DEMO_VOCABULARY: usize = 20_000;
/// Distinct words in the word-count bench's Zipf corpus.
const BENCH_VOCABULARY: usize = 200_000;

/// A deterministic English-like corpus of about `bytes` bytes, over a
/// Zipf-distributed vocabulary of `vocabulary` words.
fn generate_corpus(dir: &Path, bytes: u64, files: usize, vocabulary: usize) -> Result<()> {
    let syllables = [
        "ka", "lo", "mi", "ren", "sa", "tor", "vel", "in", "dra", "os", "qua", "pe", "li", "the", "an", "ro",
    ];
    // A Zipf-like vocabulary: word i is drawn with weight 1/(i+1).
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Word i spells i in base 16 with one syllable per digit (so every word is
    // distinct), with short words first: the most frequent words are the shortest.
    let vocab: Vec<String> = (0..vocabulary)
        .map(|i| {
            let mut w = String::new();
            let mut n = i;
            loop {
                w.push_str(syllables[n % syllables.len()]);
                n /= syllables.len();
                if n == 0 {
                    break;
                }
                n -= 1;
            }
            if i % 11 == 0 {
                w = w[..1].to_uppercase() + &w[1..];
            }
            w
        })
        .collect();
    let cumulative: Vec<f64> = vocab
        .iter()
        .enumerate()
        .scan(0.0, |acc, (i, _)| {
            *acc += 1.0 / (i as f64 + 1.0);
            Some(*acc)
        })
        .collect();
    let total = *cumulative.last().expect("non-empty vocabulary");
    std::fs::create_dir_all(dir)?;
    let per_file = bytes / files as u64;
    for f in 0..files {
        let mut text = String::with_capacity(per_file as usize + 256);
        while (text.len() as u64) < per_file {
            let words = 5 + next() % 12;
            for k in 0..words {
                let r = (next() % 1_000_000) as f64 / 1_000_000.0 * total;
                let i = cumulative.partition_point(|&c| c < r).min(vocab.len() - 1);
                if k > 0 {
                    text.push(if next() % 9 == 0 { ',' } else { ' ' });
                    if text.ends_with(',') {
                        text.push(' ');
                    }
                }
                text.push_str(&vocab[i]);
            }
            text.push_str(".\n");
        }
        std::fs::write(dir.join(format!("part-{f:03}.txt")), text)?;
    }
    Ok(())
}

/// `wmr run` word count over `input` into `out`, replacing it, with `extra` flags.
fn run_wordcount(wmr: &Path, guests: &Path, input: &Path, out: &Path, extra: &[&str]) -> Result<()> {
    run(Command::new(wmr)
        .arg("run")
        .arg("--job")
        .arg(guests.join("wordcount.wasm"))
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(out)
        .arg("--overwrite")
        .args(extra))
}

/// The word counts in wordcount output `out`, read back with `wmr cat`.
fn read_counts(wmr: &Path, out: &Path) -> Result<HashMap<String, u64>> {
    let cat = Command::new(wmr)
        .arg("cat")
        .arg(out)
        .output()
        .context("running wmr cat")?;
    if !cat.status.success() {
        bail!("wmr cat failed: {}", String::from_utf8_lossy(&cat.stderr));
    }
    String::from_utf8_lossy(&cat.stdout)
        .lines()
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(w, c)| Some((w.to_string(), c.parse().ok()?)))
                .with_context(|| format!("wmr cat printed {l:?}, not `word count`"))
        })
        .collect()
}

fn demo() -> Result<()> {
    let root = root();
    let guests = rust_guests()?;
    let wmr = build_wmr()?;
    let corpus = root.join("target/demo/corpus");
    if !corpus.exists() {
        eprintln!("generating a 32 MiB sample corpus in {}", corpus.display());
        generate_corpus(&corpus, 32 << 20, 8, DEMO_VOCABULARY)?;
    }
    let out = root.join("target/demo/wordcount");
    run_wordcount(
        &wmr,
        &guests,
        &corpus,
        &out,
        &["--reducers", "4", "--split-size", "8MiB"],
    )?;
    let mut counts: Vec<(String, u64)> = read_counts(&wmr, &out)?.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    println!("\ntop words:");
    for (w, c) in counts.iter().take(10) {
        println!("  {c:>9}  {w}");
    }
    println!(
        "\nParquet output: {} (read it with DuckDB: SELECT * FROM '{}/*.parquet')",
        out.display(),
        out.display()
    );
    Ok(())
}

/// The S3-compatible server the end-to-end tests start on loopback,
/// installed into target/tools on first use.
fn s3_server() -> Result<()> {
    let root = root();
    if root.join("target/tools/bin/s3s-fs").exists() {
        return Ok(());
    }
    eprintln!("installing s3s-fs (an S3-compatible server for the tests) into target/tools");
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "--quiet",
            "s3s-fs@0.14.1",
            "--locked",
            "--features",
            "binary",
            "--root",
        ])
        .arg(root.join("target/tools"))
        .env("CARGO_TARGET_DIR", root.join("target/tools/build")))
}

/// The tests' Python, a venv under target/tools: grpcio and its reflection
/// client (a standard gRPC client for the tests) and componentize-py
/// (builds Python jobs), from PyPI. Returns the venv.
fn python_tools() -> Result<PathBuf> {
    let venv = root().join("target/tools/python");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && venv.join("bin/componentize-py").exists()
        && venv.join("bin/kubernetes-validate").exists()
        && Command::new(&python)
            .args([
                "-c",
                "import grpc, grpc_reflection.v1alpha.reflection_pb2, prometheus_client, selenium",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(venv);
    }
    eprintln!(
        "installing grpcio, prometheus-client, selenium, kubernetes-validate (for the tests) and componentize-py \
         (for building Python jobs) into {}",
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "grpcio==1.76.0",
        "grpcio-reflection==1.76.0",
        "componentize-py==0.25.1",
        "prometheus-client==0.26.0",
        // 4.40 is the newest whose dependencies the package mirror has.
        "selenium==4.40.0",
        "kubernetes-validate==1.37.0",
    ]))?;
    Ok(venv)
}

/// Debian's Chromium and ChromeDriver, for the status page's browser test.
fn browser() -> Result<()> {
    if Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists() {
        return Ok(());
    }
    eprintln!("installing Debian's chromium and chromium-driver (for the status page's browser test)");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "chromium",
                "chromium-driver",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        // A fresh machine may have no package lists yet.
        run(Command::new("apt-get").args(["update", "-q"]))?;
        if !install() {
            bail!("apt-get could not install chromium and chromium-driver; install them (as root) and run again");
        }
    }
    Ok(())
}

/// Check the Kubernetes manifests against the API's schemas (strictly:
/// an unknown field fails), and check that the check fails on one.
fn validate_manifests(python_bin: &Path) -> Result<()> {
    let root = root();
    let dir = root.join("deploy/kubernetes");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    manifests.retain(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"));
    manifests.sort();
    let validate = python_bin.join("kubernetes-validate");
    run(Command::new(&validate).args(["--strict", "--quiet"]).args(&manifests))?;
    let broken = root.join("target/tools/broken-manifest.yaml");
    let coordinator = std::fs::read_to_string(dir.join("coordinator.yaml"))?;
    std::fs::write(&broken, coordinator.replacen("containerPort:", "containerPrt:", 1))?;
    let refused = Command::new(&validate)
        .args(["--strict", "--quiet"])
        .arg(&broken)
        .output()?;
    if refused.status.success() {
        bail!("kubernetes-validate passed a manifest with a misspelled field: the schema check checks nothing");
    }
    eprintln!("the Kubernetes manifests in {} pass the schema check", dir.display());
    Ok(())
}

/// `cargo xtask image`: build the container image with podman or buildah.
/// With `--if-possible`, a machine with neither (or that cannot build, for
/// want of its base images) says so in one line and succeeds.
fn image(args: &[String]) -> Result<()> {
    let optional = args.iter().any(|a| a == "--if-possible");
    let root = root();
    let tool = ["podman", "buildah"].into_iter().find(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(tool) = tool else {
        if optional {
            eprintln!("cargo xtask image: skipped: neither podman nor buildah is installed (apt-get install podman)");
            return Ok(());
        }
        bail!("neither podman nor buildah is installed; install one (apt-get install podman) to build the image");
    };
    let mut build = Command::new(tool);
    if tool == "buildah" {
        build.arg("bud");
    } else {
        build.arg("build");
    }
    build
        .args(["--file", "deploy/Containerfile", "--tag", "localhost/wmr:latest", "."])
        .current_dir(&root);
    eprintln!("building the image localhost/wmr:latest with {tool}");
    let status = build.status()?;
    if !status.success() {
        if optional {
            eprintln!(
                "cargo xtask image: skipped: {tool} could not build the image ({status}; it needs the base images \
                 docker.io/library/rust and debian, or a registry that has them)"
            );
            return Ok(());
        }
        bail!("{tool} failed to build the image ({status})");
    }
    Ok(())
}

fn test() -> Result<()> {
    rust_guests()?;
    s3_server()?;
    let tools = script_tools()?;
    let root = root();
    let cargo = || Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The SDK is its own workspace (guests depend on it, the host does not);
    // its tests run natively, in the guests' target directory.
    run(cargo()
        .args(["test", "--quiet", "--manifest-path"])
        .arg(root.join("sdk/Cargo.toml"))
        .env("CARGO_TARGET_DIR", root.join("target/guest-build")))?;
    python_sdk_tests(&tools[0])?;
    // The JavaScript SDK's unit tests, under Node (which componentize-js
    // needs anyway).
    // The file, not its directory: Node 21 and later take the argument as a
    // glob, which a directory does not match.
    run(Command::new("node")
        .arg("--test")
        .arg(root.join("sdk/js/tests/sdk.test.mjs")))?;
    validate_manifests(&tools[0])?;
    image(&["--if-possible".to_string()])?;
    browser()?;
    // The Python and JavaScript guests are built by the very wmr the tests
    // run (so its features match theirs and nothing builds twice).
    run(cargo()
        .current_dir(&root)
        .args(["test", "--quiet", "--release", "--workspace", "--no-run"]))?;
    script_guests(&root.join("target/release/wmr"))?;
    // One compile cache for every wmr the tests start, apart from the user's.
    run(cargo()
        .current_dir(&root)
        .args(["test", "--release", "--workspace"])
        .env("WMR_COMPILE_CACHE", root.join("target/compile-cache")))
}

/// The Python SDK's unit tests, under CPython with the WIT world's
/// generated bindings (the host's functions are stubbed by the tests).
fn python_sdk_tests(python_bin: &Path) -> Result<()> {
    let root = root();
    let bindings = root.join("target/tools/python-bindings");
    let _ = std::fs::remove_dir_all(&bindings);
    run(Command::new(python_bin.join("componentize-py"))
        .args(["--quiet", "-d"])
        .arg(root.join("sdk/wit"))
        .args(["-w", "job", "bindings"])
        .arg(&bindings))?;
    let path = std::env::join_paths([root.join("sdk/python"), bindings])?;
    run(Command::new(python_bin.join("python"))
        .args(["-B", "-m", "unittest", "discover", "--quiet", "-s"])
        .arg(root.join("sdk/python/tests"))
        .env("PYTHONPATH", path))
}

/// Formatting and clippy, warnings denied, over the host workspace, the SDK
/// and both guest workspaces.
fn lint() -> Result<()> {
    let root = root();
    let cargo = || Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    run(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
    for workspace in ["sdk", "guest-examples", "tests/guests"] {
        run(cargo()
            .args(["fmt", "--all", "--check", "--manifest-path"])
            .arg(root.join(workspace).join("Cargo.toml")))?;
    }
    run(cargo().current_dir(&root).args([
        "clippy",
        "--quiet",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let guest_build = root.join("target/guest-build");
    run(cargo()
        .args(["clippy", "--quiet", "--all-targets", "--manifest-path"])
        .arg(root.join("sdk/Cargo.toml"))
        .args(["--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", &guest_build))?;
    for workspace in ["guest-examples", "tests/guests"] {
        run(cargo()
            .args([
                "clippy",
                "--quiet",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join(workspace).join("Cargo.toml"))
            .args(["--", "-D", "warnings"])
            .env("CARGO_TARGET_DIR", &guest_build))?;
    }
    Ok(())
}

/// The value of numeric flag `name` in `args`, or `default`.
fn numeric_flag(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a number"))?
            .parse()
            .with_context(|| format!("{name} needs a number")),
        None => Ok(default),
    }
}
