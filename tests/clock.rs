//! The system clock's ticker thread: one per process, shared by every store on the system
//! clock, gone when the last such clock is. Alone in its test binary, so no other test holds a
//! system clock meanwhile.

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use idemstore::{Claim, Clock, Store};

/// Threads of this process named like the ticker.
fn tickers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "idemstore-clock")
        .count()
}

/// Waits up to 10 s for `tickers() == n`.
fn expect_tickers(n: usize) {
    let start = Instant::now();
    while tickers() != n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "expected {n} ticker threads, found {}",
            tickers()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn one_ticker_for_all_system_clocks_and_none_after_the_last() {
    expect_tickers(0);
    let manual: Store = Store::builder().clock(Clock::manual().0).build().unwrap();
    let precise: Store = Store::builder().clock(Clock::precise()).build().unwrap();
    assert_eq!(tickers(), 0, "manual and precise clocks need no thread");

    let a: Store = Store::builder().build().unwrap();
    let b: Store = Store::builder().build().unwrap();
    expect_tickers(1);
    // The shared time moves: a 5 ms lease runs out and the key is taken over.
    let Claim::Acquired(first) = a
        .claim_with(
            "k",
            &idemstore::ClaimOptions::new().lease(Duration::from_millis(5)),
        )
        .unwrap()
    else {
        panic!("a new key is acquired")
    };
    let start = Instant::now();
    loop {
        match a.claim("k").unwrap() {
            Claim::Acquired(second) => {
                assert!(second.is_takeover() && second.token() > first.token());
                break;
            }
            Claim::InProgress(_) => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the clock stood still"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(first);

    drop(a);
    expect_tickers(1);
    drop(b);
    expect_tickers(0);

    // A new system clock starts a new ticker.
    let c = Clock::system();
    expect_tickers(1);
    drop(c);
    expect_tickers(0);
    drop((manual, precise));
}
