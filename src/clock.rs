//! The store's one monotonic clock, injectable so tests can drive time without sleeping.

use std::fmt;
use std::time::Duration;

use crate::sync::{Arc, AtomicU64, Event, Ordering};

pub(crate) const NANOS_PER_MS: u64 = 1_000_000;

/// The clock every deadline of a store is measured on.
///
/// [`Clock::system`] (the default) is monotonic and never jumps with the wall clock, so a
/// wall-clock change never expires a key early. It has millisecond resolution and is read from
/// memory that a thread of its own refreshes every millisecond: a claim reads the clock once,
/// and reading the CPU's time-stamp counter instead costs tens of nanoseconds in a virtual
/// machine and keeps the CPU from overlapping one claim's cache misses with the next one's.
/// [`Clock::precise`] reads the counter every time (`Instant::now` costs several times more
/// again). [`Clock::manual`] gives a clock that only moves
/// when its [`ManualClock`] hand is advanced: tests of ttl, lease expiry and takeover (yours and
/// ours) run deterministically, with no sleeps.
///
/// Times are kept in nanoseconds since the clock's origin; deadlines are kept in whole
/// milliseconds, rounded *up*, so a key is never seen expired before its deadline and at most one
/// millisecond after it.
///
/// ```
/// use std::time::Duration;
/// use idemstore::{Claim, Clock, Store};
///
/// let (clock, hand) = Clock::manual();
/// let store: Store = Store::builder().lease(Duration::from_secs(30)).clock(clock).build()?;
/// let Claim::Acquired(first) = store.claim("job-1")? else { unreachable!() };
/// hand.advance(Duration::from_secs(30));
/// // The first owner's lease ran out: the next claim takes the key over.
/// let Claim::Acquired(second) = store.claim("job-1")? else { unreachable!() };
/// assert!(second.is_takeover() && second.token() > first.token());
/// # Ok::<(), idemstore::Error>(())
/// ```
#[derive(Clone)]
pub struct Clock {
    source: Source,
}

/// Where a clock's readings come from. `repr(u8)`, the default first: a reading tests one tag
/// byte, where the compiler's own layout would hide the tag in a niche of `quanta::Clock`
/// that takes several instructions to decode on every claim.
#[derive(Clone)]
#[repr(u8)]
enum Source {
    Ticked {
        ticker: std::sync::Arc<Ticker>,
        origin: u64,
    } = 0,
    Precise {
        clock: quanta::Clock,
        origin: u64,
    } = 1,
    Manual(Arc<Manual>) = 2,
}

/// How often the thread behind [`Clock::system`] reads the time.
const TICK: Duration = Duration::from_millis(1);

/// The time every [`Clock::system`] of the process reads: nanoseconds since the ticker started,
/// refreshed every [`TICK`] by one thread, which ends when the last such clock is dropped.
/// Plain std types even under loom: no model checks the system clock.
struct Ticker {
    nanos: crossbeam_utils::CachePadded<std::sync::atomic::AtomicU64>,
}

/// The process's ticker, while some clock holds it.
static TICKER: std::sync::Mutex<std::sync::Weak<Ticker>> =
    std::sync::Mutex::new(std::sync::Weak::new());

impl Ticker {
    /// The running ticker, or a new one with its thread; `None` if no thread can be spawned.
    fn shared() -> Option<std::sync::Arc<Ticker>> {
        let mut slot = TICKER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ticker) = slot.upgrade() {
            return Some(ticker);
        }
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        let ticker = std::sync::Arc::new(Ticker {
            nanos: crossbeam_utils::CachePadded::new(std::sync::atomic::AtomicU64::new(0)),
        });
        let weak = std::sync::Arc::downgrade(&ticker);
        std::thread::Builder::new()
            .name("idemstore-clock".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                let Some(ticker) = weak.upgrade() else {
                    break;
                };
                let now = clock.delta_as_nanos(origin, clock.raw());
                // One writer: `max` keeps the readings monotonic whatever the counter does.
                // Relaxed, as for every clock reading (see `Clock::now_nanos`).
                let last = ticker.nanos.load(std::sync::atomic::Ordering::Relaxed);
                ticker
                    .nanos
                    .store(last.max(now), std::sync::atomic::Ordering::Relaxed);
            })
            .ok()?;
        *slot = std::sync::Arc::downgrade(&ticker);
        Some(ticker)
    }
}

/// The shared state of a manual clock and its hand.
struct Manual {
    nanos: AtomicU64,
    /// Notified on every advance: waits on a store with this clock wake on it (and owners of
    /// such stores notify it too), since their deadlines are on this clock, not on a timer's.
    moved: Event,
}

/// The hand of a manual clock: moves it forward. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct ManualClock {
    manual: Arc<Manual>,
}

impl Clock {
    /// The system's monotonic clock at millisecond resolution, with its origin at the moment
    /// of this call: the default.
    ///
    /// It is read from memory: one thread per process (shared by every such clock, ended when
    /// the last one is dropped) stores the time every millisecond, and a reading is a plain
    /// load. That is what makes it the default: reading the CPU's time-stamp counter instead
    /// ([`Clock::precise`]) costs tens of nanoseconds in a virtual machine and holds back the
    /// out-of-order overlap of one claim's cache misses with the next one's, and a claim reads
    /// the clock once. On the 2-core VM this crate is developed on, replays of completed keys
    /// at 10 million live keys ran about 1.3 times as fast on this clock
    /// (`docs/performance-history.md`, third session).
    ///
    /// The price is resolution, which deadlines do not have anyway (they are whole
    /// milliseconds on any clock): a reading trails the time by up to a millisecond, and by
    /// more if the thread is not scheduled on time, so leases and the ttl are measured to
    /// within that jitter. If no thread can be spawned this returns [`Clock::precise`]. A
    /// child process made by `fork` has no such thread, so its copies of these clocks stand
    /// still: make stores after forking, or give them [`Clock::precise`].
    pub fn system() -> Self {
        match Ticker::shared() {
            Some(ticker) => {
                let origin = ticker.nanos.load(std::sync::atomic::Ordering::Relaxed);
                Self {
                    source: Source::Ticked { ticker, origin },
                }
            }
            None => Self::precise(),
        }
    }

