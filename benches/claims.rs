//! Claim throughput of a dedup-only `Store<()>` beside the concurrent maps a user would
//! otherwise hand-roll dedup on — dashmap 6, scc 3, papaya 0.2 and moka 0.12 (each with
//! foldhash; `u128` keys, `u64` values) — on 2 threads, at 1 million and 10 million live keys.
//!
//! ```text
//! cargo bench --bench claims                                  # 1 M and 10 M live keys
//! IDEMSTORE_BENCH_KEYS=10000000 cargo bench --bench claims    # one size (a comma list works)
//! IDEMSTORE_BENCH_KEYS=200000 cargo bench --bench claims -- --quick   # smoke run
//! cargo bench --bench claims -- unique/                       # one group
//! IDEMSTORE_BENCH_PEERS=dashmap cargo bench --bench claims    # fewer peers (comma list)
//! IDEMSTORE_BENCH_CLOCK=precise cargo bench --bench claims    # Clock::precise, not the default
//! IDEMSTORE_BENCH_SHARDS=16 cargo bench --bench claims        # a shard count, not the default
//! IDEMSTORE_BENCH_PRESIZE=1 cargo bench --bench claims        # sized in advance: no growth
//! ```
//!
//! Groups, throughput in claims per second:
//! - `unique`: claims of never-seen keys. The guard is `mem::forget`-ten, so only the claim is
//!   timed: dropping it would release the key, which is extra work a real caller doesn't do (it
//!   completes instead). A `Guard` owns nothing but a borrow of the store, so forgetting it leaks
//!   nothing; the entry stays in flight until its 30 s lease runs out. Peers: insert-if-absent
//!   (`entry(k).or_insert(v)`, papaya's `get_or_insert`).
//! - `duplicate`: claims of keys completed in the store (every one a `Claim::Completed` replay),
//!   picked at random among the live keys; peers do a `get` of a present key.
//! - `claim_complete`: a claim of a never-seen key and its `complete(())`; peers do
//!   insert-if-absent (they have no second step).
//! - `hot_keys`: every thread claims the same 16 completed keys over and over (replays: since
//!   the twelfth session they read the table without the shard lock, see `readers.rs`; before,
//!   they took those keys' shard locks in write mode); peers do insert-if-absent of present keys
//!   (the dedup check, under the map's write lock), on a map that also holds the N live keys.
//! - `ttl_churn`: idemstore alone at steady state, claim + complete of new keys on a manual
//!   clock that moves ttl/N per new key, so keys expire exactly as fast as they arrive and N
//!   stay live: `ttl-1s` against `ttl-24h` on the same live count, to show the ttl's length
//!   costs nothing.
//!
//! `unique`, `duplicate` and `claim_complete` also have `idemstore-batch64`: the same work
//! through `Store::claim_id_batch`, 64 keys per call (each thread's share cut into batches of
//! 64), which prefetches the table memory of keys a few places ahead while it claims the
//! current one; and `idemstore-grouped1024`: through `Store::claim_id_batch_grouped`, 1024 keys
//! per call, claimed shard by shard (one lock hold per shard and call). `claim_complete` also has
//! two modes for a consumer that completes a poll's keys after their work: each call's keys
//! claimed grouped, then a pass over 4 MiB of other memory (the work, which moves the table's
//! lines out of the core's 2 MiB L2 cache; `IDEMSTORE_BENCH_WORK_KIB`, default 4096, 0 for no
//! work), then completed together by `Store::complete_batch` (`idemstore-grouped1024-together`:
//! one hold per shard and call again, the table memory prefetched) or one by one
//! (`idemstore-grouped1024-after`). Compare those two with each other.
//!
//! Each function fills its structure with N live keys (`IDEMSTORE_BENCH_KEYS`, default 1 and
//! 10 million; completed keys for idemstore) when it first runs (so a criterion filter skips the
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
//! The store uses the system clock, as a service would (`ttl_churn` excepted). The 30 s lease
//! deadlines of the filled keys come due 30 s after the fill; from then on, claims also refile
//! the wheel records of completed keys (8 per claim at most) until all are refiled. Keep
//! warm-up + measurement time under ~25 s (default 1 s + 5 s) to measure the store before that
//! wave.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use idemstore::{Claim, Clock, ManualClock, Store};

