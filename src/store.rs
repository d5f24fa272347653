//! The public handle: [`Store`], the outcome of a claim ([`Claim`]) and the owner's [`Guard`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc as StdArc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::builder::{Builder, Weigher};
use crate::clock::{deadline_ms, floor_ms, nanos_of, Clock};
use crate::error::Error;
use crate::key::{hash_fingerprint, hash_key, hash_scoped_id, IdKeys, KeyHash};
use crate::shard::{Lease, Outcome, Pool, Shard, ShardCell};
use crate::state::{Phase, Word};
use crate::stats::Stats;
#[cfg(not(idemstore_loom))]
use crate::sync::Listener;
use crate::sync::{Arc, AtomicUsize, Event, Ordering, WriteGuard};
use crate::table::{stores_values, Spare};

/// The longest scope accepted by [`ClaimOptions::scope`], in bytes.
pub const MAX_SCOPE_LEN: usize = 4096;

/// The longest lease or ttl accepted: ten years.
pub const MAX_SPAN: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Records a maintenance pass handles per lock acquisition, so maintenance never holds a shard
/// long enough to stall a claim.
const MAINTENANCE_CHUNK: usize = 1024;
/// Keys per round of [`Store::claim_batch_grouped`]: enough for several keys per shard of a
/// default store, few enough that a round's hashes (two arrays of 48 KiB) stay in a core's L2
/// cache.
const GROUPED_CHUNK: usize = 2048;
/// How many claims ahead a batch prefetches a key's table memory.
const PIPELINE: usize = 8;

/// An idempotency store: claims keys, records their results and replays them to duplicates.
///
/// `V` is the stored result of a completed key; `V = ()` makes a dedup-only store whose entries
/// hold no value at all. `Store` is `Send + Sync` and cheap to clone (clones share one store).
///
/// ```
/// use std::time::Duration;
/// use idemstore::{Claim, Store};
///
/// let store: Store<String> = Store::builder().ttl(Duration::from_secs(86_400)).build()?;
/// match store.claim("order-7")? {
///     Claim::Acquired(guard) => guard.complete("charged 10 EUR".to_string())?,
///     other => unreachable!("first claim of a new key: {other:?}"),
/// }
/// // A retry of the same request replays the stored result instead of charging again.
/// let Claim::Completed(replay) = store.claim("order-7")? else { unreachable!() };
/// assert_eq!(replay.value(), "charged 10 EUR");
/// # Ok::<(), idemstore::Error>(())
/// ```
pub struct Store<V = ()> {
    pub(crate) inner: Arc<Inner<V>>,
}

pub(crate) struct Inner<V> {
    pub(crate) shards: Box<[CachePadded<ShardCell<V>>]>,
    pub(crate) shard_bits: u32,
    pub(crate) seed: u64,
    /// The round keys of ids' hash ([`IdKeys::hash`]) under `seed`.
    pub(crate) id_keys: IdKeys,
    pub(crate) ttl_nanos: u64,
    /// `ttl_nanos` in ms, rounded up.
    pub(crate) ttl_ms: u64,
    pub(crate) lease_nanos: u64,
    pub(crate) max_key_len: usize,
    pub(crate) max_entries: usize,
    pub(crate) clock: Clock,
    /// The value replayed for zero-sized `V`: all values of such a type are alike, so one is
    /// kept for the whole store instead of one per entry.
    pub(crate) unit: OnceLock<V>,
    /// The optional background maintenance thread, woken on drop so it exits promptly.
    pub(crate) maintainer: OnceLock<std::thread::Thread>,
    /// The heaviest value `complete` stores, as `weigher` (or `size_of::<V>()`) measures it.
    pub(crate) max_value_size: usize,
    pub(crate) weigher: Option<Weigher<V>>,
    /// Tables kept for the shards' next rebuilds.
    pub(crate) pool: Pool<V>,
    /// Replays made outside the shard locks, per reader slot (see `readers`): each counter is
    /// written only by the thread that holds its slot.
    #[cfg(not(idemstore_loom))]
    pub(crate) unlocked_replays:
        Box<[CachePadded<std::sync::atomic::AtomicU64>; crate::readers::SLOTS]>,
}

impl<V> Drop for Inner<V> {
    fn drop(&mut self) {
        if let Some(t) = self.maintainer.get() {
            t.unpark();
        }
    }
}

impl<V> Clone for Store<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<V> fmt::Debug for Store<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("shards", &self.inner.shards.len())
            .field("max_entries", &self.inner.max_entries)
            .field("ttl", &Duration::from_nanos(self.inner.ttl_nanos))
            .field("lease", &Duration::from_nanos(self.inner.lease_nanos))
            .field("clock", &self.inner.clock)
            .finish_non_exhaustive()
    }
}

/// Per-claim options: a scope, a payload fingerprint and a lease.
///
/// ```
/// use std::time::Duration;
/// use idemstore::ClaimOptions;
///
/// let body = br#"{"amount": 1000}"#;
/// let opts = ClaimOptions::new()
///     .scope("tenant-9")
///     .fingerprint(body)
///     .lease(Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct ClaimOptions<'a> {
    scope: &'a [u8],
    fingerprint: Option<&'a [u8]>,
    lease: Option<Duration>,
}

impl<'a> ClaimOptions<'a> {
    /// No scope, no fingerprint, the store's default lease.
    pub fn new() -> Self {
        Self::default()
    }

    /// The namespace of the key (tenant, account, route): equal keys in different scopes are
    /// different keys. At most [`MAX_SCOPE_LEN`] bytes; empty means no scope.
    pub fn scope<S: AsRef<[u8]> + ?Sized>(mut self, scope: &'a S) -> Self {
        self.scope = scope.as_ref();
        self
    }

    /// The payload this key is used with. The first claim records it; a later claim of the key
    /// (in flight or completed) with a different fingerprint gets [`Claim::Mismatch`]. A claim
    /// without one never mismatches.
    pub fn fingerprint<F: AsRef<[u8]> + ?Sized>(mut self, payload: &'a F) -> Self {
        self.fingerprint = Some(payload.as_ref());
        self
    }

    /// The lease for this claim if it acquires the key, instead of the store's default.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// The outcome of a claim: exactly one of four.
#[must_use = "a claim that is Acquired must be completed or released"]
pub enum Claim<'a, V = ()> {
    /// This caller owns the key: do the work, then [`Guard::complete`] (or release) it.
    Acquired(Guard<'a, V>),
    /// Another owner holds an unexpired lease on the key.
    InProgress(InProgress),
    /// The work finished within the dedup window: here is its result.
    Completed(Replay<'a, V>),
    /// The key is known, but with a different payload fingerprint.
    Mismatch(Mismatch),
}

impl<V> Claim<'_, V> {
    /// Whether this caller acquired the key.
    pub fn is_acquired(&self) -> bool {
        matches!(self, Claim::Acquired(_))
    }

    /// Whether the key is in flight elsewhere.
    pub fn is_in_progress(&self) -> bool {
        matches!(self, Claim::InProgress(_))
    }

    /// Whether the key completed and this is a replay.
    pub fn is_completed(&self) -> bool {
        matches!(self, Claim::Completed(_))
    }

    /// Whether the payload fingerprint differed.
    pub fn is_mismatch(&self) -> bool {
        matches!(self, Claim::Mismatch(_))
    }
}

impl<V: fmt::Debug> fmt::Debug for Claim<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Acquired(g) => f.debug_tuple("Acquired").field(g).finish(),
            Claim::InProgress(p) => f.debug_tuple("InProgress").field(p).finish(),
            Claim::Completed(r) => f.debug_tuple("Completed").field(r).finish(),
            Claim::Mismatch(m) => f.debug_tuple("Mismatch").field(m).finish(),
        }
    }
}

/// The key is in flight: another owner holds an unexpired lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InProgress {
    retry_after: Duration,
}

impl InProgress {
    /// Time until the owner's lease runs out, when a claim could take the key over (HTTP
    /// layers send it as `Retry-After`). The owner may finish or extend before then.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

/// The key is known with a different payload fingerprint (HTTP 422).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    completed: bool,
}

impl Mismatch {
    /// Whether the key had completed (otherwise it is in flight).
    pub fn is_completed(&self) -> bool {
        self.completed
    }
}

