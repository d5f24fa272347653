//! Stress tests with real threads: one per core (at least two), all on one store.
//!
//! - `million_claims_acquire_each_key_exactly_once`: 1,000,000 claims over 1,000 keys from every
//!   thread on a dedup-only store with the system clock; exactly one `Acquired` per key.
//! - `grouped_batches_acquire_each_key_exactly_once`: every thread claims the same 200,000 ids
//!   in grouped batches (`claim_id_batch_grouped`), each from its own starting point, into a
//!   store that grows (tables rebuilt while batches hold shard locks); exactly one `Acquired`
//!   per id, every outcome handed out once.
//! - `forced_takeovers_never_let_a_stale_owner_win`: short leases on a manual clock that threads
//!   push past each other's leases, so guards go stale while their owners work; per key and per
//!   dedup window exactly one completion succeeds, it is the newest owner's, and every replay
//!   returns it.
//! - `replays_outside_the_lock_see_only_completed_unexpired_keys`: a dedup-only store whose
//!   replays read the table without the shard lock, while writers fill it (tables rebuilt
//!   under the readers' feet), windows end, keys expire, are taken over and released (the
//!   scenario is in `unlocked/`; `tests/fenced_reads.rs` runs it with full fences on both
//!   sides of the readers' handshake).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use idemstore::{Claim, Clock, Error, Store, MAX_SPAN};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use unlocked::threads;

// ---------------------------------------------------------------------------------------------
// One million claims, one thousand keys
// ---------------------------------------------------------------------------------------------

