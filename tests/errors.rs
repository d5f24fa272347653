//! Every error and bad input: the typed `Error` variant, a message that says what to do, and
//! proof that the failed call changed nothing (counters, entries, and the state of the keys).

use std::time::Duration;

use idemstore::{
    Builder, Claim, ClaimOptions, Clock, Error, ManualClock, Stats, Store, DEFAULT_MAX_KEY_LEN,
    MAX_SCOPE_LEN, MAX_SHARDS, MAX_SPAN,
};

const TTL: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);

fn manual(builder: Builder<u32>) -> (Store<u32>, ManualClock) {
    let (clock, hand) = Clock::manual();
    let store = builder
        .seed(11)
        .ttl(TTL)
        .lease(LEASE)
        .clock(clock)
        .build()
        .expect("valid configuration");
    (store, hand)
}

fn store() -> (Store<u32>, ManualClock) {
    manual(Store::builder())
}

/// Everything observable about a store without touching its keys: its counters and entries.
///
/// `memory_bytes` is left out: a claim may do bounded expiry work on its shard's timing wheel
/// before it fails, which moves records between the wheel's buffers (housekeeping, not state).
/// So is `table_rebuilds`: a claim refused at a full shard first tries to make room, by a
/// rebuild that drops released keys, which changes no entry's state.
fn snapshot(store: &Store<u32>) -> (Stats, usize) {
    let mut stats = store.stats();
    stats.memory_bytes = 0;
    stats.table_rebuilds = 0;
    (stats, store.len())
}

/// The message a user sees: non-empty, and mentioning each of `hints`.
fn assert_message(err: &Error, hints: &[&str]) {
    let msg = err.to_string();
    assert!(!msg.trim().is_empty(), "{err:?} has an empty message");
    for hint in hints {
        assert!(
            msg.contains(hint),
            "the message of {err:?} should mention {hint:?}: {msg}"
        );
    }
}

fn acquire<'s>(store: &'s Store<u32>, key: &str) -> idemstore::Guard<'s, u32> {
    match store.claim(key).expect("valid claim") {
        Claim::Acquired(g) => g,
        other => panic!("{key}: expected Acquired, got {other:?}"),
    }
}

fn assert_in_progress(store: &Store<u32>, key: &str) {
    let c = store.claim(key).expect("valid claim");
    assert!(c.is_in_progress(), "{key}: expected InProgress, got {c:?}");
}

