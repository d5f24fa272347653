//! The ttl queue: the expiry records of completed entries with a long way to go, in the order of
//! their deadlines, one per shard beside its timing wheel, run under the shard's lock.
//!
//! Every completed entry of a store ends its window `ttl` after it completed, and a shard's
//! clock never runs backwards, so the deadlines of a shard's completed entries arrive nearly in
//! order. The wheel files a record by its distance: a record a day out enters at the wheel's
//! fifth level and is filed again at every level below on its way down, each time re-reading
//! its entry's state word, a random memory access. In this queue it waits in line instead, and
//! its entry is read once more, when it expires: a 24 h window then costs about what a 1 s one
//! does (see the README's performance section, and `docs/performance-history.md` for the
//! measurements).
//!
//! The queue takes a record when its entry's deadline is at least the highest deadline it took
//! so far less the queue's slack, a 1024th of the window (84 s for a day; [`MIN_SLACK`] at
//! least). The records come due in the wheel in the order the claims were made, at their lease
//! deadlines, and the entries completed in another order, each when its work was done: the
//! slack takes in work times that differ by up to that much, so with a day's window it takes
//! every record whose entry completed within the default 30 s lease (a later completion is
//! refused). The shard files a record the queue refuses in the wheel. A completion that comes
//! soon after its claim, while the claim's record is still staged in the wheel (see `wheel`),
//! queues the record itself, at once: its deadline is then the completion time + ttl, in the
//! order of the completions, and the entry is never read at its lease's end.
//!
//! Records sit in chunks of consecutive deadlines; the claim path takes a chunk's records once
//! its latest deadline has passed, so a record is reclaimed at most two slacks late (under load),
//! up to a 128th of the window when completions are rare: a few minutes of a day.
//! Where lateness matters, at the capacity bound and in maintenance passes, the shard takes the
//! records of every chunk that may hold one due ([`TtlQueue::pop_near`]) and files those not
//! yet due in the wheel, at their exact deadlines.
//!
//! As in the wheel, a record is the `u32` slot index of its entry and the entry's word holds the
//! truth: a word marked queued (see `state`) is the life whose record was queued; a word without
//! the mark belongs to a later life of the key (its slot was reused after the queued deadline
//! passed), whose record is then due at once.

use std::collections::VecDeque;

/// The least slack (ms): how far below the highest deadline queued so far a record may be and
/// still be queued.
pub(crate) const MIN_SLACK: u64 = 64;
/// A chunk spans up to the slack once it holds this many records; until then (rare
/// completions) up to the queue's `stretch`.
const MIN_CHUNK: u32 = 64;

/// A run of consecutive records of the queue. In this order (`repr(C)`; see `TtlQueue`): what
/// a record that joins it changes first.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Chunk {
    /// Records left in the chunk.
    len: u32,
    /// Every record of the chunk is due at this.
    high: u64,
    /// No record of the chunk is due before this.
    low: u64,
    /// The deadline of its first record: later records within the slack of it join it.
    first: u64,
}

impl Chunk {
    /// No chunk: an empty tail.
    const NONE: Chunk = Chunk {
        len: 0,
        first: 0,
        low: 0,
        high: 0,
    };
}

/// The records of a shard's completed entries in about the order of their deadlines.
///
/// In this order (`repr(C)`; see `Shard`): what every claim reads, then what a completion
/// writes (the highest deadline, the records' count, the newest chunk's count and ends), in a
/// line of their own but for the newest chunk's start, which changes once per chunk. (While
/// all of a shard's records fit one chunk, in the first slack of its life, completions move
/// `due_at` too.)
#[derive(Debug)]
#[repr(C)]
pub(crate) struct TtlQueue {
    /// The first chunk's `high` (`u64::MAX` if none), kept here so that the claim path's test
    /// reads no memory outside the shard.
    due_at: u64,
    /// How far below `highest` a deadline may be and still be queued (ms).
    slack: u64,
    /// The most ms of deadlines a chunk of fewer than [`MIN_CHUNK`] records spans.
    stretch: u64,
    /// The highest deadline queued so far.
    highest: u64,
    records: VecDeque<u32>,
    /// The newest chunk, the one records join (none while `len` is 0), kept here rather than
    /// at the back of `chunks`: a completion then writes one line of the heap, the records'
    /// tail, not two.
    tail: Chunk,
    /// The older chunks, oldest first: all of them come before `tail`.
    chunks: VecDeque<Chunk>,
}

