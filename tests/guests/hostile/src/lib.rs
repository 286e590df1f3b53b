//! A guest that misbehaves on purpose, chosen by `--param mode=...`:
//!
//! - `loop-configure`, `loop-map`, `loop-reduce`: never return from
//!   configure, map, or reduce;
//! - `counter-flood`: per input line, bump 1,000 counters with 150-byte
//!   names, one with a 1 KiB name, and one named like the engine's own;
//! - `grow`: allocate without end in map;
//! - `recurse`: recurse until the stack overflows;
//! - `output`: emit 100 rows of 64 hex digits per input line;
//! - `log-flood`: print 300 lines to stdout, stderr and the log per input line;
//! - `escape`: try to read a host file, open a socket, and read the
//!   environment and arguments, and read the clock and random numbers;
//!   emits one `(what, 1 if it worked)` row for each;
//! - `slow`: spend 300 ms (busy) on each input line, then count it: a
//!   well-behaved job whose attempts last long enough to be caught running.

use std::hint::black_box;

use wmr_sdk::{Emit, Job, Output, Params, Record, Values};

struct Hostile {
    mode: String,
}

impl Hostile {
    fn from_params(params: &Params) -> Result<Self, String> {
        let mode = params.require("mode")?.to_string();
        if mode == "loop-configure" {
            loop {
                black_box(&mode);
            }
        }
        Ok(Hostile { mode })
    }
}

#[inline(never)]
#[expect(unconditional_recursion, reason = "overflowing the stack is the point")]
fn recurse(depth: u64) -> u64 {
    // The array keeps every frame big; black_box keeps it from being optimized away.
    let frame = black_box([depth; 64]);
    recurse(depth + 1) + frame[(depth % 64) as usize]
}

fn escape_attempts() -> Vec<(&'static str, u64)> {
    let file = std::fs::read("/etc/passwd").is_ok() || std::fs::read_dir("/").is_ok();
    let socket = std::net::TcpStream::connect("127.0.0.1:22").is_ok();
    let env = std::env::vars().next().is_some();
    // The program name is the only argument a WASI program might see.
    let args = std::env::args().count() > 1;
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .is_ok_and(|d| d.as_secs() > 1_600_000_000);
    // std's hash maps seed from WASI's random source: two seeds differ
    // only if it gives real randomness.
    let random = {
        use std::hash::BuildHasher;
        let a = std::collections::hash_map::RandomState::new().hash_one(1u8);
        let b = std::collections::hash_map::RandomState::new().hash_one(1u8);
        let c = std::collections::hash_map::RandomState::new().hash_one(1u8);
        a != b || b != c
    };
    vec![
        ("file", u64::from(file)),
        ("socket", u64::from(socket)),
        ("env", u64::from(env)),
        ("args", u64::from(args)),
        ("clock", u64::from(clock)),
        ("random", u64::from(random)),
    ]
}

impl Job for Hostile {
    type Key = String;
    type Value = u64;
    type Output = (String, u64);

    fn map(&self, record: &Record, out: &mut Emit<String, u64>) {
        match self.mode.as_str() {
            "loop-map" => loop {
                black_box(record.line());
            },
            "slow" => {
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(300) {
                    black_box(record.line());
                }
                out.emit("lines", 1);
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "recurse" => {
                out.emit("depth", recurse(0));
            }
            "output" => {
                // 100 rows of 64 hex digits per line, varied so they don't compress away.
                let mut state = record.offset() as u64 ^ 0x9E37_79B9_7F4A_7C15;
                for _ in 0..100 {
                    let key: String = (0..4)
                        .map(|_| {
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            format!("{state:016x}")
                        })
                        .collect();
                    out.emit(key, 1);
                }
            }
            "counter-flood" => {
                let padding = "x".repeat(140);
                for i in 0..1000 {
                    wmr_sdk::count(&format!("flood.{i:04}.{padding}"), 1);
                }
                wmr_sdk::count(&"y".repeat(1024), 1);
                wmr_sdk::count("wmr.map.input.records", 1_000_000);
                out.emit("lines", 1);
            }
            "log-flood" => {
                for i in 0..100 {
                    println!("line {i} of a flood on stdout, from {}", record.offset());
                    eprintln!("and on stderr");
                    wmr_sdk::log(wmr_sdk::LogLevel::Info, "and through the host's log");
                }
                out.emit("lines", 1);
            }
            "escape" => {
                if record.offset() == 0 {
                    for (what, worked) in escape_attempts() {
                        out.emit(what, worked);
                    }
                }
            }
            _ => out.emit(record.line(), 1),
        }
    }

    fn reduce(&self, key: String, values: Values<u64>, out: &mut Output<(String, u64)>) {
        if self.mode == "loop-reduce" {
            loop {
                black_box(&key);
            }
        }
        out.push((key, values.sum()));
    }
}

wmr_sdk::export_job!(Hostile, Hostile::from_params);
