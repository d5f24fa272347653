use std::time::Duration;

use idemstore::{Claim, ClaimOptions, Clock, Error, Store};

#[test]
fn lifecycle_end_to_end() {
    let (clock, hand) = Clock::manual();
    let store: Store<String> = Store::builder()
        .ttl(Duration::from_secs(60))
        .lease(Duration::from_secs(5))
        .clock(clock)
        .seed(1)
        .build()
        .unwrap();
    let Claim::Acquired(g) = store.claim("a").unwrap() else {
        panic!("first claim must acquire")
    };
    let t1 = g.token();
    assert!(store.claim("a").unwrap().is_in_progress());
    g.complete("done".into()).unwrap();
    match store.claim("a").unwrap() {
        Claim::Completed(r) => {
            assert_eq!(r.value(), "done");
            assert_eq!(r.expires_in(), Duration::from_secs(60));
        }
        other => panic!("{other:?}"),
    }
    hand.advance(Duration::from_secs(60));
    let Claim::Acquired(g) = store.claim("a").unwrap() else {
        panic!("expired key must be claimable")
    };
    assert!(g.token() > t1);
    assert!(!g.is_takeover());
    drop(g);
    let Claim::Acquired(g) = store.claim("a").unwrap() else {
        panic!("dropped guard releases")
    };
    hand.advance(Duration::from_secs(5));
    let Claim::Acquired(g2) = store.claim("a").unwrap() else {
        panic!("lease ran out: takeover")
    };
    assert!(g2.is_takeover());
    assert_eq!(g.complete("stale".into()), Err(Error::LeaseLost));
    g2.complete("fresh".into()).unwrap();
    let Claim::Completed(r) = store.claim("a").unwrap() else {
        panic!()
    };
    assert_eq!(r.value(), "fresh");
    let opts = ClaimOptions::new().fingerprint("x");
    let held = store.claim_with("b", &opts).unwrap();
    assert!(held.is_acquired());
    let other = ClaimOptions::new().fingerprint("y");
    assert!(store.claim_with("b", &other).unwrap().is_mismatch());
    drop(held);
    let s = store.stats();
    assert_eq!(s.takeovers, 1);
    assert_eq!(s.mismatched, 1);
}

#[test]
fn dedup_only_many_keys() {
    let store: Store = Store::builder().shards(4).seed(3).build().unwrap();
    for i in 0..100_000u32 {
        let Claim::Acquired(g) = store.claim(i.to_le_bytes()).unwrap() else {
            panic!()
        };
        g.complete(()).unwrap();
    }
    assert_eq!(store.len(), 100_000);
    for i in 0..100_000u32 {
        assert!(store.claim(i.to_le_bytes()).unwrap().is_completed());
    }
    let s = store.stats();
    eprintln!(
        "{s:?} bytes/entry {}",
        s.memory_bytes as f64 / s.entries as f64
    );
}

#[test]
fn maintenance_reclaims_idle_shards() {
    let (clock, hand) = Clock::manual();
    let store: Store = Store::builder()
        .ttl(Duration::from_secs(10))
        .shards(8)
        .clock(clock)
        .build()
        .unwrap();
    for i in 0..1_000u32 {
        let Claim::Acquired(g) = store.claim(i.to_le_bytes()).unwrap() else {
            panic!()
        };
        g.complete(()).unwrap();
    }
    assert_eq!(store.len(), 1_000);
    hand.advance(Duration::from_millis(9_999));
    assert_eq!(
        store.run_maintenance(),
        0,
        "nothing is due before the deadline"
    );
    hand.advance(Duration::from_millis(1));
    // No claim touches any shard: only maintenance reclaims the memory.
    assert_eq!(store.run_maintenance(), 1_000);
    assert_eq!(store.len(), 0);
    let s = store.stats();
    assert_eq!(s.ttl_expiries, 1_000);
    assert_eq!(s.entries, 0);
}

