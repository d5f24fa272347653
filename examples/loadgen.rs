//! The performance headline run: the engine at steady state with a real 24 h dedup window,
//! millions of live keys, keys expiring as fast as they arrive, claims offered at a fixed rate,
//! latency measured without coordinated omission, and the same workload on peer maps.
//!
//! ```text
//! cargo run --release --example loadgen                      # 20 M live keys, 1 M claims/s, ~30 s
//! cargo run --release --example loadgen -- --rate max        # closed loop: as fast as it goes
//! cargo run --release --example loadgen -- --peer dashmap    # the same workload on dashmap
//! cargo run --release --example loadgen -- --live 200000 --seconds 2 --rate max   # smoke run
//! cargo run --release --example loadgen -- --help
//! ```
//!
//! # What it measures, and how
//!
//! **Steady state at a long ttl, in seconds.** A 24 h window at realistic rates holds far more
//! keys than a test can make, so the store runs on a manual clock ([`Clock::manual`]) that the
//! worker threads advance by `ttl / live` per new key: key indices are handed out in blocks of
//! up to 1,024 from one shared counter, and a thread moves the clock forward by the share of the
//! ttl of the keys it issues, in steps of `tick` keys (exactly, in integer nanoseconds; `tick`
//! is an eighth of the keys issued during one lease, at most 1,024, so the clock never jumps by
//! more than a small part of a lease). A key therefore expires after `live` newer keys, whatever
//! the wall-clock rate: the table holds `--live` keys, the timing wheel works over its full
//! 24 h horizon, and keys leave exactly as fast as they arrive. What is measured is the real
//! (wall-clock) rate and latency of the claims. Before measuring, the threads prefill twice
//! `--live` keys the same way (not measured): the first window fills the store, the second turns
//! it over once, so measurement starts at steady state: the tables have grown to the size they
//! keep, and from the first measured claim the oldest keys are expiring.
//!
//! The compression of time has one visible side effect: at 1 M new keys/s, a 24 h window over
//! 20 M keys runs the manual clock ~4,000x faster than the wall clock (~430,000x at 200,000
//! live keys), so a thread descheduled for a few milliseconds between a claim and its
//! completion sees the other threads move the clock past its 30 s lease. The completion then
//! fails with `LeaseLost`, as it must: such completions are counted as `lease_lost` (not
//! violations), and those keys are not retried. In real time they would be 30 s stalls.
//!
//! **The workload.** Each operation is a claim. A share `--dup-ratio` of them are retries of a
//! recent key (one of the last ~1,000 keys that thread completed, chosen at random); the rest
//! are new keys (distinct 128-bit ids, spread like UUIDs). Every acquired claim is completed
//! at once with a value of `--value-bytes` bytes (`Store<()>` when 0, else `Store<Box<[u8]>>`).
//! A retry must replay (`Claim::Completed`); any other outcome is a violation, counted and
//! reported (the run exits with status 1), unless the manual clock shows that the key's window
//! may have ended before the retry (impossible for recent keys unless a thread stalls for a
//! large part of the window; counted separately as `dup_after_window`). A new key that is not
//! acquired is a violation too. A completion that fails (`LeaseLost`: the claiming thread was
//! descheduled while the other threads moved the clock past the lease, see above) is counted as
//! `lease_lost`, and that key is not retried.
//!
//! **Open loop.** With `--rate R` (default 1 M/s) each thread has its share of R, and operation
//! `i` of a thread has an intended start `start + i / (R / threads)`. A thread that is ahead
//! waits (spins the last 20 µs, yields the core before that, sleeps when far ahead); one that is
//! behind does not skip anything. Latency is completion − intended start, so time spent queued
//! behind a slow operation counts (no coordinated omission). Operations still due when the time
//! is up are reported as `backlog`. With `--rate max` (closed loop) latency is the time of each
//! operation, and CPU time per claim (all threads, `CLOCK_PROCESS_CPUTIME_ID`) is reported too; in
//! an open loop the threads' waiting would be in it, so it is not. Latencies go into one HDR
//! histogram per thread (1 ns resolution, 3 significant digits), merged at the end. Wall time is
//! read from the TSC (`quanta`, as the engine does). `--timeline` adds each second's claims,
//! highest latency and claims over 1 ms, to see when spikes happen.
//!
//! **Batches.** With `--batch N` each thread claims N keys per `Store::claim_id_batch` call
//! (with `--grouped` too, per `Store::claim_id_batch_grouped` call: shard by shard, outcomes
//! handled in that order; with `--complete-batch` as well, the keys a call acquired are
//! completed together after it, by one `Store::complete_batch` call).
//! Open loop: a batch starts when its last operation's intended start has come (a consumer
//! that batches N arrivals), and each operation's latency runs from its own intended start to
//! the moment its outcome is handled, so the wait to fill a batch counts.
//!
//! **Memory.** Bytes per live entry two ways: the engine's own account
//! (`stats().memory_bytes / entries`) and resident memory: (`VmRSS` at the end − `VmRSS`
//! before the store was built) / entries, everything included (table, wheel, allocator, heap
//! values). Entries are what the structure holds at the end (for idemstore including expired
//! entries not reclaimed yet, which should be few).
//!
//! **Maintenance.** The main thread calls `Store::run_maintenance` once a second (change it with
//! `--maintenance`), as a service would with `Builder::maintenance_interval(1 s)`; what it
//! reclaims is reported. Claims reclaim most expired keys themselves (up to 8 per claim).
//!
//! # Peers (`--peer dashmap|scc|moka`)
//!
//! The same threads, clock, keys and checks, on the best ttl handling a user would hand-roll
//! around a concurrent map: key `u128` → (deadline in ms on the same manual clock, value).
//! A claim is one `entry` call: vacant → insert (acquired); occupied with a deadline still ahead
//! → a duplicate (replay); occupied but expired → overwrite (acquired). There is no in-flight
//! state or lease: the value is stored with the insert, where idemstore does a claim and then a
//! complete. Expired keys are removed by a sweeper: each thread keeps a FIFO of the keys it
//! inserted (16 bytes each, with the latest deadline per block of up to 1,024), and each claim
//! removes up to 4 keys from its front once their deadline has passed (a conditional remove that
//! checks the stored deadline), so a thread that was descheduled catches up. The FIFOs take
//! 64 KiB segments from a pool shared by the threads, sized for `live` keys and some slack and
//! allocated and touched before the baseline RSS is read, so the per-entry RSS figure is the map
//! alone; the pool's size is reported beside it as `sweeper B/entry` (a hand-rolled sweeper
//! needs it; idemstore's wheel is inside its own figure). If the pool runs dry, the segments
//! allocated later land in the RSS figure, and the summary says so.
//! - `dashmap`: `DashMap<u128, _, foldhash>` 6, `entry()` and `remove_if`.
//! - `scc`: `scc::HashMap<u128, _, foldhash>` 3, `entry_sync` and `remove_if_sync`.
//! - `none`: no structure at all. Each claim is answered from its key's counter (a key past the
//!   thread's newest is new, any other a retry), so what is measured is the harness and the
//!   machine: the pacing, the clock reads, the histogram, and the scheduling of the threads.
//!   Its latency is the floor any structure's latency sits on here (see [`Floor`]).
//! - `moka`: `moka::sync::Cache<u128, _, foldhash>` 0.12, unbounded, `entry().or_insert_with_if`
//!   and `entry().and_compute_with` (remove if expired). Not moka's `time_to_live`: it runs on
//!   the wall clock, so keys would not expire at the steady-state rate. Not `max_capacity`
//!   either: its TinyLFU policy evicts (or refuses to admit) keys inside their window, which a
//!   dedup store must never do. The value is an `Arc<[u8]>` (moka clones values on reads).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use hdrhistogram::Histogram;
use idemstore::{Claim, Clock, Error, ManualClock, Store};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[path = "common/keys.rs"]
mod keys;
#[path = "common/measure.rs"]
mod measure;
use keys::{key, mix};
use measure::{cpu_time, group_digits, proc_status_bytes};

/// Keys per block taken from the shared counter (fewer when `--live` is small).
const MAX_CHUNK: u64 = 1024;
/// Recently completed keys per thread that retries are drawn from (fewer when `--live` is small).
const MAX_RECENT: usize = 1024;
/// Expired keys a peer's claim removes from its thread's FIFO, at most.
const SWEEP_PER_CLAIM: usize = 4;
/// The highest latency the histograms track exactly (one hour); above it they saturate.
const HIST_MAX_NS: u64 = 3_600_000_000_000;

type Hasher = foldhash::fast::RandomState;

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Args {
    live: u64,
    ttl: Duration,
    lease: Duration,
    /// How often the main thread runs the engine's maintenance; `None`: never.
    maintenance: Option<Duration>,
    /// Claims per second offered, all threads together; `None` = closed loop.
    rate: Option<f64>,
    threads: usize,
    dup_ratio: f64,
    value_bytes: usize,
    seconds: f64,
    json: bool,
    peer: Peer,
    batch: Option<usize>,
    grouped: bool,
    complete_batch: bool,
    shards: Option<usize>,
    timeline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Idemstore,
    Dashmap,
    Scc,
    Moka,
    /// No structure at all: the harness alone (see [`Floor`]).
    None,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Idemstore => "idemstore",
            Peer::Dashmap => "dashmap",
            Peer::Scc => "scc",
            Peer::Moka => "moka",
            Peer::None => "none",
        }
    }
}