#[path = "../examples/common/keys.rs"]
mod keys;
use keys::{key, mix};

const THREADS: usize = 2;
const DEFAULT_KEYS: [u64; 2] = [1_000_000, 10_000_000];
const DEFAULT_BATCH: u64 = 200_000;
/// Live keys in test mode (`cargo test --benches`).
const TEST_KEYS: u64 = 20_000;
/// Keys every thread hammers in `hot_keys`.
const HOT_KEYS: u64 = 16;

type Hasher = foldhash::fast::RandomState;

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
    /// Whether structures are sized in advance for every key a run gives them
    /// (`IDEMSTORE_BENCH_PRESIZE=1`), so that no growth is measured.
    presize: bool,
}

impl Config {
    /// The capacity to create structures with: 0 (they grow), or every key a run gives them.
    fn presize(&self) -> usize {
        if self.presize {
            (self.keys + self.max_growth) as usize
        } else {
            0
        }
    }

    /// One configuration per live-key count asked for.
    fn from_env() -> Vec<Self> {
        // `cargo test --benches` runs each function once, without `--bench`: a small store
        // keeps that a quick check that the code runs.
        let bench_mode = std::env::args().any(|a| a == "--bench");
        let sizes: Vec<u64> = match std::env::var("IDEMSTORE_BENCH_KEYS") {
            Ok(list) => {
                list.split(',')
                    .map(|v| {
                        v.trim().replace('_', "").parse().unwrap_or_else(|_| {
                            panic!("IDEMSTORE_BENCH_KEYS: {v:?} is not a number")
                        })
                    })
                    .collect()
            }
            Err(_) if bench_mode => DEFAULT_KEYS.to_vec(),
            Err(_) => vec![TEST_KEYS],
        };
        sizes
            .into_iter()
            .map(|keys| {
                let keys = keys.max(HOT_KEYS);
                // Default: 200 000, or a tenth of the keys for small smoke runs.
                let batch = env_num("IDEMSTORE_BENCH_BATCH", DEFAULT_BATCH.min(keys / 10))
                    .max(THREADS as u64);
                let growth: f64 = env_num("IDEMSTORE_BENCH_MAX_GROWTH", 1.0);
                let max_growth = ((keys as f64 * growth) as u64).max(batch);
                Self {
                    keys,
                    batch,
                    max_growth,
                    presize: std::env::var("IDEMSTORE_BENCH_PRESIZE").is_ok_and(|v| v == "1"),
                }
            })
            .collect()
    }
}