/// The stored result of a completed key, handed to a duplicate.
pub struct Replay<'a, V = ()> {
    value: Held<'a, V>,
    expires_at_ms: u64,
    /// The store's ttl in ms, rounded up as deadlines are.
    ttl_ms: u64,
    now_nanos: u64,
}

enum Held<'a, V> {
    /// One shared allocation per completed entry: replays never deep-copy the value.
    Shared(StdArc<V>),
    /// Zero-sized values: the store's one instance.
    Unit(&'a V),
}

impl<V> Replay<'_, V> {
    /// The result the owner completed the key with.
    pub fn value(&self) -> &V {
        match &self.value {
            Held::Shared(v) => v,
            Held::Unit(v) => v,
        }
    }

    /// When the key completed, on the store's clock (to the millisecond).
    pub fn completed_at(&self) -> Duration {
        // The deadline was rounded up from the completion time; never report a completion
        // later than this claim.
        Duration::from_millis(
            self.expires_at_ms
                .saturating_sub(self.ttl_ms)
                .min(floor_ms(self.now_nanos)),
        )
    }

    /// When the key's dedup window ends, on the store's clock.
    pub fn expires_at(&self) -> Duration {
        Duration::from_millis(self.expires_at_ms)
    }

    /// Time left in the key's dedup window, measured from the claim.
    pub fn expires_in(&self) -> Duration {
        Duration::from_millis(self.expires_at_ms)
            .saturating_sub(Duration::from_nanos(self.now_nanos))
    }
}

impl<V: fmt::Debug> fmt::Debug for Replay<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("value", self.value())
            .field("completed_at", &self.completed_at())
            .field("expires_in", &self.expires_in())
            .finish()
    }
}

/// Ownership of a claimed key. Complete it with the result, or release it on failure;
/// dropping it without completing releases the key, so a panic or an early return never
/// leaves the key stuck for a whole lease.
///
/// Every operation is fenced: once the lease has run out, the guard gets [`Error::LeaseLost`]
/// and changes nothing, so a stalled owner can never overwrite a newer owner's result.
#[must_use = "dropping a guard releases the key; complete it with the result of the work"]
pub struct Guard<'a, V = ()> {
    store: &'a Store<V>,
    hash: KeyHash,
    token: u64,
    word: Word,
    takeover: bool,
    active: bool,
    /// Where the claim put or found the entry: looked at first by the guard's operations
    /// (a rebuild since may have moved it; then they probe).
    slot: u32,
}

impl<V> fmt::Debug for Guard<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("token", &self.token)
            .field("takeover", &self.takeover)
            .field("lease_deadline", &self.lease_deadline())
            .finish()
    }
}

impl<V> Store<V> {
    /// A builder with the defaults: 24 h ttl, 30 s lease, 10 million entries, system clock.
    pub fn builder() -> Builder<V> {
        Builder::new()
    }

