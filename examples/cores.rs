//! What the two cores cost each other: claims of new keys (and claim + complete) into stores
//! filled with 10 M live keys, tables sized in advance, three ways, in turn in one process:
//!
//! - `shared`: one store, two threads, each claiming keys of any shard (how a service uses it);
//! - `apart`: two stores of half the shards each, one per thread (as many keys, as much table
//!   memory and as full tables as `shared`, but no shard that both threads write);
//! - `one`: one store, one thread.
//!
//! ```text
//! cargo run --release --example cores                    # 10 M live keys, 3 rounds
//! cargo run --release --example cores -- --keys 1000000 --rounds 3
//! ```
//!
//! Each round claims 2 M never-seen keys per way and workload, one at a time (`claim_id`), in
//! batches of 64 (`claim_id_batch`) and in batches of 1024 grouped by shard
//! (`claim_id_batch_grouped`), and prints the medians. The stores are sized for every key they
//! take in (10 M + 36 M with three rounds; about 4.5 GB in all), so no table is rebuilt, but
//! each workload runs slightly fuller tables than the one before it (2 M keys more of 46 M):
//! compare the ways, which run at the same fill, and read small differences between workloads
//! with that in mind. Where `apart` runs far ahead of `shared`, the shard lines the other core
//! wrote last (the lock's word, the wheel's stage, the counts, the ttl queue's tail) cost more
//! than the table's cache misses; grouping a batch by shard pays for them once per shard and
//! batch; see "Where the rest of the speed is" in the README.

use std::time::Instant;

use idemstore::{Claim, Store, MAX_SPAN};

#[path = "common/keys.rs"]
mod keys;

/// Never-seen keys per way, workload and round.
const PER_ROUND: u64 = 2_000_000;
/// Keys per `claim_id_batch` call.
const BATCH: usize = 64;
/// Keys per `claim_id_batch_grouped` call.
const GROUPED: usize = 1024;

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Shared,
    Apart,
    One,
}

impl Way {
    const ALL: [Way; 3] = [Way::Shared, Way::Apart, Way::One];

    fn name(self) -> &'static str {
        match self {
            Way::Shared => "shared",
            Way::Apart => "apart",
            Way::One => "one",
        }
    }
}

/// How a workload hands its keys to the store.
#[derive(Clone, Copy, PartialEq)]
enum Calls {
    /// `claim_id`, one key per call.
    One,
    /// `claim_id_batch`, [`BATCH`] keys per call.
    Batch,
    /// `claim_id_batch_grouped`, [`GROUPED`] keys per call.
    Grouped,
}

#[derive(Clone, Copy)]
struct Workload {
    calls: Calls,
    complete: bool,
}

impl Workload {
    const ALL: [Workload; 6] = [
        Workload {
            calls: Calls::One,
            complete: false,
        },
        Workload {
            calls: Calls::Batch,
            complete: false,
        },
        Workload {
            calls: Calls::Grouped,
            complete: false,
        },
        Workload {
            calls: Calls::One,
            complete: true,
        },
        Workload {
            calls: Calls::Batch,
            complete: true,
        },
        Workload {
            calls: Calls::Grouped,
            complete: true,
        },
    ];

    fn name(self) -> String {
        format!(
            "{}{}",
            if self.complete {
                "claim + complete"
            } else {
                "new keys"
            },
            match self.calls {
                Calls::One => "",
                Calls::Batch => ", batch64",
                Calls::Grouped => ", grouped1024",
            }
        )
    }
}

/// Claims every key of `keys` on `store` (each must be new), completing it if asked.
fn claim_all(store: &Store<()>, keys: &[u128], w: Workload) {
    let each = |claim: Result<Claim<'_, ()>, idemstore::Error>| match claim {
        Ok(Claim::Acquired(guard)) => {
            if w.complete {
                guard.complete(()).expect("the lease is 30 s");
            } else {
                // Only the claim is timed (as in the bench's `unique` group): the entry stays
                // in flight; the guard owns nothing but a borrow.
                std::mem::forget(guard);
            }
        }
        other => panic!("a new key is acquired, got {other:?}"),
    };
    match w.calls {
        Calls::One => {
            for &k in keys {
                each(store.claim_id(k));
            }
        }
        Calls::Batch => {
            for chunk in keys.chunks(BATCH) {
                store.claim_id_batch(chunk, |_, claim| each(claim));
            }
        }
        Calls::Grouped => {
            for chunk in keys.chunks(GROUPED) {
                store.claim_id_batch_grouped(chunk, |_, claim| each(claim));
            }
        }
    }
}

