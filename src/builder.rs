//! Configuration of a [`Store`].

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::clock::{floor_ms, nanos_of, Clock};
use crate::error::Error;
use crate::shard::ShardCell;
use crate::store::{Inner, Store, MAX_SPAN};
use crate::sync::Arc;

/// Default dedup window: 24 hours, counted from completion.
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);
/// Default lease of an in-flight claim.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default bound on held entries (about 0.3–0.4 GB for a dedup-only store).
pub const DEFAULT_MAX_ENTRIES: usize = 10_000_000;
/// Default longest key: 255 bytes, Stripe's limit for idempotency keys.
pub const DEFAULT_MAX_KEY_LEN: usize = 255;
/// Most shards a store may have.
pub const MAX_SHARDS: usize = 1 << 16;

/// Builds a [`Store`]; every setting has a default.
///
/// ```
/// use std::time::Duration;
/// use idemstore::{Clock, Store};
///
/// struct Receipt { id: u64 }
///
/// let (clock, hand) = Clock::manual();
/// let store: Store<Receipt> = Store::builder()
///     .ttl(Duration::from_secs(86_400))   // dedup window, counted from completion
///     .lease(Duration::from_secs(30))     // in-flight lease before another caller may take over
///     .max_entries(50_000_000)            // hard bound; full => Error::CapacityExceeded
///     .shards(256)                        // power of two
///     .seed(42)                           // fixed hash seed; random by default
///     .max_key_len(255)
///     .clock(clock)
///     .build()?;
/// # let _ = (store, hand);
/// # Ok::<(), idemstore::Error>(())
/// ```
#[must_use]
pub struct Builder<V = ()> {
    ttl: Duration,
    lease: Duration,
    max_entries: usize,
    shards: Option<usize>,
    seed: Option<u64>,
    clock: Option<Clock>,
    max_key_len: usize,
    maintenance: Option<Duration>,
    initial_capacity: usize,
    max_value_size: usize,
    weigher: Option<Weigher<V>>,
    huge_pages: bool,
    _value: PhantomData<fn() -> V>,
}

/// Measures a stored value in bytes, for [`Builder::max_value_size`].
pub(crate) type Weigher<V> = Box<dyn Fn(&V) -> usize + Send + Sync>;

impl<V> std::fmt::Debug for Builder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .field("max_entries", &self.max_entries)
            .field("shards", &self.shards)
            .field("seed", &self.seed.map(|_| "fixed"))
            .field("clock", &self.clock)
            .field("max_key_len", &self.max_key_len)
            .field("maintenance", &self.maintenance)
            .field("initial_capacity", &self.initial_capacity)
            .field("max_value_size", &self.max_value_size)
            .field("weigher", &self.weigher.as_ref().map(|_| "custom"))
            .field("huge_pages", &self.huge_pages)
            .finish()
    }
}

