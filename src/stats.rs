//! Counters and gauges of a store.

/// What a store has done and holds, for dashboards and alerts. From [`crate::Store::stats`].
///
/// Every claim is counted under exactly one outcome: `acquired + takeovers + in_progress +
/// replayed + mismatched + rejected` is the number of claims that passed input validation. A
/// waiting claim ([`crate::Store::claim_wait`]) counts each look it takes at the key: one
/// outcome per look, `in_progress` for every look that found the key still in flight.
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
    /// Leases that ran out before their owner finished (counted when taken over, or when
    /// reclaimed: a window after the lease, or sooner for a new key's room at the bound).
    pub lease_expiries: u64,
    /// Completed keys whose dedup window ended (counted when reused or reclaimed).
    pub ttl_expiries: u64,
    /// Entries held now, including expired and released ones not yet reclaimed, and leases that
    /// ran out less than a window ago (kept for a takeover).
    pub entries: usize,
    /// The configured bound on entries.
    pub max_entries: usize,
    /// Tables rebuilt: a shard's table is rebuilt when it grows, and at the shard's bound to
    /// drop released keys. A rebuild holds the shard's lock while it moves the shard's entries
    /// (a claim on that shard waits, or, for tables of 4,096 slots and more, moves half of
    /// them), so rebuilds are where a growing store's latency spikes come from; a store at its
    /// steady size rebuilds rarely.
    pub table_rebuilds: u64,
    /// Bytes the store holds: tables (with the spare tables made for shards' next rebuilds
    /// and the few emptied ones kept for reuse), timing wheels, shard headers and value
    /// allocations (an upper bound for the values: every held entry is counted as holding
    /// one, at its inline size; heap memory a value owns is not seen).
    pub memory_bytes: usize,
}

#[cfg(feature = "metrics")]
impl Stats {
    /// Publishes these figures through the `metrics` facade, to whatever recorder the
    /// application installed (none is installed by this crate): counters
    /// `idemstore_claims_total{outcome=acquired|takeover|in_progress|replayed|mismatch|rejected}`,
    /// `idemstore_completions_total`, `idemstore_releases_total`,
    /// `idemstore_expiries_total{kind=lease|ttl}`, `idemstore_table_rebuilds_total`, and
    /// gauges `idemstore_entries`, `idemstore_max_entries`, `idemstore_memory_bytes`. Counters
    /// are set to their absolute values, so publishing twice never double-counts. The
    /// maintenance thread (see [`crate::Builder::maintenance_interval`]) publishes after every
    /// pass.
    pub fn record(&self) {
        for (outcome, n) in [
            ("acquired", self.acquired),
            ("takeover", self.takeovers),
            ("in_progress", self.in_progress),
            ("replayed", self.replayed),
            ("mismatch", self.mismatched),
            ("rejected", self.rejected),
        ] {
            metrics::counter!("idemstore_claims_total", "outcome" => outcome).absolute(n);
        }
        metrics::counter!("idemstore_completions_total").absolute(self.completions);
        metrics::counter!("idemstore_releases_total").absolute(self.releases);
        metrics::counter!("idemstore_expiries_total", "kind" => "lease")
            .absolute(self.lease_expiries);
        metrics::counter!("idemstore_expiries_total", "kind" => "ttl").absolute(self.ttl_expiries);
        metrics::counter!("idemstore_table_rebuilds_total").absolute(self.table_rebuilds);
        metrics::gauge!("idemstore_entries").set(self.entries as f64);
        metrics::gauge!("idemstore_max_entries").set(self.max_entries as f64);
        metrics::gauge!("idemstore_memory_bytes").set(self.memory_bytes as f64);
    }
}

#[cfg(all(test, feature = "metrics", not(idemstore_loom)))]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use crate::{Claim, Store};

    #[test]
    fn record_publishes_absolute_counters_and_gauges() {
        let store: Store = Store::builder().shards(1).build().unwrap();
        let Claim::Acquired(g) = store.claim("a").unwrap() else {
            panic!()
        };
        g.complete(()).unwrap();
        assert!(store.claim("a").unwrap().is_completed());
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            // Twice: absolute values must not add up.
            store.stats().record();
            store.stats().record();
        });
        let mut seen = 0;
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let label = key.labels().next().map(|l| l.value().to_string());
            match (key.name(), label.as_deref(), value) {
                ("idemstore_claims_total", Some("acquired"), DebugValue::Counter(n))
                | ("idemstore_claims_total", Some("replayed"), DebugValue::Counter(n))
                | ("idemstore_completions_total", None, DebugValue::Counter(n)) => {
                    assert_eq!(n, 1);
                    seen += 1;
                }
                ("idemstore_entries", None, DebugValue::Gauge(v)) => {
                    assert_eq!(v.into_inner(), 1.0);
                    seen += 1;
                }
                _ => {}
            }
        }
        assert_eq!(seen, 4);
    }
}
