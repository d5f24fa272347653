//! How fast waiting duplicates learn the result: one owner holds a key while `--waiters`
//! duplicates wait for it (`Store::claim_wait` on tokio tasks, or `claim_wait_blocking` on OS
//! threads); the owner completes, and the figure is the time from just before `complete` to the
//! moment the last waiter holds its replay. Repeated `--rounds` times (a fresh key each round);
//! medians and the worst round are printed.
//!
//! ```text
//! cargo run --release --example waiters                  # 1,000 waiters, tokio tasks and threads
//! cargo run --release --example waiters -- --waiters 100 --rounds 50
//! ```

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use idemstore::{Claim, ClaimOptions, Store};

const MAX_WAIT: Duration = Duration::from_secs(30);

fn main() {
    let mut waiters = 1000usize;
    let mut rounds = 21usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut num = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a positive number"))
        };
        match arg.as_str() {
            "--waiters" => waiters = num("--waiters").max(1),
            "--rounds" => rounds = num("--rounds").max(1),
            "--help" | "-h" => {
                println!("usage: waiters [--waiters N (1000)] [--rounds R (21)]");
                return;
            }
            other => panic!("unknown argument {other:?}; see --help"),
        }
    }
    let store: Store<u64> = Store::builder().build().expect("default configuration");
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "{waiters} duplicates wait for one owner; completion to the last waiter's replay, \
         {rounds} rounds, {cores} cores"
    );
    let tasks = tokio_rounds(&store, waiters, rounds);
    report("async (tokio tasks, claim_wait)", tasks);
    let threads = thread_rounds(&store, waiters, rounds);
    report("blocking (OS threads, claim_wait_blocking)", threads);
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let median = times[times.len() / 2];
    let worst = times[times.len() - 1];
    let best = times[0];
    println!("  {what:<44} median {median:>10.1?}   best {best:>10.1?}   worst {worst:>10.1?}");
}

/// Each round: a fresh key, one owner, `waiters` tasks parked in `claim_wait`.
fn tokio_rounds(store: &Store<u64>, waiters: usize, rounds: usize) -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    (0..rounds)
        .map(|round| {
            let key = format!("task-round-{round}");
            let Ok(Claim::Acquired(owner)) = store.claim(&key) else {
                panic!("a fresh key is acquired")
            };
            let parked_before = store.stats().in_progress;
            let handles: Vec<_> = (0..waiters)
                .map(|_| {
                    let store = store.clone();
                    let key = key.clone();
                    rt.spawn(async move {
                        match store.claim_wait(&key, &ClaimOptions::new(), MAX_WAIT).await {
                            Ok(Claim::Completed(r)) => {
                                assert_eq!(*r.value(), 1);
                                Instant::now()
                            }
                            other => panic!("every waiter replays: {other:?}"),
                        }
                    })
                })
                .collect();
            wait_parked(store, parked_before + waiters as u64);
            let start = Instant::now();
            owner.complete(1).expect("the lease is fresh");
            let last = rt.block_on(async {
                let mut last = start;
                for h in handles {
                    last = last.max(h.await.expect("no waiter panics"));
                }
                last
            });
            last - start
        })
        .collect()
}

/// Each round: a fresh key, one owner, `waiters` threads parked in `claim_wait_blocking`.
fn thread_rounds(store: &Store<u64>, waiters: usize, rounds: usize) -> Vec<Duration> {
    (0..rounds)
        .map(|round| {
            let key = format!("thread-round-{round}");
            let Ok(Claim::Acquired(owner)) = store.claim(&key) else {
                panic!("a fresh key is acquired")
            };
            let parked_before = store.stats().in_progress;
            let ready = Arc::new(Barrier::new(waiters + 1));
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..waiters)
                    .map(|_| {
                        let ready = ready.clone();
                        let key = &key;
                        std::thread::Builder::new()
                            .stack_size(64 * 1024)
                            .spawn_scoped(s, move || {
                                ready.wait();
                                match store.claim_wait_blocking(key, &ClaimOptions::new(), MAX_WAIT)
                                {
                                    Ok(Claim::Completed(r)) => {
                                        assert_eq!(*r.value(), 2);
                                        Instant::now()
                                    }
                                    other => panic!("every waiter replays: {other:?}"),
                                }
                            })
                            .expect("a waiter thread")
                    })
                    .collect();
                ready.wait();
                wait_parked(store, parked_before + waiters as u64);
                let start = Instant::now();
                owner.complete(2).expect("the lease is fresh");
                let last = handles
                    .into_iter()
                    .map(|h| h.join().expect("no waiter panics"))
                    .max()
                    .unwrap_or(start);
                last - start
            })
        })
        .collect()
}

/// Waits until every waiter has looked at the key once (each look counts an in-progress claim)
/// and so is parked or about to park: the measurement starts with all of them waiting.
fn wait_parked(store: &Store<u64>, in_progress: u64) {
    while store.stats().in_progress < in_progress {
        std::thread::sleep(Duration::from_millis(1));
    }
    // A waiter counts its look just before it parks; let the last few reach the park.
    std::thread::sleep(Duration::from_millis(20));
}