fn assert_replays(store: &Store<u32>, key: &str, value: u32) {
    match store.claim(key).expect("valid claim") {
        Claim::Completed(r) => assert_eq!(*r.value(), value, "{key}"),
        other => panic!("{key}: expected a replay of {value}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and scopes
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_key_is_refused_and_changes_nothing() {
    let (store, _hand) = store();
    let before = snapshot(&store);
    for err in [
        store.claim("").unwrap_err(),
        store.claim(b"").unwrap_err(),
        store
            .claim_with("", &ClaimOptions::new().scope("tenant").fingerprint("x"))
            .unwrap_err(),
    ] {
        match &err {
            Error::InvalidKey { reason, max_len } => {
                assert!(reason.contains("empty"), "{reason}");
                assert_eq!(*max_len, DEFAULT_MAX_KEY_LEN);
            }
            other => panic!("expected InvalidKey, got {other:?}"),
        }
        assert_message(&err, &["max_key_len"]);
    }
    assert_eq!(snapshot(&store), before);
    assert!(store.is_empty());
}

#[test]
fn key_longer_than_max_key_len_is_refused_and_exactly_max_is_accepted() {
    let (store, _hand) = store();
    let too_long = "k".repeat(DEFAULT_MAX_KEY_LEN + 1);
    let longest = "k".repeat(DEFAULT_MAX_KEY_LEN);
    let before = snapshot(&store);
    for err in [
        store.claim(&too_long).unwrap_err(),
        store
            .claim_with(&too_long, &ClaimOptions::new().scope("s"))
            .unwrap_err(),
    ] {
        match &err {
            Error::InvalidKey { reason, max_len } => {
                assert!(reason.contains("max_key_len"), "{reason}");
                assert_eq!(*max_len, DEFAULT_MAX_KEY_LEN);
            }
            other => panic!("expected InvalidKey, got {other:?}"),
        }
        assert_message(&err, &["max_key_len", &DEFAULT_MAX_KEY_LEN.to_string()]);
    }
    assert_eq!(snapshot(&store), before);
    // Exactly max_key_len bytes is a valid key, and refusing the longer one did not create it.
    acquire(&store, &longest).complete(1).unwrap();
    assert_replays(&store, &longest, 1);
}

#[test]
fn custom_max_key_len_is_enforced_at_the_boundary() {
    let (store, _hand) = manual(Store::builder().max_key_len(8));
    let before = snapshot(&store);
    let err = store.claim("123456789").unwrap_err();
    assert!(
        matches!(err, Error::InvalidKey { max_len: 8, .. }),
        "{err:?}"
    );
    assert_message(&err, &["max_key_len", "8"]);
    assert_eq!(snapshot(&store), before);
    acquire(&store, "12345678").complete(8).unwrap();
    // A one-byte key is the shortest valid key.
    acquire(&store, "1").complete(1).unwrap();
    assert_eq!(store.len(), 2);
}

#[test]
fn scope_over_max_scope_len_is_refused_and_exactly_max_is_accepted() {
    let (store, _hand) = store();
    let too_long = vec![b's'; MAX_SCOPE_LEN + 1];
    let longest = vec![b's'; MAX_SCOPE_LEN];
    let g = acquire(&store, "k");
    let before = snapshot(&store);
    let err = store
        .claim_with("k", &ClaimOptions::new().scope(&too_long))
        .unwrap_err();
    assert_scope_one_over(&err);
    assert_message(&err, &[&MAX_SCOPE_LEN.to_string()]);
    assert_eq!(snapshot(&store), before);
    // The unscoped key is still in flight under its owner.
    assert_in_progress(&store, "k");
    g.complete(5).unwrap();
    let scoped = ClaimOptions::new().scope(&longest);
    match store.claim_with("k", &scoped).unwrap() {
        Claim::Acquired(g) => g.complete(6).unwrap(),
        other => panic!("a scope of exactly MAX_SCOPE_LEN is valid: {other:?}"),
    }
    assert_replays(&store, "k", 5);
}

// ---------------------------------------------------------------------------------------------
// Leases in claims and in extend
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_claim_lease_is_refused_and_changes_nothing() {
    let (store, hand) = store();
    let held = acquire(&store, "held");
    let deadline = held.lease_deadline();
    let over = MAX_SPAN + Duration::from_nanos(1);
    let sub_ms = Duration::from_micros(999);
    for lease in [
        Duration::ZERO,
        Duration::from_nanos(1),
        sub_ms,
        over,
        Duration::MAX,
    ] {
        let before = snapshot(&store);
        for key in ["fresh", "held"] {
            let err = store
                .claim_with(key, &ClaimOptions::new().lease(lease))
                .unwrap_err();
            assert_eq!(
                err,
                Error::InvalidLease {
                    lease,
                    max: MAX_SPAN
                },
                "{key}"
            );
            assert_message(&err, &["1 ms"]);
        }
        assert_eq!(snapshot(&store), before, "lease {lease:?}");
    }
    // "fresh" was never created, "held" still belongs to its owner with its old lease.
    assert_eq!(held.lease_deadline(), deadline);
    assert_in_progress(&store, "held");
    let Claim::Acquired(fresh) = store
        .claim_with("fresh", &ClaimOptions::new().lease(MAX_SPAN))
        .unwrap()
    else {
        panic!("MAX_SPAN itself is a valid lease")
    };
    assert_eq!(fresh.lease_deadline(), MAX_SPAN);
    hand.advance(MS);
    let Claim::Acquired(short) = store
        .claim_with("short", &ClaimOptions::new().lease(MS))
        .unwrap()
    else {
        panic!("1 ms is a valid lease")
    };
    assert_eq!(short.lease_remaining(), MS);
    held.complete(1).unwrap();
    fresh.complete(2).unwrap();
    short.complete(3).unwrap();
}

#[test]
fn invalid_extend_is_refused_and_the_guard_stays_usable() {
    let (store, hand) = store();
    let mut g = acquire(&store, "k");
    let deadline = g.lease_deadline();
    let over = MAX_SPAN + MS;
    for lease in [Duration::ZERO, over] {
        let before = snapshot(&store);
        let err = g.extend(lease).unwrap_err();
        assert_eq!(
            err,
            Error::InvalidLease {
                lease,
                max: MAX_SPAN
            }
        );
        assert_message(&err, &["1 ms"]);
        assert_eq!(g.lease_deadline(), deadline, "the lease is unchanged");
        assert_eq!(snapshot(&store), before);
        assert_in_progress(&store, "k");
    }
    // Still the owner: a valid extend and a complete work.
    hand.advance(Duration::from_secs(4));
    g.extend(Duration::from_secs(10)).unwrap();
    assert_eq!(g.lease_deadline(), Duration::from_secs(14));
    hand.advance(Duration::from_secs(9));
    assert_in_progress(&store, "k");
    g.complete(42).unwrap();
    assert_replays(&store, "k", 42);
    assert_eq!(store.stats().completions, 1);
}

#[test]
fn invalid_extend_after_the_lease_ran_out_is_still_invalid_lease_and_harmless() {
    let (store, hand) = store();
    let mut g = acquire(&store, "k");
    hand.advance(LEASE);
    assert!(matches!(
        g.extend(Duration::ZERO),
        Err(Error::InvalidLease { .. })
    ));
    // The input is checked first; the lease itself is lost.
    assert_eq!(g.extend(LEASE), Err(Error::LeaseLost));
    assert_eq!(g.complete(1), Err(Error::LeaseLost));
    let Claim::Acquired(next) = store.claim("k").unwrap() else {
        panic!("the lease ran out: the key is claimable")
    };
    next.complete(2).unwrap();
    assert_replays(&store, "k", 2);
}

/// `err` is the refusal of a scope one byte over [`MAX_SCOPE_LEN`].
fn assert_scope_one_over(err: &Error) {
    assert_eq!(
        *err,
        Error::InvalidScope {
            len: MAX_SCOPE_LEN + 1,
            max_len: MAX_SCOPE_LEN
        }
    );
}

#[test]
fn claim_id_checks_its_lease_and_its_scope() {
    let (store, _hand) = store();
    let before = snapshot(&store);
    let err = store
        .claim_id_with(7, &ClaimOptions::new().lease(Duration::ZERO))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidLease { .. }), "{err:?}");
    assert_eq!(snapshot(&store), before);
    // A scope is checked as for keys of bytes: an over-long one changes nothing.
    let long_scope = vec![b's'; MAX_SCOPE_LEN + 1];
    let err = store
        .claim_id_with(7, &ClaimOptions::new().scope(&long_scope))
        .unwrap_err();
    assert_scope_one_over(&err);
    assert_message(&err, &[]);
    assert_eq!(snapshot(&store), before);
    assert!(
        store.claim_id(7).unwrap().is_acquired(),
        "7 was never claimed"
    );
}

#[test]
fn scoped_ids_are_keys_of_their_scope() {
    let (store, _hand) = store();
    let in_scope = |scope: &str| {
        store
            .claim_id_with(7, &ClaimOptions::new().scope(scope))
            .unwrap()
    };
    // The same id in two tenants' scopes is two keys, and neither is the unscoped id.
    let Claim::Acquired(a) = in_scope("tenant-a") else {
        panic!("a new key")
    };
    let Claim::Acquired(b) = in_scope("tenant-b") else {
        panic!("the same id in another scope is another key")
    };
    a.complete(1).unwrap();
    b.complete(2).unwrap();
    let replayed = |claim: Claim<'_, u32>| match claim {
        Claim::Completed(r) => *r.value(),
        other => panic!("a replay, got {other:?}"),
    };
    assert_eq!(replayed(in_scope("tenant-a")), 1);
    assert_eq!(replayed(in_scope("tenant-b")), 2);
    let Claim::Acquired(unscoped) = store.claim_id(7).unwrap() else {
        panic!("the unscoped id is a key of its own")
    };
    unscoped.complete(3).unwrap();
    // An empty scope is no scope, as for keys of bytes.
    assert_eq!(
        replayed(store.claim_id_with(7, &ClaimOptions::new()).unwrap()),
        3
    );
    assert_eq!(replayed(in_scope("")), 3);
    // A scoped id is not the key made of the id's 16 bytes in that scope.
    let bytes = 7u128.to_le_bytes();
    let opts = ClaimOptions::new().scope("tenant-a");
    assert!(store.claim_with(bytes, &opts).unwrap().is_acquired());
}

