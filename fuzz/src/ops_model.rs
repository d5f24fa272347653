//! The `ops` fuzz target: a byte decoder for a sequence of store operations, a reference model
//! of what a single-threaded caller must observe, and the invariants checked after every step.
//!
//! Shared by `fuzz/fuzz_targets/ops.rs` and by the main crate's `tests/fuzz_corpus.rs` (which
//! includes this file with `#[path]`), so CI replays the corpus with a plain `cargo test`. It
//! therefore depends on nothing but `idemstore` and std: no `arbitrary`.
//!
//! # Input format
//! Every byte string is a valid input; reads past the end give 0.
//! ```text
//! header  c0 c1 c2     shards = 1 + (c0 & 1), max_entries = MAX_ENTRIES[(c0 >> 1) & 7],
//!                      ttl = SPANS_TTL[c1 & 7], default lease = SPANS_LEASE[c2 & 7]
//! then ops, each an opcode byte and its operands: a byte below 0xE0 is taken % 8,
//! the rest are the batch operations (0xE0 + b) below:
//!   0 Claim       key opts      key: < 0xC0 -> "k" + (key % 16); else a raw key of
//!                               len = key & 0x1F (1..=16: the next len bytes; 0 or > 16:
//!                               an empty or over-long key, InvalidKey)
//!                               opts: bits 0-1 scope (none, "a", "b", over-long),
//!                               bits 2-4 fingerprint (0, 5-7 none; 1-4 payload n - 1),
//!                               bits 5-7 lease (default, 0, over-long, MAX_SPAN, 1, 2, 7, 64 ms);
//!                               opts == 0 calls `claim`, anything else `claim_with`
//!   1 Complete    guard v_lo v_hi
//!   2 Release     guard
//!   3 Extend      guard lease   lease & 7: 0, 1, 2, 5, 17, 64 ms, MAX_SPAN, over-long
//!   4 Drop        guard
//!   5 Advance     step          < 0xC0: step % 100 ms; else BIG_STEPS[step & 15]
//!   6 Maintenance
//!   7 ClaimId     id            claim_id(id % 4)
//!   0xE0 + b, b even: ClaimBatch   n, then n keys as Claim's `key` (n = 1 + (n & 7));
//!                 bit 1 of b: `claim_batch_grouped`, else `claim_batch`; bit 2: the keys
//!                 are ids (one byte each, `% 4`), claimed by `claim_id_batch(_grouped)`;
//!                 bits 3-4 unused
//!   0xE0 + b, b odd:  CompleteBatch n, then n times guard v_lo v_hi (n = 1 + (n & 7));
//!                 `complete_batch` of the distinct guards picked (a pick already taken
//!                 in this batch is skipped; none at all: an empty batch); bits 1-4 unused
//! ```
//! `guard` picks a live guard by index modulo their number (no-op without guards).
//!
//! Not reached here: replays read outside the lock (dedup-only stores; this one keeps
//! values), values too large, and guards of another store in a completion batch; the
//! integration tests cover those.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use idemstore::{Claim, ClaimOptions, Clock, Error, Guard, Store, MAX_SCOPE_LEN, MAX_SPAN};

/// The store's `max_key_len`: small, so over-long keys are cheap to produce.
pub const MAX_KEY_LEN: usize = 16;
/// The fixed hash seed, so every input replays identically.
pub const SEED: u64 = 0x1DE5_7012_F0CC_0001;
/// Most operations decoded from one input.
pub const MAX_OPS: usize = 4096;

const DAY: u64 = 86_400_000;
const YEAR: u64 = 365 * DAY;
const SPAN_MS: u64 = MAX_SPAN.as_millis() as u64;
/// The clock never passes this (steps beyond it are skipped), so every deadline, even
/// now + MAX_SPAN at the end, stays far inside the 40-bit millisecond field of the state word.
const CLOCK_CAP_MS: u64 = 20 * YEAR;

const MAX_ENTRIES: [usize; 8] = [2, 3, 4, 5, 7, 9, 16, 40];
const SPANS_TTL: [u64; 8] = [1, 2, 5, 10, 50, 1_000, 3_600_000, SPAN_MS];
const SPANS_LEASE: [u64; 8] = [1, 2, 5, 10, 50, 1_000, 60_000, SPAN_MS];
/// Clock steps around the timing wheel's level boundaries (64^k ms) and beyond its 2^36 ms span.
const BIG_STEPS: [u64; 16] = [
    1_000,
    4_095,
    4_096,
    4_097,
    60_000,
    262_144,
    3_600_000,
    16_777_216,
    DAY,
    1 << 30,
    30 * DAY,
    YEAR,
    (1 << 36) - 1,
    1 << 36,
    (1 << 36) + 1,
    SPAN_MS,
];

