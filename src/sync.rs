//! The loom shim: every atomic and lock the engine shares between threads comes from here.
//!
//! Built normally, these are `std` atomics and the shards' own lock ([`RawLock`]).
//! Built with `RUSTFLAGS="--cfg idemstore_loom"`, they are loom's, so the loom models in
//! `tests/loom.rs` explore every interleaving of the real engine code, not a copy of it. The cfg
//! is crate-prefixed because some dependencies (tokio, among the dev-dependencies) react to a
//! plain `cfg(loom)`.
//!
//! The wake-ups of waiting claims use `event-listener`'s `Event`; under loom, [`Event`] is a
//! small stand-in with the same protocol (listen, then look, then wait; notify after the
//! transition) on loom's mutex and condition variable, so the models check the engine's side
//! of that protocol: the waiting count, and listening before looking.
//! (`event-listener` checks its own side with loom models of its own.)

#[cfg(not(idemstore_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

#[cfg(idemstore_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(idemstore_loom))]
pub(crate) use std::sync::Arc;

#[cfg(idemstore_loom)]
pub(crate) use loom::sync::Arc;

/// One step of a wait for another thread: spins a little, then yields the core; under loom,
/// lets the model run the other threads.
#[inline]
pub(crate) fn spin_wait(spins: u32) {
    #[cfg(idemstore_loom)]
    {
        let _ = spins;
        loom::thread::yield_now();
    }
    #[cfg(not(idemstore_loom))]
    if spins < 1 << 10 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// A reader-writer lock without poisoning: [`RawLock`] through `lock_api`'s guards, or loom's
/// under the model checker.
#[derive(Debug)]
pub(crate) struct RwLock<T>(Inner<T>);

#[cfg(not(idemstore_loom))]
type Inner<T> = lock_api::RwLock<RawLock, T>;

/// The shards' reader-writer lock: one word, spun on, never parked, so that letting go of the
/// write lock is a plain release store where `parking_lot`'s lock (which must learn whether
/// anyone is parked) does a compare-and-swap.
///
/// Why it matters here: a locked instruction on x86 waits for every store before it to reach
/// the cache. A claim of a new key writes its slot, a cache miss, just before it lets go; with
/// `parking_lot` the unlock's compare-and-swap then waited for that miss (the hottest
/// instruction of a unique-claims profile), where a store lets the thread go on to hash and
/// prefetch its next key while the miss completes. Claims of new keys at 10 M keys ran faster in
/// eight of nine alternations of the two engines, by 2 to 15% (`docs/performance-history.md`,
/// eleventh session).
///
/// The word: bit 0 set while a writer holds the lock, [`READER`] per reader in the 23 bits above
/// it, and a version in the top 40 bits that every writer's letting go advances. A writer takes
/// the word from no reader and no writer by a compare-and-swap; a reader adds itself while no
/// writer holds it. The version makes the lock a sequence lock too: a replay reads a shard's
/// table without taking the lock ([`RawLock::begin_read`], [`RawLock::validate`]; see
/// `readers`), and trusts what it read only if no writer held the lock meanwhile.
/// Writers are not preferred, and waiters are not queued: a stream of readers could hold a
/// writer off, but readers are rare (a guard's release or extension, `Store::len` and
/// `Store::stats`) and hold the lock briefly. A waiter spins, then yields its core, then sleeps
/// in short steps ([`lock_wait`]): the lock is held for well under a microsecond but for a
/// rebuild (a millisecond or so for a large shard), and a waiter that cannot help with that
/// rebuild has nothing better to do. The same lock guards the pool of kept tables
/// (`shard::Pool`).
#[cfg(not(idemstore_loom))]
#[derive(Debug)]
pub(crate) struct RawLock {
    state: AtomicU64,
}

#[cfg(not(idemstore_loom))]
const WRITER: u64 = 1;
#[cfg(not(idemstore_loom))]
const READER: u64 = 2;
/// The readers' count: bits 1 to 23.
#[cfg(not(idemstore_loom))]
const READERS: u64 = ((1 << 24) - 1) & !WRITER;
/// One step of the version, in the bits above the readers' count.
#[cfg(not(idemstore_loom))]
const VERSION: u64 = 1 << 24;

/// One step of a wait for a shard's lock: [`spin_wait`]'s spins and yields, and after about a
/// thousand yields (a wait of a millisecond or more: the holder was descheduled, or the machine
/// has more threads than cores) a sleep of 20 µs asked (the kernel's timer slack makes it longer),
/// so that a long wait does not keep a core busy.
#[cfg(not(idemstore_loom))]
#[inline]
fn lock_wait(spins: u32) {
    if spins < 1 << 11 {
        spin_wait(spins);
    } else {
        std::thread::sleep(std::time::Duration::from_micros(20));
    }
}

/// Tries `take` until it takes the lock, with a [`lock_wait`] step after each failure.
#[cfg(not(idemstore_loom))]
#[inline]
fn wait_until(take: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !take() {
        lock_wait(spins);
        spins = spins.saturating_add(1);
    }
}

// SAFETY: the lock excludes as `lock_api` requires: a writer holds it only after its
// compare-and-swap took the word from one without readers or writer to the same word with
// WRITER, and while it holds it the word stays so (readers add themselves only to a word
// without WRITER, by a compare-and-swap, so they cannot slip in); a reader holds it only after
// adding READER to a word without WRITER, and a writer cannot take the word while any reader's
// READER is in it.
// Acquire on taking the lock and Release on letting go order the data it guards: each holder's
// taking reads the word the previous holder's letting go wrote (or a release sequence after it:
// readers' `fetch_sub`s are read-modify-writes).
#[cfg(not(idemstore_loom))]
unsafe impl lock_api::RawRwLock for RawLock {
    #[allow(clippy::declare_interior_mutable_const)] // lock_api's pattern for `INIT`
    const INIT: Self = Self {
        state: AtomicU64::new(0),
    };
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock_shared(&self) {
        wait_until(|| self.try_lock_shared());
    }

    #[inline]
    fn try_lock_shared(&self) -> bool {
        let s = self.state.load(Ordering::Relaxed);
        // A count that would overflow into the version is refused: the reader waits (never, in
        // practice: it takes 2^23 readers at once).
        s & WRITER == 0
            && s & READERS != READERS
            && self
                .state
                .compare_exchange(s, s + READER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    #[inline]
    unsafe fn unlock_shared(&self) {
        self.state.fetch_sub(READER, Ordering::Release);
    }

    #[inline]
    fn lock_exclusive(&self) {
        wait_until(|| self.try_lock_exclusive());
    }

    #[inline]
    fn try_lock_exclusive(&self) -> bool {
        // A plain load first, so that waiters spin on a shared line instead of bouncing it.
        let s = self.state.load(Ordering::Relaxed);
        let taken = s & (WRITER | READERS) == 0
            && self
                .state
                .compare_exchange(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok();
        if taken {
            // The sequence lock's writer side: a reader of the shard's memory outside the lock
            // that reads anything this writer stores from here on sees WRITER, or a later
            // version, when it checks the word again (its acquire fence pairs with this one).
            // No instruction on x86.
            std::sync::atomic::fence(Ordering::Release);
        }
        taken
    }

    #[inline]
    unsafe fn unlock_exclusive(&self) {
        // The only writer, and no reader can have come in: the word is the version and WRITER.
        let s = self.state.load(Ordering::Relaxed);
        self.state.store(
            (s & !(WRITER | READERS)).wrapping_add(VERSION),
            Ordering::Release,
        );
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & (WRITER | READERS) != 0
    }

    #[inline]
    fn is_locked_exclusive(&self) -> bool {
        self.state.load(Ordering::Relaxed) & WRITER != 0
    }
}
/// The lock as a sequence lock, for reads of what it guards without taking it: `begin_read`,
/// then the reads (atomic loads, which may see a writer's stores half done), then `validate`,
/// which says whether any writer held the lock since `begin_read` (if not, the reads saw the
/// data as the last writer left it). Readers in read mode change nothing such a read looks at
/// but atomic words they transition by compare-and-swap, and do not invalidate it.
#[cfg(not(idemstore_loom))]
impl RawLock {
    /// The version to validate against, or `None` while a writer holds the lock.
    #[inline]
    pub(crate) fn begin_read(&self) -> Option<u64> {
        let s = self.state.load(Ordering::Acquire);
        (s & WRITER == 0).then_some(s & !READERS)
    }

    /// Whether no writer took the lock since [`RawLock::begin_read`] returned `version`: the
    /// reads between the two saw no writer's store.
    #[inline]
    pub(crate) fn validate(&self, version: u64) -> bool {
        // Pairs with the writer's release fence after it takes the lock: a read that saw a
        // store of a writer makes this load see that writer's WRITER, or a later version.
        std::sync::atomic::fence(Ordering::Acquire);
        self.state.load(Ordering::Relaxed) & !READERS == version
    }
}

#[cfg(idemstore_loom)]
type Inner<T> = loom::sync::RwLock<T>;

#[cfg(not(idemstore_loom))]
pub(crate) type ReadGuard<'a, T> = lock_api::RwLockReadGuard<'a, RawLock, T>;
#[cfg(idemstore_loom)]
pub(crate) type ReadGuard<'a, T> = loom::sync::RwLockReadGuard<'a, T>;

#[cfg(not(idemstore_loom))]
pub(crate) type WriteGuard<'a, T> = lock_api::RwLockWriteGuard<'a, RawLock, T>;
#[cfg(idemstore_loom)]
pub(crate) type WriteGuard<'a, T> = loom::sync::RwLockWriteGuard<'a, T>;

impl<T> RwLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(Inner::new(value))
    }

    #[inline]
    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        #[cfg(not(idemstore_loom))]
        return self.0.read();
        // loom's lock cannot be poisoned inside a model that does not panic.
        #[cfg(idemstore_loom)]
        return self.0.read().unwrap_or_else(|e| e.into_inner());
    }

    /// The write lock if it is free now, without waiting.
    #[inline]
    pub(crate) fn try_write(&self) -> Option<WriteGuard<'_, T>> {
        #[cfg(not(idemstore_loom))]
        return self.0.try_write();
        // loom's lock cannot be poisoned inside a model that does not panic.
        #[cfg(idemstore_loom)]
        return self.0.try_write().ok();
    }

    #[inline]
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        #[cfg(not(idemstore_loom))]
        return self.0.write();
        #[cfg(idemstore_loom)]
        return self.0.write().unwrap_or_else(|e| e.into_inner());
    }
}