    /// Claims `key` with the default options. See [`Store::claim_with`].
    #[inline]
    pub fn claim<K: AsRef<[u8]>>(&self, key: K) -> Result<Claim<'_, V>, Error> {
        let key = key.as_ref();
        self.check_key(key)?;
        let h = hash_key(self.inner.seed, &[], key);
        self.claim_hashed(h, 0, self.inner.lease_nanos)
    }

    /// Claims `key` with a scope, a payload fingerprint or a lease of its own.
    ///
    /// Errors: [`Error::InvalidKey`] for an empty key or one longer than `max_key_len`,
    /// [`Error::InvalidScope`], [`Error::InvalidLease`], and [`Error::CapacityExceeded`] when
    /// a new key finds the store full. A failed claim changes nothing.
    pub fn claim_with<K: AsRef<[u8]>>(
        &self,
        key: K,
        options: &ClaimOptions<'_>,
    ) -> Result<Claim<'_, V>, Error> {
        let (h, fp, lease) = self.prepare(key.as_ref(), options)?;
        self.claim_hashed(h, fp, lease)
    }

    /// Claims `key` like [`Store::claim_with`], but if another owner has it in flight, waits
    /// (without blocking the thread) until that owner completes or releases it or its lease
    /// runs out, for at most `max_wait`, and then returns what a fresh claim returns: the
    /// replay, or `Acquired` if the key came free. If the key is still in flight after
    /// `max_wait`, returns `InProgress`.
    ///
    /// Owners wake waiters on every completion and release, so nothing polls; a lease that runs
    /// out wakes them by its deadline. Works on any executor (the timer of a wait on the system
    /// clock runs on one helper thread shared by all stores). On a [manual](Clock::manual)
    /// clock, `max_wait` and leases are measured on that clock and every advance wakes waiters,
    /// so tests need no sleeps. Dropping the future leaves nothing behind.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemstore::{Claim, ClaimOptions, Store};
    ///
    /// let store: Store<u32> = Store::builder().build()?;
    /// let Claim::Acquired(owner) = store.claim("job-1")? else { unreachable!() };
    /// std::thread::scope(|s| {
    ///     // A duplicate arrives while the owner works: it waits for the result, not a 409.
    ///     let duplicate = s.spawn(|| {
    ///         let opts = ClaimOptions::new();
    ///         match store.claim_wait_blocking("job-1", &opts, Duration::from_secs(5))? {
    ///             Claim::Completed(replay) => Ok(*replay.value()),
    ///             other => panic!("the owner completed within the wait: {other:?}"),
    ///         }
    ///     });
    ///     owner.complete(7)?;
    ///     assert_eq!(duplicate.join().unwrap()?, 7);
    ///     Ok::<(), idemstore::Error>(())
    /// })?;
    /// // In async code: store.claim_wait("job-1", &opts, max_wait).await, on any executor.
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub async fn claim_wait<K: AsRef<[u8]>>(
        &self,
        key: K,
        options: &ClaimOptions<'_>,
        max_wait: Duration,
    ) -> Result<Claim<'_, V>, Error> {
        let (wait, _waiting) = self.start_wait(key.as_ref(), options, max_wait)?;
        loop {
            // Listen before looking, so a completion between the look and the wait still
            // wakes this waiter.
            let mut listener = self.inner.wake_event(&wait.h).listen();
            match self.look(&wait)? {
                Ok(claim) => return Ok(claim),
                Err(Pause::UntilNotified) => (&mut listener).await,
                Err(Pause::AtMost(d)) => {
                    let mut timer = futures_timer::Delay::new(d);
                    std::future::poll_fn(|cx| {
                        if Pin::new(&mut listener).poll(cx).is_ready()
                            || Pin::new(&mut timer).poll(cx).is_ready()
                        {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    })
                    .await;
                }
            }
        }
    }

    /// [`Store::claim_wait`] for threads that may block: the same outcomes, waiting on the
    /// calling thread.
    pub fn claim_wait_blocking<K: AsRef<[u8]>>(
        &self,
        key: K,
        options: &ClaimOptions<'_>,
        max_wait: Duration,
    ) -> Result<Claim<'_, V>, Error> {
        let (wait, _waiting) = self.start_wait(key.as_ref(), options, max_wait)?;
        loop {
            let listener = self.inner.wake_event(&wait.h).listen();
            match self.look(&wait)? {
                Ok(claim) => return Ok(claim),
                Err(Pause::UntilNotified) => listener.wait(),
                Err(Pause::AtMost(d)) => {
                    let _ = listener.wait_timeout(d);
                }
            }
        }
    }

    /// Checks a waiting claim's input and counts the waiter in its shard (until the returned
    /// `Waiting` is dropped, with the wait or its future).
    fn start_wait(
        &self,
        key: &[u8],
        options: &ClaimOptions<'_>,
        max_wait: Duration,
    ) -> Result<(Wait, Waiting<'_>), Error> {
        let (h, fp, lease) = self.prepare(key, options)?;
        let inner = &*self.inner;
        let until = inner.clock.now_nanos().saturating_add(nanos_of(max_wait));
        let waiting = Waiting::new(&inner.cell(&h).waiting);
        Ok((
            Wait {
                h,
                fp,
                lease,
                until,
            },
            waiting,
        ))
    }

    /// One look of a waiting claim: the claim to hand back (`Ok`), or how long to pause before
    /// the next look (`Err`).
    fn look(&self, wait: &Wait) -> Result<Result<Claim<'_, V>, Pause>, Error> {
        let claim = self.claim_hashed(wait.h, wait.fp, wait.lease)?;
        let pause = match &claim {
            Claim::InProgress(p) => self.inner.pause(p, wait.until),
            _ => None,
        };
        Ok(pause.map_or(Ok(claim), Err))
    }

    /// Checks a claim's key and options; returns its hash, fingerprint hash and lease.
    fn prepare(
        &self,
        key: &[u8],
        options: &ClaimOptions<'_>,
    ) -> Result<(KeyHash, u64, u64), Error> {
        self.check_key(key)?;
        self.check_scope(options.scope)?;
        let h = hash_key(self.inner.seed, options.scope, key);
        let (fp, lease) = self.options(options)?;
        Ok((h, fp, lease))
    }

    /// Weighs a value the way [`Guard::complete`] does: its weight, or
    /// [`Error::ValueTooLarge`] if the store would refuse it (see
    /// [`Builder::max_value_size`]).
    pub fn check_value(&self, value: &V) -> Result<usize, Error> {
        let inner = &*self.inner;
        let size = match &inner.weigher {
            Some(weigh) => weigh(value),
            None => std::mem::size_of::<V>(),
        };
        if size > inner.max_value_size {
            return Err(Error::ValueTooLarge {
                size,
                limit: inner.max_value_size,
            });
        }
        Ok(size)
    }

    /// Claims a caller's own 128-bit id (a UUID, a message id) directly: no key bytes to check
    /// or hash. Ids map to identities by a seeded permutation, so two different ids never
    /// collide (keys hashed from bytes may, with odds of about n²/2¹²⁹).
    #[inline]
    pub fn claim_id(&self, id: u128) -> Result<Claim<'_, V>, Error> {
        let h = self.inner.id_keys.hash(id);
        self.claim_hashed(h, 0, self.inner.lease_nanos)
    }

    /// [`Store::claim_id`] with options. Without a scope the id is claimed as
    /// [`Store::claim_id`] claims it. With one, the identity is a hash of the scope and the id
    /// (the same id in two scopes is two keys, as for [`Store::claim_with`]; a scope over
    /// [`MAX_SCOPE_LEN`] bytes gets [`Error::InvalidScope`]), with the odds of a collision of
    /// keys hashed from bytes, and never the identity of a key of bytes.
    pub fn claim_id_with(
        &self,
        id: u128,
        options: &ClaimOptions<'_>,
    ) -> Result<Claim<'_, V>, Error> {
        let h = if options.scope.is_empty() {
            self.inner.id_keys.hash(id)
        } else {
            self.check_scope(options.scope)?;
            hash_scoped_id(self.inner.seed, options.scope, id)
        };
        let (fp, lease) = self.options(options)?;
        self.claim_hashed(h, fp, lease)
    }

    /// Claims a batch of keys with the default options, handing each outcome to `each` with
    /// the key's index, in order. The same as calling [`Store::claim`] for every key, but while
    /// it works on one key it already fetches the table memory of the keys a few places ahead,
    /// so the cache misses of several claims overlap: a consumer that receives messages in
    /// batches claims them faster this way. An invalid key gets its error; the others go on.
    ///
    /// ```
    /// use idemstore::{Claim, Store};
    ///
    /// let store: Store = Store::builder().build()?;
    /// let batch = ["m-1", "m-2", "m-1"];
    /// let mut fresh = Vec::new();
    /// store.claim_batch(&batch, |i, claim| {
    ///     if let Ok(Claim::Acquired(guard)) = claim {
    ///         fresh.push((i, guard));
    ///     }
    /// });
    /// // "m-1" is in flight when its duplicate in the same batch is claimed.
    /// assert_eq!(fresh.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
    /// for (_, guard) in fresh {
    ///     guard.complete(())?;
    /// }
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn claim_batch<'s, K: AsRef<[u8]>>(
        &'s self,
        keys: &[K],
        each: impl FnMut(usize, Result<Claim<'s, V>, Error>),
    ) {
        self.claim_pipelined(keys.len(), self.hash_of_batch(keys), each);
    }

    /// The hash of a batch's key `i` (with the default options), or its key's error.
    fn hash_of_batch<'a, K: AsRef<[u8]>>(
        &'a self,
        keys: &'a [K],
    ) -> impl Fn(usize) -> Result<KeyHash, Error> + 'a {
        let seed = self.inner.seed;
        move |i| {
            let key = keys[i].as_ref();
            self.check_key(key)?;
            Ok(hash_key(seed, &[], key))
        }
    }

    /// [`Store::claim_batch`] for callers' own 128-bit ids.
    pub fn claim_id_batch<'s>(
        &'s self,
        ids: &[u128],
        each: impl FnMut(usize, Result<Claim<'s, V>, Error>),
    ) {
        let keys = self.inner.id_keys;
        self.claim_pipelined(ids.len(), |i| Ok(keys.hash(ids[i])), each);
    }

    /// [`Store::claim_batch`] for large batches, grouped by shard: every key is hashed first,
    /// then each shard's keys are claimed under one hold of its lock (per round of 2048 keys,
    /// and one more after a rebuild of the shard's table), so the shard's own lines (its lock
    /// word, counters, timing wheel), which the other threads' claims write too, move to this
    /// core once per shard and round instead of once per key. The table memory of keys a few
    /// places ahead is prefetched as in [`Store::claim_batch`].
    ///
    /// Each outcome is the one claiming the keys one after another in the batch's order would
    /// give, but `each` gets them **shard by shard**, not in the batch's order: each with its
    /// key's index, a shard's outcomes right after its lock is let go (so work done in `each`,
    /// a completion say, finds the shard's lines still in this core's cache). A key's
    /// duplicates in the batch are claimed after it, and handed out after it unless another
    /// thread completes the key meanwhile (then both replay); an invalid key gets its error
    /// before any claim of its round. Where a thread's claims have mostly been replays lately, a
    /// dedup-only store first reads a shard's keys outside its lock, as [`Store::claim`] does,
    /// hands out the replays found so, and takes the lock for the rest.
    ///
    /// It pays where a batch has several keys per shard (a store has
    /// [`shards`](Builder::shards) of them, 64 per core by default): hundreds to thousands of
    /// keys per call, as a consumer polls them. It works 2048 keys at a time.
    ///
    /// ```
    /// use idemstore::{Claim, Store};
    ///
    /// let store: Store = Store::builder().build()?;
    /// let batch: Vec<String> = (0..1000).map(|i| format!("m-{}", i % 600)).collect();
    /// let mut fresh = Vec::new();
    /// store.claim_batch_grouped(&batch, |i, claim| {
    ///     if let Ok(Claim::Acquired(guard)) = claim {
    ///         fresh.push((i, guard));
    ///     }
    /// });
    /// // The first 600 are new; the rest are duplicates of keys in flight.
    /// fresh.sort_by_key(|(i, _)| *i);
    /// assert!(fresh.iter().map(|(i, _)| *i).eq(0..600));
    /// for (_, guard) in fresh {
    ///     guard.complete(())?;
    /// }
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn claim_batch_grouped<'s, K: AsRef<[u8]>>(
        &'s self,
        keys: &[K],
        each: impl FnMut(usize, Result<Claim<'s, V>, Error>),
    ) {
        self.claim_grouped(keys.len(), self.hash_of_batch(keys), each);
    }

    /// [`Store::claim_batch_grouped`] for callers' own 128-bit ids.
    pub fn claim_id_batch_grouped<'s>(
        &'s self,
        ids: &[u128],
        each: impl FnMut(usize, Result<Claim<'s, V>, Error>),
    ) {
        let keys = self.inner.id_keys;
        self.claim_grouped(ids.len(), |i| Ok(keys.hash(ids[i])), each);
    }

    /// Completes many claims at once, grouped by shard as [`Store::claim_batch_grouped`] claims
    /// them: each shard's completions are made under one hold of its lock (per round of 2048),
    /// with the table memory of the completions a few places ahead prefetched. For a consumer
    /// that claims a poll's keys, does their work, then completes them together.
    ///
    /// Each completion is the one [`Guard::complete`] makes, with its own result, which `each`
    /// gets as `each(i, result)` for the `i`-th of `completions`, **not in their order**:
    /// [`Error::LeaseLost`] if the guard's lease ran out (nothing was written), after every
    /// completion of its round is made; [`Error::ValueTooLarge`] for a value heavier than the
    /// store's [`max_value_size`](Builder::max_value_size) (nothing was stored and the key is
    /// released, as [`Guard::complete`] releases it), at once. A guard of another store is
    /// completed by that store, one at a time, at once.
    ///
    /// A round's completions are made once its 2048 guards (or all, if fewer) have been taken
    /// from `completions`: hand over finished work (a collection, or an iterator that does no
    /// work of its own), or a lease may run out while later items are produced. If
    /// `completions` or `each` panics, the guards taken and not completed yet are released, as
    /// dropped guards are, so their work runs again on a retry.
    ///
    /// ```
    /// use idemstore::{Claim, Store};
    ///
    /// let store: Store<u32> = Store::builder().build()?;
    /// let poll: Vec<String> = (0..100).map(|i| format!("m-{i}")).collect();
    /// let mut work = Vec::new();
    /// store.claim_batch_grouped(&poll, |i, claim| {
    ///     if let Ok(Claim::Acquired(guard)) = claim {
    ///         work.push((guard, i as u32 * 2));
    ///     }
    /// });
    /// let mut completed = 0;
    /// store.complete_batch(work, |_, result| {
    ///     result.expect("the leases are 30 s");
    ///     completed += 1;
    /// });
    /// assert_eq!(completed, 100);
    /// let Claim::Completed(replay) = store.claim("m-21")? else { unreachable!() };
    /// assert_eq!(*replay.value(), 42);
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn complete_batch<'s>(
        &'s self,
        completions: impl IntoIterator<Item = (Guard<'s, V>, V)>,
        mut each: impl FnMut(usize, Result<(), Error>),
    ) {
        let inner = &*self.inner;
        let mut completions = completions.into_iter().fuse().enumerate();
        let n = completions.size_hint().0.min(GROUPED_CHUNK);
        // If anything panics, dropping the round releases the keys it holds and has not
        // completed yet.
        let mut round = Round::new(self, n);
        let mut sorted: Vec<Pending> = Vec::with_capacity(n);
        let mut groups = Groups::default();
        loop {
            for (i, (guard, value)) in completions.by_ref() {
                // Clones of a store share its `Inner`: their guards are this store's.
                if !std::ptr::eq(&*guard.store.inner, inner) {
                    each(i, guard.complete(value));
                    continue;
                }
                if let Err(e) = self.check_weight(&value) {
                    drop(guard);
                    each(i, Err(e));
                    continue;
                }
                round.push(guard, value, i);
                if round.pending.len() == GROUPED_CHUNK {
                    break;
                }
            }
            if round.pending.is_empty() {
                return;
            }
            groups.sort(inner, &round.pending, |c| &c.hash, &mut sorted);
            groups.visit(
                inner,
                &sorted,
                |c| &c.hash,
                |cell, run| {
                    self.complete_held(cell, &sorted, run, &mut round);
                },
            );
            // The values not stored are dropped here, outside the locks.
            round.values.clear();
            for ((&i, fate), c) in round.index.iter().zip(&round.fates).zip(&round.pending) {
                each(
                    i,
                    match fate {
                        Fate::Completed => Ok(()),
                        Fate::Lost => {
                            // Traced here, not under the lock: a subscriber is user code.
                            let _token = c.token;
                            event!(token = _token, "complete refused: the lease was lost");
                            Err(Error::LeaseLost)
                        }
                        Fate::Owned => {
                            unreachable!("invariant: every completion of the round was made")
                        }
                    },
                );
            }
            round.clear();
        }
    }

    /// Makes the completions `sorted[run]`, all of `cell`'s shard, under one hold of its
    /// lock, leaving each one's fate in `round` and the values not stored there. The table
    /// memory of the completion [`PIPELINE`] places ahead in `sorted` is prefetched as they go.
    fn complete_held(
        &self,
        cell: &ShardCell<V>,
        sorted: &[Pending],
        run: std::ops::Range<usize>,
        round: &mut Round<'_, V>,
    ) {
        let inner = &*self.inner;
        let first = run.start;
        let mut completed = false;
        let mut shard = cell.write();
        let now_nanos = cell.advance_time(&mut shard, inner.clock.now_nanos());
        for q in run {
            if let Some(c) = sorted.get(q + PIPELINE) {
                inner.prefetch(&c.hash);
            }
            let c = &sorted[q];
            let pos = c.pos as usize;
            let value = round.values.get_mut(pos).and_then(Option::take);
            round.fates[pos] = match self.complete_entry(
                &mut shard,
                &c.hash,
                c.slot,
                c.word,
                now_nanos,
                value,
                &mut round.unit,
            ) {
                Ok(()) => {
                    completed = true;
                    Fate::Completed
                }
                Err(unused) => {
                    // Dropped after the lock, with the round's values.
                    if let Some(v) = unused {
                        round.values[pos] = Some(v);
                    }
                    Fate::Lost
                }
            };
        }
        drop(shard);
        if completed {
            // A shard's keys share their waiters' event.
            inner.wake(&sorted[first].hash);
        }
    }

    /// The locked core of a completion, at `now_nanos` (the shard's time): the owner's entry
    /// `h` (seen at `slot` with `word`) becomes completed with `value`, unless its lease ran
    /// out or it was taken over, which hands `value` back to be dropped after the lock. A
    /// zero-sized `V`'s instance in `unit` is kept as the store's ([`Inner::unit`]) if it has
    /// none yet, before the lock goes, so that a replay of the entry finds one; an instance not
    /// kept stays in `unit`, for the caller to drop after the lock.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn complete_entry(
        &self,
        shard: &mut Shard<V>,
        h: &KeyHash,
        slot: u32,
        word: Word,
        now_nanos: u64,
        value: Option<StdArc<V>>,
        unit: &mut Option<V>,
    ) -> Result<(), Option<StdArc<V>>> {
        let inner = &*self.inner;
        let now = floor_ms(now_nanos);
        if now >= word.deadline() {
            return Err(value);
        }
        let next = word.with(Phase::Completed, deadline_ms(now_nanos, inner.ttl_nanos));
        shard.complete(h, slot, word, next, value, now)?;
        if let Some(u) = unit.take() {
            if let Err(u) = inner.unit.set(u) {
                *unit = Some(u);
            }
        }
        Ok(())
    }

    /// [`Store::check_value`], skipped where values are unbounded.
    #[inline(always)]
    fn check_weight(&self, value: &V) -> Result<(), Error> {
        if self.inner.max_value_size != usize::MAX {
            self.check_value(value)?;
        }
        Ok(())
    }

    /// Claims `n` keys [`GROUPED_CHUNK`] at a time: each round hashes its keys (an invalid
    /// key gets its error at once), sorts them by shard (stably), then claims them in that
    /// order, prefetching the table memory of the key [`PIPELINE`] places ahead as
    /// [`Store::claim_batch`] does: a shard's keys read outside the lock where replays are
    /// likely, the rest under one hold of its lock ([`Store::claim_held`]).
    fn claim_grouped<'s>(
        &'s self,
        n: usize,
        hash: impl Fn(usize) -> Result<KeyHash, Error>,
        mut each: impl FnMut(usize, Result<Claim<'s, V>, Error>),
    ) {
        let inner = &*self.inner;
        let prefetch = |h: &KeyHash| inner.prefetch(h);
        let round = n.min(GROUPED_CHUNK);
        let mut hashed: Vec<(KeyHash, usize)> = Vec::with_capacity(round);
        let mut sorted: Vec<(KeyHash, usize)> = Vec::with_capacity(round);
        let mut groups = Groups::default();
        let mut held: Vec<Outcome<V>> = Vec::new();
        // A shard's keys that did not replay outside the lock.
        let mut pending: Vec<(KeyHash, usize)> = Vec::new();
        for from in (0..n).step_by(GROUPED_CHUNK) {
            hashed.clear();
            for i in from..n.min(from + GROUPED_CHUNK) {
                match hash(i) {
                    Ok(h) => hashed.push((h, i)),
                    Err(e) => each(i, Err(e)),
                }
            }
            groups.sort(inner, &hashed, |(h, _)| h, &mut sorted);
            groups.visit(
                inner,
                &sorted,
                |(h, _)| h,
                |cell, run| {
                    // Where this thread's claims have mostly been replays, the shard's keys are
                    // first read outside the lock, as `claim_batch` reads them (`readers`); only
                    // the others are claimed under it.
                    let unlocked = Self::tries_unlocked(0);
                    let keys = if unlocked {
                        pending.clear();
                        for q in run.clone() {
                            if let Some((h, _)) = sorted.get(q + PIPELINE) {
                                prefetch(h);
                            }
                            let (h, i) = sorted[q];
                            #[cfg(not(idemstore_loom))]
                            if let Some(replay) = self.replay_first::<false>(cell, &h, 0) {
                                each(i, Ok(Claim::Completed(replay)));
                                continue;
                            }
                            pending.push((h, i));
                        }
                        &pending[..]
                    } else {
                        &sorted[run.clone()]
                    };
                    self.claim_held(cell, keys, &mut held, &mut each, |k| {
                        // Read outside the lock, the keys ahead were prefetched already.
                        if !unlocked {
                            if let Some((h, _)) = sorted.get(run.start + k + PIPELINE) {
                                prefetch(h);
                            }
                        }
                    });
                },
            );
        }
    }

    /// Claims `keys`, all of `cell`'s shard, in holds of its lock: one, unless a claim leaves
    /// chores (twice per rebuild), which are done outside the lock before the next hold. Each
    /// hold's outcomes go to `each` after the lock is let go. `ahead(k)` runs before the claim
    /// of `keys[k]`.
    fn claim_held<'s>(
        &'s self,
        cell: &ShardCell<V>,
        keys: &[(KeyHash, usize)],
        held: &mut Vec<Outcome<V>>,
        each: &mut impl FnMut(usize, Result<Claim<'s, V>, Error>),
        ahead: impl Fn(usize),
    ) {
        let mut k = 0;
        while k < keys.len() {
            let first = k;
            let (mut locked, now_nanos) = self.lock_for_claims(cell);
            let now = floor_ms(now_nanos);
            let lease = Lease {
                from_nanos: now_nanos,
                nanos: self.inner.lease_nanos,
            };
            loop {
                ahead(k);
                held.push(locked.claim(cell, &keys[k].0, 0, now, lease));
                k += 1;
                if k == keys.len() || locked.has_chores() {
                    break;
                }
            }
            cell.unlock(locked, &self.inner.pool);
            let handout = Handout {
                store: self,
                keys: keys[first..k].iter(),
                outcomes: held.drain(..),
                now_nanos,
            };
            for (i, claim) in handout {
                each(i, claim);
            }
        }
    }

    /// Claims `n` keys, hashing each `AHEAD` places before claiming it and prefetching its
    /// table memory then, so that its misses overlap the claims in between.
    fn claim_pipelined<'s>(
        &'s self,
        n: usize,
        hash: impl Fn(usize) -> Result<KeyHash, Error>,
        mut each: impl FnMut(usize, Result<Claim<'s, V>, Error>),
    ) {
        const AHEAD: usize = PIPELINE;
        let inner = &*self.inner;
        let start = |i: usize| {
            let h = hash(i);
            if let Ok(h) = &h {
                inner.prefetch(h);
            }
            h
        };
        // Slot `i % AHEAD` holds key `i`'s hash from `AHEAD` claims before key `i` until its
        // claim; the filler error is never handed out.
        let mut ring: [Result<KeyHash, Error>; AHEAD] =
            std::array::from_fn(|_| Err(Error::LeaseLost));
        for (i, slot) in ring.iter_mut().enumerate().take(n) {
            *slot = start(i);
        }
        for i in 0..n {
            let next = if i + AHEAD < n {
                start(i + AHEAD)
            } else {
                Err(Error::LeaseLost)
            };
            let h = std::mem::replace(&mut ring[i % AHEAD], next);
            each(
                i,
                h.and_then(|h| self.claim_prefetched(h, 0, inner.lease_nanos)),
            );
        }
    }

    /// A claim's fingerprint hash and lease.
    fn options(&self, options: &ClaimOptions<'_>) -> Result<(u64, u64), Error> {
        let lease = match options.lease {
            Some(l) => check_lease(l)?,
            None => self.inner.lease_nanos,
        };
        let fp = options
            .fingerprint
            .map_or(0, |f| hash_fingerprint(self.inner.seed, f));
        Ok((fp, lease))
    }

    #[inline]
    fn check_scope(&self, scope: &[u8]) -> Result<(), Error> {
        if scope.len() > MAX_SCOPE_LEN {
            return Err(Error::InvalidScope {
                len: scope.len(),
                max_len: MAX_SCOPE_LEN,
            });
        }
        Ok(())
    }

    #[inline]
    fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        if key.is_empty() || key.len() > self.inner.max_key_len {
            return Err(self.key_error(key));
        }
        Ok(())
    }

    #[cold]
    fn key_error(&self, key: &[u8]) -> Error {
        Error::InvalidKey {
            reason: if key.is_empty() {
                "the key is empty"
            } else {
                "the key is longer than max_key_len"
            },
            max_len: self.inner.max_key_len,
        }
    }

    #[inline(always)]
    fn claim_hashed(&self, h: KeyHash, fp: u64, lease_nanos: u64) -> Result<Claim<'_, V>, Error> {
        let cell = self.inner.cell(&h);
        // The read outside the lock starts the key's cache misses itself.
        #[cfg(not(idemstore_loom))]
        if let Some(replay) = self.replay_first::<true>(cell, &h, fp) {
            return Ok(Claim::Completed(replay));
        }
        // Start loading the key's tag group and slots before taking the lock: the lock's
        // atomic operation orders every later access after it, and would otherwise hold the
        // table's cache misses back until it is done.
        cell.whereabouts.prefetch(&h);
        self.claim_locked(cell, h, fp, lease_nanos)
    }

    /// [`Store::claim_hashed`] for a key whose table memory is already on its way (a batch
    /// prefetches it a few claims ahead).
    #[inline(always)]
    fn claim_prefetched(
        &self,
        h: KeyHash,
        fp: u64,
        lease_nanos: u64,
    ) -> Result<Claim<'_, V>, Error> {
        let cell = self.inner.cell(&h);
        // Its slots are on their way already: the read does not fetch them again.
        #[cfg(not(idemstore_loom))]
        if let Some(replay) = self.replay_first::<false>(cell, &h, fp) {
            return Ok(Claim::Completed(replay));
        }
        self.claim_locked(cell, h, fp, lease_nanos)
    }

    /// Whether a claim with fingerprint hash `fp` reads its entry outside the lock first: it may
    /// ([`Store::may_replay_unlocked`]), and this thread's claims have mostly been replays
    /// lately (`readers`). Never under loom, which does not model those reads.
    #[inline(always)]
    fn tries_unlocked(fp: u64) -> bool {
        #[cfg(not(idemstore_loom))]
        return Self::may_replay_unlocked(fp) && crate::readers::replays_likely();
        #[cfg(idemstore_loom)]
        {
            let _ = fp;
            false
        }
    }

    /// Whether a claim with fingerprint hash `fp` may replay without the lock (`readers`): a
    /// dedup-only store, no fingerprint.
    #[cfg(not(idemstore_loom))]
    #[inline(always)]
    fn may_replay_unlocked(fp: u64) -> bool {
        !stores_values::<V>() && fp == 0
    }

    /// The replay of `h`, read outside the lock, where this thread's claims have mostly been
    /// replays lately and the claim may replay so ([`Store::replay_unlocked`]; `PREFETCH`:
    /// whether the read starts loading the key's slots, which a batch did already).
    #[cfg(not(idemstore_loom))]
    #[inline(always)]
    fn replay_first<const PREFETCH: bool>(
        &self,
        cell: &ShardCell<V>,
        h: &KeyHash,
        fp: u64,
    ) -> Option<Replay<'_, V>> {
        if !Self::tries_unlocked(fp) {
            return None;
        }
        // The instance of the zero-sized `V` kept at the store's first completion (set under
        // its lock): none means no completion is visible to this thread yet, and the claim
        // goes under the lock, which replays if there is a completed entry after all.
        let unit = self.inner.unit.get()?;
        let (deadline, now_nanos) = self.replay_unlocked::<PREFETCH>(cell, h)?;
        crate::readers::note_claim(true);
        Some(Replay {
            value: Held::Unit(unit),
            expires_at_ms: deadline.get(),
            ttl_ms: self.inner.ttl_ms,
            now_nanos,
        })
    }

    /// A claim under the shard's write lock.
    #[inline(always)]
    fn claim_locked(
        &self,
        cell: &ShardCell<V>,
        h: KeyHash,
        fp: u64,
        lease_nanos: u64,
    ) -> Result<Claim<'_, V>, Error> {
        let (mut locked, now_nanos) = self.lock_for_claims(cell);
        let lease = Lease {
            from_nanos: now_nanos,
            nanos: lease_nanos,
        };
        let outcome = locked.claim(cell, &h, fp, floor_ms(now_nanos), lease);
        // Chores are rare (twice per rebuild): memory to make or free, never under the lock.
        cell.unlock(locked, &self.inner.pool);
        self.claim_of(h, fp, outcome, now_nanos)
    }

    /// `cell`'s write lock for claims, and the time they take effect (ns): the clock read
    /// under the lock, and never behind the shard's last reading (time seen by the operations on
    /// one shard never goes backwards in the order they take effect, even if the TSCs of two
    /// cores disagree by a little).
    #[inline(always)]
    fn lock_for_claims<'c>(&self, cell: &'c ShardCell<V>) -> (WriteGuard<'c, Shard<V>>, u64) {
        let mut locked = cell.write();
        let now_nanos = cell.advance_time(&mut locked, self.inner.clock.now_nanos());
        (locked, now_nanos)
    }

    /// The public form of a locked claim's `outcome` (made at `now_nanos`), with the claim
    /// counted in the thread's replay score.
    #[inline(always)]
    fn claim_of(
        &self,
        h: KeyHash,
        fp: u64,
        outcome: Outcome<V>,
        now_nanos: u64,
    ) -> Result<Claim<'_, V>, Error> {
        let inner = &*self.inner;
        #[cfg(not(idemstore_loom))]
        if Self::may_replay_unlocked(fp) {
            crate::readers::note_claim(matches!(outcome, Outcome::Completed { .. }));
        }
        // Loom does not model replays outside the lock: no score to keep.
        #[cfg(idemstore_loom)]
        let _ = fp;
        Ok(match outcome {
            Outcome::Acquired {
                token,
                word,
                takeover,
                slot,
            } => Claim::Acquired(Guard {
                store: self,
                hash: h,
                token,
                word,
                takeover,
                active: true,
                slot,
            }),
            Outcome::InProgress { deadline } => Claim::InProgress(InProgress {
                retry_after: Duration::from_millis(deadline)
                    .saturating_sub(Duration::from_nanos(now_nanos)),
            }),
            Outcome::Completed { value, deadline } => Claim::Completed(Replay {
                value: match value {
                    Some(v) => Held::Shared(v),
                    None => Held::Unit(inner.unit.get().expect(
                        "invariant: a completed entry without a stored value has a zero-sized type, \
                         whose one instance was kept when it completed",
                    )),
                },
                expires_at_ms: deadline,
                ttl_ms: inner.ttl_ms,
                now_nanos,
            }),
            Outcome::Mismatch { completed } => Claim::Mismatch(Mismatch { completed }),
            Outcome::Full { limit } => {
                event!(
                    shard = h.shard(inner.shard_bits),
                    limit,
                    "claim refused: the shard holds as many live keys as it may"
                );
                return Err(Error::CapacityExceeded { limit });
            }
        })
    }

    /// The deadline (ms) of `h`'s entry and the time of the replay (ns) if the entry is
    /// completed and unexpired and sits in the first groups of its probe path, found without
    /// taking the shard's lock (see `readers`), and counted in the store's statistics; `None`
    /// if anything else (the claim then runs under the lock). Only for dedup-only stores
    /// (nothing to clone out of the table) and claims without a fingerprint. Takes effect when
    /// it reads the entry's word: the time it checks the deadline against is read after the
    /// lock's version (so it is not behind any locked operation before it on the shard) and
    /// after the word (so if anything later than the moment the replay takes effect). Out of
    /// line: inlined into every claim, it made a replay longer, not shorter.
    #[cfg(not(idemstore_loom))]
    #[inline(never)]
    fn replay_unlocked<const PREFETCH: bool>(
        &self,
        cell: &ShardCell<V>,
        h: &KeyHash,
    ) -> Option<(std::num::NonZeroU64, u64)> {
        let inner = &*self.inner;
        let (slot, read) = crate::readers::read(|| {
            cell.replay_unlocked::<PREFETCH>(h, || inner.clock.now_nanos())
        })?;
        let (deadline, now_nanos) = read?;
        // The deadline is above the shard's time, so never 0. Two words: returned in registers.
        let deadline = std::num::NonZeroU64::new(deadline)?;
        let count = &inner.unlocked_replays[slot % crate::readers::SLOTS];
        count.store(
            count.load(std::sync::atomic::Ordering::Relaxed) + 1,
            std::sync::atomic::Ordering::Relaxed,
        );
        Some((deadline, now_nanos))
    }

    /// Entries held: in flight, completed, and released or expired entries whose memory is not
    /// reclaimed yet (see "Time" in the crate docs for when that happens). A full shard reclaims
    /// every dead entry before it refuses a key, so dead entries never cost a refusal.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock.read().table.occupied())
            .sum()
    }

    /// Whether the store holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store's clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Reclaims the memory of every entry whose deadline has passed (for a lease that ran out,
    /// the window after it: see [`Guard::is_takeover`]), shard by shard, in short lock holds.
    /// Claims do some of this work as they go (a bounded amount each); call this (or set
    /// [`Builder::maintenance_interval`]) so idle shards give memory back too. Returns the
    /// number of entries reclaimed.
    pub fn run_maintenance(&self) -> usize {
        self.inner.run_maintenance()
    }

    /// Counters and gauges to alert on. Sums over the shards, each read at a slightly
    /// different instant.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Test support, not part of the API: how many of [`Stats::replayed`] read their entry
    /// outside the shard lock (see the crate docs' design notes).
    #[cfg(not(idemstore_loom))]
    #[doc(hidden)]
    pub fn __replays_outside_the_lock(&self) -> u64 {
        self.inner.unlocked_replays()
    }
}