fn help() -> String {
    let cores = default_threads();
    format!(
        "\
loadgen: idemstore at steady state with a real dedup window, beside hand-rolled peers.

USAGE: cargo run --release --example loadgen -- [OPTIONS]

OPTIONS
  --live N          live keys held at steady state (default 20_000_000; k/m suffixes ok)
  --ttl D           dedup window (default 24h; forms: 24h, 30m, 1s, 500ms, 2d, 1.5s)
  --lease D         in-flight lease of a claim (default 30s)
  --maintenance D   how often the main thread runs Store::run_maintenance, as a service would
                    with Builder::maintenance_interval (default 1s; off: claims alone reclaim)
  --rate R|max      claims per second offered, all threads together (default 1_000_000);
                    `max` = closed loop, each thread claims as fast as it can
  --threads T       worker threads (default: the number of cores, {cores} here)
  --dup-ratio F     share of claims that retry a recent key, 0 to 0.99 (default 0.1)
  --value-bytes B   size of the stored result (default 0: Store<()>; else Store<Box<[u8]>>)
  --seconds S       measured duration (default 15; prefill comes first and is not measured)
  --batch N         idemstore only: claim N keys per Store::claim_id_batch call
  --grouped         with --batch: per Store::claim_id_batch_grouped call instead (one lock
                    hold per shard and batch; for batches of hundreds of keys or more)
  --complete-batch  with --grouped: complete each batch's acquired keys together after it,
                    per Store::complete_batch call (one lock hold per shard and batch)
  --shards N        idemstore only: shard count (default: the builder's)
  --peer P          run the same workload on P instead: dashmap | scc | moka; or none:
                    no structure, the harness alone (pacing, clock reads, the histogram),
                    the floor any structure's latency sits on here
  --json            print one JSON object on stdout at the end (no progress bar)
  --timeline        also print (or put in the JSON) each second's claims, highest latency
                    and claims over 1 ms, to see when latency spikes happen
  -h, --help        this text

STEADY STATE
  The store runs on a manual clock that advances by ttl/live per new key. Key indices are
  handed out in blocks of up to 1,024 from one shared counter, and each thread advances the
  clock for the keys it issues, in steps of at most an eighth of a lease's worth of keys. So a
  key expires after `live` newer keys, keys expire exactly as fast as they arrive, the table
  holds `live` keys and the timing wheel works over the full ttl, while the claims run at their
  real wall-clock rate, which is what is measured. 2 x `live` keys are prefilled the same way
  first (not measured, progress shown): one window fills the store, one turns it over, so
  measurement starts at steady state. Time runs thousands of
  times faster than the wall clock, so a thread descheduled for milliseconds between a claim and
  its completion can lose a 30 s lease: counted as lease_lost, not as a violation.

WORKLOAD AND CHECKS
  A share --dup-ratio of claims retry one of the last ~1,000 keys their thread completed; the
  rest are new keys. Every acquired claim is completed with a value of --value-bytes bytes. A
  retry must replay (Claim::Completed) and a new key must be acquired: anything else is a
  violation, reported, and the run exits with status 1. A retry the manual clock says may have
  outlived its window is counted apart (dup_after_window). A completion refused with LeaseLost
  (a thread stalled while the others moved the clock past --lease) is counted as lease_lost.

LATENCY
  Open loop (--rate R): operation i of a thread is due at start + i/(R/threads); latency is
  completion - due time, so queueing behind slow operations counts (no coordinated omission).
  Operations still due at the end are reported as backlog. --rate max: latency = time per
  operation. HDR histograms, 1 ns resolution, 3 significant digits.

MEMORY
  Bytes per live entry: the engine's account (stats().memory_bytes / entries) and resident:
  (VmRSS at the end - VmRSS before the store is built) / entries, all included.

PEERS (--peer)
  Key u128 -> (deadline in ms on the same manual clock, value), foldhash. A claim is one entry
  call: vacant -> insert; occupied and unexpired -> replay; occupied and expired -> overwrite.
  No in-flight state, no lease (the value is stored with the insert). Expiry is a hand-rolled
  sweeper: each thread keeps a FIFO of the keys it inserted (16 B each), and each claim
  removes up to {SWEEP_PER_CLAIM} keys from its front whose deadline has passed, with a conditional
  remove. The FIFOs are allocated and touched before the baseline RSS, so the RSS figure is the
  map alone; their bytes per entry are reported beside it (sweeper B/entry).
  dashmap: DashMap 6, entry() + remove_if. scc: scc::HashMap 3, entry_sync + remove_if_sync.
  moka: moka::sync::Cache 0.12, unbounded, entry().or_insert_with_if + and_compute_with(remove
  if expired); not moka's time_to_live (wall clock: keys would not expire at the steady-state
  rate) and not max_capacity (TinyLFU evicts or refuses keys inside their window, which a dedup
  store must never do). moka values are Arc<[u8]> (it clones values on reads).

The progress bar (claims/s, live keys, resident memory) is drawn on stderr when stdout is a
terminal and --json is not given.
"
    )
}

/// Windows of `live` keys the prefill issues before measuring: the first fills the store, the
/// second turns it over once, so the tables have grown to the size they keep (a table that
/// grew while filling is still fuller than its steady size, and rebuilds once more) and the
/// oldest keys are expiring as the measurement starts.
const PREFILL_WINDOWS: u64 = 2;

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        live: 20_000_000,
        ttl: Duration::from_secs(86_400),
        lease: Duration::from_secs(30),
        maintenance: Some(Duration::from_secs(1)),
        rate: Some(1_000_000.0),
        threads: default_threads(),
        dup_ratio: 0.1,
        value_bytes: 0,
        seconds: 15.0,
        json: false,
        peer: Peer::Idemstore,
        batch: None,
        grouped: false,
        complete_batch: false,
        shards: None,
        timeline: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        // Both `--name value` and `--name=value`.
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--live" => args.live = parse_count(&value()?)?,
            "--ttl" => args.ttl = parse_duration(&value()?)?,
            "--lease" => args.lease = parse_duration(&value()?)?,
            "--maintenance" => {
                let v = value()?;
                args.maintenance = if v.eq_ignore_ascii_case("off") {
                    None
                } else {
                    Some(parse_duration(&v)?).filter(|d| !d.is_zero())
                };
            }
            "--rate" => {
                let v = value()?;
                args.rate = if v.eq_ignore_ascii_case("max") {
                    None
                } else {
                    let r = parse_number(&v)?;
                    if !(r > 0.0 && r.is_finite()) {
                        return Err(format!("--rate must be positive or `max`, not {v:?}"));
                    }
                    Some(r)
                }
            }
            "--threads" => args.threads = parse_count(&value()?)? as usize,
            "--dup-ratio" => {
                let v = value()?;
                args.dup_ratio = v
                    .parse()
                    .ok()
                    .filter(|r: &f64| (0.0..1.0).contains(r))
                    .ok_or_else(|| format!("--dup-ratio must be in [0, 1), not {v:?}"))?;
            }
            "--value-bytes" => args.value_bytes = parse_count(&value()?)? as usize,
            "--seconds" => {
                let v = value()?;
                args.seconds = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && s.is_finite())
                    .ok_or_else(|| format!("--seconds must be a positive number, not {v:?}"))?;
            }
            "--batch" => args.batch = Some(parse_count(&value()?)? as usize),
            "--shards" => args.shards = Some(parse_count(&value()?)? as usize),
            "--json" => args.json = true,
            "--grouped" => args.grouped = true,
            "--complete-batch" => args.complete_batch = true,
            "--timeline" => args.timeline = true,
            "--peer" => {
                args.peer = match value()?.as_str() {
                    "idemstore" => Peer::Idemstore,
                    "dashmap" => Peer::Dashmap,
                    "scc" => Peer::Scc,
                    "moka" => Peer::Moka,
                    "none" => Peer::None,
                    p => {
                        return Err(format!(
                            "--peer must be dashmap, scc, moka or none, not {p:?}"
                        ))
                    }
                }
            }
            "-h" | "--help" => {
                print!("{}", help());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if args.live < 1000 || args.live < 64 * args.threads as u64 {
        return Err("--live must be at least 1000 (and 64 per thread)".into());
    }
    if args.batch == Some(0) {
        return Err("--batch must be at least 1".into());
    }
    if args.grouped && args.batch.is_none() {
        return Err("--grouped needs --batch N".into());
    }
    if args.complete_batch && !args.grouped {
        return Err("--complete-batch needs --grouped".into());
    }
    if args.peer != Peer::Idemstore && (args.batch.is_some() || args.shards.is_some()) {
        return Err("--batch and --shards apply to idemstore only".into());
    }
    if args.ttl < Duration::from_millis(1) {
        return Err("--ttl must be at least 1ms".into());
    }
    Ok(args)
}

/// A count, with `_` separators and `k`/`m`/`g` suffixes allowed: `20_000_000`, `20m`, `250k`.
fn parse_count(s: &str) -> Result<u64, String> {
    let n = parse_number(s)?;
    if n < 0.0 || n.fract() != 0.0 || n > u64::MAX as f64 {
        return Err(format!("not a count: {s:?}"));
    }
    Ok(n as u64)
}

/// A number with optional `_` separators and a `k`/`m`/`g` suffix: `1_000_000`, `1.5m`.
fn parse_number(s: &str) -> Result<f64, String> {
    let t = s.replace('_', "").to_ascii_lowercase();
    let (digits, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t.as_str(), 1.0),
    };
    digits
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .map(|n| n * mult)
        .ok_or_else(|| format!("not a number: {s:?}"))
}

