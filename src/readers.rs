//! Reads of table memory outside the shard lock, and the grace period that a table a rebuild
//! replaced waits out before its memory is reused or freed.
//!
//! A replay (a claim of a completed key of a dedup-only store) changes nothing, so it need not
//! take its shard's lock, whose compare-and-swap on a line the other cores' claims also write
//! was the largest cost of a replay at millions of keys: it reads the shard's table as a
//! sequence-lock reader does (`RawLock::begin_read`, the reads, `RawLock::validate`) and falls
//! back to the locked claim whenever a writer overlapped it or it found anything but a
//! completed, unexpired entry in the first groups of the key's probe path (`Place::word`). What
//! it read then was the table as the last writer left it.
//!
//! The version check makes the values read trustworthy, not the memory: a rebuild can replace
//! the table while a reader still holds its address, and the old table's memory is then given
//! to the store's pool, recycled, grown by `mremap` or unmapped. So a reader announces itself
//! in a slot of its thread's own ([`read`]), and a rebuild's retired table waits, before its
//! memory goes anywhere, until every reader that was reading when the shard switched tables has
//! finished ([`synchronize`]): a grace period, as in read-copy-update. A reader that starts
//! after the switch finds the new table's address.
//!
//! The handshake is Dekker's: the reader marks its slot, then loads the table's address; the
//! rebuild stores the new address, then looks at the slots. A full fence on each side between
//! the two steps makes sure that at least one of them sees the other. On Linux the reader's
//! fence is only a compiler barrier and the rebuild's is `membarrier(2)`'s expedited command,
//! which runs a full fence on every core running the process; rebuilds are rare and readers
//! are every replay. Elsewhere, or where the kernel refuses to register the process for
//! `membarrier`, both are `SeqCst` fences. (Should the barrier itself ever fail after the
//! registration succeeded, which the kernel does not do, a rebuild falls back to a SeqCst fence
//! after a millisecond's sleep: by then the readers' stores have long reached the other cores,
//! a timing argument rather than a pairing of fences.)
//!
//! Threads take a slot when they first replay this way and give it back when they exit; past
//! [`SLOTS`] threads at once, the rest replay under the lock. A slot is written only by its
//! thread, so entering and leaving a read are plain stores, and the per-store counters of these
//! replays (see `Store::stats`) are indexed by it. The slots are the process's, not a store's:
//! a reader descheduled in the middle of a read (a read is a few dozen instructions) holds up
//! the memory chores of every store's rebuilds until it runs again; the claims go on meanwhile.
//! (A child forked while another thread was in a read would wait forever at its first rebuild;
//! fork a process that uses a store only before its threads claim, as with any lock.)
//!
//! Every access to a live table that may race with such a read is atomic and of the same size:
//! the reader loads a group of eight tags, a hash's halves and the state word as `AtomicU64`s,
//! and a group's overflow count as an `AtomicU8`; the writers, under the lock, store them so
//! (`Memory::set_tag`, `Memory::set_hash`, `Table::pass`; the words always were atomic),
//! through pointers with the memory's own provenance. Values
//! torn across those words (a slot reused between two loads) are never used: the version check
//! discards the whole read.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crossbeam_utils::CachePadded;

/// Threads that may read outside the lock at once.
pub(crate) const SLOTS: usize = 64;

/// Each thread's announcement: odd while it reads table memory outside the lock.
static ACTIVE: [CachePadded<AtomicU64>; SLOTS] =
    [const { CachePadded::new(AtomicU64::new(0)) }; SLOTS];
/// Which slots a live thread holds.
static TAKEN: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];

/// Whether the asymmetric fences are on: 0 not decided yet, 1 on (`membarrier` registered),
/// 2 off (both sides fence).
static ASYMMETRIC: AtomicU8 = AtomicU8::new(0);

/// A thread's slot, given back when the thread exits.
struct Owned(usize);

impl Owned {
    fn take() -> Option<Self> {
        TAKEN
            .iter()
            .position(|t| {
                !t.load(Ordering::Relaxed)
                    && t.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
            })
            .map(Owned)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // The thread is exiting: any read it still makes (from another thread-local's
        // destructor) goes under the lock, not through a slot another thread may take next.
        let _ = SLOT.try_with(|s| s.set(NO_SLOT));
        // Release: the next owner's stores to the slot (and to the stores' counters of it)
        // come after this thread's.
        TAKEN[self.0].store(false, Ordering::Release);
    }
}