/// What a guard handed to [`Store::complete_batch`] knew of its entry, and its place in the
/// round.
#[derive(Clone, Copy)]
struct Pending {
    hash: KeyHash,
    word: Word,
    /// For the trace of a refused completion.
    token: u64,
    slot: u32,
    pos: u32,
}

/// What became of a completion of a round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Not made yet: its key is in flight, owned by the round.
    Owned,
    Completed,
    Lost,
}

/// A round of [`Store::complete_batch`]: the guards taken over (their keys owned by the round
/// until completed), their places in the batch, fates and values. Dropped before every
/// completion was made (a panic), it releases the keys it still owns, as dropped guards do.
struct Round<'s, V> {
    store: &'s Store<V>,
    /// In the batch's order.
    pending: Vec<Pending>,
    /// The batch index of each.
    index: Vec<usize>,
    fates: Vec<Fate>,
    /// The values to store (of a store that stores values), until stored; after the lock,
    /// those not stored.
    values: Vec<Option<StdArc<V>>>,
    /// An instance of a zero-sized `V`, for [`Inner::unit`] if the store has none yet.
    unit: Option<V>,
}

impl<'s, V> Round<'s, V> {
    fn new(store: &'s Store<V>, n: usize) -> Self {
        Self {
            store,
            pending: Vec::with_capacity(n),
            index: Vec::with_capacity(n),
            fates: Vec::with_capacity(n),
            values: Vec::with_capacity(if stores_values::<V>() { n } else { 0 }),
            unit: None,
        }
    }

