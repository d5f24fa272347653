//! All-in memory per live entry of a dedup-only `Store<()>`, beside dashmap 6's
//! `DashMap<u128, u64>` (foldhash), at N live keys.
//!
//! ```text
//! cargo run --release --example memory                        # 10 million keys
//! cargo run --release --example memory -- --keys 100000000    # 100 million (~5 GB, minutes)
//! cargo run --release --example memory -- --keys 1000000 --json
//! ```
//!
//! Each structure is measured in a child process of its own (this binary, re-run with
//! `--peer idemstore` or `--peer dashmap`), so neither inherits the other's freed pages or
//! allocator state. A child reads its resident set (`VmRSS` in `/proc/self/status`), fills the
//! structure with N distinct random-looking 128-bit keys from `--threads` threads (2 by default;
//! a claim + complete per key for idemstore, `entry(k).or_insert(v)` for dashmap), reads it again
//! and reports:
//! - `elapsed`, `inserts/s`: wall time of the fill; `CPU ns/insert`: CPU time (user + system,
//!   all threads) per key, steadier than wall time when other work shares the cores;
//! - `RSS Δ B/entry`: (RSS after − RSS before) / N, the all-in cost: tables at their load factor
//!   at that moment, wheel records, allocator overhead;
//! - `peak Δ B/entry`: (`VmHWM` − RSS before) / N, the high-water mark while growing (a table
//!   rebuild holds the old and the new table at once);
//! - `accounted B/entry`: what the structure says it holds: `Store::stats().memory_bytes` for
//!   idemstore; for dashmap an estimate from its capacity (hashbrown keeps 8 buckets per 7 of
//!   capacity, each a 32-byte `(u128, u64)` plus a control byte).
//!
//! Where the load factor sits at N decides much of the answer (idemstore tables run between 0.65
//! and 0.9 and grow ~1.4x per rebuild; hashbrown runs between 0.44 and 0.875 and doubles), so
//! compare at a few sizes, not one.

use std::process::Command;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use idemstore::{Claim, Store};

#[path = "common/keys.rs"]
mod keys;
#[path = "common/measure.rs"]
mod measure;
use keys::key;

/// CPU time of this process; this example measures on Linux only.
fn cpu_time() -> Duration {
    measure::cpu_time().expect("a process CPU clock (this example measures on Linux only)")
}

/// A field of `/proc/self/status` in bytes; this example measures memory on Linux only.
fn proc_status_bytes(field: &str) -> u64 {
    measure::proc_status_bytes(field)
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status (Linux only)"))
}

fn group_digits(n: usize) -> String {
    measure::group_digits(n as u64)
}

const DEFAULT_KEYS: usize = 10_000_000;
const DEFAULT_THREADS: usize = 2;
const STRUCTURES: [&str; 2] = ["idemstore", "dashmap"];

/// The options of one run.
#[derive(Debug, Clone)]
struct Args {
    keys: usize,
    threads: usize,
    json: bool,
    peer: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        keys: DEFAULT_KEYS,
        threads: DEFAULT_THREADS,
        json: false,
        peer: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--keys" => args.keys = parse_count(&value("--keys")?)?,
            "--threads" => args.threads = parse_count(&value("--threads")?)?,
            "--json" => args.json = true,
            "--peer" => {
                let p = value("--peer")?;
                if !STRUCTURES.contains(&p.as_str()) {
                    return Err(format!("--peer must be one of {STRUCTURES:?}, not {p:?}"));
                }
                args.peer = Some(p);
            }
            "-h" | "--help" => {
                println!(
                    "usage: memory [--keys N (default {DEFAULT_KEYS})] [--threads T (default \
                     {DEFAULT_THREADS})] [--json]\n       memory --peer idemstore|dashmap ...   \
                     (one structure in this process; prints one JSON line)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.keys == 0 || args.threads == 0 {
        return Err("--keys and --threads must be at least 1".into());
    }
    Ok(args)
}

/// A count, with `_` separators and `k`/`m` suffixes allowed: `10_000_000`, `10m`, `250k`.
fn parse_count(s: &str) -> Result<usize, String> {
    let t = s.replace('_', "").to_ascii_lowercase();
    let (digits, mult) = match t.strip_suffix('m') {
        Some(d) => (d, 1_000_000),
        None => match t.strip_suffix('k') {
            Some(d) => (d, 1_000),
            None => (t.as_str(), 1),
        },
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("not a count: {s:?}"))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("memory: {e}");
            std::process::exit(2);
        }
    };
    match &args.peer {
        Some(peer) => println!("{}", measure(peer, &args).to_json()),
        None => parent(&args),
    }
}

