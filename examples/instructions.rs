//! Instructions per operation of a dedup-only `Store<()>` beside dashmap 6 (foldhash), counted
//! by valgrind's callgrind: exact and the same on every run, where wall time on a shared
//! machine moves by a third. One operation at a time, the instructions an operation runs limit
//! how many of the next operations' cache misses the CPU overlaps, so fewer is faster at
//! millions of keys too; this is the tool for small changes that timings cannot resolve.
//!
//! ```text
//! scripts/instructions.sh                 # builds this, runs each workload under callgrind
//! cargo run --release --example instructions -- replay    # one workload, natively (no counts)
//! ```
//!
//! Each workload is a function of its own (`instructions::run_<workload>`), which the script
//! tells callgrind to count inside (`--toggle-collect`). The store and the map are sized in
//! advance for the keys, so the counts are of the operation, not of growth; 100 000 live
//! keys, 100 000 operations:
//! - `replay`: claims of completed keys (every one a `Claim::Completed`), random among them;
//!   dashmap: `get`;
//! - `unique`: claims of new keys, the guard forgotten (only the claim counted); dashmap:
//!   `entry(k).or_insert(v)`;
//! - `claim_complete`: claim and complete of new keys (dashmap has no second step);
//! - `grouped_complete`: the same through `claim_id_batch_grouped`, 1024 keys per call, each
//!   acquired key completed in the call's callback; `grouped_together`: each call's keys
//!   completed together after it by `complete_batch`; `grouped_after`: completed one by one
//!   after it (idemstore alone).

use std::hint::black_box;
use std::time::Duration;

use dashmap::DashMap;
use idemstore::{Claim, Guard, Store};

#[path = "common/keys.rs"]
mod keys;
use keys::{key, mix};

type Map = DashMap<u128, u64, foldhash::fast::RandomState>;

const LIVE: u64 = 100_000;
const OPS: u64 = 100_000;

#[inline(never)]
fn run_idemstore_replay(store: &Store<()>, keys: &[u128]) {
    for &k in keys {
        match store.claim_id(k) {
            Ok(Claim::Completed(replay)) => {
                black_box(replay.value());
            }
            other => panic!("a completed key replays, got {other:?}"),
        }
    }
}

#[inline(never)]
fn run_idemstore_unique(store: &Store<()>, keys: &[u128]) {
    for &k in keys {
        match store.claim_id(k) {
            // Forgotten: only the claim is counted (see benches/claims.rs).
            Ok(Claim::Acquired(guard)) => std::mem::forget(guard),
            other => panic!("a new key is acquired, got {other:?}"),
        }
    }
}

#[inline(never)]
fn run_idemstore_claim_complete(store: &Store<()>, keys: &[u128]) {
    for &k in keys {
        match store.claim_id(k) {
            Ok(Claim::Acquired(guard)) => guard.complete(()).expect("the lease is 30 s"),
            other => panic!("a new key is acquired, got {other:?}"),
        }
    }
}

/// Claims `keys` 1024 at a time through `claim_id_batch_grouped`, and hands each call's guards
/// to `complete`.
fn grouped<'s>(
    store: &'s Store<()>,
    keys: &[u128],
    mut complete: impl FnMut(&mut Vec<Guard<'s, ()>>),
) {
    let mut guards = Vec::with_capacity(1024);
    for batch in keys.chunks(1024) {
        store.claim_id_batch_grouped(batch, |_, claim| match claim {
            Ok(Claim::Acquired(guard)) => guards.push(guard),
            other => panic!("a new key is acquired, got {other:?}"),
        });
        complete(&mut guards);
    }
}

#[inline(never)]
fn run_idemstore_grouped_complete(store: &Store<()>, keys: &[u128]) {
    for batch in keys.chunks(1024) {
        store.claim_id_batch_grouped(batch, |_, claim| match claim {
            Ok(Claim::Acquired(guard)) => guard.complete(()).expect("the lease is 30 s"),
            other => panic!("a new key is acquired, got {other:?}"),
        });
    }
}

#[inline(never)]
fn run_idemstore_grouped_together(store: &Store<()>, keys: &[u128]) {
    grouped(store, keys, |guards| {
        store.complete_batch(guards.drain(..).map(|g| (g, ())), |_, done| {
            done.expect("the lease is 30 s")
        })
    });
}

#[inline(never)]
fn run_idemstore_grouped_after(store: &Store<()>, keys: &[u128]) {
    grouped(store, keys, |guards| {
        for guard in guards.drain(..) {
            guard.complete(()).expect("the lease is 30 s");
        }
    });
}

#[inline(never)]
fn run_dashmap_replay(map: &Map, keys: &[u128]) {
    for k in keys {
        black_box(*map.get(k).expect("a present key"));
    }
}

#[inline(never)]
fn run_dashmap_unique(map: &Map, keys: &[u128]) {
    for &k in keys {
        black_box(*map.entry(k).or_insert(k as u64));
    }
}

fn main() {
    let only = std::env::args().nth(1);
    let wants = |w: &str| only.as_deref().is_none_or(|o| o == w);
    let live: Vec<u128> = (0..LIVE).map(key).collect();
    let picks: Vec<u128> = (0..OPS).map(|i| key(mix(i ^ 77) % LIVE)).collect();
    // Each workload that claims new keys has its own.
    let fresh_for =
        |w: u64| -> Vec<u128> { (LIVE + w * OPS..LIVE + (w + 1) * OPS).map(key).collect() };
    let (fresh, fresh2) = (fresh_for(0), fresh_for(1));

    let store: Store<()> = Store::builder()
        // Room for the new keys of every workload run (one under the script: the size that
        // earlier counts were made with).
        .initial_capacity((LIVE + if only.is_some() { 2 } else { 5 } * OPS) as usize * 2)
        .ttl(Duration::from_secs(86_400))
        .lease(Duration::from_secs(30))
        .build()
        .expect("a valid configuration");
    for &k in &live {
        if let Ok(Claim::Acquired(guard)) = store.claim_id(k) {
            guard.complete(()).expect("the lease is 30 s");
        }
    }
    if wants("replay") {
        run_idemstore_replay(&store, &picks);
    }
    if wants("unique") {
        run_idemstore_unique(&store, &fresh);
    }
    if wants("claim_complete") {
        run_idemstore_claim_complete(&store, &fresh2);
    }
    if wants("grouped_complete") {
        run_idemstore_grouped_complete(&store, &fresh_for(2));
    }
    if wants("grouped_together") {
        run_idemstore_grouped_together(&store, &fresh_for(3));
    }
    if wants("grouped_after") {
        run_idemstore_grouped_after(&store, &fresh_for(4));
    }
    drop(store);

    let map: Map = DashMap::with_capacity_and_hasher((LIVE + OPS) as usize * 2, Default::default());
    for &k in &live {
        map.insert(k, 1);
    }
    if wants("replay") {
        run_dashmap_replay(&map, &picks);
    }
    if wants("unique") {
        run_dashmap_unique(&map, &fresh);
    }
    println!("ran {} operations per workload", OPS);
}