    /// Takes over `guard` (of this round's store) and its `value`, the `i`-th of the batch.
    #[inline]
    fn push(&mut self, guard: Guard<'s, V>, value: V, i: usize) {
        self.pending.push(Pending {
            hash: guard.hash,
            word: guard.word,
            token: guard.token,
            slot: guard.slot,
            pos: self.index.len() as u32,
        });
        self.index.push(i);
        self.fates.push(Fate::Owned);
        // The round owns the key now, and releases it if it is dropped before completing it.
        std::mem::forget(guard);
        if stores_values::<V>() {
            self.values.push(Some(StdArc::new(value)));
        } else if self.unit.is_none() && self.store.inner.unit.get().is_none() {
            self.unit = Some(value);
        }
    }

    /// Forgets the round's completions, every one made or refused.
    fn clear(&mut self) {
        self.pending.clear();
        self.index.clear();
        self.fates.clear();
        self.values.clear();
    }
}

impl<V> Drop for Round<'_, V> {
    fn drop(&mut self) {
        for (c, &fate) in self.pending.iter().zip(&self.fates) {
            if fate == Fate::Owned {
                // A lost lease has nothing to give back.
                let _ = self.store.release_entry(&c.hash, c.slot, c.word);
            }
        }
    }
}

/// A stable counting sort of a round's keys by shard, for [`Store::claim_grouped`] and
/// [`Store::complete_batch`]. The shards come in order from the shard of the round's first key
/// on, wrapping around: two threads that visited them in the same order would meet at one
/// shard and then follow each other from shard to shard, each waiting for the other's hold.
#[derive(Default)]
struct Groups {
    /// The shard that comes first this round.
    first: usize,
    /// Where each place's keys go in the sorted round; once sorted, where each place's keys
    /// end.
    ends: Vec<usize>,
}

