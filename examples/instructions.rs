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
//! - `claim_complete`: claim and complete of new keys (dashmap has no second step).

use std::hint::black_box;
use std::time::Duration;

use dashmap::DashMap;
use idemstore::{Claim, Store};

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
    let fresh: Vec<u128> = (LIVE..LIVE + OPS).map(key).collect();
    let fresh2: Vec<u128> = (LIVE + OPS..LIVE + 2 * OPS).map(key).collect();

    let store: Store<()> = Store::builder()
        .initial_capacity((LIVE + 2 * OPS) as usize * 2)
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
