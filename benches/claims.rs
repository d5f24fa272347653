//! Claim throughput of a dedup-only `Store<()>` holding 10 million live keys, beside dashmap 6's
//! `DashMap<u128, u64>` (foldhash) doing `entry(k).or_insert(v)`, on 2 threads.
//!
//! ```text
//! cargo bench --bench claims                                  # 10 million live keys
//! IDEMSTORE_BENCH_KEYS=200000 cargo bench --bench claims -- --quick   # smoke run
//! cargo bench --bench claims -- unique                        # one group
//! ```
//!
//! Groups, each with an `idemstore` and a `dashmap` function, throughput in claims per second:
//! - `unique`: claims of never-seen keys. The guard is `mem::forget`-ten, so only the claim is
//!   timed: dropping it would release the key, which is extra work a real caller doesn't do (it
//!   completes instead). A `Guard` owns nothing but a borrow of the store, so forgetting it leaks
//!   nothing; the entry stays in flight until its 30 s lease runs out.
//! - `duplicate`: claims of keys completed in the store (every one a `Claim::Completed` replay),
//!   picked at random among the live keys; dashmap does `entry().or_insert()` on present keys.
//! - `claim_complete`: a claim of a never-seen key and its `complete(())`; dashmap does
//!   `entry().or_insert()` (it has no second step).
//!
//! Each group also has `idemstore-batch64`: the same work through `Store::claim_id_batch`, 64
//! keys per call (each thread's share cut into batches of 64), which prefetches the table memory
//! of keys a few places ahead while it claims the current one.
//!
//! Each function fills its structure with N live keys (`IDEMSTORE_BENCH_KEYS`, default 10
//! million; completed keys for idemstore) when it first runs (so a criterion filter skips the
//! fill of what it skips), and drops it when done, so only one structure is in memory at a time.
//! One criterion iteration is one batch of `IDEMSTORE_BENCH_BATCH` claims (default 200 000, or
//! N / 10 if smaller) split over 2 threads (`std::thread::scope`; the spawn and join, ~0.1% of a
//! batch, are in the time). Keys are made before the clock starts.
//!
//! The groups that claim new keys grow the structures (growth, rebuilds and resizes included, as
//! in real use). So that the live count stays near N, a structure that has taken in more than
//! N new keys (`IDEMSTORE_BENCH_MAX_GROWTH`, a fraction of N, default 1.0) is filled afresh
//! between batches, untimed. Growing N → 2N spans at least one full growth cycle of either
//! structure (idemstore rebuilds a shard's table at 1.4x, hashbrown doubles), so the amortized
//! cost of growth is in the number. Since keys spread evenly, all idemstore shards (64 per core by default) reach
//! their rebuild point at about the same key count: that cost comes in bursts, and a short
//! measurement that starts just before or just after one differs; compare runs at the same N.
//!
//! Without `--bench` (`cargo test --benches`), N defaults to 20 000 so the test run is quick.
//!
//! The store uses the system clock, as a service would. The 30 s lease deadlines of the filled
//! keys come due 30 s after the fill; from then on, claims also refile the wheel records of
//! completed keys (8 per claim at most) until all are refiled. Keep warm-up + measurement time
//! under ~25 s (default 1 s + 5 s) to measure the store before that wave.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use dashmap::DashMap;
use idemstore::{Claim, Store};

const THREADS: usize = 2;
const DEFAULT_KEYS: u64 = 10_000_000;
const DEFAULT_BATCH: u64 = 200_000;
/// Live keys in test mode (`cargo test --benches`).
const TEST_KEYS: u64 = 20_000;

type Map = DashMap<u128, u64, foldhash::fast::RandomState>;

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The settings of a run, from the environment.
#[derive(Debug, Clone, Copy)]
struct Config {
    /// Live keys each structure holds before measuring.
    keys: u64,
    /// Claims per criterion iteration.
    batch: u64,
    /// New keys a structure may take in before it is filled afresh.
    max_growth: u64,
}

impl Config {
    fn from_env() -> Self {
        // `cargo test --benches` runs each function once, without `--bench`: a small store
        // keeps that a quick check that the code runs.
        let bench_mode = std::env::args().any(|a| a == "--bench");
        let default_keys = if bench_mode { DEFAULT_KEYS } else { TEST_KEYS };
        let keys = env_num("IDEMSTORE_BENCH_KEYS", default_keys).max(1);
        // Default: 200 000, or a tenth of the keys for small smoke runs.
        let batch =
            env_num("IDEMSTORE_BENCH_BATCH", DEFAULT_BATCH.min(keys / 10)).max(THREADS as u64);
        let growth: f64 = env_num("IDEMSTORE_BENCH_MAX_GROWTH", 1.0);
        let max_growth = ((keys as f64 * growth) as u64).max(batch);
        Self {
            keys,
            batch,
            max_growth,
        }
    }
}