// ---------------------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------------------

fn config_error(builder: Builder<u32>) -> String {
    match builder.build() {
        Err(Error::InvalidConfig(msg)) => {
            let err = Error::InvalidConfig(msg.clone());
            assert_message(&err, &[]);
            assert!(!msg.trim().is_empty());
            err.to_string()
        }
        Err(other) => panic!("expected InvalidConfig, got {other:?}"),
        Ok(store) => panic!("expected InvalidConfig, built {store:?}"),
    }
}

#[test]
fn builder_refuses_bad_ttl() {
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(999),
        MAX_SPAN + Duration::from_nanos(1),
        Duration::MAX,
    ] {
        let msg = config_error(Store::builder().ttl(ttl));
        assert!(msg.contains("ttl") && msg.contains("1 ms"), "{msg}");
    }
    // The bounds themselves are valid.
    for ttl in [MS, MAX_SPAN] {
        Store::<u32>::builder().ttl(ttl).build().unwrap();
    }
}

#[test]
fn builder_refuses_bad_lease() {
    for lease in [
        Duration::ZERO,
        Duration::from_micros(999),
        MAX_SPAN + Duration::from_nanos(1),
    ] {
        let msg = config_error(Store::builder().lease(lease));
        assert!(msg.contains("lease") && msg.contains("1 ms"), "{msg}");
    }
    for lease in [MS, MAX_SPAN] {
        Store::<u32>::builder().lease(lease).build().unwrap();
    }
}