/// A duration: a number and a unit (`ns`, `us`, `ms`, `s`, `m`, `h`, `d`); a bare number is
/// seconds. `24h`, `500ms`, `1.5s`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim().replace('_', "").to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 24h, 1s, 500ms)"))?;
    let secs = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(format!("unknown unit in {s:?} (ns, us, ms, s, m, h, d)")),
    };
    Duration::try_from_secs_f64(n * secs).map_err(|_| format!("not a duration: {s:?}"))
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 3600.0 && s % 3600.0 == 0.0 {
        format!("{}h", s / 3600.0)
    } else if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", s / 60.0)
    } else if s >= 1.0 {
        format!("{s}s")
    } else {
        format!("{}ms", s * 1e3)
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads

/// A stored result: `()` (dedup only), or `bytes` bytes on the heap.
trait Payload: Send + Sync + 'static {
    fn make(bytes: usize) -> Self;
    fn bytes(&self) -> usize;
    fn type_name() -> &'static str;
}

impl Payload for () {
    fn make(_: usize) -> Self {}
    fn bytes(&self) -> usize {
        0
    }
    fn type_name() -> &'static str {
        "()"
    }
}

impl Payload for Box<[u8]> {
    fn make(bytes: usize) -> Self {
        vec![0x5a; bytes].into_boxed_slice()
    }
    fn bytes(&self) -> usize {
        self.len()
    }
    fn type_name() -> &'static str {
        "Box<[u8]>"
    }
}

impl Payload for Arc<[u8]> {
    fn make(bytes: usize) -> Self {
        vec![0x5a; bytes].into()
    }
    fn bytes(&self) -> usize {
        self.len()
    }
    fn type_name() -> &'static str {
        "Arc<[u8]>"
    }
}

// ---------------------------------------------------------------------------------------------
// Engines: idemstore and the hand-rolled peers behind one interface

/// What a claim came to, as the load generator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Acquired (or inserted); `completed` is whether the completion was accepted.
    Fresh {
        completed: bool,
    },
    /// A replay of the stored result, of the expected size.
    Replayed,
    /// A replay whose value had the wrong size.
    WrongValue,
    InProgress,
    Mismatch,
    /// `CapacityExceeded`.
    Rejected,
    /// Any other error.
    Failed,
}

trait Engine: Sync {
    /// Per-thread state (the peers' sweeper).
    type Local: Send;
    fn label(&self) -> String;
    /// The threads' states; made before the structure, so their memory is outside the
    /// baseline.
    fn new_locals(threads: usize, live: u64) -> Vec<Self::Local>;
    /// Claims `key`; `now_ns` is the manual clock read just before.
    fn claim(&self, local: &mut Self::Local, key: u128, now_ns: u64) -> Outcome;
    /// Claims `keys` in order, handing each outcome to `each`.
    fn claim_batch(
        &self,
        local: &mut Self::Local,
        keys: &[u128],
        now_ns: u64,
        each: &mut dyn FnMut(usize, Outcome),
    ) {
        for (i, &k) in keys.iter().enumerate() {
            let o = self.claim(local, k, now_ns);
            each(i, o);
        }
    }
    /// A thread took a new block of keys.
    fn on_block(&self, _local: &mut Self::Local) {}
    /// Entries held now.
    fn entries(&self) -> usize;
    /// Expired keys removed so far.
    fn expiries(&self) -> u64;
    /// Table rebuilds so far, if the engine counts them.
    fn rebuilds(&self) -> Option<u64> {
        None
    }
    /// The engine's own account of its memory, if it keeps one.
    fn accounted_bytes(&self) -> Option<u64> {
        None
    }
    /// Periodic maintenance (once a second); returns entries reclaimed.
    fn maintenance(&self) -> usize {
        0
    }
    /// Bytes of bookkeeping outside the structure (the sweeper FIFOs, all threads), and
    /// whether it outgrew its allocation before the baseline.
    fn local_bytes(_local: &Self::Local) -> (usize, bool) {
        (0, false)
    }
    /// Before the final figures are read.
    fn settle(&self) {}
}

struct Idem<P> {
    store: Store<P>,
    value_bytes: usize,
    /// Batches through `claim_id_batch_grouped`.
    grouped: bool,
    /// Each grouped batch's acquired keys completed after it through `complete_batch`.
    complete_batch: bool,
}

impl<P: Payload> Idem<P> {
    #[inline]
    fn outcome(&self, r: Result<Claim<'_, P>, Error>) -> Outcome {
        match r {
            Ok(Claim::Acquired(guard)) => Outcome::Fresh {
                completed: guard.complete(P::make(self.value_bytes)).is_ok(),
            },
            Ok(Claim::Completed(replay)) => {
                if replay.value().bytes() == self.value_bytes {
                    Outcome::Replayed
                } else {
                    Outcome::WrongValue
                }
            }
            Ok(Claim::InProgress(_)) => Outcome::InProgress,
            Ok(Claim::Mismatch(_)) => Outcome::Mismatch,
            Err(Error::CapacityExceeded { .. }) => Outcome::Rejected,
            Err(_) => Outcome::Failed,
        }
    }
}

impl<P: Payload> Engine for Idem<P> {
    type Local = ();

    fn label(&self) -> String {
        format!("idemstore Store<{}>", P::type_name())
    }

    fn new_locals(threads: usize, _live: u64) -> Vec<()> {
        vec![(); threads]
    }

    #[inline]
    fn claim(&self, _: &mut (), key: u128, _now_ns: u64) -> Outcome {
        self.outcome(self.store.claim_id(key))
    }

    fn claim_batch(
        &self,
        _: &mut (),
        keys: &[u128],
        _now_ns: u64,
        each: &mut dyn FnMut(usize, Outcome),
    ) {
        if self.complete_batch {
            let mut owned = Vec::with_capacity(keys.len());
            let mut index = Vec::with_capacity(keys.len());
            self.store.claim_id_batch_grouped(keys, |i, r| match r {
                Ok(Claim::Acquired(guard)) => {
                    index.push(i);
                    owned.push((guard, P::make(self.value_bytes)));
                }
                r => each(i, self.outcome(r)),
            });
            self.store.complete_batch(owned, |j, r| {
                each(
                    index[j],
                    Outcome::Fresh {
                        completed: r.is_ok(),
                    },
                )
            });
        } else if self.grouped {
            self.store
                .claim_id_batch_grouped(keys, |i, r| each(i, self.outcome(r)));
        } else {
            self.store
                .claim_id_batch(keys, |i, r| each(i, self.outcome(r)));
        }
    }

    fn entries(&self) -> usize {
        self.store.stats().entries
    }

    fn expiries(&self) -> u64 {
        self.store.stats().ttl_expiries
    }

    fn accounted_bytes(&self) -> Option<u64> {
        Some(self.store.stats().memory_bytes as u64)
    }

    fn rebuilds(&self) -> Option<u64> {
        Some(self.store.stats().table_rebuilds)
    }

    fn maintenance(&self) -> usize {
        self.store.run_maintenance()
    }
}

/// `--peer none`: no structure. Each thread's new keys come from blocks of a shared counter in
/// increasing order and its retries from its own recent keys, so a key whose counter is past
/// the thread's newest is new and any other is a retry. Measures the harness and the machine
/// alone: the same pacing, clock reads and histogram as every engine, and nothing else.
struct Floor;

impl Floor {
    /// The counter `i` of [`key`]`(i)`, from its low half (the inverse of [`mix`]).
    #[inline]
    fn index(key: u128) -> u64 {
        /// The inverse of an odd `a` modulo 2^64 (Newton's iteration).
        const fn inverse(a: u64) -> u64 {
            let mut x = a;
            let mut k = 0;
            while k < 6 {
                x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
                k += 1;
            }
            x
        }
        let mut z = key as u64;
        z ^= (z >> 31) ^ (z >> 62);
        z = z.wrapping_mul(inverse(0x94d0_49bb_1331_11eb));
        z ^= (z >> 27) ^ (z >> 54);
        z = z.wrapping_mul(inverse(0xbf58_476d_1ce4_e5b9));
        z ^= (z >> 30) ^ (z >> 60);
        z.wrapping_sub(0x9e37_79b9_7f4a_7c15)
    }
}

impl Engine for Floor {
    /// The next counter this thread has not claimed yet.
    type Local = u64;

    fn label(&self) -> String {
        "no structure (the harness alone)".into()
    }

    fn new_locals(threads: usize, _live: u64) -> Vec<u64> {
        vec![0; threads]
    }

    #[inline]
    fn claim(&self, next: &mut u64, key: u128, _now_ns: u64) -> Outcome {
        let i = Self::index(key);
        if i >= *next {
            *next = i + 1;
            Outcome::Fresh { completed: true }
        } else {
            Outcome::Replayed
        }
    }

    fn entries(&self) -> usize {
        0
    }

    fn expiries(&self) -> u64 {
        0
    }
}

/// A peer's value: the deadline in whole ms (rounded up) on the manual clock, and the result.
#[derive(Clone)]
struct PeerVal<P> {
    deadline_ms: u64,
    value: P,
}

#[inline]
fn deadline_ms(now_ns: u64, ttl_ns: u64) -> u64 {
    now_ns.saturating_add(ttl_ns).div_ceil(1_000_000)
}

#[inline]
fn expired(now_ns: u64, deadline_ms: u64) -> bool {
    now_ns / 1_000_000 >= deadline_ms
}

/// Keys per FIFO segment (64 KiB).
const SEGMENT: usize = 4096;

