//! # idemstore
//!
//! An embedded idempotency and deduplication engine. A service hands it the key of a request or
//! message (an `Idempotency-Key` header, a message id, a payment id); the store decides,
//! atomically, whether this caller does the work, whether the work is running elsewhere, or
//! whether it already finished, and then hands back the stored result.
//!
//! ```
//! use idemstore::{Claim, Store};
//!
//! # fn charge() -> Result<u64, idemstore::Error> { Ok(7) }
//! let store: Store<u64> = Store::builder().build()?;
//! match store.claim("order-7")? {
//!     Claim::Acquired(guard) => {
//!         let receipt = charge()?;        // dropping the guard instead would release the key
//!         guard.complete(receipt)?;       // Err(LeaseLost) if another owner took over
//!     }
//!     Claim::InProgress(p) => println!("busy, retry in {:?}", p.retry_after()),
//!     Claim::Completed(replay) => println!("already done: {}", replay.value()),
//!     Claim::Mismatch(_) => println!("same key, different payload"),
//! }
//! # Ok::<(), idemstore::Error>(())
//! ```
//!
//! # The life of a key
//! ```text
//!           claim                     complete(value)
//! Vacant ──────────▶ InFlight{token, lease} ─────────────▶ Completed{value, expires}
//!   ▲                 │  │ lease runs out: next claim               │
//!   │       release() │  └─ takes over with a newer token           │ ttl runs out
//!   └─────────────────┘                                             ▼
//!   ◀─────────────────────────────────────────────────────────── Vacant
//! ```
//! - [`Store::claim`] returns exactly one of [`Claim::Acquired`] (with a [`Guard`]),
//!   [`Claim::InProgress`], [`Claim::Completed`] (a [`Replay`] of the stored value, shared, not
//!   copied) or [`Claim::Mismatch`] (same key, different payload fingerprint).
//! - [`Store::claim_batch`] and [`Store::claim_id_batch`] claim many keys in one call, with the
//!   same outcomes as claiming them one after another, prefetching later keys' table memory.
//!   [`Store::claim_batch_grouped`] and [`Store::claim_id_batch_grouped`] claim larger
//!   batches (hundreds of keys or more) shard by shard, one lock hold per shard and round of
//!   2048 keys, and hand the outcomes out shard by shard (each with its key's index).
//!   [`Store::complete_batch`] completes many guards the same way, grouped by shard, for a
//!   consumer that completes a poll's keys together after their work.
//! - [`Store::claim_wait`] (async, any executor) and [`Store::claim_wait_blocking`] let a
//!   duplicate that finds the key in flight wait, up to a deadline, for the owner to complete or
//!   release it or for its lease to run out, and then return what a fresh claim returns (the
//!   replay, or the key acquired). Owners wake waiters on every completion and release; nothing
//!   polls.
//! - The guard completes the key, releases it, or extends its lease. Dropping it releases it.
//! - Every guard operation is fenced: once the lease has run out the guard gets
//!   [`Error::LeaseLost`] and changes nothing. We chose the strict reading: a lease that has run
//!   out is lost even if nobody has taken the key over yet, so the outcome never depends on
//!   whether another claim (or the reclaimer) got there first. Heartbeat long work with
//!   [`Guard::extend`].
//! - A claim that finds an expired lease takes the key over ([`Guard::is_takeover`]) with a
//!   newer fencing token, whatever the payload fingerprint: an owner that let its lease run out
//!   is presumed gone. A released key, too, records the fingerprint of its next claim. A lease
//!   that ran out is kept for one window (the store's ttl) after it, however soon the engine
//!   reclaims expired entries, so every claim in that window is told it takes over; after the
//!   window the key is forgotten, as a completed key is. Such entries are not live: a new key
//!   at the capacity bound takes their room (their takeover is then not reported).
//!
//! # Guarantees, per key, within one store
//! - Linearizable: every operation takes effect at one instant between call and return.
//! - At most one unexpired owner at any time; exactly one `Acquired` per Vacant → InFlight.
//! - Fencing tokens strictly increase every time a key is acquired, across the key's whole
//!   history in the store (they come from a per-shard counter).
//! - `Completed` is final until its ttl runs out: no claim, release or stale guard changes it.
//! - Expiry is exact for callers, lazy for memory: a claim at or after a deadline sees the key
//!   expired and never before, comparing the entry's own deadline. Deadlines are kept in whole
//!   milliseconds rounded up, so "never before" holds to the nanosecond and "at" is late by
//!   under 1 ms.
//!
//! # Time
//! One monotonic [`Clock`] per store, injectable, and every deadline is measured on it.
//! [`Clock::system`], the default, has millisecond resolution (the resolution of deadlines):
//! one thread per process stores the time every millisecond and a claim's reading is a plain
//! load; reading the time-stamp counter instead, as [`Clock::precise`] does, made replays at
//! 10 million keys about a quarter slower on a virtual machine. [`Clock::manual`] gives tests a
//! [`ManualClock`] to advance, with no sleeps. Expiry runs on per-shard hierarchical timing
//! wheels (6 levels × 64 slots, 1 ms tick, 2.2 years before records wrap around the top level):
//! O(1) per entry whatever the ttl. Each claim reclaims at most 8 due entries of its shard, so
//! expiry never stalls a claim; [`Store::run_maintenance`] (or a background thread set with
//! [`Builder::maintenance_interval`]) reclaims the rest, including on shards nobody touches.
//! An entry's one wheel record is filed at the soonest deadline the entry can reach (for an
//! in-flight entry, the earlier of its lease deadline and now + ttl) and refiled lazily when it
//! comes due early, so memory is reclaimed within one maintenance pass (or the next claims on the
//! shard) after the deadline; for an in-flight entry whose lease ran out, after the window (the
//! ttl) that follows the lease, until when it is kept for a takeover. A record that comes due
//! to find its entry completed with more than 4 s of window left waits instead in the shard's
//! ttl queue; so does, from its
//! completion on, the record of a claim completed soon after it was made (while the record
//! still waits to be filed in the wheel with the next ones: at most 32 records of its shard
//! later). A store has one ttl and a shard's clock never runs back, so these deadlines arrive in
//! order but for the differences between work times (taken in up to a 1024th of the window:
//! 84 s for a day, more than the default lease), and a 24 h entry is read once more, when it
//! expires, instead of once per wheel level on the way down. Claims reclaim queued entries a
//! run of consecutive deadlines at a time, at most a 128th of the window late (11 minutes of a
//! day; a 512th under load); maintenance passes and a full shard reclaim them at their
//! deadlines. Two exceptions reclaim later, by at most the lease: an entry whose lease was
//! shortened with [`Guard::extend`], and a released entry reused by a new claim; and a key taken
//! over from a lease that ran out and then released may wait for the end of that lease's window
//! (up to the ttl). A full shard sweeps them before it refuses a key, so they never cost a
//! refusal.
//!
//! # Keys
//! Keys are bytes, optionally inside a scope ([`ClaimOptions::scope`]); scope and key are
//! hashed together, length-prefixed, so `("ab","c")` and `("a","bc")` never meet. The store
//! keeps only a 128-bit xxh3 hash of (seed, scope, key): two keys that share a hash are treated
//! as one. For `n` live keys the odds of any such pair are about n²/2¹²⁹: 1e-17 for 86 billion
//! keys, and 1.5e-25 for 10 million. These odds hold for keys nobody chose to collide: seeded
//! xxh3 is fast, not a keyed cryptographic hash, and inputs that collide whatever the seed are
//! known, so a caller who controls keys could make two keys of their choosing act as one. Empty
//! keys and keys over `max_key_len` (255 bytes by default) are refused with
//! [`Error::InvalidKey`]; a caller with its own 128-bit id can use
//! [`Store::claim_id`], which maps ids to identities by a seeded permutation of the 128-bit
//! space (a Feistel network), so two different ids never act as one. The seed is random per
//! store unless fixed with [`Builder::seed`].
//!
//! # Capacity and memory
//! The store holds at most `max_entries` entries and fails closed: a new key that finds its shard
//! full gets [`Error::CapacityExceeded`] after the shard has reclaimed what has expired. A live
//! entry is never evicted. With `S` shards each shard holds `b = max_entries / S`, and keys
//! spread unevenly, so the first refusal comes at about `1 - 3/√b` of `max_entries` (see
//! [`Builder::max_entries`]). A claim that finds its shard full first reclaims everything expired
//! in that shard (and rebuilds the table if released keys, shortened leases or leases that ran
//! out may hide there, the last kept for a takeover but not live): that
//! one claim does work proportional to what it reclaims, instead of the usual 8 records at most.
//!
//! A window of `W` seconds at `R` new keys per second holds `R·W` live keys: 1 M keys/s for 24 h
//! is 86.4 billion keys, about 1.4 TB of bare 16-byte hashes — beyond one machine. A dedup-only
//! entry (`V = ()`) costs a 24-byte slot, a tag byte and a 4-byte expiry record, at a table load
//! between about 0.6 and 0.9: see the README for measured bytes per live entry. [`Store::stats`] says
//! what the store holds.
//!
//! Where values are stored, each completed entry holds one shared allocation of its value. The
//! byte budget is [`Builder::max_value_size`] (with a [`Builder::weigher`] for values that own
//! heap memory): a heavier value is refused with [`Error::ValueTooLarge`], so stored values take
//! at most `max_entries × max_value_size` bytes, plus about 16 bytes of header each.
//!
//! A table of 2 MiB or more lives in a mapping of its own, tags and slots together, marked for
//! transparent huge pages on Linux, so a claim's two random accesses rarely miss the TLB as well
//! as the cache ([`Builder::huge_pages`] turns this off).
//!
//! # HTTP
//! With the `http` feature, `http::IdempotencyLayer` is a tower layer after the
//! IETF Idempotency-Key draft: one layer in front of an axum (or any tower) router makes `POST`
//! and `PATCH` idempotent, with byte-exact replays, `409`/`422`/`400`/`503` as problem details,
//! and waiting for in-flight duplicates. Its module docs give the expiry policy the draft asks
//! services to publish.
//!
//! # Observability
//! [`Store::stats`] counts claims by outcome, completions, releases, lease and ttl expiries, and
//! reports entries held and memory. Two optional features connect the facades (the library never
//! installs a recorder or a subscriber):
//! - `metrics`: `Stats::record` publishes the figures through the `metrics` facade, and the
//!   maintenance thread does so after every pass;
//! - `tracing`: rare events (refusals at capacity, takeovers, lost leases, table rebuilds) as
//!   `tracing` debug events with target `idemstore`; nothing is emitted on the claim fast path.
//!
//! # Concurrency
//! Shards are reader-writer locked and padded to their own cache lines. A claim takes its
//! shard's lock in write mode (it may insert or take over). So does a completion: it checks the
//! state word still holds what the owner installed and stores the completed one, two atomic
//! operations (lock, unlock) where the read lock took four (lock, compare-and-swap, a counter,
//! unlock), each a full fence on x86; claim + complete of new keys on one thread ran about 10%
//! faster that way, and with a shard per few thousand keys two owners rarely complete in the
//! same shard at once. Release and extend take the lock only in read mode and change the entry
//! with a compare-and-swap on its state word. See the `state` module. In a dedup-only store
//! (`Store<()>`), a claim without a fingerprint may replay a completed key without the lock:
//! it reads the entry as a sequence-lock reader and falls back to the lock if a writer came
//! meanwhile (a thread tries this first once most of its recent claims were replays; see the
//! `readers` module and the README's design notes).
//! Each shard has an `event-listener` event that its owners notify after they complete or
//! release a key, when the shard's count of waiters says someone waits; a waiter counts itself
//! and listens before it looks at the key, so a completion between its look and its wait still
//! wakes it (the loom models in `tests/loom.rs` check this). On a manual clock, waiters and
//! owners use the clock's one event instead, which advancing also notifies.
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]