/// The peers asked for (`IDEMSTORE_BENCH_PEERS`, default all).
fn wants(peer: &str) -> bool {
    std::env::var("IDEMSTORE_BENCH_PEERS").map_or(true, |list| list.split(',').any(|p| p == peer))
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

/// Like [`run_parallel`], but hands each thread its keys in batches of `size`, for
/// `Store::claim_id_batch` and `Store::claim_id_batch_grouped`.
fn run_parallel_batches(keys: &[u128], size: usize, op: impl Fn(&[u128]) + Sync) -> Duration {
    let chunk = keys.len().div_ceil(THREADS);
    let start = Instant::now();
    std::thread::scope(|s| {
        for part in keys.chunks(chunk) {
            let op = &op;
            s.spawn(move || part.chunks(size).for_each(op));
        }
    });
    start.elapsed()
}

/// Keys per `claim_id_batch` call: what a message consumer might receive at once.
const BATCH: usize = 64;
/// Keys per `claim_id_batch_grouped` call: a consumer's larger poll (Kafka's default
/// `max.poll.records` is 500), about eight keys per shard of a default store on two cores.
const GROUPED: usize = 1024;

fn new_store(cfg: &Config) -> Store<()> {
    let builder = Store::builder()
        // Far above what a run reaches, so no claim is ever refused.
        .max_entries(200_000_000.max(cfg.keys as usize * 4))
        .initial_capacity(cfg.presize())
        .ttl(Duration::from_secs(86_400))
        .lease(Duration::from_secs(30));
    let builder = match std::env::var("IDEMSTORE_BENCH_CLOCK").as_deref() {
        Ok("precise") => builder.clock(Clock::precise()),
        Ok("system") | Err(_) => builder,
        Ok(other) => panic!("IDEMSTORE_BENCH_CLOCK={other:?}: system or precise"),
    };
    match std::env::var("IDEMSTORE_BENCH_SHARDS") {
        Ok(_) => builder.shards(env_num("IDEMSTORE_BENCH_SHARDS", 0)),
        Err(_) => builder,
    }
    .build()
    .expect("store")
}

/// Claims and completes `keys` on 2 threads.
fn fill_store(store: &Store<()>, keys: &[u128]) -> Duration {
    run_parallel(keys, |k| match store.claim_id(k).expect("claim") {
        Claim::Acquired(g) => g.complete(()).expect("complete"),
        other => panic!("a fresh key was not acquired: {other:?}"),
    })
}

/// A concurrent map used the way a hand-rolled dedup would use it.
trait Peer: Sync + Sized {
    const NAME: &'static str;
    fn new(cfg: &Config) -> Self;
    /// Inserts `k` unless present; returns the value now under `k`.
    fn insert_if_absent(&self, k: u128) -> u64;
    fn get(&self, k: u128) -> Option<u64>;
    fn len(&self) -> usize;

    fn fill(&self, keys: &[u128]) -> Duration {
        run_parallel(keys, |k| {
            self.insert_if_absent(k);
        })
    }
}

impl Peer for dashmap::DashMap<u128, u64, Hasher> {
    const NAME: &'static str = "dashmap";
    fn new(cfg: &Config) -> Self {
        Self::with_capacity_and_hasher(cfg.presize(), Hasher::default())
    }
    fn insert_if_absent(&self, k: u128) -> u64 {
        *self.entry(k).or_insert(k as u64)
    }
    fn get(&self, k: u128) -> Option<u64> {
        dashmap::DashMap::get(self, &k).map(|v| *v)
    }
    fn len(&self) -> usize {
        dashmap::DashMap::len(self)
    }
}

impl Peer for scc::HashMap<u128, u64, Hasher> {
    const NAME: &'static str = "scc";
    fn new(cfg: &Config) -> Self {
        Self::with_capacity_and_hasher(cfg.presize(), Hasher::default())
    }
    fn insert_if_absent(&self, k: u128) -> u64 {
        *self.entry_sync(k).or_insert(k as u64).get()
    }
    fn get(&self, k: u128) -> Option<u64> {
        self.read_sync(&k, |_, v| *v)
    }
    fn len(&self) -> usize {
        scc::HashMap::len(self)
    }
}

impl Peer for papaya::HashMap<u128, u64, Hasher> {
    const NAME: &'static str = "papaya";
    fn new(cfg: &Config) -> Self {
        Self::with_capacity_and_hasher(cfg.presize(), Hasher::default())
    }
    fn insert_if_absent(&self, k: u128) -> u64 {
        *self.pin().get_or_insert(k, k as u64)
    }
    fn get(&self, k: u128) -> Option<u64> {
        self.pin().get(&k).copied()
    }
    fn len(&self) -> usize {
        papaya::HashMap::len(self)
    }
}

impl Peer for moka::sync::Cache<u128, u64, Hasher> {
    const NAME: &'static str = "moka";
    fn new(_: &Config) -> Self {
        // Unbounded, no expiry policy: the cheapest moka there is.
        moka::sync::Cache::builder().build_with_hasher(Hasher::default())
    }
    fn insert_if_absent(&self, k: u128) -> u64 {
        self.entry(k).or_insert(k as u64).into_value()
    }
    fn get(&self, k: u128) -> Option<u64> {
        moka::sync::Cache::get(self, &k)
    }
    fn len(&self) -> usize {
        self.run_pending_tasks();
        self.entry_count() as usize
    }
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

/// A batch of the [`HOT_KEYS`] first filled keys, round robin.
fn hot_batch(cfg: &Config) -> Vec<u128> {
    (0..cfg.batch).map(|i| key(i % HOT_KEYS)).collect()
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn configure<'a>(c: &'a mut Criterion, name: &str, cfg: &Config) -> Group<'a> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(cfg.batch));
    g
}

/// How the idemstore functions hand keys to the store.
#[derive(Clone, Copy)]
enum Mode {
    /// `claim_id`, one key at a time.
    Single,
    /// `claim_id_batch`, [`BATCH`] keys per call.
    Batched,
    /// `claim_id_batch_grouped`, [`GROUPED`] keys per call.
    Grouped,
    /// `claim_id_batch_grouped`, [`GROUPED`] keys per call, then [`work`], then
    /// `complete_batch` of the keys acquired (only for `claim_complete`: the claims must all
    /// be acquired).
    Together,
    /// As `Together`, the keys completed one by one after the work instead.
    After,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Single, Mode::Batched, Mode::Grouped];
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
        Mode::Grouped => "idemstore-grouped1024",
        Mode::Together => "idemstore-grouped1024-together",
        Mode::After => "idemstore-grouped1024-after",
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
                    Mode::Batched => run_parallel_batches(&keys, BATCH, |batch| {
                        s.claim_id_batch(batch, |_, claim| check(claim.expect("claim")))
                    }),
                    Mode::Grouped => run_parallel_batches(&keys, GROUPED, |batch| {
                        s.claim_id_batch_grouped(batch, |_, claim| check(claim.expect("claim")))
                    }),
                    Mode::Together | Mode::After => run_parallel_batches(&keys, GROUPED, |batch| {
                        let mut owned = Vec::with_capacity(batch.len());
                        s.claim_id_batch_grouped(batch, |_, claim| match claim.expect("claim") {
                            Claim::Acquired(guard) => owned.push(guard),
                            other => panic!("a never-seen key was not acquired: {other:?}"),
                        });
                        work();
                        if matches!(mode, Mode::Together) {
                            let done = owned.into_iter().map(|guard| (guard, ()));
                            s.complete_batch(done, |_, result| result.expect("complete"));
                        } else {
                            for guard in owned {
                                guard.complete(()).expect("complete");
                            }
                        }
                    }),
                };
            }
            total
        })
    });
}