/// Whether a claim is told it takes over a lease that ran out depends only on time, not on
/// whether the engine reclaimed expired entries first (maintenance, or other claims' expiry
/// work): the lapsed lease is kept for a window after it, then forgotten.
#[test]
fn takeovers_are_reported_whenever_expired_entries_are_reclaimed() {
    let (clock, hand) = Clock::manual();
    let store: Store<u32> = Store::builder()
        .ttl(Duration::from_secs(60))
        .lease(Duration::from_secs(30))
        .shards(1)
        .clock(clock)
        .build()
        .unwrap();
    let acquire = |key: &str| match store.claim(key).unwrap() {
        Claim::Acquired(g) => g,
        other => panic!("{key}: {other:?}"),
    };
    // Owners that stall: their leases run out.
    let stalled: Vec<_> = ["a", "b", "c"].into_iter().map(acquire).collect();
    hand.advance(Duration::from_secs(30));
    // Maintenance runs, and other keys' claims take due records: nothing is reclaimed that a
    // claim could still take over.
    assert_eq!(store.run_maintenance(), 0);
    for i in 0..20u32 {
        acquire(&format!("other-{i}")).complete(i).unwrap();
    }
    assert_eq!(store.len(), 23);
    let a = acquire("a");
    assert!(a.is_takeover(), "taken over after maintenance ran");
    assert!(a.token() > stalled[0].token());
    // Up to the last millisecond of the window after the lease, still a takeover.
    hand.advance(Duration::from_millis(59_999));
    store.run_maintenance();
    let b = acquire("b");
    assert!(
        b.is_takeover(),
        "taken over at the window's last millisecond"
    );
    // A window after the lease ran out, the key is forgotten, as a completed key is, and its
    // memory reclaimed.
    hand.advance(Duration::from_millis(1));
    assert_eq!(
        store.run_maintenance(),
        21,
        "c, forgotten, and the other keys' windows"
    );
    let c = acquire("c");
    assert!(!c.is_takeover(), "forgotten a window after its lease");
    let s = store.stats();
    assert_eq!((s.takeovers, s.lease_expiries), (2, 3));
    // The stale owners are fenced out throughout.
    for (g, value) in stalled.into_iter().zip(1..) {
        assert_eq!(g.complete(value), Err(Error::LeaseLost));
    }
    c.complete(3).unwrap();
    b.complete(2).unwrap();
    assert!(store.claim("c").unwrap().is_completed());
    assert!(store.claim("b").unwrap().is_completed());
    assert_eq!(store.stats().releases, 0);
}

#[test]
fn background_thread_reclaims_without_calls() {
    let (clock, hand) = Clock::manual();
    let store: Store = Store::builder()
        .ttl(Duration::from_secs(1))
        .shards(4)
        .clock(clock)
        .maintenance_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    for i in 0..100u32 {
        if let Claim::Acquired(g) = store.claim(i.to_le_bytes()).unwrap() {
            g.complete(()).unwrap();
        }
    }
    hand.advance(Duration::from_secs(1));
    // Bounded wait for the background thread: it runs every millisecond.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !store.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(store.is_empty(), "the maintenance thread reclaimed nothing");
}

#[test]
fn released_entries_are_reused_and_reclaimed() {
    let (clock, hand) = Clock::manual();
    let store: Store = Store::builder()
        .lease(Duration::from_secs(5))
        .shards(1)
        .clock(clock)
        .build()
        .unwrap();
    let Claim::Acquired(g) = store.claim("k").unwrap() else {
        panic!()
    };
    let first = g.token();
    g.release().unwrap();
    let Claim::Acquired(g) = store.claim("k").unwrap() else {
        panic!("a released key is claimable at once")
    };
    assert!(g.token() > first);
    g.release().unwrap();
    assert_eq!(store.len(), 1, "released entries wait for reclaim");
    hand.advance(Duration::from_secs(5));
    assert_eq!(store.run_maintenance(), 1);
    assert!(store.is_empty());
    let Claim::Acquired(g) = store.claim("k").unwrap() else {
        panic!()
    };
    assert!(
        g.token() > first + 1,
        "tokens keep increasing across a key's lives"
    );
}