/// Runs each structure in a child process and reports them side by side.
fn parent(args: &Args) {
    let exe = std::env::current_exe().expect("the path of this example's binary");
    let mut results = Vec::new();
    for structure in STRUCTURES {
        if !args.json {
            eprintln!(
                "measuring {structure} with {} keys on {} threads...",
                args.keys, args.threads
            );
        }
        let out = Command::new(&exe)
            .args(["--peer", structure])
            .args(["--keys", &args.keys.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .output()
            .expect("run this example's binary as a child");
        if !out.status.success() {
            eprintln!(
                "memory: the {structure} child failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            std::process::exit(1);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("the {structure} child printed no result: {stdout:?}"));
        results.push(Measurement::from_json(line));
    }
    if args.json {
        let rows: Vec<String> = results.iter().map(Measurement::to_json).collect();
        println!(
            "{{\"keys\":{},\"threads\":{},\"results\":[{}]}}",
            args.keys,
            args.threads,
            rows.join(",")
        );
    } else {
        print_table(args, &results);
    }
}

fn print_table(args: &Args, results: &[Measurement]) {
    println!(
        "\n{} live keys, {} threads, one child process per structure",
        group_digits(args.keys),
        args.threads
    );
    println!(
        "{:<27} {:>11} {:>9} {:>11} {:>13} {:>14} {:>15} {:>18}",
        "structure",
        "keys",
        "elapsed",
        "inserts/s",
        "CPU ns/insert",
        "RSS Δ B/entry",
        "peak Δ B/entry",
        "accounted B/entry"
    );
    for m in results {
        println!(
            "{:<27} {:>11} {:>8.2}s {:>9.2} M {:>13.0} {:>14.1} {:>15.1} {:>18.1}",
            m.label(),
            group_digits(m.len),
            m.elapsed_s,
            m.inserts_per_s / 1e6,
            m.cpu_ns_per_insert(),
            m.rss_delta_per_entry(),
            m.peak_delta_per_entry(),
            m.accounted_per_entry()
        );
    }
    if let [a, b] = results {
        println!(
            "idemstore / dashmap: RSS {:.2}x, peak {:.2}x, insert rate {:.2}x, CPU per insert {:.2}x",
            a.rss_delta_per_entry() / b.rss_delta_per_entry(),
            a.peak_delta_per_entry() / b.peak_delta_per_entry(),
            a.inserts_per_s / b.inserts_per_s,
            a.cpu_ns_per_insert() / b.cpu_ns_per_insert()
        );
    }
}

/// One structure's numbers.
#[derive(Debug, Clone, Default)]
struct Measurement {
    structure: String,
    keys: usize,
    threads: usize,
    /// Entries the structure reports holding afterwards (should equal `keys`).
    len: usize,
    elapsed_s: f64,
    inserts_per_s: f64,
    /// CPU seconds (all threads, user + system) spent filling.
    cpu_s: f64,
    rss_before: u64,
    rss_after: u64,
    peak: u64,
    accounted: u64,
}

impl Measurement {
    fn label(&self) -> &'static str {
        match self.structure.as_str() {
            "idemstore" => "idemstore Store<()>",
            _ => "DashMap<u128,u64> foldhash",
        }
    }

    fn rss_delta_per_entry(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.keys as f64
    }

    fn peak_delta_per_entry(&self) -> f64 {
        self.peak.saturating_sub(self.rss_before) as f64 / self.keys as f64
    }

    fn cpu_ns_per_insert(&self) -> f64 {
        self.cpu_s * 1e9 / self.keys as f64
    }

    fn accounted_per_entry(&self) -> f64 {
        self.accounted as f64 / self.keys as f64
    }

    fn to_json(&self) -> String {
        format!(
            "{{\"structure\":\"{}\",\"keys\":{},\"threads\":{},\"len\":{},\"elapsed_s\":{:.6},\
             \"inserts_per_s\":{:.0},\"cpu_s\":{:.2},\"cpu_ns_per_insert\":{:.1},\"rss_before_bytes\":{},\"rss_after_bytes\":{},\
             \"peak_rss_bytes\":{},\"accounted_bytes\":{},\"rss_delta_bytes_per_entry\":{:.2},\
             \"peak_delta_bytes_per_entry\":{:.2},\"accounted_bytes_per_entry\":{:.2}}}",
            self.structure,
            self.keys,
            self.threads,
            self.len,
            self.elapsed_s,
            self.inserts_per_s,
            self.cpu_s,
            self.cpu_ns_per_insert(),
            self.rss_before,
            self.rss_after,
            self.peak,
            self.accounted,
            self.rss_delta_per_entry(),
            self.peak_delta_per_entry(),
            self.accounted_per_entry()
        )
    }

    /// Reads back what [`Measurement::to_json`] wrote (flat, known fields only).
    fn from_json(line: &str) -> Self {
        let num = |name: &str| -> f64 {
            let pat = format!("\"{name}\":");
            let at = line
                .find(&pat)
                .unwrap_or_else(|| panic!("field {name} missing in {line}"))
                + pat.len();
            let rest = &line[at..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            rest[..end]
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("field {name} is not a number in {line}"))
        };
        let structure = if line.contains("\"structure\":\"idemstore\"") {
            "idemstore"
        } else {
            "dashmap"
        };
        Self {
            structure: structure.to_string(),
            keys: num("keys") as usize,
            threads: num("threads") as usize,
            len: num("len") as usize,
            elapsed_s: num("elapsed_s"),
            inserts_per_s: num("inserts_per_s"),
            cpu_s: num("cpu_s"),
            rss_before: num("rss_before_bytes") as u64,
            rss_after: num("rss_after_bytes") as u64,
            peak: num("peak_rss_bytes") as u64,
            accounted: num("accounted_bytes") as u64,
        }
    }
}

/// Measures one structure in this process.
fn measure(structure: &str, args: &Args) -> Measurement {
    let n = args.keys;
    let threads = args.threads;
    // Touch the code paths and the thread machinery before the baseline is read.
    std::thread::scope(|s| {
        s.spawn(|| ());
    });
    let rss_before = proc_status_bytes("VmRSS");
    let (elapsed, cpu, len, accounted, rss_after, peak) = match structure {
        "idemstore" => {
            let store: Store<()> = Store::builder()
                .max_entries(n.saturating_mul(2).max(1 << 16))
                .ttl(Duration::from_secs(86_400))
                .lease(Duration::from_secs(30))
                .build()
                .expect("store");
            let (start, cpu_start) = (Instant::now(), cpu_time());
            fill(n, threads, |k| match store.claim_id(k).expect("claim") {
                Claim::Acquired(g) => g.complete(()).expect("complete"),
                other => panic!("a fresh key was not acquired: {other:?}"),
            });
            let elapsed = start.elapsed();
            let cpu = cpu_time() - cpu_start;
            let rss_after = proc_status_bytes("VmRSS");
            let peak = proc_status_bytes("VmHWM");
            let stats = store.stats();
            std::hint::black_box(&store);
            (
                elapsed,
                cpu,
                stats.entries,
                stats.memory_bytes as u64,
                rss_after,
                peak,
            )
        }
        _ => {
            let map: DashMap<u128, u64, foldhash::fast::RandomState> =
                DashMap::with_hasher(foldhash::fast::RandomState::default());
            let (start, cpu_start) = (Instant::now(), cpu_time());
            fill(n, threads, |k| {
                map.entry(k).or_insert(k as u64);
            });
            let elapsed = start.elapsed();
            let cpu = cpu_time() - cpu_start;
            let rss_after = proc_status_bytes("VmRSS");
            let peak = proc_status_bytes("VmHWM");
            // hashbrown: buckets = capacity * 8 / 7 (capacities are 7/8 of a power of two),
            // each bucket one (u128, u64) and one control byte.
            let bucket = std::mem::size_of::<(u128, u64)>() as u64 + 1;
            let accounted = map.capacity() as u64 * 8 / 7 * bucket;
            std::hint::black_box(&map);
            (elapsed, cpu, map.len(), accounted, rss_after, peak)
        }
    };
    let secs = elapsed.as_secs_f64();
    Measurement {
        structure: structure.to_string(),
        keys: n,
        threads,
        len,
        elapsed_s: secs,
        inserts_per_s: n as f64 / secs,
        cpu_s: cpu.as_secs_f64(),
        rss_before,
        rss_after,
        peak,
        accounted,
    }
}

/// Calls `op` once for each of `n` distinct keys, split evenly over `threads` threads.
fn fill(n: usize, threads: usize, op: impl Fn(u128) + Sync) {
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for t in 0..threads {
            let op = &op;
            let lo = (t * per).min(n) as u64;
            let hi = ((t + 1) * per).min(n) as u64;
            s.spawn(move || (lo..hi).for_each(|i| op(key(i))));
        }
    });
}
