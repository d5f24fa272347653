//! The state word: one `AtomicU64` per entry holds the whole life of a key.
//!
//! # Ground rules of the concurrency model
//! - Every entry lives in a shard guarded by a reader-writer lock. **Claims** (which may insert,
//!   take over or reuse an entry) and **completions** hold the lock in write mode; a completion
//!   checks that the word is still the one its guard installed and stores the completed word
//!   (nothing else can change it meanwhile). **Release and extend** hold it only in read mode;
//!   their transition is a `compare_exchange` on this word. **Replays** of a dedup-only store
//!   may hold no lock at all: they load this word (with the key's tags and hash) as
//!   sequence-lock readers and use it only if no writer held the lock meanwhile (`readers`);
//!   the read-mode transitions above never make or unmake a Completed word, so they cannot
//!   mislead such a replay.
//! - A guard remembers the exact word it installed. Its transition succeeds only if the word is
//!   still that one; any takeover, expiry or reuse since then changed the word, so a stale guard
//!   fails with `LeaseLost` and changes nothing. A later owner's word always differs from an
//!   earlier owner's: its lease deadline is later (a takeover happens at or after the old
//!   deadline, and leases are at least 1 ms) and its token is newer.
//! - Deadlines are whole milliseconds on the store's clock, rounded up; "now" is rounded down.
//!
//! # Encoding
//! ```text
//!  bit 63..62  phase   00 Vacant (released; garbage until reclaimed or reused)
//!                      01 InFlight (owned; deadline = end of lease)
//!                      10 Completed (deadline = end of the dedup window)
//!                      11 Completed, and this life's expiry record waits in the shard's ttl
//!                         queue (see `queue`); every reader but expiry sees 10
//!  bit 61..44  token   the low 18 bits of the fencing token of the last acquisition
//!  bit 43..0   deadline in ms since the clock's origin (2^44 ms = 557 years)
//! ```
//! Empty slots have no word at all: the table's tag byte says whether a slot is used.
//!
//! # Transitions
//! | from                   | to                   | who          | lock  |
//! |------------------------|----------------------|--------------|-------|
//! | (none)                 | InFlight(t, now+l)   | claim        | write |
//! | Vacant / expired       | InFlight(t', now+l)  | claim        | write |
//! | InFlight(t, d), now<d  | Completed(t, now+ttl)| guard t      | write |
//! | InFlight(t, d), now<d  | Vacant(t, d)         | guard t      | read  |
//! | InFlight(t, d), now<d  | InFlight(t, now+l')  | guard t      | read  |
//! | any, expired or Vacant | (removed)            | wheel, claim | write |

use crate::sync::{AtomicU64, Ordering};

/// The largest deadline the word can hold.
pub(crate) const MAX_DEADLINE: u64 = (1 << 44) - 1;
const DEADLINE_MASK: u64 = MAX_DEADLINE;
const TOKEN_BITS: u32 = 18;
const TOKEN_SHIFT: u32 = 44;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
const PHASE_SHIFT: u32 = 62;

/// Where a key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Released by its owner: claimable, and reclaimed by the wheel.
    Vacant = 0,
    /// Owned by the guard whose token the word carries, until the deadline.
    InFlight = 1,
    /// Finished; replayed until the deadline.
    Completed = 2,
}

/// A decoded snapshot of a state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Word(u64);

impl Word {
    /// Packs a word. The token keeps its low 18 bits; the deadline saturates at 557 years.
    #[inline]
    pub(crate) const fn new(phase: Phase, token: u64, deadline: u64) -> Self {
        let deadline = if deadline > MAX_DEADLINE {
            MAX_DEADLINE
        } else {
            deadline
        };
        Self(((phase as u64) << PHASE_SHIFT) | ((token & TOKEN_MASK) << TOKEN_SHIFT) | deadline)
    }

    #[inline]
    pub(crate) const fn phase(self) -> Phase {
        match self.0 >> PHASE_SHIFT {
            0 => Phase::Vacant,
            1 => Phase::InFlight,
            _ => Phase::Completed,
        }
    }

    /// Whether this is a completed life whose expiry record the shard put in its ttl queue.
    /// A later life of the key (a claim after the window) starts from a fresh word, unmarked.
    #[inline]
    pub(crate) const fn queued(self) -> bool {
        self.0 >> PHASE_SHIFT == 3
    }

    /// This completed word, marked [`Word::queued`].
    #[inline]
    pub(crate) const fn mark_queued(self) -> Self {
        debug_assert!(matches!(self.phase(), Phase::Completed));
        Self(self.0 | (3 << PHASE_SHIFT))
    }

    #[inline]
    pub(crate) const fn deadline(self) -> u64 {
        self.0 & DEADLINE_MASK
    }

    #[inline]
    pub(crate) const fn token_bits(self) -> u64 {
        (self.0 >> TOKEN_SHIFT) & TOKEN_MASK
    }

    /// Live means: a claim at `now` must respect it (an unexpired lease or window).
    #[inline]
    pub(crate) const fn is_live(self, now: u64) -> bool {
        !matches!(self.phase(), Phase::Vacant) && now < self.deadline()
    }

    /// Whether an in-flight entry's lease ran out less than `lapse` ms before `now`: a claim
    /// takes it over (the entry is kept that long after its lease ends, so that the next claim
    /// is told it took over, whenever the engine reclaims memory).
    #[inline]
    pub(crate) const fn is_lapsed(self, now: u64, lapse: u64) -> bool {
        matches!(self.phase(), Phase::InFlight)
            && self.deadline() <= now
            && now < self.deadline().saturating_add(lapse)
    }