#[test]
fn default_shards_admit_nearly_max_entries() {
    // The default shard count keeps at least 4,096 entries per shard, so the uneven spread of
    // keys over shards costs at most a few percent of max_entries.
    let store: Store = Store::builder()
        .max_entries(10_000)
        .seed(7)
        .build()
        .unwrap();
    let mut admitted = 0u32;
    loop {
        match store.claim(admitted.to_le_bytes()) {
            Ok(Claim::Acquired(g)) => {
                g.complete(()).unwrap();
                admitted += 1;
            }
            Err(Error::CapacityExceeded { .. }) => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(admitted >= 9_500, "first refusal at {admitted} of 10,000");
    assert!(admitted <= 10_000);
}

#[test]
fn a_clock_far_from_its_origin_keeps_exact_deadlines() {
    // Deadlines are kept in 44 bits of milliseconds (557 years): a manual clock two centuries
    // on still expires keys exactly, with ten-year leases and windows.
    let (clock, hand) = Clock::manual();
    let store: Store<u8> = Store::builder()
        .ttl(idemstore::MAX_SPAN)
        .lease(idemstore::MAX_SPAN)
        .clock(clock)
        .build()
        .unwrap();
    hand.advance(Duration::from_secs(200 * 365 * 86_400));
    let Claim::Acquired(g) = store.claim("k").unwrap() else {
        panic!()
    };
    g.complete(9).unwrap();
    hand.advance(idemstore::MAX_SPAN - Duration::from_millis(1));
    assert!(store.claim("k").unwrap().is_completed());
    hand.advance(Duration::from_millis(1));
    assert!(store.claim("k").unwrap().is_acquired());
}

/// What a claim returned, for comparing two stores.
fn outcome<V: std::fmt::Debug>(claim: &Result<Claim<'_, V>, Error>) -> String {
    match claim {
        Ok(Claim::Acquired(g)) => {
            format!("acquired token {} takeover {}", g.token(), g.is_takeover())
        }
        Ok(Claim::InProgress(p)) => format!("in progress {:?}", p.retry_after()),
        Ok(Claim::Completed(r)) => format!("completed {:?} {:?}", r.value(), r.expires_in()),
        Ok(Claim::Mismatch(m)) => format!("mismatch {}", m.is_completed()),
        Err(e) => format!("error {e:?}"),
    }
}

/// The outcomes a grouped batch of `n` keys handed out, by key index, and its guards in key
/// order. Checks that every index comes exactly once.
fn grouped_outcomes<'s, V: std::fmt::Debug + 's>(
    n: usize,
    claim: impl FnOnce(&mut dyn FnMut(usize, Result<Claim<'s, V>, Error>)),
) -> (Vec<String>, Vec<idemstore::Guard<'s, V>>) {
    let mut got: Vec<Option<String>> = vec![None; n];
    let mut guards: Vec<Option<idemstore::Guard<'s, V>>> = (0..n).map(|_| None).collect();
    claim(&mut |i, c| {
        assert!(got[i].is_none(), "key {i} handed out twice");
        got[i] = Some(outcome(&c));
        if let Ok(Claim::Acquired(g)) = c {
            guards[i] = Some(g);
        }
    });
    let got = got
        .into_iter()
        .enumerate()
        .map(|(i, o)| o.unwrap_or_else(|| panic!("key {i} never handed out")))
        .collect();
    (got, guards.into_iter().flatten().collect())
}

#[test]
fn batch_claims_are_the_same_as_one_by_one() {
    let twins = || {
        let (clock, hand) = Clock::manual();
        let store: Store<u32> = Store::builder()
            .shards(4)
            .max_entries(64)
            .lease(Duration::from_millis(5))
            .ttl(Duration::from_millis(20))
            .seed(99)
            .clock(clock)
            .build()
            .unwrap();
        (store, hand)
    };
    let (one, one_hand) = twins();
    let (batch, batch_hand) = twins();
    let (grouped, grouped_hand) = twins();
    // Duplicates inside a batch, invalid keys, more keys than the pipeline's depth, and a
    // store that fills up.
    let mut keys: Vec<Vec<u8>> = (0..90u32)
        .map(|i| (i % 70).to_le_bytes().to_vec())
        .collect();
    keys[3] = Vec::new();
    keys[40] = vec![b'x'; 300];
    for round in 0..4u32 {
        let mut expected = Vec::new();
        let mut held_one = Vec::new();
        for key in &keys {
            let claim = one.claim(key);
            expected.push(outcome(&claim));
            if let Ok(Claim::Acquired(g)) = claim {
                held_one.push(g);
            }
        }
        let mut got = Vec::new();
        let mut held_batch = Vec::new();
        batch.claim_batch(&keys, |i, claim| {
            assert_eq!(i, got.len(), "outcomes come in key order");
            got.push(outcome(&claim));
            if let Ok(Claim::Acquired(g)) = claim {
                held_batch.push(g);
            }
        });
        assert_eq!(got, expected, "round {round}");
        let (got, held_grouped) =
            grouped_outcomes(keys.len(), |each| grouped.claim_batch_grouped(&keys, each));
        assert_eq!(got, expected, "grouped, round {round}");
        // Complete every other acquired key, drop the rest, then let time pass.
        let held = held_one.into_iter().zip(held_batch).zip(held_grouped);
        for (k, ((a, b), c)) in held.enumerate() {
            if k % 2 == 0 {
                a.complete(round).unwrap();
                b.complete(round).unwrap();
                c.complete(round).unwrap();
            }
        }
        for hand in [&one_hand, &batch_hand, &grouped_hand] {
            hand.advance(Duration::from_millis(7));
        }
    }
    assert_eq!(one.stats(), batch.stats());
    assert_eq!(one.stats(), grouped.stats());
}

/// Grouped batches longer than one round of the engine's (2048 keys), with duplicates across
/// rounds, into one shard whose table grows (and rebuilds) while the batch holds its lock.
#[test]
fn long_grouped_batches_are_the_same_as_one_by_one() {
    // Manual clocks: in-progress outcomes carry the time left on the lease.
    let twins = || {
        Store::<()>::builder()
            .shards(1)
            .initial_capacity(16)
            .clock(Clock::manual().0)
            .seed(7)
            .build()
            .unwrap()
    };
    let (one, grouped) = (twins(), twins());
    let ids: Vec<u128> = (0..7_000u128).map(|i| i * 7919 % 5_000).collect();
    let mut expected = Vec::new();
    let mut held_one = Vec::new();
    for &id in &ids {
        let claim = one.claim_id(id);
        expected.push(outcome(&claim));
        if let Ok(Claim::Acquired(g)) = claim {
            held_one.push(g);
        }
    }
    let (got, held_grouped) =
        grouped_outcomes(ids.len(), |each| grouped.claim_id_batch_grouped(&ids, each));
    assert_eq!(got.len(), expected.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!("key {i}: {} grouped, {} one by one", got[i], expected[i]);
    }
    assert_eq!(held_grouped.len(), 5_000);
    assert!(
        grouped.stats().table_rebuilds > 0,
        "the table grew during the batch"
    );
    for (a, b) in held_one.into_iter().zip(held_grouped) {
        a.complete(()).unwrap();
        b.complete(()).unwrap();
    }
    // Every key replays now, claimed grouped or not; once the thread's claims have mostly been
    // replays, a dedup-only store reads them outside the shard lock.
    for _ in 0..2 {
        grouped.claim_id_batch_grouped(&ids, |i, claim| {
            assert!(claim.unwrap().is_completed(), "key {i} replays");
        });
    }
    assert!(grouped.__replays_outside_the_lock() > 0);
    assert_eq!(one.stats().entries, grouped.stats().entries);
    assert_eq!(grouped.stats().replayed, 2 * ids.len() as u64);
}

#[test]
fn id_batches_match_single_id_claims() {
    let store: Store = Store::builder().seed(1).build().unwrap();
    let ids: Vec<u128> = (0..1_000u128).map(|i| i * 7919 % 500).collect();
    let mut acquired = 0;
    store.claim_id_batch(&ids, |_, claim| {
        if let Ok(Claim::Acquired(g)) = claim {
            g.complete(()).unwrap();
            acquired += 1;
        }
    });
    assert_eq!(acquired, 500);
    for id in 0..500u128 {
        assert!(store.claim_id(id).unwrap().is_completed());
    }
}

/// A grouped batch of a dedup-only store, on a thread whose claims have mostly been replays:
/// each shard's keys are read outside the lock first, the rest claimed under it. Completed,
/// in-flight and new keys, with duplicates, across eight shards.
#[test]
fn grouped_batches_that_replay_outside_the_lock_are_the_same_as_one_by_one() {
    let twins = || {
        Store::<()>::builder()
            .shards(8)
            .clock(Clock::manual().0)
            .seed(3)
            .build()
            .unwrap()
    };
    let (one, grouped) = (twins(), twins());
    let mut held = Vec::new();
    for store in [&one, &grouped] {
        // 0..300 completed, 300..400 in flight.
        for id in 0..400u128 {
            let Claim::Acquired(g) = store.claim_id(id).unwrap() else {
                panic!("a new id is acquired")
            };
            if id < 300 {
                g.complete(()).unwrap();
            } else {
                held.push(g);
            }
        }
    }
    // Replays raise this thread's score, so that its claims read outside the lock first.
    for id in 0..300u128 {
        assert!(grouped.claim_id(id).unwrap().is_completed());
        assert!(one.claim_id(id).unwrap().is_completed());
    }
    // Mostly replays, some in flight, some new (400..450), each id twice or more.
    let ids: Vec<u128> = (0..900u128).map(|i| (i * 7) % 450).collect();
    let outside = grouped.__replays_outside_the_lock();
    let (got, acquired) =
        grouped_outcomes(ids.len(), |each| grouped.claim_id_batch_grouped(&ids, each));
    assert!(
        grouped.__replays_outside_the_lock() > outside,
        "replays read outside the lock"
    );
    let mut kept = Vec::new();
    let mut expected = Vec::new();
    for &id in &ids {
        let claim = one.claim_id(id);
        expected.push(outcome(&claim));
        // Held, as the grouped batch's guards are: a duplicate finds its key in flight.
        kept.push(claim);
    }
    if let Some(i) = (0..ids.len()).find(|&i| got[i] != expected[i]) {
        panic!(
            "id {}: {} grouped, {} one by one",
            ids[i], got[i], expected[i]
        );
    }
    assert_eq!(acquired.len(), 50, "the new ids, once each");
    assert_eq!(one.stats(), grouped.stats());
}

#[test]
fn a_grouped_batch_whose_callback_panics_releases_what_it_did_not_hand_out() {
    // One shard: the whole batch is one hold, whose outcomes are handed out after it. A manual
    // clock: no lease runs out, however slow the machine.
    let store: Store = Store::builder()
        .shards(1)
        .clock(Clock::manual().0)
        .build()
        .unwrap();
    let ids: Vec<u128> = (0..100).collect();
    let mut handed = 0;
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.claim_id_batch_grouped(&ids, |_, claim| {
            handed += 1;
            assert!(handed < 10, "the consumer fails at its tenth message");
            // The first nine stay in flight.
            std::mem::forget(claim);
        })
    }));
    assert!(run.is_err());
    assert_eq!(handed, 10);
    // The tenth claim was dropped by the unwinding, the ninety not handed out with it.
    let in_flight = ids
        .iter()
        .filter(|&&id| store.claim_id(id).unwrap().is_in_progress())
        .count();
    assert_eq!(in_flight, 9);
}

/// A stored value whose `Drop` uses the store it was meant for: it must never run while the
/// store holds a shard lock, or it would wait on itself.
#[derive(Debug)]
struct UsesStore {
    store: &'static std::sync::OnceLock<Store<UsesStore>>,
    _alive: std::sync::Arc<()>,
}

impl Drop for UsesStore {
    fn drop(&mut self) {
        if let Some(store) = self.store.get() {
            // Takes every shard's lock for reading.
            let _ = store.len();
        }
    }
}

/// Builds the store `cell` holds, for values that use it: one shard, a lease of 5 s, a manual
/// clock, whose hand comes back.
fn store_in(
    cell: &'static std::sync::OnceLock<Store<UsesStore>>,
) -> (&'static Store<UsesStore>, idemstore::ManualClock) {
    let (clock, hand) = Clock::manual();
    let store = cell.get_or_init(|| {
        Store::builder()
            .lease(Duration::from_secs(5))
            .shards(1)
            .clock(clock)
            .build()
            .unwrap()
    });
    (store, hand)
}

#[test]
fn a_value_refused_for_a_lost_lease_is_dropped_outside_the_store_locks() {
    static STORE: std::sync::OnceLock<Store<UsesStore>> = std::sync::OnceLock::new();
    let (store, hand) = store_in(&STORE);
    let drops = std::sync::Arc::new(());
    // Lost to time: the lease ran out before the completion.
    let Claim::Acquired(g) = store.claim("k").unwrap() else {
        panic!("first claim acquires")
    };
    hand.advance(Duration::from_secs(5));
    let value = UsesStore {
        store: &STORE,
        _alive: std::sync::Arc::clone(&drops),
    };
    assert!(matches!(g.complete(value), Err(Error::LeaseLost)));
    // Lost to a newer owner: its takeover came first.
    let Claim::Acquired(g) = store.claim("j").unwrap() else {
        panic!("first claim acquires")
    };
    hand.advance(Duration::from_secs(5));
    let Claim::Acquired(newer) = store.claim("j").unwrap() else {
        panic!("the lease ran out: takeover")
    };
    let value = UsesStore {
        store: &STORE,
        _alive: std::sync::Arc::clone(&drops),
    };
    assert!(matches!(g.complete(value), Err(Error::LeaseLost)));
    assert_eq!(
        std::sync::Arc::strong_count(&drops),
        1,
        "both values dropped"
    );
    newer
        .complete(UsesStore {
            store: &STORE,
            _alive: std::sync::Arc::clone(&drops),
        })
        .unwrap();
    assert!(store.claim("j").unwrap().is_completed());
}

/// What completing one claim gave: `Ok`, or the error's name.
fn completion(result: &Result<(), Error>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(Error::LeaseLost) => "lease lost",
        Err(Error::ValueTooLarge { .. }) => "too large",
        Err(_) => "another error",
    }
}