/// A store of `shards` shards, sized in advance for the `capacity` keys it will hold.
fn store(shards: usize, capacity: u64) -> Store<()> {
    Store::builder()
        .shards(shards)
        // Forgotten guards' leases never run out while it measures: no expiry work.
        .lease(MAX_SPAN)
        .initial_capacity(capacity as usize)
        .max_entries(2 * capacity as usize)
        .build()
        .expect("a valid configuration")
}

/// Fills `store` with `keys` completed keys from two threads.
fn fill(store: &Store<()>, keys: std::ops::Range<u64>) {
    let all: Vec<u128> = keys.map(keys::key).collect();
    let (a, b) = all.split_at(all.len() / 2);
    std::thread::scope(|s| {
        for part in [a, b] {
            s.spawn(move || {
                claim_all(
                    store,
                    part,
                    Workload {
                        calls: Calls::Batch,
                        complete: true,
                    },
                )
            });
        }
    });
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let live = arg("--keys", 10_000_000);
    let rounds = arg("--rounds", 3).max(1);
    let shards = 128;
    let per_store_new = PER_ROUND * rounds * Workload::ALL.len() as u64;
    // `shared` and `one` each hold all live keys; `apart` holds half of them in each store.
    let shared = store(shards, live + per_store_new);
    let one = store(shards, live + per_store_new);
    let apart = [
        store(shards / 2, live / 2 + per_store_new / 2),
        store(shards / 2, live / 2 + per_store_new / 2),
    ];
    fill(&shared, 0..live);
    fill(&one, 0..live);
    fill(&apart[0], 0..live / 2);
    fill(&apart[1], live / 2..live);
    println!(
        "{live} live keys, {} new keys per way, workload and round, {rounds} rounds",
        PER_ROUND
    );

    let mut next = live;
    let mut rates = vec![vec![Vec::new(); Way::ALL.len()]; Workload::ALL.len()];
    for round in 0..rounds {
        for (wi, &w) in Workload::ALL.iter().enumerate() {
            // The ways in turn, in an order that changes from round to round.
            for k in 0..Way::ALL.len() {
                let way = Way::ALL[(k + round as usize) % Way::ALL.len()];
                let keys: Vec<u128> = (next..next + PER_ROUND).map(keys::key).collect();
                next += PER_ROUND;
                let (a, b) = keys.split_at(keys.len() / 2);
                let start = Instant::now();
                match way {
                    Way::Shared => std::thread::scope(|s| {
                        s.spawn(|| claim_all(&shared, a, w));
                        s.spawn(|| claim_all(&shared, b, w));
                    }),
                    Way::Apart => std::thread::scope(|s| {
                        s.spawn(|| claim_all(&apart[0], a, w));
                        s.spawn(|| claim_all(&apart[1], b, w));
                    }),
                    Way::One => claim_all(&one, &keys, w),
                }
                let rate = PER_ROUND as f64 / start.elapsed().as_secs_f64() / 1e6;
                let wayi = Way::ALL.iter().position(|&x| x == way).expect("a way");
                rates[wi][wayi].push(rate);
            }
        }
    }
    println!("medians in M claims/s (every round's figure after the colon):");
    for (wi, w) in Workload::ALL.iter().enumerate() {
        let shared_median = median(&rates[wi][0]);
        for (wayi, way) in Way::ALL.iter().enumerate() {
            let r = &rates[wi][wayi];
            println!(
                "{:<26} {:<7} {:>6.2} ({:.2}x shared): {}",
                w.name(),
                way.name(),
                median(r),
                median(r) / shared_median,
                r.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
}