/// The store's settings, from the input's first three bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub shards: usize,
    pub max_entries: usize,
    pub ttl_ms: u64,
    pub lease_ms: u64,
}

/// The scope of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeArg {
    None,
    A,
    B,
    /// `MAX_SCOPE_LEN + 1` bytes: `InvalidScope`.
    TooLong,
}

impl ScopeArg {
    fn bytes(self) -> Vec<u8> {
        match self {
            ScopeArg::None => Vec::new(),
            ScopeArg::A => b"a".to_vec(),
            ScopeArg::B => b"b".to_vec(),
            ScopeArg::TooLong => vec![b's'; MAX_SCOPE_LEN + 1],
        }
    }
}

/// A lease argument of a claim or an extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseArg {
    /// The store's default lease (claims only).
    Default,
    /// Zero: `InvalidLease`.
    Zero,
    /// `MAX_SPAN + 1 ms`: `InvalidLease`.
    TooLong,
    Ms(u64),
}

impl LeaseArg {
    fn duration(self) -> Option<Duration> {
        match self {
            LeaseArg::Default => None,
            LeaseArg::Zero => Some(Duration::ZERO),
            LeaseArg::TooLong => Some(MAX_SPAN + Duration::from_millis(1)),
            LeaseArg::Ms(ms) => Some(Duration::from_millis(ms)),
        }
    }

    fn is_valid(self) -> bool {
        !matches!(self, LeaseArg::Zero | LeaseArg::TooLong)
    }
}

/// One operation on the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Claim {
        key: Vec<u8>,
        scope: ScopeArg,
        /// Payload number (0..=3; 3 is the empty payload), or none.
        fingerprint: Option<u8>,
        lease: LeaseArg,
    },
    ClaimId {
        id: u8,
    },
    Complete {
        guard: u8,
        value: u16,
    },
    Release {
        guard: u8,
    },
    Extend {
        guard: u8,
        lease: LeaseArg,
    },
    Drop {
        guard: u8,
    },
    Advance {
        ms: u64,
    },
    Maintenance,
    /// Keys claimed in one call with the default options: ids (`% 4`) or byte keys.
    ClaimBatch {
        grouped: bool,
        keys: BatchKeys,
    },
    /// Guards (picked as `Complete` picks one, each at most once) completed in one call.
    CompleteBatch {
        completions: Vec<(u8, u16)>,
    },
}

/// The keys of a [`Op::ClaimBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchKeys {
    Keys(Vec<Vec<u8>>),
    Ids(Vec<u8>),
}

impl BatchKeys {
    fn len(&self) -> usize {
        match self {
            BatchKeys::Keys(k) => k.len(),
            BatchKeys::Ids(ids) => ids.len(),
        }
    }

    /// Whether key `i` is one `claim` refuses (ids never are).
    fn is_invalid(&self, i: usize) -> bool {
        matches!(self, BatchKeys::Keys(k) if k[i].is_empty() || k[i].len() > MAX_KEY_LEN)
    }

    /// Whether keys `i` and `j` are the same key.
    fn same(&self, i: usize, j: usize) -> bool {
        match self {
            BatchKeys::Keys(k) => k[i] == k[j],
            BatchKeys::Ids(ids) => ids[i] == ids[j],
        }
    }
}