#[test]
fn builder_refuses_shards_that_are_not_a_power_of_two() {
    for shards in [0, 3, 6, 100, MAX_SHARDS + 1, MAX_SHARDS * 2] {
        let msg = config_error(Store::builder().max_entries(1 << 20).shards(shards));
        assert!(msg.contains("power of two"), "shards {shards}: {msg}");
    }
    for shards in [1, 2, 64] {
        Store::<u32>::builder().shards(shards).build().unwrap();
    }
}

#[test]
fn builder_refuses_more_shards_than_max_entries() {
    let msg = config_error(Store::builder().max_entries(4).shards(8));
    assert!(
        msg.contains("max_entries") && msg.contains("shards"),
        "{msg}"
    );
    // As many shards as entries is fine: one key per shard.
    Store::<u32>::builder()
        .max_entries(8)
        .shards(8)
        .build()
        .unwrap();
}

#[test]
fn builder_refuses_zero_max_entries() {
    let msg = config_error(Store::builder().max_entries(0));
    assert!(msg.contains("max_entries"), "{msg}");
    let msg = config_error(Store::builder().max_entries(0).shards(1));
    assert!(msg.contains("max_entries"), "{msg}");
    Store::<u32>::builder().max_entries(1).build().unwrap();
}

#[test]
fn builder_refuses_zero_max_key_len() {
    let msg = config_error(Store::builder().max_key_len(0));
    assert!(msg.contains("max_key_len"), "{msg}");
    Store::<u32>::builder().max_key_len(1).build().unwrap();
}

#[test]
fn builder_refuses_zero_maintenance_interval() {
    let msg = config_error(Store::builder().maintenance_interval(Duration::ZERO));
    assert!(msg.contains("maintenance_interval"), "{msg}");
    Store::<u32>::builder()
        .maintenance_interval(Duration::from_millis(1))
        .build()
        .unwrap();
}

#[test]
fn builder_refuses_more_keys_per_shard_than_a_table_can_index() {
    // Slot indices are 32-bit: 3 billion keys in one shard could need a table of more than
    // 2^32 slots (a rebuild may take a kept table up to a quarter larger than it would make).
    let err = Store::<()>::builder()
        .shards(1)
        .max_entries(3_000_000_000)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    assert_message(&err, &["max_entries", "raise shards"]);
    // Over two shards they fit; nothing is allocated for them up front.
    let store = Store::<()>::builder()
        .shards(2)
        .max_entries(3_000_000_000)
        .build()
        .unwrap();
    assert_eq!(store.stats().max_entries, 3_000_000_000);
}

/// Memory the machine could back, if it refuses allocations beyond it: RAM + swap under the
/// kernel's default (heuristic) or strict overcommit; `None` where it grants any (Linux mode
/// 1) or cannot be read.
fn memory_limit() -> Option<u64> {
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").ok()?;
    if mode.trim() == "1" {
        return None;
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |field: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kb("MemTotal:")? + kb("SwapTotal:")?) * 1024)
}