#[cfg(not(idemstore_loom))]
impl<T> RwLock<T> {
    /// See [`RawLock::begin_read`].
    #[inline]
    pub(crate) fn begin_read(&self) -> Option<u64> {
        // SAFETY: the raw lock is only read here, never locked or unlocked behind the guards.
        unsafe { self.0.raw() }.begin_read()
    }

    /// See [`RawLock::validate`].
    #[inline]
    pub(crate) fn validate(&self, version: u64) -> bool {
        // SAFETY: as in `begin_read`.
        unsafe { self.0.raw() }.validate(version)
    }
}

#[cfg(not(idemstore_loom))]
pub(crate) use event_listener::{Event, Listener};

/// Loom's stand-in for `event_listener::Event`: a notification counter under a mutex, and a
/// condition variable. A listener remembers the count when it was made and waits until the
/// count moves, so a notification between `listen` and `wait` is never lost.
#[cfg(idemstore_loom)]
#[derive(Debug)]
pub(crate) struct Event {
    notifications: loom::sync::Mutex<u64>,
    moved: loom::sync::Condvar,
}

#[cfg(idemstore_loom)]
impl Event {
    pub(crate) fn new() -> Self {
        Self {
            notifications: loom::sync::Mutex::new(0),
            moved: loom::sync::Condvar::new(),
        }
    }