    /// The system's monotonic clock read at every use, from the CPU's invariant time-stamp
    /// counter through `quanta` (calibrated against the OS monotonic clock, which it falls back
    /// to where the counter is not invariant): nanosecond resolution and no thread, at the cost
    /// described under [`Clock::system`].
    pub fn precise() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self {
            source: Source::Precise { clock, origin },
        }
    }

    /// A clock that stands still until its hand (the second element) advances it.
    pub fn manual() -> (Self, ManualClock) {
        let manual = Arc::new(Manual {
            nanos: AtomicU64::new(0),
            moved: Event::new(),
        });
        let clock = Self {
            source: Source::Manual(manual.clone()),
        };
        (clock, ManualClock { manual })
    }

    /// Time elapsed since this clock's origin.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }

    #[inline]
    pub(crate) fn now_nanos(&self) -> u64 {
        match &self.source {
            Source::Ticked { ticker, origin } => ticker
                .nanos
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(*origin),
            // 2^64 ns is 584 years of uptime.
            Source::Precise { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
            // Relaxed: a clock reading orders nothing else; coherence of the one location keeps
            // it monotonic for every thread that synchronizes through the shard locks.
            Source::Manual(m) => m.nanos.load(Ordering::Relaxed),
        }
    }

    /// The event a manual clock notifies when it moves; `None` for the system clock.
    pub(crate) fn moved(&self) -> Option<&Event> {
        match &self.source {
            Source::Precise { .. } | Source::Ticked { .. } => None,
            Source::Manual(m) => Some(&m.moved),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.source {
            Source::Precise { .. } => "precise",
            Source::Ticked { .. } => "system",
            Source::Manual(_) => "manual",
        };
        f.debug_struct("Clock")
            .field("kind", &kind)
            .field("now", &self.now())
            .finish()
    }
}

impl ManualClock {
    /// Moves the clock forward by `by`. Saturates instead of wrapping after 584 years. A store
    /// keeps deadlines in milliseconds below 2^44 (557 years from the clock's origin): on a
    /// clock moved past that, every lease and dedup window has already ended when it starts.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: see `Clock::now_nanos`; fetch_update keeps concurrent advances additive.
        let _ = self
            .manual
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(by))
            });
        // Waiters compare the new time with their deadlines (leases that ran out, waits that
        // timed out). The notification's fence orders the advance before their re-check.
        self.manual.moved.notify(usize::MAX);
    }

    /// Time elapsed since the clock's origin.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.manual.nanos.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

/// Whole milliseconds of a nanosecond time, rounded down: "now" for expiry comparisons.
#[inline]
pub(crate) fn floor_ms(nanos: u64) -> u64 {
    nanos / NANOS_PER_MS
}

/// The deadline `nanos + span`, in whole milliseconds rounded up, so that comparing it with
/// [`floor_ms`] of a later time never declares a key expired early.
#[inline]
pub(crate) fn deadline_ms(nanos: u64, span_nanos: u64) -> u64 {
    nanos.saturating_add(span_nanos).div_ceil(NANOS_PER_MS)
}

/// A duration in nanoseconds, saturating.
#[inline]
pub(crate) fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(all(test, not(idemstore_loom)))]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let (clock, hand) = Clock::manual();
        assert_eq!(clock.now(), Duration::ZERO);
        hand.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), Duration::from_millis(1500));
        assert_eq!(hand.now(), Duration::from_millis(1500));
        hand.advance(Duration::MAX);
        assert_eq!(clock.now_nanos(), u64::MAX);
    }

    #[test]
    fn deadlines_round_up_and_now_rounds_down() {
        // 1.5 ms + 1 ms = 2.5 ms: the deadline is 3 ms, and at 2.9 ms "now" is still 2.
        assert_eq!(deadline_ms(1_500_000, 1_000_000), 3);
        assert_eq!(floor_ms(2_900_000), 2);
        assert_eq!(deadline_ms(2_000_000, 1_000_000), 3);
        assert_eq!(deadline_ms(u64::MAX, 5), u64::MAX.div_ceil(NANOS_PER_MS));
    }

    #[test]
    fn system_and_precise_clocks_are_monotonic_and_move() {
        for clock in [Clock::system(), Clock::precise()] {
            let start = std::time::Instant::now();
            let a = clock.now();
            let b = clock.now();
            assert!(b >= a);
            // The system clock's thread ticks every millisecond; give it ample time.
            while clock.now() < a + Duration::from_millis(3) {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "{clock:?} did not move"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            // Never ahead of real time by more than a thread's scheduling delay can explain.
            assert!(clock.now() <= a + start.elapsed() + Duration::from_millis(100));
        }
        assert!(format!("{:?}", Clock::system()).contains("system"));
        assert!(format!("{:?}", Clock::precise()).contains("precise"));
    }

    #[test]
    fn system_clocks_share_one_ticker_and_start_at_zero() {
        let a = Clock::system();
        let b = Clock::system();
        let (Source::Ticked { ticker: ta, .. }, Source::Ticked { ticker: tb, .. }) =
            (&a.source, &b.source)
        else {
            panic!("a thread could be spawned, so the clocks are ticked");
        };
        assert!(std::sync::Arc::ptr_eq(ta, tb));
        assert!(b.now() < Duration::from_secs(1));
    }
}
