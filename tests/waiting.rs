//! Duplicates that wait for an in-flight key: `Store::claim_wait` (async) and
//! `Store::claim_wait_blocking`, black-box.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use idemstore::{Claim, ClaimOptions, Clock, Error, ManualClock, Store};

const LEASE: Duration = Duration::from_secs(30);

fn manual_store() -> (Store<u64>, ManualClock) {
    let (clock, hand) = Clock::manual();
    let store = Store::builder()
        .lease(LEASE)
        .seed(7)
        .clock(clock)
        .build()
        .unwrap();
    (store, hand)
}

/// Wakes a parked thread: the smallest executor that runs a future to completion.
struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// Polls a future once; returns whether it is still pending.
fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
    let waker = Waker::noop();
    f.poll(&mut Context::from_waker(waker)).is_pending()
}

/// Waits until `store` has seen `n` in-progress claims, so a waiter is known to be parked.
fn until_in_progress<V>(store: &Store<V>, n: u64) {
    let start = Instant::now();
    while store.stats().in_progress < n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the waiter never looked"
        );
        thread::yield_now();
    }
}

fn value(claim: Result<Claim<'_, u64>, Error>) -> u64 {
    match claim.unwrap() {
        Claim::Completed(r) => *r.value(),
        other => panic!("expected a replay, got {other:?}"),
    }
}

#[test]
fn blocking_wait_replays_what_the_owner_completes() {
    let (store, _hand) = manual_store();
    let Claim::Acquired(owner) = store.claim("k").unwrap() else {
        panic!()
    };
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            value(store.claim_wait_blocking("k", &ClaimOptions::new(), Duration::from_secs(60)))
        });
        until_in_progress(&store, 1);
        owner.complete(42).unwrap();
        assert_eq!(waiter.join().unwrap(), 42);
    });
}

#[test]
fn blocking_wait_acquires_a_released_key() {
    let (store, _hand) = manual_store();
    let Claim::Acquired(owner) = store.claim("k").unwrap() else {
        panic!()
    };
    let first = owner.token();
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            match store
                .claim_wait_blocking("k", &ClaimOptions::new(), Duration::from_secs(60))
                .unwrap()
            {
                Claim::Acquired(g) => {
                    assert!(!g.is_takeover());
                    g.token()
                }
                other => panic!("a released key is free: {other:?}"),
            }
        });
        until_in_progress(&store, 1);
        drop(owner); // dropping the guard releases, and wakes the waiter like release() does
        assert!(waiter.join().unwrap() > first);
    });
}

#[test]
fn blocking_wait_takes_over_when_the_lease_runs_out_on_a_manual_clock() {
    let (store, hand) = manual_store();
    let Claim::Acquired(owner) = store.claim("k").unwrap() else {
        panic!()
    };
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            match store
                .claim_wait_blocking("k", &ClaimOptions::new(), Duration::from_secs(3600))
                .unwrap()
            {
                Claim::Acquired(g) => g.is_takeover(),
                other => panic!("the lease ran out: {other:?}"),
            }
        });
        until_in_progress(&store, 1);
        hand.advance(Duration::from_secs(10)); // not yet: the waiter looks again and waits on
        until_in_progress(&store, 2);
        hand.advance(LEASE);
        assert!(waiter.join().unwrap(), "a takeover of the expired lease");
    });
    assert_eq!(owner.complete(1), Err(Error::LeaseLost));
}

#[test]
fn wait_gives_up_after_max_wait_on_a_manual_clock() {
    let (store, hand) = manual_store();
    let Claim::Acquired(_owner) = store.claim("k").unwrap() else {
        panic!()
    };
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            match store
                .claim_wait_blocking("k", &ClaimOptions::new(), Duration::from_secs(5))
                .unwrap()
            {
                Claim::InProgress(p) => p.retry_after(),
                other => panic!("still in flight after the wait: {other:?}"),
            }
        });
        until_in_progress(&store, 1);
        hand.advance(Duration::from_secs(5));
        assert_eq!(waiter.join().unwrap(), LEASE - Duration::from_secs(5));
    });
}

#[test]
fn zero_max_wait_is_a_plain_claim() {
    let (store, _hand) = manual_store();
    let Claim::Acquired(_owner) = store.claim("k").unwrap() else {
        panic!()
    };
    let c = store.claim_wait_blocking("k", &ClaimOptions::new(), Duration::ZERO);
    assert!(c.unwrap().is_in_progress());
    assert!(store
        .claim_wait_blocking("fresh", &ClaimOptions::new(), Duration::ZERO)
        .unwrap()
        .is_acquired());
}

#[test]
fn system_clock_wait_times_out_and_wakes_at_the_lease_deadline() {
    // `Clock::system` trails real time by up to a millisecond, more when its thread is not
    // scheduled on time (a starved machine; see its docs): a lease taken on a trailing reading
    // ends early in real time by that lag, so real time bounds the wake only on the precise
    // clock.
    wait_times_out_and_wakes_at_the_lease_deadline(Clock::system(), None);
    wait_times_out_and_wakes_at_the_lease_deadline(
        Clock::precise(),
        Some(Duration::from_millis(299)),
    );
}