/// The segments of the peers' FIFOs, shared by the threads: allocated and touched before the
/// baseline RSS is read, taken by a thread's FIFO as it grows and given back as it drains, so
/// the FIFOs together need about `live` keys' worth however the keys fall on the threads.
struct SegmentPool {
    free: Mutex<Vec<Box<[u128]>>>,
    /// Segments allocated in all.
    allocated: AtomicUsize,
    /// Segments allocated after the baseline, because the pool ran dry.
    late: AtomicUsize,
}

impl SegmentPool {
    fn new(segments: usize) -> Arc<Self> {
        // `vec![u128::MAX; n]` writes every element: the pages are resident from here on.
        let free = (0..segments)
            .map(|_| vec![u128::MAX; SEGMENT].into_boxed_slice())
            .collect();
        Arc::new(Self {
            free: Mutex::new(free),
            allocated: AtomicUsize::new(segments),
            late: AtomicUsize::new(0),
        })
    }

    fn take(&self) -> Box<[u128]> {
        if let Some(s) = self.free.lock().expect("pool lock").pop() {
            return s;
        }
        self.allocated.fetch_add(1, Ordering::Relaxed);
        self.late.fetch_add(1, Ordering::Relaxed);
        vec![0; SEGMENT].into_boxed_slice()
    }

    fn give(&self, segment: Box<[u128]>) {
        self.free.lock().expect("pool lock").push(segment);
    }
}

/// A peer thread's sweeper: the keys it inserted, oldest first, in blocks with the latest
/// deadline of each block.
struct Sweeper {
    pool: Arc<SegmentPool>,
    segments: VecDeque<Box<[u128]>>,
    /// The next key to remove, in the front segment.
    head: usize,
    /// Keys in the back segment.
    tail: usize,
    /// (keys, latest deadline in ms) per closed block, oldest first; the front block's count
    /// goes down as its keys are removed.
    blocks: VecDeque<(usize, u64)>,
    open_keys: usize,
    open_deadline: u64,
}

impl Sweeper {
    fn new(pool: Arc<SegmentPool>) -> Self {
        Self {
            pool,
            segments: VecDeque::new(),
            head: 0,
            tail: SEGMENT,
            blocks: VecDeque::new(),
            open_keys: 0,
            open_deadline: 0,
        }
    }

    /// One sweeper per thread, sharing a pool sized for `live` keys and some slack.
    fn for_threads(threads: usize, live: u64) -> Vec<Self> {
        let segments = (live as usize + live as usize / 4).div_ceil(SEGMENT) + 4 * threads;
        let pool = SegmentPool::new(segments);
        (0..threads).map(|_| Self::new(pool.clone())).collect()
    }

    #[inline]
    fn inserted(&mut self, key: u128, deadline_ms: u64) {
        if self.tail == SEGMENT {
            self.segments.push_back(self.pool.take());
            self.tail = 0;
        }
        let back = self.segments.back_mut().expect("a back segment");
        back[self.tail] = key;
        self.tail += 1;
        self.open_keys += 1;
        self.open_deadline = self.open_deadline.max(deadline_ms);
    }

    fn close_block(&mut self) {
        if self.open_keys > 0 {
            self.blocks.push_back((self.open_keys, self.open_deadline));
            self.open_keys = 0;
            self.open_deadline = 0;
        }
    }

    /// Hands up to `max` keys whose block's deadline has passed to `remove`.
    #[inline]
    fn due(&mut self, now_ns: u64, max: usize, mut remove: impl FnMut(u128)) {
        for _ in 0..max {
            let Some((count, deadline)) = self.blocks.front_mut() else {
                return;
            };
            if !expired(now_ns, *deadline) {
                return;
            }
            *count -= 1;
            if *count == 0 {
                self.blocks.pop_front();
            }
            let front = self
                .segments
                .front()
                .expect("invariant: closed blocks count keys in the FIFO");
            let key = front[self.head];
            self.head += 1;
            if self.head == SEGMENT {
                let done = self.segments.pop_front().expect("the front segment");
                self.pool.give(done);
                self.head = 0;
                if self.segments.is_empty() {
                    self.tail = SEGMENT;
                }
            }
            remove(key);
        }
    }

    /// Bytes of all the FIFOs (the shared pool), and whether any was allocated late.
    fn bytes(&self) -> (usize, bool) {
        (
            self.pool.allocated.load(Ordering::Relaxed) * SEGMENT * std::mem::size_of::<u128>(),
            self.pool.late.load(Ordering::Relaxed) > 0,
        )
    }
}

/// Settings every peer shares.
struct PeerCommon {
    ttl_ns: u64,
    value_bytes: usize,
    expired: AtomicU64,
}

impl PeerCommon {
    fn new(args: &Args) -> Self {
        Self {
            ttl_ns: nanos(args.ttl),
            value_bytes: args.value_bytes,
            expired: AtomicU64::new(0),
        }
    }

    #[inline]
    fn fresh<P: Payload>(&self, now_ns: u64) -> PeerVal<P> {
        PeerVal {
            deadline_ms: deadline_ms(now_ns, self.ttl_ns),
            value: P::make(self.value_bytes),
        }
    }

    #[inline]
    fn replay<P: Payload>(&self, v: &PeerVal<P>) -> Outcome {
        if v.value.bytes() == self.value_bytes {
            Outcome::Replayed
        } else {
            Outcome::WrongValue
        }
    }

    /// Runs the sweeper after a claim; `remove` removes a key if expired, returning whether it
    /// removed it.
    #[inline]
    fn sweep(&self, local: &mut Sweeper, now_ns: u64, mut remove: impl FnMut(u128) -> bool) {
        let mut removed = 0;
        local.due(now_ns, SWEEP_PER_CLAIM, |k| removed += u64::from(remove(k)));
        if removed > 0 {
            self.expired.fetch_add(removed, Ordering::Relaxed);
        }
    }
}

struct Dash<P> {
    map: DashMap<u128, PeerVal<P>, Hasher>,
    c: PeerCommon,
}

impl<P: Payload> Engine for Dash<P> {
    type Local = Sweeper;

    fn label(&self) -> String {
        format!("DashMap<u128,(deadline,{})> + FIFO sweeper", P::type_name())
    }

    fn new_locals(threads: usize, live: u64) -> Vec<Sweeper> {
        Sweeper::for_threads(threads, live)
    }

    #[inline]
    fn claim(&self, local: &mut Sweeper, key: u128, now_ns: u64) -> Outcome {
        use dashmap::mapref::entry::Entry;
        let outcome = match self.map.entry(key) {
            Entry::Occupied(mut e) => {
                if expired(now_ns, e.get().deadline_ms) {
                    let v = self.c.fresh(now_ns);
                    local.inserted(key, v.deadline_ms);
                    e.insert(v);
                    Outcome::Fresh { completed: true }
                } else {
                    self.c.replay(e.get())
                }
            }
            Entry::Vacant(e) => {
                let v = self.c.fresh(now_ns);
                local.inserted(key, v.deadline_ms);
                e.insert(v);
                Outcome::Fresh { completed: true }
            }
        };
        self.c.sweep(local, now_ns, |k| {
            self.map
                .remove_if(&k, |_, v| expired(now_ns, v.deadline_ms))
                .is_some()
        });
        outcome
    }

    fn on_block(&self, local: &mut Sweeper) {
        local.close_block();
    }

    fn entries(&self) -> usize {
        self.map.len()
    }

    fn expiries(&self) -> u64 {
        self.c.expired.load(Ordering::Relaxed)
    }

    fn local_bytes(local: &Sweeper) -> (usize, bool) {
        local.bytes()
    }
}

struct Scc<P> {
    map: scc::HashMap<u128, PeerVal<P>, Hasher>,
    c: PeerCommon,
}

impl<P: Payload> Engine for Scc<P> {
    type Local = Sweeper;

    fn label(&self) -> String {
        format!(
            "scc::HashMap<u128,(deadline,{})> + FIFO sweeper",
            P::type_name()
        )
    }

    fn new_locals(threads: usize, live: u64) -> Vec<Sweeper> {
        Sweeper::for_threads(threads, live)
    }

    #[inline]
    fn claim(&self, local: &mut Sweeper, key: u128, now_ns: u64) -> Outcome {
        use scc::hash_map::Entry;
        let outcome = match self.map.entry_sync(key) {
            Entry::Occupied(mut e) => {
                if expired(now_ns, e.get().deadline_ms) {
                    let v = self.c.fresh(now_ns);
                    local.inserted(key, v.deadline_ms);
                    e.insert(v);
                    Outcome::Fresh { completed: true }
                } else {
                    self.c.replay(e.get())
                }
            }
            Entry::Vacant(e) => {
                let v = self.c.fresh(now_ns);
                local.inserted(key, v.deadline_ms);
                e.insert_entry(v);
                Outcome::Fresh { completed: true }
            }
        };
        self.c.sweep(local, now_ns, |k| {
            self.map
                .remove_if_sync(&k, |v| expired(now_ns, v.deadline_ms))
                .is_some()
        });
        outcome
    }

    fn on_block(&self, local: &mut Sweeper) {
        local.close_block();
    }

    fn entries(&self) -> usize {
        self.map.len()
    }

    fn expiries(&self) -> u64 {
        self.c.expired.load(Ordering::Relaxed)
    }

    fn local_bytes(local: &Sweeper) -> (usize, bool) {
        local.bytes()
    }
}

struct Moka<P: Payload + Clone> {
    cache: moka::sync::Cache<u128, PeerVal<P>, Hasher>,
    c: PeerCommon,
}

