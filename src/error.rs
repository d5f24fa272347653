//! The one error type of the crate.

use std::time::Duration;

/// Everything that can go wrong, each with a message that says what to do about it.
///
/// A call that returns an error changed nothing in the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key was empty or longer than the store's `max_key_len`. Not retryable: fix the key.
    #[error("invalid key: {reason}; keys must be 1..={max_len} bytes (set Builder::max_key_len to change the limit)")]
    InvalidKey {
        /// What is wrong with the key.
        reason: &'static str,
        /// The store's configured maximum key length.
        max_len: usize,
    },

    /// The scope was longer than [`MAX_SCOPE_LEN`](crate::MAX_SCOPE_LEN). Not retryable.
    #[error("invalid scope: {len} bytes is longer than the limit of {max_len}; hash a long scope down before passing it")]
    InvalidScope {
        /// The scope's length.
        len: usize,
        /// The largest scope accepted.
        max_len: usize,
    },

    /// The store (or the key's shard, see the crate docs on per-shard slack) holds as many live
    /// keys as it may. Fail closed: the request was not admitted. Retry after some keys expire,
    /// or raise `max_entries`.
    #[error("capacity exceeded: the store holds {limit} live keys in this key's shard and admits no more until some expire; retry later or raise Builder::max_entries")]
    CapacityExceeded {
        /// The bound of the shard that refused the key.
        limit: usize,
    },

    /// This guard no longer owns the key: its lease ran out (and another caller may have taken
    /// the key over). Nothing was written. Do not retry with this guard; claim the key again to
    /// see its current state, and use `Guard::extend` to keep long work's lease alive.
    #[error("lease lost: the lease of this claim ran out and the key may belong to another owner now; nothing was written — claim the key again, and extend leases for long work")]
    LeaseLost,

    /// A lease passed to a claim or to `extend` was zero or too long. Not retryable.
    #[error("invalid lease {lease:?}: a lease must be at least 1 ms and at most {max:?}")]
    InvalidLease {
        /// The lease asked for.
        lease: Duration,
        /// The longest lease accepted.
        max: Duration,
    },

    /// A completed value weighed more than the store's `max_value_size` (as measured by the
    /// store's weigher). Nothing was stored; the guard was dropped with the call, which released
    /// the key. Check a value with `Store::check_value` before completing when the work must
    /// not run twice, and store a smaller summary (or a "done, not replayable" marker) instead.
    #[error("value too large: it weighs {size} bytes and the store keeps values of at most {limit}; store a smaller result or raise Builder::max_value_size")]
    ValueTooLarge {
        /// The value's weight.
        size: usize,
        /// The store's `max_value_size`.
        limit: usize,
    },

    /// The builder was given a setting that cannot work. Not retryable: fix the configuration.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}
