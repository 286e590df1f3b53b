//! Shared helpers: a fresh directory per test, guest paths, and a command
//! wrapper whose failures print everything needed to debug them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        TestDir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        p
    }
}

pub fn guest(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: build the guests first with `cargo xtask guests`",
        p.display()
    );
    p
}

pub fn gutenberg() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/gutenberg");
    format!(
        "{}/*.txt",
        dir.canonicalize()
            .expect("../shared/data/gutenberg beside the repo")
            .display()
    )
}

/// Run `wmr` with `args`; returns the output whatever the exit status.
pub fn wmr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wmr"))
        .args(args)
        .output()
        .expect("running wmr")
}

/// `wmr run` of `module` over a one-line text into `OUT` (overwritten),
/// with `flags`: (exit code, stderr).
pub fn run_module(t: &TestDir, module: &Path, flags: &[&str]) -> (Option<i32>, String) {
    let input = t.write("in/a.txt", "a b c\n");
    let out = t.path("out");
    let mut args = vec![
        "run",
        "--job",
        module.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--overwrite",
        "--quiet",
    ];
    args.extend_from_slice(flags);
    let o = wmr(&args);
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Run `wmr` and insist it succeeded.
pub fn wmr_ok(args: &[&str]) -> Output {
    let out = wmr(args);
    assert!(
        out.status.success(),
        "wmr {args:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// All output lines of a text-format job, sorted (byte order).
pub fn text_output(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(
        names.contains(&"_SUCCESS".to_string()),
        "no _SUCCESS in {}: {names:?}",
        dir.display()
    );
    let visible: Vec<_> = names
        .iter()
        .filter(|n| !n.starts_with('_') && !n.starts_with('.'))
        .collect();
    let mut lines = vec![];
    for n in visible {
        lines.extend(
            std::fs::read_to_string(dir.join(n))
                .unwrap()
                .lines()
                .map(str::to_string),
        );
    }
    lines.sort();
    lines
}

/// The reference word count: maximal runs of letters, case kept.
pub fn reference_wordcount(texts: &[String]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for t in texts {
        for w in t.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()) {
            *m.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    m
}

pub fn as_lines(m: &BTreeMap<String, u64>) -> Vec<String> {
    let mut v: Vec<String> = m.iter().map(|(w, c)| format!("{w} {c}")).collect();
    v.sort();
    v
}

/// A deterministic text corpus of `lines` lines.
pub fn corpus(lines: usize, seed: u64) -> String {
    let words = [
        "alpha",
        "Beta",
        "gamma",
        "déjà",
        "vu",
        "x",
        "ÑANDÚ",
        "omega",
        "the",
        "a",
        "mapreduce",
    ];
    let mut s = seed | 1;
    let mut out = String::new();
    for _ in 0..lines {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let n = (s % 9) as usize;
        for k in 0..n {
            if k > 0 {
                out.push_str(if s >> (k + 3) & 1 == 1 { " " } else { ", " });
            }
            out.push_str(words[((s >> (k * 4)) % words.len() as u64) as usize]);
        }
        out.push('\n');
    }
    out
}

/// The indexer's expected lines over the Gutenberg books: `word N a.txt,b.txt`.
pub fn reference_index_of_gutenberg() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/gutenberg");
    let mut index: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|e| e != "txt") {
            continue;
        }
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        for w in std::fs::read_to_string(&p)
            .unwrap()
            .split(|c: char| !c.is_alphabetic())
            .filter(|w| !w.is_empty())
        {
            index.entry(w.to_string()).or_default().insert(name.clone());
        }
    }
    let mut expected: Vec<String> = index
        .iter()
        .map(|(w, files)| {
            format!(
                "{w} {} {}",
                files.len(),
                files.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    expected.sort();
    expected
}

/// The Gutenberg books' texts, sorted by file name.
pub fn gutenberg_texts() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/gutenberg");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
}

/// An S3-compatible server (s3s-fs) on loopback, serving `root`; killed on drop.
pub struct S3Server {
    child: Child,
    pub env: Vec<(String, String)>,
}

impl S3Server {
    pub fn start(root: &Path) -> Self {
        let binary = std::env::var("WMR_S3S_FS")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/s3s-fs"));
        assert!(
            binary.exists(),
            "{} is missing: `cargo xtask test` installs it (cargo install s3s-fs@0.14.1 --locked --features binary)",
            binary.display()
        );
        // A free port: bind one, let it go, hand it to the server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "wmr-test", "--secret-key", "wmr-test-secret"])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start listening on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let env = [
            ("AWS_ACCESS_KEY_ID", "wmr-test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "wmr-test-secret".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        S3Server { child, env }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write `batch` as the Parquet file `rel` in `t`, `rows_per_group` rows to
/// a row group.
pub fn write_parquet(t: &TestDir, rel: &str, batch: &arrow::array::RecordBatch, rows_per_group: usize) -> PathBuf {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    t.write(rel, &buf)
}

/// The `groupby` example's Parquet output in `dir`: key → (sum, count),
/// insisting that no key appears twice and the columns are `KEY`, `sum`,
/// `count`.
pub fn groupby_output(dir: &Path, key: &str) -> BTreeMap<String, (f64, u64)> {
    use arrow::array::{Array, Float64Array, StringArray, UInt64Array};
    let mut got = BTreeMap::new();
    for f in std::fs::read_dir(dir).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let bytes = bytes::Bytes::from(std::fs::read(&p).unwrap());
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            assert_eq!(b.schema().field(0).name(), key);
            assert_eq!(b.schema().field(1).name(), "sum");
            let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let s = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
            let c = b.column(2).as_any().downcast_ref::<UInt64Array>().unwrap();
            for i in 0..b.num_rows() {
                let twice = got.insert(k.value(i).to_string(), (s.value(i), c.value(i)));
                assert!(twice.is_none(), "key {} twice in {}", k.value(i), dir.display());
            }
        }
    }
    got
}

/// The tests' Python: the venv `cargo xtask test` makes under target/tools,
/// with grpcio, prometheus-client and selenium (or `WMR_TEST_PYTHON`).
pub fn test_python() -> PathBuf {
    let python = std::env::var("WMR_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/python/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: `cargo xtask test` installs it, with grpcio, prometheus-client and selenium",
        python.display()
    );
    python
}