impl<P: Payload + Clone> Engine for Moka<P> {
    type Local = Sweeper;

    fn label(&self) -> String {
        format!(
            "moka::sync::Cache<u128,(deadline,{})> + FIFO sweeper",
            P::type_name()
        )
    }

    fn new_locals(threads: usize, live: u64) -> Vec<Sweeper> {
        Sweeper::for_threads(threads, live)
    }

    #[inline]
    fn claim(&self, local: &mut Sweeper, key: u128, now_ns: u64) -> Outcome {
        let entry = self
            .cache
            .entry(key)
            .or_insert_with_if(|| self.c.fresh(now_ns), |v| expired(now_ns, v.deadline_ms));
        let outcome = if entry.is_fresh() || entry.is_old_value_replaced() {
            local.inserted(key, entry.value().deadline_ms);
            Outcome::Fresh { completed: true }
        } else {
            self.c.replay(entry.value())
        };
        self.c.sweep(local, now_ns, |k| {
            use moka::ops::compute::{CompResult, Op};
            let r = self.cache.entry(k).and_compute_with(|e| match e {
                Some(e) if expired(now_ns, e.value().deadline_ms) => Op::Remove,
                _ => Op::Nop,
            });
            matches!(r, CompResult::Removed(_))
        });
        outcome
    }

    fn on_block(&self, local: &mut Sweeper) {
        local.close_block();
    }

    fn entries(&self) -> usize {
        self.cache.entry_count() as usize
    }

    fn expiries(&self) -> u64 {
        self.c.expired.load(Ordering::Relaxed)
    }

    fn local_bytes(local: &Sweeper) -> (usize, bool) {
        local.bytes()
    }

    fn settle(&self) {
        self.cache.run_pending_tasks();
    }
}

// ---------------------------------------------------------------------------------------------
// Keys, clocks, measurements

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Wall time in ns since a common origin, from the TSC.
#[derive(Clone)]
struct Wall {
    clock: quanta::Clock,
    origin: u64,
}

impl Wall {
    fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self { clock, origin }
    }

    #[inline]
    fn now(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

fn rss() -> u64 {
    proc_status_bytes("VmRSS").unwrap_or(0)
}

fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("histogram bounds");
    // Touch the counts before the baseline RSS is read.
    h.saturating_record(1);
    h.reset();
    h
}

/// Violations: outcomes the engine must never produce here.
const VIOLATION_KINDS: [&str; 7] = [
    "new_key_not_acquired",
    "dup_acquired",
    "dup_in_progress",
    "dup_mismatch",
    "dup_wrong_value",
    "dup_refused",
    "dup_error",
];

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    claims: u64,
    new_keys: u64,
    dups: u64,
    replayed: u64,
    /// Retries whose key's window may have ended by the manual clock: any outcome accepted.
    dup_after_window: u64,
    violations: [u64; VIOLATION_KINDS.len()],
    lease_lost: u64,
    rejected: u64,
    errors: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.claims += o.claims;
        self.new_keys += o.new_keys;
        self.dups += o.dups;
        self.replayed += o.replayed;
        self.dup_after_window += o.dup_after_window;
        for (a, b) in self.violations.iter_mut().zip(o.violations) {
            *a += b;
        }
        self.lease_lost += o.lease_lost;
        self.rejected += o.rejected;
        self.errors += o.errors;
    }

    fn total_violations(&self) -> u64 {
        self.violations.iter().sum()
    }
}

/// The last keys a thread completed: (key, manual clock before its claim).
struct Recent {
    slots: Vec<(u128, u64)>,
    next: usize,
    cap: usize,
}

impl Recent {
    fn new(cap: usize) -> Self {
        Self {
            slots: Vec::with_capacity(cap),
            next: 0,
            cap,
        }
    }

    #[inline]
    fn push(&mut self, key: u128, t: u64) {
        if self.slots.len() < self.cap {
            self.slots.push((key, t));
        } else {
            self.slots[self.next] = (key, t);
            self.next = (self.next + 1) % self.cap;
        }
    }
}

/// wyrand: a small, fast generator for the per-thread choices.
struct Rng(u64);

impl Rng {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    }

    /// Uniform in `0..n`.
    #[inline]
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// What the threads share.
struct Shared {
    hand: ManualClock,
    wall: Wall,
    /// Key indices handed out (in blocks).
    issued: AtomicU64,
    live: u64,
    /// Keys per block taken from `issued`.
    chunk: u64,
    /// Keys per step of the manual clock: at most an eighth of the keys issued during one
    /// lease, so that a thread's claim and completion, a few steps of the other threads apart,
    /// stay within the lease (at small `live` a 30 s lease spans only tens of keys).
    tick: u64,
    ttl_ns: u64,
    /// Keys the prefill issues: two windows of `live` (see `PREFILL_WINDOWS`).
    prefill: u64,
    /// Threads done with the prefill.
    prefilled: AtomicUsize,
    go: Barrier,
    /// Wall ns of the start and end of the measured window (set before `go`).
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    /// Claims done in the measured window, per thread, updated every 256.
    progress: Vec<CachePadded<AtomicU64>>,
    dup_threshold: u64,
    recent: usize,
    /// Wall ns between two operations of one thread (open loop).
    interval_ns: Option<f64>,
    batch: Option<usize>,
}

impl Shared {
    /// Manual-clock time at which the `i`-th key is issued.
    fn time_at(&self, i: u64) -> u64 {
        (u128::from(i) * u128::from(self.ttl_ns) / u128::from(self.live)) as u64
    }

    /// Takes the next block of key indices, stopping at `limit`.
    fn take_block(&self, limit: u64) -> Option<(u64, u64)> {
        let base = self.issued.fetch_add(self.chunk, Ordering::Relaxed);
        (base < limit).then(|| (base, (base + self.chunk).min(limit)))
    }

    /// Advances the manual clock by the share of the ttl of key indices `from..to`.
    fn advance(&self, from: u64, to: u64) {
        self.hand
            .advance(Duration::from_nanos(self.time_at(to) - self.time_at(from)));
    }

    #[inline]
    fn manual_now(&self) -> u64 {
        nanos(self.hand.now())
    }
}

/// One worker thread's keys, checks and counts.
struct Worker<'a, E: Engine> {
    engine: &'a E,
    shared: &'a Shared,
    local: E::Local,
    recent: Recent,
    rng: Rng,
    block: (u64, u64),
    /// Key indices of the block below this have been paid for on the manual clock.
    advanced_to: u64,
    counts: Counts,
}

/// An operation: the key, and for a retry the manual time before its first claim.
#[derive(Clone, Copy)]
struct Op {
    key: u128,
    dup_of: Option<u64>,
}