/// What a peer does with each key of a batch.
#[derive(Clone, Copy)]
enum PeerOp {
    InsertIfAbsent,
    /// A `get` of a key that must be present.
    Get,
}

/// Benchmarks peer `P` on `keys` batches, if it was asked for.
fn bench_peer<P: Peer>(
    g: &mut Group<'_>,
    cfg: Config,
    op: PeerOp,
    mut keys: impl FnMut(&mut Filled<P>) -> Vec<u128>,
) {
    if !wants(P::NAME) {
        return;
    }
    let mut map: Option<Filled<P>> = None;
    g.bench_function(BenchmarkId::new(P::NAME, cfg.keys), |b| {
        let map = map.get_or_insert_with(|| Filled::new(cfg, P::NAME, P::new, P::fill));
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let keys = keys(map);
                let m = &map.value;
                total += run_parallel(&keys, |k| match op {
                    PeerOp::InsertIfAbsent => {
                        black_box(m.insert_if_absent(k));
                    }
                    PeerOp::Get => {
                        black_box(m.get(k).expect("a present key"));
                    }
                });
            }
            total
        })
    });
    if let Some(f) = map {
        eprintln!(
            "  {}: filled {} times; ended with {} entries",
            P::NAME,
            f.fills,
            f.value.len()
        );
    }
}