fn fingerprint_payload(n: u8) -> Vec<u8> {
    if n == 3 {
        Vec::new()
    } else {
        vec![b'p', n]
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// A claim's key: < 0xC0 -> "k" + (key % 16); else a raw key of len = key & 0x1F.
    fn key(&mut self) -> Vec<u8> {
        let k = self.byte();
        if k < 0xC0 {
            vec![b'k', b'a' + k % 16]
        } else {
            let len = usize::from(k & 0x1F);
            if (1..=MAX_KEY_LEN).contains(&len) {
                (0..len).map(|_| self.byte()).collect()
            } else {
                vec![b'r'; len]
            }
        }
    }
}

/// Decodes an input into the store's settings and its operations.
pub fn decode(data: &[u8]) -> (Config, Vec<Op>) {
    let mut r = Reader { data, pos: 0 };
    let (c0, c1, c2) = (r.byte(), r.byte(), r.byte());
    let config = Config {
        shards: 1 + usize::from(c0 & 1),
        max_entries: MAX_ENTRIES[usize::from((c0 >> 1) & 7)],
        ttl_ms: SPANS_TTL[usize::from(c1 & 7)],
        lease_ms: SPANS_LEASE[usize::from(c2 & 7)],
    };
    let mut ops = Vec::new();
    while !r.done() && ops.len() < MAX_OPS {
        let code = r.byte();
        if code >= 0xE0 {
            let b = code - 0xE0;
            let n = 1 + usize::from(r.byte() & 7);
            let op = if b & 1 == 0 {
                let keys = if b & 4 == 0 {
                    BatchKeys::Keys((0..n).map(|_| r.key()).collect())
                } else {
                    BatchKeys::Ids((0..n).map(|_| r.byte() % 4).collect())
                };
                Op::ClaimBatch {
                    grouped: b & 2 != 0,
                    keys,
                }
            } else {
                let completions = (0..n)
                    .map(|_| (r.byte(), u16::from_le_bytes([r.byte(), r.byte()])))
                    .collect();
                Op::CompleteBatch { completions }
            };
            ops.push(op);
            continue;
        }
        let op = match code % 8 {
            0 => {
                let key = r.key();
                let o = r.byte();
                let scope = match o & 3 {
                    0 => ScopeArg::None,
                    1 => ScopeArg::A,
                    2 => ScopeArg::B,
                    _ => ScopeArg::TooLong,
                };
                let fingerprint = match (o >> 2) & 7 {
                    n @ 1..=4 => Some(n - 1),
                    _ => None,
                };
                let lease = match o >> 5 {
                    0 => LeaseArg::Default,
                    1 => LeaseArg::Zero,
                    2 => LeaseArg::TooLong,
                    3 => LeaseArg::Ms(SPAN_MS),
                    4 => LeaseArg::Ms(1),
                    5 => LeaseArg::Ms(2),
                    6 => LeaseArg::Ms(7),
                    _ => LeaseArg::Ms(64),
                };
                Op::Claim {
                    key,
                    scope,
                    fingerprint,
                    lease,
                }
            }
            1 => Op::Complete {
                guard: r.byte(),
                value: u16::from_le_bytes([r.byte(), r.byte()]),
            },
            2 => Op::Release { guard: r.byte() },
            3 => {
                let guard = r.byte();
                let lease = match r.byte() & 7 {
                    0 => LeaseArg::Zero,
                    1 => LeaseArg::Ms(1),
                    2 => LeaseArg::Ms(2),
                    3 => LeaseArg::Ms(5),
                    4 => LeaseArg::Ms(17),
                    5 => LeaseArg::Ms(64),
                    6 => LeaseArg::Ms(SPAN_MS),
                    _ => LeaseArg::TooLong,
                };
                Op::Extend { guard, lease }
            }
            4 => Op::Drop { guard: r.byte() },
            5 => {
                let s = r.byte();
                let ms = if s < 0xC0 {
                    u64::from(s % 100)
                } else {
                    BIG_STEPS[usize::from(s & 15)]
                };
                Op::Advance { ms }
            }
            6 => Op::Maintenance,
            _ => Op::ClaimId { id: r.byte() % 4 },
        };
        ops.push(op);
    }
    (config, ops)
}

/// Decodes `data` and runs it, panicking on any violated invariant.
pub fn run_bytes(data: &[u8]) {
    let (config, ops) = decode(data);
    run(config, &ops);
}

/// The id `ClaimId` and the id batches claim for the id number `n`.
fn id_of(n: u8) -> u128 {
    u128::from(n) * 0x0123_4567_89AB_CDEF_0F1E_2D3C_4B5A
}

/// `key` (empty or too long) must have been refused with `InvalidKey`.
fn expect_invalid_key<T: fmt::Debug>(result: Result<T, Error>, key: &[u8], ctx: &Ctx<'_>) {
    match result {
        Err(Error::InvalidKey {
            max_len: MAX_KEY_LEN,
            ..
        }) => {}
        other => panic!(
            "{ctx}: expected InvalidKey for a key of {} bytes, got {other:?}",
            key.len()
        ),
    }
}

/// The identity of a key as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Ident {
    Key { scope: Vec<u8>, key: Vec<u8> },
    Id(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Released by its owner (claimable, not live).
    Vacant,
    InFlight {
        deadline: u64,
    },
    Completed {
        deadline: u64,
        value: u16,
        at: u64,
    },
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// The fingerprint recorded by the claim that last acquired the key.
    fp: Option<u8>,
    last_token: u64,
    /// The latest deadline the key ever had (for a lease, the end of the window after it, which
    /// is how long a lapsed lease is kept for a takeover): once maintenance runs at or after it,
    /// the entry's memory must have been reclaimed.
    hold_until: u64,
    /// False once the entry is certainly reclaimed; true if the store may still hold it.
    maybe_present: bool,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        match self.state {
            State::Vacant => false,
            State::InFlight { deadline } | State::Completed { deadline, .. } => now < deadline,
        }
    }
}