/// Chunk `k` of a queue whose older chunks are `chunks` and newest `tail` (`k ==
/// chunks.len()`), for a pass over all of them in order.
fn nth<'a>(chunks: &'a mut VecDeque<Chunk>, tail: &'a mut Chunk, k: usize) -> &'a mut Chunk {
    if k < chunks.len() {
        &mut chunks[k]
    } else {
        tail
    }
}

impl TtlQueue {
    /// An empty queue for a store whose window is `ttl` ms: a slack of a 1024th of it, and
    /// chunks that span at most a 128th of it.
    pub(crate) fn new(ttl: u64) -> Self {
        let slack = (ttl / 1024).max(MIN_SLACK);
        Self {
            records: VecDeque::new(),
            chunks: VecDeque::new(),
            tail: Chunk::NONE,
            highest: 0,
            due_at: u64::MAX,
            slack,
            stretch: (ttl / 128).max(slack),
        }
    }

    /// Records held.
    #[cfg(all(test, not(idemstore_loom)))]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Every record held, checking that the chunks account for them all.
    #[cfg(all(test, not(idemstore_loom)))]
    pub(crate) fn all_records(&self) -> Vec<u32> {
        let in_chunks: usize = self
            .chunks
            .iter()
            .chain([&self.tail])
            .map(|c| c.len as usize)
            .sum();
        assert!(
            self.chunks.iter().all(|c| c.len > 0),
            "no empty chunk but the tail"
        );
        assert!(
            self.tail.len > 0 || self.chunks.is_empty(),
            "the newest chunk is the tail"
        );
        assert_eq!(self.due_at, self.front().map_or(u64::MAX, |c| c.high));
        assert_eq!(in_chunks, self.records.len());
        self.records.iter().copied().collect()
    }

    /// Queues record `idx` of an entry due at `deadline`, if it is in order (within the
    /// slack of the highest deadline queued); `false`, and nothing changed, if not.
    #[inline]
    pub(crate) fn push(&mut self, idx: u32, deadline: u64) -> bool {
        if deadline.saturating_add(self.slack) < self.highest {
            return false;
        }
        self.highest = self.highest.max(deadline);
        let tail = &mut self.tail;
        if tail.len > 0
            && deadline
                <= tail.first
                    + if tail.len < MIN_CHUNK {
                        self.stretch
                    } else {
                        self.slack
                    }
        {
            tail.len += 1;
            // Mostly later than every deadline before it: a store only where it changes.
            if deadline < tail.low {
                tail.low = deadline;
            }
            tail.high = tail.high.max(deadline);
        } else {
            if tail.len > 0 {
                self.chunks.push_back(*tail);
            }
            *tail = Chunk {
                len: 1,
                first: deadline,
                low: deadline,
                high: deadline,
            };
        }
        if self.records.len() == self.records.capacity() {
            // A quarter more, not double: the slack is memory every queued entry pays for.
            self.records
                .reserve_exact((self.records.capacity() / 4).max(16));
        }
        self.records.push_back(idx);
        if self.chunks.is_empty() {
            // The tail is the first chunk.
            self.front_changed();
        }
        true
    }

    /// When [`TtlQueue::pop`] next hands out a record: the time every record of the first
    /// chunk is due (`u64::MAX` if the queue is empty).
    #[inline]
    pub(crate) fn due_at(&self) -> u64 {
        self.due_at
    }

    /// The first chunk, if any.
    #[inline]
    fn front(&self) -> Option<&Chunk> {
        self.chunks
            .front()
            .or(Some(&self.tail).filter(|t| t.len > 0))
    }

    /// Sets `due_at` after the first chunk changed.
    fn front_changed(&mut self) {
        self.due_at = self.front().map_or(u64::MAX, |c| c.high);
    }

    /// The next record, if every record of its chunk is due at `now`: each such record's
    /// entry has reached its queued deadline, or belongs to a later life.
    #[inline]
    pub(crate) fn pop(&mut self, now: u64) -> Option<u32> {
        if self.due_at() > now {
            return None;
        }
        self.take_front()
    }