impl<E: Engine> Worker<'_, E> {
    /// The next new key, taking a new block when this one is used up.
    #[inline]
    fn new_key(&mut self, limit: u64) -> Option<u128> {
        if self.block.0 == self.block.1 {
            self.block = self.shared.take_block(limit)?;
            self.advanced_to = self.block.0;
            self.engine.on_block(&mut self.local);
        }
        let i = self.block.0;
        if i == self.advanced_to {
            // The clock moves in steps of `tick` keys, so a claim's lease never sees the clock
            // jump by more than a small part of it (see `Shared::tick`).
            let to = (i + self.shared.tick).min(self.block.1);
            self.shared.advance(i, to);
            self.advanced_to = to;
        }
        self.block.0 += 1;
        Some(key(i))
    }

    #[inline]
    fn next_op(&mut self) -> Op {
        if !self.recent.slots.is_empty() && self.rng.next() < self.shared.dup_threshold {
            let (key, t) = self.recent.slots[self.rng.below(self.recent.slots.len())];
            return Op {
                key,
                dup_of: Some(t),
            };
        }
        let key = self.new_key(u64::MAX).expect("the key space is unbounded");
        Op { key, dup_of: None }
    }

    /// Counts an outcome and checks it; `t_issue` is the manual clock read before the claim.
    #[inline]
    fn record(&mut self, op: Op, t_issue: u64, outcome: Outcome) {
        let c = &mut self.counts;
        c.claims += 1;
        match op.dup_of {
            None => {
                c.new_keys += 1;
                match outcome {
                    Outcome::Fresh { completed: true } => self.recent.push(op.key, t_issue),
                    Outcome::Fresh { completed: false } => c.lease_lost += 1,
                    Outcome::Rejected => c.rejected += 1,
                    Outcome::Failed => c.errors += 1,
                    _ => c.violations[0] += 1,
                }
            }
            Some(first) => {
                c.dups += 1;
                if outcome == Outcome::Replayed {
                    c.replayed += 1;
                    return;
                }
                // The store read its clock before this point; its deadline for the key is at
                // least `first + ttl`. If the clock is still short of that, the key must have
                // replayed.
                if self.shared.manual_now() >= first.saturating_add(self.shared.ttl_ns) {
                    c.dup_after_window += 1;
                    return;
                }
                let kind = match outcome {
                    Outcome::Fresh { .. } => 1,
                    Outcome::InProgress => 2,
                    Outcome::Mismatch => 3,
                    Outcome::WrongValue => 4,
                    Outcome::Rejected => 5,
                    Outcome::Replayed | Outcome::Failed => 6,
                };
                c.violations[kind] += 1;
            }
        }
    }

    /// Claims the prefill's keys with the other threads: new keys only, not measured.
    fn prefill(&mut self) {
        let total = self.shared.prefill;
        while let Some(k) = self.new_key(total) {
            let t = self.shared.manual_now();
            let o = self.engine.claim(&mut self.local, k, t);
            self.record(
                Op {
                    key: k,
                    dup_of: None,
                },
                t,
                o,
            );
        }
        // The rest of the last block was not ours; start afresh.
        self.block = (0, 0);
    }

    /// The measured window. Returns the histogram, the operations still due at the end (open
    /// loop), and the wall time of the last completion.
    fn measure(
        &mut self,
        tid: usize,
        mut hist: Histogram<u64>,
    ) -> (Histogram<u64>, Timeline, u64, u64) {
        let sh = self.shared;
        let wall = sh.wall.clone();
        let start = sh.start_ns.load(Ordering::Relaxed);
        let end = sh.end_ns.load(Ordering::Relaxed);
        let mut timeline = Timeline::new(start, end);
        let progress = &sh.progress[tid];
        let mut i: u64 = 0;
        wait_until(&wall, start);
        let mut last = wall.now();
        let mut backlog = 0;
        let batch = sh.batch.unwrap_or(1);
        let mut ops: Vec<Op> = Vec::with_capacity(batch);
        let mut keys: Vec<u128> = Vec::with_capacity(batch);
        let mut outcomes: Vec<(usize, Outcome, u64)> = Vec::with_capacity(batch);
        loop {
            // This batch (or single operation) is due when its last operation is.
            let due_last = sh
                .interval_ns
                .map(|iv| start + ((i + batch as u64 - 1) as f64 * iv) as u64);
            if let Some(due) = due_last {
                if due >= end {
                    break;
                }
                wait_until(&wall, due);
            }
            ops.clear();
            keys.clear();
            for _ in 0..batch {
                let op = self.next_op();
                ops.push(op);
                keys.push(op.key);
            }
            let t_issue = sh.manual_now();
            if batch == 1 && sh.batch.is_none() {
                let o = self.engine.claim(&mut self.local, keys[0], t_issue);
                let t = wall.now();
                let lat = match sh.interval_ns {
                    Some(iv) => t.saturating_sub(start + (i as f64 * iv) as u64),
                    None => t - last,
                };
                timeline.record(&mut hist, t, lat);
                last = t;
                self.record(ops[0], ops[0].dup_of.unwrap_or(t_issue), o);
            } else {
                outcomes.clear();
                let engine = self.engine;
                engine.claim_batch(&mut self.local, &keys, t_issue, &mut |j, o| {
                    outcomes.push((j, o, wall.now()));
                });
                for &(j, o, t) in &outcomes {
                    let lat = match sh.interval_ns {
                        Some(iv) => t.saturating_sub(start + ((i + j as u64) as f64 * iv) as u64),
                        None => t - last,
                    };
                    timeline.record(&mut hist, t, lat);
                    last = t;
                    self.record(ops[j], ops[j].dup_of.unwrap_or(t_issue), o);
                }
            }
            i += batch as u64;
            if i % 256 < batch as u64 {
                progress.store(i, Ordering::Relaxed);
            }
            if last >= end {
                if let Some(iv) = sh.interval_ns {
                    // Operations due before the end that never started.
                    let due = ((end - start) as f64 / iv).ceil() as u64;
                    backlog = due.saturating_sub(i);
                }
                break;
            }
        }
        progress.store(i, Ordering::Relaxed);
        (hist, timeline, backlog, last)
    }
}

/// Latency per second of the measured window: claims completed, the highest latency, and
/// claims over 1 ms, to see when spikes happen.
#[derive(Debug, Clone, Default)]
struct Timeline {
    start: u64,
    next: u64,
    at: usize,
    seconds: Vec<[u64; 3]>,
}

impl Timeline {
    fn new(start: u64, end: u64) -> Self {
        let n = (end - start).div_ceil(1_000_000_000) as usize + 1;
        Self {
            start,
            next: start + 1_000_000_000,
            at: 0,
            seconds: vec![[0; 3]; n],
        }
    }

    /// Records a latency in `hist` and in the second of `t`, its completion.
    #[inline]
    fn record(&mut self, hist: &mut Histogram<u64>, t: u64, lat: u64) {
        hist.saturating_record(lat.max(1));
        if t >= self.next {
            self.at = (((t - self.start) / 1_000_000_000) as usize).min(self.seconds.len() - 1);
            self.next = self.start + (self.at as u64 + 1) * 1_000_000_000;
        }
        let s = &mut self.seconds[self.at];
        s[0] += 1;
        s[1] = s[1].max(lat);
        s[2] += u64::from(lat > 1_000_000);
    }

    fn add(&mut self, o: &Timeline) {
        if self.seconds.len() < o.seconds.len() {
            self.seconds.resize(o.seconds.len(), [0; 3]);
        }
        for (a, b) in self.seconds.iter_mut().zip(&o.seconds) {
            a[0] += b[0];
            a[1] = a[1].max(b[1]);
            a[2] += b[2];
        }
    }
}

/// Waits for wall time `due`: sleeps while far ahead (sleeps overshoot by tens of µs), yields
/// the core while a little ahead, and spins for the last stretch.
#[inline]
fn wait_until(wall: &Wall, due: u64) {
    loop {
        let now = wall.now();
        if now >= due {
            return;
        }
        let ahead = due - now;
        if ahead > 300_000 {
            std::thread::sleep(Duration::from_nanos(ahead - 200_000));
        } else if ahead > 20_000 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// What a worker thread hands back.
struct WorkerResult {
    prefill: Counts,
    measured: Counts,
    hist: Histogram<u64>,
    timeline: Timeline,
    backlog: u64,
    /// Wall time of its last completion.
    last: u64,
    local_bytes: (usize, bool),
}

/// Everything the summary reports.
struct Report {
    label: String,
    args: Args,
    prefill_s: f64,
    prefill: Counts,
    measured: Counts,
    elapsed_s: f64,
    cpu_s: f64,
    hist: Histogram<u64>,
    timeline: Timeline,
    backlog: u64,
    entries: usize,
    expiries: u64,
    /// Table rebuilds in the measured window (idemstore).
    rebuilds: Option<u64>,
    maintenance_reclaimed: u64,
    accounted_bytes: Option<u64>,
    rss_before: u64,
    rss_after: u64,
    peak_rss: u64,
    sweeper_bytes: usize,
    sweeper_grew: bool,
}

/// Prefills and measures the engine `make` builds (on the manual clock it is given).
fn run<E: Engine>(args: &Args, make: impl FnOnce(Clock) -> E) -> Report {
    let threads = args.threads;
    let live = args.live;
    let (clock, hand) = Clock::manual();
    let chunk = MAX_CHUNK.min(live / (16 * threads as u64)).max(1);
    let shared = Shared {
        hand,
        wall: Wall::new(),
        issued: AtomicU64::new(0),
        live,
        chunk,
        tick: (u128::from(nanos(args.lease)) * u128::from(live) / u128::from(nanos(args.ttl)) / 8)
            .clamp(1, u128::from(chunk)) as u64,
        ttl_ns: nanos(args.ttl),
        prefill: live * PREFILL_WINDOWS,
        prefilled: AtomicUsize::new(0),
        go: Barrier::new(threads + 1),
        start_ns: AtomicU64::new(0),
        end_ns: AtomicU64::new(0),
        progress: (0..threads)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect(),
        dup_threshold: (args.dup_ratio * 2f64.powi(64)) as u64,
        recent: MAX_RECENT
            .min((live / (8 * threads as u64)) as usize)
            .max(1),
        interval_ns: args.rate.map(|r| 1e9 * threads as f64 / r),
        batch: args.batch,
    };
    let interactive = !args.json && std::io::stdout().is_terminal();
    let quiet_log = |msg: &str| {
        if !interactive && !args.json {
            eprintln!("{msg}");
        }
    };

    // Per-thread state first (the peers' FIFOs are allocated and touched here), then the
    // baseline, then the structure.
    let hists: Vec<Histogram<u64>> = (0..threads).map(|_| new_histogram()).collect();
    let locals: Vec<E::Local> = E::new_locals(threads, live);
    // Start the thread machinery once, so its stacks and arenas are not in the delta.
    std::thread::scope(|s| {
        s.spawn(|| ());
    });
    let rss_before = rss();
    let engine = make(clock);

    let prefill_keys = live * PREFILL_WINDOWS;
    let bar = progress_bar(
        interactive,
        prefill_keys,
        "prefill {bar:30} {human_pos}/{human_len} keys, eta {eta}, {msg}",
    );
    let mut maintenance_reclaimed = 0u64;
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (tid, (local, hist)) in locals.into_iter().zip(hists).enumerate() {
            let engine = &engine;
            let shared = &shared;
            handles.push(s.spawn(move || {
                let mut w = Worker {
                    engine,
                    shared,
                    local,
                    recent: Recent::new(shared.recent),
                    rng: Rng(mix(tid as u64 + 1)),
                    block: (0, 0),
                    advanced_to: 0,
                    counts: Counts::default(),
                };
                w.prefill();
                let prefill = std::mem::take(&mut w.counts);
                shared.prefilled.fetch_add(1, Ordering::Release);
                shared.go.wait();
                let (hist, timeline, backlog, last) = w.measure(tid, hist);
                WorkerResult {
                    prefill,
                    measured: w.counts,
                    hist,
                    timeline,
                    backlog,
                    last,
                    local_bytes: E::local_bytes(&w.local),
                }
            }));
        }

        // Prefill, with progress and maintenance.
        let wall = shared.wall.clone();
        let t0 = wall.now();
        let (mut last_maint, mut last_line) = (t0, t0);
        while shared.prefilled.load(Ordering::Acquire) < threads {
            std::thread::sleep(Duration::from_millis(20));
            let now = wall.now();
            if args
                .maintenance
                .is_some_and(|d| now - last_maint >= nanos(d))
            {
                maintenance_reclaimed += engine.maintenance() as u64;
                last_maint = now;
            }
            let done = shared.issued.load(Ordering::Relaxed).min(prefill_keys);
            bar.set_position(done);
            bar.set_message(format!("RSS {}", fmt_bytes(rss())));
            if now - last_line >= 5_000_000_000 {
                quiet_log(&format!(
                    "prefill: {} of {} keys",
                    group_digits(done),
                    group_digits(prefill_keys)
                ));
                last_line = now;
            }
        }
        let prefill_s = (wall.now() - t0) as f64 / 1e9;
        bar.finish_and_clear();
        if !args.json {
            eprintln!(
                "prefill: {} keys in {:.1} s ({:.2} M/s), not measured; measuring {} s...",
                group_digits(prefill_keys),
                prefill_s,
                prefill_keys as f64 / prefill_s / 1e6,
                args.seconds
            );
        }

        // The measured window.
        let expiries0 = engine.expiries();
        let rebuilds0 = engine.rebuilds();
        let maint0 = maintenance_reclaimed;
        let cpu0 = cpu_time().unwrap_or_default();
        let start = wall.now() + 1_000_000;
        let end = start + (args.seconds * 1e9) as u64;
        shared.start_ns.store(start, Ordering::Relaxed);
        shared.end_ns.store(end, Ordering::Relaxed);
        let tenths = (args.seconds * 10.0).ceil() as u64;
        let bar = progress_bar(interactive, tenths, "measure {bar:30} {msg}");
        shared.go.wait();
        let (mut last_ops, mut last_t, mut last_maint, mut last_line) = (0, start, start, start);
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = wall.now();
            if args
                .maintenance
                .is_some_and(|d| now - last_maint >= nanos(d))
            {
                maintenance_reclaimed += engine.maintenance() as u64;
                last_maint = now;
            }
            let ops: u64 = shared
                .progress
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .sum();
            let rate = (ops - last_ops) as f64 / ((now.saturating_sub(last_t)).max(1) as f64 / 1e9);
            (last_ops, last_t) = (ops, now);
            let msg = format!(
                "{:.2} M claims/s, {} live keys, RSS {}",
                rate / 1e6,
                group_digits(engine.entries() as u64),
                fmt_bytes(rss())
            );
            bar.set_position((now.saturating_sub(start) / 100_000_000).min(tenths));
            bar.set_message(msg.clone());
            if now - last_line >= 5_000_000_000 {
                quiet_log(&format!("measure: {msg}"));
                last_line = now;
            }
            if now >= end {
                break;
            }
        }
        let mut prefill = Counts::default();
        let mut measured = Counts::default();
        let mut hist = new_histogram();
        let mut backlog = 0;
        let mut last_end = end;
        let (mut sweeper_bytes, mut sweeper_grew) = (0, false);
        let mut timeline = Timeline::default();
        for h in handles {
            let r = h.join().expect("a worker panicked");
            prefill.add(&r.prefill);
            measured.add(&r.measured);
            hist.add(&r.hist).expect("histograms of the same bounds");
            timeline.add(&r.timeline);
            backlog += r.backlog;
            last_end = last_end.max(r.last);
            sweeper_bytes = sweeper_bytes.max(r.local_bytes.0);
            sweeper_grew |= r.local_bytes.1;
        }
        let cpu_s = (cpu_time().unwrap_or_default() - cpu0).as_secs_f64();
        bar.finish_and_clear();
        let expiries = engine.expiries() - expiries0;
        let rebuilds = engine.rebuilds().zip(rebuilds0).map(|(b, a)| b - a);
        engine.settle();
        Report {
            label: engine.label(),
            args: args.clone(),
            prefill_s,
            prefill,
            measured,
            elapsed_s: (last_end - start) as f64 / 1e9,
            cpu_s,
            hist,
            timeline,
            backlog,
            entries: engine.entries(),
            expiries,
            rebuilds,
            maintenance_reclaimed: maintenance_reclaimed - maint0,
            accounted_bytes: engine.accounted_bytes(),
            rss_before,
            rss_after: rss(),
            peak_rss: proc_status_bytes("VmHWM").unwrap_or(0),
            sweeper_bytes,
            sweeper_grew,
        }
    })
}

