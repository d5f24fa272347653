//! What growth costs per new key: a dedup-only `Store<()>` and dashmap 6's `DashMap<u128, u64>`
//! (foldhash), each holding N keys, take N more on one thread, once growing as they must and
//! once sized in advance for 2N (`Builder::initial_capacity`, `DashMap::with_capacity`).
//!
//! ```text
//! cargo run --release --example growth                      # N = 10 million, 3 rounds
//! cargo run --release --example growth -- --keys 1000000 --rounds 5
//! ```
//!
//! Each round measures the four cases one after another, each on a new structure filled with N
//! keys before the clock starts (idemstore's claimed and completed; the new keys' guards are
//! forgotten, as in benches/claims.rs, so only the claim is timed). It reports CPU nanoseconds
//! per new key (user + system time of the process, which on a shared machine wanders less than
//! wall time), growing and sized, and the summary the medians over the rounds and the median of
//! each round's difference: the cost of growth. One thread, so that no claim waits on another's
//! rebuild and the difference is the work growth adds. The rebuilds column counts idemstore's
//! table rebuilds in the timed half, growing / sized (a sized store should make none).
//!
//! Taking N more keys into a structure of N spans a full growth cycle of both. idemstore grows a
//! shard's table about 1.4× at a time (it rebuilds at a load of 0.9, into a table at 0.6 to 0.7):
//! over one rebuild cycle each new key pays for g / (g − 1) ≈ 3.5 moves of older entries, and
//! over a doubling, with shards at different points of their cycles, about 1 / ln g ≈ 3 (2.9
//! counted at N = 10 M). hashbrown doubles at a load of 0.875: dashmap's shards each double once
//! between N and 2N, anywhere from 1 to 2 moves per new key depending on N (1.47 at 10 M, 1.84 at
//! 1 M). idemstore's smaller steps are what keeps its tables within 40 bytes per entry.

use std::time::Duration;

use dashmap::DashMap;
use idemstore::{Claim, Store};

#[path = "common/keys.rs"]
mod keys;
#[path = "common/measure.rs"]
#[allow(dead_code)] // Not its memory readings.
mod measure;
use keys::key;

type Peer = DashMap<u128, u64, foldhash::fast::RandomState>;

const DEFAULT_KEYS: u64 = 10_000_000;
const DEFAULT_ROUNDS: u64 = 3;

struct Args {
    keys: u64,
    rounds: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        keys: DEFAULT_KEYS,
        rounds: DEFAULT_ROUNDS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--keys" => args.keys = positive(&flag, &value()?)?,
            "--rounds" => args.rounds = positive(&flag, &value()?)?,
            "-h" | "--help" => {
                println!("usage: growth [--keys N] [--rounds R]   (see the source's docs)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    Ok(args)
}

/// `value` of `flag` as a whole number of at least 1.
fn positive(flag: &str, value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => Err(format!("{flag}: at least 1")),
        Err(e) => Err(format!("{flag}: {e}")),
    }
}

/// Nanoseconds per key of claiming keys `n..2n` in a store that holds keys `0..n`.
fn idemstore(n: u64, sized: bool) -> (f64, u64) {
    let mut builder = Store::<()>::builder().max_entries(4 * n as usize);
    if sized {
        builder = builder.initial_capacity(2 * n as usize);
    }
    let store = builder.build().expect("a valid configuration");
    let claim = |i: u64| match store.claim_id(key(i)).expect("within capacity") {
        Claim::Acquired(guard) => guard,
        other => panic!("a new key was not acquired: {other:?}"),
    };
    // The keys held are completed, as in benches/claims.rs; the new ones' guards are forgotten,
    // not dropped (a drop would release the key), so that only the claim is timed.
    (0..n).for_each(|i| claim(i).complete(()).expect("completed within its lease"));
    let rebuilds = store.stats().table_rebuilds;
    let start = cpu_time();
    (n..2 * n).for_each(|i| std::mem::forget(claim(i)));
    let ns = per_key(cpu_time() - start, n);
    (ns, store.stats().table_rebuilds - rebuilds)
}

/// Nanoseconds per key of inserting keys `n..2n` into a map that holds keys `0..n`.
fn dashmap(n: u64, sized: bool) -> f64 {
    let map = if sized {
        Peer::with_capacity_and_hasher(2 * n as usize, Default::default())
    } else {
        Peer::with_hasher(Default::default())
    };
    (0..n).for_each(|i| {
        map.entry(key(i)).or_insert(i);
    });
    let start = cpu_time();
    (n..2 * n).for_each(|i| {
        map.entry(key(i)).or_insert(i);
    });
    per_key(cpu_time() - start, n)
}

/// CPU time of this process (user + system): steadier than wall time on a shared machine, and
/// the timed work is this one thread's (the store's clock thread wakes once a millisecond).
fn cpu_time() -> Duration {
    measure::cpu_time().expect("a process CPU clock (this example measures on Linux only)")
}

fn per_key(elapsed: Duration, n: u64) -> f64 {
    elapsed.as_nanos() as f64 / n as f64
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len().is_multiple_of(2) {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("growth: {e}");
        std::process::exit(2);
    });
    let n = args.keys;
    println!(
        "{} keys held, {} more claimed on one thread; ns per new key",
        measure::group_digits(n),
        measure::group_digits(n)
    );
    println!(
        "{:>5} {:>16} {:>16} {:>16} {:>16} {:>9}",
        "round", "idemstore grow", "idemstore sized", "dashmap grow", "dashmap sized", "rebuilds"
    );
    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        let (grow, rebuilds) = idemstore(n, false);
        let (sized, sized_rebuilds) = idemstore(n, true);
        let row = [grow, sized, dashmap(n, false), dashmap(n, true)];
        println!(
            "{round:>5} {:>16.1} {:>16.1} {:>16.1} {:>16.1} {:>9}",
            row[0],
            row[1],
            row[2],
            row[3],
            format!("{rebuilds}/{sized_rebuilds}")
        );
        rows.push(row);
    }
    let med = |f: &dyn Fn(&[f64; 4]) -> f64| median(rows.iter().map(f).collect());
    println!(
        "median {:>15.1} {:>16.1} {:>16.1} {:>16.1}",
        med(&|r| r[0]),
        med(&|r| r[1]),
        med(&|r| r[2]),
        med(&|r| r[3])
    );
    println!(
        "growth costs idemstore {:.1} ns per new key, dashmap {:.1} (medians of the rounds' \
         differences)",
        med(&|r| r[0] - r[1]),
        med(&|r| r[2] - r[3])
    );
}
