//! The loom shim: every atomic, lock and cell the engine shares between threads comes from here.
//!
//! Built normally, these are `std` atomics, `parking_lot` locks and a thin `UnsafeCell` wrapper.
//! Built with `RUSTFLAGS="--cfg idemstore_loom --cfg loom"`, they are loom's, so the loom models
//! in `tests/loom.rs` explore every interleaving of the real engine code, not a copy of it. The
//! crate's own cfg is crate-prefixed so that it is never switched on by accident; the plain
//! `cfg(loom)` beside it puts `event-listener` (the wake-ups of waiting claims) on loom's
//! primitives too, through its `loom` feature, which this crate enables under its own cfg.

#[cfg(not(idemstore_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(idemstore_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(idemstore_loom))]
pub(crate) use std::sync::Arc;

#[cfg(idemstore_loom)]
pub(crate) use loom::sync::Arc;

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

    #[inline]
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        #[cfg(not(idemstore_loom))]
        return self.0.write();
        #[cfg(idemstore_loom)]
        return self.0.write().unwrap_or_else(|e| e.into_inner());
    }
}

/// `UnsafeCell` with loom's closure API, so loom can check every access for races.
#[cfg(not(idemstore_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(idemstore_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }

    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }
}

#[cfg(idemstore_loom)]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(loom::cell::UnsafeCell<T>);

#[cfg(idemstore_loom)]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(loom::cell::UnsafeCell::new(value))
    }

    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        self.0.with_mut(f)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` proves no other reference to the cell exists.
        self.0.with_mut(|p| unsafe { &mut *p })
    }
}