/// Runs `bench_peer` for every peer type.
fn bench_peers(g: &mut Group<'_>, cfg: Config, op: PeerOp, keys: fn(&Config) -> Option<Vec<u128>>) {
    // `keys` gives the batch, or `None` for the structure's own batch of never-seen keys.
    macro_rules! peer {
        ($t:ty) => {
            bench_peer::<$t>(g, cfg, op, |f: &mut Filled<$t>| {
                keys(&cfg).unwrap_or_else(|| f.fresh_batch())
            })
        };
    }
    peer!(dashmap::DashMap<u128, u64, Hasher>);
    peer!(scc::HashMap<u128, u64, Hasher>);
    peer!(papaya::HashMap<u128, u64, Hasher>);
    peer!(moka::sync::Cache<u128, u64, Hasher>);
}

/// A never-seen key's claim, not completed: forgotten, not dropped, since dropping would
/// release the key (extra work a real caller does not do).
#[inline(always)]
fn acquired_forgotten(claim: Claim<'_, ()>) {
    match claim {
        Claim::Acquired(guard) => std::mem::forget(guard),
        other => panic!("a never-seen key was not acquired: {other:?}"),
    }
}

#[inline(always)]
fn replayed(claim: Claim<'_, ()>) {
    match claim {
        Claim::Completed(replay) => {
            black_box(replay.value());
        }
        other => panic!("a completed key did not replay: {other:?}"),
    }
}

#[inline(always)]
fn acquired_completed(claim: Claim<'_, ()>) {
    match claim {
        Claim::Acquired(guard) => guard.complete(()).expect("complete"),
        other => panic!("a never-seen key was not acquired: {other:?}"),
    }
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

/// Peers' keys for the groups that add new keys: the structure's own fresh batch.
fn fresh(_: &Config) -> Option<Vec<u128>> {
    None
}

/// A group that claims never-seen keys, each handled by `check` (forgotten or completed).
fn new_keys(
    c: &mut Criterion,
    name: &str,
    modes: &[Mode],
    check: impl for<'s> Fn(Claim<'s, ()>) + Sync + Copy,
) {
    for cfg in Config::from_env() {
        let mut g = configure(c, name, &cfg);
        let mut store = None;
        for &mode in modes {
            bench_store(&mut g, cfg, &mut store, mode, Filled::fresh_batch, check);
        }
        report_store(store);
        bench_peers(&mut g, cfg, PeerOp::InsertIfAbsent, fresh);
        g.finish();
    }
}

fn unique(c: &mut Criterion) {
    new_keys(c, "unique", &Mode::ALL, acquired_forgotten);
}

fn claim_complete(c: &mut Criterion) {
    let modes = [
        Mode::Single,
        Mode::Batched,
        Mode::Grouped,
        Mode::Together,
        Mode::After,
    ];
    new_keys(c, "claim_complete", &modes, acquired_completed);
}

static PICK: AtomicU64 = AtomicU64::new(0);

/// A consumer's work between claiming a poll's keys and completing them: a read of one word
/// per line of 4 MiB (`IDEMSTORE_BENCH_WORK_KIB`; made once, shared by the threads), twice this
/// machine's L2 cache per core, so the lines of the table the claims touched are no longer in
/// it.
fn work() {
    static MEMORY: OnceLock<Box<[u64]>> = OnceLock::new();
    let memory = MEMORY.get_or_init(|| {
        let kib: usize = env_num("IDEMSTORE_BENCH_WORK_KIB", 4096);
        vec![1; kib << 10 >> 3].into_boxed_slice()
    });
    black_box(memory.iter().step_by(8).sum::<u64>());
}

fn duplicate(c: &mut Criterion) {
    for cfg in Config::from_env() {
        let mut g = configure(c, "duplicate", &cfg);
        let mut store = None;
        for mode in Mode::ALL {
            let keys = |_: &mut Filled<Store<()>>| present_batch(&cfg, &PICK);
            bench_store(&mut g, cfg, &mut store, mode, keys, replayed);
        }
        report_store(store);
        bench_peers(&mut g, cfg, PeerOp::Get, |cfg| {
            Some(present_batch(cfg, &PICK))
        });
        g.finish();
    }
}

