//! A hierarchical timing wheel of expiry records, one per shard, run under the shard's lock.
//!
//! Six levels of 64 slots with a 1 ms tick cover 2^36 ms (2.2 years) at O(1) per record, whether
//! the deadline is one second or one day away (the shape of tokio's timer wheel). A record is just
//! the `u32` slot index of a table entry, 4 bytes, because the entry itself holds the true
//! deadline in its state word. That makes the wheel lazy:
//! - a record is filed at the entry's deadline when the entry is inserted;
//! - completing or extending an entry changes only its word (under the shard lock), not the
//!   wheel, with one exception: new records wait in a small stage before they are filed in
//!   batches, and a completion that finds its claim's record still there (the claim came at most
//!   32 records ago) moves it to the window's end, or the shard hands it to its ttl queue, so
//!   the record of a quickly completed claim never comes due at the lease's end;
//! - when a record comes due, the shard re-reads the entry's deadline: if it has passed, the entry
//!   is reclaimed (an in-flight entry whose lease ran out is kept for a takeover until the window
//!   after its lease ends, its record filed again there); if not, the record is filed again at
//!   the true deadline. Filing again from a
//!   higher level into a lower one is the cascade, so each record costs O(levels) in all.
//!
//! The shard keeps exactly one record per occupied slot (following the entries when the table is
//! rebuilt), here or, for a completed entry whose window ends far ahead, in the shard's ttl queue
//! (see `queue`): the wheel and the queue hold as many records as the table holds entries.

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Records further out than this are filed in the top level's ring and filed again when due.
const MAX_SPAN: u64 = 1 << (SLOT_BITS * LEVELS as u32);

/// A record waiting in the stage, with its time: one line holds four, so a claim and its
/// completion touch one line of the stage, not one of times and one of indexes.
#[derive(Clone, Copy, Debug)]
struct StagedRecord {
    when: u64,
    idx: u32,
}

/// A lock-free-of-its-own timing wheel; every method takes `&mut self` under the shard lock.
///
/// In this order (`repr(C)`; see `Shard`): the staged records first, the fields every claim
/// reads or writes last.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Wheel {
    /// New records, filed into their slots in batches. Filing one means following three
    /// pointers (level, slot vector, its tail) that the table's random traffic keeps pushing out
    /// of cache and out of the TLB; a claim only appends here, to memory inside the shard.
    stage: [StagedRecord; STAGE],
    levels: Box<[Level]>,
    /// Records whose time has come, waiting for the shard to check them, handed out in the
    /// order they were filed: for a slot's records that is about the order of their
    /// deadlines, which the shard's ttl queue (see `queue`) relies on to take them in.
    due: Vec<u32>,
    /// The tick (ms) up to which slots have been taken.
    elapsed: u64,
    /// How many records of `due` were handed out.
    due_next: usize,
    /// The earliest tick at which a slot or a staged record may come due (a lower bound;
    /// `u64::MAX` if none).
    next_at: u64,
    records: usize,
    staged: usize,
}

/// Records staged before they are filed in a batch.
const STAGE: usize = 32;

/// The place of a record among the staged ones ([`Wheel::staged`]), valid until the wheel
/// changes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Staged(usize);

#[derive(Debug)]
struct Level {
    /// Bit `i` set iff `slots[i]` is not empty.
    occupied: u64,
    slots: Box<[Vec<u32>]>,
}

impl Wheel {
    pub(crate) fn new(now: u64) -> Self {
        Self {
            elapsed: now,
            next_at: u64::MAX,
            levels: (0..LEVELS)
                .map(|_| Level {
                    occupied: 0,
                    slots: (0..SLOTS).map(|_| Vec::new()).collect(),
                })
                .collect(),
            due: Vec::new(),
            due_next: 0,
            records: 0,
            stage: [StagedRecord { when: 0, idx: 0 }; STAGE],
            staged: 0,
        }
    }

    /// Records held, due or not.
    #[cfg(all(test, not(idemstore_loom)))]
    pub(crate) fn len(&self) -> usize {
        self.records
    }