    /// The next record, if its chunk may hold a record due at `now`; the caller files a record
    /// that is not yet due in the wheel. Every record due at `now` comes out this way before
    /// `None`: chunks' `low`s only grow along the queue.
    pub(crate) fn pop_near(&mut self, now: u64) -> Option<u32> {
        if self.front()?.low > now {
            return None;
        }
        self.take_front()
    }

    /// Whether [`TtlQueue::pop_near`] at `now` would hand out a record.
    #[inline]
    pub(crate) fn is_near(&self, now: u64) -> bool {
        self.front().is_some_and(|c| c.low <= now)
    }

    fn take_front(&mut self) -> Option<u32> {
        let (front, in_deque) = match self.chunks.front_mut() {
            Some(c) => (c, true),
            None if self.tail.len > 0 => (&mut self.tail, false),
            None => return None,
        };
        let idx = self.records.pop_front()?;
        front.len -= 1;
        if front.len == 0 {
            if in_deque {
                self.chunks.pop_front();
            }
            self.front_changed();
            if self.records.capacity() > 4 * self.records.len() + 64 {
                // Draining (keys stopped coming): give most of the memory back, as the wheel's
                // emptied slots do.
                self.records.shrink_to(2 * self.records.len());
                self.chunks.shrink_to(2 * self.chunks.len());
            }
        }
        Some(idx)
    }

    /// The record `k` places after the next one to come out, for expiry to prefetch.
    #[inline]
    pub(crate) fn ahead(&self, k: usize) -> Option<u32> {
        self.records.get(k).copied()
    }

    /// Points every record at its entry's new slot after a table rebuild (`moved[old]`), and
    /// drops the records of entries the rebuild dropped (`u32::MAX`); chunks keep their order
    /// and bounds.
    pub(crate) fn remap(&mut self, moved: &[u32]) {
        // In place: a rebuild runs under the shard's lock, and a new deque as long as this one
        // would be memory to allocate (and for the kernel to fault in) while claims wait. The
        // newest chunk counts as the last of `chunks` for the pass.
        let (chunks, tail) = (&mut self.chunks, &mut self.tail);
        let total = chunks.len() + usize::from(tail.len > 0);
        let (mut chunk, mut kept) = (0, 0);
        // With no chunk at all this is the empty tail's 0.
        let mut left = nth(chunks, tail, 0).len;
        self.records.retain_mut(|r| {
            // Every record lies in a chunk, and no chunk is empty.
            while left == 0 {
                nth(chunks, tail, chunk).len = kept;
                chunk += 1;
                kept = 0;
                left = nth(chunks, tail, chunk).len;
            }
            left -= 1;
            match moved.get(*r as usize) {
                Some(&to) if to != u32::MAX => {
                    *r = to;
                    kept += 1;
                    true
                }
                _ => false,
            }
        });
        if chunk < total {
            nth(chunks, tail, chunk).len = kept;
        }
        chunks.retain(|c| c.len > 0);
        if tail.len == 0 {
            // The last chunk left, if any, is the one records join now.
            if let Some(last) = chunks.pop_back() {
                *tail = last;
            }
        }
        self.front_changed();
    }

    /// Drops every record, for a rebuild that files them afresh in the wheel.
    pub(crate) fn clear(&mut self) {
        self.records = VecDeque::new();
        self.chunks = VecDeque::new();
        self.tail = Chunk::NONE;
        self.highest = 0;
        self.front_changed();
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.records.capacity() * std::mem::size_of::<u32>()
            + self.chunks.capacity() * std::mem::size_of::<Chunk>()
    }
}

#[cfg(all(test, not(idemstore_loom)))]
mod tests {
    use super::*;

    /// A window of 65.5 s: the least slack (64 ms), chunks of fewer than 64 records span up to
    /// 512 ms.
    const WINDOW: u64 = 65_536;

    fn drain(q: &mut TtlQueue, now: u64) -> Vec<u32> {
        std::iter::from_fn(|| q.pop(now)).collect()
    }