#[test]
fn builder_refuses_tables_the_machine_cannot_allocate() {
    // Two billion keys sized in advance in one shard: a table of about 2.35 billion slots,
    // 59 GB, made when the store is built.
    let wanted: u64 = 2_352_941_176 * 25;
    let Some(limit) = memory_limit().filter(|&l| l < wanted) else {
        eprintln!("skipped: this machine may grant {wanted} bytes (overcommit or memory)");
        return;
    };
    let err = Store::<()>::builder()
        .shards(1)
        .max_entries(2_000_000_000)
        .initial_capacity(2_000_000_000)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfig(_)),
        "{err:?} ({limit} bytes here)"
    );
    assert_message(&err, &["initial_capacity", "smaller"]);
}

#[test]
fn builder_refuses_a_dedup_only_store_the_same_way() {
    // V = () goes through the same checks.
    assert!(matches!(
        Store::<()>::builder().shards(3).build(),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        Store::<()>::builder().ttl(Duration::ZERO).build(),
        Err(Error::InvalidConfig(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Capacity
// ---------------------------------------------------------------------------------------------

const CAP: usize = 4;

fn bounded() -> (Store<u32>, ManualClock) {
    manual(Store::builder().shards(1).max_entries(CAP))
}

fn assert_full(store: &Store<u32>, key: &str) {
    let before = snapshot(store);
    let err = store.claim(key).unwrap_err();
    assert_eq!(err, Error::CapacityExceeded { limit: CAP }, "{key}");
    assert_message(&err, &["max_entries"]);
    let after = snapshot(store);
    assert_eq!(
        after.0.rejected,
        before.0.rejected + 1,
        "counted as rejected"
    );
    let mut expected = before.0;
    expected.rejected += 1;
    assert_eq!(after.0, expected, "only the rejected counter moved");
    assert_eq!(after.1, before.1, "no entry was added");
}

#[test]
fn capacity_is_exact_with_one_shard_and_live_keys_are_never_evicted() {
    let (store, hand) = bounded();
    let a = acquire(&store, "a");
    acquire(&store, "b").complete(2).unwrap();
    let c = acquire(&store, "c");
    acquire(&store, "d").complete(4).unwrap();
    assert_eq!(store.len(), CAP);
    for i in 0..100 {
        assert_full(&store, &format!("new-{i}"));
    }
    assert_eq!(store.stats().rejected, 100);
    // Every live key is still there, in its state.
    assert_in_progress(&store, "a");
    assert_replays(&store, "b", 2);
    assert_in_progress(&store, "c");
    assert_replays(&store, "d", 4);
    // Time passes within every deadline: still full, nothing evicted.
    hand.advance(LEASE - MS);
    assert_full(&store, "new-x");
    a.complete(1).unwrap();
    c.complete(3).unwrap();
    assert_full(&store, "new-y");
    for (k, v) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
        assert_replays(&store, k, v);
    }
    assert_eq!(store.len(), CAP);
}

#[test]
fn capacity_admits_new_keys_after_the_ttl_of_some_passes() {
    let (store, hand) = bounded();
    acquire(&store, "old-1").complete(1).unwrap();
    acquire(&store, "old-2").complete(2).unwrap();
    hand.advance(Duration::from_secs(30));
    acquire(&store, "young-1").complete(3).unwrap();
    acquire(&store, "young-2").complete(4).unwrap();
    assert_full(&store, "new-1");
    // One millisecond before the old keys' window ends: still full.
    hand.advance(Duration::from_secs(30) - MS);
    assert_full(&store, "new-1");
    assert_replays(&store, "old-1", 1);
    hand.advance(MS);
    // The two old keys expired: exactly two new keys are admitted.
    acquire(&store, "new-1").complete(5).unwrap();
    acquire(&store, "new-2").complete(6).unwrap();
    assert_full(&store, "new-3");
    assert_replays(&store, "young-1", 3);
    assert_replays(&store, "young-2", 4);
    assert_eq!(store.len(), CAP);
}

#[test]
fn capacity_released_keys_free_room_at_once() {
    let (store, _hand) = bounded();
    let guards: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|k| acquire(&store, k))
        .collect();
    assert_full(&store, "e");
    let mut guards = guards.into_iter();
    guards.next().unwrap().release().unwrap();
    // Dropping is releasing too.
    drop(guards.next().unwrap());
    acquire(&store, "e").complete(5).unwrap();
    acquire(&store, "f").complete(6).unwrap();
    assert_full(&store, "g");
    // The released keys are not held any more: claiming one now needs room as well.
    assert_full(&store, "a");
    for g in guards {
        g.complete(0).unwrap();
    }
    assert_eq!(store.stats().releases, 2);
}

#[test]
fn capacity_expired_leases_free_room_and_their_owners_lose_the_key() {
    let (store, hand) = bounded();
    let stale = acquire(&store, "a");
    for k in ["b", "c", "d"] {
        acquire(&store, k).complete(0).unwrap();
    }
    assert_full(&store, "e");
    hand.advance(LEASE);
    acquire(&store, "e").complete(5).unwrap();
    assert_eq!(stale.complete(1), Err(Error::LeaseLost));
    assert_full(&store, "a");
    assert_replays(&store, "e", 5);
}

#[test]
fn capacity_completed_entries_with_a_ttl_shorter_than_the_lease_free_room_at_their_ttl() {
    let (store, hand) = manual(
        Store::builder()
            .shards(1)
            .max_entries(CAP)
            .lease(Duration::from_secs(120)),
    );
    for k in ["a", "b", "c", "d"] {
        acquire(&store, k).complete(0).unwrap();
    }
    assert_full(&store, "e");
    hand.advance(TTL);
    // The window (60 s) ended, although the leases they completed under (120 s) did not.
    for k in ["e", "f", "g", "h"] {
        acquire(&store, k).complete(1).unwrap();
    }
    assert_full(&store, "i");
}

#[test]
fn capacity_with_several_shards_never_exceeds_max_entries() {
    // 10 entries over 4 shards: the shards hold 3, 3, 2 and 2 keys.
    let (store, _hand) = manual(Store::builder().shards(4).max_entries(10));
    let (mut admitted, mut refused) = (0, 0);
    for i in 0..1_000 {
        let key = format!("m-{i}");
        let before = snapshot(&store);
        match store.claim(&key) {
            Ok(Claim::Acquired(g)) => {
                g.complete(i).unwrap();
                admitted += 1;
            }
            Err(Error::CapacityExceeded { limit }) => {
                assert!(limit == 2 || limit == 3, "a shard's bound, got {limit}");
                let after = snapshot(&store);
                assert_eq!(after.1, before.1, "a refused claim adds no entry");
                assert_eq!(after.0.rejected, before.0.rejected + 1);
                refused += 1;
            }
            Ok(other) => panic!("{key} is new: {other:?}"),
            Err(e) => panic!("{key}: {e:?}"),
        }
        assert!(store.len() <= 10);
    }
    // A thousand keys fill every shard: exactly max_entries were admitted.
    assert_eq!(admitted, 10);
    assert_eq!(refused, 990);
    assert_eq!(store.stats().rejected, 990);
    assert_eq!(store.len(), 10);
}

/// A released key that is claimed again with a shorter lease than the one it was released
/// under: once that shorter lease runs out the entry is dead and must make room.
///
/// This fails on the engine at the time of writing (reported to the owner): the entry keeps
/// its wheel record at the old lease deadline, the reuse sets neither the shard's `vacant`
/// count nor its `shortened` flag, so `make_room` neither reclaims nor sweeps it until the old
/// deadline, and the new key is refused with `CapacityExceeded` while only 3 of 4 keys live.
#[test]
fn capacity_a_released_key_reclaimed_with_a_shorter_lease_frees_room_when_that_lease_ends() {
    let (store, hand) = bounded();
    let g = store
        .claim_with("a", &ClaimOptions::new().lease(Duration::from_secs(30)))
        .unwrap();
    let Claim::Acquired(g) = g else { panic!() };
    g.release().unwrap();
    let Claim::Acquired(short) = store
        .claim_with("a", &ClaimOptions::new().lease(Duration::from_secs(1)))
        .unwrap()
    else {
        panic!("a released key is claimable")
    };
    for k in ["b", "c", "d"] {
        acquire(&store, k).complete(0).unwrap();
    }
    assert_full(&store, "e");
    hand.advance(Duration::from_secs(1));
    // "a"'s lease ran out: three live keys of four.
    match store.claim("e") {
        Ok(Claim::Acquired(g)) => g.complete(5).unwrap(),
        other => panic!(
            "only 3 of {CAP} keys are live (a's 1 s lease ran out), a new key must be \
             admitted; got {other:?}"
        ),
    }
    assert_eq!(short.complete(1), Err(Error::LeaseLost));
}

/// Completed keys whose expiry records wait in a shard's ttl queue (their leases ended long
/// before their windows do) make room at the bound the moment their windows end, though the
/// queue's chunk that holds them is not wholly due yet; they replay until then.
#[test]
fn capacity_queued_keys_make_room_the_moment_their_windows_end() {
    let (store, hand) = bounded();
    for (value, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
        acquire(&store, key).complete(value as u32).unwrap();
        hand.advance(10 * MS);
    }
    // Past the leases: maintenance finds every key completed with 55 s to go, and queues it.
    hand.advance(LEASE);
    store.run_maintenance();
    assert_full(&store, "e");
    assert_replays(&store, "b", 1);
    // "a"'s window ends (60 s after it completed at 0 ms); "b"'s ends 10 ms later.
    hand.advance(TTL - LEASE - 40 * MS);
    acquire(&store, "e").complete(4).unwrap();
    assert_full(&store, "f");
    assert_replays(&store, "b", 1);
    hand.advance(10 * MS);
    acquire(&store, "f").complete(5).unwrap();
    assert_eq!(store.len(), CAP);
    assert_eq!(store.stats().ttl_expiries, 2);
}

// ---------------------------------------------------------------------------------------------
// Stale guards
// ---------------------------------------------------------------------------------------------

#[test]
fn stale_guards_get_lease_lost_and_the_new_owners_result_stands() {
    let (store, hand) = store();
    let mut stale_a = acquire(&store, "a");
    let stale_b = acquire(&store, "b");
    let stale_c = acquire(&store, "c");
    let (ta, tb) = (stale_a.token(), stale_b.token());
    hand.advance(LEASE);
    let Claim::Acquired(new_a) = store.claim("a").unwrap() else {
        panic!("lease ran out: takeover")
    };
    let Claim::Acquired(new_b) = store.claim("b").unwrap() else {
        panic!("lease ran out: takeover")
    };
    assert!(new_a.is_takeover() && new_b.is_takeover());
    assert!(new_a.token() > ta && new_b.token() > tb);

    // Stale extend, then stale release, on "a": both LeaseLost, nothing changes.
    let before = snapshot(&store);
    let err = stale_a.extend(LEASE).unwrap_err();
    assert_eq!(err, Error::LeaseLost);
    assert_message(&err, &["extend", "claim the key again"]);
    assert_eq!(stale_a.release(), Err(Error::LeaseLost));
    assert_eq!(snapshot(&store), before);
    assert_in_progress(&store, "a");

    // Stale complete on "b" while the new owner works, and again after it completed.
    assert_eq!(stale_b.complete(666), Err(Error::LeaseLost));
    assert_in_progress(&store, "b");
    new_b.complete(2).unwrap();
    assert_replays(&store, "b", 2);

    // The new owner of "a" is unaffected by the stale guard's attempts.
    new_a.complete(1).unwrap();
    assert_replays(&store, "a", 1);

    // A lease that ran out without a takeover is lost too (the strict reading): nothing is
    // written, and the key is then taken over.
    let before = snapshot(&store);
    assert_eq!(stale_c.complete(3), Err(Error::LeaseLost));
    assert_eq!(snapshot(&store), before);
    let Claim::Acquired(new_c) = store.claim("c").unwrap() else {
        panic!("lease ran out: claimable")
    };
    new_c.complete(3).unwrap();

    let s = store.stats();
    assert_eq!(s.completions, 3, "only the owners' completions count");
    assert_eq!(s.releases, 0, "stale releases do not count");
}

#[test]
fn guard_operations_fail_exactly_at_the_lease_deadline() {
    let (store, hand) = store();
    let g1 = acquire(&store, "one");
    let g2 = acquire(&store, "two");
    let mut g3 = acquire(&store, "three");
    hand.advance(LEASE - MS);
    // One millisecond before the deadline the guard still owns its key.
    g3.extend(MS).unwrap();
    g1.complete(1).unwrap();
    hand.advance(MS);
    let before = snapshot(&store);
    assert_eq!(g2.release(), Err(Error::LeaseLost));
    assert_eq!(g3.extend(LEASE), Err(Error::LeaseLost));
    assert_eq!(g3.complete(3), Err(Error::LeaseLost));
    assert_eq!(snapshot(&store), before);
    assert_replays(&store, "one", 1);
}

#[test]
fn dropping_a_stale_guard_does_not_release_the_new_owners_key() {
    let (store, hand) = store();
    let stale = acquire(&store, "k");
    hand.advance(LEASE);
    let owner = acquire(&store, "k");
    assert!(owner.is_takeover());
    let before = snapshot(&store);
    drop(stale);
    assert_eq!(snapshot(&store), before);
    assert_in_progress(&store, "k");
    owner.complete(7).unwrap();
    assert_replays(&store, "k", 7);
}

#[test]
fn a_stale_guard_cannot_touch_a_key_that_completed_and_was_claimed_again() {
    // The key's whole life turns over while the stale guard waits: it completes under a newer
    // owner, its window ends, and a third owner holds it.
    let (store, hand) = store();
    let stale = acquire(&store, "k");
    hand.advance(LEASE);
    acquire(&store, "k").complete(1).unwrap();
    hand.advance(TTL);
    let third = acquire(&store, "k");
    assert!(!third.is_takeover());
    let before = snapshot(&store);
    assert_eq!(stale.complete(2), Err(Error::LeaseLost));
    assert_eq!(snapshot(&store), before);
    third.complete(3).unwrap();
    assert_replays(&store, "k", 3);
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

#[test]
fn every_error_message_says_what_to_do() {
    let cases: Vec<(Error, &[&str])> = vec![
        (
            Error::InvalidKey {
                reason: "the key is empty",
                max_len: 255,
            },
            &["max_key_len", "255"],
        ),
        (
            Error::InvalidScope {
                len: 5000,
                max_len: MAX_SCOPE_LEN,
            },
            &["5000", "hash"],
        ),
        (
            Error::CapacityExceeded { limit: 10 },
            &["max_entries", "retry"],
        ),
        (Error::LeaseLost, &["extend", "claim the key again"]),
        (
            Error::InvalidLease {
                lease: Duration::ZERO,
                max: MAX_SPAN,
            },
            &["1 ms"],
        ),
        (
            Error::InvalidConfig("shards is 3; it must be a power of two".into()),
            &["power of two"],
        ),
    ];
    for (err, hints) in &cases {
        assert_message(err, hints);
        // Errors are plain data: cloneable, comparable, and a std error.
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err.clone());
        assert_eq!(boxed.to_string(), err.to_string());
    }
}

#[test]
fn value_over_max_value_size_is_refused_stores_nothing_and_releases_the_key() {
    let (clock, _hand) = Clock::manual();
    let store: Store<Vec<u8>> = Store::builder()
        .seed(11)
        .clock(clock)
        .max_value_size(100)
        .weigher(|v: &Vec<u8>| v.len())
        .build()
        .unwrap();
    assert_eq!(store.check_value(&vec![0; 100]), Ok(100));
    let big = vec![0; 101];
    let err = store.check_value(&big).unwrap_err();
    assert_eq!(
        err,
        Error::ValueTooLarge {
            size: 101,
            limit: 100
        }
    );
    assert_message(&err, &["101", "100", "max_value_size"]);

    let Claim::Acquired(g) = store.claim("k").unwrap() else {
        panic!()
    };
    let first = g.token();
    assert_eq!(g.complete(big), Err(err));
    let after = store.stats();
    assert_eq!((after.completions, after.releases), (0, 1));
    // Nothing was stored: the key is free again, as after any dropped guard.
    match store.claim("k").unwrap() {
        Claim::Acquired(g) => {
            assert!(g.token() > first && !g.is_takeover());
            g.complete(vec![1; 100]).expect("exactly the limit fits");
        }
        other => panic!("the key must be free: {other:?}"),
    }
    let replayed = match store.claim("k").unwrap() {
        Claim::Completed(r) => r.value().clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(replayed, vec![1; 100]);
}

#[test]
fn default_weigher_is_the_size_of_the_value_type() {
    let (bounded, _hand) = manual(Store::builder().max_value_size(3));
    // u32 weighs 4 bytes by default.
    assert_eq!(
        bounded.check_value(&1),
        Err(Error::ValueTooLarge { size: 4, limit: 3 })
    );
    let g = acquire(&bounded, "k");
    assert_eq!(
        g.complete(1),
        Err(Error::ValueTooLarge { size: 4, limit: 3 })
    );
    let st = bounded.stats();
    assert_eq!(
        (st.completions, st.releases),
        (0, 1),
        "nothing stored; released"
    );
    let g = acquire(&bounded, "k");
    assert!(!g.is_takeover());
    // Unbounded by default.
    let (unbounded, _hand) = store();
    assert_eq!(unbounded.check_value(&u32::MAX), Ok(4));
    drop(g);
}