    /// Every record held: filed, due and not handed out, staged.
    #[cfg(all(test, not(idemstore_loom)))]
    pub(crate) fn all_records(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self
            .levels
            .iter()
            .flat_map(|l| l.slots.iter().flatten().copied())
            .collect();
        all.extend_from_slice(&self.due[self.due_next..]);
        all.extend(self.stage[..self.staged].iter().map(|r| r.idx));
        assert_eq!(all.len(), self.records);
        all
    }

    /// The staged records and their times.
    #[cfg(all(test, not(idemstore_loom)))]
    pub(crate) fn staged_records(&self) -> Vec<(u32, u64)> {
        (0..self.staged)
            .map(|k| (self.stage[k].idx, self.stage[k].when))
            .collect()
    }

    /// Files record `idx` to come due at tick `when`.
    #[inline]
    pub(crate) fn insert(&mut self, when: u64, idx: u32) {
        self.records += 1;
        if self.staged == STAGE {
            self.file_staged();
        }
        self.stage[self.staged] = StagedRecord { when, idx };
        self.staged += 1;
        // A record is never due before its own time, which is at or after its slot's start.
        self.next_at = self.next_at.min(when);
    }

    /// Where record `idx` waits among the staged records (filed moments ago, not yet in a
    /// slot), searching from the newest; `None` if it is not staged.
    #[inline]
    pub(crate) fn staged(&self, idx: u32) -> Option<Staged> {
        self.stage[..self.staged]
            .iter()
            .rposition(|r| r.idx == idx)
            .map(Staged)
    }

    /// Moves the staged record at `at` to come due at tick `when` instead.
    #[inline]
    pub(crate) fn restage(&mut self, at: Staged, when: u64) {
        self.stage[at.0].when = when;
        self.next_at = self.next_at.min(when);
    }

    /// Takes the staged record at `at` out of the wheel, for the caller to keep elsewhere.
    /// The records staged after it keep their order.
    #[inline]
    pub(crate) fn unstage(&mut self, at: Staged) {
        let n = self.staged;
        if at.0 + 1 < n {
            // Not the newest (it mostly is: a claim completed at once).
            self.stage.copy_within(at.0 + 1..n, at.0);
        }
        self.staged = n - 1;
        self.records -= 1;
    }