/// Two stores built alike, on one manual clock: one completes its guards one by one, the other
/// in a batch, from the same situation: 3000 keys over 8 shards (two rounds), some completed
/// in time, some too late, some taken over by a newer owner before their completion, some too
/// large to store, and a guard of a third store among them.
#[test]
fn a_completed_batch_is_the_same_as_completing_one_by_one() {
    let (clock, hand) = Clock::manual();
    let build = || -> Store<Vec<u8>> {
        Store::builder()
            .shards(8)
            .seed(7)
            .lease(Duration::from_secs(10))
            .max_value_size(64)
            .weigher(|v: &Vec<u8>| v.len())
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (single, batched, other) = (build(), build(), build());
    let ids: Vec<u128> = (0..3000u128).map(|i| i * 0x9E37_79B9_7F4A_7C15).collect();
    // Every fifth key gets a lease of 1 s, which runs out; of those, every other one is
    // taken over before its guard completes.
    let short = |i: usize| i.is_multiple_of(5);
    let value = |i: usize| vec![i as u8; if i % 7 == 3 { 65 } else { i % 60 }];
    fn claim_all<'s>(
        store: &'s Store<Vec<u8>>,
        ids: &[u128],
        short: impl Fn(usize) -> bool,
    ) -> Vec<idemstore::Guard<'s, Vec<u8>>> {
        ids.iter()
            .enumerate()
            .map(|(i, &id)| {
                let lease = if short(i) { 1 } else { 10 };
                let options = ClaimOptions::new().lease(Duration::from_secs(lease));
                match store.claim_id_with(id, &options).unwrap() {
                    Claim::Acquired(g) => g,
                    other => panic!("key {i} is new: {other:?}"),
                }
            })
            .collect()
    }
    let (guards_single, guards_batched) = (
        claim_all(&single, &ids, short),
        claim_all(&batched, &ids, short),
    );
    let Claim::Acquired(foreign) = other.claim_id(ids[0]).unwrap() else {
        panic!("new in the third store");
    };
    hand.advance(Duration::from_secs(2));
    let mut newer = Vec::new();
    for store in [&single, &batched] {
        for (i, &id) in ids.iter().enumerate() {
            if short(i) && i.is_multiple_of(10) {
                let Claim::Acquired(g) = store.claim_id(id).unwrap() else {
                    panic!("key {i}'s lease ran out: a takeover");
                };
                assert!(g.is_takeover());
                newer.push(g);
            }
        }
    }
    let expected: Vec<&str> = guards_single
        .into_iter()
        .enumerate()
        .map(|(i, g)| completion(&g.complete(value(i))))
        .collect();
    let mut batch: Vec<_> = guards_batched
        .into_iter()
        .enumerate()
        .map(|(i, g)| (g, value(i)))
        .collect();
    // The foreign guard goes in the middle: it is index 1500, and the batch's guards after it
    // move up by one.
    batch.insert(1500, (foreign, vec![9]));
    let mut results: Vec<Option<&str>> = vec![None; batch.len()];
    batched.complete_batch(batch, |i, result| {
        assert!(results[i].is_none(), "guard {i} handed out twice");
        results[i] = Some(completion(&result));
    });
    let mut results: Vec<&str> = results
        .into_iter()
        .map(|r| r.expect("every guard handed out"))
        .collect();
    assert_eq!(results.remove(1500), "ok", "the foreign guard's completion");
    assert_eq!(results, expected);
    assert!(expected.contains(&"ok") && expected.contains(&"lease lost"));
    assert!(expected.contains(&"too large"));
    // The stores hold the same afterwards: replays of the completed keys, the newer owners'
    // keys in progress, the keys released or lapsed claimable again.
    let outcome_of = |store: &Store<Vec<u8>>, id| match store.claim_id(id).unwrap() {
        Claim::Completed(r) => format!("replay {:?}", r.value()),
        other => outcome(&Ok::<_, Error>(other)),
    };
    for &id in &ids {
        assert_eq!(outcome_of(&single, id), outcome_of(&batched, id));
    }
    assert_eq!(outcome_of(&other, ids[0]), "replay [9]");
    let (s, b) = (single.stats(), batched.stats());
    assert_eq!(
        (s.completions, s.releases, s.acquired, s.replayed),
        (b.completions, b.releases, b.acquired, b.replayed)
    );
    drop(newer);
}