impl Groups {
    /// The place of `h`'s shard in this round's order.
    #[inline(always)]
    fn place<V>(&self, inner: &Inner<V>, h: &KeyHash) -> usize {
        h.shard(inner.shard_bits).wrapping_sub(self.first) & (inner.shards.len() - 1)
    }

    /// Sorts `items` (`hash` gives each one's key hash) into `sorted`, the keys of one shard
    /// in the order they had in `items`.
    fn sort<V, T: Copy>(
        &mut self,
        inner: &Inner<V>,
        items: &[T],
        hash: impl Fn(&T) -> &KeyHash,
        sorted: &mut Vec<T>,
    ) {
        let shards = inner.shards.len();
        self.first = items.first().map_or(0, |i| hash(i).shard(inner.shard_bits));
        self.ends.clear();
        self.ends.resize(shards + 1, 0);
        for item in items {
            let s = self.place(inner, hash(item));
            self.ends[s + 1] += 1;
        }
        for s in 0..shards {
            self.ends[s + 1] += self.ends[s];
        }
        sorted.clear();
        if let Some(&filler) = items.first() {
            sorted.resize(items.len(), filler);
        }
        for &item in items {
            let s = self.place(inner, hash(&item));
            sorted[self.ends[s]] = item;
            self.ends[s] += 1;
        }
    }