    /// When the first staged record is due (`u64::MAX` if none is staged).
    fn staged_low(&self) -> u64 {
        self.stage[..self.staged]
            .iter()
            .map(|r| r.when)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Files every staged record into its slot. Records staged together mostly share a slot
    /// (claims close in time get deadlines close in time), so they are filed in runs: one
    /// lookup of the slot and one copy per run.
    #[cold]
    fn file_staged(&mut self) {
        let n = std::mem::take(&mut self.staged);
        let mut k = 0;
        while k < n {
            let first = self.stage[k].when;
            let place = self.place(first);
            let mut end = k + 1;
            while end < n && self.shares_place(first, place, self.stage[end].when) {
                end += 1;
            }
            let run = self.stage[k..end].iter().map(|r| r.idx);
            match place {
                None => {
                    if self.due_next == self.due.len() {
                        // All handed out: start the buffer over rather than grow it.
                        self.due.clear();
                        self.due_next = 0;
                    }
                    self.due.extend(run);
                }
                Some((level, slot)) => {
                    let lvl = &mut self.levels[level];
                    let records = &mut lvl.slots[slot];
                    if records.capacity() - records.len() < run.len() {
                        // Grow by a quarter, not double: a slot can hold millions of records,
                        // and the slack is memory every live entry pays for. (Large
                        // reallocations are remapped, not copied, by the system allocator.)
                        records.reserve_exact((records.capacity() / 4).max(run.len()).max(16));
                    }
                    records.extend(run);
                    lvl.occupied |= 1 << slot;
                }
            }
            k = end;
        }
    }

    /// Whether a record due at `when` is filed where one due at `first` is (`place` is
    /// `self.place(first)`), cheaper than `place` itself. A time that agrees with `first` on
    /// every bit from the level's slot bits up differs from `elapsed` first in the same bit, so
    /// it lands on the same level (or is clamped to the top level with it) and in the same slot.
    /// (Two top-level times a wheel's turn apart share a slot but not this test: harmless, the
    /// caller only files them in two runs.)
    #[inline]
    fn shares_place(&self, first: u64, place: Option<(usize, usize)>, when: u64) -> bool {
        match place {
            None => when <= self.elapsed,
            Some((level, _)) => {
                let shift = SLOT_BITS * level as u32;
                when >> shift == first >> shift
            }
        }
    }

    /// Where a record due at `when` is filed: `None` for due now, else (level, slot).
    #[inline]
    fn place(&self, when: u64) -> Option<(usize, usize)> {
        if when <= self.elapsed {
            return None;
        }
        let level = level_for(self.elapsed, when);
        let shift = SLOT_BITS * level as u32;
        Some((level, ((when >> shift) as usize) & (SLOTS - 1)))
    }

    /// Whether `pop` at `now` could return a record: a cheap test for the claim path.
    #[inline]
    pub(crate) fn is_due(&self, now: u64) -> bool {
        self.due_next < self.due.len() || self.next_at <= now
    }

    /// The record `k` places after the next one [`Wheel::pop`] hands back from the records
    /// already due, if there are that many: expiry prefetches its entry.
    #[inline]
    pub(crate) fn due_ahead(&self, k: usize) -> Option<u32> {
        self.due.get(self.due_next + k).copied()
    }

    /// Hands back the next record whose slot time is at or before `now`, or `None`. The caller
    /// either reclaims the entry or files the record again with [`Wheel::insert`].
    pub(crate) fn pop(&mut self, now: u64) -> Option<u32> {
        loop {
            if let Some(&idx) = self.due.get(self.due_next) {
                self.due_next += 1;
                self.records -= 1;
                return Some(idx);
            }
            if self.next_at > now {
                return None;
            }
            // Staged records stay staged until one is due, or a slot is (they may belong in it
            // or before it): the record of a claim made just before this call (which runs the
            // claim's expiry work) stays where its completion can find it ([`Wheel::staged`]).
            let next = self.next_expiration();
            if self.staged > 0
                && (self.staged_low() <= now || next.is_some_and(|(_, _, at)| at <= now))
            {
                self.file_staged();
                continue;
            }
            match next {
                Some((level, slot, deadline)) if deadline <= now => {
                    self.elapsed = deadline;
                    let lvl = &mut self.levels[level];
                    lvl.occupied &= !(1 << slot);
                    // Every record of `due` was handed out. Take the slot's vector whole and
                    // leave the slot with none: an emptied slot must not keep a large buffer
                    // alive.
                    self.due = std::mem::take(&mut lvl.slots[slot]);
                    self.due_next = 0;
                }
                Some((_, _, deadline)) => {
                    self.elapsed = self.elapsed.max(now);
                    self.next_at = deadline.min(self.staged_low());
                    return None;
                }
                None => {
                    self.elapsed = self.elapsed.max(now);
                    self.next_at = self.staged_low();
                    return None;
                }
            }
        }
    }

    /// Drops every record, keeping the clock position, for a rebuild that files them afresh.
    pub(crate) fn clear(&mut self) {
        for lvl in self.levels.iter_mut() {
            lvl.occupied = 0;
            for s in lvl.slots.iter_mut() {
                *s = Vec::new();
            }
        }
        self.due = Vec::new();
        self.due_next = 0;
        self.records = 0;
        self.staged = 0;
        self.next_at = u64::MAX;
    }

    /// Points every record at its entry's new slot after a table rebuild (`moved[old]`), and
    /// drops the records of entries the rebuild dropped (`moved[old] == u32::MAX`). Each record
    /// keeps its time, so this costs one pass over the records, with no refiling.
    pub(crate) fn remap(&mut self, moved: &[u32]) {
        let follow = |r: &mut u32| match moved.get(*r as usize) {
            Some(&to) if to != u32::MAX => {
                *r = to;
                true
            }
            _ => false,
        };
        let mut records = 0;
        for lvl in self.levels.iter_mut() {
            for (slot, list) in lvl.slots.iter_mut().enumerate() {
                list.retain_mut(follow);
                if list.is_empty() {
                    lvl.occupied &= !(1 << slot);
                    *list = Vec::new();
                }
                records += list.len();
            }
        }
        self.due.drain(..self.due_next);
        self.due_next = 0;
        self.due.retain_mut(follow);
        let mut kept = 0;
        for k in 0..self.staged {
            let mut r = self.stage[k];
            if follow(&mut r.idx) {
                self.stage[kept] = r;
                kept += 1;
            }
        }
        self.staged = kept;
        self.records = records + self.due.len() + kept;
    }

    /// Heap bytes held by the wheel's record vectors and slot arrays.
    pub(crate) fn heap_bytes(&self) -> usize {
        let per_level = SLOTS * std::mem::size_of::<Vec<u32>>();
        let records: usize = self
            .levels
            .iter()
            .flat_map(|l| l.slots.iter())
            .map(|s| s.capacity())
            .sum::<usize>()
            + self.due.capacity();
        LEVELS * (per_level + std::mem::size_of::<Level>()) + records * 4
    }

    /// The earliest occupied slot: (level, slot, start tick). Lower levels are always earlier,
    /// because level `l` holds only records in the same 64^(l+1)-tick block as `elapsed`.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        let now = self.elapsed;
        for (level, lvl) in self.levels.iter().enumerate() {
            if lvl.occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS * level as u32;
            let slot_range = 1u64 << shift;
            let level_range = slot_range << SLOT_BITS;
            let now_slot = ((now >> shift) as usize) & (SLOTS - 1);
            // On the top level, a record in `now_slot` itself belongs to a later rotation (one
            // due in this rotation's current slot would share the top bits with `elapsed` and
            // sit on a lower level), so the search starts one slot on; every slot up to and
            // including `now_slot` is then one rotation ahead.
            let from = if level == LEVELS - 1 {
                (now_slot + 1) % SLOTS
            } else {
                now_slot
            };
            let slot =
                (lvl.occupied.rotate_right(from as u32).trailing_zeros() as usize + from) % SLOTS;
            let level_start = now & !(level_range - 1);
            let mut deadline = level_start + slot as u64 * slot_range;
            if deadline <= now && level == LEVELS - 1 {
                // The top level is a ring: a slot "behind" now is one rotation ahead.
                deadline += level_range;
            }
            return Some((level, slot, deadline));
        }
        None
    }
}

