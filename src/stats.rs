//! Counters and gauges of a store.

/// What a store has done and holds, for dashboards and alerts. From [`crate::Store::stats`].
///
/// Every claim is counted under exactly one outcome: `acquired + takeovers + in_progress +
/// replayed + mismatched + rejected` is the number of claims that passed input validation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Claims that acquired a new, released or expired key.
    pub acquired: u64,
    /// Claims that acquired a key by taking over an expired lease.
    pub takeovers: u64,
    /// Claims that found the key in flight under another owner's live lease.
    pub in_progress: u64,
    /// Claims that found the key completed and replayed its result.
    pub replayed: u64,
    /// Claims refused because the payload fingerprint differed.
    pub mismatched: u64,
    /// New keys refused because the store (the key's shard) was full.
    pub rejected: u64,
    /// Keys completed by their owner.
    pub completions: u64,
    /// Keys released by their owner (explicitly or by dropping the guard).
    pub releases: u64,
    /// Leases that ran out before their owner finished (counted when taken over or reclaimed).
    pub lease_expiries: u64,
    /// Completed keys whose dedup window ended (counted when reused or reclaimed).
    pub ttl_expiries: u64,
    /// Entries held now, including expired and released ones not yet reclaimed.
    pub entries: usize,
    /// The configured bound on entries.
    pub max_entries: usize,
    /// Bytes the store holds: tables, timing wheels, shard headers and value allocations
    /// (an upper bound for the values: every held entry is counted as holding one, at its
    /// inline size; heap memory a value owns is not seen).
    pub memory_bytes: usize,
}