/// A `tracing` debug event with target "idemstore", compiled only with the `tracing` feature.
macro_rules! event {
    ($($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        tracing::debug!(target: "idemstore", $($arg)*);
    };
}

mod builder;
mod clock;
mod error;
mod key;
// Table memory; under loom the tables use boxed arrays instead (see `table.rs`).
#[cfg(not(idemstore_loom))]
mod pages;
mod queue;
#[cfg(not(idemstore_loom))]
mod readers;
mod shard;
mod state;
mod stats;
mod store;
mod sync;
mod table;
mod wheel;

/// HTTP: a tower layer for the IETF Idempotency-Key draft (feature `http`).
#[cfg(feature = "http")]
pub mod http;

pub use builder::{
    Builder, DEFAULT_LEASE, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_KEY_LEN, DEFAULT_TTL, MAX_SHARDS,
};
pub use clock::{Clock, ManualClock};
pub use error::Error;
pub use stats::Stats;
pub use store::{
    Claim, ClaimOptions, Guard, InProgress, Mismatch, Replay, Store, MAX_SCOPE_LEN, MAX_SPAN,
};

/// Test support, not part of the API: if called before the process builds its first store,
/// replays that read the table outside the shard lock fence on both sides of their handshake
/// with rebuilds, as on a kernel without `membarrier(2)`; returns whether they do. Both ways
/// are correct; `tests/fenced_reads.rs` uses this to cover the fenced way on any machine.
#[cfg(not(idemstore_loom))]
#[doc(hidden)]
pub fn __fenced_reads_for_tests() -> bool {
    readers::force_fenced()
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