/// The level for a record due at `when`, seen from `elapsed`: the level of the highest bit in
/// which the two differ (tokio's `level_for`).
#[inline]
fn level_for(elapsed: u64, when: u64) -> usize {
    let mut masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    if masked >= MAX_SPAN {
        masked = MAX_SPAN - 1;
    }
    let significant = 63 - masked.leading_zeros() as usize;
    significant / SLOT_BITS as usize
}

#[cfg(all(test, not(idemstore_loom)))]
mod tests {
    use super::*;

    /// `shares_place` never puts two records of different places in one run: random elapsed
    /// times and record times of all magnitudes, near each other and near the levels' and the
    /// span's edges (a helper's review, ninth session).
    #[test]
    fn records_that_share_a_place_by_the_quick_test_share_it_by_place() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut w = Wheel::new(0);
        let mut checked = 0u64;
        for _ in 0..2_000_000 {
            let e = next() >> (next() % 64);
            w.elapsed = e;
            let pick = |r: u64, r2: u64| -> u64 {
                match r % 4 {
                    0 => e.wrapping_add(r2 >> (r2 % 64)),
                    1 => e.wrapping_sub(r2 >> (r2 % 64)),
                    2 => e ^ (1u64 << (r2 % 64)) ^ (r2 >> 58),
                    _ => r2 >> (r2 % 64),
                }
            };
            let (r1, r2, r3, r4) = (next(), next(), next(), next());
            let first = pick(r1, r2);
            let mut x = pick(r3, r4);
            if r3 & 1 == 0 {
                // A time sharing `first`'s high bits.
                let k = (r4 % 64) as u32;
                let mask = if k == 0 { 0 } else { (1u64 << k) - 1 };
                x = (first & !mask) | (r4 & mask);
            }
            let place = w.place(first);
            if w.shares_place(first, place, x) {
                checked += 1;
                assert_eq!(
                    w.place(x),
                    place,
                    "elapsed {e:#x} first {first:#x} x {x:#x}"
                );
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    /// Pops everything due at `now`, re-filing records whose true deadline (from `deadlines`)
    /// is still ahead, as the shard does. Returns the records that fired.
    fn fire(w: &mut Wheel, now: u64, deadlines: &[u64]) -> Vec<u32> {
        let mut fired = Vec::new();
        while let Some(idx) = w.pop(now) {
            let d = deadlines[idx as usize];
            if d <= now {
                fired.push(idx);
            } else {
                w.insert(d, idx);
            }
        }
        fired.sort_unstable();
        fired
    }

    #[test]
    fn levels_by_distance() {
        assert_eq!(level_for(0, 1), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(0, 4095), 1);
        assert_eq!(level_for(0, 4096), 2);
        assert_eq!(level_for(0, 86_400_000), 4);
        assert_eq!(level_for(0, MAX_SPAN * 4), LEVELS - 1);
    }

    #[test]
    fn fires_exactly_at_the_deadline_on_every_level() {
        let deadlines = [5, 64, 70, 4_100, 300_000, 86_400_000, 40_000_000_000];
        let mut w = Wheel::new(0);
        for (i, &d) in deadlines.iter().enumerate() {
            w.insert(d, i as u32);
        }
        assert_eq!(w.len(), deadlines.len());
        for (i, &d) in deadlines.iter().enumerate() {
            assert!(
                fire(&mut w, d - 1, &deadlines).is_empty(),
                "early at {}",
                d - 1
            );
            assert_eq!(fire(&mut w, d, &deadlines), vec![i as u32]);
        }
        assert_eq!(w.len(), 0);
        assert!(!w.is_due(u64::MAX - 1));
    }

    #[test]
    fn cascades_when_time_jumps() {
        let mut deadlines = vec![];
        let mut w = Wheel::new(1_000);
        for i in 0..1_000u32 {
            let d = 1_000 + u64::from(i) * 97 + 1;
            deadlines.push(d);
            w.insert(d, i);
        }
        // Jump half way: exactly the records due by then fire.
        let mid = 1_000 + 500 * 97;
        let fired = fire(&mut w, mid, &deadlines);
        assert_eq!(fired, (0..500).collect::<Vec<_>>());
        let fired = fire(&mut w, u64::MAX / 2, &deadlines);
        assert_eq!(fired, (500..1_000).collect::<Vec<_>>());
    }

    #[test]
    fn lazy_records_follow_a_moved_deadline() {
        // Filed at a lease deadline of 30 s; the entry completed with a 24 h window meanwhile.
        let mut deadlines = vec![30_000];
        let mut w = Wheel::new(0);
        w.insert(30_000, 0);
        deadlines[0] = 86_400_000;
        assert!(fire(&mut w, 30_000, &deadlines).is_empty());
        assert_eq!(w.len(), 1, "the record was filed again");
        assert!(fire(&mut w, 86_399_999, &deadlines).is_empty());
        assert_eq!(fire(&mut w, 86_400_000, &deadlines), vec![0]);
    }

    #[test]
    fn a_slots_records_come_out_in_the_order_they_were_filed() {
        // 100 records of one level-2 slot (4 096 ms wide, from 8 192 ms), filed in the order of
        // their times as claims file them: the slot comes due whole at its start, and hands its
        // records out in that order (the ttl queue takes completed entries in about the order
        // of their deadlines).
        let mut w = Wheel::new(0);
        for i in 0..100u32 {
            w.insert(8_192 + u64::from(i) * 10, i);
        }
        assert_eq!(w.pop(8_191), None);
        let order: Vec<u32> = std::iter::from_fn(|| w.pop(8_192)).collect();
        assert_eq!(order, (0..100).collect::<Vec<_>>());
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_remap_amid_a_due_slot_keeps_the_rest_once_in_order() {
        let mut w = Wheel::new(0);
        for i in 0..100u32 {
            w.insert(8_192 + u64::from(i), i);
        }
        let first: Vec<u32> = (0..10).map(|_| w.pop(8_192).unwrap()).collect();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        // A rebuild drops the odd entries and moves the rest to i + 1000.
        let moved: Vec<u32> = (0..100u32)
            .map(|i| if i % 2 == 1 { u32::MAX } else { i + 1000 })
            .collect();
        w.remap(&moved);
        assert_eq!(w.len(), 45);
        // Due at once: handed out after the rest.
        w.insert(0, 7);
        let rest: Vec<u32> = std::iter::from_fn(|| w.pop(8_192)).collect();
        let mut want: Vec<u32> = (10..100).step_by(2).map(|i| i + 1000).collect();
        want.push(7);
        assert_eq!(rest, want);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn staged_records_stay_staged_until_they_may_be_due() {
        let mut w = Wheel::new(0);
        w.insert(30_000, 1);
        w.insert(30_000, 2);
        w.insert(20_000, 3);
        // A pop with nothing due (a claim's expiry work) leaves them staged, where their
        // completions can find them.
        assert_eq!(w.pop(10_000), None);
        w.unstage(w.staged(1).expect("still staged"));
        assert!(w.staged(1).is_none());
        w.restage(w.staged(2).expect("still staged"), 50_000);
        assert_eq!(w.len(), 2);
        assert_eq!(w.pop(19_999), None);
        assert_eq!(w.pop(20_000), Some(3));
        assert_eq!(w.pop(30_000), None, "record 2 was moved on");
        assert_eq!(w.pop(50_000), Some(2));
        assert_eq!((w.pop(u64::MAX - 1), w.len()), (None, 0));
    }

    #[test]
    fn past_deadlines_are_due_at_once() {
        let mut w = Wheel::new(100);
        w.insert(50, 1);
        assert!(w.is_due(100));
        assert_eq!(w.pop(100), Some(1));
        assert_eq!(w.pop(100), None);
    }

    #[test]
    fn remap_follows_moved_entries_and_drops_the_rest() {
        let mut w = Wheel::new(0);
        w.insert(10, 0);
        w.insert(5_000, 1);
        w.insert(90_000, 2);
        // Entry 0 moved to slot 7, entry 1 was dropped, entry 2 moved to slot 3.
        w.remap(&[7, u32::MAX, 3]);
        assert_eq!(w.len(), 2);
        let mut deadlines = vec![0; 8];
        deadlines[7] = 10;
        deadlines[3] = 90_000;
        assert_eq!(fire(&mut w, 10, &deadlines), vec![7]);
        assert!(fire(&mut w, 89_999, &deadlines).is_empty());
        assert_eq!(fire(&mut w, 90_000, &deadlines), vec![3]);
        w.insert(95_000, 1);
        w.clear();
        assert_eq!(w.len(), 0);
        assert_eq!(w.pop(u64::MAX - 1), None);
    }

    #[test]
    fn top_level_ring_never_hides_a_due_record() {
        // Found by the fuzzer: record 0 due at MAX_SPAN (10 years, past the ring's 2.2-year
        // span) and record 1, filed later, due 10 years after that, which lands in the ring
        // slot that is current when record 0 comes due. Record 0 must fire on time.
        let ten_years = 315_360_000_000u64;
        let mut deadlines = vec![ten_years, 2 * ten_years];
        let mut w = Wheel::new(0);
        w.insert(deadlines[0], 0);
        assert!(fire(&mut w, ten_years - 1, &deadlines).is_empty());
        w.insert(deadlines[1], 1);
        assert_eq!(fire(&mut w, ten_years, &deadlines), vec![0]);
        deadlines[0] = u64::MAX;
        assert!(fire(&mut w, 2 * ten_years - 1, &deadlines).is_empty());
        assert_eq!(fire(&mut w, 2 * ten_years, &deadlines), vec![1]);
    }

    #[test]
    fn idle_wheel_skips_ahead_cheaply() {
        let mut w = Wheel::new(0);
        w.insert(10, 0);
        assert_eq!(w.pop(1_000_000_000), Some(0));
        assert_eq!(w.pop(1_000_000_000), None);
        // New records are filed relative to the new position.
        w.insert(1_000_000_005, 1);
        assert_eq!(w.pop(1_000_000_004), None);
        assert_eq!(w.pop(1_000_000_005), Some(1));
    }
}