#[test]
fn million_claims_acquire_each_key_exactly_once() {
    const KEYS: usize = 1_000;
    const CLAIMS: usize = 1_000_000;
    let threads = threads();
    let store: Store = Store::builder()
        .lease(Duration::from_secs(3_600))
        .ttl(Duration::from_secs(86_400))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("order-{i:04}")).collect();
    let completions: Vec<AtomicU32> = (0..KEYS).map(|_| AtomicU32::new(0)).collect();
    let acquired = AtomicU64::new(0);
    let busy = AtomicU64::new(0);
    let replayed = AtomicU64::new(0);
    let start = Instant::now();
    let barrier = Barrier::new(threads);

    thread::scope(|s| {
        for t in 0..threads {
            let (store, keys, completions) = (&store, &keys, &completions);
            let (acquired, busy, replayed, barrier) = (&acquired, &busy, &replayed, &barrier);
            s.spawn(move || {
                // Every thread claims every key. The first sweep runs in the same order on all
                // threads, so they race for each fresh key; later sweeps start at different
                // points and half of them run backwards.
                let n = CLAIMS / threads + usize::from(t < CLAIMS % threads);
                let offset = t * KEYS / threads;
                let (mut a, mut b, mut r) = (0u64, 0u64, 0u64);
                barrier.wait();
                for j in 0..n {
                    let k = if j < KEYS {
                        j
                    } else if t % 2 == 0 {
                        (j + offset) % KEYS
                    } else {
                        (KEYS - 1) - (j + offset) % KEYS
                    };
                    match store.claim(&keys[k]).expect("valid key") {
                        Claim::Acquired(g) => {
                            assert!(!g.is_takeover(), "no lease runs out in this test");
                            // A moment of "work", so duplicates find the key in flight.
                            thread::yield_now();
                            g.complete(())
                                .expect("the owner of a one-hour lease completes");
                            let before = completions[k].fetch_add(1, Ordering::Relaxed);
                            assert_eq!(before, 0, "key {k} completed twice");
                            a += 1;
                        }
                        Claim::InProgress(_) => b += 1,
                        Claim::Completed(_) => r += 1,
                        Claim::Mismatch(m) => panic!("no fingerprints were given: {m:?}"),
                    }
                }
                acquired.fetch_add(a, Ordering::Relaxed);
                busy.fetch_add(b, Ordering::Relaxed);
                replayed.fetch_add(r, Ordering::Relaxed);
            });
        }
    });
    let elapsed = start.elapsed();

    let acquired = acquired.into_inner();
    let (busy, replayed) = (busy.into_inner(), replayed.into_inner());
    assert_eq!(acquired, KEYS as u64, "exactly one Acquired per key");
    assert_eq!(acquired + busy + replayed, CLAIMS as u64);
    for (k, c) in completions.iter().enumerate() {
        assert_eq!(c.load(Ordering::Relaxed), 1, "key {k}");
    }
    let s = store.stats();
    assert_eq!(s.acquired, KEYS as u64);
    assert_eq!(s.takeovers, 0);
    assert_eq!(s.completions, KEYS as u64);
    assert_eq!(s.releases, 0);
    assert_eq!(s.in_progress, busy);
    assert_eq!(s.replayed, replayed);
    assert_eq!(s.mismatched + s.rejected, 0);
    assert_eq!(store.len(), KEYS);
    for key in &keys {
        assert!(store.claim(key).unwrap().is_completed(), "{key}");
    }
    eprintln!(
        "{CLAIMS} claims on {threads} threads in {elapsed:?} ({:.0} claims/s); {busy} in \
         progress, {replayed} replayed",
        CLAIMS as f64 / elapsed.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Grouped batches
// ---------------------------------------------------------------------------------------------

#[test]
fn grouped_batches_acquire_each_key_exactly_once() {
    grouped_batches(false);
}

/// As above, each batch's acquired keys completed afterwards, together
/// ([`Store::complete_batch`]), while the other threads claim them.
#[test]
fn grouped_batches_completed_together_acquire_each_key_exactly_once() {
    grouped_batches(true);
}

/// Every thread claims all the ids in grouped batches, from its own starting point; each
/// acquired key is completed in the callback, or (`together`) with the rest of its batch's.
fn grouped_batches(together: bool) {
    const IDS: usize = 200_000;
    const BATCH: usize = 1_000;
    let threads = threads();
    let store: Store = Store::builder()
        .shards(16)
        .initial_capacity(1_000)
        .lease(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let ids: Vec<u128> = (0..IDS as u128)
        .map(|i| i * 0x9E37_79B9_7F4A_7C15)
        .collect();
    let completions: Vec<AtomicU32> = (0..IDS).map(|_| AtomicU32::new(0)).collect();
    let acquired = AtomicU64::new(0);
    let barrier = Barrier::new(threads);
    thread::scope(|s| {
        for t in 0..threads {
            let (store, ids, completions) = (&store, &ids, &completions);
            let (acquired, barrier) = (&acquired, &barrier);
            s.spawn(move || {
                // Thread t starts t / threads of the way in and wraps around.
                let start = t * IDS / threads / BATCH * BATCH;
                let mut handed = vec![0u8; BATCH];
                barrier.wait();
                for b in 0..IDS / BATCH {
                    let from = (start + b * BATCH) % IDS;
                    let batch = &ids[from..from + BATCH];
                    handed.fill(0);
                    let mut owned = Vec::new();
                    store.claim_id_batch_grouped(batch, |i, claim| {
                        handed[i] += 1;
                        match claim.expect("an id is always valid") {
                            Claim::Acquired(g) => {
                                assert!(!g.is_takeover(), "no lease runs out in this test");
                                let before = completions[from + i].fetch_add(1, Ordering::Relaxed);
                                assert_eq!(before, 0, "id {} acquired twice", from + i);
                                acquired.fetch_add(1, Ordering::Relaxed);
                                if together {
                                    owned.push((g, ()));
                                } else {
                                    g.complete(()).expect("the owner completes");
                                }
                            }
                            Claim::InProgress(_) | Claim::Completed(_) => {}
                            Claim::Mismatch(m) => panic!("no fingerprints were given: {m:?}"),
                        }
                    });
                    assert!(
                        handed.iter().all(|&n| n == 1),
                        "every outcome handed out once"
                    );
                    let mut done = 0;
                    let n = owned.len();
                    store.complete_batch(owned, |_, result| {
                        result.expect("the owner completes");
                        done += 1;
                    });
                    assert_eq!(done, n, "every completion handed out");
                }
            });
        }
    });
    assert_eq!(
        acquired.into_inner(),
        IDS as u64,
        "exactly one Acquired per id"
    );
    assert!(completions.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    let stats = store.stats();
    assert_eq!(stats.acquired, IDS as u64);
    assert_eq!(stats.completions, IDS as u64);
    assert!(
        stats.table_rebuilds > 0,
        "tables grew while batches claimed"
    );
    assert_eq!(store.len(), IDS);
    store.claim_id_batch_grouped(&ids, |i, claim| {
        assert!(claim.unwrap().is_completed(), "id {i} replays");
    });
}

// ---------------------------------------------------------------------------------------------
// Forced takeovers
// ---------------------------------------------------------------------------------------------

const LEASE: Duration = Duration::from_millis(2);
/// Long enough that no window ends inside a round; rounds end windows by advancing the clock.
const TTL: Duration = Duration::from_secs(3_600);
const HOT_KEYS: usize = 4;

/// What one thread saw, for the checks after the run.
#[derive(Debug, Clone, Copy)]
enum Event {
    Acquired {
        round: usize,
        key: usize,
        token: u64,
        takeover: bool,
    },
    /// A complete() that returned Ok.
    Completed {
        round: usize,
        key: usize,
        value: u64,
    },
    /// A complete(), release() or extend() that returned Err(LeaseLost).
    Lost,
    /// A release() that returned Ok.
    Released,
    Replayed {
        round: usize,
        key: usize,
        value: u64,
    },
    Claimed,
}

/// The value a guard completes with: who wrote it, under which token.
fn encode(thread: usize, token: u64) -> u64 {
    ((thread as u64) << 48) | token
}

#[test]
fn forced_takeovers_never_let_a_stale_owner_win() {
    let rounds = if cfg!(debug_assertions) {
        50_000
    } else {
        200_000
    };
    let threads = threads();
    let (clock, hand) = Clock::manual();
    let store: Store<u64> = Store::builder()
        .clock(clock)
        .lease(LEASE)
        .ttl(TTL)
        .shards(2)
        .seed(99)
        .build()
        .unwrap();
    let barrier = Barrier::new(threads);
    let done = AtomicBool::new(false);
    let start = Instant::now();

    let logs: Vec<Vec<Event>> = thread::scope(|s| {
        // Reclaims expired leases under the workers' feet, so some takeovers find the old
        // entry gone (reported as plain acquisitions) and the table is rebuilt concurrently.
        let maintainer = s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                store.run_maintenance();
                thread::yield_now();
            }
        });
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (store, hand, barrier) = (&store, &hand, &barrier);
                s.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(0xabc0 + t as u64);
                    let mut log = Vec::new();
                    let keys: Vec<String> = (0..HOT_KEYS).map(|k| format!("hot-{k}")).collect();
                    for round in 0..rounds {
                        // The leader ends the previous round's windows while nobody claims.
                        barrier.wait();
                        if t == 0 {
                            hand.advance(TTL + LEASE);
                        }
                        barrier.wait();
                        let mut pending: Vec<usize> = (0..HOT_KEYS).collect();
                        let mut spins = 0u64;
                        while !pending.is_empty() {
                            spins += 1;
                            assert!(spins < 5_000_000, "round {round} makes no progress");
                            let i = rng.random_range(0..pending.len());
                            let key = pending[i];
                            let claim = store.claim(&keys[key]).expect("valid key");
                            log.push(Event::Claimed);
                            match claim {
                                Claim::Acquired(mut g) => {
                                    let token = g.token();
                                    log.push(Event::Acquired {
                                        round,
                                        key,
                                        token,
                                        takeover: g.is_takeover(),
                                    });
                                    let value = encode(t, token);
                                    match rng.random_range(0..20) {
                                        // Stall: our own lease runs out before we finish.
                                        0..=2 => {
                                            hand.advance(LEASE);
                                            assert_eq!(
                                                g.complete(value),
                                                Err(Error::LeaseLost),
                                                "a guard whose lease ran out completed"
                                            );
                                            log.push(Event::Lost);
                                        }
                                        3 => match g.release() {
                                            Ok(()) => log.push(Event::Released),
                                            Err(e) => {
                                                assert_eq!(e, Error::LeaseLost);
                                                log.push(Event::Lost);
                                            }
                                        },
                                        4 => drop(g),
                                        n => {
                                            if n == 5 {
                                                if let Err(e) = g.extend(LEASE) {
                                                    assert_eq!(e, Error::LeaseLost);
                                                    log.push(Event::Lost);
                                                }
                                            }
                                            match g.complete(value) {
                                                Ok(()) => {
                                                    log.push(Event::Completed { round, key, value })
                                                }
                                                Err(e) => {
                                                    assert_eq!(e, Error::LeaseLost);
                                                    log.push(Event::Lost);
                                                }
                                            }
                                        }
                                    }
                                }
                                Claim::InProgress(p) => {
                                    // Sometimes the owner "stalls" from the outside: push the
                                    // clock past its lease so the next claim takes over.
                                    if rng.random_range(0..10) == 0 {
                                        hand.advance(p.retry_after());
                                    } else {
                                        thread::yield_now();
                                    }
                                }
                                Claim::Completed(r) => {
                                    log.push(Event::Replayed {
                                        round,
                                        key,
                                        value: *r.value(),
                                    });
                                    pending.swap_remove(i);
                                }
                                Claim::Mismatch(m) => panic!("no fingerprints: {m:?}"),
                            }
                        }
                    }
                    log
                })
            })
            .collect();
        let logs = workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        maintainer.join().unwrap();
        logs
    });
    let elapsed = start.elapsed();

    // Per (round, key): every token handed out, the successful completions, the replays.
    #[derive(Default)]
    struct Window {
        tokens: Vec<u64>,
        completed: Vec<u64>,
        replays: Vec<u64>,
    }
    let mut windows: HashMap<(usize, usize), Window> = HashMap::new();
    let (mut claims, mut acquisitions, mut takeovers, mut lost, mut released, mut ok) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for e in logs.iter().flatten() {
        match *e {
            Event::Claimed => claims += 1,
            Event::Acquired {
                round,
                key,
                token,
                takeover,
            } => {
                acquisitions += 1;
                takeovers += u64::from(takeover);
                windows.entry((round, key)).or_default().tokens.push(token);
            }
            Event::Completed { round, key, value } => {
                ok += 1;
                windows
                    .entry((round, key))
                    .or_default()
                    .completed
                    .push(value);
            }
            Event::Replayed { round, key, value } => {
                windows.entry((round, key)).or_default().replays.push(value);
            }
            Event::Lost => lost += 1,
            Event::Released => released += 1,
        }
    }
    assert_eq!(windows.len(), rounds * HOT_KEYS);
    let mut last_max = [0u64; HOT_KEYS];
    for round in 0..rounds {
        for (key, last) in last_max.iter_mut().enumerate() {
            let w = &windows[&(round, key)];
            assert_eq!(
                w.completed.len(),
                1,
                "round {round} key {key}: exactly one complete() succeeds per window, got {:x?}",
                w.completed
            );
            let winner = w.completed[0];
            let max_token = *w.tokens.iter().max().unwrap();
            assert_eq!(
                winner & ((1 << 48) - 1),
                max_token,
                "round {round} key {key}: the completion that stands is the newest owner's \
                 (tokens {:?})",
                w.tokens
            );
            let mut sorted = w.tokens.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), w.tokens.len(), "a token was handed out twice");
            assert!(
                sorted[0] > *last,
                "round {round} key {key}: tokens must keep increasing across windows"
            );
            *last = max_token;
            assert!(!w.replays.is_empty());
            for &r in &w.replays {
                assert_eq!(
                    r, winner,
                    "round {round} key {key}: a replay of another value"
                );
            }
        }
    }
    assert!(takeovers > 0, "the test forced no takeover");
    assert!(lost > 0, "no guard went stale");

    let s = store.stats();
    assert_eq!(s.acquired + s.takeovers, acquisitions);
    assert_eq!(s.takeovers, takeovers);
    assert_eq!(s.completions, ok);
    assert_eq!(ok, (rounds * HOT_KEYS) as u64);
    assert!(s.releases >= released, "{} < {released}", s.releases);
    assert_eq!(
        s.acquired + s.takeovers + s.in_progress + s.replayed + s.mismatched + s.rejected,
        claims,
        "every claim is counted under one outcome"
    );
    eprintln!(
        "{rounds} rounds × {HOT_KEYS} keys on {threads} threads in {elapsed:?}: {claims} claims, \
         {acquisitions} acquisitions, {takeovers} takeovers, {lost} stale guard operations"
    );
}