/// The `i`-th key: distinct for distinct `i` (the low half is a bijection of `i`) and spread
/// like random ids, so neither structure sees friendly sequential keys. Keys `0..N` are the
/// filled ones; new keys come from `N..`.
#[inline]
fn key(i: u64) -> u128 {
    (u128::from(mix(i ^ 0x5851_f42d_4c95_7f2d)) << 64) | u128::from(mix(i))
}

/// splitmix64's finalizer: a bijection on u64.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs `op` on every key, the keys split into `THREADS` contiguous runs, one per thread.
/// Returns the wall time from before the spawn to after the join.
fn run_parallel(keys: &[u128], op: impl Fn(u128) + Sync) -> Duration {
    let chunk = keys.len().div_ceil(THREADS);
    let start = Instant::now();
    std::thread::scope(|s| {
        for part in keys.chunks(chunk) {
            let op = &op;
            s.spawn(move || part.iter().for_each(|&k| op(k)));
        }
    });
    start.elapsed()
}

/// Like [`run_parallel`], but hands each thread its keys in batches of [`BATCH`], for
/// `Store::claim_id_batch`.
fn run_parallel_batches(keys: &[u128], op: impl Fn(&[u128]) + Sync) -> Duration {
    let chunk = keys.len().div_ceil(THREADS);
    let start = Instant::now();
    std::thread::scope(|s| {
        for part in keys.chunks(chunk) {
            let op = &op;
            s.spawn(move || part.chunks(BATCH).for_each(op));
        }
    });
    start.elapsed()
}

/// Keys per `claim_id_batch` call: what a message consumer might receive at once.
const BATCH: usize = 64;

fn new_store(cfg: &Config) -> Store<()> {
    Store::builder()
        // Far above what a run reaches, so no claim is ever refused.
        .max_entries(200_000_000.max(cfg.keys as usize * 4))
        .ttl(Duration::from_secs(86_400))
        .lease(Duration::from_secs(30))
        .build()
        .expect("store")
}

fn new_map(_: &Config) -> Map {
    DashMap::with_hasher(foldhash::fast::RandomState::default())
}

/// Claims and completes `keys` on 2 threads.
fn fill_store(store: &Store<()>, keys: &[u128]) -> Duration {
    run_parallel(keys, |k| match store.claim_id(k).expect("claim") {
        Claim::Acquired(g) => g.complete(()).expect("complete"),
        other => panic!("a fresh key was not acquired: {other:?}"),
    })
}

fn fill_map(map: &Map, keys: &[u128]) -> Duration {
    run_parallel(keys, |k| {
        map.entry(k).or_insert(k as u64);
    })
}

/// A structure under test with its fill, and the counter of never-seen keys.
struct Filled<T> {
    cfg: Config,
    name: &'static str,
    make: fn(&Config) -> T,
    fill: fn(&T, &[u128]) -> Duration,
    value: T,
    /// The next never-seen key index.
    next: u64,
    /// Times the structure was filled (the first, then after each growth past the cap).
    fills: u32,
}

impl<T> Filled<T> {
    fn new(
        cfg: Config,
        name: &'static str,
        make: fn(&Config) -> T,
        fill: fn(&T, &[u128]) -> Duration,
    ) -> Self {
        let value = make(&cfg);
        let mut f = Self {
            cfg,
            name,
            make,
            fill,
            value,
            next: cfg.keys,
            fills: 0,
        };
        f.fill_up();
        f
    }

    fn fill_up(&mut self) {
        let keys: Vec<u128> = (0..self.cfg.keys).map(key).collect();
        let took = (self.fill)(&self.value, &keys);
        if self.fills == 0 {
            eprintln!(
                "  filled {} with {} keys in {:.2?} ({:.2} M/s)",
                self.name,
                self.cfg.keys,
                took,
                self.cfg.keys as f64 / took.as_secs_f64() / 1e6
            );
        }
        self.fills += 1;
    }

    /// The next batch of never-seen keys, after filling afresh if the structure grew too much.
    fn fresh_batch(&mut self) -> Vec<u128> {
        if self.next + self.cfg.batch > self.cfg.keys + self.cfg.max_growth {
            // The old one is dropped (on assignment) before the new, empty one is filled.
            self.value = (self.make)(&self.cfg);
            self.next = self.cfg.keys;
            self.fill_up();
        }
        let lo = self.next;
        self.next += self.cfg.batch;
        (lo..self.next).map(key).collect()
    }
}

/// A batch of keys picked at random among the filled ones; `seq` varies the pick.
fn present_batch(cfg: &Config, seq: &AtomicU64) -> Vec<u128> {
    let s = seq.fetch_add(1, Ordering::Relaxed);
    (0..cfg.batch)
        .map(|i| key(mix((s.wrapping_mul(cfg.batch) + i) ^ 0xa076_1d64_78bd_642f) % cfg.keys))
        .collect()
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
    cfg: &Config,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(cfg.batch));
    g
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// How the idemstore functions hand keys to the store.
#[derive(Clone, Copy)]
enum Mode {
    /// `claim_id`, one key at a time.
    Single,
    /// `claim_id_batch`, [`BATCH`] keys per call.
    Batched,
}