fn hot_keys(c: &mut Criterion) {
    for cfg in Config::from_env() {
        let mut g = configure(c, "hot_keys", &cfg);
        let mut store = None;
        let keys = |_: &mut Filled<Store<()>>| hot_batch(&cfg);
        bench_store(&mut g, cfg, &mut store, Mode::Single, keys, replayed);
        report_store(store);
        bench_peers(&mut g, cfg, PeerOp::InsertIfAbsent, |cfg| {
            Some(hot_batch(cfg))
        });
        g.finish();
    }
}

/// A store at steady state on a manual clock: `cfg.keys` live, each new key moving the clock
/// by ttl / keys, so the oldest key expires as each new one arrives.
struct Churn {
    store: Store<()>,
    hand: ManualClock,
    /// Clock time per new key, in ns.
    step: u64,
    next: u64,
}

/// Keys a thread claims between two moves of the shared manual clock.
const CLOCK_CHUNK: usize = 1024;

impl Churn {
    fn new(cfg: &Config, ttl: Duration) -> Self {
        let (clock, hand) = Clock::manual();
        let store = Store::builder()
            .max_entries(cfg.keys as usize * 2 + 100_000)
            .ttl(ttl)
            // As long as the ttl: a thread moves the shared clock by a chunk of keys' worth
            // (minutes at a 24 h ttl) between another thread's claim and its complete, and a
            // shorter lease would run out in between.
            .lease(ttl)
            .clock(clock)
            .build()
            .expect("store");
        let step = (ttl.as_nanos() / u128::from(cfg.keys)) as u64;
        let mut churn = Self {
            store,
            hand,
            step: step.max(1),
            next: 0,
        };
        // Two windows of keys: the first fills the store, the second reaches steady state
        // (every key of the first expired and reclaimed as the second came in).
        let fill: Vec<u128> = (0..cfg.keys * 2).map(key).collect();
        let took = churn.run(&fill);
        eprintln!(
            "  ttl {ttl:?}: steady state after {} keys in {took:.2?}; {} live",
            fill.len(),
            churn.store.len()
        );
        churn.next = cfg.keys * 2;
        churn
    }

    /// Claims and completes `keys` on 2 threads, moving the clock as they go.
    fn run(&self, keys: &[u128]) -> Duration {
        let chunk = keys.len().div_ceil(THREADS);
        let start = Instant::now();
        std::thread::scope(|s| {
            for part in keys.chunks(chunk) {
                s.spawn(move || {
                    for run in part.chunks(CLOCK_CHUNK) {
                        self.hand
                            .advance(Duration::from_nanos(self.step * run.len() as u64));
                        for &k in run {
                            acquired_completed(self.store.claim_id(k).expect("claim"));
                        }
                    }
                });
            }
        });
        start.elapsed()
    }
}

fn ttl_churn(c: &mut Criterion) {
    for cfg in Config::from_env() {
        let mut g = configure(c, "ttl_churn", &cfg);
        for (name, ttl) in [
            ("ttl-1s", Duration::from_secs(1)),
            ("ttl-24h", Duration::from_secs(86_400)),
        ] {
            let mut churn = None;
            g.bench_function(BenchmarkId::new(name, cfg.keys), |b| {
                let churn = churn.get_or_insert_with(|| Churn::new(&cfg, ttl));
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let lo = churn.next;
                        churn.next += cfg.batch;
                        let keys: Vec<u128> = (lo..churn.next).map(key).collect();
                        total += churn.run(&keys);
                    }
                    total
                })
            });
            if let Some(ch) = churn {
                let s = ch.store.stats();
                eprintln!(
                    "  {name}: {} live at the end, {} ttl expiries, {:.1} accounted B/entry",
                    s.entries,
                    s.ttl_expiries,
                    s.memory_bytes as f64 / s.entries.max(1) as f64
                );
            }
        }
        g.finish();
    }
}

criterion_group!(
    benches,
    unique,
    duplicate,
    claim_complete,
    hot_keys,
    ttl_churn
);
criterion_main!(benches);
