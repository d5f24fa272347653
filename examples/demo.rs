//! idemstore at work: a payment service under retries and concurrent duplicates.
//!
//! `cargo run --release --example demo`
//!
//! 1. Four threads send payment requests; two in three are retries of earlier requests, and one
//!    attempt in twenty fails half way (its guard is dropped, which releases the key). Every
//!    payment is charged exactly once, and every duplicate gets the stored receipt.
//! 2. On a manual clock: an owner stalls past its lease, another caller takes the key over, and
//!    the stale owner's late result is refused (fencing).
//! 3. A quick look at claim throughput and memory on a dedup-only store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idemstore::{Claim, ClaimOptions, Clock, Error, Store};

const PAYMENTS: u64 = 20_000;
const THREADS: u64 = 4;
const REQUESTS_PER_THREAD: u64 = 15_000;

fn main() -> Result<(), Error> {
    payments()?;
    fencing()?;
    throughput()?;
    Ok(())
}

/// A tiny xorshift generator: the demo needs no cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn payments() -> Result<(), Error> {
    println!("== 1. payments under retries and duplicates ==");
    let store: Store<String> = Store::builder()
        .ttl(Duration::from_secs(86_400))
        .lease(Duration::from_secs(30))
        .build()?;
    let charges: Vec<AtomicU64> = (0..PAYMENTS).map(|_| AtomicU64::new(0)).collect();
    let outcomes = [(); 5].map(|_| AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (store, charges, outcomes) = (&store, &charges, &outcomes);
            s.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                for _ in 0..REQUESTS_PER_THREAD {
                    let id = rng.next() % PAYMENTS;
                    let key = format!("pay-{id}");
                    let body = format!("{{\"account\":{},\"amount\":{}}}", id % 97, id * 10);
                    let opts = ClaimOptions::new().scope("tenant-1").fingerprint(&body);
                    match store.claim_with(&key, &opts) {
                        Ok(Claim::Acquired(guard)) => {
                            if rng.next().is_multiple_of(20) {
                                // The charge failed before it happened: dropping the guard
                                // releases the key so a retry runs the work again.
                                drop(guard);
                                outcomes[4].fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            charges[id as usize].fetch_add(1, Ordering::Relaxed);
                            let receipt = format!("receipt {id} token {}", guard.token());
                            match guard.complete(receipt) {
                                Ok(()) => outcomes[0].fetch_add(1, Ordering::Relaxed),
                                Err(e) => panic!("lease of 30 s cannot run out here: {e}"),
                            };
                        }
                        Ok(Claim::Completed(replay)) => {
                            assert!(replay.value().starts_with(&format!("receipt {id} ")));
                            outcomes[1].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Claim::InProgress(_)) => {
                            outcomes[2].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Claim::Mismatch(_)) => {
                            outcomes[3].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let charged = charges
        .iter()
        .filter(|c| c.load(Ordering::Relaxed) > 0)
        .count();
    let twice = charges
        .iter()
        .filter(|c| c.load(Ordering::Relaxed) > 1)
        .count();
    let o: Vec<u64> = outcomes.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!(
        "{} requests in {elapsed:.2?}: {} charged, {} replayed, {} in progress, {} mismatched, {} failed and released",
        THREADS * REQUESTS_PER_THREAD,
        o[0],
        o[1],
        o[2],
        o[3],
        o[4]
    );
    println!("payments charged: {charged}, charged twice: {twice}");
    assert_eq!(twice, 0, "a payment was charged twice");
    let s = store.stats();
    println!(
        "stats: acquired {} replayed {} completions {} releases {} entries {}\n",
        s.acquired, s.replayed, s.completions, s.releases, s.entries
    );
    Ok(())
}

fn fencing() -> Result<(), Error> {
    println!("== 2. a stalled owner is fenced out ==");
    let (clock, hand) = Clock::manual();
    let store: Store<&'static str> = Store::builder()
        .lease(Duration::from_secs(10))
        .clock(clock)
        .build()?;
    let Claim::Acquired(slow) = store.claim("invoice-42")? else {
        unreachable!("a new key is acquired")
    };
    println!("owner A acquired invoice-42 with token {}", slow.token());
    if let Claim::InProgress(p) = store.claim("invoice-42")? {
        println!(
            "a duplicate sees it in progress: retry after {:?}",
            p.retry_after()
        );
    }
    hand.advance(Duration::from_secs(11));
    println!("11 s pass: A's lease has run out");
    let Claim::Acquired(fresh) = store.claim("invoice-42")? else {
        unreachable!("an expired lease is taken over")
    };
    println!(
        "owner B took over (takeover: {}) with token {}",
        fresh.is_takeover(),
        fresh.token()
    );
    fresh.complete("paid by B")?;
    match slow.complete("paid by A") {
        Err(Error::LeaseLost) => println!("A's late result is refused: LeaseLost"),
        other => unreachable!("a stale owner must be fenced out: {other:?}"),
    }
    if let Claim::Completed(r) = store.claim("invoice-42")? {
        println!("every duplicate now replays: {:?}\n", r.value());
    }
    Ok(())
}

fn throughput() -> Result<(), Error> {
    println!("== 3. dedup-only claims on 2 threads ==");
    let keys: u64 = 4_000_000;
    // Headroom over the key count: each shard holds max_entries / shards, and keys spread
    // unevenly over shards.
    let store: Store = Store::builder().max_entries(2 * keys as usize).build()?;
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let store = &store;
            s.spawn(move || {
                for i in (t..keys).step_by(2) {
                    if let Ok(Claim::Acquired(g)) = store.claim_id(u128::from(i)) {
                        let _ = g.complete(());
                    }
                }
            });
        }
    });
    let new_keys = started.elapsed();
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let store = &store;
            s.spawn(move || {
                for i in (t..keys).step_by(2) {
                    assert!(matches!(
                        store.claim_id(u128::from(i)),
                        Ok(Claim::Completed(_))
                    ));
                }
            });
        }
    });
    let replays = started.elapsed();
    let s = store.stats();
    println!(
        "{keys} new keys claimed and completed in {new_keys:.2?} ({:.1} M/s), then replayed in {replays:.2?} ({:.1} M/s)",
        keys as f64 / new_keys.as_secs_f64() / 1e6,
        keys as f64 / replays.as_secs_f64() / 1e6,
    );
    println!(
        "{} entries in {:.1} MB: {:.1} bytes per entry (engine-accounted)",
        s.entries,
        s.memory_bytes as f64 / 1e6,
        s.memory_bytes as f64 / s.entries as f64
    );
    println!("benchmarks with peers: cargo bench --bench claims; memory: cargo run --release --example memory");
    Ok(())
}