/// Benchmarks idemstore on `keys` batches, checking each claim's outcome with `check`.
fn bench_store(
    g: &mut Group<'_>,
    cfg: Config,
    store: &mut Option<Filled<Store<()>>>,
    mode: Mode,
    mut keys: impl FnMut(&mut Filled<Store<()>>) -> Vec<u128>,
    check: impl for<'s> Fn(Claim<'s, ()>) + Sync,
) {
    let name = match mode {
        Mode::Single => "idemstore",
        Mode::Batched => "idemstore-batch64",
    };
    g.bench_function(BenchmarkId::new(name, cfg.keys), |b| {
        let store =
            store.get_or_insert_with(|| Filled::new(cfg, "idemstore", new_store, fill_store));
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let keys = keys(store);
                let s = &store.value;
                total += match mode {
                    Mode::Single => run_parallel(&keys, |k| check(s.claim_id(k).expect("claim"))),
                    Mode::Batched => run_parallel_batches(&keys, |batch| {
                        s.claim_id_batch(batch, |_, claim| check(claim.expect("claim")))
                    }),
                };
            }
            total
        })
    });
}

/// Benchmarks dashmap's `entry(k).or_insert(v)` on `keys` batches.
fn bench_map(
    g: &mut Group<'_>,
    cfg: Config,
    map: &mut Option<Filled<Map>>,
    mut keys: impl FnMut(&mut Filled<Map>) -> Vec<u128>,
) {
    g.bench_function(BenchmarkId::new("dashmap", cfg.keys), |b| {
        let map = map.get_or_insert_with(|| Filled::new(cfg, "dashmap", new_map, fill_map));
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let keys = keys(map);
                let m = &map.value;
                total += run_parallel(&keys, |k| {
                    black_box(*m.entry(k).or_insert(k as u64));
                });
            }
            total
        })
    });
}

/// A never-seen key's claim, not completed: forgotten, not dropped, since dropping would
/// release the key (extra work a real caller does not do).
fn acquired_forgotten(claim: Claim<'_, ()>) {
    match claim {
        Claim::Acquired(guard) => std::mem::forget(guard),
        other => panic!("a never-seen key was not acquired: {other:?}"),
    }
}

fn replayed(claim: Claim<'_, ()>) {
    match claim {
        Claim::Completed(replay) => {
            black_box(replay.value());
        }
        other => panic!("a completed key did not replay: {other:?}"),
    }
}

fn acquired_completed(claim: Claim<'_, ()>) {
    match claim {
        Claim::Acquired(guard) => guard.complete(()).expect("complete"),
        other => panic!("a never-seen key was not acquired: {other:?}"),
    }
}

/// A group that claims never-seen keys, each handled by `check` (forgotten or completed).
fn new_keys(c: &mut Criterion, name: &str, check: fn(Claim<'_, ()>)) {
    let cfg = Config::from_env();
    let mut g = configure(c, name, &cfg);
    let mut store = None;
    for mode in [Mode::Single, Mode::Batched] {
        bench_store(&mut g, cfg, &mut store, mode, Filled::fresh_batch, check);
    }
    report_store(store);
    let mut map = None;
    bench_map(&mut g, cfg, &mut map, Filled::fresh_batch);
    report_map(map);
    g.finish();
}

fn unique(c: &mut Criterion) {
    new_keys(c, "unique", acquired_forgotten);
}

fn claim_complete(c: &mut Criterion) {
    new_keys(c, "claim_complete", acquired_completed);
}

fn duplicate(c: &mut Criterion) {
    let cfg = Config::from_env();
    let seq = AtomicU64::new(0);
    let mut g = configure(c, "duplicate", &cfg);
    let mut store = None;
    for mode in [Mode::Single, Mode::Batched] {
        let keys = |_: &mut Filled<Store<()>>| present_batch(&cfg, &seq);
        bench_store(&mut g, cfg, &mut store, mode, keys, replayed);
    }
    report_store(store);
    let mut map = None;
    bench_map(&mut g, cfg, &mut map, |_| present_batch(&cfg, &seq));
    if let Some(m) = &map {
        assert_eq!(m.value.len() as u64, cfg.keys, "dashmap took in a new key");
    }
    report_map(map);
    g.finish();
}

fn report_store(store: Option<Filled<Store<()>>>) {
    if let Some(f) = store {
        let s = f.value.stats();
        eprintln!(
            "  idemstore: filled {} times; ended with {} entries ({} acquired, {} replayed, \
             {:.1} accounted B/entry)",
            f.fills,
            s.entries,
            s.acquired,
            s.replayed,
            s.memory_bytes as f64 / s.entries.max(1) as f64
        );
    }
}

fn report_map(map: Option<Filled<Map>>) {
    if let Some(f) = map {
        eprintln!(
            "  dashmap: filled {} times; ended with {} entries",
            f.fills,
            f.value.len()
        );
    }
}

criterion_group!(benches, unique, duplicate, claim_complete);
criterion_main!(benches);
