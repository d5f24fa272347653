//! Loom models of the real engine's state-word transitions.
//!
//! Built only with `RUSTFLAGS="--cfg idemstore_loom"`: then every atomic, `RwLock`, `Arc` and
//! `UnsafeCell` the engine uses comes from loom (see `src/sync.rs`), so these models explore the
//! interleavings of the engine's own code through its public API. Run them with
//! `scripts/loom.sh`, or:
//!
//! ```text
//! RUSTFLAGS="--cfg idemstore_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test --release --test loom --target-dir target/loom
//! ```
//!
//! Every model uses a one-shard store (so every key shares one lock, one table and one wheel), a
//! fixed seed, a small `max_entries` and a manual clock: a 5 s lease and a 60 s ttl. A `Guard`
//! borrows its `Store` and loom threads need `'static` closures, so a guard that must exist
//! before the race is held by the model's main thread, which plays "thread A"; spawned threads
//! work on clones of the store (one shared, `Arc`-backed store).
//!
//! The models (2–3 threads each):
//! 1. two claims race on one key;
//! 2. a stale owner's complete races a takeover: (a) the lease ran out before the race,
//!    (b) a third thread moves the clock during it, (c) the stale owner heartbeats (extend);
//! 3. release (explicit, or by dropping the guard) races a claim;
//! 4. ttl expiry plus maintenance races a replay;
//! 5. owners of two keys in one shard complete together (each under the write lock, in either
//!    order), with stored values and dedup-only;
//! 6. a rebuild (the shard is full) races another owner's complete;
//! 7. a duplicate waits (`claim_wait_blocking`) while the owner completes, releases or drops
//!    its guard;
//! 8. a duplicate waits while the owner's lease runs out and another thread takes the key over.
//!
//! Each model also lists the outcome branches it must reach across the interleavings loom
//! explores, and fails if one is never reached: loom's search has known blind spots (see
//! [`spawn_ticker`]), and a model that only ever sees one schedule proves nothing.
#![cfg(idemstore_loom)]

use std::collections::BTreeSet;
use std::sync::{Arc as StdArc, Mutex};
use std::time::Duration;

use idemstore::{Claim, Clock, Error, ManualClock, Store};
use loom::thread;

const LEASE: Duration = Duration::from_secs(5);
const TTL: Duration = Duration::from_secs(60);
const KEY: &str = "k";
const SEED: u64 = 0x1de5_570e;