    /// Whether the entry must be kept at `now`: live, or an in-flight entry whose lease ran out
    /// less than `lapse` ms ago (see [`Word::is_lapsed`]).
    #[inline]
    pub(crate) const fn is_held(self, now: u64, lapse: u64) -> bool {
        self.is_live(now) || self.is_lapsed(now, lapse)
    }

    #[inline]
    pub(crate) const fn with(self, phase: Phase, deadline: u64) -> Self {
        Self::new(phase, self.token_bits(), deadline)
    }
}

/// The atomic cell of an entry's state.
#[derive(Debug)]
pub(crate) struct StateWord(AtomicU64);

impl StateWord {
    #[cfg(any(test, idemstore_loom))]
    pub(crate) fn new(word: Word) -> Self {
        Self(AtomicU64::new(word.0))
    }

    /// Reads the word. Callers holding the shard lock in write mode may use `Relaxed`: the lock
    /// orders them after every transition made under a read lock that was released before.
    #[inline]
    pub(crate) fn load(&self, order: Ordering) -> Word {
        Word(self.0.load(order))
    }

    /// Overwrites the word; only under the shard's write lock, where no guard can race.
    #[inline]
    pub(crate) fn store_exclusive(&self, word: Word) {
        // Relaxed: the write lock's release on unlock publishes this to the next locker.
        self.0.store(word.0, Ordering::Relaxed);
    }

    /// The owner's transition `expected → next`, fenced: fails, changing nothing, if any other
    /// transition happened since the owner installed `expected`.
    #[inline]
    pub(crate) fn transition(&self, expected: Word, next: Word) -> Result<(), Word> {
        // AcqRel on success: Release publishes everything the owner did before (ordered by the
        // shard lock today, but the word must stay a self-contained publication point if the
        // read path ever drops the lock); Acquire so a later owner's CAS sees it.
        // Acquire on failure: the caller reports the word it lost to.
        self.0
            .compare_exchange(expected.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(Word)
    }
}

#[cfg(all(test, not(idemstore_loom)))]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        for phase in [Phase::Vacant, Phase::InFlight, Phase::Completed] {
            let w = Word::new(phase, 0x3_FFFF, 123_456);
            assert_eq!(w.phase(), phase);
            assert_eq!(w.token_bits(), 0x3_FFFF);
            assert_eq!(w.deadline(), 123_456);
        }
    }

    #[test]
    fn a_queued_word_reads_as_the_completed_word_it_marks() {
        let w = Word::new(Phase::Completed, 0x2_0001, 86_400_123);
        assert!(!w.queued());
        let q = w.mark_queued();
        assert!(q.queued());
        assert_ne!(q, w);
        assert_eq!(q.phase(), Phase::Completed);
        assert_eq!(q.token_bits(), w.token_bits());
        assert_eq!(q.deadline(), w.deadline());
        assert_eq!(q.is_live(86_400_122), w.is_live(86_400_122));
        assert!(!q.is_live(86_400_123));
        for phase in [Phase::Vacant, Phase::InFlight, Phase::Completed] {
            assert!(!Word::new(phase, 7, 9).queued());
        }
        // A later life builds its word afresh: unmarked.
        assert!(!q.with(Phase::InFlight, 90_000_000).queued());
    }

    #[test]
    fn token_keeps_low_bits_and_deadline_saturates() {
        let w = Word::new(Phase::InFlight, (1 << 18) + 5, u64::MAX);
        assert_eq!(w.token_bits(), 5);
        assert_eq!(w.deadline(), MAX_DEADLINE);
        assert_eq!(w.phase(), Phase::InFlight);
    }

    #[test]
    fn liveness_compares_the_own_deadline() {
        let w = Word::new(Phase::Completed, 1, 100);
        assert!(w.is_live(99));
        assert!(!w.is_live(100), "at the deadline the key is expired");
        assert!(!Word::new(Phase::Vacant, 1, 100).is_live(0));
    }

    #[test]
    fn a_lapsed_lease_is_held_for_the_window_after_it() {
        let w = Word::new(Phase::InFlight, 1, 100);
        assert!(w.is_held(99, 50) && !w.is_lapsed(99, 50), "live");
        assert!(w.is_lapsed(100, 50) && w.is_held(100, 50), "ran out");
        assert!(w.is_lapsed(149, 50));
        assert!(!w.is_lapsed(150, 50) && !w.is_held(150, 50), "forgotten");
        assert!(!w.is_held(100, 0), "no window: as is_live");
        assert!(Word::new(Phase::InFlight, 1, MAX_DEADLINE).is_lapsed(MAX_DEADLINE, u64::MAX));
        // Only leases lapse: a window that ended, or a released key, is not held.
        for phase in [Phase::Completed, Phase::Vacant] {
            let w = Word::new(phase, 1, 100);
            assert!(!w.is_lapsed(100, 50) && !w.is_held(100, 50), "{phase:?}");
        }
    }

    #[test]
    fn fenced_transition_fails_on_any_change() {
        let cell = StateWord::new(Word::new(Phase::InFlight, 1, 50));
        let mine = Word::new(Phase::InFlight, 1, 50);
        // A takeover installs a newer word.
        let theirs = Word::new(Phase::InFlight, 2, 90);
        cell.store_exclusive(theirs);
        assert_eq!(
            cell.transition(mine, mine.with(Phase::Completed, 500)),
            Err(theirs)
        );
        assert_eq!(cell.load(Ordering::Relaxed), theirs);
        assert!(cell
            .transition(theirs, theirs.with(Phase::Completed, 500))
            .is_ok());
        assert_eq!(cell.load(Ordering::Relaxed).phase(), Phase::Completed);
    }
}