/// What the store's counters must say.
#[derive(Debug, Default)]
struct Counts {
    validated: u64,
    acquired: u64,
    takeovers: u64,
    in_progress: u64,
    replayed: u64,
    mismatched: u64,
    rejected: u64,
    completions: u64,
    releases: u64,
}

struct Model {
    config: Config,
    now: u64,
    entries: HashMap<Ident, Entry>,
    last_store_token: u64,
    counts: Counts,
}

/// A guard the caller still holds, with what the model knows of it.
struct Held<'s> {
    guard: Guard<'s, u16>,
    ident: Ident,
    token: u64,
    deadline: u64,
}

/// Where a failure happened, for panic messages.
struct Ctx<'a> {
    step: usize,
    op: &'a Op,
    config: Config,
    now: u64,
}

impl fmt::Display for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} {:?} at {} ms ({:?})",
            self.step, self.op, self.now, self.config
        )
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Runs `ops` on a fresh store built from `config`, checking the model after every step, then
/// drops the remaining guards and checks that the store gives back every entry.
pub fn run(config: Config, ops: &[Op]) {
    let (clock, hand) = Clock::manual();
    let store: Store<u16> = Store::builder()
        .clock(clock)
        .seed(SEED)
        .shards(config.shards)
        .max_entries(config.max_entries)
        .ttl(ms(config.ttl_ms))
        .lease(ms(config.lease_ms))
        .max_key_len(MAX_KEY_LEN)
        .build()
        .expect("every decoded config is valid");
    let mut m = Model {
        config,
        now: 0,
        entries: HashMap::new(),
        last_store_token: 0,
        counts: Counts::default(),
    };
    let mut guards: Vec<Held<'_>> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let ctx = Ctx {
            step,
            op,
            config,
            now: m.now,
        };
        m.apply(&store, &hand, &mut guards, op, &ctx);
        m.check(&store, &guards, &ctx);
    }

    // Wind down: drop what is still held, let everything run out, reclaim it all.
    let end = [Op::Drop { guard: 0 }, Op::Maintenance];
    while !guards.is_empty() {
        let ctx = Ctx {
            step: ops.len(),
            op: &end[0],
            config,
            now: m.now,
        };
        m.apply(&store, &hand, &mut guards, &end[0], &ctx);
        m.check(&store, &guards, &ctx);
    }
    let last = m.entries.values().map(|e| e.hold_until).max().unwrap_or(0);
    if last > m.now {
        hand.advance(ms(last - m.now));
        m.now = last;
    }
    let ctx = Ctx {
        step: ops.len() + 1,
        op: &end[1],
        config,
        now: m.now,
    };
    m.apply(&store, &hand, &mut guards, &end[1], &ctx);
    m.check(&store, &guards, &ctx);
    let s = store.stats();
    assert_eq!(
        s.entries, 0,
        "{ctx}: entries left after everything ran out: {s:?}"
    );
    assert!(store.is_empty(), "{ctx}: store not empty");
}