    /// Visits the round `sorted` (by [`Groups::sort`]) shard by shard: `visit(cell, run)`
    /// for each shard's run of it, once the table memory of the round's first
    /// [`PIPELINE`] keys is on its way (the visits prefetch the keys further ahead, across the
    /// ends of the runs).
    #[inline]
    fn visit<'i, V, T>(
        &self,
        inner: &'i Inner<V>,
        sorted: &[T],
        hash: impl Fn(&T) -> &KeyHash,
        mut visit: impl FnMut(&'i ShardCell<V>, std::ops::Range<usize>),
    ) {
        sorted
            .iter()
            .take(PIPELINE)
            .for_each(|t| inner.prefetch(hash(t)));
        let mut p = 0;
        while p < sorted.len() {
            let h = hash(&sorted[p]);
            let end = self.ends[self.place(inner, h)];
            visit(inner.cell(h), p..end);
            p = end;
        }
    }
}

/// The outcomes of one hold of [`Store::claim_grouped`], turned into claims as they are handed
/// out. If the caller's callback panics, the rest are turned into claims and dropped when this
/// is: the keys acquired among them are released, as a dropped [`Claim::Acquired`] releases its
/// key, rather than left in flight until their leases run out.
struct Handout<'a, 's, V> {
    store: &'s Store<V>,
    keys: std::slice::Iter<'a, (KeyHash, usize)>,
    outcomes: std::vec::Drain<'a, Outcome<V>>,
    now_nanos: u64,
}

impl<'s, V> Iterator for Handout<'_, 's, V> {
    type Item = (usize, Result<Claim<'s, V>, Error>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (&(h, i), outcome) = self.keys.next().zip(self.outcomes.next())?;
        Some((i, self.store.claim_of(h, 0, outcome, self.now_nanos)))
    }
}

impl<V> Drop for Handout<'_, '_, V> {
    fn drop(&mut self) {
        self.for_each(drop);
    }
}

/// A waiter's place in its shard's `waiting` count, for as long as it waits (also when its
/// future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        // Before the waiter's first look, whose shard lock orders it (see `Inner::wake`).
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a waiting claim looks for: its key's hash, fingerprint hash and lease, and when its
/// wait ends (ns on the store's clock).
struct Wait {
    h: KeyHash,
    fp: u64,
    lease: u64,
    until: u64,
}

/// How long a waiter pauses before it looks at the key again.
enum Pause {
    /// Until an owner completes or releases a key, or the manual clock moves.
    UntilNotified,
    /// Until then at the latest: the owner's lease runs out, or the wait's deadline comes.
    AtMost(Duration),
}

impl<V> Inner<V> {
    /// Starts loading `h`'s tag group, slots and overflow count (see `Whereabouts::prefetch`).
    #[inline(always)]
    fn prefetch(&self, h: &KeyHash) {
        self.cell(h).whereabouts.prefetch(h);
    }

    /// The shard of a key.
    #[inline]
    fn cell(&self, h: &KeyHash) -> &CachePadded<ShardCell<V>> {
        &self.shards[h.shard(self.shard_bits)]
    }

    /// What waiters for a key listen on and its owners notify: the key's shard's event, or
    /// the manual clock's, which its advances notify too.
    fn wake_event(&self, h: &KeyHash) -> &Event {
        self.clock.moved().unwrap_or(&self.cell(h).wake)
    }

    /// Wakes the waiters of `h`'s shard, after an owner's transition of a key there.
    ///
    /// Waiters announce themselves in the shard's `waiting` count before they listen and look
    /// at their key, and the look is a claim under the shard's write lock; the owner made its
    /// transition under the shard lock (write for a completion, read for a release), and loads
    /// the count after it. The lock orders the two sections: if the waiter's look came first,
    /// its increment happens before the owner's lock, so this load sees it and the owner
    /// notifies; if the owner's transition came first, the look sees it. So the count needs no ordering of its own, and with nobody
    /// waiting a completion costs one plain load, not the event's lock.
    #[inline]
    fn wake(&self, h: &KeyHash) {
        if self.cell(h).waiting.load(Ordering::Relaxed) > 0 {
            self.wake_event(h).notify(usize::MAX);
        }
    }

    /// How long a waiter that found its key in progress (`p`) pauses, or `None` if its wait
    /// (until `until`, ns) is over.
    fn pause(&self, p: &InProgress, until: u64) -> Option<Pause> {
        let now = self.clock.now_nanos();
        if now >= until {
            return None;
        }
        if self.clock.moved().is_some() {
            return Some(Pause::UntilNotified);
        }
        let left = Duration::from_nanos(until - now);
        // The lease runs out `retry_after` from now; a claim then takes the key over.
        Some(Pause::AtMost(left.min(p.retry_after)))
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut s = Stats {
            max_entries: self.max_entries,
            memory_bytes: std::mem::size_of::<Inner<V>>()
                + self.shards.len() * std::mem::size_of::<CachePadded<ShardCell<V>>>(),
            ..Stats::default()
        };
        s.memory_bytes += self.pool.heap_bytes();
        #[cfg(not(idemstore_loom))]
        {
            s.memory_bytes += std::mem::size_of_val(&*self.unlocked_replays);
            s.replayed += self.unlocked_replays();
        }
        for cell in self.shards.iter() {
            let shard = cell.lock.read();
            let c = shard.counts;
            s.acquired += c.acquired;
            s.completions += c.completions;
            s.takeovers += c.takeovers;
            s.in_progress += c.in_progress;
            s.replayed += c.replayed;
            s.mismatched += c.mismatched;
            s.rejected += c.rejected;
            s.lease_expiries += c.lease_expiries;
            s.ttl_expiries += c.ttl_expiries;
            s.entries += shard.table.occupied();
            s.table_rebuilds += shard.rebuilds();
            s.memory_bytes += shard.table.heap_bytes()
                + shard.wheel.heap_bytes()
                + shard.queue.heap_bytes()
                + shard.spare.as_ref().map_or(0, Spare::heap_bytes);
            if stores_values::<V>() {
                // Each completed entry's value sits in its own Arc allocation.
                s.memory_bytes += shard.table.occupied() * (16 + std::mem::size_of::<V>());
            }
            drop(shard);
            s.releases += cell.releases.load(Ordering::Relaxed);
        }
        s
    }