    pub(crate) fn listen(&self) -> EventListener<'_> {
        let seen = *self.notifications.lock().unwrap();
        EventListener { event: self, seen }
    }

    pub(crate) fn notify(&self, _: usize) {
        *self.notifications.lock().unwrap() += 1;
        self.moved.notify_all();
    }
}

/// A listener of the loom stand-in [`Event`].
#[cfg(idemstore_loom)]
#[derive(Debug)]
pub(crate) struct EventListener<'a> {
    event: &'a Event,
    seen: u64,
}

#[cfg(idemstore_loom)]
impl EventListener<'_> {
    pub(crate) fn wait(self) {
        let mut n = self.event.notifications.lock().unwrap();
        while *n == self.seen {
            n = self.event.moved.wait(n).unwrap();
        }
    }

    /// Loom has no timeouts; the models wait on manual clocks, which never take this path.
    pub(crate) fn wait_timeout(self, _: std::time::Duration) -> Option<()> {
        self.wait();
        Some(())
    }
}

/// Async waits are not modelled; ready once notified (no waker is registered).
#[cfg(idemstore_loom)]
impl std::future::Future for EventListener<'_> {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if *self.event.notifications.lock().unwrap() != self.seen {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

#[cfg(all(test, not(idemstore_loom)))]
mod tests {
    use super::*;