    #[test]
    fn records_in_order_come_out_in_order_once_their_chunk_is_due() {
        let mut q = TtlQueue::new(WINDOW);
        for i in 0..200u32 {
            assert!(q.push(i, 1_000 + u64::from(i) * 10));
        }
        assert_eq!(q.len(), 200);
        // The first chunk takes the records within 512 ms of its first (52 of them, fewer
        // than 64, so the stretch applies, not the slack).
        assert_eq!(q.due_at(), 1_510);
        assert!(drain(&mut q, 1_509).is_empty());
        assert_eq!(drain(&mut q, 1_510), (0..52).collect::<Vec<_>>());
        let rest = drain(&mut q, u64::MAX - 1);
        assert_eq!(rest, (52..200).collect::<Vec<_>>());
        assert_eq!(q.len(), 0);
        assert_eq!(q.due_at(), u64::MAX);
        // A second's window stretches chunks no further than the slack: 64 ms.
        let mut q = TtlQueue::new(1_000);
        for i in 0..20u32 {
            assert!(q.push(i, 1_000 + u64::from(i) * 10));
        }
        assert_eq!(q.due_at(), 1_060);
        assert_eq!(drain(&mut q, 1_060), (0..7).collect::<Vec<_>>());
        // A day's window: the slack (84 s) takes in all 200, in one chunk.
        let mut q = TtlQueue::new(86_400_000);
        for i in 0..200u32 {
            assert!(q.push(i, 1_000 + u64::from(i) * 10));
        }
        assert_eq!(q.due_at(), 2_990);
        assert_eq!(drain(&mut q, 2_990), (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_too_far_behind_is_refused_and_changes_nothing() {
        let mut q = TtlQueue::new(WINDOW);
        assert!(q.push(1, 10_000));
        assert!(q.push(2, 10_000 - MIN_SLACK), "within the slack");
        assert!(!q.push(3, 10_000 - MIN_SLACK - 1));
        assert_eq!(q.len(), 2);
        assert_eq!(drain(&mut q, 10_000), vec![1, 2]);
        // A day's slack is 84.375 s: more than the default 30 s lease, the most by which two
        // completions can be out of the order of their claims.
        let mut q = TtlQueue::new(86_400_000);
        assert!(q.push(1, 90_000_000));
        assert!(q.push(2, 90_000_000 - 84_375));
        assert!(!q.push(3, 90_000_000 - 84_376));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn pop_near_hands_out_every_record_that_may_be_due() {
        let mut q = TtlQueue::new(WINDOW);
        // Two chunks: 64 records around 1 s, then records from 5 s on.
        for i in 0..64u32 {
            assert!(q.push(i, 1_000 + u64::from(i)));
        }
        for i in 64..80u32 {
            assert!(q.push(i, 5_000 + u64::from(i)));
        }
        // At 1 010 ms the first chunk is not wholly due: `pop` waits, `pop_near` hands out its
        // records (the caller files the ones not due in the wheel), not the next chunk's.
        assert_eq!(q.pop(1_010), None);
        assert!(q.is_near(1_010));
        let near: Vec<u32> = std::iter::from_fn(|| q.pop_near(1_010)).collect();
        assert_eq!(near, (0..64).collect::<Vec<_>>());
        assert!(!q.is_near(5_063));
        assert_eq!(
            q.pop_near(5_063),
            None,
            "the next chunk's first deadline is 5 064"
        );
        assert_eq!(q.pop_near(5_064), Some(64));
    }

    #[test]
    fn remap_follows_moved_entries_and_drops_the_rest() {
        let mut q = TtlQueue::new(WINDOW);
        for i in 0..70u32 {
            assert!(q.push(i, 100 + u64::from(i) * 100));
        }
        // Entry i moved to slot i + 1000, except the odd ones and those from 64 on, dropped
        // (whole chunks among them).
        let moved: Vec<u32> = (0..70u32)
            .map(|i| {
                if i % 2 == 1 || i >= 64 {
                    u32::MAX
                } else {
                    i + 1000
                }
            })
            .collect();
        q.remap(&moved);
        assert_eq!(q.len(), 32);
        assert_eq!(
            drain(&mut q, u64::MAX - 1),
            (0..64).step_by(2).map(|i| i + 1000).collect::<Vec<_>>()
        );
        assert_eq!(q.due_at(), u64::MAX);
        assert!(q.push(5, 100_000), "still in order after the remap");
        q.clear();
        assert_eq!(q.len(), 0);
        assert!(q.push(5, 10), "a cleared queue takes any deadline");
    }

    #[test]
    fn remap_keeps_each_survivor_in_its_chunk() {
        let mut q = TtlQueue::new(WINDOW);
        // Three chunks of six (a chunk of few records spans up to 512 ms): deadlines 1 000 to
        // 1 500, 2 000 to 2 500 and 3 000 to 3 500.
        for (i, deadline) in [1_000u64, 2_000, 3_000]
            .into_iter()
            .flat_map(|first| (0..6).map(move |k| first + k * 100))
            .enumerate()
        {
            assert!(q.push(i as u32, deadline));
        }
        // The middle chunk goes whole, the others keep their even records, moved up by 100.
        let moved: Vec<u32> = (0..18u32)
            .map(|i| {
                if (6..12).contains(&i) || i % 2 == 1 {
                    u32::MAX
                } else {
                    i + 100
                }
            })
            .collect();
        q.remap(&moved);
        assert_eq!(q.all_records(), [100, 102, 104, 112, 114, 116]);
        // Each survivor comes out when its own chunk is due, not before.
        assert_eq!(q.due_at(), 1_500);
        assert_eq!(drain(&mut q, 1_499), []);
        assert_eq!(drain(&mut q, 1_500), [100, 102, 104]);
        assert_eq!(q.due_at(), 3_500);
        assert_eq!(drain(&mut q, 3_499), []);
        assert_eq!(drain(&mut q, 3_500), [112, 114, 116]);
        assert_eq!(q.due_at(), u64::MAX);
        // A queue of nothing but dropped records ends empty.
        assert!(q.push(0, 4_000));
        q.remap(&[u32::MAX]);
        assert_eq!((q.len(), q.due_at()), (0, u64::MAX));
    }

    /// The newest chunk lives outside the deque of older ones (`tail`): records join it,
    /// it is the first chunk while it is the only one, and a remap that empties it makes the
    /// last chunk left the one records join.
    #[test]
    fn the_newest_chunk_takes_records_wherever_it_lives() {
        let mut q = TtlQueue::new(WINDOW);
        assert!(q.push(0, 1_000));
        assert_eq!(q.due_at(), 1_000, "the only chunk is the first");
        assert!(q.push(1, 1_200));
        assert_eq!(q.due_at(), 1_200, "joining it moves the first chunk's end");
        assert_eq!(drain(&mut q, 1_200), [0, 1]);
        assert_eq!(q.due_at(), u64::MAX);
        assert!(q.push(2, 1_300), "an emptied queue starts a new chunk");
        assert_eq!(q.due_at(), 1_300);
        // A second chunk (past the 512 ms stretch of the first), then a remap that drops it
        // whole: the first is the newest again, and takes a record within its stretch.
        assert!(q.push(3, 1_813));
        assert_eq!(q.due_at(), 1_300);
        q.remap(&[u32::MAX, u32::MAX, 12, u32::MAX]);
        assert_eq!(q.all_records(), [12]);
        assert!(
            q.push(4, 1_800),
            "within the slack of the highest deadline, 1 813"
        );
        assert_eq!(q.all_records(), [12, 4]);
        assert_eq!(q.due_at(), 1_800, "one chunk, 1 300 to 1 800");
        assert_eq!(drain(&mut q, 1_799), []);
        assert_eq!(drain(&mut q, 1_800), [12, 4]);
    }

    #[test]
    fn a_draining_queue_gives_its_memory_back() {
        let mut q = TtlQueue::new(WINDOW);
        for i in 0..10_000u32 {
            assert!(q.push(i, 1_000 + u64::from(i)));
        }
        let full = q.heap_bytes();
        assert!(full >= 40_000);
        // Chunks of 65 records (64, then the one within the slack of the first): at 10 000 ms
        // the chunks wholly due hold a little under 9 001 records.
        let taken = drain(&mut q, 10_000).len();
        assert!((8_900..=9_001).contains(&taken), "{taken}");
        assert!(
            q.heap_bytes() < full / 4,
            "{} of {full} bytes kept",
            q.heap_bytes()
        );
        assert_eq!(drain(&mut q, u64::MAX - 1).len(), 10_000 - taken);
        assert!(q.heap_bytes() <= 64 * 4 + 64 * std::mem::size_of::<Chunk>());
    }
}
