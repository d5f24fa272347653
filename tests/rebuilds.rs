//! Tables large enough to rebuild the way big stores do: a spare table made outside the shard
//! lock before each rebuild, and at steady state tables taken from the store's pool of emptied
//! ones (tables of 4,096 slots and more; smaller ones rebuild at once under the lock). Two
//! threads churn a store through growth and then a steady state where keys expire as fast as
//! they arrive, and every outcome is checked against what the key's history says it must be.
//! With two threads on four shards, a rebuild's other half is often moved by the other thread
//! (`Help` in `src/table.rs`). (Counted once with temporary prints: 55 rebuilds into spares, 23
//! of them made fresh and 34 taken from the pool, in the fourth session; 32 halves moved by the
//! other thread, in the fifth.)

use std::collections::HashMap;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use idemstore::{Claim, Clock, Store};

/// New keys per thread per step; the clock moves [`STEP_MS`] per step, so with a ttl of
/// [`TTL_MS`] about `2 * NEW * TTL_MS / STEP_MS` = 80,000 keys are live at steady state
/// (20,000 per shard, tables of about 30,000 slots).
const NEW: u64 = 2_000;
const STEP_MS: u64 = 10;
const TTL_MS: u64 = 200;
const STEPS: u64 = 300;

#[test]
fn growth_and_steady_state_churn_keep_every_outcome() {
    let (clock, hand) = Clock::manual();
    let store: Store<u64> = Store::builder()
        .shards(4)
        .ttl(Duration::from_millis(TTL_MS))
        .lease(Duration::from_secs(60))
        .max_entries(1_000_000)
        .clock(clock)
        .build()
        .unwrap();
    assert_eq!(store.stats().table_rebuilds, 0);
    let barrier = Barrier::new(2);
    thread::scope(|s| {
        for t in 0..2u64 {
            let (store, barrier, hand) = (&store, &barrier, &hand);
            s.spawn(move || {
                // When each of this thread's keys completed (ms), to know what a claim must see.
                let mut completed: HashMap<u64, u64> = HashMap::new();
                for step in 0..STEPS {
                    let now = step * STEP_MS;
                    for i in 0..NEW {
                        let id = (step * NEW + i) * 2 + t;
                        let Claim::Acquired(g) = store.claim_id(u128::from(id)).unwrap() else {
                            panic!("new key {id} not acquired at step {step}")
                        };
                        g.complete(id).unwrap();
                        completed.insert(id, now);
                    }
                    // Retries of keys completed half a window ago replay their values; keys
                    // whose window ran out are acquired afresh (and released by the drop).
                    for back in [TTL_MS / 2, TTL_MS + STEP_MS] {
                        let Some(then) = step.checked_sub(back / STEP_MS) else {
                            continue;
                        };
                        for i in (0..NEW).step_by(7) {
                            let id = (then * NEW + i) * 2 + t;
                            let done = completed[&id];
                            let claim = store.claim_id(u128::from(id)).unwrap();
                            match claim {
                                Claim::Completed(r) if now < done + TTL_MS => {
                                    assert_eq!(*r.value(), id, "key {id} at step {step}");
                                }
                                Claim::Acquired(g) if now >= done + TTL_MS => {
                                    assert!(!g.is_takeover());
                                    completed.insert(id, u64::MAX / 2);
                                }
                                other => panic!(
                                    "key {id} completed at {done} ms, claimed at {now} ms: \
                                     {other:?}"
                                ),
                            }
                        }
                    }
                    completed.retain(|_, &mut done| done + 2 * TTL_MS + STEP_MS > now);
                    // Both threads finish the step before the clock moves on.
                    if barrier.wait().is_leader() {
                        hand.advance(Duration::from_millis(STEP_MS));
                        if step % 16 == 0 {
                            store.run_maintenance();
                        }
                    }
                    barrier.wait();
                }
            });
        }
    });
    let held = store.len() as u64;
    let live = 2 * NEW * TTL_MS / STEP_MS;
    assert!(
        (live..2 * live).contains(&held),
        "{held} entries held for {live} live keys"
    );
    let s = store.stats();
    assert_eq!(s.completions, 2 * NEW * STEPS);
    // Each shard grew from the smallest table (16 slots) to about 30,000 slots, by 1.3 to 1.5
    // times per rebuild.
    assert!(s.table_rebuilds >= 4 * 15, "{s:?}");
    assert!(
        s.ttl_expiries > 2 * NEW * (STEPS - 2 * TTL_MS / STEP_MS),
        "{s:?}"
    );
    // Everything runs out and is reclaimed; the kept tables stay within a few tables' worth.
    hand.advance(Duration::from_millis(TTL_MS + 60_000));
    store.run_maintenance();
    assert_eq!(store.len(), 0);
}
