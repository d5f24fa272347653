//! The claim of a request that runs: kept alive by a heartbeat while the handler runs and its
//! response body is read, and never given back once the handler's result is known.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Context;
use std::time::Duration;

use ::http::StatusCode;
use futures_timer::Delay;

use super::CachedResponse;
use crate::{Error, Guard};

/// The shortest heartbeat period: a lease of a few milliseconds is renewed no more often.
const MIN_BEAT: Duration = Duration::from_millis(1);

/// A claimed key, owned by the request that runs.
///
/// Dropped before [`Owned::settle`], it releases the key (the handler panicked, failed or was
/// dropped: a retry runs the request again). Dropped after it, it completes the key as
/// [`CachedResponse::NotReplayable`]: the handler's work is done, so a retry must not run it
/// again, even if its response never reached the client.
pub(crate) struct Owned<'a> {
    /// `None` once completed or released.
    guard: Option<Guard<'a, CachedResponse>>,
    /// `None` when the heartbeat is off, or once the lease was lost.
    heartbeat: Option<Heartbeat>,
    /// The status the handler answered with, once it is known and stored.
    settled: Option<StatusCode>,
}

struct Heartbeat {
    lease: Duration,
    every: Duration,
    timer: Delay,
}

impl<'a> Owned<'a> {
    /// Owns `guard`; with `Some(lease)`, renews the lease to `lease` every third of it while
    /// [`Owned::run`] awaits something.
    pub(crate) fn new(guard: Guard<'a, CachedResponse>, heartbeat: Option<Duration>) -> Self {
        let heartbeat = heartbeat.map(|lease| {
            let every = (lease / 3).max(MIN_BEAT);
            Heartbeat {
                lease,
                every,
                timer: Delay::new(every),
            }
        });
        Owned {
            guard: Some(guard),
            heartbeat,
            settled: None,
        }
    }

    /// Awaits `work`, renewing the lease on time meanwhile.
    pub(crate) async fn run<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = pin!(work);
        std::future::poll_fn(|cx| {
            self.beat(cx);
            work.as_mut().poll(cx)
        })
        .await
    }

    /// Renews the lease for each beat that is due, and sets the timer for the next.
    fn beat(&mut self, cx: &mut Context<'_>) {
        while let Some(hb) = &mut self.heartbeat {
            if Pin::new(&mut hb.timer).poll(cx).is_pending() {
                return;
            }
            let Some(guard) = &mut self.guard else {
                self.heartbeat = None;
                return;
            };
            match guard.extend(hb.lease) {
                Ok(()) => hb.timer.reset(hb.every),
                Err(Error::LeaseLost) => {
                    event!(
                        "http: the lease ran out before a heartbeat could renew it (the response \
                         future was not polled in time); a duplicate may run the request again"
                    );
                    self.heartbeat = None;
                }
                Err(_) => {
                    event!("http: the heartbeat could not renew the lease; it stops");
                    self.heartbeat = None;
                }
            }
        }
    }

    /// The handler answered with `status`, which is stored: from now on, dropping `self`
    /// completes the key as not replayable instead of releasing it.
    pub(crate) fn settle(&mut self, status: StatusCode) {
        self.settled = Some(status);
    }

    /// Completes the key with `value`.
    pub(crate) fn complete(mut self, value: CachedResponse) {
        if let Some(guard) = self.guard.take() {
            complete(guard, value);
        }
    }

    /// Gives the key back, so that a retry runs the request again.
    pub(crate) fn release(mut self) {
        if let Some(guard) = self.guard.take() {
            if guard.release().is_err() {
                event!("http: the lease ran out before the key could be released");
            }
        }
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        if let (Some(guard), Some(status)) = (self.guard.take(), self.settled) {
            complete(guard, CachedResponse::not_replayable(status));
        }
        // Otherwise a guard that is still here releases the key as it drops.
    }
}

fn complete(guard: Guard<'_, CachedResponse>, value: CachedResponse) {
    match guard.complete(value) {
        Ok(()) => {}
        Err(Error::LeaseLost) => {
            event!(
                "http: the lease ran out before the response could be stored; a duplicate may \
                 have taken the key over, and nothing was stored"
            );
        }
        Err(Error::ValueTooLarge { .. }) => {
            event!(
                "http: the store refused the outcome as too large (its max_value_size is below \
                 the weight of a CachedResponse); the key was released"
            );
        }
        Err(_) => {
            event!("http: the outcome could not be stored; the key was released");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Claim, Clock, Store};
    use std::task::Poll;

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        let waker = std::task::Waker::noop();
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(waker)) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn owned<'a>(store: &'a Store<CachedResponse>, key: &str, heartbeat: bool) -> Owned<'a> {
        let Ok(Claim::Acquired(guard)) = store.claim(key) else {
            panic!("a new key is acquired")
        };
        Owned::new(guard, heartbeat.then_some(Duration::from_secs(30)))
    }

    #[test]
    fn dropped_before_settling_releases_after_completes() {
        let (clock, _manual) = Clock::manual();
        let store: Store<CachedResponse> = Store::builder().clock(clock).build().unwrap();
        drop(owned(&store, "a", false));
        assert!(store.claim("a").unwrap().is_acquired());

        let mut o = owned(&store, "b", true);
        o.settle(StatusCode::CREATED);
        drop(o);
        let Claim::Completed(replay) = store.claim("b").unwrap() else {
            panic!("a settled key is completed")
        };
        assert_eq!(
            replay.value(),
            &CachedResponse::not_replayable(StatusCode::CREATED)
        );

        let o = owned(&store, "c", true);
        o.release();
        assert!(store.claim("c").unwrap().is_acquired());
    }

    #[test]
    fn the_heartbeat_renews_the_lease() {
        let (clock, manual) = Clock::manual();
        let store: Store<CachedResponse> = Store::builder()
            .clock(clock)
            .lease(Duration::from_millis(30))
            .build()
            .unwrap();
        let Ok(Claim::Acquired(guard)) = store.claim("k") else {
            panic!("a new key is acquired")
        };
        let before = guard.lease_deadline();
        let mut o = Owned::new(guard, Some(Duration::from_millis(30)));
        manual.advance(Duration::from_millis(20));
        // A beat is due every 10 ms of real time, while `run` awaits.
        let start = std::time::Instant::now();
        while o.guard.as_ref().unwrap().lease_deadline() == before {
            assert!(start.elapsed() < Duration::from_secs(5), "no beat in 5 s");
            block_on(o.run(Delay::new(Duration::from_millis(5))));
        }
        assert_eq!(
            o.guard.as_ref().unwrap().lease_deadline(),
            before + Duration::from_millis(20),
            "renewed to a whole lease from (manual) now"
        );
        o.complete(CachedResponse::not_replayable(StatusCode::OK));
        assert!(store.claim("k").unwrap().is_completed());
    }
}