#[test]
fn a_completion_batch_whose_input_or_callback_panics_releases_or_completes_each_key() {
    let store: Store = Store::builder()
        .shards(4)
        .clock(Clock::manual().0)
        .build()
        .unwrap();
    let guards = |from: u128| {
        (from..from + 100)
            .map(|id| match store.claim_id(id).unwrap() {
                Claim::Acquired(g) => (g, ()),
                other => panic!("{id} is new: {other:?}"),
            })
            .collect::<Vec<_>>()
    };
    // The input fails at its 41st guard: the 40 taken are released, not left in flight (nor
    // completed), and the 60 left are dropped with the iterator, so released too.
    let first = guards(0);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let input = first.into_iter().enumerate().map(|(n, g)| {
            assert!(n < 40, "the input fails");
            g
        });
        store.complete_batch(input, |_, _| panic!("nothing is handed out"));
    }));
    assert!(run.is_err());
    for id in 0..100 {
        let claim = store.claim_id(id).unwrap();
        assert!(claim.is_acquired(), "{id} was released");
    }
    // The callback fails at its tenth result: every completion was made before.
    let second = guards(1000);
    let mut handed = 0;
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.complete_batch(second, |_, result| {
            result.unwrap();
            handed += 1;
            assert!(handed < 10, "the callback fails");
        });
    }));
    assert!(run.is_err());
    assert_eq!(handed, 10);
    for id in 1000..1100 {
        assert!(store.claim_id(id).unwrap().is_completed(), "{id} completed");
    }
}