// ---------------------------------------------------------------------------------------------
// A full store under churn
// ---------------------------------------------------------------------------------------------

/// What one churning thread saw: the (key, value) pairs it completed and those it was replayed,
/// and how many of its claims were refused.
type Churn = (Vec<(usize, u64)>, Vec<(usize, u64)>, u64);

/// Many threads claim more keys than a one-shard store holds, while a ticker ends dedup
/// windows: the store refuses what it cannot hold, never holds more than `max_entries`, never
/// takes a key from its live owner, and replays only values that were really completed.
#[test]
fn a_full_store_under_churn_stays_bounded_and_never_evicts_an_owner() {
    const MAX: usize = 16;
    const KEYS: usize = 64;
    let iterations = if cfg!(debug_assertions) {
        100_000
    } else {
        500_000
    };
    let threads = threads();
    let (clock, hand) = Clock::manual();
    let store: Store<u64> = Store::builder()
        .clock(clock)
        .shards(1)
        .max_entries(MAX)
        // No lease runs out however far the ticker moves the clock.
        .lease(MAX_SPAN)
        .ttl(Duration::from_millis(10))
        .seed(5)
        .build()
        .unwrap();
    let done = AtomicBool::new(false);
    let keys: Vec<String> = (0..KEYS).map(|k| format!("churn-{k}")).collect();

    let results: Vec<Churn> = thread::scope(|s| {
        let ticker = s.spawn(|| {
            let mut ticks = 0u64;
            while !done.load(Ordering::Relaxed) {
                hand.advance(Duration::from_millis(1));
                ticks += 1;
                assert!(store.len() <= MAX, "the store holds more than max_entries");
                if ticks.is_multiple_of(16) {
                    store.run_maintenance();
                }
                thread::yield_now();
            }
            ticks
        });
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (store, keys) = (&store, &keys);
                s.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(0xc0ffee + t as u64);
                    let (mut completed, mut replayed, mut refused) = (Vec::new(), Vec::new(), 0);
                    for _ in 0..iterations {
                        let k = rng.random_range(0..KEYS);
                        match store.claim(&keys[k]) {
                            Ok(Claim::Acquired(g)) => {
                                let value = encode(t, g.token());
                                if rng.random_range(0..10) == 0 {
                                    g.release().expect("the lease does not run out");
                                } else {
                                    g.complete(value).expect("the lease does not run out");
                                    completed.push((k, value));
                                }
                            }
                            Ok(Claim::Completed(r)) => replayed.push((k, *r.value())),
                            Ok(Claim::InProgress(_)) => {}
                            Ok(Claim::Mismatch(m)) => panic!("no fingerprints: {m:?}"),
                            Err(Error::CapacityExceeded { limit }) => {
                                assert_eq!(limit, MAX);
                                refused += 1;
                            }
                            Err(e) => panic!("unexpected error {e:?}"),
                        }
                    }
                    (completed, replayed, refused)
                })
            })
            .collect();
        let results = workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        ticker.join().unwrap();
        results
    });

    let mut written: HashSet<(usize, u64)> = HashSet::new();
    let mut refused = 0;
    for (completed, _, r) in &results {
        refused += r;
        for &c in completed {
            assert!(written.insert(c), "one value completed twice: {c:?}");
        }
    }
    for (_, replayed, _) in &results {
        for r in replayed {
            assert!(
                written.contains(r),
                "replayed {r:x?}, which no owner completed for that key"
            );
        }
    }
    let s = store.stats();
    assert_eq!(s.rejected, refused);
    assert_eq!(s.completions, written.len() as u64);
    assert!(store.len() <= MAX);
    assert!(
        s.acquired as usize > MAX,
        "the store never turned over: {s:?}"
    );
    eprintln!("churn: {s:?}");
}

// ---------------------------------------------------------------------------------------------
// Replays outside the lock
// ---------------------------------------------------------------------------------------------

mod unlocked;

/// See `unlocked` (the scenario is shared with `tests/fenced_reads.rs`).
#[test]
fn replays_outside_the_lock_see_only_completed_unexpired_keys() {
    unlocked::replays_outside_the_lock_see_only_completed_unexpired_keys();
}