impl<V> Default for Builder<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Builder<V> {
    /// The defaults: see the `DEFAULT_*` constants.
    pub fn new() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            lease: DEFAULT_LEASE,
            max_entries: DEFAULT_MAX_ENTRIES,
            shards: None,
            seed: None,
            clock: None,
            max_key_len: DEFAULT_MAX_KEY_LEN,
            maintenance: None,
            initial_capacity: 0,
            max_value_size: usize::MAX,
            weigher: None,
            huge_pages: true,
            _value: PhantomData,
        }
    }

    /// How long a completed key is remembered and replayed: the dedup window, counted from
    /// completion. 1 ms to 10 years.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a claim owns a key before another caller may take it over, unless the owner
    /// extends it. 1 ms to 10 years.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The most entries the store holds. Exact with one shard; with `S` shards each shard
    /// holds at most `b = max_entries / S` (the remainder spread over the first shards), so the
    /// bound is never exceeded, but keys spread over shards unevenly and a claim can be refused
    /// while other shards still have room: the first refusal comes at about `1 - 3/√b` of
    /// `max_entries` (95% with 4,096 per shard, 99% with 100,000). The default shard count keeps
    /// `b` at 4,096 or more; give headroom where a refusal must not happen before the bound.
    /// A shard indexes its slots with 32 bits: `build` refuses a `b` above about 2.5 billion
    /// ([`Error::InvalidConfig`]; raise `shards`).
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// The number of shards: a power of two, at most `max_entries`. Defaults to 64 per core
    /// (rounded to a power of two), or fewer, so each shard holds at least 4,096 entries.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// A fixed hash seed. By default each store draws a random one, so callers who control
    /// keys cannot aim them at one shard. Anything that shares or persists hashes must fix it.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The clock deadlines are measured on; [`Clock::system`] by default.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The longest key accepted, in bytes (at least 1).
    pub fn max_key_len(mut self, max_key_len: usize) -> Self {
        self.max_key_len = max_key_len;
        self
    }

    /// Sizes the tables up front for about this many entries (capped near `max_entries`), so a
    /// store that will hold them skips the table rebuilds of growing there: each rebuild moves
    /// a shard's entries and holds its lock while it does. Memory for the capacity is reserved
    /// from the start (about 29 bytes per entry for a dedup-only store). Default 0: grow on
    /// demand.
    pub fn initial_capacity(mut self, entries: usize) -> Self {
        self.initial_capacity = entries;
        self
    }

    /// Starts a background thread that runs [`Store::run_maintenance`] at this interval, so
    /// memory is reclaimed even on shards no claim touches. It stops when the last handle to
    /// the store is dropped.
    pub fn maintenance_interval(mut self, every: Duration) -> Self {
        self.maintenance = Some(every);
        self
    }

    /// The largest value [`Guard::complete`](crate::Guard::complete) stores, in bytes as the
    /// [`weigher`](Builder::weigher) measures them; a heavier value gets
    /// [`Error::ValueTooLarge`]. With it, the memory of stored values is bounded by
    /// `max_entries × max_value_size` (plus about 16 bytes of `Arc` header per value). Default:
    /// unbounded.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// How [`max_value_size`](Builder::max_value_size) weighs a value. The default is
    /// `size_of::<V>()`, which is right for plain data; give one for values that own heap
    /// memory, e.g. `|body: &Vec<u8>| body.len()`. It must give the same answer for the same
    /// value every time.
    ///
    /// ```
    /// use idemstore::{Claim, Error, Store};
    ///
    /// let store: Store<Vec<u8>> = Store::builder()
    ///     .max_value_size(1024)
    ///     .weigher(|body: &Vec<u8>| body.len())
    ///     .build()?;
    /// let Claim::Acquired(guard) = store.claim("big")? else { unreachable!() };
    /// let body = vec![0u8; 4096];
    /// assert_eq!(store.check_value(&body), Err(Error::ValueTooLarge { size: 4096, limit: 1024 }));
    /// guard.complete(body[..1024].to_vec())?;
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn weigher(mut self, weigher: impl Fn(&V) -> usize + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(weigher));
        self
    }

    /// Whether tables of 2 MiB or more ask Linux for transparent huge pages
    /// (`madvise(MADV_HUGEPAGE)`; default: yes). A claim at millions of keys costs mostly two
    /// random memory accesses, and huge pages spare most of their TLB misses. The kernel may
    /// compact memory to find a huge page when a table first touches it (the system's
    /// `transparent_hugepage/defrag` setting); turn this off if such stalls matter more than
    /// throughput. Without effect where the system has huge pages disabled, and off Linux.
    pub fn huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = on;
        self
    }

    /// Checks the settings and builds the store.
    pub fn build(self) -> Result<Store<V>, Error>
    where
        V: Send + Sync + 'static,
    {
        let span = |name: &str, d: Duration| {
            if d < Duration::from_millis(1) || d > MAX_SPAN {
                Err(Error::InvalidConfig(format!(
                    "{name} is {d:?}; it must be between 1 ms and {MAX_SPAN:?}"
                )))
            } else {
                Ok(nanos_of(d))
            }
        };
        let ttl_nanos = span("ttl", self.ttl)?;
        let lease_nanos = span("lease", self.lease)?;
        if self.max_entries == 0 {
            return Err(Error::InvalidConfig(
                "max_entries is 0; a store must admit at least one key".into(),
            ));
        }
        if self.max_key_len == 0 {
            return Err(Error::InvalidConfig(
                "max_key_len is 0; keys must be allowed at least one byte".into(),
            ));
        }
        let shards = match self.shards {
            Some(s) => {
                if s == 0 || !s.is_power_of_two() || s > MAX_SHARDS {
                    return Err(Error::InvalidConfig(format!(
                        "shards is {s}; it must be a power of two between 1 and {MAX_SHARDS}"
                    )));
                }
                if s > self.max_entries {
                    return Err(Error::InvalidConfig(format!(
                        "shards ({s}) is larger than max_entries ({}); every shard needs room for a key — lower shards or raise max_entries",
                        self.max_entries
                    )));
                }
                s
            }
            None => default_shards(self.max_entries),
        };
        let per_shard = self.max_entries.div_ceil(shards);
        // Slot indices are u32 (the wheel's records); a shard's table never exceeds
        // `largest_table(bound)` slots.
        if crate::shard::largest_table(per_shard) >= u32::MAX as usize {
            return Err(Error::InvalidConfig(format!(
                "max_entries ({}) over {shards} shards is more than a shard can index; raise shards",
                self.max_entries
            )));
        }
        if let Some(every) = self.maintenance {
            if every < Duration::from_millis(1) {
                return Err(Error::InvalidConfig(format!(
                    "maintenance_interval is {every:?}; use at least 1 ms"
                )));
            }
        }
        let clock = self.clock.unwrap_or_default();
        let now = floor_ms(clock.now_nanos());
        let base = self.max_entries / shards;
        // Room for the expected entries at a load of 0.85, under the 0.9 that triggers a rebuild.
        let per_shard_capacity =
            (self.initial_capacity.min(self.max_entries) / shards + 1) * 20 / 17;
        let extra = self.max_entries % shards;
        let cells = (0..shards)
            .map(|i| {
                let bound = base + usize::from(i < extra);
                let ttl = ttl_nanos.div_ceil(1_000_000);
                ShardCell::try_new(i, bound, ttl, per_shard_capacity, now, self.huge_pages)
                    .map(CachePadded::new)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "the tables for initial_capacity {} could not be allocated (about {} bytes \
                     of memory); use a smaller initial_capacity, or none, and let the tables \
                     grow",
                    self.initial_capacity,
                    per_shard_capacity.saturating_mul(shards).saturating_mul(25)
                ))
            })?;
        let seed = self.seed.unwrap_or_else(random_seed);
        let inner = Arc::new(Inner {
            shards: cells,
            shard_bits: shards.trailing_zeros(),
            seed,
            id_keys: crate::key::IdKeys::new(seed),
            ttl_nanos,
            ttl_ms: ttl_nanos.div_ceil(1_000_000),
            lease_nanos,
            max_key_len: self.max_key_len,
            max_entries: self.max_entries,
            clock,
            unit: OnceLock::new(),
            maintainer: OnceLock::new(),
            max_value_size: self.max_value_size,
            weigher: self.weigher,
            pool: crate::shard::Pool::new(),
            #[cfg(not(idemstore_loom))]
            unlocked_replays: Box::new(std::array::from_fn(|_| {
                CachePadded::new(std::sync::atomic::AtomicU64::new(0))
            })),
        });
        #[cfg(not(idemstore_loom))]
        crate::readers::init();
        #[cfg(not(idemstore_loom))]
        if let Some(every) = self.maintenance {
            spawn_maintainer(&inner, every)?;
        }
        Ok(Store { inner })
    }
}