#[test]
fn values_a_completion_batch_refuses_are_dropped_outside_the_store_locks() {
    static STORE: std::sync::OnceLock<Store<UsesStore>> = std::sync::OnceLock::new();
    let (store, hand) = store_in(&STORE);
    let drops = std::sync::Arc::new(());
    let value = || UsesStore {
        store: &STORE,
        _alive: std::sync::Arc::clone(&drops),
    };
    let acquire = |key: &str| match store.claim(key).unwrap() {
        Claim::Acquired(g) => g,
        other => panic!("{key} is new: {other:?}"),
    };
    // One shard: every completion of the batch is made under one hold of its lock.
    let (lapsed, stale) = (acquire("lapsed"), acquire("stale"));
    hand.advance(Duration::from_secs(5));
    let newer = acquire("stale");
    let fresh = acquire("fresh");
    let mut results = Vec::new();
    store.complete_batch(
        [(lapsed, value()), (stale, value()), (fresh, value())],
        |i, result| results.push((i, result)),
    );
    results.sort_by_key(|(i, _)| *i);
    assert_eq!(
        results,
        [
            (0, Err(Error::LeaseLost)),
            (1, Err(Error::LeaseLost)),
            (2, Ok(()))
        ]
    );
    assert_eq!(
        std::sync::Arc::strong_count(&drops),
        2,
        "the refused values dropped, the stored one kept"
    );
    assert!(store.claim("fresh").unwrap().is_completed());
    assert!(store.claim("stale").unwrap().is_in_progress());
    drop(newer);
}