    /// Replays that found their entry outside the shard lock (see `readers`), so far.
    #[cfg(not(idemstore_loom))]
    fn unlocked_replays(&self) -> u64 {
        self.unlocked_replays
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn run_maintenance(&self) -> usize {
        let mut reclaimed = 0;
        for cell in self.shards.iter() {
            loop {
                let mut shard = cell.lock.write();
                let now = floor_ms(cell.advance_time(&mut shard, self.clock.now_nanos()));
                if shard.is_due(now) {
                    reclaimed += shard.expire(cell, now, MAINTENANCE_CHUNK);
                } else if shard.has_queued_near(now) {
                    // Maintenance reclaims every entry due, also those in a chunk of the ttl
                    // queue that is not wholly due yet.
                    reclaimed += shard.expire_queue_near(cell, now, MAINTENANCE_CHUNK);
                } else {
                    break;
                }
                // A spare given back goes to the pool.
                cell.unlock(shard, &self.pool);
            }
        }
        reclaimed
    }
}

impl<V> Store<V> {
    /// Gives back the key `h` of an owner that saw its entry at `slot` with `word`, unless
    /// its lease ran out or it was taken over.
    fn release_entry(&self, h: &KeyHash, slot: u32, word: Word) -> Result<(), Error> {
        let inner = &*self.inner;
        let cell = inner.cell(h);
        let shard = cell.lock.read();
        if floor_ms(shard.time(inner.clock.now_nanos())) >= word.deadline() {
            return Err(Error::LeaseLost);
        }
        // The entry keeps its deadline: its wheel record reclaims it then, if no claim reuses
        // it first.
        let next = word.with(Phase::Vacant, word.deadline());
        if shard.transition(h, slot, word, next).is_none() {
            return Err(Error::LeaseLost);
        }
        // Counted under the read lock, so a rebuild (write lock) sees it exactly.
        cell.vacant.fetch_add(1, Ordering::Relaxed);
        drop(shard);
        cell.releases.fetch_add(1, Ordering::Relaxed);
        inner.wake(h);
        Ok(())
    }
}

/// Checks a lease and converts it to nanoseconds.
pub(crate) fn check_lease(lease: Duration) -> Result<u64, Error> {
    if lease < Duration::from_millis(1) || lease > MAX_SPAN {
        return Err(Error::InvalidLease {
            lease,
            max: MAX_SPAN,
        });
    }
    Ok(nanos_of(lease))
}

impl<'a, V> Guard<'a, V> {
    /// The fencing token: strictly greater than every token handed out for this key before.
    /// Pass it to downstream systems so they can refuse writes from a stale owner.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether this claim took the key over from an owner whose lease ran out (the earlier
    /// attempt may have done part of the work, and may still be running): true for a claim
    /// within one window (the store's ttl) of that lease's end, whether or not the engine has
    /// reclaimed expired entries meanwhile. Not reported after the window, when the key is
    /// forgotten, nor where a new key at the store's capacity bound took the entry's room.
    pub fn is_takeover(&self) -> bool {
        self.takeover
    }

    /// When the lease runs out, on the store's clock.
    pub fn lease_deadline(&self) -> Duration {
        Duration::from_millis(self.word.deadline())
    }

    /// Time left on the lease.
    pub fn lease_remaining(&self) -> Duration {
        self.lease_deadline()
            .saturating_sub(self.store.inner.clock.now())
    }

    /// Completes the key with the result of the work: duplicates replay `value` for the
    /// store's ttl, counted from now. Err([`Error::LeaseLost`]) if the lease ran out; then
    /// nothing was written.
    ///
    /// A value heavier than the store's [`max_value_size`](Builder::max_value_size) gets
    /// [`Error::ValueTooLarge`]: nothing is stored, and the guard, consumed by the call, releases
    /// the key as any dropped guard does. Use [`Store::check_value`] first where the work must
    /// not run again. [`Store::complete_batch`] completes many guards at once.
    pub fn complete(self, value: V) -> Result<(), Error> {
        self.store.check_weight(&value)?;
        // From here the guard never releases the key, whatever happens: nothing to drop (it
        // owns only a borrow of the store and plain values).
        let this = std::mem::ManuallyDrop::new(self);
        let inner = &*this.store.inner;
        let cell = inner.cell(&this.hash);
        // Allocate before taking the lock; a lost lease drops it unused.
        let (shared, mut unit) = if stores_values::<V>() {
            (Some(StdArc::new(value)), None)
        } else {
            (None, Some(value))
        };
        let mut shard = cell.write();
        let now_nanos = cell.advance_time(&mut shard, inner.clock.now_nanos());
        // No need to flag a shortened deadline here: the entry's record was filed at the
        // earlier of its lease deadline and (claim time + ttl), or, after a takeover, at most at
        // the end of the lapsed lease's window (before the claim + ttl): never after this
        // deadline, or just now at this deadline.
        let done = this.store.complete_entry(
            &mut shard, &this.hash, this.slot, this.word, now_nanos, shared, &mut unit,
        );
        drop(shard);
        // The values' `Drop` is user code: never under the lock. (An instance of a zero-sized
        // `V` not kept, one already was, is dropped here too.)
        drop(unit);
        if let Err(unused) = done {
            drop(unused);
            event!(token = this.token, "complete refused: the lease was lost");
            return Err(Error::LeaseLost);
        }
        inner.wake(&this.hash);
        Ok(())
    }

    /// Gives the key back unfinished, so a retry can run the work again.
    pub fn release(mut self) -> Result<(), Error> {
        self.active = false;
        self.release_key()
    }

    fn release_key(&self) -> Result<(), Error> {
        self.store.release_entry(&self.hash, self.slot, self.word)
    }

    /// Heartbeat for long work: the lease now ends `lease` from now. Err([`Error::LeaseLost`])
    /// if it had already run out; [`Error::InvalidLease`] for a zero or over-long lease (the
    /// guard is unchanged and still usable).
    pub fn extend(&mut self, lease: Duration) -> Result<(), Error> {
        let lease = check_lease(lease)?;
        let inner = &*self.store.inner;
        let cell = inner.cell(&self.hash);
        let shard = cell.lock.read();
        let now_nanos = shard.time(inner.clock.now_nanos());
        if floor_ms(now_nanos) >= self.word.deadline() {
            self.active = false;
            return Err(Error::LeaseLost);
        }
        let next = self
            .word
            .with(Phase::InFlight, deadline_ms(now_nanos, lease));
        let Some(slot) = shard.transition(&self.hash, self.slot, self.word, next) else {
            self.active = false;
            return Err(Error::LeaseLost);
        };
        // Where the entry is now, if a rebuild moved it: the guard's next operation looks there.
        self.slot = slot as u32;
        if next.deadline() < self.word.deadline() {
            cell.shortened.store(true, Ordering::Relaxed);
        }
        self.word = next;
        Ok(())
    }
}

impl<V> Drop for Guard<'_, V> {
    fn drop(&mut self) {
        if self.active {
            // A lost lease has nothing to give back; the error carries no news here.
            let _ = self.release_key();
        }
    }
}

#[cfg(all(test, not(idemstore_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn unlocked<V>(store: &Store<V>) -> u64 {
        store
            .inner
            .unlocked_replays
            .iter()
            .map(|c| c.load(Relaxed))
            .sum()
    }

    /// A thread whose claims are mostly replays replays outside the lock (after its first few
    /// replays raise its score), and those replays are counted; a store that keeps values
    /// replays under the lock.
    #[test]
    fn mostly_replays_go_outside_the_lock_and_are_counted() {
        let store: Store = Store::builder().build().expect("a valid configuration");
        for id in 0..100u128 {
            let Ok(Claim::Acquired(g)) = store.claim_id(id) else {
                panic!("key {id} is new");
            };
            g.complete(()).expect("the lease is 30 s");
        }
        for id in 0..100u128 {
            assert!(store.claim_id(id).expect("valid").is_completed());
        }
        let n = unlocked(&store);
        assert!(
            (80..=96).contains(&n),
            "{n} of 100 replays outside the lock"
        );
        assert_eq!(store.stats().replayed, 100);

        let valued: Store<u64> = Store::builder().build().expect("a valid configuration");
        let Ok(Claim::Acquired(g)) = valued.claim_id(1) else {
            panic!("new");
        };
        g.complete(7).expect("the lease is 30 s");
        for _ in 0..20 {
            assert!(valued.claim_id(1).expect("valid").is_completed());
        }
        assert_eq!(unlocked(&valued), 0, "a value is cloned under the lock");
    }
}