thread_local! {
    /// This thread's slot as its reads use it: the slot's index, plus [`FENCED`] where reads
    /// fence (the fences are not asymmetric); [`NO_SLOT`] until its first read, while none is
    /// free (its reads then go under the lock; it tries again after [`RETRY_AFTER`] of them)
    /// and once the thread exits. One word, so that a read's whole preparation is one
    /// thread-local load.
    static SLOT: Cell<usize> = const { Cell::new(NO_SLOT) };
    static OWNED: OwnedSlot = const { OwnedSlot(Cell::new(None), Cell::new(0)) };
}

thread_local! {
    /// How replay-heavy this thread's recent claims of dedup-only stores were (see
    /// [`replays_likely`]).
    static REPLAYS: Cell<u8> = const { Cell::new(0) };
}

/// [`REPLAYS`] at which a thread tries the read outside the lock first.
const LIKELY: u8 = 8;
/// Where [`REPLAYS`] saturates: a thread whose claims turn to new keys stops trying within
/// a few claims.
const MOST: u8 = 16;

/// Whether this thread's recent claims were replays often enough that the next one should try
/// the read outside the lock before the lock. The try cost a claim of a new key about 90
/// instructions when it was measured (a quarter more: 12% slower claims of new keys at 10 M
/// keys in the bench, twelfth session), and
/// saves a replay the lock's compare-and-swap on a line the other cores write too; by those
/// two costs it should pay when about a third of the claims or more are replays (an estimate:
/// the break-even point was not measured). The score rises by 2 per replay and
/// falls by 1 per other outcome, so it climbs past [`LIKELY`] only where replays are more than
/// a third of the claims.
#[inline]
pub(crate) fn replays_likely() -> bool {
    REPLAYS.with(Cell::get) >= LIKELY
}

/// Records whether a claim of a dedup-only store replayed (see [`replays_likely`]).
#[inline]
pub(crate) fn note_claim(replayed: bool) {
    REPLAYS.with(|r| {
        let v = r.get();
        // A thread that claims only new keys sits at 0, one that only replays at `MOST`:
        // neither writes anything.
        if replayed {
            if v < MOST {
                r.set((v + 2).min(MOST));
            }
        } else if v != 0 {
            r.set(v - 1);
        }
    });
}

/// How many reads a thread that found no free slot makes under the lock before it looks again.
const RETRY_AFTER: u32 = 1 << 16;

/// The owner of a thread's slot, dropped (and the slot given back) when the thread exits; and
/// the reads left before a thread without a slot looks for one again.
struct OwnedSlot(Cell<Option<Owned>>, Cell<u32>);

/// [`SLOT`] of a thread without a slot.
const NO_SLOT: usize = usize::MAX;
/// Set in [`SLOT`] beside the index where a read must run a full fence ([`light_fence`]): the
/// bit above every index's.
const FENCED: usize = SLOTS;
const _: () = assert!(SLOTS.is_power_of_two());

/// This thread's [`SLOT`] value, taking a slot if it has none.
#[inline]
fn slot() -> Option<usize> {
    match SLOT.try_with(Cell::get) {
        Ok(s) if s != NO_SLOT => Some(s),
        _ => slot_slow(),
    }
}

#[cold]
#[inline(never)]
fn slot_slow() -> Option<usize> {
    OWNED
        .try_with(|o| {
            let wait = o.1.get();
            if wait > 0 {
                o.1.set(wait - 1);
                return None;
            }
            match Owned::take() {
                Some(owned) => {
                    // Decided when the first store was built, before any read (`init`);
                    // undecided would mean fencing, which is always correct.
                    let fenced = ASYMMETRIC.load(Ordering::Acquire) != 1;
                    let s = owned.0 | if fenced { FENCED } else { 0 };
                    o.0.set(Some(owned));
                    let _ = SLOT.try_with(|c| c.set(s));
                    Some(s)
                }
                None => {
                    o.1.set(RETRY_AFTER);
                    None
                }
            }
        })
        .ok()
        .flatten()
}

/// Decides once per process whether the fences are asymmetric; called when a store is built,
/// before any of its claims can read (the build happens before every use of the store, so every
/// thread that uses it sees the decision).
pub(crate) fn init() {
    if ASYMMETRIC.load(Ordering::Acquire) != 0 {
        return;
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let on = membarrier::register();
        // Unless `force_fenced` decided first (then fences it is: registering is harmless).
        let _ = ASYMMETRIC.compare_exchange(
            0,
            if on { 1 } else { 2 },
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    });
}

/// Makes every read fence on both sides (as where `membarrier` is missing) if [`init`] has not
/// decided yet; whether reads now fence so. Both ways are correct: this only lets tests take
/// the fenced path on machines that would not.
pub(crate) fn force_fenced() -> bool {
    let _ = ASYMMETRIC.compare_exchange(0, 2, Ordering::AcqRel, Ordering::Acquire);
    ASYMMETRIC.load(Ordering::Acquire) == 2
}