/// A dedup-only store keeps one instance of its zero-sized value at its first completion, for
/// every replay. A batch whose first guard (whose instance the batch set aside for that) lost
/// its lease must keep it at the completion that succeeds.
#[test]
fn a_first_completion_batch_whose_first_guard_lost_its_lease_still_replays() {
    let (clock, hand) = Clock::manual();
    let store: Store = Store::builder().shards(2).clock(clock).build().unwrap();
    let options = ClaimOptions::new().lease(Duration::from_secs(1));
    let Claim::Acquired(short) = store.claim_with("short", &options).unwrap() else {
        panic!("new");
    };
    hand.advance(Duration::from_secs(1));
    let Claim::Acquired(other) = store.claim("other").unwrap() else {
        panic!("new");
    };
    let mut results = vec![None; 2];
    store.complete_batch([(short, ()), (other, ())], |i, result| {
        results[i] = Some(result)
    });
    assert_eq!(results, [Some(Err(Error::LeaseLost)), Some(Ok(()))]);
    assert!(store.claim("other").unwrap().is_completed());
    assert!(store.claim("short").unwrap().is_acquired());
}

/// Clones of a store are the same store: a batch completes guards claimed through any of them.
#[test]
fn a_completion_batch_takes_guards_of_the_store_s_clones() {
    let store: Store<u8> = Store::builder().shards(4).build().unwrap();
    let clone = store.clone();
    let guards: Vec<_> = (0..50u128)
        .map(|id| {
            let by = if id % 2 == 0 { &store } else { &clone };
            match by.claim_id(id).unwrap() {
                Claim::Acquired(g) => (g, id as u8),
                other => panic!("{id} is new: {other:?}"),
            }
        })
        .collect();
    let mut ok = 0;
    store.complete_batch(guards, |_, result| {
        result.unwrap();
        ok += 1;
    });
    assert_eq!(ok, 50);
    for id in 0..50u128 {
        match clone.claim_id(id).unwrap() {
            Claim::Completed(r) => assert_eq!(*r.value(), id as u8),
            other => panic!("{id} completed: {other:?}"),
        }
    }
}
