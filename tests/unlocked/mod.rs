//! The scenario of replays outside the shard lock, shared by `tests/stress.rs` (reads fenced as
//! the machine allows: on Linux, a compiler barrier for the reader and `membarrier(2)` for the
//! rebuild) and `tests/fenced_reads.rs` (full fences on both sides, as where `membarrier` is
//! missing).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::thread;
use std::time::Duration;

use idemstore::{Claim, Clock, Store, MAX_SPAN};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// One thread per core, at least two.
pub fn threads() -> usize {
    thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2)
}

/// A key's life as the writers and checkers record it: before they complete or release it, so
/// a claim that sees that finds the record at least this far; a checker claims only keys its
/// writer has acquired.
const NEW: u8 = 0;
const OWNED: u8 = 1;
const COMPLETING: u8 = 2;
/// Taken over by a checker after its window ended, then released: never completed again.
const DEAD: u8 = 3;

/// Writers claim and complete fresh keys of a dedup-only store (whose replays read the table
/// without taking the shard lock, see the crate docs' design notes) that starts small, so its
/// tables are rebuilt again and again; one of them moves a manual clock so that windows end and
/// the wheel removes entries, whose slots new keys then reuse. Checkers meanwhile claim keys
/// at random among those written: a replay must be of a key whose owner had begun to complete
/// it, never of one still in flight or released, and never at or after its window's end.
pub fn replays_outside_the_lock_see_only_completed_unexpired_keys() {
    const TTL_MS: u64 = 40;
    let keys: usize = if cfg!(debug_assertions) {
        100_000
    } else {
        400_000
    };
    let writers = threads().div_ceil(2);
    let checkers = threads() - writers + 1;
    let (clock, hand) = Clock::manual();
    let store: Store = Store::builder()
        .clock(clock)
        .shards(4)
        .lease(MAX_SPAN)
        .ttl(Duration::from_millis(TTL_MS))
        .seed(17)
        .build()
        .unwrap();
    let state: Vec<AtomicU8> = (0..keys).map(|_| AtomicU8::new(NEW)).collect();
    let written = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let replays = AtomicU64::new(0);

    thread::scope(|s| {
        for w in 0..writers {
            let (store, state, written, hand) = (&store, &state, &written, &hand);
            s.spawn(move || {
                for k in (w..keys).step_by(writers) {
                    let Claim::Acquired(g) = store.claim_id(k as u128).unwrap() else {
                        panic!("key {k} is new");
                    };
                    // Checkers leave NEW keys alone, so none claims this one before its writer.
                    state[k].store(OWNED, Ordering::SeqCst);
                    if k % 7 == 0 {
                        thread::yield_now();
                    }
                    state[k].store(COMPLETING, Ordering::SeqCst);
                    g.complete(()).expect("no lease runs out");
                    written.fetch_max(k as u64, Ordering::Relaxed);
                    if w == 0 && k % 512 == 0 {
                        hand.advance(Duration::from_millis(1));
                    }
                }
            });
        }
        let checks: Vec<_> = (0..checkers)
            .map(|c| {
                let (store, state, written, done, replays) =
                    (&store, &state, &written, &done, &replays);
                s.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(0x5eed + c as u64);
                    let mut n = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        let top = written.load(Ordering::Relaxed) as usize;
                        // Mostly recent keys (live), sometimes old ones (expired).
                        let k = if rng.random_bool(0.8) {
                            top.saturating_sub(rng.random_range(0..2_000))
                        } else {
                            rng.random_range(0..=top)
                        };
                        if state[k].load(Ordering::SeqCst) == NEW {
                            // Not claimed by its writer yet: leave it to the writer.
                            continue;
                        }
                        let before = store.clock().now();
                        match store.claim_id(k as u128).unwrap() {
                            Claim::Completed(r) => {
                                let life = state[k].load(Ordering::SeqCst);
                                // A checker may have taken the key over since, once its
                                // window ended.
                                let ended = store.clock().now() >= r.expires_at();
                                assert!(
                                    life == COMPLETING || (life == DEAD && ended),
                                    "key {k} replayed in state {life}"
                                );
                                assert!(
                                    r.expires_at() > before,
                                    "key {k} replayed at {before:?}, its window ended at {:?}",
                                    r.expires_at()
                                );
                                n += 1;
                            }
                            Claim::InProgress(_) => {
                                // Its writer's, or a checker's that took it over (DEAD).
                                let life = state[k].load(Ordering::SeqCst);
                                assert_ne!(life, NEW, "key {k}");
                            }
                            Claim::Acquired(g) => {
                                // Only a key whose window ended (or one released by another
                                // checker after that) comes back; it stays dead.
                                let life = state[k].swap(DEAD, Ordering::SeqCst);
                                assert!(
                                    life == COMPLETING || life == DEAD,
                                    "key {k} acquired in state {life}"
                                );
                                drop(g);
                            }
                            Claim::Mismatch(m) => panic!("no fingerprints: {m:?}"),
                        }
                    }
                    replays.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        // The writers are the scope's other threads: wait for them by polling what they wrote.
        while written.load(Ordering::Relaxed) < (keys - writers) as u64 {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(20));
        done.store(true, Ordering::Relaxed);
        for c in checks {
            c.join().unwrap();
        }
    });
    let s = store.stats();
    assert!(
        s.table_rebuilds >= 4,
        "tables grew under the readers: {s:?}"
    );
    assert!(s.ttl_expiries > 0, "windows ended: {s:?}");
    assert!(replays.load(Ordering::Relaxed) > 1_000, "{s:?}");
    assert!(s.replayed >= replays.load(Ordering::Relaxed));
    let outside = store.__replays_outside_the_lock();
    assert!(
        outside > 100,
        "the replays this tests read outside the lock: {outside} of {}",
        s.replayed
    );
    eprintln!(
        "replays outside the lock: {} checked, {outside} read outside it; {s:?}",
        replays.load(Ordering::Relaxed)
    );
}
