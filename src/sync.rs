//! The loom shim: every atomic and lock the engine shares between threads comes from here.
//!
//! Built normally, these are `std` atomics and `parking_lot` locks.
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

/// A reader-writer lock without poisoning: `parking_lot`'s, or loom's under the model checker.
#[derive(Debug)]
pub(crate) struct RwLock<T>(Inner<T>);

#[cfg(not(idemstore_loom))]
type Inner<T> = parking_lot::RwLock<T>;
#[cfg(idemstore_loom)]
type Inner<T> = loom::sync::RwLock<T>;

#[cfg(not(idemstore_loom))]
pub(crate) type ReadGuard<'a, T> = parking_lot::RwLockReadGuard<'a, T>;
#[cfg(idemstore_loom)]
pub(crate) type ReadGuard<'a, T> = loom::sync::RwLockReadGuard<'a, T>;

#[cfg(not(idemstore_loom))]
pub(crate) type WriteGuard<'a, T> = parking_lot::RwLockWriteGuard<'a, T>;
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