/// The reader's side of the handshake, for a thread whose [`SLOT`] is `slot`.
#[inline(always)]
fn light_fence(slot: usize) {
    if slot & FENCED == 0 {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    } else {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// The rebuild's side of the handshake.
fn heavy_fence() {
    if ASYMMETRIC.load(Ordering::Relaxed) == 1 && membarrier::barrier() {
        return;
    }
    // Never happens once registered (the kernel refuses only unregistered processes); if it
    // did, the readers' stores still reach the other cores within nanoseconds, and this wait
    // is far longer than that.
    if ASYMMETRIC.load(Ordering::Relaxed) == 1 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// Runs `f`, which reads table memory outside the lock, announced in this thread's slot; hands
/// back the slot with `f`'s result, or `None` (without running `f`) if the thread has no slot.
/// `f` must load every table address it reads through after this has started.
#[inline]
pub(crate) fn read<R>(f: impl FnOnce() -> R) -> Option<(usize, R)> {
    let s = slot()?;
    let i = s % SLOTS;
    let active = &ACTIVE[i];
    // Only this thread writes its slot: plain loads and stores. Release on entering too: a
    // rebuild that sees this read's odd value has seen the previous read end.
    let seq = active.load(Ordering::Relaxed);
    active.store(seq.wrapping_add(1), Ordering::Release);
    light_fence(s);
    // Leaves the read even if `f` unwinds, so that no rebuild waits for it forever and the
    // slot is never handed on odd.
    let _leave = Leave(active, seq.wrapping_add(2));
    Some((i, f()))
}

/// The end of a read: the slot's next even value.
struct Leave<'a>(&'a AtomicU64, u64);

impl Drop for Leave<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: a rebuild that sees the slot move on sees this read's loads done.
        self.0.store(self.1, Ordering::Release);
    }
}

/// Waits until every read outside the lock that may have loaded an address the caller has
/// since replaced (under the shard's write lock) has finished. Call after letting go of the
/// lock; the memory at the old addresses may then be reused or freed.
pub(crate) fn synchronize() {
    heavy_fence();
    for active in &ACTIVE {
        let seen = active.load(Ordering::Acquire);
        if seen % 2 == 0 {
            continue;
        }
        let mut spins = 0u32;
        while active.load(Ordering::Acquire) == seen {
            crate::sync::spin_wait(spins);
            spins = spins.saturating_add(1);
        }
    }
}

#[cfg(target_os = "linux")]
mod membarrier {
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (Linux 4.14).
    const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    /// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`.
    const REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    /// Registers the process for expedited barriers; whether the kernel agreed.
    pub(super) fn register() -> bool {
        // SAFETY: `membarrier` takes two integers and touches no memory of ours.
        unsafe { libc::syscall(libc::SYS_membarrier, REGISTER_PRIVATE_EXPEDITED, 0) == 0 }
    }

    /// A full fence on every core running a thread of the process; whether it ran.
    pub(super) fn barrier() -> bool {
        // SAFETY: as in `register`.
        unsafe { libc::syscall(libc::SYS_membarrier, PRIVATE_EXPEDITED, 0) == 0 }
    }
}

#[cfg(not(target_os = "linux"))]
mod membarrier {
    pub(super) fn register() -> bool {
        false
    }
    pub(super) fn barrier() -> bool {
        false
    }
}

#[cfg(all(test, not(idemstore_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_read_runs_in_a_slot_of_its_own() {
        init();
        let (i, r) = read(|| 7).expect("a free slot");
        assert_eq!(r, 7);
        assert_eq!(ACTIVE[i].load(Ordering::Relaxed) % 2, 0, "the read is over");
        let (j, _) = read(|| ()).expect("the same slot");
        assert_eq!(i, j);
        let other = std::thread::spawn(|| read(|| ()).expect("a free slot").0)
            .join()
            .expect("no panic");
        assert_ne!(i, other, "each thread has its own");
    }

    /// `synchronize` waits for a read in progress, and not for one that starts later.
    #[test]
    fn synchronize_waits_for_reads_in_progress() {
        init();
        let inside = AtomicBool::new(false);
        let finished = AtomicBool::new(false);
        let waited = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                read(|| {
                    inside.store(true, Ordering::SeqCst);
                    while !waited.load(Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    finished.store(true, Ordering::SeqCst);
                })
                .expect("a free slot");
            });
            while !inside.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            waited.store(true, Ordering::SeqCst);
            synchronize();
            assert!(finished.load(Ordering::SeqCst), "the read finished first");
        });
        // No read in progress: returns at once.
        synchronize();
    }
}
