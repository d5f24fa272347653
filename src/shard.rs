//! A shard: one table, one timing wheel and the counters of its keys, behind one lock.

use std::sync::Arc;

use crate::key::KeyHash;
use crate::queue::TtlQueue;
use crate::state::{Phase, Word};
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Event, Ordering, RwLock, WriteGuard};
use crate::table::{spare_margin, Help, Probe, Rebuilt, Spare, Table, Whereabouts, MIN_CAPACITY};
use crate::wheel::Wheel;

/// How many due records ahead expiry prefetches the entry of.
const EXPIRY_PREFETCH: usize = 8;

/// Where expiry takes due records from.
#[derive(Debug, Clone, Copy)]
enum Due {
    Wheel,
    /// The ttl queue's chunks that are wholly due ([`TtlQueue::pop`]).
    Queue,
    /// The ttl queue's chunks that may hold a record due ([`TtlQueue::pop_near`]).
    QueueNear,
}

/// A completed entry whose record comes due further than this (ms) before its window ends
/// waits in the ttl queue instead of the wheel, whose levels it would go down one by one (from
/// 4 s on a record is two levels up).
const QUEUE_AFTER: u64 = 1 << 12;

/// Expiry records a claim may process before its own work: bounds the latency expiry adds.
pub(crate) const CLAIM_EXPIRY_BUDGET: usize = 8;

/// A shard as it sits in the store: the locked part, and the counters guards bump under the
/// read lock (releases). `repr(C)`: the lock (its word, then [`Shard`], whose order counts on
/// the word's line) comes first.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct ShardCell<V> {
    pub(crate) lock: RwLock<Shard<V>>,
    /// Where the table lives, for claims to start their misses before they take the lock.
    /// Next to the lock, in a line no claim writes.
    pub(crate) whereabouts: Whereabouts,
    pub(crate) releases: AtomicU64,
    /// Entries in the Vacant phase (released, not yet reclaimed).
    pub(crate) vacant: AtomicUsize,
    /// Set when a transition moved a deadline earlier than the entry's wheel record, so the
    /// wheel alone may reclaim it late; a capacity check then sweeps the table.
    pub(crate) shortened: AtomicBool,
    /// Whether the table may hold in-flight entries whose lease ran out (kept for a window so
    /// that the next claim takes them over): a new key refused at the bound rebuilds the table
    /// without them, since they are not live. Changed only under the write lock; here rather
    /// than in [`Shard`], whose hot fields keep their places (a `bool` there, growing `Shard` by
    /// 8 bytes, made claim + complete at 10 M keys 6% slower in three alternating runs).
    pub(crate) lapsed: AtomicBool,
    /// Duplicates waiting for an in-flight key of this shard listen here; owners notify it
    /// when they complete or release a key (on a manual clock, the clock's event is used).
    pub(crate) wake: Event,
    /// Waiters for keys of this shard: owners notify `wake` only when there are some.
    pub(crate) waiting: AtomicUsize,
    /// Where a rebuild offers half its moves to a claim waiting for the lock.
    pub(crate) help: Help,
    /// The shard's time in whole ms (`floor_ms` of [`Shard`]'s latest clock reading), for
    /// replays outside the lock, whose time must not be behind what locked operations used.
    /// A plain std atomic even under loom: no decision of the modelled engine reads it.
    time_ms: std::sync::atomic::AtomicU64,
}

impl<V> ShardCell<V> {
    /// The shard's write lock, for a claim or a completion. If it is taken, the claim first
    /// moves half the entries of a rebuild in progress, if one is on offer ([`Help`]), instead
    /// of waiting for the whole move.
    #[inline]
    pub(crate) fn write(&self) -> WriteGuard<'_, Shard<V>> {
        match self.lock.try_write() {
            Some(locked) => locked,
            None => {
                let _ = self.help.lend_a_hand();
                self.lock.write()
            }
        }
    }

    /// [`Shard::advance_time`], and the shard's time for replays outside the lock.
    #[inline]
    pub(crate) fn advance_time(&self, shard: &mut Shard<V>, clock_nanos: u64) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let now = shard.advance_time(clock_nanos);
        let ms = crate::clock::floor_ms(now);
        // Written under the write lock, so read back by the only writer: a store only when
        // the millisecond turns.
        if ms > self.time_ms.load(Relaxed) {
            self.time_ms.store(ms, Relaxed);
        }
        now
    }

    /// The deadline (ms) of `h`'s entry and the time (ns: `clock`'s reading, not behind the
    /// shard's time), read without taking the lock, if the entry is completed and its window
    /// has not ended by that time, it sits in the first groups of its probe path
    /// ([`Place::word`]) and no writer held the lock meanwhile; `None` if not (the caller then
    /// claims under the lock). Call inside `readers::read` (see there). `PREFETCH`: whether to
    /// start loading the key's home slots (not if the caller did already).
    #[cfg(not(idemstore_loom))]
    #[inline(always)]
    pub(crate) fn replay_unlocked<const PREFETCH: bool>(
        &self,
        h: &KeyHash,
        clock: impl FnOnce() -> u64,
    ) -> Option<(u64, u64)> {
        use crate::clock::NANOS_PER_MS;
        let version = self.lock.begin_read()?;
        let place = self.whereabouts.place();
        // The slots' misses overlap the tags'.
        if PREFETCH {
            place.prefetch_slots(h);
        }
        let time_ms = self.time_ms.load(std::sync::atomic::Ordering::Relaxed);
        if !self.lock.validate(version) {
            return None;
        }
        // SAFETY: the place validated: one table's addresses and size, as the last writer
        // left them. That table's memory stays mapped while this read lasts: the caller reads
        // inside `readers::read`, and a table replaced since is kept until
        // `readers::synchronize` (`Chores::run`).
        let word = unsafe { place.word(h) }?;
        if word.phase() != Phase::Completed {
            return None;
        }
        let deadline = word.deadline();
        // Read only for a key that is there (a claim of a new key reads it under the lock), and
        // after the version, so not behind the time of any locked operation before this read;
        // after the word too, which makes it if anything later than the moment the read takes
        // effect: a replay never outlasts its window.
        let now = clock();
        // The window is open at `max(now, time_ms)` iff it is at both: whole ms below the
        // deadline, which is at most 2^44 ms, so `deadline * NANOS_PER_MS` fits in a u64.
        if time_ms >= deadline || now >= deadline * NANOS_PER_MS {
            return None;
        }
        self.lock
            .validate(version)
            .then_some((deadline, now.max(time_ms * NANOS_PER_MS)))
    }

    /// Lets go of the shard's lock, then does the chores an operation left (memory to make,
    /// free or give to `pool`), which never run under the lock.
    #[inline]
    pub(crate) fn unlock(&self, mut locked: WriteGuard<'_, Shard<V>>, pool: &Pool<V>) {
        if locked.has_chores() {
            let chores = locked.take_chores();
            drop(locked);
            chores.run(self, pool);
        }
    }
}

/// Counters changed only under the write lock; the two of every claim and completion first.
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
pub(crate) struct Counts {
    pub(crate) acquired: u64,
    pub(crate) completions: u64,
    pub(crate) takeovers: u64,
    pub(crate) in_progress: u64,
    pub(crate) replayed: u64,
    pub(crate) mismatched: u64,
    pub(crate) rejected: u64,
    pub(crate) lease_expiries: u64,
    pub(crate) ttl_expiries: u64,
}

/// The locked part of a shard.
///
/// In this order (`repr(C)`), behind the lock's word, so that a claim of a new key and its
/// completion write few of the shard's lines: the lock's (with the wheel's first staged
/// records and their times), one with the wheel's counts and the claim's and the completion's
/// counts, one with the token, the clock and the table's entry count, and the ttl queue's (its
/// newest chunk inline). The fields they only read (the table's addresses and
/// size, the queue's due time, the bound, the ttl) sit in lines those operations do not write
/// (but for the queue's due time while all its records fit one chunk: see `TtlQueue`).
/// With two threads claiming keys of random shards, the other core wrote most of a shard's
/// lines last, and each is a transfer between the cores while the lock is held (see "Where the
/// rest of the speed is" in the README, and `docs/performance-history.md`, fifteenth
/// session); in Rust's own order (and with the stage's times and indexes in two arrays) those
/// fields lay in about seven lines of the shard, and the queue's newest chunk in a line of the
/// heap.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Shard<V> {
    /// First, so that its first staged records share the lock's line and its counts come last,
    /// beside [`Shard::counts`].
    pub(crate) wheel: Wheel,
    pub(crate) counts: Counts,
    /// The next fencing token: strictly increasing per shard, hence per key, across lives.
    next_token: u64,
    /// The latest clock reading (ns) any write-locked operation on this shard has used.
    last_nanos: u64,
    pub(crate) table: Table<V>,
    /// The records of completed entries far from their deadlines (see [`QUEUE_AFTER`]).
    pub(crate) queue: TtlQueue,
    /// The most entries this shard may hold.
    pub(crate) bound: usize,
    /// The store's ttl in ms (rounded up): the soonest an in-flight entry's deadline can
    /// become if it completes now, which is where its wheel record must be; also how long an
    /// in-flight entry is kept after its lease ran out, for a claim to take it over.
    ttl: u64,
    /// The load (percent, 60 to 70) a rebuild sizes the new table for. It differs from shard to
    /// shard so that shards filled at the same pace reach their rebuild points at different
    /// key counts: rebuilds, which hold a shard's lock while they move its entries, then come
    /// one shard at a time instead of in a wave across all shards.
    target_load: usize,
    /// Rebuilds so far: tells a spare made for an earlier table from one for this table.
    rebuilds: u64,
    /// A table made outside the lock for the next rebuild (see [`Chores`]).
    pub(crate) spare: Option<Spare<V>>,
    /// A spare asked of the claim that holds the lock now, to make once it lets go.
    order: Option<SpareOrder>,
    /// The table the last rebuild replaced, for the claim that rebuilt to free (or give to
    /// the store's [`Pool`]) once it lets go of the lock.
    retired: Option<Retired<V>>,
}

/// A table a rebuild replaced.
#[derive(Debug)]
struct Retired<V> {
    table: Table<V>,
    /// The rebuild's old-to-new slot map, freed with it.
    moved: Vec<u32>,
    /// Whether the table is worth keeping for another shard's rebuild: the rebuild grew the
    /// shard by a quarter at most (a rebuild that drops released keys at a shard's bound
    /// replaces a table with one of about its size; growth replaces it with one 1.3 to 1.5
    /// times larger).
    reusable: bool,
}