/// The outcome branches a model reached, gathered over every interleaving loom explored.
/// A plain `std` mutex, outside loom's view: it only records, it synchronizes nothing the
/// engine does, and it is never held across a loom operation.
#[derive(Clone, Default)]
struct Reached(StdArc<Mutex<BTreeSet<&'static str>>>);

impl Reached {
    fn note(&self, what: &'static str) {
        self.0.lock().unwrap().insert(what);
    }
}

/// Runs `f` under loom, with a preemption bound of 2 unless `LOOM_MAX_PREEMPTIONS` says
/// otherwise (an unbounded search of these models would take far too long). Afterwards checks
/// that every outcome in `expect` was reached in some interleaving, so a model cannot pass by
/// exploring only the easy schedule, and that nothing outside `expect` was noted.
fn model<F>(expect: &[&'static str], f: F)
where
    F: Fn(&Reached) + Sync + Send + 'static,
{
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    let reached = Reached::default();
    let r = reached.clone();
    b.check(move || f(&r));
    let got = reached.0.lock().unwrap().clone();
    let want: BTreeSet<&'static str> = expect.iter().copied().collect();
    assert_eq!(got, want, "outcomes reached across all interleavings");
}

/// A one-shard store with a fixed seed and room for a handful of keys, on a manual clock.
/// Must be called inside the model: its atomics and locks are loom's.
fn store() -> (Store<u64>, ManualClock) {
    let (clock, hand) = Clock::manual();
    let store = Store::builder()
        .shards(1)
        .max_entries(8)
        .seed(SEED)
        .lease(LEASE)
        .ttl(TTL)
        .clock(clock)
        .build()
        .expect("valid configuration");
    (store, hand)
}

/// What a claim returned, owned, so it can leave a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Acquired; the fencing token, whether it was a takeover, and how `complete` went.
    Acquired {
        token: u64,
        takeover: bool,
        completed: Result<(), Error>,
    },
    InProgress,
    Completed(u64),
    Mismatch,
}

/// Claims `key` and, if acquired, completes it with `value` at once.
fn claim_and_complete(store: &Store<u64>, key: &str, value: u64) -> Seen {
    seen(store.claim(key).expect("claim must not fail"), value)
}

/// What a claim returned; if it acquired the key, completes it with `value` at once.
fn seen(claim: Claim<'_, u64>, value: u64) -> Seen {
    match claim {
        Claim::Acquired(g) => {
            let (token, takeover) = (g.token(), g.is_takeover());
            Seen::Acquired {
                token,
                takeover,
                completed: g.complete(value),
            }
        }
        Claim::InProgress(_) => Seen::InProgress,
        Claim::Completed(r) => Seen::Completed(*r.value()),
        Claim::Mismatch(_) => Seen::Mismatch,
    }
}

/// The value a completed key replays now; panics on any other outcome.
fn replay(store: &Store<u64>, key: &str) -> u64 {
    match store.claim(key).expect("claim must not fail") {
        Claim::Completed(r) => *r.value(),
        other => panic!("expected a replay of {key:?}, got {other:?}"),
    }
}

/// Spawns a thread that moves the store's clock forward by `by`, concurrently with the model.
///
/// It touches the store (a read-locked `len`) before advancing. That is a workaround for a gap
/// in loom's exploration, not a need of the engine: `ManualClock::advance` is a `fetch_update`,
/// which loom runs as a relaxed load then a CAS, and a spawned thread whose first operation is
/// an atomic load loses its backtracking points (tokio-rs/loom#392, #166). Without it loom never
/// tries "the clock moves, then B claims, before A's guard call", and model 2b would never see a
/// takeover. The outcome-coverage check in [`model`] catches that kind of blind spot.
fn spawn_ticker<V: Send + Sync + 'static>(
    store: &Store<V>,
    hand: ManualClock,
    by: Duration,
) -> thread::JoinHandle<()> {
    let store = store.clone();
    thread::spawn(move || {
        let _ = store.len();
        hand.advance(by);
    })
}

/// Model 1: two claims race on one key; each completes at once if it acquires. Exactly one
/// acquires; the other sees InProgress, or Completed with the winner's value if the winner finished
/// first.
#[test]
fn two_claims_race_on_one_key() {
    let expect = [
        "winner 1",
        "winner 2",
        "loser saw in-progress",
        "loser replayed",
    ];
    model(&expect, |reached| {
        let (store, _hand) = store();
        let handles: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|value| {
                let store = store.clone();
                thread::spawn(move || (value, claim_and_complete(&store, KEY, value)))
            })
            .collect();
        let seen: Vec<(u64, Seen)> = handles.into_iter().map(|h| h.join().unwrap()).collect();

        let winners: Vec<u64> = seen
            .iter()
            .filter_map(|(v, s)| match s {
                Seen::Acquired {
                    takeover,
                    completed,
                    ..
                } => {
                    assert!(!takeover, "a fresh key is never a takeover");
                    assert_eq!(*completed, Ok(()), "the only owner's complete must succeed");
                    Some(*v)
                }
                _ => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "exactly one Acquired: {seen:?}");
        let winner = winners[0];
        reached.note(if winner == 1 { "winner 1" } else { "winner 2" });
        for (v, s) in &seen {
            if *v == winner {
                continue;
            }
            match s {
                Seen::InProgress => reached.note("loser saw in-progress"),
                Seen::Completed(r) if *r == winner => reached.note("loser replayed"),
                other => panic!("the loser saw {other:?} (winner {winner})"),
            }
        }
        assert_eq!(replay(&store, KEY), winner);
        let st = store.stats();
        assert_eq!((st.acquired, st.takeovers, st.completions), (1, 0, 1));
    });
}

/// Model 2a: A's lease has run out (the clock moved past it before B starts). B takes the key over
/// and completes with its value while A tries to complete with its own. A must get LeaseLost, and
/// the key must replay B's value, never A's.
#[test]
fn complete_races_takeover_after_lease_expiry() {
    model(&["b took over"], |reached| {
        let (store, hand) = store();
        let Claim::Acquired(a) = store.claim(KEY).unwrap() else {
            panic!("the first claim acquires")
        };
        let a_token = a.token();
        hand.advance(LEASE);

        let b = {
            let store = store.clone();
            thread::spawn(move || claim_and_complete(&store, KEY, 2))
        };
        let a_result = a.complete(1);
        let b_seen = b.join().unwrap();

        match b_seen {
            Seen::Acquired {
                token,
                takeover,
                completed,
            } => {
                assert!(takeover, "B found an expired lease");
                assert!(token > a_token, "fencing tokens strictly increase");
                assert_eq!(completed, Ok(()));
                reached.note("b took over");
            }
            other => panic!("A's lease had run out, B must take over: {other:?}"),
        }
        assert_eq!(a_result, Err(Error::LeaseLost), "the stale owner must lose");
        assert_eq!(
            replay(&store, KEY),
            2,
            "the key replays B's value, never A's"
        );
        let st = store.stats();
        assert_eq!((st.takeovers, st.lease_expiries, st.completions), (1, 1, 1));
    });
}

/// Model 2b: As 2a, but a third thread advances the clock past A's lease concurrently, so A may
/// finish in time, or not; B may find the key in flight, completed, or expired.
#[test]
fn complete_races_takeover_with_concurrent_clock() {
    let expect = [
        "b took over, a lost",
        "b replayed a",
        "b saw in-progress, a completed",
        "b saw in-progress, a lost",
    ];
    model(&expect, |reached| {
        let (store, hand) = store();
        let Claim::Acquired(a) = store.claim(KEY).unwrap() else {
            panic!("the first claim acquires")
        };
        let a_token = a.token();

        let ticker = spawn_ticker(&store, hand, LEASE);
        let b = {
            let store = store.clone();
            thread::spawn(move || claim_and_complete(&store, KEY, 2))
        };
        let a_result = a.complete(1);
        let b_seen = b.join().unwrap();
        ticker.join().unwrap();

        match b_seen {
            Seen::Acquired {
                token,
                takeover,
                completed,
            } => {
                assert!(
                    takeover,
                    "B can only acquire by taking over A's expired lease"
                );
                assert!(token > a_token);
                assert_eq!(
                    completed,
                    Ok(()),
                    "B's lease is fresh and nobody can take it"
                );
                assert_eq!(
                    a_result,
                    Err(Error::LeaseLost),
                    "A must lose whenever B acquired"
                );
                assert_eq!(replay(&store, KEY), 2, "never A's value once B took over");
                reached.note("b took over, a lost");
            }
            Seen::Completed(v) => {
                assert_eq!(v, 1, "B can only replay A's value");
                assert_eq!(a_result, Ok(()), "B replayed A's value, so A completed");
                assert_eq!(replay(&store, KEY), 1);
                reached.note("b replayed a");
            }
            Seen::InProgress => match a_result {
                Ok(()) => {
                    assert_eq!(replay(&store, KEY), 1);
                    reached.note("b saw in-progress, a completed");
                }
                Err(e) => {
                    assert_eq!(e, Error::LeaseLost);
                    // A lost its lease and nobody took over yet: the clock has moved (the
                    // ticker is joined), so the key is claimable by a takeover.
                    match store.claim(KEY).unwrap() {
                        Claim::Acquired(g) => assert!(g.is_takeover() && g.token() > a_token),
                        other => panic!("A's lease ran out: expected a takeover, got {other:?}"),
                    }
                    reached.note("b saw in-progress, a lost");
                }
            },
            Seen::Mismatch => panic!("no fingerprints, no mismatch"),
        }
    });
}

/// Model 2c: extend races a takeover: A's lease is 1 s from its end when a third thread moves the
/// clock to it, while A heartbeats (extend) then completes, and B claims. At most one owner at any
/// time: B takes over only if A's extend lost, and then A changes nothing.
#[test]
fn extend_races_takeover() {
    let expect = [
        "a extended, b saw in-progress",
        "a extended, b replayed a",
        "a lost, b took over",
        "a lost, b saw in-progress",
    ];
    model(&expect, |reached| {
        let (store, hand) = store();
        let Claim::Acquired(mut a) = store.claim(KEY).unwrap() else {
            panic!("the first claim acquires")
        };
        let a_token = a.token();
        hand.advance(LEASE - Duration::from_secs(1));

        let ticker = spawn_ticker(&store, hand, Duration::from_secs(1));
        let b = {
            let store = store.clone();
            thread::spawn(move || claim_and_complete(&store, KEY, 2))
        };
        let extended = a.extend(LEASE);
        let a_result = match extended.clone() {
            Ok(()) => a.complete(1),
            Err(e) => {
                assert_eq!(e, Error::LeaseLost);
                // The guard is spent: dropping it must change nothing (B may own the key).
                drop(a);
                Err(e)
            }
        };
        let b_seen = b.join().unwrap();
        ticker.join().unwrap();
        assert_eq!(
            store.stats().releases,
            0,
            "a spent guard's drop releases nothing"
        );

        match (&extended, &b_seen) {
            (Ok(()), Seen::InProgress) => {
                assert_eq!(
                    a_result,
                    Ok(()),
                    "an extended lease outlives the clock's move"
                );
                assert_eq!(replay(&store, KEY), 1);
                reached.note("a extended, b saw in-progress");
            }
            (Ok(()), Seen::Completed(1)) => {
                assert_eq!(a_result, Ok(()));
                reached.note("a extended, b replayed a");
            }
            (
                Err(_),
                Seen::Acquired {
                    takeover,
                    token,
                    completed,
                },
            ) => {
                assert!(*takeover && *token > a_token);
                assert_eq!(*completed, Ok(()));
                assert_eq!(replay(&store, KEY), 2, "B's value, never A's");
                reached.note("a lost, b took over");
            }
            (Err(_), Seen::InProgress) => {
                // B claimed before the clock moved; A's lease ran out before its heartbeat.
                match store.claim(KEY).unwrap() {
                    Claim::Acquired(g) => assert!(g.is_takeover()),
                    other => panic!("A's lease ran out: expected a takeover, got {other:?}"),
                }
                reached.note("a lost, b saw in-progress");
            }
            other => panic!("impossible combination: {other:?}"),
        }
    });
}

/// Model 3: A releases its guard while B claims. B sees InProgress (before the release) or Acquired
/// (after it), nothing else; the state stays consistent afterwards. The same race with A's guard
/// dropped instead of released (the drop path) is checked with `drop_instead`.
fn release_races_claim(drop_instead: bool) {
    model(&["b acquired", "b saw in-progress"], move |reached| {
        let (store, _hand) = store();
        let Claim::Acquired(a) = store.claim(KEY).unwrap() else {
            panic!("the first claim acquires")
        };
        let a_token = a.token();

        let b = {
            let store = store.clone();
            thread::spawn(move || match store.claim(KEY).unwrap() {
                Claim::Acquired(g) => {
                    assert!(!g.is_takeover(), "a released key is not a takeover");
                    assert!(g.token() > a_token, "fencing tokens strictly increase");
                    // B holds the key now: one more claim must see it in flight.
                    let again = store.claim(KEY).unwrap();
                    assert!(again.is_in_progress(), "B holds the key: {again:?}");
                    drop(again);
                    g.complete(7).expect("B's lease is fresh");
                    true
                }
                Claim::InProgress(p) => {
                    assert!(p.retry_after() <= LEASE);
                    false
                }
                other => panic!("B must see InProgress or Acquired, got {other:?}"),
            })
        };
        if drop_instead {
            drop(a);
        } else {
            a.release()
                .expect("A's lease is unexpired and nobody can take it");
        }
        let b_acquired = b.join().unwrap();

        if b_acquired {
            assert_eq!(replay(&store, KEY), 7);
            reached.note("b acquired");
        } else {
            // B came before the release: the key is vacant now, and the next claim acquires it
            // afresh (not a takeover).
            match store.claim(KEY).unwrap() {
                Claim::Acquired(g) => assert!(!g.is_takeover() && g.token() > a_token),
                other => panic!("a released key must be claimable, got {other:?}"),
            }
            reached.note("b saw in-progress");
        }
        let st = store.stats();
        assert_eq!(st.releases, if b_acquired { 1 } else { 2 });
        assert_eq!(st.takeovers, 0);
        assert_eq!(store.len(), 1, "one key, one entry");
    });
}

#[test]
fn release_races_claim_explicit() {
    release_races_claim(false);
}

#[test]
fn release_races_claim_by_drop() {
    release_races_claim(true);
}

/// Model 4: A completed key's window is about to run out: one thread moves the clock past it and
/// runs maintenance while another claims. The claim replays the right value or acquires the expired
/// key (reused in place, or inserted afresh after maintenance reclaimed it), never anything else,
/// and the expiry is counted exactly once.
#[test]
fn expiry_races_replay() {
    let expect = [
        "replayed before the deadline",
        "acquired the expired entry in place",
        "acquired after maintenance reclaimed it",
    ];
    model(&expect, |reached| {
        let (store, hand) = store();
        let Claim::Acquired(g) = store.claim(KEY).unwrap() else {
            panic!("the first claim acquires")
        };
        let first_token = g.token();
        g.complete(42).unwrap();
        // One millisecond short of the end of the window.
        hand.advance(TTL - Duration::from_millis(1));

        let reaper = {
            let store = store.clone();
            thread::spawn(move || {
                hand.advance(Duration::from_millis(1));
                store.run_maintenance()
            })
        };
        let claimer = {
            let store = store.clone();
            thread::spawn(move || match store.claim(KEY).unwrap() {
                Claim::Completed(r) => {
                    assert_eq!(*r.value(), 42, "a replay carries the completed value");
                    assert_eq!(r.expires_in(), Duration::from_millis(1));
                    None
                }
                Claim::Acquired(g) => {
                    assert!(!g.is_takeover(), "an expired window is not a takeover");
                    assert!(g.token() > first_token);
                    g.complete(43).unwrap();
                    Some(43)
                }
                other => panic!("expected a replay or a fresh acquisition, got {other:?}"),
            })
        };
        let reclaimed = reaper.join().unwrap();
        let reacquired = claimer.join().unwrap();

        match (reacquired, reclaimed) {
            (Some(v), 0) => {
                assert_eq!(replay(&store, KEY), v);
                reached.note("acquired the expired entry in place");
            }
            (Some(v), 1) => {
                assert_eq!(replay(&store, KEY), v);
                reached.note("acquired after maintenance reclaimed it");
            }
            (None, 1) => {
                // The claim replayed before the deadline; then maintenance reclaimed the key.
                let Claim::Acquired(g) = store.claim(KEY).unwrap() else {
                    panic!("the window ran out, the key must be claimable")
                };
                assert!(!g.is_takeover());
                reached.note("replayed before the deadline");
            }
            other => panic!("impossible (claim, reclaimed) combination: {other:?}"),
        }
        let st = store.stats();
        assert_eq!(
            st.ttl_expiries, 1,
            "the window ran out exactly once: {st:?}"
        );
        assert_eq!(store.len(), 1);
    });
}

/// Model 5: two owners of different keys in one shard complete concurrently (each takes the
/// shard's write lock, checks its own state word and stores the completed word and its value).
/// Both values must replay.
#[test]
fn different_keys_complete_concurrently() {
    model(&[], |_| {
        let (store, _hand) = store();
        let handles: Vec<_> = [("x", 10u64), ("y", 20)]
            .into_iter()
            .map(|(key, value)| {
                let store = store.clone();
                thread::spawn(move || {
                    let Claim::Acquired(g) = store.claim(key).unwrap() else {
                        panic!("each key has one claimant")
                    };
                    g.complete(value)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), Ok(()));
        }
        assert_eq!(replay(&store, "x"), 10);
        assert_eq!(replay(&store, "y"), 20);
        assert_eq!(store.stats().completions, 2);
    });
}

/// Model 5b: the same for a dedup-only store (`V = ()`), whose completions store no value per entry
/// but share the store's one `()` instance.
#[test]
fn different_keys_complete_concurrently_dedup_only() {
    model(&[], |_| {
        let (clock, _hand) = Clock::manual();
        let store: Store = Store::builder()
            .shards(1)
            .max_entries(8)
            .seed(SEED)
            .clock(clock)
            .build()
            .unwrap();
        let handles: Vec<_> = ["x", "y"]
            .into_iter()
            .map(|key| {
                let store = store.clone();
                thread::spawn(move || {
                    let Claim::Acquired(g) = store.claim(key).unwrap() else {
                        panic!("each key has one claimant")
                    };
                    g.complete(())
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), Ok(()));
        }
        for key in ["x", "y"] {
            assert!(store.claim(key).unwrap().is_completed());
        }
    });
}

/// Model 6: A claim that finds its shard full rebuilds the table (write lock; every surviving entry
/// moves to a new slot) while the owner of another key completes (write lock; it probes for its
/// slot afresh). Both owners must complete and both values replay.
#[test]
fn rebuild_races_complete() {
    model(&["a claimed first", "b claimed first"], |reached| {
        let (clock, _hand) = Clock::manual();
        let store: Store<u64> = Store::builder()
            .shards(1)
            .max_entries(2)
            .seed(SEED)
            .lease(LEASE)
            .ttl(TTL)
            .clock(clock)
            .build()
            .unwrap();
        // A released key stays in the table as a Vacant entry until it is reclaimed, so the
        // second of the two claims below finds the shard full and must rebuild to make room.
        let Claim::Acquired(g) = store.claim("x").unwrap() else {
            panic!("the first claim acquires")
        };
        g.release().unwrap();

        let handles: Vec<_> = [("a", 1u64), ("b", 2)]
            .into_iter()
            .map(|(key, value)| {
                let store = store.clone();
                thread::spawn(move || {
                    let Claim::Acquired(g) = store.claim(key).expect("room is made") else {
                        panic!("each key has one claimant")
                    };
                    (g.token(), g.complete(value))
                })
            })
            .collect();
        let results: Vec<(u64, Result<(), Error>)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (_, r) in &results {
            assert_eq!(*r, Ok(()), "a rebuild must not cost an owner its key");
        }
        reached.note(if results[0].0 < results[1].0 {
            "a claimed first"
        } else {
            "b claimed first"
        });
        assert_eq!(replay(&store, "a"), 1);
        assert_eq!(replay(&store, "b"), 2);
        assert_eq!(store.len(), 2, "the released key was swept by the rebuild");
        let st = store.stats();
        assert_eq!((st.acquired, st.releases, st.completions), (3, 1, 2));
    });
}

/// What a waiting duplicate ended with.
fn wait_for_key(store: &Store<u64>, value: u64) -> Seen {
    let opts = idemstore::ClaimOptions::new();
    // Far longer than anything the models advance the clock by: the wait ends on a wake-up.
    let claim = store.claim_wait_blocking(KEY, &opts, TTL);
    seen(claim.expect("claim must not fail"), value)
}

/// Model 7: a duplicate waits for the key while its owner completes or releases it (by
/// `release`, or by dropping the guard). The waiter registers at any point relative to the
/// owner's transition; a lost wake-up would leave it parked forever, which loom reports as a
/// deadlock. It must end with the replay, or with the key acquired after a release.
fn waiter_races_owner(end: &'static str) {
    let expect: &[&'static str] = if end == "complete" {
        &["replayed"]
    } else {
        &["acquired"]
    };
    model(expect, move |reached| {
        let (store, _hand) = store();
        let Claim::Acquired(a) = store.claim(KEY).unwrap() else {
            panic!("the first claim acquires")
        };
        let a_token = a.token();
        let waiter = {
            let store = store.clone();
            thread::spawn(move || wait_for_key(&store, 8))
        };
        match end {
            "complete" => a.complete(7).expect("A's lease is fresh"),
            "release" => a.release().expect("A's lease is fresh"),
            _ => drop(a),
        }
        match waiter.join().unwrap() {
            Seen::Completed(7) => reached.note("replayed"),
            Seen::Acquired {
                token,
                takeover: false,
                completed: Ok(()),
            } if token > a_token => reached.note("acquired"),
            other => panic!("the waiter must replay or acquire a released key, got {other:?}"),
        }
    });
}

#[test]
fn waiter_races_complete() {
    waiter_races_owner("complete");
}

#[test]
fn waiter_races_release() {
    waiter_races_owner("release");
}

#[test]
fn waiter_races_dropped_guard() {
    waiter_races_owner("drop");
}

/// Model 8: a duplicate waits while the owner's lease runs out and a third thread takes the key
/// over and completes it; the stale owner tries to complete too. The waiter must end with a
/// replay of whichever result stands, or take the key over itself, and never wait forever.
#[test]
fn waiter_races_takeover() {
    let expect = [
        "waiter replayed the first owner",
        "waiter replayed the new owner",
        "waiter took over",
    ];
    model(&expect, |reached| {
        let (store, hand) = store();
        let Claim::Acquired(a) = store.claim(KEY).unwrap() else {
            panic!("the first claim acquires")
        };
        let waiter = {
            let store = store.clone();
            thread::spawn(move || wait_for_key(&store, 8))
        };
        let other = {
            let store = store.clone();
            thread::spawn(move || {
                let _ = store.len();
                hand.advance(LEASE);
                claim_and_complete(&store, KEY, 9)
            })
        };
        let a_done = a.complete(7);
        let w = waiter.join().unwrap();
        let o = other.join().unwrap();
        let stands = replay(&store, KEY);
        match w {
            Seen::Completed(7) => {
                assert_eq!(a_done, Ok(()));
                reached.note("waiter replayed the first owner");
            }
            Seen::Completed(9) => {
                assert!(matches!(
                    o,
                    Seen::Acquired {
                        takeover: true,
                        completed: Ok(()),
                        ..
                    }
                ));
                reached.note("waiter replayed the new owner");
            }
            Seen::Acquired {
                takeover: true,
                completed: Ok(()),
                ..
            } => {
                assert_eq!(stands, 8);
                reached.note("waiter took over");
            }
            other => panic!("unexpected waiter outcome {other:?}"),
        }
        if a_done.is_ok() {
            assert_eq!(stands, 7, "a completion inside the lease stands");
        } else {
            assert_eq!(a_done, Err(Error::LeaseLost));
            assert_ne!(stands, 7, "a stale owner never overwrites");
        }
    });
}