#[cfg(not(idemstore_loom))]
fn spawn_maintainer<V: Send + Sync + 'static>(
    inner: &Arc<Inner<V>>,
    every: Duration,
) -> Result<(), Error> {
    let weak = Arc::downgrade(inner);
    let handle = std::thread::Builder::new()
        .name("idemstore-maintenance".into())
        .spawn(move || loop {
            std::thread::park_timeout(every);
            match weak.upgrade() {
                Some(inner) => {
                    inner.run_maintenance();
                    #[cfg(feature = "metrics")]
                    inner.stats().record();
                }
                None => break,
            }
        })
        .map_err(|e| {
            Error::InvalidConfig(format!("could not start the maintenance thread: {e}"))
        })?;
    let _ = inner.maintainer.set(handle.thread().clone());
    Ok(())
}

/// Entries a default-sized shard holds at least, so that the uneven spread of keys over shards
/// costs little of `max_entries` (see `Builder::max_entries`).
const MIN_DEFAULT_SHARD_BOUND: usize = 4096;

fn default_shards(max_entries: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    let wanted = (cores * 64).next_power_of_two().min(MAX_SHARDS);
    // The largest power of two not above max_entries / 4096 (at least 1).
    let fits = (max_entries / MIN_DEFAULT_SHARD_BOUND).max(1);
    let most = 1usize << (usize::BITS - 1 - fits.leading_zeros());
    wanted.min(most)
}

/// A random seed from the standard library's per-process random keys.
fn random_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x6964_656d_7374_6f72);
    h.finish()
}