/// Tables kept for shards' next rebuilds, at most [`POOL_TABLES`] per store. A new table's
/// memory must be zeroed by the kernel, which took milliseconds per table here (a claim that
/// makes a spare waits for it, and so do the claims queued behind it); a kept table is emptied
/// by a pass over its tags (see `Table::recycle`). Tables replaced by rebuilds that did not grow
/// their shard much are kept for spares of about their size; a table replaced by growth is kept
/// only while no other is, and is grown into the next larger spare (`Table::regrow`).
#[derive(Debug)]
pub(crate) struct Pool<V> {
    tables: RwLock<Vec<Table<V>>>,
}

/// The most tables a [`Pool`] keeps: at steady state shards reach their rebuilds one at a time,
/// and each takes a table soon after another gave one back.
const POOL_TABLES: usize = 4;

impl<V> Pool<V> {
    pub(crate) fn new() -> Self {
        Self {
            tables: RwLock::new(Vec::new()),
        }
    }

    /// Keeps `table`; hands back the table it displaced (the smallest) if the pool was full,
    /// for the caller to free after the pool's lock is released.
    fn give(&self, table: Table<V>) -> Option<Table<V>> {
        let mut tables = self.tables.write();
        tables.push(table);
        if tables.len() <= POOL_TABLES {
            return None;
        }
        let smallest = (0..tables.len()).min_by_key(|&i| tables[i].capacity())?;
        Some(tables.swap_remove(smallest))
    }

    /// Keeps `table`, replaced by a rebuild that grew its shard, if no other table is kept:
    /// while a store grows, each such table becomes part of the next larger spare
    /// ([`Pool::take_smaller`]), and one is enough to bridge a rebuild and the next order
    /// without holding much memory once growth stops. Hands it back otherwise.
    fn give_grown(&self, table: Table<V>) -> Option<Table<V>> {
        let mut tables = self.tables.write();
        if !tables.is_empty() || !table.can_grow() {
            return Some(table);
        }
        tables.push(table);
        None
    }

    /// The largest kept table of fewer than `below` slots with the given huge-page choice,
    /// to grow into a spare (see [`Spare::regrown`]).
    fn take_smaller(&self, below: usize, huge: bool) -> Option<Table<V>> {
        let mut tables = self.tables.write();
        let i = (0..tables.len())
            .filter(|&i| tables[i].capacity() < below && tables[i].huge() == huge)
            .max_by_key(|&i| tables[i].capacity())?;
        Some(tables.swap_remove(i))
    }

    /// A kept table of `min..=max` slots with the given huge-page choice, if there is one.
    fn take(&self, min: usize, max: usize, huge: bool) -> Option<Table<V>> {
        let mut tables = self.tables.write();
        let i = tables
            .iter()
            .position(|t| (min..=max).contains(&t.capacity()) && t.huge() == huge)?;
        Some(tables.swap_remove(i))
    }

    /// Bytes the kept tables hold.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.tables.read().iter().map(Table::heap_bytes).sum()
    }
}

/// What a spare table must be: made by [`Chores::run`], handed back by [`Shard::deliver`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpareOrder {
    capacity: usize,
    /// The sizes a kept table may have to do instead (see [`Shard::fitting`]).
    fits: (usize, usize),
    old_capacity: usize,
    huge: bool,
    /// The shard's rebuild count when ordered.
    generation: u64,
}

/// Work a claim leaves for after it lets go of the shard lock: making a spare table for the
/// shard's next rebuild (new memory the kernel must zero) and freeing the table a rebuild
/// replaced (an unmap that interrupts every core running the process). Done under the lock,
/// either would stall every other claim on the shard for as long; done here, a rebuild holds
/// the lock only while it moves entries.
#[derive(Debug)]
#[must_use = "chores left undone keep memory or leave the next rebuild to allocate under the lock"]
pub(crate) struct Chores<V> {
    retired: Option<Retired<V>>,
    order: Option<SpareOrder>,
}

impl<V> Chores<V> {
    /// Does the chores; call without holding `cell`'s lock.
    #[cold]
    #[inline(never)]
    pub(crate) fn run(self, cell: &ShardCell<V>, pool: &Pool<V>) {
        if let Some(retired) = self.retired {
            drop(retired.moved);
            // Replays outside the lock may still be reading the replaced table: let them
            // finish before its memory is reused or freed.
            #[cfg(not(idemstore_loom))]
            crate::readers::synchronize();
            if retired.reusable {
                drop(pool.give(retired.table));
            } else {
                drop(pool.give_grown(retired.table));
            }
        }
        if let Some(order) = self.order {
            let (min, max) = order.fits;
            let spare = if let Some(table) = pool.take(min, max, order.huge) {
                Spare::recycled(table, order.old_capacity)
            } else if let Some(table) = pool.take_smaller(min, order.huge) {
                Spare::regrown(table, order.capacity, order.huge, order.old_capacity)
            } else {
                Spare::new(order.capacity, order.huge, order.old_capacity)
            };
            // The guard is a temporary, released at the end of the statement: a spare the
            // shard turns down is freed outside the lock too.
            let unwanted = cell.lock.write().deliver(order.generation, spare);
            drop(unwanted);
        }
    }
}

/// The highest load (percent) a rebuild may start a table at when it reuses a spare smaller than
/// it would make: well under the 0.9 rebuild point.
const MAX_START_LOAD: usize = 78;

/// The lease a claim asks for: made into a deadline only by a claim that acquires its key
/// (a replay never needs one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    /// The claim's time (ns).
    pub(crate) from_nanos: u64,
    /// The lease's length (ns).
    pub(crate) nanos: u64,
}

impl Lease {
    /// When the lease ends, in ms rounded up.
    #[inline]
    fn deadline(self) -> u64 {
        crate::clock::deadline_ms(self.from_nanos, self.nanos)
    }
}

/// What a claim found, before the store turns it into a public [`crate::Claim`].
#[derive(Debug)]
pub(crate) enum Outcome<V> {
    Acquired {
        token: u64,
        word: Word,
        takeover: bool,
        /// Where the entry sits, for the owner's later operations to look first.
        slot: u32,
    },
    InProgress {
        deadline: u64,
    },
    Completed {
        value: Option<Arc<V>>,
        deadline: u64,
    },
    Mismatch {
        completed: bool,
    },
    Full {
        limit: usize,
    },
}

impl<V> ShardCell<V> {
    #[cfg(all(test, not(idemstore_loom)))]
    pub(crate) fn new(
        index: usize,
        bound: usize,
        ttl: u64,
        capacity: usize,
        now: u64,
        huge: bool,
    ) -> Self {
        Self::try_new(index, bound, ttl, capacity, now, huge).expect("memory for a test's table")
    }