/// A blocking wait on a real clock: one shorter than the 300 ms lease ends in progress, a
/// longer one by takeover when the lease runs out, not before `lease_ends` in real time if
/// given.
fn wait_times_out_and_wakes_at_the_lease_deadline(clock: Clock, lease_ends: Option<Duration>) {
    let store: Store<u64> = Store::builder()
        .lease(Duration::from_millis(300))
        .clock(clock)
        .build()
        .unwrap();
    // Before the claim: the lease runs from a moment after this.
    let t = Instant::now();
    let Claim::Acquired(owner) = store.claim("k").unwrap() else {
        panic!()
    };
    // A wait shorter than the lease ends in progress, after the wait.
    let w = Instant::now();
    let c = store.claim_wait_blocking("k", &ClaimOptions::new(), Duration::from_millis(50));
    assert!(c.unwrap().is_in_progress());
    let waited = w.elapsed();
    assert!(waited >= Duration::from_millis(49), "{waited:?}");
    // A longer wait ends when the lease runs out, by takeover, with nobody notifying.
    let c = store.claim_wait_blocking("k", &ClaimOptions::new(), Duration::from_secs(30));
    match c.unwrap() {
        Claim::Acquired(g) => assert!(g.is_takeover()),
        other => panic!("the lease ran out: {other:?}"),
    }
    if let Some(at_least) = lease_ends {
        let waited = t.elapsed();
        assert!(waited >= at_least, "{waited:?}");
    }
    assert_eq!(owner.complete(1), Err(Error::LeaseLost));
}

#[test]
fn async_wait_replays_and_times_out_on_the_system_clock() {
    let store: Store<u64> = Store::builder().build().unwrap();
    let Claim::Acquired(owner) = store.claim("k").unwrap() else {
        panic!()
    };
    let opts = ClaimOptions::new();
    // Times out: the async timer, no owner activity.
    let t = Instant::now();
    let c = block_on(store.claim_wait("k", &opts, Duration::from_millis(30)));
    assert!(c.unwrap().is_in_progress());
    assert!(t.elapsed() >= Duration::from_millis(29));
    // Woken by the completion from another thread.
    thread::scope(|s| {
        let waiter = s.spawn(|| value(block_on(store.claim_wait("k", &opts, LEASE))));
        until_in_progress(&store, 2);
        owner.complete(5).unwrap();
        assert_eq!(waiter.join().unwrap(), 5);
    });
}

#[test]
fn a_dropped_wait_leaves_nothing_behind() {
    let (store, _hand) = manual_store();
    let Claim::Acquired(owner) = store.claim("k").unwrap() else {
        panic!()
    };
    let opts = ClaimOptions::new();
    {
        let mut wait = pin!(store.claim_wait("k", &opts, LEASE));
        assert!(
            poll_once(wait.as_mut()),
            "the key is in flight: the wait parks"
        );
    } // dropped while parked
    let before = store.stats();
    owner.complete(3).unwrap();
    assert_eq!(value(store.claim("k")), 3);
    let after = store.stats();
    assert_eq!(after.acquired, before.acquired);
    assert_eq!(after.completions, 1);
    assert_eq!(store.len(), 1);
}

#[test]
fn every_one_of_many_waiters_replays() {
    const WAITERS: usize = 64;
    let (store, _hand) = manual_store();
    let Claim::Acquired(owner) = store.claim("k").unwrap() else {
        panic!()
    };
    let replays = AtomicUsize::new(0);
    let ready = Barrier::new(WAITERS + 1);
    thread::scope(|s| {
        for _ in 0..WAITERS {
            s.spawn(|| {
                ready.wait();
                let v = value(store.claim_wait_blocking("k", &ClaimOptions::new(), LEASE));
                assert_eq!(v, 11);
                replays.fetch_add(1, Ordering::Relaxed);
            });
        }
        ready.wait();
        until_in_progress(&store, WAITERS as u64);
        owner.complete(11).unwrap();
    });
    assert_eq!(replays.load(Ordering::Relaxed), WAITERS);
    assert_eq!(store.stats().acquired, 1);
}

#[test]
fn a_waiter_with_another_payload_gets_mismatch_without_waiting() {
    let (store, _hand) = manual_store();
    let opts = ClaimOptions::new().fingerprint("a");
    let Claim::Acquired(_owner) = store.claim_with("k", &opts).unwrap() else {
        panic!()
    };
    let other = ClaimOptions::new().fingerprint("b");
    assert!(store
        .claim_wait_blocking("k", &other, LEASE)
        .unwrap()
        .is_mismatch());
}

#[test]
fn bad_input_to_a_wait_is_refused_and_changes_nothing() {
    let (store, _hand) = manual_store();
    let opts = ClaimOptions::new();
    assert!(matches!(
        store.claim_wait_blocking("", &opts, LEASE),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        block_on(store.claim_wait(vec![b'x'; 256], &opts, LEASE)),
        Err(Error::InvalidKey { .. })
    ));
    let zero_lease = ClaimOptions::new().lease(Duration::ZERO);
    assert!(matches!(
        store.claim_wait_blocking("k", &zero_lease, LEASE),
        Err(Error::InvalidLease { .. })
    ));
    let long_scope = vec![b's'; idemstore::MAX_SCOPE_LEN + 1];
    let scoped = ClaimOptions::new().scope(&long_scope);
    assert!(matches!(
        store.claim_wait_blocking("k", &scoped, LEASE),
        Err(Error::InvalidScope { .. })
    ));
    assert_eq!(store.len(), 0);
    assert_eq!(store.stats().acquired, 0);
}