fn progress_bar(interactive: bool, len: u64, template: &str) -> ProgressBar {
    if !interactive {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

fn idemstore_engine<P: Payload>(args: &Args, clock: Clock) -> Idem<P> {
    // Headroom over `live`: keys spread over shards unevenly, and a refusal would be a failure
    // of the setup, not of the engine (refusals are counted and reported all the same).
    let max_entries = args.live + args.live / 2 + 65_536;
    let mut b = Store::<P>::builder()
        .ttl(args.ttl)
        .lease(args.lease)
        .max_entries(usize::try_from(max_entries).expect("max_entries fits in usize"))
        .clock(clock);
    if let Some(s) = args.shards {
        b = b.shards(s);
    }
    Idem {
        store: b.build().unwrap_or_else(|e| {
            eprintln!("loadgen: cannot build the store: {e}");
            std::process::exit(2);
        }),
        value_bytes: args.value_bytes,
        grouped: args.grouped,
        complete_batch: args.complete_batch,
    }
}

fn moka_cache<V: Clone + Send + Sync + 'static>() -> moka::sync::Cache<u128, V, Hasher> {
    moka::sync::Cache::builder().build_with_hasher(Hasher::default())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let common = || PeerCommon::new(&args);
    let report = match (args.peer, args.value_bytes > 0) {
        (Peer::Idemstore, false) => run(&args, |c| idemstore_engine::<()>(&args, c)),
        (Peer::Idemstore, true) => run(&args, |c| idemstore_engine::<Box<[u8]>>(&args, c)),
        (Peer::Dashmap, false) => run(&args, |_| Dash::<()> {
            map: DashMap::with_hasher(Hasher::default()),
            c: common(),
        }),
        (Peer::Dashmap, true) => run(&args, |_| Dash::<Box<[u8]>> {
            map: DashMap::with_hasher(Hasher::default()),
            c: common(),
        }),
        (Peer::Scc, false) => run(&args, |_| Scc::<()> {
            map: scc::HashMap::with_hasher(Hasher::default()),
            c: common(),
        }),
        (Peer::Scc, true) => run(&args, |_| Scc::<Box<[u8]>> {
            map: scc::HashMap::with_hasher(Hasher::default()),
            c: common(),
        }),
        (Peer::Moka, false) => run(&args, |_| Moka::<()> {
            cache: moka_cache(),
            c: common(),
        }),
        (Peer::Moka, true) => run(&args, |_| Moka::<Arc<[u8]>> {
            cache: moka_cache(),
            c: common(),
        }),
        (Peer::None, _) => run(&args, |_| Floor),
    };
    if args.json {
        println!("{}", report.json());
    } else {
        report.print();
    }
    let violations = report.prefill.total_violations() + report.measured.total_violations();
    if violations > 0 {
        eprintln!("loadgen: {violations} violations (see above)");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// The summary

impl Report {
    fn claims_per_s(&self) -> f64 {
        self.measured.claims as f64 / self.elapsed_s
    }

    /// Resident growth per live entry; none when nothing holds entries (`--peer none`), where
    /// the growth is the harness's own.
    fn rss_per_entry(&self) -> Option<f64> {
        (self.entries > 0)
            .then(|| self.rss_after.saturating_sub(self.rss_before) as f64 / self.entries as f64)
    }

    fn accounted_per_entry(&self) -> Option<f64> {
        self.accounted_bytes
            .map(|b| b as f64 / self.entries.max(1) as f64)
    }

    fn sweeper_per_entry(&self) -> f64 {
        self.sweeper_bytes as f64 / self.entries.max(1) as f64
    }

    fn q(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }

    fn rate_text(&self) -> String {
        match self.args.rate {
            Some(r) => format!("offered {}/s (open loop)", group_digits(r as u64)),
            None => "closed loop (--rate max)".to_string(),
        }
    }

    /// Whether the offered rate was kept up with: at least 99% of it achieved, and less than
    /// 10 ms worth of claims still due at the end.
    fn sustained(&self) -> bool {
        match self.args.rate {
            Some(r) => self.claims_per_s() >= 0.99 * r && (self.backlog as f64) < r * 0.01,
            None => true,
        }
    }

    /// CPU time per claim, all threads; only in a closed loop, where the threads never wait
    /// (in an open loop they spin between claims, and that time is not the engine's).
    fn cpu_ns_per_claim(&self) -> Option<f64> {
        self.args
            .rate
            .is_none()
            .then(|| self.cpu_s * 1e9 / self.measured.claims.max(1) as f64)
    }

    fn print(&self) {
        let a = &self.args;
        let m = &self.measured;
        println!();
        println!("{}", self.label);
        println!(
            "  {} live keys, ttl {} on a manual clock (steady state){}, {} thread{}, {}, \
             {:.0}% retries, {} B values{}",
            group_digits(a.live),
            fmt_duration(a.ttl),
            if a.peer == Peer::Idemstore {
                format!(", lease {}", fmt_duration(a.lease))
            } else {
                String::new()
            },
            a.threads,
            if a.threads == 1 { "" } else { "s" },
            self.rate_text(),
            a.dup_ratio * 100.0,
            a.value_bytes,
            a.batch.map_or(String::new(), |b| format!(
                ", {}batches of {b}{}",
                if a.grouped { "grouped " } else { "" },
                if a.complete_batch {
                    ", completed together"
                } else {
                    ""
                }
            ))
        );
        println!(
            "  prefill        {} keys in {:.1} s, not measured",
            group_digits(a.live * PREFILL_WINDOWS),
            self.prefill_s
        );
        println!(
            "  measured       {:.2} s: {} claims ({} new keys, {} retries)",
            self.elapsed_s,
            group_digits(m.claims),
            group_digits(m.new_keys),
            group_digits(m.dups)
        );
        println!(
            "  throughput     {:.3} M claims/s achieved{}",
            self.claims_per_s() / 1e6,
            match (a.rate, self.cpu_ns_per_claim()) {
                (Some(r), _) => format!(
                    " of {:.3} M/s offered{}; {} claims still due at the end",
                    r / 1e6,
                    if self.sustained() {
                        ""
                    } else {
                        ": NOT SUSTAINED"
                    },
                    group_digits(self.backlog)
                ),
                (None, Some(cpu)) => format!("; CPU {cpu:.0} ns/claim (all threads)"),
                (None, None) => String::new(),
            },
        );
        println!(
            "  latency        p50 {}  p99 {}  p99.9 {}  max {}  ({})",
            fmt_ns(self.q(0.5)),
            fmt_ns(self.q(0.99)),
            fmt_ns(self.q(0.999)),
            fmt_ns(self.hist.max()),
            if a.rate.is_some() {
                "from each claim's intended start: queueing included"
            } else {
                "time per claim"
            }
        );
        println!(
            "  live entries   {} (target {}); expirations {:.3} M/s (new keys {:.3} M/s){}",
            group_digits(self.entries as u64),
            group_digits(a.live),
            self.expiries as f64 / self.elapsed_s / 1e6,
            m.new_keys as f64 / self.elapsed_s / 1e6,
            if a.peer == Peer::Idemstore {
                format!(
                    "; maintenance reclaimed {}; table rebuilds {}",
                    group_digits(self.maintenance_reclaimed),
                    group_digits(self.rebuilds.unwrap_or(0))
                )
            } else {
                String::new()
            }
        );
        let mut mem = format!(
            "  bytes/entry    resident {} (RSS {} -> {}, peak {})",
            self.rss_per_entry()
                .map_or_else(|| "- (no entries)".to_string(), |b| format!("{b:.1} B")),
            fmt_bytes(self.rss_before),
            fmt_bytes(self.rss_after),
            fmt_bytes(self.peak_rss)
        );
        if let Some(acc) = self.accounted_per_entry() {
            let _ = write!(mem, "; engine-accounted {acc:.1} B");
        }
        if self.sweeper_bytes > 0 {
            let _ = write!(
                mem,
                "; sweeper FIFO {:.1} B more ({}, outside the RSS figure{})",
                self.sweeper_per_entry(),
                fmt_bytes(self.sweeper_bytes as u64),
                if self.sweeper_grew {
                    "; it outgrew its allocation, and the growth IS in the RSS figure"
                } else {
                    ""
                }
            );
        }
        println!("{mem}");
        let v = m.total_violations() + self.prefill.total_violations();
        println!(
            "  retries        {} replayed of {}; after their window {}; violations {}{}",
            group_digits(m.replayed),
            group_digits(m.dups),
            group_digits(m.dup_after_window),
            v,
            if v > 0 {
                format!("  <-- {}", self.violation_text())
            } else {
                String::new()
            }
        );
        if a.timeline {
            println!("  timeline       second: claims, max latency, claims over 1 ms");
            for (sec, [n, max, slow]) in self.timeline.seconds.iter().enumerate() {
                if *n > 0 {
                    println!(
                        "    {:>4}  {:>11}  {:>10}  {:>9}",
                        sec,
                        group_digits(*n),
                        fmt_ns(*max),
                        group_digits(*slow)
                    );
                }
            }
        }
        println!(
            "  other          lease lost {}, refused at capacity {}, errors {} \
             (prefill: {}, {}, {})",
            group_digits(m.lease_lost),
            group_digits(m.rejected),
            group_digits(m.errors),
            group_digits(self.prefill.lease_lost),
            group_digits(self.prefill.rejected),
            group_digits(self.prefill.errors)
        );
    }

    fn violation_text(&self) -> String {
        let mut out = Vec::new();
        for (i, name) in VIOLATION_KINDS.iter().enumerate() {
            let n = self.measured.violations[i] + self.prefill.violations[i];
            if n > 0 {
                out.push(format!("{name}: {n}"));
            }
        }
        out.join(", ")
    }

    fn json(&self) -> String {
        let a = &self.args;
        let m = &self.measured;
        let mut j = Json::default();
        j.str("engine", a.peer.name());
        j.str("label", &self.label);
        j.num("live", a.live as f64);
        j.num("ttl_s", a.ttl.as_secs_f64());
        if a.peer == Peer::Idemstore {
            j.num("lease_s", a.lease.as_secs_f64());
        }
        j.num("threads", a.threads as f64);
        j.opt("rate_offered", a.rate);
        j.bool("closed_loop", a.rate.is_none());
        j.num("dup_ratio", a.dup_ratio);
        j.num("value_bytes", a.value_bytes as f64);
        j.opt("batch", a.batch.map(|b| b as f64));
        j.bool("grouped", a.grouped);
        j.bool("complete_batch", a.complete_batch);
        j.num("seconds", a.seconds);
        j.num("prefill_s", self.prefill_s);
        j.num("elapsed_s", self.elapsed_s);
        j.num("claims", m.claims as f64);
        j.num("new_keys", m.new_keys as f64);
        j.num("claims_per_s", self.claims_per_s());
        j.num("new_keys_per_s", m.new_keys as f64 / self.elapsed_s);
        j.bool("sustained", self.sustained());
        j.num("backlog", self.backlog as f64);
        j.opt("cpu_ns_per_claim", self.cpu_ns_per_claim());
        let mut l = Json::default();
        l.num("p50", self.q(0.5) as f64);
        l.num("p90", self.q(0.9) as f64);
        l.num("p99", self.q(0.99) as f64);
        l.num("p999", self.q(0.999) as f64);
        l.num("max", self.hist.max() as f64);
        l.num("mean", self.hist.mean());
        j.raw("latency_ns", &l.finish());
        j.num("entries", self.entries as f64);
        j.num("expiries", self.expiries as f64);
        j.num("expiries_per_s", self.expiries as f64 / self.elapsed_s);
        j.num("maintenance_reclaimed", self.maintenance_reclaimed as f64);
        j.opt("table_rebuilds", self.rebuilds.map(|n| n as f64));
        j.opt("engine_bytes_per_entry", self.accounted_per_entry());
        j.opt("rss_bytes_per_entry", self.rss_per_entry());
        j.num("rss_before_bytes", self.rss_before as f64);
        j.num("rss_after_bytes", self.rss_after as f64);
        j.num("peak_rss_bytes", self.peak_rss as f64);
        j.num("sweeper_bytes_per_entry", self.sweeper_per_entry());
        j.bool("sweeper_grew", self.sweeper_grew);
        j.num("dups", m.dups as f64);
        j.num("dup_replayed", m.replayed as f64);
        j.num("dup_after_window", m.dup_after_window as f64);
        let total = m.total_violations() + self.prefill.total_violations();
        j.num("violations", total as f64);
        let mut v = Json::default();
        for (i, name) in VIOLATION_KINDS.iter().enumerate() {
            v.num(name, (m.violations[i] + self.prefill.violations[i]) as f64);
        }
        j.raw("violation_kinds", &v.finish());
        j.num(
            "lease_lost",
            (m.lease_lost + self.prefill.lease_lost) as f64,
        );
        j.num("rejected", (m.rejected + self.prefill.rejected) as f64);
        j.num("errors", (m.errors + self.prefill.errors) as f64);
        if a.timeline {
            let rows: Vec<String> = self
                .timeline
                .seconds
                .iter()
                .filter(|s| s[0] > 0)
                .map(|[n, max, slow]| format!("[{n},{max},{slow}]"))
                .collect();
            j.raw(
                "timeline_claims_maxns_over1ms",
                &format!("[{}]", rows.join(",")),
            );
        }
        j.finish()
    }
}

/// A flat JSON object writer (no serde in this crate's dependencies).
#[derive(Default)]
struct Json(String);

impl Json {
    fn key(&mut self, k: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        let _ = write!(self.0, "\"{k}\":");
    }

    fn num(&mut self, k: &str, v: f64) {
        self.key(k);
        if !v.is_finite() {
            self.0.push_str("null");
        } else if v.fract() == 0.0 && v.abs() < 9e15 {
            let _ = write!(self.0, "{}", v as i64);
        } else {
            let _ = write!(self.0, "{v:.3}");
        }
    }

    fn opt(&mut self, k: &str, v: Option<f64>) {
        match v {
            Some(v) => self.num(k, v),
            None => self.raw(k, "null"),
        }
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.raw(k, if v { "true" } else { "false" });
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0.push('"');
        for c in v.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0.push_str(v);
    }

    fn finish(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}

fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

fn fmt_ns(ns: u64) -> String {
    let n = ns as f64;
    if n >= 1e9 {
        format!("{:.2} s", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2} ms", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} µs", n / 1e3)
    } else {
        format!("{ns} ns")
    }
}