    #[test]
    fn readers_share_the_lock_and_writers_exclude_everyone() {
        let lock = RwLock::new(0u64);
        let r1 = lock.read();
        let r2 = lock.read();
        assert!(lock.try_write().is_none(), "readers hold it");
        drop(r1);
        assert!(lock.try_write().is_none(), "a reader still holds it");
        drop(r2);
        let mut w = lock.try_write().expect("free again");
        *w += 1;
        assert!(lock.try_write().is_none(), "a writer holds it");
        assert!(
            lock.0.try_read().is_none(),
            "no reader while a writer holds it"
        );
        drop(w);
        assert_eq!(*lock.read(), 1);
    }

    /// Writers on every core keep two counters equal under the write lock, readers check
    /// them under the read lock, and no increment is lost: the lock excludes, and what one
    /// holder wrote is seen by the next.
    #[test]
    fn the_lock_excludes_under_contention() {
        const WRITERS: u64 = 3;
        const ROUNDS: u64 = 100_000;
        let lock = RwLock::new((0u64, 0u64));
        std::thread::scope(|s| {
            for _ in 0..WRITERS {
                s.spawn(|| {
                    for _ in 0..ROUNDS {
                        let mut w = lock.write();
                        w.0 += 1;
                        std::hint::black_box(&mut *w);
                        w.1 += 1;
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..ROUNDS / 10 {
                    let r = lock.read();
                    assert_eq!(r.0, r.1, "a reader saw half a write");
                }
            });
        });
        assert_eq!(*lock.read(), (WRITERS * ROUNDS, WRITERS * ROUNDS));
    }

    /// Sequence reads: a read that no writer overlapped validates, one that a writer
    /// overlapped (or began under a writer) does not, readers in read mode do not matter; and
    /// under contention, no validated read sees half a write.
    #[test]
    fn sequence_reads_validate_only_without_a_writer() {
        let lock = RwLock::new(());
        let v = lock.begin_read().expect("no writer");
        assert!(lock.validate(v));
        let r = lock.read();
        assert!(lock.validate(v), "a reader changes no version");
        assert_eq!(lock.begin_read(), Some(v));
        drop(r);
        let w = lock.write();
        assert_eq!(lock.begin_read(), None, "a writer holds it");
        assert!(!lock.validate(v));
        drop(w);
        assert!(!lock.validate(v), "a writer came and went");
        let v2 = lock.begin_read().expect("no writer");
        assert_ne!(v, v2);
        assert!(lock.validate(v2));

        let pair = (AtomicU64::new(0), AtomicU64::new(0));
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 1..=200_000u64 {
                    let _w = lock.write();
                    pair.0.store(i, Ordering::Relaxed);
                    std::hint::black_box(&pair);
                    pair.1.store(i, Ordering::Relaxed);
                }
                done.store(true, Ordering::Release);
            });
            s.spawn(|| loop {
                let last = done.load(Ordering::Acquire);
                let Some(v) = lock.begin_read() else { continue };
                let b = pair.1.load(Ordering::Relaxed);
                let a = pair.0.load(Ordering::Relaxed);
                if lock.validate(v) {
                    assert_eq!(a, b, "a validated read saw half a write");
                    if last {
                        assert_eq!(a, 200_000, "the writer is done");
                        break;
                    }
                } else {
                    assert!(!last, "no writer is left to overlap the read");
                }
            });
        });
    }

    /// A waiter that outlasts the spins and yields sleeps in short steps and still gets the
    /// lock once it is let go.
    #[test]
    fn a_long_wait_ends_when_the_lock_is_let_go() {
        let lock = RwLock::new(0u32);
        let w = lock.write();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| *lock.write() += 1);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "the writer still holds the lock");
            drop(w);
            waiter.join().expect("the waiter got the lock");
        });
        assert_eq!(*lock.read(), 1);
    }
}