    /// Shard `index` of a store, holding at most `bound` entries, its table sized for
    /// `capacity`; `None` if the table's memory cannot be had.
    pub(crate) fn try_new(
        index: usize,
        bound: usize,
        ttl: u64,
        capacity: usize,
        now: u64,
        huge: bool,
    ) -> Option<Self> {
        let table = Table::try_new(capacity.min(max_capacity(bound)), huge)?;
        let whereabouts = Whereabouts::default();
        whereabouts.update(&table);
        Some(Self {
            lock: RwLock::new(Shard {
                table,
                wheel: Wheel::new(now),
                queue: TtlQueue::new(ttl),
                next_token: 1,
                bound,
                ttl,
                // Spread over 60..=70 by a multiplicative hash of the index.
                target_load: 60 + (index.wrapping_mul(0x9e37_79b9) >> 8) % 11,
                last_nanos: 0,
                counts: Counts::default(),
                rebuilds: 0,
                spare: None,
                order: None,
                retired: None,
            }),
            releases: AtomicU64::new(0),
            vacant: AtomicUsize::new(0),
            shortened: AtomicBool::new(false),
            lapsed: AtomicBool::new(false),
            whereabouts,
            wake: Event::new(),
            waiting: AtomicUsize::new(0),
            help: Help::default(),
            time_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

/// The largest table a shard of `bound` entries gets: a load of 0.75 when full of live keys,
/// under the 0.9 rebuild point, so a shard at its bound under churn does not rebuild (removals
/// leave no tombstones: see `Table::remove`).
pub(crate) fn max_capacity(bound: usize) -> usize {
    (bound + 1).saturating_mul(4) / 3 + crate::table::GROUP
}

/// The most slots a table of a shard of `bound` entries can have: a rebuild makes at most
/// [`max_capacity`] slots, but may take a kept table up to a quarter larger instead (see
/// [`Shard::fitting`]), and a table is a whole number of groups. Slot indices are `u32` (the
/// wheel's records, with `u32::MAX` for "moved nowhere"), so this must stay below `u32::MAX`.
pub(crate) fn largest_table(bound: usize) -> usize {
    let most = max_capacity(bound);
    most.saturating_add(most / 4)
        .saturating_add(2 * crate::table::GROUP)
}

impl<V> Shard<V> {
    /// The time for a write-locked operation: the clock reading, but never behind the last
    /// one this shard used (the TSCs of two cores may disagree slightly). Keeps the shard's
    /// time, and so its wheel, monotonic.
    #[inline]
    pub(crate) fn advance_time(&mut self, clock_nanos: u64) -> u64 {
        self.last_nanos = self.last_nanos.max(clock_nanos);
        self.last_nanos
    }

    /// Rebuilds of this shard's table so far.
    pub(crate) fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// The time for a read-locked (guard) operation: never behind the shard's last reading.
    #[inline]
    pub(crate) fn time(&self, clock_nanos: u64) -> u64 {
        self.last_nanos.max(clock_nanos)
    }

    /// Claims `h` at `now` (ms) for `lease`. Write lock held.
    #[inline(always)]
    pub(crate) fn claim(
        &mut self,
        cell: &ShardCell<V>,
        h: &KeyHash,
        fingerprint: u64,
        now: u64,
        lease: Lease,
    ) -> Outcome<V> {
        // The claim never makes the wheel due at `now` (its record is later), so testing
        // first is the same as testing after; the common case, nothing due, then hands the
        // outcome straight back instead of keeping it across the expiry call.
        if !self.is_due(now) {
            return self.claim_key(cell, h, fingerprint, now, lease);
        }
        self.claim_then_expire(cell, h, fingerprint, now, lease)
    }

    /// Whether [`Shard::expire`] at `now` would find a record to look at.
    #[inline]
    pub(crate) fn is_due(&self, now: u64) -> bool {
        self.wheel.is_due(now) || self.queue.due_at() <= now
    }

    /// A claim, then bounded expiry work: after the claim's own, so the claim sees its key's
    /// previous life (a takeover is reported as one) unless maintenance reclaimed it earlier.
    #[inline(never)]
    fn claim_then_expire(
        &mut self,
        cell: &ShardCell<V>,
        h: &KeyHash,
        fingerprint: u64,
        now: u64,
        lease: Lease,
    ) -> Outcome<V> {
        let outcome = self.claim_key(cell, h, fingerprint, now, lease);
        self.expire(cell, now, CLAIM_EXPIRY_BUDGET);
        outcome
    }

    #[inline(always)]
    fn claim_key(
        &mut self,
        cell: &ShardCell<V>,
        h: &KeyHash,
        fingerprint: u64,
        now: u64,
        lease: Lease,
    ) -> Outcome<V> {
        let pos = match self.table.probe(h) {
            Probe::Found(i) => return self.claim_existing(cell, i, fingerprint, now, lease),
            Probe::Absent(pos) => pos,
        };
        let pos = if self.table.occupied() >= self.bound || self.table.near_rebuild() {
            match self.make_room(cell, h, now) {
                Some(pos) => pos,
                None => {
                    self.counts.rejected += 1;
                    return Outcome::Full { limit: self.bound };
                }
            }
        } else {
            pos
        };
        let token = self.take_token();
        let word = Word::new(Phase::InFlight, token, lease.deadline());
        self.table.insert_at(pos, h, word, fingerprint);
        // A new lease, not run out: its record time as `record_time` gives it, without the
        // phase tests.
        self.wheel
            .insert(word.deadline().min(now + self.ttl), pos as u32);
        self.counts.acquired += 1;
        Outcome::Acquired {
            token,
            word,
            takeover: false,
            slot: pos as u32,
        }
    }

    /// When the wheel should look at an entry with word `w` next. A completed entry: at its
    /// deadline. An in-flight one: at its lease deadline, or sooner if completing it now would
    /// end its window sooner (ttl shorter than the lease), so a completion, which changes only
    /// the word, never leaves the record behind its deadline; once its lease ran out, a window
    /// after that, when it is forgotten.
    #[inline]
    fn record_time(&self, w: Word, now: u64) -> u64 {
        match w.phase() {
            Phase::InFlight if w.deadline() <= now => w.deadline().saturating_add(self.ttl),
            Phase::InFlight => w.deadline().min(now + self.ttl),
            _ => w.deadline(),
        }
    }

    #[inline]
    fn take_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    #[inline(always)]
    fn claim_existing(
        &mut self,
        cell: &ShardCell<V>,
        i: usize,
        fingerprint: u64,
        now: u64,
        lease: Lease,
    ) -> Outcome<V> {
        let w = self.table.word(i);
        if w.is_live(now) {
            let recorded = self.table.fingerprint(i);
            if fingerprint != 0 && recorded != 0 && fingerprint != recorded {
                self.counts.mismatched += 1;
                return Outcome::Mismatch {
                    completed: w.phase() == Phase::Completed,
                };
            }
            return if w.phase() == Phase::InFlight {
                self.counts.in_progress += 1;
                Outcome::InProgress {
                    deadline: w.deadline(),
                }
            } else {
                self.counts.replayed += 1;
                Outcome::Completed {
                    value: self.table.value(i),
                    deadline: w.deadline(),
                }
            };
        }
        self.claim_again(cell, i, w, fingerprint, now, lease)
    }

    /// A claim of the entry in slot `i` (word `w`), released, or whose lease or window ran
    /// out: the entry is reused in place. Its wheel record stays (one per slot) and is filed
    /// again at the new deadline when it fires. Out of line: replays and claims of new keys,
    /// the common cases, stay short.
    #[inline(never)]
    fn claim_again(
        &mut self,
        cell: &ShardCell<V>,
        i: usize,
        w: Word,
        fingerprint: u64,
        now: u64,
        lease: Lease,
    ) -> Outcome<V> {
        let lease_deadline = lease.deadline();
        let takeover = match w.phase() {
            Phase::Vacant => {
                cell.vacant.fetch_sub(1, Ordering::Relaxed);
                self.counts.acquired += 1;
                if w.deadline() > lease_deadline.min(now + self.ttl) {
                    // The record is filed at the released lease's deadline, later than this
                    // life may end: let a capacity check sweep if it comes to that.
                    cell.shortened.store(true, Ordering::Relaxed);
                }
                false
            }
            Phase::InFlight if w.is_lapsed(now, self.ttl) => {
                self.counts.lease_expiries += 1;
                self.counts.takeovers += 1;
                event!("claim takes over a key whose lease ran out");
                if w.deadline().saturating_add(self.ttl) > lease_deadline.min(now + self.ttl) {
                    // The record may have been filed again at the end of the lapsed lease's
                    // window, later than this life may end.
                    cell.shortened.store(true, Ordering::Relaxed);
                }
                true
            }
            Phase::InFlight => {
                // Its lease ran out a whole window ago: forgotten, as a completed key is.
                self.counts.lease_expiries += 1;
                self.counts.acquired += 1;
                false
            }
            Phase::Completed => {
                self.counts.ttl_expiries += 1;
                self.counts.acquired += 1;
                false
            }
        };
        drop(self.table.take_value(i));
        self.table.set_fingerprint(i, fingerprint);
        let token = self.take_token();
        let word = Word::new(Phase::InFlight, token, lease_deadline);
        self.table.slot(i).word.store_exclusive(word);
        Outcome::Acquired {
            token,
            word,
            takeover,
            slot: i as u32,
        }
    }

    /// Finds room for a new key `h` when the shard is at its bound or its table is due for a
    /// rebuild: reclaims what expired, sweeps if needed, grows if needed. Returns the free slot
    /// for `h`, or `None` if the shard holds `bound` live entries.
    #[cold]
    fn make_room(&mut self, cell: &ShardCell<V>, h: &KeyHash, now: u64) -> Option<usize> {
        if self.table.occupied() >= self.bound {
            self.expire(cell, now, usize::MAX);
            // Also the queued entries whose chunk of the queue is not wholly due.
            self.expire_queue_near(cell, now, usize::MAX);
            if self.table.occupied() >= self.bound
                && (cell.vacant.load(Ordering::Relaxed) > 0
                    || cell.shortened.load(Ordering::Relaxed)
                    || cell.lapsed.load(Ordering::Relaxed))
            {
                // Without released keys, and without lapsed leases: not live, they give way to
                // a new key rather than have it refused.
                self.rebuild(cell, now, 0);
            }
            if self.table.occupied() >= self.bound {
                return None;
            }
        }
        if self.table.needs_rebuild() {
            self.rebuild(cell, now, self.ttl);
        } else if self.table.near_rebuild() {
            self.order_spare(cell);
        }
        match self.table.probe(h) {
            Probe::Absent(pos) => Some(pos),
            // Unreachable: the key was absent and the lock was held throughout.
            Probe::Found(_) => None,
        }
    }

    /// The table size a rebuild that keeps `survivors` entries makes: the shard's target load
    /// (0.60 to 0.70), so a table full of live keys grows ~1.4x, within the shard's bound.
    fn rebuild_capacity(&self, survivors: usize) -> usize {
        let wanted = ((survivors + 1) * 100).div_ceil(self.target_load);
        wanted.min(max_capacity(self.bound)).max(MIN_CAPACITY)
    }

    /// The sizes of a table that does for a rebuild that keeps `survivors` entries and would
    /// make `capacity` slots: up to a quarter larger, and smaller down to where the survivors
    /// would fill it to [`MAX_START_LOAD`]. A spare sized for a projection a little off does, and
    /// so does a kept table of about the old size when a shard rebuilds without growing, at its
    /// bound to drop released keys (making a fresh table of the target size would cost
    /// milliseconds of zeroing).
    fn fitting(&self, survivors: usize, capacity: usize) -> (usize, usize) {
        let least = ((survivors + 1) * 100).div_ceil(MAX_START_LOAD);
        (least.min(capacity), capacity + capacity / 4)
    }

    /// Asks the claim that holds the lock to make a spare table for the next rebuild once it
    /// lets go (see [`Chores`]), sized for the entries the table will hold at its rebuild point.
    fn order_spare(&mut self, cell: &ShardCell<V>) {
        self.table.spare_ordered();
        let at_rebuild = self.table.rebuild_at();
        let survivors = at_rebuild.saturating_sub(cell.vacant.load(Ordering::Relaxed));
        let wanted = self.rebuild_capacity(survivors);
        let fits = self.fitting(survivors, wanted);
        // A shard that is not growing (its rebuild drops released keys) asks for a table of its
        // present size where that does, which it may get from the pool instead of new memory.
        let capacity = if (fits.0..=fits.1).contains(&self.table.capacity()) {
            self.table.capacity()
        } else {
            wanted
        };
        self.order = Some(SpareOrder {
            capacity,
            fits,
            old_capacity: self.table.capacity(),
            huge: self.table.huge(),
            generation: self.rebuilds,
        });
    }

    /// Whether a claim left chores for after the lock.
    #[inline(always)]
    pub(crate) fn has_chores(&self) -> bool {
        self.order.is_some() || self.retired.is_some()
    }

    /// Takes the chores a claim left, to run once the lock is released.
    pub(crate) fn take_chores(&mut self) -> Chores<V> {
        Chores {
            retired: self.retired.take(),
            order: self.order.take(),
        }
    }

    /// Keeps `spare`, made for the order of `generation`, for the next rebuild; hands it back
    /// if a rebuild came first (it was made for a table that is gone) or one is already kept.
    pub(crate) fn deliver(&mut self, generation: u64, spare: Spare<V>) -> Option<Spare<V>> {
        if generation != self.rebuilds || self.spare.is_some() {
            return Some(spare);
        }
        self.spare = Some(spare);
        None
    }

    /// Rebuilds the table without its dead entries (keeping leases that ran out less than
    /// `lapse` ms ago: the ttl when it grows, 0 at the bound), sized by
    /// [`Shard::rebuild_capacity`] for the entries held less the released ones, and points the
    /// wheel's records at the entries' new slots. Moves entries into the spare table if one was
    /// made and fits; the old table is left in `retired` for the claim to free after the lock.
    #[cold]
    pub(crate) fn rebuild(&mut self, cell: &ShardCell<V>, now: u64, lapse: u64) {
        let held = self.table.occupied();
        let survivors = held.saturating_sub(cell.vacant.load(Ordering::Relaxed));
        let capacity = self.rebuild_capacity(survivors);
        let (min, max) = self.fitting(survivors, capacity);
        let spare = match self.spare.take() {
            Some(s) if (min..=max).contains(&s.capacity()) => s,
            _ => Spare::new(capacity, self.table.huge(), self.table.capacity()),
        };
        event!(
            held,
            from = self.table.capacity(),
            to = spare.capacity(),
            "shard table rebuilt"
        );
        let Rebuilt {
            table: next,
            moved,
            lease_expiries,
            ttl_expiries,
        } = self.table.rebuild(spare, now, lapse, Some(&cell.help));
        if lapse == 0 {
            cell.lapsed.store(false, Ordering::Relaxed);
        }
        self.counts.lease_expiries += lease_expiries;
        self.counts.ttl_expiries += ttl_expiries;
        let old = std::mem::replace(&mut self.table, next);
        self.rebuilds += 1;
        cell.whereabouts.update(&self.table);
        if cell.shortened.load(Ordering::Relaxed) {
            // Some record sits later than its entry's deadline: file every record afresh.
            self.wheel.clear();
            self.queue.clear();
            for i in 0..self.table.capacity() {
                if self.table.is_occupied(i) {
                    let mut w = self.table.word(i);
                    if w.queued() {
                        // Its record is in the wheel now: unmarked, the entry may be queued
                        // again when the record comes due.
                        w = w.with(Phase::Completed, w.deadline());
                        self.table.slot(i).word.store_exclusive(w);
                    }
                    self.file_in_wheel(cell, i as u32, w, now);
                }
            }
        } else {
            self.wheel.remap(&moved);
            self.queue.remap(&moved);
        }
        // The old table (with the values of dropped entries, whose `Drop` is user code) goes
        // only once the wheel follows the new one, and only after the lock is released.
        let reusable = self.table.capacity() <= old.capacity() + old.capacity() / 4;
        // A table replaced earlier must have gone through the chores (and their grace period
        // for readers outside the lock): dropped here, it would be freed under their feet. Never
        // so: every claim lets go through `ShardCell::unlock`, which takes the chores, and a
        // claim rebuilds at most once (a table rebuilt at its bound starts well below the
        // rebuild point).
        debug_assert!(
            self.retired.is_none(),
            "a replaced table skipped its chores"
        );
        self.retired = Some(Retired {
            table: old,
            moved,
            reusable,
        });
        // The write lock excludes every guard, so these reset exactly.
        cell.vacant.store(0, Ordering::Relaxed);
        cell.shortened.store(false, Ordering::Relaxed);
    }

    /// Reclaims entries whose records are due at `now` (in the wheel, then in the ttl queue),
    /// handling at most `budget` records. Returns the number of entries reclaimed.
    pub(crate) fn expire(&mut self, cell: &ShardCell<V>, now: u64, budget: usize) -> usize {
        let (taken, mut reclaimed) = self.expire_from(cell, now, budget, Due::Wheel);
        reclaimed += self.expire_from(cell, now, budget - taken, Due::Queue).1;
        if reclaimed > 0 && self.spare.is_some() {
            self.return_spare_if_unneeded();
        }
        reclaimed
    }

    /// Whether [`Shard::expire_queue_near`] at `now` would find a record to look at.
    pub(crate) fn has_queued_near(&self, now: u64) -> bool {
        self.queue.is_near(now)
    }

    /// Reclaims entries whose queued records are due at `now` though the rest of their chunk
    /// of the ttl queue is not, filing the chunk's records not yet due in the wheel at their
    /// exact deadlines (see [`TtlQueue::pop_near`]), at most `budget` records. For where the
    /// ttl queue's lateness matters: at the capacity bound, and in maintenance passes.
    pub(crate) fn expire_queue_near(
        &mut self,
        cell: &ShardCell<V>,
        now: u64,
        budget: usize,
    ) -> usize {
        let reclaimed = self.expire_from(cell, now, budget, Due::QueueNear).1;
        if reclaimed > 0 && self.spare.is_some() {
            self.return_spare_if_unneeded();
        }
        reclaimed
    }

    /// Takes up to `budget` records due at `now` from `from` and looks at their entries.
    /// Returns the records taken and the entries reclaimed.
    #[inline]
    fn expire_from(
        &mut self,
        cell: &ShardCell<V>,
        now: u64,
        budget: usize,
        from: Due,
    ) -> (usize, usize) {
        let (mut taken, mut reclaimed) = (0, 0);
        while taken < budget {
            let next = match from {
                Due::Wheel => self.wheel.pop(now),
                Due::Queue => self.queue.pop(now),
                Due::QueueNear => self.queue.pop_near(now),
            };
            let Some(idx) = next else {
                break;
            };
            taken += 1;
            // Due records come in bulk (a wheel slot or a chunk of the queue at a time) and
            // each needs its entry's word, a random access: fetch the entries of the next ones
            // while this one is handled, so their misses overlap instead of following one
            // another.
            let ahead = match from {
                Due::Wheel => self.wheel.due_ahead(EXPIRY_PREFETCH),
                Due::Queue | Due::QueueNear => self.queue.ahead(EXPIRY_PREFETCH),
            };
            if let Some(ahead) = ahead {
                self.table.prefetch_slot(ahead as usize);
            }
            reclaimed += usize::from(self.look_at(cell, idx, now));
        }
        (taken, reclaimed)
    }

    /// Looks at the entry of record `idx`, taken from the wheel or the ttl queue at `now`:
    /// reclaims it if it was released or its deadline has passed (for a lease that ran out, the
    /// window after it: [`Word::is_held`]), files the record again otherwise. Returns whether it
    /// reclaimed the entry.
    #[inline]
    fn look_at(&mut self, cell: &ShardCell<V>, idx: u32, now: u64) -> bool {
        let i = idx as usize;
        if !self.table.is_occupied(i) {
            return false;
        }
        let w = self.table.word(i);
        match w.phase() {
            Phase::Vacant => {
                cell.vacant.fetch_sub(1, Ordering::Relaxed);
            }
            _ if w.is_held(now, self.ttl) => {
                self.file_again(cell, idx, w, now);
                return false;
            }
            Phase::InFlight => self.counts.lease_expiries += 1,
            Phase::Completed => self.counts.ttl_expiries += 1,
        }
        self.table.remove(i);
        true
    }

    /// Files the record `idx` of a held entry with word `w` again: in the ttl queue if the
    /// entry completed and the queue takes it ([`Shard::queue_completed`]), else in the wheel.
    #[inline]
    fn file_again(&mut self, cell: &ShardCell<V>, idx: u32, w: Word, now: u64) {
        if !(w.phase() == Phase::Completed && !w.queued() && self.queue_completed(idx, w, now)) {
            self.file_in_wheel(cell, idx, w, now);
        }
    }

    /// Files the record `idx` of a held entry with word `w` in the wheel, at
    /// [`Shard::record_time`]. A lapsed lease's record goes to the end of the window after it,
    /// where no expiry pass at the bound finds it: the cell then notes that the table may hold
    /// lapsed leases, for a new key at the bound to rebuild without them.
    #[inline]
    fn file_in_wheel(&mut self, cell: &ShardCell<V>, idx: u32, w: Word, now: u64) {
        if w.is_lapsed(now, self.ttl) {
            cell.lapsed.store(true, Ordering::Relaxed);
        }
        self.wheel.insert(self.record_time(w, now), idx);
    }

    /// Puts the record `idx` of an entry completed with word `w` (not yet queued) in the ttl
    /// queue if its window ends more than [`QUEUE_AFTER`] from `now` and the queue takes it,
    /// and marks the word queued, so that the queue can tell this life from a later one.
    /// `false`, and nothing changed, otherwise.
    #[inline]
    fn queue_completed(&mut self, idx: u32, w: Word, now: u64) -> bool {
        if w.deadline().saturating_sub(now) <= QUEUE_AFTER || !self.queue.push(idx, w.deadline()) {
            return false;
        }
        self.table
            .slot(idx as usize)
            .word
            .store_exclusive(w.mark_queued());
        true
    }

    /// Gives back the spare table of a shard that no longer nears its rebuild point: its
    /// entries fell a [`spare_margin`] below the point at which the spare was ordered. Without
    /// tombstones a table's rebuild comes only with growth, so a shard whose live count settled
    /// just under its rebuild point would otherwise hold a spare, up to 1.5 times its table,
    /// for good. The spare goes to the pool after the lock (as a retired table does), where a
    /// shard that needs one of its size may take it; the shard orders one again if it climbs
    /// back.
    #[cold]
    fn return_spare_if_unneeded(&mut self) {
        let at = self.table.rebuild_at();
        if self.retired.is_some() || self.table.occupied() + 2 * spare_margin(at) > at {
            return;
        }
        if let Some(spare) = self.spare.take() {
            let (table, moved) = spare.into_parts();
            self.retired = Some(Retired {
                table,
                moved,
                reusable: true,
            });
            self.table.spare_returned();
        }
    }

    /// The owner's completion of `h`: its word goes from `expected` to `next` (Completed) and
    /// `value` is stored, if the word is still `expected` (no takeover, no expiry since the
    /// owner installed it). Write lock held, so nothing else can change the word meanwhile: a
    /// plain store does, no compare-and-swap. Hands `value` back if the lease was lost, for
    /// the caller to drop after the lock. `slot` is where the claim put or found the entry
    /// (see [`Table::find_from`]). Inlined into both its callers (a call of its own costs one
    /// completion at a time five instructions).
    #[inline(always)]
    pub(crate) fn complete(
        &mut self,
        h: &KeyHash,
        slot: u32,
        expected: Word,
        next: Word,
        value: Option<Arc<V>>,
        now: u64,
    ) -> Result<(), Option<Arc<V>>> {
        let Some(i) = self.table.find_from(h, slot) else {
            return Err(value);
        };
        if self.table.word(i) != expected {
            return Err(value);
        }
        self.table.slot(i).word.store_exclusive(next);
        if let Some(v) = value {
            // The slot's value was taken when the key was (re)acquired: nothing is dropped here.
            self.table.set_value(i, v);
        }
        self.counts.completions += 1;
        self.file_completed(i as u32, next, now);
        Ok(())
    }

    /// Files the record of entry `idx`, completed at `now` with word `w`, at the end of its
    /// window, if the record of its claim is still staged in the wheel (filed at most 32
    /// records of this shard ago, as for most work that completes quickly): into the ttl
    /// queue, or at the window's end in the wheel, rather than at the lease's end, where the
    /// record would come due only to be filed again. That saves a look at the entry, a random
    /// access, per key. A record already filed stays where it is and is filed again when it
    /// comes due ([`Shard::file_again`]).
    ///
    /// The queue refuses no such record of a store's own (one ttl for all keys, a clock that
    /// never runs back: each completion's deadline is the highest yet); the wheel takes one it
    /// would. A window of [`QUEUE_AFTER`] or less is left alone: its claim's record was filed
    /// at most that far ahead of it (at claim time + ttl, sooner than the lease's end), and is
    /// looked at soon anyway.
    #[inline(always)]
    fn file_completed(&mut self, idx: u32, w: Word, now: u64) {
        if w.deadline().saturating_sub(now) <= QUEUE_AFTER {
            return;
        }
        let Some(at) = self.wheel.staged(idx) else {
            return;
        };
        if self.queue_completed(idx, w, now) {
            self.wheel.unstage(at);
        } else {
            self.wheel.restage(at, w.deadline());
        }
    }

    /// The owner's fenced transition of `h` from `expected` to `next`, under the read lock.
    /// Returns the slot on success. `slot` as for [`Shard::complete`].
    #[inline]
    pub(crate) fn transition(
        &self,
        h: &KeyHash,
        slot: u32,
        expected: Word,
        next: Word,
    ) -> Option<usize> {
        let i = self.table.find_from(h, slot)?;
        self.table.slot(i).word.transition(expected, next).ok()?;
        Some(i)
    }
}

#[cfg(all(test, not(idemstore_loom)))]
mod tests {
    use super::*;
    use crate::key::hash_id;

    /// No slot to look in first: `complete` and `transition` probe.
    const NO_HINT: u32 = u32::MAX;

    /// A lease ending at 30 000 ms.
    const LEASE_FROM_0: Lease = Lease {
        from_nanos: 0,
        nanos: 30_000_000_000,
    };

    fn cell(capacity: usize) -> ShardCell<()> {
        ShardCell::new(0, 10_000_000, 86_400_000, capacity, 0, false)
    }

    /// A claim as the store makes it: under the write lock, chores after it.
    fn claim(cell: &ShardCell<()>, id: u128) -> Outcome<()> {
        claim_in(cell, id, &Pool::new())
    }

    /// Claims the keys `ids`, each of which must be new.
    fn claim_new(cell: &ShardCell<()>, ids: std::ops::Range<u128>) {
        for id in ids {
            assert!(
                matches!(claim(cell, id), Outcome::Acquired { .. }),
                "key {id}"
            );
        }
    }

    /// [`claim`] in a store whose pool is `pool`.
    fn claim_in(cell: &ShardCell<()>, id: u128, pool: &Pool<()>) -> Outcome<()> {
        let mut shard = cell.lock.write();
        let outcome = shard.claim(cell, &hash_id(1, id), 0, 1, LEASE_FROM_0);
        cell.unlock(shard, pool);
        outcome
    }

    const DAY: u64 = 86_400_000;

    /// A lease of `ms` from `now` ms, as a claim at `now` asks for it.
    fn lease_at(now: u64, ms: u64) -> Lease {
        Lease {
            from_nanos: now * 1_000_000,
            nanos: ms * 1_000_000,
        }
    }

    /// Claims `id` at `now` ms with a 30 s lease and completes it at once (a day's window), as
    /// a store would, running the claim's expiry work. Returns the completed entry's deadline.
    fn claim_complete(cell: &ShardCell<()>, id: u128, now: u64) -> u64 {
        let h = hash_id(1, id);
        let lease = lease_at(now, 30_000);
        let mut s = cell.lock.write();
        let Outcome::Acquired { word, .. } = s.claim(cell, &h, 0, now, lease) else {
            panic!("key {id} is new");
        };
        let done = word.with(Phase::Completed, now + DAY);
        assert!(s.complete(&h, NO_HINT, word, done, None, now).is_ok());
        now + DAY
    }

    /// Records in the wheel and in the ttl queue.
    fn records(cell: &ShardCell<()>) -> (usize, usize) {
        let s = cell.lock.read();
        (s.wheel.len(), s.queue.len())
    }

    /// A replay outside the lock finds a completed entry's deadline and a time not behind the
    /// shard's; nothing for an in-flight entry, an absent key or an ended window, and nothing
    /// at all while a writer holds the lock; across a rebuild it finds the entries in the new
    /// table.
    #[test]
    fn replays_outside_the_lock_see_the_table_as_the_last_writer_left_it() {
        crate::readers::init();
        let c = cell(1024);
        let read = |id: u128, clock: u64| {
            crate::readers::read(|| c.replay_unlocked::<true>(&hash_id(1, id), || clock))
                .expect("a reader slot")
                .1
        };
        let deadline = claim_complete(&c, 1, 5);
        assert!(matches!(claim(&c, 2), Outcome::Acquired { .. }));
        c.advance_time(&mut c.lock.write(), 5_400_000);
        let (d, now) = read(1, 3_000_000).expect("completed, in place");
        assert_eq!(d, deadline);
        assert_eq!(now, 5_000_000, "never behind the shard's time (5 ms)");
        assert_eq!(read(1, 9_000_000), Some((deadline, 9_000_000)));
        let last = deadline * 1_000_000 - 1;
        assert_eq!(
            read(1, last),
            Some((deadline, last)),
            "the window's last ns"
        );
        assert_eq!(read(1, last + 1), None, "the window ended");
        assert_eq!(read(2, 0), None, "in flight");
        assert_eq!(read(3, 0), None, "absent");
        let w = c.lock.write();
        assert_eq!(read(1, 0), None, "a writer holds the lock");
        drop(w);
        claim_new(&c, 10..5_000);
        assert!(c.lock.read().rebuilds() > 0, "the table was rebuilt");
        assert_eq!(read(1, 0).map(|r| r.0), Some(deadline), "moved");
        c.advance_time(&mut c.lock.write(), deadline * 1_000_000);
        assert_eq!(read(1, 0), None, "the shard's time is past the window");
    }

    #[test]
    fn completed_entries_wait_in_the_ttl_queue_and_expire_at_their_deadlines() {
        let c = cell(1024);
        // 200 keys, one every 10 ms; their lease records come due 30 s on, and find them
        // completed with a day to go: the records move to the ttl queue, none is left in the
        // wheel, and every word is marked.
        let deadlines: Vec<u64> = (0..200)
            .map(|k| claim_complete(&c, k, 1 + k as u64 * 10))
            .collect();
        {
            let mut s = c.lock.write();
            assert_eq!(s.expire(&c, 40_000, usize::MAX), 0);
            assert_eq!((s.wheel.len(), s.queue.len()), (0, 200));
            for k in 0..200 {
                let i = s.table.find(&hash_id(1, k)).expect("held");
                assert!(s.table.word(i).queued(), "key {k}");
            }
        }
        // Maintenance-style passes reclaim exactly the keys whose windows ended, whatever the
        // queue's chunks: at each deadline, that key and not the next.
        for (k, &d) in deadlines.iter().enumerate() {
            let mut s = c.lock.write();
            assert_eq!(
                s.expire(&c, d - 1, usize::MAX) + s.expire_queue_near(&c, d - 1, usize::MAX),
                0,
                "before key {k}'s deadline"
            );
            let reclaimed = s.expire(&c, d, usize::MAX) + s.expire_queue_near(&c, d, usize::MAX);
            assert_eq!(reclaimed, 1, "key {k} at its deadline");
            assert_eq!(s.table.occupied(), 199 - k);
            assert_eq!(
                s.wheel.len() + s.queue.len(),
                199 - k,
                "one record per entry"
            );
        }
        assert_eq!(c.lock.read().counts.ttl_expiries, 200);
    }

    /// The fence under the lock: a completion whose word is no longer the entry's (another
    /// token, a later lease, another phase), or whose key is gone from the slot it names,
    /// writes nothing and hands its value back. The store's deadline check catches stale
    /// guards before this; the fence stands behind it.
    #[test]
    fn a_completion_with_a_stale_word_changes_nothing() {
        let c = cell(1024);
        let h = hash_id(1, 7);
        let mut s = c.lock.write();
        let Outcome::Acquired { word, .. } = s.claim(&c, &h, 0, 1, lease_at(1, 30_000)) else {
            panic!("key 7 is new");
        };
        let records = (s.wheel.len(), s.queue.len());
        let value = Some(Arc::new(()));
        let stale = [
            Word::new(Phase::InFlight, word.token_bits() + 1, word.deadline()),
            Word::new(Phase::InFlight, word.token_bits(), word.deadline() + 1),
            word.with(Phase::Vacant, word.deadline()),
        ];
        for expected in stale {
            let done = expected.with(Phase::Completed, 2 + DAY);
            let back = s.complete(&h, NO_HINT, expected, done, value.clone(), 2);
            assert!(
                matches!(back, Err(Some(_))),
                "{expected:?}: value handed back"
            );
            let i = s.table.find(&h).expect("held");
            assert_eq!(s.table.word(i), word, "{expected:?}: the word is untouched");
            assert_eq!(s.counts.completions, 0);
            assert_eq!((s.wheel.len(), s.queue.len()), records, "no record filed");
        }
        // The right word completes.
        let done = word.with(Phase::Completed, 2 + DAY);
        assert!(s.complete(&h, NO_HINT, word, done, None, 2).is_ok());
        assert_eq!(s.counts.completions, 1);

        // A key reclaimed since its claim, completed with the slot its claim reported.
        let gone = hash_id(1, 9);
        let Outcome::Acquired { word, slot, .. } = s.claim(&c, &gone, 0, 3, lease_at(3, 1)) else {
            panic!("key 9 is new");
        };
        s.expire(&c, 5 + DAY, usize::MAX);
        assert_eq!(s.table.find(&gone), None, "key 9 reclaimed");
        let done = word.with(Phase::Completed, 5 + 2 * DAY);
        let records = (s.wheel.len(), s.queue.len());
        assert!(s.complete(&gone, slot, word, done, None, 5 + DAY).is_err());
        assert_eq!(s.table.find(&gone), None, "nothing written");
        assert_eq!(s.counts.completions, 1);
        assert_eq!((s.wheel.len(), s.queue.len()), records, "no record filed");
    }

    #[test]
    fn a_completion_soon_after_its_claim_files_the_window_at_once() {
        let c = cell(1024);
        // Completed at once: the claim's record is still staged in the wheel, and goes straight
        // to the ttl queue at the window's end, its word marked, instead of waiting in the
        // wheel for the lease's end.
        let d = claim_complete(&c, 1, 1);
        assert_eq!(records(&c), (0, 1));
        {
            let s = c.lock.read();
            let i = s.table.find(&hash_id(1, 1)).expect("held");
            assert!(s.table.word(i).queued());
        }
        // Completed after 40 other claims of the shard: its record was filed in the wheel by
        // then, stays there and moves to the queue when it comes due at the lease's end.
        let h = hash_id(1, 2);
        let mut s = c.lock.write();
        let Outcome::Acquired { word, .. } = s.claim(&c, &h, 0, 2, lease_at(2, 30_000)) else {
            panic!("key 2 is new");
        };
        for k in 100..140 {
            assert!(matches!(
                s.claim(&c, &hash_id(1, k), 0, 3, lease_at(3, 30_000)),
                Outcome::Acquired { .. }
            ));
        }
        let done = word.with(Phase::Completed, 4 + DAY);
        assert!(s.complete(&h, NO_HINT, word, done, None, 4).is_ok());
        assert_eq!((s.wheel.len(), s.queue.len()), (41, 1));
        // The leases of 100..140 run out: those entries are kept a window longer, for a claim
        // to take them over, their records filed again at that window's end.
        assert_eq!(s.expire(&c, 30_003, usize::MAX), 0);
        assert_eq!((s.wheel.len(), s.queue.len()), (40, 2));
        let i = s.table.find(&h).expect("held");
        assert!(s.table.word(i).queued());
        // Both expire at their windows' ends (in maintenance-style passes: the claim path
        // takes a chunk of the queue once all of it is due), and the lapsed leases a window
        // after they ran out.
        for (at, n) in [(d, 1), (4 + DAY, 1), (30_003 + DAY, 40)] {
            let reclaimed = s.expire(&c, at, usize::MAX) + s.expire_queue_near(&c, at, usize::MAX);
            assert_eq!(reclaimed, n, "at {at}");
        }
        assert_eq!(s.table.occupied(), 0);
    }

    #[test]
    fn a_completion_the_queue_refuses_moves_its_staged_record_to_the_windows_end() {
        // Key 1 is queued with a day's window; key 2 completes with half a day (a word made
        // by hand: a store's windows all have its ttl), out of the queue's order. Its record,
        // still staged, moves to the window's end in the wheel: nothing comes due at the
        // lease's end to be filed again, and it expires at its deadline.
        let c = cell(1024);
        let d = claim_complete(&c, 1, 1);
        let h = hash_id(1, 2);
        let mut s = c.lock.write();
        let Outcome::Acquired { word, .. } = s.claim(&c, &h, 0, 2, lease_at(2, 30_000)) else {
            panic!("new key");
        };
        let half = 2 + DAY / 2;
        assert!(s
            .complete(
                &h,
                NO_HINT,
                word,
                word.with(Phase::Completed, half),
                None,
                2
            )
            .is_ok());
        assert_eq!((s.wheel.len(), s.queue.len()), (1, 1));
        assert_eq!(s.expire_from(&c, 30_002, usize::MAX, Due::Wheel), (0, 0));
        assert_eq!(s.expire_from(&c, half - 1, usize::MAX, Due::Wheel).1, 0);
        assert_eq!(s.expire_from(&c, half, usize::MAX, Due::Wheel), (1, 1));
        assert!(s.expire(&c, d, usize::MAX) + s.expire_queue_near(&c, d, usize::MAX) == 1);
        assert_eq!(s.table.occupied(), 0);
    }

    #[test]
    fn a_takeover_completed_at_once_queues_the_record_still_staged_from_the_first_claim() {
        // The first claim's record is still staged when its lease runs out (no expiry work
        // in between); the takeover keeps that one record, and its completion queues it.
        let c = cell(1024);
        let h = hash_id(1, 5);
        let mut s = c.lock.write();
        let Outcome::Acquired { .. } = s.claim(&c, &h, 0, 1, lease_at(1, 30_000)) else {
            panic!()
        };
        assert!(s.wheel.staged(s.table.find(&h).unwrap() as u32).is_some());
        // Lease runs out with no expiry work meanwhile; a takeover at 40 000.
        let Outcome::Acquired { word, takeover, .. } =
            s.claim(&c, &h, 0, 40_000, lease_at(40_000, 30_000))
        else {
            panic!()
        };
        assert!(takeover);
        assert_eq!((s.wheel.len(), s.queue.len()), (1, 0));
        let done = word.with(Phase::Completed, 40_001 + DAY);
        assert!(s.complete(&h, NO_HINT, word, done, None, 40_001).is_ok());
        assert_eq!((s.wheel.len(), s.queue.len()), (0, 1));
        assert_eq!(
            s.expire(&c, 40_001 + DAY - 1, usize::MAX)
                + s.expire_queue_near(&c, 40_001 + DAY - 1, usize::MAX),
            0
        );
        assert_eq!(s.expire(&c, 40_001 + DAY, usize::MAX), 1);
        assert_eq!(s.table.occupied(), 0);
    }

    #[test]
    fn a_released_key_claimed_again_and_completed_at_once_queues_its_staged_record() {
        // Claimed with a 300 s lease and released; claimed again with a 1 s lease (the slot
        // reused in place, with the first claim's staged record) and completed at once: that
        // record goes to the queue at the new window's end, and expires there.
        let c = cell(1024);
        let h = hash_id(1, 5);
        let mut s = c.lock.write();
        let Outcome::Acquired { word, .. } = s.claim(&c, &h, 0, 1, lease_at(1, 300_000)) else {
            panic!()
        };
        drop(s);
        {
            let r = c.lock.read();
            assert!(r
                .transition(&h, NO_HINT, word, word.with(Phase::Vacant, word.deadline()))
                .is_some());
            c.vacant.fetch_add(1, Ordering::Relaxed);
        }
        let mut s = c.lock.write();
        let Outcome::Acquired { word, .. } = s.claim(&c, &h, 0, 2, lease_at(2, 1_000)) else {
            panic!()
        };
        let done = word.with(Phase::Completed, 3 + 10_000);
        assert!(s.complete(&h, NO_HINT, word, done, None, 3).is_ok());
        assert_eq!((s.wheel.len(), s.queue.len()), (0, 1));
        assert_eq!(
            s.expire(&c, 10_003, usize::MAX) + s.expire_queue_near(&c, 10_003, usize::MAX),
            1
        );
    }

    #[test]
    fn claims_reclaim_queued_entries_a_chunk_at_a_time() {
        // Keys 2 s apart: a chunk of the queue takes 64 records (up to 675 s of deadlines, a
        // 128th of the day), then only those within the slack (84 s) of its first.
        let c = cell(1024);
        let deadlines: Vec<u64> = (0..200)
            .map(|k| claim_complete(&c, k, 1 + k as u64 * 2_000))
            .collect();
        c.lock.write().expire(&c, 500_000, usize::MAX);
        assert_eq!(records(&c), (0, 200));
        // The claim path takes the first chunk once all of it is due, its budget of records
        // per claim at a time.
        let mut s = c.lock.write();
        assert!(!s.is_due(deadlines[62]));
        assert!(s.is_due(deadlines[63]));
        let mut reclaimed = 0;
        while s.is_due(deadlines[63]) {
            reclaimed += s.expire(&c, deadlines[63], CLAIM_EXPIRY_BUDGET);
        }
        assert_eq!(reclaimed, 64);
        assert_eq!(s.table.occupied(), 136);
    }

    #[test]
    fn a_key_claimed_again_while_its_old_record_is_queued_keeps_its_new_life() {
        let c = cell(1024);
        let d = claim_complete(&c, 7, 1);
        for k in 100..110 {
            claim_complete(&c, k, 2 + k as u64);
        }
        c.lock.write().expire(&c, 40_000, usize::MAX);
        assert_eq!(records(&c), (0, 11));
        // Key 7's window ends; it is claimed again before any expiry work: the slot is reused
        // in place for the new life (in flight, lease to d + 30 s), its record still queued.
        {
            let mut s = c.lock.write();
            let lease = lease_at(d, 30_000);
            let h = hash_id(1, 7);
            let Outcome::Acquired { word, takeover, .. } = s.claim_key(&c, &h, 0, d, lease) else {
                panic!("the window ended");
            };
            assert!(!takeover && !word.queued());
        }
        // Once the others' windows end, the queue hands out the chunk; key 7's word is not the
        // queued life's, so its record goes to the wheel at the new lease deadline and the
        // entry stays.
        let mut s = c.lock.write();
        let others_end = d + 110;
        assert!(!s.is_due(others_end - 1));
        assert_eq!(s.expire(&c, others_end, usize::MAX), 10);
        assert!(s.table.find(&hash_id(1, 7)).is_some());
        assert_eq!((s.wheel.len(), s.queue.len()), (1, 0));
        // The new lease runs out: kept a window longer (for a claim to take it over), then
        // reclaimed as a lease expiry.
        assert_eq!(s.expire(&c, d + 30_000, usize::MAX), 0);
        assert!(s.table.find(&hash_id(1, 7)).is_some());
        assert_eq!(s.expire(&c, d + 30_000 + DAY, usize::MAX), 1);
        assert!(s.table.find(&hash_id(1, 7)).is_none());
        assert_eq!(s.counts.lease_expiries, 1);
    }

    #[test]
    fn a_rebuild_takes_the_queued_records_along() {
        let c = cell(MIN_CAPACITY);
        let deadlines: Vec<u64> = (0..50)
            .map(|k| claim_complete(&c, k, 1 + k as u64))
            .collect();
        c.lock.write().expire(&c, 40_000, usize::MAX);
        assert_eq!(records(&c), (0, 50));
        // New keys grow the table (rebuilds move the entries); the queue follows them.
        let rebuilds = c.lock.read().rebuilds;
        let mut id = 1_000;
        while c.lock.read().rebuilds < rebuilds + 2 {
            claim_complete(&c, id, 40_000);
            id += 1;
        }
        let mut s = c.lock.write();
        let last = *deadlines.last().unwrap();
        let reclaimed = s.expire(&c, last, usize::MAX) + s.expire_queue_near(&c, last, usize::MAX);
        assert_eq!(reclaimed, 50, "every queued entry, found in its new slot");
        for k in 0..50 {
            assert!(s.table.find(&hash_id(1, k)).is_none());
        }
        assert_eq!(s.table.occupied(), (id - 1_000) as usize);
    }

    #[test]
    fn lapsed_leases_give_way_at_the_bound_after_a_rebuild_filed_them_afresh() {
        // Four keys in a shard of four; their 30 s leases run out. A rebuild that files every
        // record afresh (a lease was shortened) files theirs at the end of the day after their
        // leases, where no expiry pass finds them: a new key at the bound must still get room.
        let c: ShardCell<()> = ShardCell::new(0, 4, DAY, MIN_CAPACITY, 0, false);
        let mut s = c.lock.write();
        for id in 0..4 {
            let out = s.claim(&c, &hash_id(1, id), 0, 1, lease_at(1, 30_000));
            assert!(matches!(out, Outcome::Acquired { .. }));
        }
        c.shortened.store(true, Ordering::Relaxed);
        s.rebuild(&c, 40_000, DAY);
        assert_eq!(
            s.table.occupied(),
            4,
            "lapsed leases are kept for a takeover"
        );
        assert!(!s.is_due(40_000));
        let out = s.claim(&c, &hash_id(1, 9), 0, 40_000, lease_at(40_000, 30_000));
        assert!(matches!(out, Outcome::Acquired { .. }), "{out:?}");
        assert_eq!(s.table.occupied(), 1, "the lapsed leases gave way");
        assert_eq!(s.counts.lease_expiries, 4);
    }

    #[test]
    fn a_shortened_rebuild_leaves_completed_entries_queueable() {
        let c = cell(1024);
        for k in 0..50 {
            claim_complete(&c, k, 1 + k as u64);
        }
        c.lock.write().expire(&c, 40_000, usize::MAX);
        assert_eq!(records(&c), (0, 50));
        // A lease was shortened somewhere: the next rebuild files every record afresh, in the
        // wheel, and unmarks the queued words.
        c.shortened.store(true, Ordering::Relaxed);
        c.lock.write().rebuild(&c, 40_000, 86_400_000);
        assert_eq!(records(&c), (50, 0));
        // Traffic goes on (a claim a minute, abandoned); the 50 records come due early, at
        // their wheel slots' starts, hours before their windows end: back to the queue.
        let mut s = c.lock.write();
        let mut t = 40_000;
        while s.queue.len() < 50 && t < DAY - 10_000 {
            t += 60_000;
            let lease = lease_at(t, 1_000);
            let id = 10_000 + u128::from(t);
            let out = s.claim(&c, &hash_id(1, id), 0, t, lease);
            assert!(matches!(out, Outcome::Acquired { .. }));
            s.expire(&c, t, usize::MAX);
        }
        assert_eq!(s.queue.len(), 50, "back in the ttl queue by {t} ms");
    }

    #[test]
    fn completions_out_of_the_order_of_their_claims_by_up_to_a_lease_are_all_queued() {
        // Two claims a millisecond for 20 s, each completed after a work time of 0 to 20 s
        // (pseudo-random), within its 30 s lease: the lease records come due in the order of
        // the claims, the completed deadlines are up to 20 s out of that order, within a day's
        // slack (84 s). Every record goes to the queue, none is left in the wheel.
        let c = cell(1 << 16);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut pending: Vec<(u64, u128, Word)> = Vec::new();
        let complete_due = |s: &mut Shard<()>, pending: &mut Vec<(u64, u128, Word)>, now| {
            pending.sort_by_key(|p| std::cmp::Reverse(p.0));
            while pending.last().is_some_and(|p| p.0 <= now) {
                let (at, id, w) = pending.pop().unwrap();
                let done = w.with(Phase::Completed, at + DAY);
                assert!(s
                    .complete(&hash_id(1, id), NO_HINT, w, done, None, now)
                    .is_ok());
            }
        };
        for k in 0..40_000u128 {
            let now = 1 + k as u64 / 2;
            let mut s = c.lock.write();
            complete_due(&mut s, &mut pending, now);
            let lease = lease_at(now, 30_000);
            let Outcome::Acquired { word, .. } = s.claim(&c, &hash_id(1, k), 0, now, lease) else {
                panic!("key {k} is new");
            };
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            pending.push((now + rng % 20_000, k, word));
        }
        let mut s = c.lock.write();
        complete_due(&mut s, &mut pending, 40_001);
        s.expire(&c, 60_000, usize::MAX);
        assert_eq!((s.wheel.len(), s.queue.len()), (0, 40_000));
    }

    /// A tiny xorshift generator for the random operations below.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// The wheel's and the queue's records are exactly the occupied slots, one each.
    fn check_records(s: &Shard<()>, ctx: &str) {
        let mut records = s.wheel.all_records();
        records.extend(s.queue.all_records());
        records.sort_unstable();
        let occupied: Vec<u32> = (0..s.table.capacity())
            .filter(|&i| s.table.is_occupied(i))
            .map(|i| i as u32)
            .collect();
        assert_eq!(records, occupied, "one record per entry: {ctx}");
    }

    /// No staged record comes due after its entry's deadline could be (unless a lease was
    /// shortened, which the shard handles with a rebuild).
    fn check_staged(c: &ShardCell<()>, s: &Shard<()>, now: u64, ctx: &str) {
        if c.shortened.load(Ordering::Relaxed) {
            return;
        }
        for (idx, when) in s.wheel.staged_records() {
            let w = s.table.word(idx as usize);
            let bound = match w.phase() {
                // A lapsed lease's record waits for the end of the window after it.
                Phase::InFlight if w.deadline() <= now => w.deadline() + s.ttl,
                Phase::InFlight => w.deadline().min(now + s.ttl),
                _ => w.deadline(),
            };
            assert!(
                when <= bound,
                "staged {idx} at {when} after {bound} ({w:?}): {ctx}"
            );
        }
    }

    /// Entries no claim at `now` would respect: released, or past their deadlines.
    fn dead(s: &Shard<()>, now: u64) -> Vec<(usize, Word)> {
        (0..s.table.capacity())
            .filter(|&i| s.table.is_occupied(i) && !s.table.word(i).is_live(now))
            .map(|i| (i, s.table.word(i)))
            .collect()
    }

    /// Random claims (some completed at once), completions, releases, extends (longer and
    /// shorter), maintenance passes as the store runs them, and clock jumps on one shard.
    /// After every step, one record per entry (wheel and queue together); every refusal comes
    /// with no dead entry in the shard (capacity is exact); maintenance ends and leaves no
    /// completed entry past its window.
    fn random_operations(seed: u64, ttl: u64, bound: usize, keys: u64, max_lease: u64) {
        let c: ShardCell<()> = ShardCell::new(0, bound, ttl, MIN_CAPACITY, 0, false);
        let pool = Pool::new();
        let mut rng = Rng(seed | 1);
        let mut now: u64 = 1;
        // Each guard's word and the slot its claim reported: a hint that rebuilds make stale.
        let mut guards: std::collections::HashMap<u128, (Word, u32)> = Default::default();
        let leases = [1u64, 7, 100, 1_000, 3_000, max_lease];
        let steps = 3_000.max(keys as usize * 12);
        for step in 0..steps {
            let id = u128::from(rng.below(keys));
            let h = hash_id(1, id);
            let op = rng.below(100);
            let ctx = format!("seed {seed} ttl {ttl} step {step} op {op} key {id} at {now}");
            let lease_ms = leases[rng.below(leases.len() as u64) as usize].min(max_lease);
            match op {
                0..=44 => {
                    let lease = lease_at(now, lease_ms);
                    let mut s = c.lock.write();
                    s.advance_time(now * 1_000_000);
                    match s.claim(&c, &h, 0, now, lease) {
                        Outcome::Acquired { word, slot, .. } => {
                            if rng.below(2) == 0 && now < word.deadline() {
                                let done = word.with(Phase::Completed, now + ttl);
                                let hint = if rng.below(2) == 0 { slot } else { NO_HINT };
                                let r = s.complete(&h, hint, word, done, None, now);
                                assert!(r.is_ok(), "{ctx}");
                                guards.remove(&id);
                            } else {
                                guards.insert(id, (word, slot));
                            }
                        }
                        Outcome::Full { .. } => {
                            let d = dead(&s, now);
                            assert!(d.is_empty(), "refused with dead entries {d:?}: {ctx}");
                        }
                        _ => {}
                    }
                    check_records(&s, &ctx);
                    check_staged(&c, &s, now, &ctx);
                    c.unlock(s, &pool);
                }
                45..=54 => {
                    if let Some((word, slot)) = guards.remove(&id).filter(|g| now < g.0.deadline())
                    {
                        let mut s = c.lock.write();
                        let done = word.with(Phase::Completed, now + ttl);
                        let _ = s.complete(&h, slot, word, done, None, now);
                        check_records(&s, &ctx);
                        check_staged(&c, &s, now, &ctx);
                    }
                }
                55..=62 => {
                    if let Some((word, slot)) = guards.remove(&id).filter(|g| now < g.0.deadline())
                    {
                        let s = c.lock.read();
                        let released = word.with(Phase::Vacant, word.deadline());
                        if s.transition(&h, slot, word, released).is_some() {
                            c.vacant.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                63..=67 => {
                    if let Some((word, slot)) =
                        guards.get(&id).copied().filter(|g| now < g.0.deadline())
                    {
                        let s = c.lock.read();
                        let extended = word.with(Phase::InFlight, now + lease_ms);
                        if s.transition(&h, slot, word, extended).is_some() {
                            if extended.deadline() < word.deadline() {
                                c.shortened.store(true, Ordering::Relaxed);
                            }
                            guards.insert(id, (extended, slot));
                        } else {
                            guards.remove(&id);
                        }
                    }
                }
                68..=75 => {
                    // A maintenance pass, as `Store::run_maintenance` runs it.
                    for pass in 0.. {
                        assert!(pass < 1_000_000, "maintenance does not end: {ctx}");
                        let mut s = c.lock.write();
                        s.advance_time(now * 1_000_000);
                        if s.is_due(now) {
                            s.expire(&c, now, 1024);
                        } else if s.has_queued_near(now) {
                            s.expire_queue_near(&c, now, 1024);
                        } else {
                            check_records(&s, &ctx);
                            // Unless a lease was shortened, the only dead entries left are
                            // released ones whose lease has not run out (their records come
                            // due at its end) and lapsed leases within the window after them
                            // (kept for a claim to take over).
                            if !c.shortened.load(Ordering::Relaxed) {
                                for (i, w) in dead(&s, now) {
                                    assert!(
                                        (w.phase() == Phase::Vacant && w.deadline() > now)
                                            || w.is_lapsed(now, s.ttl),
                                        "dead entry {i} {w:?} left after maintenance: {ctx}"
                                    );
                                }
                            }
                            // A released entry reused with a shorter lease may wait for its
                            // old record, by at most the lease (see the crate docs).
                            for (i, w) in dead(&s, now) {
                                assert!(
                                    w.phase() != Phase::Completed
                                        || w.deadline() + max_lease >= now,
                                    "completed entry {i} {w:?} left after maintenance: {ctx}"
                                );
                            }
                            break;
                        }
                        check_records(&s, &ctx);
                        c.unlock(s, &pool);
                    }
                }
                _ => {
                    now += match rng.below(100) {
                        0..=94 => rng.below(4),
                        95..=97 => rng.below(ttl / 8 + 1),
                        98 => rng.below(ttl + 1),
                        _ => ttl + rng.below(max_lease + 1),
                    };
                }
            }
        }
    }

    #[test]
    fn random_operations_keep_one_record_per_entry_and_capacity_exact() {
        // `IDEMSTORE_SHARD_SEEDS` raises the number of seeds (a reviewer ran 3 000).
        let seeds: u64 = std::env::var("IDEMSTORE_SHARD_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        for seed in 1..=seeds {
            // (ttl, bound, keys, longest lease) in ms: short and day-long windows, leases
            // longer than the window, bounds that are reached and bounds that are not.
            for (ttl, bound, keys, max_lease) in [
                (6_000, 24, 40, 3_000),
                (20_000, 40, 80, 10_000),
                (DAY, 40, 80, 30_000),
                (10_000, 12, 16, 40_000),
                (DAY, 300, 400, 300_000),
                (8_000, 300, 500, 2_000),
                (600_000, 1_500, 1_800, 100),
                (DAY, 1_500, 1_600, 1),
            ] {
                random_operations(seed * 7_919 + ttl, ttl, bound, keys, max_lease);
            }
        }
    }

    #[test]
    fn a_table_replaced_by_growth_becomes_part_of_a_larger_spare() {
        let pool = Pool::new();
        // Tables of 2.5 MB and more on huge pages are mappings of their own, which can grow.
        let huge = |capacity| ShardCell::new(0, 10_000_000, 86_400_000, capacity, 0, true);
        let (a, b) = (huge(100_000), huge(110_000));
        let mut id = 0;
        while a.lock.read().rebuilds == 0 {
            assert!(matches!(claim_in(&a, id, &pool), Outcome::Acquired { .. }));
            id += 1;
        }
        if !a.lock.read().table.can_grow() {
            // Not Linux: tables come from the allocator and none is kept.
            assert!(pool.tables.read().is_empty());
            return;
        }
        let kept = pool
            .tables
            .read()
            .iter()
            .map(Table::capacity)
            .collect::<Vec<_>>();
        assert_eq!(kept, [100_000], "the table the growth replaced is kept");
        // `b` (target load 0.6) orders a spare of about 165 000 slots, more than the kept
        // table's 100 000 plus a quarter: the kept table is grown into it.
        let first_b = 1 << 40;
        let mut id = first_b;
        while b.lock.read().spare.is_none() {
            assert!(matches!(claim_in(&b, id, &pool), Outcome::Acquired { .. }));
            id += 1;
        }
        assert!(pool.tables.read().is_empty(), "the kept table was taken");
        let spare = b.lock.read().spare.as_ref().unwrap().capacity();
        assert!(spare > 160_000, "grown to the size ordered: {spare}");
        while b.lock.read().rebuilds == 0 {
            claim_in(&b, id, &pool);
            id += 1;
        }
        let s = b.lock.read();
        assert_eq!(
            s.table.capacity(),
            spare,
            "the rebuild used the grown table"
        );
        assert_eq!(s.table.occupied(), (id - first_b) as usize);
        for k in first_b..id {
            assert!(s.table.find(&hash_id(1, k)).is_some(), "key {k}");
        }
        for k in 0..90_000 {
            assert!(
                s.table.find(&hash_id(1, k)).is_none(),
                "key {k} of the other shard"
            );
        }
        assert_eq!(
            s.wheel.len(),
            (id - first_b) as usize,
            "one record per entry"
        );
    }

    #[test]
    fn a_shard_that_falls_back_from_its_rebuild_point_gives_its_spare_back() {
        let pool = Pool::new();
        let c = cell(8192);
        let mut id = 0;
        while c.lock.read().spare.is_none() {
            assert!(matches!(claim_in(&c, id, &pool), Outcome::Acquired { .. }));
            id += 1;
        }
        let spare = c.lock.read().spare.as_ref().unwrap().capacity();
        // Every lease runs out and its window after it; expiry takes the shard far below its
        // rebuild point.
        let mut s = c.lock.write();
        assert_eq!(s.expire(&c, 40_000, usize::MAX), 0, "lapsed: kept a window");
        assert_eq!(s.expire(&c, 40_000 + DAY, usize::MAX), id as usize);
        assert!(s.spare.is_none(), "the spare is given back");
        assert!(!s.table.near_rebuild());
        c.unlock(s, &pool);
        let kept: Vec<usize> = pool.tables.read().iter().map(Table::capacity).collect();
        assert_eq!(kept, [spare], "to the pool");
        // Climbing back orders a spare again, which comes from the pool.
        while c.lock.read().spare.is_none() {
            assert!(matches!(claim_in(&c, id, &pool), Outcome::Acquired { .. }));
            id += 1;
        }
        assert!(pool.tables.read().is_empty(), "the kept table was taken");
        assert_eq!(c.lock.read().spare.as_ref().unwrap().capacity(), spare);
    }

    #[test]
    fn a_rebuild_moves_entries_into_the_spare_made_outside_the_lock() {
        let c = cell(8192);
        let (rebuild_at, before) = {
            let s = c.lock.read();
            (s.table.rebuild_at(), s.table.capacity())
        };
        let mut spare_capacity = None;
        let mut id = 0;
        while c.lock.read().rebuilds == 0 {
            assert!(matches!(claim(&c, id), Outcome::Acquired { .. }));
            id += 1;
            let s = c.lock.read();
            if s.rebuilds == 0 {
                assert!(s.order.is_none() && s.retired.is_none(), "chores ran");
                if let Some(spare) = &s.spare {
                    spare_capacity.get_or_insert(spare.capacity());
                }
            }
        }
        let spare_capacity = spare_capacity.expect("a spare was made before the rebuild");
        let s = c.lock.read();
        assert!(id as usize > rebuild_at - 512 && id as usize <= rebuild_at + 1);
        assert!(s.spare.is_none() && s.retired.is_none());
        assert_eq!(
            s.table.capacity(),
            spare_capacity,
            "the rebuild used the spare"
        );
        assert!(s.table.capacity() > before);
        assert_eq!(s.table.occupied(), id as usize);
        for k in 0..id {
            assert!(s.table.find(&hash_id(1, k)).is_some(), "key {k}");
        }
        assert_eq!(s.wheel.len(), id as usize, "one record per entry");
    }

    #[test]
    fn a_table_replaced_at_the_same_size_becomes_another_shards_spare() {
        let pool = Pool::new();
        // `b` (target load 0.6, like every shard of index 0) will want about 1.5 times its
        // 5464 slots at its rebuild: about the 8192 slots `a` gives back.
        let (a, b) = (cell(8192), cell(5464));
        claim_new(&a, 0..4000);
        // A rebuild that does not grow the shard (nothing new came in): its old table is kept.
        let mut s = a.lock.write();
        let kept_capacity = s.table.capacity();
        s.rebuild(&a, 1, 86_400_000);
        a.unlock(s, &pool);
        assert_eq!(pool.tables.read().len(), 1);
        assert_eq!(pool.heap_bytes(), pool.tables.read()[0].heap_bytes());
        // Shard `b` grows to its spare point: its spare is that table, emptied.
        let mut id = 1 << 40;
        while b.lock.read().spare.is_none() {
            claim_in(&b, id, &pool);
            id += 1;
        }
        assert!(pool.tables.read().is_empty(), "the kept table was taken");
        let s = b.lock.read();
        let spare = s.spare.as_ref().unwrap();
        assert!(spare.capacity() >= kept_capacity - kept_capacity / 16);
        drop(s);
        // The grown table holds every key of `b` and none of `a`'s.
        while b.lock.read().rebuilds == 0 {
            claim(&b, id);
            id += 1;
        }
        let s = b.lock.read();
        assert_eq!(s.table.occupied(), (id - (1 << 40)) as usize);
        for k in (1 << 40)..id {
            assert!(s.table.find(&hash_id(1, k)).is_some());
        }
        for k in 0..4000 {
            assert!(
                s.table.find(&hash_id(1, k)).is_none(),
                "key {k} of the other shard"
            );
        }
    }

    #[test]
    fn a_shard_that_is_not_growing_orders_a_spare_of_its_present_size() {
        let c = cell(8192);
        claim_new(&c, 0..5000);
        let mut s = c.lock.write();
        // Growing: the projection fills the table to its rebuild point with live entries.
        s.order_spare(&c);
        let growing = s.order.take().unwrap();
        assert!(growing.capacity > 8192 * 5 / 4, "{growing:?}");
        // 3,000 released entries the rebuild will drop: the present 8,192 slots will do.
        c.vacant.store(3000, Ordering::Relaxed);
        s.order_spare(&c);
        let steady = s.order.take().unwrap();
        assert_eq!(steady.capacity, 8192, "{steady:?}");
        assert!((steady.fits.0..=steady.fits.1).contains(&8192));
        c.vacant.store(0, Ordering::Relaxed);
    }

    #[test]
    fn a_shard_at_its_bound_takes_no_spare_its_entries_would_overfill() {
        // 1,000 entries at most: the table is at its largest, 1,344 slots (a load of 0.75).
        let c: ShardCell<()> = ShardCell::new(0, 1000, 86_400_000, 1344, 0, false);
        claim_new(&c, 0..1000);
        let mut s = c.lock.write();
        assert_eq!(s.table.capacity(), 1344);
        // 1,040 slots would start at a load of 0.96, past the rebuild point.
        let generation = s.rebuilds;
        assert!(s
            .deliver(generation, Spare::new(1040, false, 1344))
            .is_none());
        s.rebuild(&c, 1, 86_400_000);
        assert_eq!(
            s.table.capacity(),
            1344,
            "sized for its entries, not the spare"
        );
        assert!(!s.table.needs_rebuild());
    }

    #[test]
    fn a_pool_keeps_a_few_tables_and_hands_out_fitting_ones() {
        let pool: Pool<()> = Pool::new();
        for cap in [1000, 2000, 3000, 4000] {
            assert!(pool.give(Table::new(cap, false)).is_none());
        }
        let displaced = pool.give(Table::new(5000, false)).expect("full");
        assert_eq!(displaced.capacity(), 1000, "the smallest goes");
        assert!(pool.take(2500, 2900, false).is_none(), "no size in range");
        assert!(
            pool.take(3000, 3100, true).is_none(),
            "other huge-page choice"
        );
        assert_eq!(
            pool.take(2900, 3100, false).map(|t| t.capacity()),
            Some(3000)
        );
        assert_eq!(pool.tables.read().len(), 3);
    }

    #[test]
    fn a_spare_for_a_replaced_table_is_handed_back() {
        let c = cell(64);
        let mut s = c.lock.write();
        let generation = s.rebuilds;
        s.rebuild(&c, 1, 86_400_000);
        let late = Spare::new(128, false, 64);
        assert!(s.deliver(generation, late).is_some());
        assert!(s.spare.is_none());
        let current = s.rebuilds;
        assert!(s.deliver(current, Spare::new(128, false, 64)).is_none());
        assert!(
            s.deliver(current, Spare::new(128, false, 64)).is_some(),
            "one at a time"
        );
    }

    #[test]
    fn a_spare_that_does_not_fit_is_not_used() {
        let c = cell(8192);
        claim_new(&c, 0..1000);
        let mut s = c.lock.write();
        let generation = s.rebuilds;
        assert!(s.deliver(generation, Spare::new(16, false, 8192)).is_none());
        s.rebuild(&c, 1, 86_400_000);
        assert!(
            s.table.capacity() >= 1000 * 100 / 70,
            "sized for its entries"
        );
        for id in 0..1000 {
            assert!(s.table.find(&hash_id(1, id)).is_some());
        }
    }
}