impl Model {
    fn apply<'s>(
        &mut self,
        store: &'s Store<u16>,
        hand: &idemstore::ManualClock,
        guards: &mut Vec<Held<'s>>,
        op: &Op,
        ctx: &Ctx<'_>,
    ) {
        let now = self.now;
        let pick = |g: u8, len: usize| (len > 0).then(|| usize::from(g) % len);
        match op {
            Op::Claim {
                key,
                scope,
                fingerprint,
                lease,
            } => {
                let scope_bytes = scope.bytes();
                let payload = fingerprint.map(fingerprint_payload);
                let mut opts = ClaimOptions::new().scope(&scope_bytes);
                if let Some(p) = &payload {
                    opts = opts.fingerprint(p);
                }
                if let Some(d) = lease.duration() {
                    opts = opts.lease(d);
                }
                let plain = *scope == ScopeArg::None
                    && fingerprint.is_none()
                    && *lease == LeaseArg::Default;
                let result = if plain {
                    store.claim(key)
                } else {
                    store.claim_with(key, &opts)
                };
                // Validation, in the documented order: key, scope, lease.
                if key.is_empty() || key.len() > MAX_KEY_LEN {
                    expect_invalid_key(result, key, ctx);
                    return;
                }
                if *scope == ScopeArg::TooLong {
                    let want = Error::InvalidScope {
                        len: MAX_SCOPE_LEN + 1,
                        max_len: MAX_SCOPE_LEN,
                    };
                    match result {
                        Err(e) if e == want => {}
                        other => panic!("{ctx}: expected {want:?}, got {other:?}"),
                    }
                    return;
                }
                if !lease.is_valid() {
                    let want = Error::InvalidLease {
                        lease: lease.duration().expect("explicit"),
                        max: MAX_SPAN,
                    };
                    match result {
                        Err(e) if e == want => {}
                        other => panic!("{ctx}: expected {want:?}, got {other:?}"),
                    }
                    return;
                }
                let lease_ms = match lease {
                    LeaseArg::Ms(l) => *l,
                    _ => self.config.lease_ms,
                };
                let ident = Ident::Key {
                    scope: scope_bytes,
                    key: key.clone(),
                };
                self.resolve_claim(result, ident, *fingerprint, lease_ms, guards, ctx);
            }
            Op::ClaimId { id } => {
                let result = store.claim_id(id_of(*id));
                let lease_ms = self.config.lease_ms;
                self.resolve_claim(result, Ident::Id(*id), None, lease_ms, guards, ctx);
            }
            Op::ClaimBatch { grouped, keys } => {
                let n = keys.len();
                let mut results: Vec<Option<Result<Claim<'s, u16>, Error>>> =
                    (0..n).map(|_| None).collect();
                // The indices in the order `each` got them.
                let mut order = Vec::with_capacity(n);
                let record = |i: usize, result: Result<Claim<'s, u16>, Error>| {
                    assert!(i < n, "{ctx}: outcome for index {i} of a batch of {n}");
                    assert!(results[i].is_none(), "{ctx}: two outcomes for index {i}");
                    order.push(i);
                    results[i] = Some(result);
                };
                let ids = |ids: &[u8]| ids.iter().map(|&id| id_of(id)).collect::<Vec<_>>();
                match keys {
                    BatchKeys::Keys(k) if *grouped => store.claim_batch_grouped(k, record),
                    BatchKeys::Keys(k) => store.claim_batch(k, record),
                    BatchKeys::Ids(i) if *grouped => store.claim_id_batch_grouped(&ids(i), record),
                    BatchKeys::Ids(i) => store.claim_id_batch(&ids(i), record),
                }
                if *grouped {
                    // One round: every invalid key's error comes before any claim's outcome,
                    // and a key's duplicates come after it.
                    let invalid = order.iter().take_while(|&&i| keys.is_invalid(i)).count();
                    assert!(
                        order[invalid..].iter().all(|&i| !keys.is_invalid(i)),
                        "{ctx}: an invalid key's error after a claim: {order:?}"
                    );
                    let mut seen = HashSet::new();
                    for &i in &order[invalid..] {
                        assert!(
                            (0..i).all(|j| !keys.same(i, j) || seen.contains(&j)),
                            "{ctx}: key {i} handed out before an earlier duplicate: {order:?}"
                        );
                        seen.insert(i);
                    }
                } else {
                    assert!(
                        order.iter().copied().eq(0..n),
                        "{ctx}: claim_batch's outcomes out of order: {order:?}"
                    );
                }
                // The outcomes are those of claiming the keys one by one, in the batch's order.
                let lease_ms = self.config.lease_ms;
                for (i, result) in results.into_iter().enumerate() {
                    let result = result.unwrap_or_else(|| panic!("{ctx}: no outcome for {i}"));
                    let ident = match keys {
                        BatchKeys::Keys(k) if keys.is_invalid(i) => {
                            expect_invalid_key(result, &k[i], ctx);
                            continue;
                        }
                        BatchKeys::Keys(k) => Ident::Key {
                            scope: Vec::new(),
                            key: k[i].clone(),
                        },
                        BatchKeys::Ids(ids) => Ident::Id(ids[i]),
                    };
                    self.resolve_claim(result, ident, None, lease_ms, guards, ctx);
                }
            }
            Op::Complete { guard, value } => {
                let Some(i) = pick(*guard, guards.len()) else {
                    return;
                };
                let h = guards.remove(i);
                self.check_guard(&h, ctx);
                let result = h.guard.complete(*value);
                self.check_complete(&h.ident, h.token, h.deadline, *value, result, ctx);
            }
            Op::CompleteBatch { completions } => {
                // The guards picked (each once), with their values, in the order picked.
                let mut picked: Vec<(usize, u16)> = Vec::new();
                for &(g, value) in completions {
                    if let Some(i) = pick(g, guards.len()) {
                        if picked.iter().all(|&(j, _)| j != i) {
                            picked.push((i, value));
                        }
                    }
                }
                let mut held: Vec<Option<Held<'s>>> = guards.drain(..).map(Some).collect();
                let mut batch = Vec::with_capacity(picked.len());
                let mut meta = Vec::with_capacity(picked.len());
                for &(i, value) in &picked {
                    let h = held[i].take().expect("each guard picked once");
                    self.check_guard(&h, ctx);
                    meta.push((h.ident, h.token, h.deadline, value));
                    batch.push((h.guard, value));
                }
                guards.extend(held.into_iter().flatten());
                let n = meta.len();
                let mut results: Vec<Option<Result<(), Error>>> = vec![None; n];
                store.complete_batch(batch, |i, result| {
                    assert!(i < n, "{ctx}: result for index {i} of a batch of {n}");
                    assert!(
                        results[i].is_none(),
                        "{ctx}: two results for completion {i}"
                    );
                    results[i] = Some(result);
                });
                for (i, (result, (ident, token, deadline, value))) in
                    results.into_iter().zip(meta).enumerate()
                {
                    let result = result.unwrap_or_else(|| panic!("{ctx}: no result for {i}"));
                    self.check_complete(&ident, token, deadline, value, result, ctx);
                }
            }
            Op::Release { guard } => {
                let Some(i) = pick(*guard, guards.len()) else {
                    return;
                };
                let h = guards.remove(i);
                self.check_guard(&h, ctx);
                let result = h.guard.release();
                if now < h.deadline {
                    assert_eq!(result, Ok(()), "{ctx}: release within the lease");
                    self.owned_entry(&h.ident, h.token, h.deadline, ctx).state = State::Vacant;
                    self.counts.releases += 1;
                } else {
                    assert_eq!(
                        result,
                        Err(Error::LeaseLost),
                        "{ctx}: release after the lease"
                    );
                }
            }
            Op::Extend { guard, lease } => {
                let Some(i) = pick(*guard, guards.len()) else {
                    return;
                };
                let h = &mut guards[i];
                let d = lease.duration().unwrap_or(ms(self.config.lease_ms));
                let result = h.guard.extend(d);
                if !lease.is_valid() {
                    let want = Error::InvalidLease {
                        lease: d,
                        max: MAX_SPAN,
                    };
                    assert_eq!(result, Err(want), "{ctx}: extend with an invalid lease");
                } else if now < h.deadline {
                    assert_eq!(result, Ok(()), "{ctx}: extend within the lease");
                    let deadline = now + d.as_millis() as u64;
                    let ttl = self.config.ttl_ms;
                    let e = self.owned_entry(&h.ident, h.token, h.deadline, ctx);
                    e.state = State::InFlight { deadline };
                    e.hold_until = e.hold_until.max(deadline + ttl);
                    h.deadline = deadline;
                } else {
                    assert_eq!(
                        result,
                        Err(Error::LeaseLost),
                        "{ctx}: extend after the lease"
                    );
                }
                let h = &guards[i];
                self.check_guard(h, ctx);
            }
            Op::Drop { guard } => {
                let Some(i) = pick(*guard, guards.len()) else {
                    return;
                };
                let h = guards.remove(i);
                self.check_guard(&h, ctx);
                drop(h.guard);
                if now < h.deadline {
                    // Dropping a guard within its lease releases the key.
                    self.owned_entry(&h.ident, h.token, h.deadline, ctx).state = State::Vacant;
                    self.counts.releases += 1;
                }
            }
            Op::Advance { ms: step } => {
                if now + step <= CLOCK_CAP_MS {
                    hand.advance(ms(*step));
                    self.now += step;
                }
            }
            Op::Maintenance => {
                let before = store.stats().entries;
                let reclaimed = store.run_maintenance();
                let after = store.stats().entries;
                assert_eq!(
                    before - after,
                    reclaimed,
                    "{ctx}: run_maintenance's count differs from the entries it removed"
                );
                for e in self.entries.values_mut() {
                    if now >= e.hold_until {
                        e.maybe_present = false;
                    }
                }
            }
        }
    }

    /// Checks a completion's result and applies it: it succeeds within the guard's lease and
    /// fails with `LeaseLost`, changing nothing, after it.
    fn check_complete(
        &mut self,
        ident: &Ident,
        token: u64,
        deadline: u64,
        value: u16,
        result: Result<(), Error>,
        ctx: &Ctx<'_>,
    ) {
        let now = self.now;
        if now < deadline {
            assert_eq!(result, Ok(()), "{ctx}: complete within the lease");
            let ttl = self.config.ttl_ms;
            let e = self.owned_entry(ident, token, deadline, ctx);
            e.state = State::Completed {
                deadline: now + ttl,
                value,
                at: now,
            };
            e.hold_until = e.hold_until.max(now + ttl);
            self.counts.completions += 1;
        } else {
            assert_eq!(
                result,
                Err(Error::LeaseLost),
                "{ctx}: complete after the lease"
            );
        }
    }

    /// The model's entry of a held key, which must still be in flight under that guard.
    fn owned_entry(
        &mut self,
        ident: &Ident,
        token: u64,
        deadline: u64,
        ctx: &Ctx<'_>,
    ) -> &mut Entry {
        let e = self
            .entries
            .get_mut(ident)
            .unwrap_or_else(|| panic!("{ctx}: model has no entry for a held key"));
        assert!(
            e.last_token == token && e.state == State::InFlight { deadline },
            "{ctx}: model out of step: {e:?} for token {token} deadline {deadline}"
        );
        e
    }

    /// What the guard says of itself matches what it was handed.
    fn check_guard(&self, h: &Held<'_>, ctx: &Ctx<'_>) {
        assert_eq!(h.guard.token(), h.token, "{ctx}: guard token changed");
        assert_eq!(
            h.guard.lease_deadline(),
            ms(h.deadline),
            "{ctx}: guard lease deadline"
        );
        assert_eq!(
            h.guard.lease_remaining(),
            ms(h.deadline.saturating_sub(self.now)),
            "{ctx}: guard lease remaining"
        );
    }

    fn live_count(&self) -> usize {
        self.entries.values().filter(|e| e.live(self.now)).count()
    }

    fn resolve_claim<'s>(
        &mut self,
        result: Result<Claim<'s, u16>, Error>,
        ident: Ident,
        fp: Option<u8>,
        lease_ms: u64,
        guards: &mut Vec<Held<'s>>,
        ctx: &Ctx<'_>,
    ) {
        let now = self.now;
        self.counts.validated += 1;
        let live = self.entries.get(&ident).filter(|e| e.live(now));
        if let Some(e) = live {
            let mismatch = matches!((fp, e.fp), (Some(a), Some(b)) if a != b);
            match (result, e.state) {
                (Ok(Claim::Mismatch(mm)), state) if mismatch => {
                    assert_eq!(
                        mm.is_completed(),
                        matches!(state, State::Completed { .. }),
                        "{ctx}: Mismatch::is_completed"
                    );
                    self.counts.mismatched += 1;
                }
                (Ok(Claim::InProgress(p)), State::InFlight { deadline }) if !mismatch => {
                    assert_eq!(p.retry_after(), ms(deadline - now), "{ctx}: retry_after");
                    self.counts.in_progress += 1;
                }
                (
                    Ok(Claim::Completed(r)),
                    State::Completed {
                        deadline,
                        value,
                        at,
                    },
                ) if !mismatch => {
                    assert_eq!(
                        *r.value(),
                        value,
                        "{ctx}: replay must return the value of the last successful complete"
                    );
                    assert_eq!(r.expires_in(), ms(deadline - now), "{ctx}: expires_in");
                    assert_eq!(r.expires_at(), ms(deadline), "{ctx}: expires_at");
                    assert_eq!(r.completed_at(), ms(at), "{ctx}: completed_at");
                    self.counts.replayed += 1;
                }
                (other, state) => panic!(
                    "{ctx}: live key {ident:?} in {state:?} (recorded fp {:?}, claim fp {fp:?}): \
                     got {other:?}",
                    e.fp
                ),
            }
            return;
        }

        // Not live: the claim acquires, unless the key's shard is full of live keys.
        let live_total = self.live_count();
        let Config {
            shards,
            max_entries,
            ..
        } = self.config;
        let base = max_entries / shards;
        let extra = max_entries % shards;
        // With one shard the bound is exact; with two, a full store must refuse and a store
        // whose live keys fit in the smaller shard must admit, but in between it depends on
        // which shard the key hashes to.
        let must_refuse = live_total >= max_entries;
        let may_refuse = live_total >= base;
        match result {
            Err(Error::CapacityExceeded { limit }) => {
                assert!(
                    may_refuse,
                    "{ctx}: CapacityExceeded with {live_total} live keys of {max_entries} \
                     (per-shard bound {base}) for {ident:?}"
                );
                assert!(
                    limit == base || (extra > 0 && limit == base + 1),
                    "{ctx}: CapacityExceeded limit {limit}"
                );
                self.counts.rejected += 1;
            }
            Ok(Claim::Acquired(g)) => {
                assert!(
                    !must_refuse,
                    "{ctx}: acquired {ident:?} with {live_total} live keys of {max_entries}"
                );
                let token = g.token();
                let deadline = now + lease_ms;
                assert_eq!(
                    g.lease_deadline(),
                    ms(deadline),
                    "{ctx}: new lease deadline"
                );
                assert_eq!(
                    g.lease_remaining(),
                    ms(lease_ms),
                    "{ctx}: new lease remaining"
                );
                let prev = self.entries.get(&ident);
                if let Some(p) = prev {
                    assert!(
                        token > p.last_token,
                        "{ctx}: fencing token {token} not above {} for {ident:?}",
                        p.last_token
                    );
                }
                if shards == 1 {
                    assert!(
                        token > self.last_store_token,
                        "{ctx}: per-shard token {token} not above {}",
                        self.last_store_token
                    );
                }
                self.last_store_token = self.last_store_token.max(token);
                if g.is_takeover() {
                    // A lease that ran out is kept for a window after it (unless a new key at
                    // the capacity bound needed its room), and forgotten after that.
                    let ttl = self.config.ttl_ms;
                    let lapsed = |s: &State| matches!(*s, State::InFlight { deadline } if now < deadline + ttl);
                    assert!(
                        matches!(prev, Some(p) if p.maybe_present && lapsed(&p.state)),
                        "{ctx}: takeover of {ident:?}, which had no lease that ran out less than \
                         a window ago: {prev:?}"
                    );
                    self.counts.takeovers += 1;
                } else {
                    self.counts.acquired += 1;
                }
                for other in guards.iter().filter(|o| o.ident == ident) {
                    assert!(
                        other.deadline <= now,
                        "{ctx}: second owner of {ident:?} while token {} holds it until {}",
                        other.token,
                        other.deadline
                    );
                }
                let hold_until = prev
                    .map_or(0, |p| p.hold_until)
                    .max(deadline + self.config.ttl_ms);
                self.entries.insert(
                    ident.clone(),
                    Entry {
                        state: State::InFlight { deadline },
                        fp,
                        last_token: token,
                        hold_until,
                        maybe_present: true,
                    },
                );
                guards.push(Held {
                    guard: g,
                    ident,
                    token,
                    deadline,
                });
            }
            other => panic!(
                "{ctx}: {ident:?} is not live ({:?}), expected Acquired or CapacityExceeded, \
                 got {other:?}",
                self.entries.get(&ident)
            ),
        }
    }

    /// Invariants that hold after every step.
    fn check(&self, store: &Store<u16>, guards: &[Held<'_>], ctx: &Ctx<'_>) {
        let s = store.stats();
        let c = &self.counts;
        let live = self.live_count();
        let maybe = self.entries.values().filter(|e| e.maybe_present).count();
        assert_eq!(s.max_entries, self.config.max_entries, "{ctx}: {s:?}");
        assert!(
            s.entries <= self.config.max_entries,
            "{ctx}: entries over max_entries: {s:?}"
        );
        assert!(
            s.entries >= live,
            "{ctx}: {live} live keys but {} entries",
            s.entries
        );
        assert!(
            s.entries <= maybe,
            "{ctx}: {} entries held but at most {maybe} may be (maintenance left expired ones)",
            s.entries
        );
        assert_eq!(store.len(), s.entries, "{ctx}: len vs stats");
        assert_eq!(store.clock().now(), ms(self.now), "{ctx}: clock");
        let got = [
            s.acquired,
            s.takeovers,
            s.in_progress,
            s.replayed,
            s.mismatched,
            s.rejected,
            s.completions,
            s.releases,
        ];
        let want = [
            c.acquired,
            c.takeovers,
            c.in_progress,
            c.replayed,
            c.mismatched,
            c.rejected,
            c.completions,
            c.releases,
        ];
        assert_eq!(
            got, want,
            "{ctx}: counters [acquired, takeovers, in_progress, replayed, mismatched, \
             rejected, completions, releases]: {s:?}"
        );
        assert_eq!(
            s.acquired + s.takeovers + s.in_progress + s.replayed + s.mismatched + s.rejected,
            c.validated,
            "{ctx}: every validated claim counts under one outcome"
        );
        // At most one guard per key whose lease has not run out, by the guards' own word.
        let now = ms(self.now);
        let mut owners = HashSet::new();
        for h in guards {
            if h.guard.lease_deadline() > now {
                assert!(
                    owners.insert(&h.ident),
                    "{ctx}: two unexpired guards for {:?}",
                    h.ident
                );
            }
        }
    }
}
