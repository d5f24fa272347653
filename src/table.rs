//! One shard's hash table: open addressing over groups of eight slots, probed linearly.
//!
//! Beside the slots sits an array of tag bytes, one per slot: `EMPTY`, or the low
//! byte of the key's hash. A probe reads eight tags as one `u64` and finds matching and empty
//! bytes with exact SWAR arithmetic, so it touches the 24-byte slots only for likely matches.
//! The home group comes from a multiply-shift, so the group count is free to be any number and
//! the table grows by about 1.4x instead of 2x, which keeps the load between about 0.6 and 0.9.
//!
//! Slots never move except when the whole table is rebuilt, which is what lets the timing wheel
//! refer to an entry by its 4-byte index.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::key::{KeyHash, FIRST_TAG};
#[cfg(not(idemstore_loom))]
use crate::pages::ZeroedArray;
use crate::state::{Phase, StateWord, Word};
use crate::sync::{AtomicPtr, AtomicUsize, Ordering};

pub(crate) const EMPTY: u8 = 0;
pub(crate) const GROUP: usize = 8;
/// An overflow count that has reached this stays: its group is passed through forever.
const OVERFLOW_STUCK: u8 = u8::MAX;
/// The smallest table, in slots.
pub(crate) const MIN_CAPACITY: usize = 2 * GROUP;
/// In the map [`Table::rebuild`] returns: the entry was dropped.
pub(crate) const MOVED_NOWHERE: u32 = u32::MAX;

const LSB: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

/// Bit 7 of each byte of the result is set iff that byte of `x` is zero. Exact: unlike the
/// classic `(x - LSB) & !x` trick it has no false positives, which matters because a false
/// "empty" would have a new key written over an entry.
#[inline]
fn zero_bytes(x: u64) -> u64 {
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// Bytes of `group` equal to `byte`.
#[inline]
fn match_byte(group: u64, byte: u8) -> u64 {
    zero_bytes(group ^ (LSB * u64::from(byte)))
}

/// Asks the CPU to start loading the cache lines of a group of slots: 192 bytes, three whole
/// lines, since the slots start on a 64-byte boundary (`Memory`; not under loom, whose boxed
/// slots may leave a group's last line unfetched, a lost hint). A hint only: it changes
/// nothing and cannot fault.
#[inline(always)]
fn prefetch_group(slots: *const Slot) {
    const _: () = assert!(GROUP * std::mem::size_of::<Slot>() == 3 * 64);
    let start = slots.cast::<i8>();
    for offset in [0, 64, 128] {
        prefetch(start.wrapping_add(offset));
    }
}

/// Asks the CPU to start loading the cache line at `at`. A hint only: it reads nothing a
/// program can observe, and cannot fault, whatever the address (even a freed one).
#[inline(always)]
fn prefetch(at: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` never faults and has no architectural effect, for any address;
    // SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Where a shard's table lives, readable without the shard lock, so a claim can start its probe's
/// cache misses before it takes the lock, and a batch of claims those of later keys' probes
/// while it works on earlier ones; there a stale value (a rebuild moved the table) costs a
/// useless prefetch, never a wrong answer. Replays outside the lock read it too ([`Place`]),
/// and trust what they read only if the shard's lock version validates afterwards (see
/// `readers`). Plain std atomics even under loom, which does not model those reads.
#[derive(Debug, Default)]
pub(crate) struct Whereabouts {
    tags: std::sync::atomic::AtomicPtr<u8>,
    slots: std::sync::atomic::AtomicPtr<Slot>,
    /// The groups' overflow counts, which a probe for a key that is not there reads too.
    overflow: std::sync::atomic::AtomicPtr<u8>,
    groups: std::sync::atomic::AtomicUsize,
}

impl Whereabouts {
    /// Records where `table` lives; called under the write lock whenever the table changes.
    pub(crate) fn update<V>(&self, table: &Table<V>) {
        use std::sync::atomic::Ordering::Relaxed;
        // Relaxed: a prefetch that sees a mix of old and new values fetches the wrong lines,
        // which is harmless; a read outside the lock that sees one fails its version check
        // (the lock's word orders these stores before the unlock that moves the version).
        self.tags.store(table.mem.raw_tags(), Relaxed);
        self.slots.store(table.mem.raw_slots(), Relaxed);
        self.overflow.store(table.overflow.raw(), Relaxed);
        self.groups.store(table.groups, Relaxed);
    }

    /// Starts loading the tag group, the home slots and the home group's overflow count of `h`
    /// (a claim of a new key reads the count to end its probe: a third random access, in an
    /// array of its own).
    #[inline]
    pub(crate) fn prefetch(&self, h: &KeyHash) {
        use std::sync::atomic::Ordering::Relaxed;
        let g = h.home(self.groups.load(Relaxed));
        prefetch(self.tags.load(Relaxed).cast::<i8>().wrapping_add(g * GROUP));
        prefetch_group(self.slots.load(Relaxed).wrapping_add(g * GROUP));
        prefetch(self.overflow.load(Relaxed).cast::<i8>().wrapping_add(g));
    }
}

/// Where a shard's table lived when a read outside the lock looked (see `readers`): consistent
/// only if the shard's lock version validated after [`Whereabouts::place`] was read.
#[cfg(not(idemstore_loom))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    tags: *const u8,
    slots: *const Slot,
    overflow: *const u8,
    groups: usize,
}

#[cfg(not(idemstore_loom))]
impl Whereabouts {
    /// The table's addresses and size, for a read outside the lock.
    #[inline]
    pub(crate) fn place(&self) -> Place {
        use std::sync::atomic::Ordering::Relaxed;
        Place {
            tags: self.tags.load(Relaxed),
            slots: self.slots.load(Relaxed),
            overflow: self.overflow.load(Relaxed),
            groups: self.groups.load(Relaxed),
        }
    }
}

#[cfg(not(idemstore_loom))]
impl Place {
    /// Starts loading the slots of `h`'s home group, for a read about to load its tags. A hint
    /// only: the place need not have validated.
    #[inline(always)]
    pub(crate) fn prefetch_slots(self, h: &KeyHash) {
        prefetch_group(self.slots.wrapping_add(h.home(self.groups) * GROUP));
    }

    /// The state word of `h`'s entry, read without the shard's lock, if it sits in one of the
    /// first [`UNLOCKED_PROBE_GROUPS`] groups of its probe path (almost every entry sits in its
    /// home group; a few percent in a later one); `None` if it is not found there. The probe
    /// is [`Table::probe`]'s, without the free slot: it goes on past a group only while that
    /// group's overflow count says an entry lies beyond. What it reads may be torn by a
    /// writer: only a read that the shard's lock version validates afterwards means anything.
    ///
    /// # Safety
    /// The place must be one the shard's lock version validated (so its addresses and group
    /// count belong to one table), and that table's memory must still be mapped: call inside
    /// `readers::read`, from a shard that keeps a replaced table until `readers::synchronize`
    /// returns.
    #[inline]
    pub(crate) unsafe fn word(self, h: &KeyHash) -> Option<Word> {
        let g = h.home(self.groups);
        // SAFETY: as this function's (`g < groups`).
        if let Some(word) = unsafe { self.group_word(g, h) } {
            return Some(word);
        }
        // SAFETY: as this function's.
        unsafe { self.word_beyond(g, h) }
    }

    /// [`Place::word`] past the home group `home` (where the key was not), out of line: few
    /// reads get here.
    ///
    /// # Safety
    /// As [`Place::word`]'s.
    #[cold]
    #[inline(never)]
    unsafe fn word_beyond(&self, home: usize, h: &KeyHash) -> Option<Word> {
        let mut g = home;
        for _ in 1..UNLOCKED_PROBE_GROUPS.min(self.groups) {
            // SAFETY: `g < groups`, and the caller's promises.
            if !unsafe { self.passed(g) } {
                return None;
            }
            g += 1;
            if g == self.groups {
                g = 0;
            }
            // SAFETY: as above.
            if let Some(word) = unsafe { self.group_word(g, h) } {
                return Some(word);
            }
        }
        None
    }

    /// Whether an entry lies beyond group `g` on a path through it (its overflow count is not
    /// 0), so that a probe goes on.
    ///
    /// # Safety
    /// `g < groups`, and [`Place::word`]'s promises.
    #[inline(always)]
    unsafe fn passed(self, g: usize) -> bool {
        use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
        // SAFETY: `g < groups`, a count of the table's overflow array (one per group), which
        // the caller keeps mapped as it does the tags; writers store counts atomically
        // (`Table::pass`).
        unsafe { AtomicU8::from_ptr(self.overflow.add(g).cast_mut()) }.load(Relaxed) != 0
    }

    /// The word of `h`'s entry if it sits in group `g`.
    ///
    /// # Safety
    /// `g < groups`, and [`Place::word`]'s promises.
    #[inline(always)]
    unsafe fn group_word(self, g: usize, h: &KeyHash) -> Option<Word> {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        // SAFETY: `g < groups`, so the group's eight tag bytes are in the table's tags, which
        // the caller keeps mapped; they start at a multiple of 8 from the 64-byte aligned
        // start, as an `AtomicU64` must. A writer stores a group whole, atomically (see
        // `readers`).
        let tags = unsafe { &*self.tags.add(g * GROUP).cast::<AtomicU64>() }.load(Relaxed);
        let mut hits = match_byte(u64::from_le(tags), h.tag());
        while hits != 0 {
            let i = g * GROUP + (hits.trailing_zeros() / 8) as usize;
            // SAFETY: `i < groups * GROUP`, a slot of the table the caller keeps mapped; its
            // hash halves are aligned `u64`s, loaded atomically as the tags are.
            let (hi, lo, word) = unsafe {
                let s = self.slots.add(i);
                (
                    (*std::ptr::addr_of!((*s).hi).cast::<AtomicU64>()).load(Relaxed),
                    (*std::ptr::addr_of!((*s).lo).cast::<AtomicU64>()).load(Relaxed),
                    &*std::ptr::addr_of!((*s).word),
                )
            };
            if hi == h.hi && lo == h.lo {
                return Some(word.load(crate::sync::Ordering::Relaxed));
            }
            hits &= hits - 1;
        }
        None
    }
}

/// How many groups of a key's probe path a read outside the lock looks through
/// ([`Place::word`]) before it leaves the key to the locked claim.
#[cfg(not(idemstore_loom))]
const UNLOCKED_PROBE_GROUPS: usize = 4;

/// One entry: the key's 128-bit hash and its state word. 24 bytes.
#[derive(Debug)]
pub(crate) struct Slot {
    hi: u64,
    lo: u64,
    pub(crate) word: StateWord,
}

/// A table's tags and slots, in one allocation: the tags first, then the slots from the next
/// 64-byte boundary. Outside loom it is zero-filled memory used as is (on huge pages where
/// offered, see `pages`): a large table comes straight from fresh zero pages, with no pass that
/// writes it, and a claim's two random accesses (tag group, then slots) share the TLB reach of
/// one mapping.
#[cfg(not(idemstore_loom))]
#[derive(Debug)]
struct Memory {
    lines: ZeroedArray<Line>,
    cap: usize,
}

/// A cache line of table memory.
#[cfg(not(idemstore_loom))]
#[derive(Debug)]
#[repr(C, align(64))]
struct Line([u8; 64]);

#[cfg(not(idemstore_loom))]
impl Memory {
    /// `cap` `EMPTY` tags and `cap` empty slots, on huge pages if `huge` (and large enough);
    /// `None` if the memory cannot be had.
    fn try_new(cap: usize, huge: bool) -> Option<Self> {
        const _: () = assert!(EMPTY == 0 && std::mem::align_of::<Slot>() <= 64);
        let slot_bytes = cap.checked_mul(std::mem::size_of::<Slot>())?;
        let lines = Self::tag_lines(cap) + slot_bytes.div_ceil(64);
        // SAFETY: a `Line` is bytes, and the memory is only ever read as tag bytes and as
        // `Slot`s, for which all-zero bytes are valid too: `Slot` is two `u64`s and an
        // `AtomicU64` (inside `StateWord`), and zero is `Slot::empty()`'s encoding (hash 0, word
        // Vacant/token 0/deadline 0), checked by `empty_slot_is_all_zero` below.
        let lines = unsafe { ZeroedArray::try_new(lines, huge) }?;
        Some(Self { lines, cap })
    }

    /// [`Memory::try_new`]; out of memory is fatal, as for the global allocator.
    fn new(cap: usize, huge: bool) -> Self {
        Self::try_new(cap, huge).unwrap_or_else(|| {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<Line>(cap).unwrap_or(std::alloc::Layout::new::<Line>()),
            )
        })
    }

    fn tag_lines(cap: usize) -> usize {
        cap.div_ceil(64)
    }

    #[inline]
    fn tags(&self) -> &[u8] {
        // SAFETY: the first `tag_lines(cap)` lines hold `cap` tag bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.cap) }
    }

    #[inline]
    fn tags_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `tags`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.cap) }
    }

    #[inline]
    fn slots(&self) -> &[Slot] {
        // SAFETY: the lines after the tags hold `cap` slots, 64-byte aligned (more than a
        // `Slot` needs), initialized (zero, or written since).
        unsafe {
            let start = self.lines.as_ptr().add(Self::tag_lines(self.cap));
            std::slice::from_raw_parts(start.cast::<Slot>(), self.cap)
        }
    }

    /// The tags and the slots, both writable at once.
    #[inline]
    fn parts_mut(&mut self) -> (&mut [u8], &mut [Slot]) {
        let tag_lines = Self::tag_lines(self.cap);
        let (tags, slots) = self.lines.split_at_mut(tag_lines);
        // SAFETY: the first `tag_lines` lines hold `cap` tag bytes (`cap <= tag_lines * 64`),
        // the lines after them `cap` slots, 64-byte aligned and initialized (see `slots`); the
        // two halves of `split_at_mut` never overlap.
        unsafe {
            (
                std::slice::from_raw_parts_mut(tags.as_mut_ptr().cast::<u8>(), self.cap),
                std::slice::from_raw_parts_mut(slots.as_mut_ptr().cast::<Slot>(), self.cap),
            )
        }
    }

    /// The tags' start, with the memory's own provenance (see `ZeroedArray::as_raw`): what
    /// readers outside the lock load through, and what writes that may race with them use.
    #[inline]
    fn raw_tags(&self) -> *mut u8 {
        self.lines.as_raw().cast()
    }

    /// The slots' start, as [`Memory::raw_tags`].
    #[inline]
    fn raw_slots(&self) -> *mut Slot {
        self.lines
            .as_raw()
            .wrapping_add(Self::tag_lines(self.cap))
            .cast()
    }

    /// Sets slot `i`'s tag byte by storing its whole group of eight tags, atomically: a table
    /// that replays read outside the lock (see `readers`) loads a group as one atomic word,
    /// and a store of the same size is what may race with it. (A whole-group store also lets
    /// the next load of the group take it straight from the store, where a one-byte store
    /// would make that load wait; see `Mover::run`.)
    #[inline(always)]
    fn set_tag(&mut self, i: usize, tag: u8) {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        let base = i / GROUP * GROUP;
        let shift = (i % GROUP) * 8;
        // SAFETY: `base + GROUP <= cap` (tables hold whole groups), so the eight bytes are
        // tags of this memory, at a multiple of 8 from its 64-byte aligned start; the pointer
        // has the memory's provenance, and `&mut self` makes this thread its only writer.
        let group = unsafe { &*self.raw_tags().add(base).cast::<AtomicU64>() };
        let old = u64::from_le(group.load(Relaxed));
        let new = (old & !(0xFF << shift)) | (u64::from(tag) << shift);
        group.store(new.to_le(), Relaxed);
    }

    /// Writes slot `i`'s hash, each half by an atomic store (see [`Memory::set_tag`]).
    #[inline(always)]
    fn set_hash(&mut self, i: usize, h: &KeyHash) {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        assert!(i < self.cap);
        // SAFETY: slot `i` of this memory (`i < cap`), through a pointer with the memory's
        // provenance; `hi` and `lo` are aligned `u64`s, which `&mut self` makes this thread
        // the only writer of; readers outside the lock only load them, atomically.
        unsafe {
            let s = self.raw_slots().add(i);
            (*std::ptr::addr_of_mut!((*s).hi).cast::<AtomicU64>()).store(h.hi, Relaxed);
            (*std::ptr::addr_of_mut!((*s).lo).cast::<AtomicU64>()).store(h.lo, Relaxed);
        }
    }

    fn bytes(&self) -> usize {
        self.lines.len() * 64
    }

    fn populate(&mut self) {
        self.lines.populate();
    }

    /// Whether [`Memory::regrow`] can keep this memory.
    fn can_grow(&self) -> bool {
        self.lines.is_mapped()
    }

    /// This memory made into `cap` tags and slots by growing its mapping (see
    /// `ZeroedArray::grow`): the tags are zeroed, the slots keep whatever bytes they got, which
    /// nothing reads (see [`Table::recycle`]). Faulted in. Hands it back if it cannot grow.
    fn regrow(self, cap: usize) -> Result<Self, Self> {
        let Self { lines, cap: old } = self;
        let want = Self::tag_lines(cap) + (cap * std::mem::size_of::<Slot>()).div_ceil(64);
        match lines.grow(want) {
            Ok(lines) => {
                let mut mem = Self { lines, cap };
                mem.tags_mut().fill(EMPTY);
                mem.populate();
                Ok(mem)
            }
            Err(lines) => Err(Self { lines, cap: old }),
        }
    }
}

/// Under loom (whose atomics are not plain memory): two boxed arrays.
#[cfg(idemstore_loom)]
#[derive(Debug)]
struct Memory {
    tags: Box<[u8]>,
    slots: Box<[Slot]>,
}

#[cfg(idemstore_loom)]
impl Memory {
    fn new(cap: usize, _huge: bool) -> Self {
        Self {
            tags: vec![EMPTY; cap].into_boxed_slice(),
            slots: (0..cap).map(|_| Slot::empty()).collect(),
        }
    }
    fn try_new(cap: usize, huge: bool) -> Option<Self> {
        Some(Self::new(cap, huge))
    }
    fn tags(&self) -> &[u8] {
        &self.tags
    }
    fn tags_mut(&mut self) -> &mut [u8] {
        &mut self.tags
    }
    fn slots(&self) -> &[Slot] {
        &self.slots
    }
    fn parts_mut(&mut self) -> (&mut [u8], &mut [Slot]) {
        (&mut self.tags, &mut self.slots)
    }
    fn raw_tags(&self) -> *mut u8 {
        self.tags.as_ptr().cast_mut()
    }
    fn raw_slots(&self) -> *mut Slot {
        self.slots.as_ptr().cast_mut()
    }
    fn set_tag(&mut self, i: usize, tag: u8) {
        self.tags[i] = tag;
    }
    fn set_hash(&mut self, i: usize, h: &KeyHash) {
        self.slots[i].hi = h.hi;
        self.slots[i].lo = h.lo;
    }
    fn bytes(&self) -> usize {
        self.tags.len() * (1 + std::mem::size_of::<Slot>())
    }

    fn populate(&mut self) {}

    fn can_grow(&self) -> bool {
        false
    }

    fn regrow(self, _cap: usize) -> Result<Self, Self> {
        Err(self)
    }
}

impl Slot {
    #[cfg(any(test, idemstore_loom))]
    fn empty() -> Self {
        Self {
            hi: 0,
            lo: 0,
            word: StateWord::new(Word::new(crate::state::Phase::Vacant, 0, 0)),
        }
    }
}

/// Where a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The key sits in this slot.
    Found(usize),
    /// The key is absent; this is the first free slot on its probe path.
    Absent(usize),
}

/// The table of one shard. In this order (`repr(C)`; see `Shard`): the entry count, which
/// every new key writes, and what every probe reads first.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Table<V> {
    occupied: usize,
    /// Entries at which an insert must look at the table's size: before
    /// `rebuild_at` by [`spare_margin`] while the shard may still order a spare table for its
    /// next rebuild, at `rebuild_at` once it has (or if the table is too small to bother).
    check_at: usize,
    groups: usize,
    mem: Memory,
    /// Per group, how many entries sit beyond it on probe paths that ran through it while it
    /// was full (saturating at [`OVERFLOW_STUCK`]). A probe ends at a group whose count is 0.
    overflow: Overflow,
    /// Payload fingerprints (0 = none); allocated on the shard's first fingerprinted claim.
    fingerprints: Option<Box<[u64]>>,
    /// Empty for zero-sized `V`: dedup-only stores pay nothing for values.
    values: Box<[Option<Arc<V>>]>,
    /// Entries at which the next insert would take the load past 0.9.
    rebuild_at: usize,
    /// Whether this table's memory (and its successors') asks for huge pages.
    huge: bool,
}

/// A table's overflow counts, one byte per group, in an allocation held through a raw pointer
/// (as the table's memory is, see `ZeroedArray::as_raw`) rather than a `Box`: reads outside
/// the lock load counts through a pointer handed out earlier ([`Whereabouts`]) while the
/// owner stores counts, which the sole ownership a `Box` claims would not allow.
struct Overflow {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an `Overflow` owns its bytes as a `Box<[u8]>` does.
unsafe impl Send for Overflow {}
// SAFETY: as above; shared access hands out `&[u8]`, or reads through `raw`.
unsafe impl Sync for Overflow {}

impl Overflow {
    /// `len` zero counts; `None` if the memory cannot be had.
    fn try_new(len: usize) -> Option<Self> {
        let layout = std::alloc::Layout::array::<u8>(len.max(1)).ok()?;
        // SAFETY: the layout's size is at least 1.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(Self { ptr, len })
    }

    /// `len` zero counts, or the allocation error's handler.
    fn new(len: usize) -> Self {
        Self::try_new(len).unwrap_or_else(|| {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<u8>(len.max(1)).expect("a table's group count"),
            )
        })
    }

    /// The counts' start, with the allocation's own provenance, made without a reference.
    fn raw(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Overflow {
    fn drop(&mut self) {
        // SAFETY: allocated in `try_new` with this layout (which was valid then).
        unsafe {
            std::alloc::dealloc(
                self.ptr.as_ptr(),
                std::alloc::Layout::array::<u8>(self.len.max(1)).expect("as allocated"),
            )
        };
    }
}

impl std::ops::Deref for Overflow {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialized bytes (zero, or written since) owned here.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Overflow {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overflow")
            .field("groups", &self.len)
            .finish()
    }
}

/// Tables smaller than this (in slots) are cheap to allocate under the lock: no spare.
const SPARE_MIN_CAPACITY: usize = 4096;

/// The `check_at` of a fresh table of `cap` slots.
fn check_at(cap: usize) -> usize {
    let at = rebuild_at(cap);
    if cap >= SPARE_MIN_CAPACITY {
        at - spare_margin(at)
    } else {
        at
    }
}

/// The `rebuild_at` of a fresh table of `cap` slots: (n + 1) * 10 > cap * 9, i.e.
/// n >= cap * 9 / 10 rounded down.
fn rebuild_at(cap: usize) -> usize {
    cap * 9 / 10
}

/// How many inserts before its rebuild point a table asks for a spare: enough that the
/// thread making one (a millisecond or so for a large table) finishes before other threads
/// fill the table that far, small enough that few shards hold a spare at a time.
pub(crate) fn spare_margin(rebuild_at: usize) -> usize {
    (rebuild_at / 16).min(512)
}

/// An empty table made ready for a rebuild, and the map the rebuild fills (old slot to new).
/// Making one allocates and faults in fresh memory, which the kernel must zero; a shard has one
/// made outside its lock shortly before it needs it (see `Shard::make_room`), so a rebuild
/// holds the lock only while it moves entries.
#[derive(Debug)]
pub(crate) struct Spare<V> {
    table: Table<V>,
    moved: Vec<u32>,
}

impl<V> Spare<V> {
    /// The empty table and the map's memory, for a spare given back unused.
    pub(crate) fn into_parts(self) -> (Table<V>, Vec<u32>) {
        (self.table, self.moved)
    }

    /// A table of at least `capacity` slots, faulted in, to replace one of `old_capacity` slots.
    pub(crate) fn new(capacity: usize, huge: bool, old_capacity: usize) -> Self {
        let mut table = Table::new(capacity, huge);
        // The new table is about to be written all over: fault it in at once.
        table.mem.populate();
        Self::of(table, old_capacity)
    }

    /// A spare made of `table`, emptied ([`Table::recycle`]), to replace a table of
    /// `old_capacity` slots.
    pub(crate) fn recycled(mut table: Table<V>, old_capacity: usize) -> Self {
        table.recycle();
        Self::of(table, old_capacity)
    }

    /// A spare of at least `capacity` slots made by growing `table`, a smaller kept table,
    /// in place of its memory ([`Table::regrow`]): only the added memory is new, for the
    /// kernel to zero. A table that cannot grow is freed and a new one made.
    pub(crate) fn regrown(
        table: Table<V>,
        capacity: usize,
        huge: bool,
        old_capacity: usize,
    ) -> Self {
        match table.regrow(capacity) {
            Some(table) => Self::of(table, old_capacity),
            None => Self::new(capacity, huge, old_capacity),
        }
    }

    /// The empty `table` with an old-to-new map for a table of `old_capacity` slots.
    fn of(table: Table<V>, old_capacity: usize) -> Self {
        Self {
            table,
            moved: vec![MOVED_NOWHERE; old_capacity],
        }
    }

    /// The spare table's slots.
    pub(crate) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// Bytes this spare holds on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.table.heap_bytes() + self.moved.capacity() * std::mem::size_of::<u32>()
    }
}

/// Tables smaller than this (in slots) are rebuilt by one thread. From 4 K slots (1 M keys in
/// 128 shards have 11 K-slot tables) the hand-off pays: unique claims at 1 M keys went from
/// 7.53 / 7.53 / 7.61 to 8.54 / 8.28 / 8.68 M/s with this at 4 K instead of 32 K (three
/// alternating runs of the two bench binaries).
const HELP_MIN_CAPACITY: usize = 1 << 12;

/// What [`Table::rebuild`] made.
#[derive(Debug)]
pub(crate) struct Rebuilt<V> {
    pub(crate) table: Table<V>,
    /// For each old slot, the new slot of its entry, or [`MOVED_NOWHERE`].
    pub(crate) moved: Vec<u32>,
    /// Expired entries dropped: in flight (lease ran out), completed (ttl ran out).
    pub(crate) lease_expiries: u64,
    pub(crate) ttl_expiries: u64,
}

/// One part of a rebuild's moves: the live entries of the old slots from `old_from` (as many
/// as `moved` has), into the new table's groups from `new_from` (as many as `new_tags` holds).
/// An entry whose home is outside that part, or whose probe would leave it, is deferred to the
/// rebuild's end.
struct Mover<'a> {
    old_tags: &'a [u8],
    old_slots: &'a [Slot],
    old_from: usize,
    moved: &'a mut [u32],
    new_tags: &'a mut [u8],
    new_slots: &'a mut [Slot],
    /// The overflow counts of this part's groups.
    new_overflow: &'a mut [u8],
    new_from: usize,
    new_groups: usize,
    now: u64,
    /// In-flight entries are kept this long (ms) after their lease ran out ([`Word::is_held`]).
    lapse: u64,
    placed: usize,
    lease_expiries: u64,
    ttl_expiries: u64,
    deferred: Vec<u32>,
}

impl Mover<'_> {
    fn run(&mut self) {
        let here = self.new_tags.len() / GROUP;
        for k in 0..self.moved.len() {
            let i = self.old_from + k;
            let tag = self.old_tags[i];
            if tag < FIRST_TAG {
                continue;
            }
            let s = &self.old_slots[i];
            let w = s.word.load(Ordering::Relaxed);
            if !w.is_held(self.now, self.lapse) {
                match w.phase() {
                    Phase::Vacant => {}
                    Phase::InFlight => self.lease_expiries += 1,
                    Phase::Completed => self.ttl_expiries += 1,
                }
                continue;
            }
            let home = KeyHash { hi: s.hi, lo: s.lo }.home(self.new_groups);
            let Some(mut g) = home.checked_sub(self.new_from).filter(|&g| g < here) else {
                self.deferred.push(i as u32);
                continue;
            };
            let first = g;
            loop {
                let group = &mut self.new_tags[g * GROUP..(g + 1) * GROUP];
                let mut b = [0u8; GROUP];
                b.copy_from_slice(group);
                let tags = u64::from_le_bytes(b);
                let empty = zero_bytes(tags);
                if empty != 0 {
                    let at = empty.trailing_zeros() & !7;
                    // The group's eight tags are written back whole: the next entry, whose
                    // home is most often this group too, then reads them from this store
                    // (store-to-load forwarding), where a load over a one-byte store waits
                    // for it to reach the cache (about a quarter of the moves' time).
                    group.copy_from_slice(&(tags | u64::from(tag) << at).to_le_bytes());
                    let pos = g * GROUP + (at / 8) as usize;
                    let d = &mut self.new_slots[pos];
                    d.hi = s.hi;
                    d.lo = s.lo;
                    d.word.store_exclusive(w);
                    self.moved[k] = (self.new_from * GROUP + pos) as u32;
                    self.placed += 1;
                    // The full groups it passed count it (a deferred entry is counted when
                    // it is placed at the end).
                    for c in &mut self.new_overflow[first..g] {
                        if *c != OVERFLOW_STUCK {
                            *c += 1;
                        }
                    }
                    break;
                }
                g += 1;
                if g == here {
                    self.deferred.push(i as u32);
                    break;
                }
            }
        }
    }
}

/// A rebuild's offer of half its moves to a claim (or completion) that finds the shard locked,
/// which would otherwise wait for the whole move: with two threads on a growing store, one of
/// them was waiting on a rebuild most of the time the other spent rebuilding.
///
/// The rebuild holds the shard's write lock throughout. It offers a [`Mover`] that lives on its
/// stack; a claim that takes the offer (`Offered → Taken`) runs it and marks it done; the
/// rebuild, having moved its own half, takes the offer back if nobody took it, or waits until
/// it is done, and only then touches that half again or lets go of the lock.
#[derive(Debug, Default)]
pub(crate) struct Help {
    state: AtomicUsize,
    job: AtomicPtr<()>,
}

/// An offer not yet withdrawn; withdrawn on drop, so also when a panic unwinds.
struct Offered<'h>(&'h Help);

impl Offered<'_> {
    fn withdraw(self) -> bool {
        let help = self.0;
        std::mem::forget(self);
        help.withdraw()
    }
}

impl Drop for Offered<'_> {
    fn drop(&mut self) {
        self.0.withdraw();
    }
}

/// Ends the process if dropped: a helper that panicked halfway would leave the rebuild
/// waiting with the shard locked, or a table with half its entries. `Mover::run` has no
/// reachable panic (every index is bounded by the table sizes); this is a tripwire.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        std::process::abort();
    }
}

const IDLE: usize = 0;
const OFFERED: usize = 1;
const TAKEN: usize = 2;
const DONE: usize = 3;

// The mover runs on the helping thread: everything it borrows must be shareable there.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Mover<'static>>();
};

impl Help {
    fn offer(&self, mover: &mut Mover<'_>) {
        self.job
            .store(std::ptr::from_mut(mover).cast::<()>(), Ordering::Relaxed);
        // Release: a helper that sees the offer sees the job pointer and everything the mover
        // borrows (the new table's zeroed tags among it).
        self.state.store(OFFERED, Ordering::Release);
    }

    /// Takes the offer back: true if nobody took it (the caller runs the mover itself), false
    /// once a helper that took it is done with it.
    fn withdraw(&self) -> bool {
        // Acquire on both outcomes: a helper's writes through the mover happen before.
        if self
            .state
            .compare_exchange(OFFERED, IDLE, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
        {
            return true;
        }
        let mut spins = 0u32;
        while self.state.load(Ordering::Acquire) != DONE {
            spins += 1;
            crate::sync::spin_wait(spins);
        }
        self.state.store(IDLE, Ordering::Relaxed);
        false
    }

    /// Runs the half of a rebuild on offer, if there is one, and says whether it did; for a
    /// claim that found the shard's lock taken and is about to wait for it.
    #[inline]
    pub(crate) fn lend_a_hand(&self) -> bool {
        self.state.load(Ordering::Relaxed) == OFFERED && self.take()
    }

    #[cold]
    fn take(&self) -> bool {
        if self
            .state
            .compare_exchange(OFFERED, TAKEN, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let mover = self.job.load(Ordering::Relaxed).cast::<Mover<'_>>();
        let tripwire = AbortOnUnwind;
        // SAFETY: the offer (stored before `OFFERED`, read after our `Acquire` CAS) points to
        // a `Mover` on the stack of the rebuild that holds the shard lock. Once we moved the
        // state to `Taken`, that rebuild neither touches the mover nor returns until we store
        // `Done` (`Help::withdraw`), so the mover and everything it borrows stay valid and ours
        // alone until then: its `&mut` parts are the half of the new table and of the moved
        // map that the rebuild split off and does not use, its `&` parts are the old table,
        // which nothing writes while the lock is held (a rebuild that panics takes the offer
        // back, waiting for us, before it unwinds: `Offered`).
        unsafe { (*mover).run() };
        std::mem::forget(tripwire);
        self.state.store(DONE, Ordering::Release);
        true
    }
}

/// Whether values of type `V` take memory and so must be stored per slot.
#[inline]
pub(crate) const fn stores_values<V>() -> bool {
    std::mem::size_of::<V>() != 0
}

impl<V> Table<V> {
    /// A table of at least `capacity` slots (rounded up to whole groups), on huge pages.
    #[cfg(all(test, not(idemstore_loom)))]
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self::new(capacity, true)
    }

    /// A table of at least `capacity` slots (rounded up to whole groups), on huge pages if
    /// `huge` (see `Builder::huge_pages`).
    pub(crate) fn new(capacity: usize, huge: bool) -> Self {
        let cap = capacity.max(MIN_CAPACITY).div_ceil(GROUP) * GROUP;
        Self::with_memory(Memory::new(cap, huge), huge)
    }

    /// [`Table::new`], or `None` if its memory cannot be had: for the tables a store starts
    /// with, whose size the user chose (`Builder::initial_capacity`).
    pub(crate) fn try_new(capacity: usize, huge: bool) -> Option<Self> {
        let cap = capacity.max(MIN_CAPACITY).checked_next_multiple_of(GROUP)?;
        let mem = Memory::try_new(cap, huge)?;
        let overflow = Overflow::try_new(cap / GROUP)?;
        let mut values = Vec::new();
        if stores_values::<V>() {
            values.try_reserve_exact(cap).ok()?;
        }
        Some(Self::with_parts(mem, huge, overflow, values))
    }

    /// An empty table over `mem` (all tags `EMPTY`), whose capacity is a whole number of groups.
    fn with_memory(mem: Memory, huge: bool) -> Self {
        let groups = mem.tags().len() / GROUP;
        Self::with_parts(mem, huge, Overflow::new(groups), Vec::new())
    }

    /// [`Table::with_memory`], with the overflow counts (one per group) and the (empty) vector
    /// given for the values.
    fn with_parts(
        mem: Memory,
        huge: bool,
        overflow: Overflow,
        mut values: Vec<Option<Arc<V>>>,
    ) -> Self {
        let cap = mem.tags().len();
        debug_assert!(cap.is_multiple_of(GROUP) && overflow.len() == cap / GROUP);
        if stores_values::<V>() {
            values.resize_with(cap, || None);
        }
        Self {
            mem,
            huge,
            values: values.into_boxed_slice(),
            fingerprints: None,
            groups: cap / GROUP,
            overflow,
            occupied: 0,
            rebuild_at: rebuild_at(cap),
            check_at: check_at(cap),
        }
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.mem.tags().len()
    }

    /// Entries held (in any phase, expired or not).
    #[inline]
    pub(crate) fn occupied(&self) -> usize {
        self.occupied
    }

    /// Whether one more insert would take the load past 0.9.
    #[inline]
    pub(crate) fn needs_rebuild(&self) -> bool {
        self.occupied >= self.rebuild_at
    }

    /// Whether an insert must look at the table's size first: it needs a rebuild, or is close
    /// enough to one to order a spare table ([`Table::spare_ordered`] until the rebuild).
    #[inline]
    pub(crate) fn near_rebuild(&self) -> bool {
        self.occupied >= self.check_at
    }

    /// Notes that a spare table for the next rebuild was ordered: from now on only the
    /// rebuild itself makes [`Table::near_rebuild`] true.
    pub(crate) fn spare_ordered(&mut self) {
        self.check_at = self.rebuild_at;
    }

    /// Notes that the spare was given back: [`Table::near_rebuild`] turns true again where a
    /// spare is ordered.
    pub(crate) fn spare_returned(&mut self) {
        self.check_at = check_at(self.capacity());
    }

    /// Whether this table's memory asks for huge pages (and so its successors' do).
    pub(crate) fn huge(&self) -> bool {
        self.huge
    }

    /// Entries at which the table needs a rebuild.
    pub(crate) fn rebuild_at(&self) -> usize {
        self.rebuild_at
    }

    #[inline]
    pub(crate) fn is_occupied(&self, i: usize) -> bool {
        self.mem.tags()[i] >= crate::key::FIRST_TAG
    }

    #[inline]
    pub(crate) fn slot(&self, i: usize) -> &Slot {
        &self.mem.slots()[i]
    }

    /// The word of slot `i`; call only with the write lock held, or accept a racing guard's
    /// transition.
    #[inline]
    pub(crate) fn word(&self, i: usize) -> Word {
        self.mem.slots()[i].word.load(Ordering::Relaxed)
    }

    #[inline]
    fn group_tags(&self, g: usize) -> u64 {
        let base = g * GROUP;
        let mut b = [0u8; GROUP];
        b.copy_from_slice(&self.mem.tags()[base..base + GROUP]);
        u64::from_le_bytes(b)
    }

    /// Finds `h`, or the first free slot on its path.
    #[inline(always)]
    pub(crate) fn probe(&self, h: &KeyHash) -> Probe {
        let tag = h.tag();
        // No prefetch here: a claim started loading the home group's tags and slots before it
        // took the lock (`Whereabouts::prefetch`), a batch a few claims earlier, and the
        // owner's operations find their slot in cache.
        let mut g = h.home(self.groups);
        let mut free = usize::MAX;
        let mut left = self.groups;
        loop {
            let tags = self.group_tags(g);
            let mut hits = match_byte(tags, tag);
            while hits != 0 {
                let i = g * GROUP + (hits.trailing_zeros() / 8) as usize;
                let s = &self.mem.slots()[i];
                if s.hi == h.hi && s.lo == h.lo {
                    return Probe::Found(i);
                }
                hits &= hits - 1;
            }
            if free == usize::MAX {
                let empty = zero_bytes(tags);
                if empty != 0 {
                    free = g * GROUP + (empty.trailing_zeros() / 8) as usize;
                }
            }
            left -= 1;
            // No entry beyond this group came through it: the key is not further on.
            if self.overflow[g] == 0 || left == 0 {
                break;
            }
            g += 1;
            if g == self.groups {
                g = 0;
            }
        }
        if free == usize::MAX {
            // Every group on the path is full: the key goes in the first free slot past it.
            free = self.free_slot_for_new(h);
        }
        Probe::Absent(free)
    }

    /// The slot of `h`, if present.
    #[inline]
    pub(crate) fn find(&self, h: &KeyHash) -> Option<usize> {
        match self.probe(h) {
            Probe::Found(i) => Some(i),
            Probe::Absent(_) => None,
        }
    }

    /// The slot of `h`: `hint` if the entry is there (where an operation on `h` found or put
    /// it earlier: slots move only when the table is rebuilt), else found by a probe. Saves the
    /// probe's arithmetic for an owner's completion, release or extension.
    #[inline(always)]
    pub(crate) fn find_from(&self, h: &KeyHash, hint: u32) -> Option<usize> {
        let i = hint as usize;
        if let Some(s) = self.mem.slots().get(i) {
            // A slot emptied by a removal may still hold the hash it had: the tag says whether
            // it holds an entry now.
            if s.hi == h.hi && s.lo == h.lo && self.is_occupied(i) {
                return Some(i);
            }
        }
        self.find_moved(h)
    }

    /// [`Table::find`], out of line: for an entry not at its hint (a rebuild moved it, or it is
    /// gone).
    #[cold]
    #[inline(never)]
    fn find_moved(&self, h: &KeyHash) -> Option<usize> {
        self.find(h)
    }

    /// Puts a new entry in the free slot `pos` returned by [`Table::probe`].
    #[inline(always)]
    pub(crate) fn insert_at(&mut self, pos: usize, h: &KeyHash, word: Word, fingerprint: u64) {
        debug_assert!(!self.is_occupied(pos));
        self.pass(h.home(self.groups), pos / GROUP, 1);
        self.mem.set_tag(pos, h.tag());
        self.mem.set_hash(pos, h);
        self.mem.slots()[pos].word.store_exclusive(word);
        self.occupied += 1;
        self.set_fingerprint(pos, fingerprint);
    }

    /// Counts `by` (+1 or -1) into the overflow of every group from `home` up to, not
    /// including, `to`: the groups a probe path from `home` runs through to reach group `to`.
    /// Mostly there are none (the entry sits in its home group). A count that reached
    /// [`OVERFLOW_STUCK`] stays there: probes then always go on past that group, which is safe.
    ///
    /// Stored atomically (as wide as the reads outside the lock, see `readers`), through a
    /// pointer with the allocation's own provenance ([`Overflow::raw`]).
    #[inline]
    fn pass(&mut self, home: usize, to: usize, by: i8) {
        let counts = self.overflow.raw();
        let mut g = home;
        while g != to {
            assert!(g < self.overflow.len());
            // SAFETY: `g` is in bounds (just checked), the pointer comes from the array, and a
            // `u8` has the size and alignment of an `AtomicU8`; every access to a live table's
            // counts that may race (reads outside the lock) is atomic.
            let c = unsafe { std::sync::atomic::AtomicU8::from_ptr(counts.add(g)) };
            let n = c.load(std::sync::atomic::Ordering::Relaxed);
            debug_assert!(by > 0 || n > 0, "an overflow count below zero");
            if n != OVERFLOW_STUCK {
                c.store(
                    n.wrapping_add_signed(by),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            g += 1;
            if g == self.groups {
                g = 0;
            }
        }
    }

    /// Starts loading slot `i`'s tag and state word, which expiry is about to read.
    #[inline]
    pub(crate) fn prefetch_slot(&self, i: usize) {
        if let (Some(tag), Some(slot)) = (self.mem.tags().get(i), self.mem.slots().get(i)) {
            prefetch(std::ptr::from_ref(tag).cast::<i8>());
            prefetch(std::ptr::from_ref(&slot.word).cast::<i8>());
        }
    }

    /// Removes the entry in slot `i`, dropping its value. The slot is EMPTY again at once:
    /// probes end where a group's overflow count says nothing lies beyond, not at an EMPTY
    /// byte, so a removal leaves no tombstone, only takes its entry out of the counts of the
    /// groups its path ran through (the F14 scheme). A table never fills with tombstones and
    /// needs a rebuild only to grow.
    pub(crate) fn remove(&mut self, i: usize) {
        debug_assert!(self.is_occupied(i));
        let s = &self.mem.slots()[i];
        let home = KeyHash { hi: s.hi, lo: s.lo }.home(self.groups);
        self.pass(home, i / GROUP, -1);
        self.mem.set_tag(i, EMPTY);
        self.occupied -= 1;
        drop(self.take_value(i));
    }

    /// The fingerprint recorded for slot `i` (0 = none).
    #[inline]
    pub(crate) fn fingerprint(&self, i: usize) -> u64 {
        self.fingerprints.as_ref().map_or(0, |f| f[i])
    }

    #[inline]
    pub(crate) fn set_fingerprint(&mut self, i: usize, fp: u64) {
        if fp == 0 && self.fingerprints.is_none() {
            return;
        }
        let cap = self.capacity();
        let fps = self
            .fingerprints
            .get_or_insert_with(|| vec![0; cap].into_boxed_slice());
        fps[i] = fp;
    }

    /// A shared handle to slot `i`'s value.
    #[inline]
    pub(crate) fn value(&self, i: usize) -> Option<Arc<V>> {
        self.values.get(i)?.clone()
    }

    /// Stores `value` in slot `i`, dropping any old one. `&mut self`: the write lock is held.
    #[inline]
    pub(crate) fn set_value(&mut self, i: usize, value: Arc<V>) {
        if let Some(cell) = self.values.get_mut(i) {
            drop(cell.replace(value));
        }
    }

    /// Takes slot `i`'s value out. Needs `&mut self`, so no other access can race.
    #[inline]
    pub(crate) fn take_value(&mut self, i: usize) -> Option<Arc<V>> {
        self.values.get_mut(i)?.take()
    }

    /// Moves every entry held at `now` (ms) into `into`'s empty table: live ones, and in-flight
    /// ones whose lease ran out less than `lapse` ms before ([`Word::is_held`]). Returns the
    /// new table, for each old slot the new slot of its entry ([`MOVED_NOWHERE`] if it was
    /// dropped), so the wheel's records can follow their entries, and the expired entries
    /// dropped.
    ///
    /// With `help`, a large table's moves are cut in two: this thread moves the first half of
    /// the old table into the first part of the new one, and offers the second half to a claim
    /// that finds the shard locked meanwhile (see [`Help`]); the halves write to disjoint parts
    /// of the new table, and the few entries whose slots would cross the cut are placed after
    /// both are done.
    pub(crate) fn rebuild(
        &mut self,
        into: Spare<V>,
        now: u64,
        lapse: u64,
        help: Option<&Help>,
    ) -> Rebuilt<V> {
        let help = help.filter(|_| self.capacity() >= HELP_MIN_CAPACITY);
        self.rebuild_split(into, now, lapse, help)
    }

    /// [`Table::rebuild`], offering half the moves to `help` whatever the table's size.
    fn rebuild_split(
        &mut self,
        into: Spare<V>,
        now: u64,
        lapse: u64,
        help: Option<&Help>,
    ) -> Rebuilt<V> {
        let Spare {
            table: mut next,
            mut moved,
        } = into;
        debug_assert_eq!(next.occupied, 0);
        // A spare is made for the table it replaces; this only guards against a mismatch.
        moved.resize(self.capacity(), MOVED_NOWHERE);
        let (old_groups, new_groups) = (self.groups, next.groups);
        // Old groups below `split` go to new groups below `cut`: the homes scale by
        // `new_groups / old_groups`, so each half's entries land on their side of the cut but
        // for a few near it (and those that wrapped round the table's end).
        let split = if help.is_some() {
            old_groups / 2
        } else {
            old_groups
        };
        let cut = split * new_groups / old_groups;
        let (old_tags, old_slots) = (self.mem.tags(), self.mem.slots());
        let (new_tags, new_slots) = next.mem.parts_mut();
        let (tags_a, tags_b) = new_tags.split_at_mut(cut * GROUP);
        let (slots_a, slots_b) = new_slots.split_at_mut(cut * GROUP);
        let (overflow_a, overflow_b) = next.overflow.split_at_mut(cut);
        let (moved_a, moved_b) = moved.split_at_mut(split * GROUP);
        let mover = |old_from, moved, new_tags, new_slots, new_overflow, new_from| Mover {
            old_tags,
            old_slots,
            old_from,
            moved,
            new_tags,
            new_slots,
            new_overflow,
            new_from,
            new_groups,
            now,
            lapse,
            placed: 0,
            lease_expiries: 0,
            ttl_expiries: 0,
            deferred: Vec::new(),
        };
        let mut a = mover(0, moved_a, tags_a, slots_a, overflow_a, 0);
        let mut b = mover(split * GROUP, moved_b, tags_b, slots_b, overflow_b, cut);
        match help {
            Some(help) => {
                help.offer(&mut b);
                // From here until the offer is withdrawn, `b` is the helper's: it is taken back
                // (waiting for a helper that took it) even if this half panics, before
                // unwinding frees what `b` borrows.
                let offer = Offered(help);
                a.run();
                if offer.withdraw() {
                    b.run();
                }
            }
            None => {
                a.run();
                b.run();
            }
        }
        let (placed, lease_expiries, ttl_expiries) = (
            a.placed + b.placed,
            a.lease_expiries + b.lease_expiries,
            a.ttl_expiries + b.ttl_expiries,
        );
        let deferred: Vec<u32> = a.deferred.into_iter().chain(b.deferred).collect();
        next.occupied = placed;
        for i in deferred {
            let i = i as usize;
            let s = &self.mem.slots()[i];
            let h = KeyHash { hi: s.hi, lo: s.lo };
            let pos = next.free_slot_for_new(&h);
            next.insert_at(pos, &h, s.word.load(Ordering::Relaxed), 0);
            moved[i] = pos as u32;
        }
        // Fingerprints and values follow their entries (dedup-only stores have neither). A
        // spare has no fingerprints of its own (`Table::recycle` drops them), checked anyway:
        // a stale one would make a live key's claims mismatch.
        debug_assert!(next.fingerprints.is_none());
        if self.fingerprints.is_some() || next.fingerprints.is_some() || !self.values.is_empty() {
            for (i, &to) in moved.iter().enumerate() {
                if to == MOVED_NOWHERE {
                    continue;
                }
                next.set_fingerprint(to as usize, self.fingerprint(i));
                if let Some(v) = self.take_value(i) {
                    next.set_value(to as usize, v);
                }
            }
        }
        Rebuilt {
            table: next,
            moved,
            lease_expiries,
            ttl_expiries,
        }
    }

    /// The first empty slot on `h`'s probe path, for a key known to be absent: no tags to
    /// compare, no hashes to read. Rare: a probe whose path was all full groups, an entry a
    /// rebuild's half could not place.
    #[cold]
    #[inline(never)]
    fn free_slot_for_new(&self, h: &KeyHash) -> usize {
        let mut g = h.home(self.groups);
        loop {
            let empty = zero_bytes(self.group_tags(g));
            if empty != 0 {
                return g * GROUP + (empty.trailing_zeros() / 8) as usize;
            }
            g += 1;
            if g == self.groups {
                g = 0;
            }
        }
    }

    /// Empties this table for another use, keeping its memory: every tag goes back to
    /// `EMPTY` and every stored value is dropped. Slots keep their old bytes, which nothing
    /// reads: a slot is read only where its tag says it holds an entry, and every insert
    /// writes the slot whole (hash, word and, where the table keeps them, fingerprint). Costs
    /// a pass over the tags (a 25th of the memory) instead of the kernel zeroing fresh pages.
    pub(crate) fn recycle(&mut self) {
        self.mem.tags_mut().fill(EMPTY);
        // The old entries' fingerprints go too: a rebuild into this table writes fingerprints
        // only where the table it empties had some.
        self.fingerprints = None;
        for cell in self.values.iter_mut() {
            drop(cell.take());
        }
        self.overflow.fill(0);
        self.occupied = 0;
        let cap = self.capacity();
        self.rebuild_at = rebuild_at(cap);
        self.check_at = check_at(cap);
    }

    /// This table, emptied, as a table of at least `capacity` slots that keeps its memory
    /// and adds what it lacks (`ZeroedArray::grow`). `None`, and the table freed, if its memory
    /// cannot grow that way (it is not a mapping of its own, or not smaller, or the kernel
    /// refuses).
    pub(crate) fn regrow(self, capacity: usize) -> Option<Self> {
        let cap = capacity.max(MIN_CAPACITY).div_ceil(GROUP) * GROUP;
        if cap <= self.capacity() {
            return None;
        }
        // The old values (user code may run in their `Drop`) and fingerprints go here.
        let Self { mem, huge, .. } = self;
        let mem = mem.regrow(cap).ok()?;
        Some(Self::with_memory(mem, huge))
    }

    /// Whether [`Table::regrow`] can keep this table's memory.
    pub(crate) fn can_grow(&self) -> bool {
        self.mem.can_grow()
    }

    /// Bytes this table holds on the heap (tags, slots, values, fingerprints).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.mem.bytes()
            + self.overflow.len()
            + self.values.len() * std::mem::size_of::<Option<Arc<V>>>()
            + self.fingerprints.as_ref().map_or(0, |f| f.len() * 8)
    }
}

#[cfg(all(test, not(idemstore_loom)))]
mod tests {
    use super::*;
    use crate::key::hash_key;
    use crate::state::Phase;

    fn w(d: u64) -> Word {
        Word::new(Phase::InFlight, 1, d)
    }

    #[test]
    fn zero_byte_detection_is_exact() {
        for x in [
            0u64,
            u64::MAX,
            0x0100_0000_0000_0000,
            0x0001_0001_0001_0001,
            0x8000_0000_0000_0080,
        ] {
            let got = zero_bytes(x);
            for b in 0..8 {
                let byte = (x >> (b * 8)) as u8;
                assert_eq!(got >> (b * 8 + 7) & 1 == 1, byte == 0, "x={x:#x} byte {b}");
            }
        }
        // The classic trick reports a false zero for 0x01 above a real zero: this one doesn't.
        assert_eq!(zero_bytes(0xFFFF_FFFF_FFFF_0100), 0x80);
    }

    /// A hint only counts where the slot holds the key now: not a slot a removal emptied,
    /// nor one of a recycled table, both of which keep the key's hash and word bytes.
    #[test]
    fn find_from_ignores_stale_hashes_and_bad_hints() {
        let keys: Vec<KeyHash> = (0..40u64)
            .map(|i| hash_key(11, b"", &i.to_le_bytes()))
            .collect();
        let mut t: Table<()> = Table::with_capacity(64);
        let mut at = Vec::new();
        for h in &keys {
            let Probe::Absent(pos) = t.probe(h) else {
                panic!("{h:?} is new")
            };
            t.insert_at(pos, h, w(10), 0);
            at.push(pos);
        }
        for (h, &pos) in keys.iter().zip(&at) {
            assert_eq!(t.find_from(h, pos as u32), Some(pos));
            assert_eq!(t.find_from(h, u32::MAX), Some(pos));
            assert_eq!(t.find_from(h, t.capacity() as u32), Some(pos));
        }
        // Another key's slot as the hint: probed.
        assert_eq!(t.find_from(&keys[0], at[1] as u32), Some(at[0]));
        // Removed: the slot keeps the hash, the tag says EMPTY.
        t.remove(at[0]);
        assert_eq!(t.find_from(&keys[0], at[0] as u32), None);
        // Recycled: every slot keeps its hash, every tag is EMPTY.
        t.recycle();
        for (h, &pos) in keys.iter().zip(&at) {
            assert_eq!(t.find_from(h, pos as u32), None);
        }
    }

    #[test]
    fn empty_slot_is_all_zero() {
        let s = Slot::empty();
        assert_eq!((s.hi, s.lo), (0, 0));
        assert_eq!(
            s.word.load(Ordering::Relaxed),
            Word::new(Phase::Vacant, 0, 0)
        );
        assert_eq!(format!("{:?}", Word::new(Phase::Vacant, 0, 0)), "Word(0)");
        let t: Table<()> = Table::with_capacity(64);
        assert!(t.mem.slots().iter().all(|s| s.hi == 0 && s.lo == 0));
    }

    #[test]
    fn slots_are_24_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn insert_find_remove() {
        let mut t: Table<()> = Table::with_capacity(64);
        let keys: Vec<_> = (0..50u32)
            .map(|i| hash_key(9, b"", &i.to_le_bytes()))
            .collect();
        for (i, h) in keys.iter().enumerate() {
            match t.probe(h) {
                Probe::Absent(pos) => t.insert_at(pos, h, w(i as u64), 0),
                Probe::Found(_) => panic!("not yet inserted"),
            }
        }
        assert_eq!(t.occupied(), 50);
        for (i, h) in keys.iter().enumerate() {
            let at = t.find(h).expect("present");
            assert_eq!(t.word(at).deadline(), i as u64);
        }
        for h in &keys[..25] {
            let at = t.find(h).unwrap();
            t.remove(at);
        }
        assert_eq!(t.occupied(), 25);
        for (i, h) in keys.iter().enumerate() {
            assert_eq!(t.find(h).is_some(), i >= 25);
        }
    }

    #[test]
    fn full_probe_chains_survive_removals() {
        // A table of two groups, filled to 15 of 16: chains cross group boundaries.
        let mut t: Table<u32> = Table::with_capacity(16);
        let keys: Vec<_> = (0..15u32)
            .map(|i| hash_key(1, b"", &i.to_le_bytes()))
            .collect();
        for h in &keys {
            let Probe::Absent(pos) = t.probe(h) else {
                panic!()
            };
            t.insert_at(pos, h, w(1), 7);
        }
        for h in keys.iter().step_by(2) {
            let at = t.find(h).unwrap();
            t.remove(at);
        }
        for (i, h) in keys.iter().enumerate() {
            assert_eq!(t.find(h).is_some(), i % 2 == 1, "key {i}");
        }
        let Rebuilt {
            table: rebuilt,
            moved,
            ..
        } = t.rebuild(Spare::new(32, true, t.capacity()), 0, 0, None);
        assert_eq!(rebuilt.occupied(), 7);
        for (i, h) in keys.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
            let _ = i;
            let old = t.find(h).unwrap();
            assert_eq!(rebuilt.find(h), Some(moved[old] as usize));
        }
        for (i, h) in keys.iter().enumerate() {
            let found = rebuilt.find(h);
            assert_eq!(found.is_some(), i % 2 == 1);
            if let Some(at) = found {
                assert_eq!(rebuilt.fingerprint(at), 7);
            }
        }
    }

    /// A hash whose home is group `home` of 8, told apart by `n`.
    fn homed(home: u64, n: u64) -> KeyHash {
        KeyHash {
            hi: 0x100 + n,
            lo: (home << 61) | n,
        }
    }

    /// A read outside the lock (here with no writer at all) follows a key's probe path as a
    /// locked probe does: past a group only while its overflow count says an entry lies
    /// beyond, for up to `UNLOCKED_PROBE_GROUPS` groups, round the table's end too.
    #[cfg(not(idemstore_loom))]
    #[test]
    fn reads_outside_the_lock_follow_the_probe_path_while_overflow_counts_say_so() {
        let mut t: Table<()> = Table::with_capacity(64);
        let at = Whereabouts::default();
        let insert = |t: &mut Table<()>, h: &KeyHash, deadline: u64| {
            let Probe::Absent(pos) = t.probe(h) else {
                panic!("absent")
            };
            t.insert_at(pos, h, w(deadline), 0);
            pos
        };
        let read = |t: &Table<()>, h: &KeyHash| {
            at.update(t);
            // SAFETY: the place is the live table's, read with no writer at work.
            unsafe { at.place().word(h) }.map(Word::deadline)
        };
        // Twelve keys homed at group 6: eight fill it, four overflow into group 7.
        let keys: Vec<KeyHash> = (0..12).map(|n| homed(6, n)).collect();
        for (n, h) in keys.iter().enumerate() {
            insert(&mut t, h, 100 + n as u64);
        }
        for (n, h) in keys.iter().enumerate() {
            assert_eq!(read(&t, h), Some(100 + n as u64), "key {n}");
        }
        // Absent keys: homed at 6, the probe goes on into 7 and ends there (its count is 0);
        // homed at 2, it ends in its home group.
        assert_eq!(read(&t, &homed(6, 99)), None);
        assert_eq!(read(&t, &homed(2, 99)), None);
        // Nine more homed at 7: group 7 is full with four of 6's keys and four of these, so
        // the last one wraps round to group 0, through 7, and is read there.
        for n in 0..5 {
            insert(&mut t, &homed(7, 200 + n), 300 + n);
        }
        assert_eq!(t.find(&homed(7, 204)).unwrap() / GROUP, 0);
        assert_eq!(read(&t, &homed(7, 204)), Some(304));
        // Once the overflowed keys are gone, the counts end the probe at the home group.
        for h in &keys[8..] {
            t.remove(t.find(h).unwrap());
        }
        t.remove(t.find(&homed(7, 204)).unwrap());
        assert_eq!(t.overflow[6..8], [0, 0]);
        assert_eq!(read(&t, &keys[9]), None);
        // A key past the groups a read looks through is left to the locked probe: fill groups
        // 0 to 4 from home 0 (40 keys), the last ones land in group 4, the fifth group.
        let mut t: Table<()> = Table::with_capacity(64);
        for n in 0..40 {
            insert(&mut t, &homed(0, n), n);
        }
        assert_eq!(t.find(&homed(0, 39)).unwrap() / GROUP, 4);
        assert_eq!(read(&t, &homed(0, 31)), Some(31), "in the fourth group");
        assert_eq!(
            read(&t, &homed(0, 39)),
            None,
            "in the fifth group: the locked probe's"
        );
        assert!(t.find(&homed(0, 39)).is_some());
    }

    #[test]
    fn removals_leave_no_tombstone_and_overflow_counts_end_probes() {
        let mut t: Table<()> = Table::with_capacity(64);
        assert_eq!(t.groups, 8);
        let insert = |t: &mut Table<()>, h: &KeyHash| {
            let Probe::Absent(pos) = t.probe(h) else {
                panic!("absent")
            };
            t.insert_at(pos, h, w(5), 0);
            pos
        };
        // Nine keys homed at group 0: the ninth overflows into group 1, through group 0.
        let keys: Vec<KeyHash> = (0..9).map(|n| homed(0, n)).collect();
        for h in &keys {
            insert(&mut t, h);
        }
        let overflow = t.find(&keys[8]).unwrap();
        assert_eq!(overflow / GROUP, 1);
        assert_eq!(t.overflow[..2], [1, 0]);
        // A removal in group 0 frees its slot at once; the overflowed key is still found.
        let freed = t.find(&keys[0]).unwrap();
        t.remove(freed);
        assert_eq!(t.mem.tags()[freed], EMPTY);
        assert_eq!(t.overflow[0], 1, "the ninth key still lies beyond group 0");
        assert_eq!(t.find(&keys[8]), Some(overflow));
        assert!(t.find(&keys[0]).is_none());
        // A new key homed there takes the freed slot, passing nothing.
        assert_eq!(insert(&mut t, &homed(0, 50)), freed);
        assert_eq!(t.overflow[0], 1);
        // The overflowed key goes: nothing lies beyond group 0 any more.
        t.remove(overflow);
        assert_eq!(t.overflow[..2], [0, 0]);
        for h in keys[1..8].iter().chain([&homed(0, 50)]) {
            assert!(t.find(h).is_some());
        }
        // Keys homed at the last group overflow round the table's end into group 0.
        for n in 0..9 {
            insert(&mut t, &homed(7, 100 + n));
        }
        let wrapped = t.find(&homed(7, 108)).unwrap();
        assert_eq!(wrapped / GROUP, 1, "wrapped round, past the full group 0");
        assert_eq!((t.overflow[7], t.overflow[0]), (1, 1));
        t.remove(wrapped);
        assert_eq!((t.overflow[7], t.overflow[0]), (0, 0));
        assert!(t
            .mem
            .tags()
            .iter()
            .all(|&tag| tag == EMPTY || tag >= FIRST_TAG));
    }

    /// Random inserts and removals on a small, crowded table whose keys share a few homes, so
    /// that probe paths run across many groups and round the table's end: after every step,
    /// each key the model holds is found with its own word, fingerprint and value, a removed
    /// key is not, and every overflow count is the number of entries whose path runs through
    /// its group.
    #[test]
    fn overflow_counts_follow_every_insert_and_removal() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..10 {
            let mut t: Table<u64> = Table::with_capacity(128);
            let groups = t.groups;
            let mut held: Vec<(KeyHash, u64)> = Vec::new();
            let mut gone: Vec<KeyHash> = Vec::new();
            for n in 0..3000u64 {
                let insert = held.len() < 40 || (held.len() < 112 && next() % 2 == 0);
                if insert {
                    // Homes bunched on three groups: long paths.
                    let home = [0, groups / 2, groups - 1][(next() % 3) as usize];
                    let mid = ((home as u128) << 64 | 1 << 63) / groups as u128;
                    let h = KeyHash {
                        hi: 0x100 + n,
                        lo: mid as u64 ^ (n & 0xFF),
                    };
                    assert_eq!(h.home(groups), home);
                    let Probe::Absent(pos) = t.probe(&h) else {
                        panic!("a new key is absent")
                    };
                    t.insert_at(pos, &h, w(n), n + 1);
                    t.set_value(pos, Arc::new(n));
                    held.push((h, n));
                } else {
                    let (h, _) = held.swap_remove((next() % held.len() as u64) as usize);
                    t.remove(t.find(&h).expect("a held key is found"));
                    gone.push(h);
                }
                assert_eq!(t.occupied(), held.len());
                for (h, n) in &held {
                    let at = t.find(h).expect("a held key is found");
                    assert_eq!(t.word(at), w(*n));
                    assert_eq!(t.fingerprint(at), n + 1);
                    assert_eq!(t.value(at).as_deref(), Some(n));
                }
                assert_eq!(counted_overflow(&t), &t.overflow[..]);
                for h in gone.iter().rev().take(20) {
                    assert!(t.find(h).is_none(), "a removed key is gone");
                }
            }
        }
    }

    /// Inserts `keys` into `t` with word `w(1)`, fingerprint 9 and `value`.
    fn insert_all(t: &mut Table<u32>, keys: &[KeyHash], value: &Arc<u32>) {
        for h in keys {
            let Probe::Absent(pos) = t.probe(h) else {
                panic!()
            };
            t.insert_at(pos, h, w(1), 9);
            t.set_value(pos, Arc::clone(value));
        }
    }

    /// Checks that `t` is empty (no entry, no overflow count, every tag EMPTY, no key of `keys`),
    /// then that it takes `keys[from..]` and finds exactly those, each written whole.
    fn check_empty_and_reusable(t: &mut Table<u32>, keys: &[KeyHash], from: usize) {
        assert_eq!(t.occupied(), 0);
        assert!(t.overflow.iter().all(|&c| c == 0));
        assert!(t.mem.tags().iter().all(|&tag| tag == EMPTY));
        assert!(!t.needs_rebuild() && !t.near_rebuild());
        for h in keys {
            assert!(t.find(h).is_none());
        }
        for h in &keys[from..] {
            let Probe::Absent(pos) = t.probe(h) else {
                panic!()
            };
            t.insert_at(pos, h, w(2), 0);
        }
        for (i, h) in keys.iter().enumerate() {
            let found = t.find(h);
            assert_eq!(found.is_some(), i >= from, "key {i}");
            if let Some(at) = found {
                assert_eq!((t.word(at), t.fingerprint(at)), (w(2), 0), "written whole");
                assert!(t.value(at).is_none());
            }
        }
    }

    #[test]
    fn a_recycled_table_is_empty_and_takes_new_keys() {
        let mut t: Table<u32> = Table::with_capacity(64);
        let keys: Vec<_> = (0..50u32)
            .map(|i| hash_key(3, b"", &i.to_le_bytes()))
            .collect();
        let value = Arc::new(7u32);
        insert_all(&mut t, &keys[..40], &value);
        let at = t.find(&keys[0]).unwrap();
        t.remove(at);
        assert_eq!(Arc::strong_count(&value), 40);
        t.recycle();
        assert_eq!(Arc::strong_count(&value), 1, "stored values dropped");
        check_empty_and_reusable(&mut t, &keys, 10);
    }

    #[test]
    fn a_regrown_table_is_larger_empty_and_takes_new_keys() {
        // 100 000 slots: 2.5 MB, a mapping of its own, which is what can grow.
        let keys: Vec<_> = (0..90_000u32)
            .map(|i| hash_key(5, b"", &i.to_le_bytes()))
            .collect();
        let value = Arc::new(7u32);
        let mut t: Table<u32> = Table::new(100_000, true);
        insert_all(&mut t, &keys[..80_000], &value);
        let old_cap = t.capacity();
        if !t.can_grow() {
            // Huge pages need Linux: elsewhere the table is freed and the caller makes one.
            assert!(t.regrow(old_cap * 2).is_none());
            return;
        }
        assert!(t.regrow(old_cap).is_none(), "not larger: freed");
        let mut t: Table<u32> = Table::new(100_000, true);
        insert_all(&mut t, &keys[..80_000], &value);
        let mut g = t.regrow(150_000).expect("a mapped table grows");
        assert_eq!(Arc::strong_count(&value), 1, "stored values dropped");
        assert_eq!(g.capacity(), 150_000usize.div_ceil(GROUP) * GROUP);
        assert_eq!(g.values.len(), g.capacity());
        assert!(g.can_grow() && g.huge());
        // Filled past the old size: the slots' old bytes never show through.
        check_empty_and_reusable(&mut g, &keys, 40_000);
    }

    /// A table of `cap` slots filled to 0.85 with keys `0..n` (values, fingerprints, and words
    /// that are live at time 10 except for every fifth key, whose lease ran out at 5).
    fn filled(cap: usize) -> (Table<u32>, Vec<KeyHash>) {
        let mut t: Table<u32> = Table::new(cap, false);
        let n = cap * 85 / 100;
        let keys: Vec<_> = (0..n as u32)
            .map(|i| hash_key(9, b"", &i.to_le_bytes()))
            .collect();
        for (i, h) in keys.iter().enumerate() {
            let Probe::Absent(pos) = t.probe(h) else {
                panic!()
            };
            let deadline = if i % 5 == 0 { 5 } else { 1000 + i as u64 };
            t.insert_at(
                pos,
                h,
                Word::new(Phase::InFlight, i as u64, deadline),
                i as u64 + 1,
            );
            t.set_value(pos, Arc::new(i as u32));
        }
        (t, keys)
    }

    /// Checks that `r` holds exactly the live keys of `old`'s (as `filled` made them), where
    /// `moved` says, with their words, fingerprints and values.
    /// The overflow counts `t` should have, worked out from scratch: for every entry, one in
    /// each group its path runs through before its own.
    fn counted_overflow<V>(t: &Table<V>) -> Vec<u8> {
        let mut counts = vec![0u8; t.groups];
        for i in (0..t.capacity()).filter(|&i| t.is_occupied(i)) {
            let s = t.slot(i);
            let mut g = KeyHash { hi: s.hi, lo: s.lo }.home(t.groups);
            while g != i / GROUP {
                counts[g] += 1;
                g = (g + 1) % t.groups;
            }
        }
        counts
    }

    fn check_rebuilt(old: &Table<u32>, r: &Rebuilt<u32>, keys: &[KeyHash]) {
        let mut live = 0;
        for (i, h) in keys.iter().enumerate() {
            let from = old.find(h).expect("still in the old table");
            let found = r.table.find(h);
            if i % 5 == 0 {
                assert_eq!(found, None, "expired key {i} dropped");
                assert_eq!(r.moved[from], MOVED_NOWHERE);
                continue;
            }
            live += 1;
            let at = found.unwrap_or_else(|| panic!("live key {i} moved"));
            assert_eq!(r.moved[from] as usize, at, "key {i}: the map says where");
            assert_eq!(r.table.word(at), old.word(from));
            assert_eq!(r.table.fingerprint(at), i as u64 + 1);
            assert_eq!(r.table.value(at).as_deref(), Some(&(i as u32)));
        }
        assert_eq!(r.table.occupied(), live);
        assert_eq!(counted_overflow(&r.table), &r.table.overflow[..]);
        assert_eq!(r.ttl_expiries, 0);
        assert_eq!(r.lease_expiries as usize, keys.len().div_ceil(5));
    }

    #[test]
    fn a_rebuild_into_a_recycled_table_leaves_no_old_fingerprints() {
        // Dedup-only tables (no values, which would make the rebuild copy fingerprints anyway):
        // the donor's entries all had fingerprints, the table rebuilt into it has none.
        let insert = |t: &mut Table<()>, seed: u64, n: u32, fp: u64| {
            let keys: Vec<_> = (0..n)
                .map(|i| hash_key(seed, b"", &i.to_le_bytes()))
                .collect();
            for h in &keys {
                let Probe::Absent(pos) = t.probe(h) else {
                    panic!()
                };
                t.insert_at(pos, h, w(100), fp);
            }
            keys
        };
        let mut donor: Table<()> = Table::new(8000, false);
        insert(&mut donor, 12, 7000, 77);
        let mut t: Table<()> = Table::new(5000, false);
        let keys = insert(&mut t, 11, 4000, 0);
        let spare = Spare::recycled(donor, t.capacity());
        let r = t.rebuild(spare, 10, 0, None);
        for h in &keys {
            let at = r.table.find(h).expect("moved");
            assert_eq!(r.table.fingerprint(at), 0, "no fingerprint of the donor's");
        }
    }

    #[test]
    fn a_rebuild_moves_every_live_entry_alone() {
        for cap in [HELP_MIN_CAPACITY - 8, HELP_MIN_CAPACITY + 8 * 1000] {
            let (mut t, keys) = filled(cap);
            let spare = Spare::new(cap * 3 / 2, false, t.capacity());
            // Nobody takes the offer: the rebuild moves both halves itself.
            let help = Help::default();
            let r = t.rebuild(spare, 10, 0, Some(&help));
            check_rebuilt(&t, &r, &keys);
            assert_eq!(help.state.load(Ordering::Relaxed), IDLE);
        }
    }

    #[test]
    fn a_rebuild_helped_by_another_thread_moves_every_live_entry() {
        let help = Help::default();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let helped = std::thread::scope(|s| {
            let helper = s.spawn(|| {
                let mut helped = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    helped += usize::from(help.lend_a_hand());
                    std::hint::spin_loop();
                }
                helped
            });
            // Growing and not, so that the cut between the halves falls at different places.
            for (cap, grown) in [(40_000, 60_000), (40_000, 40_000), (70_001, 100_003)] {
                let (mut t, keys) = filled(cap);
                let r = t.rebuild(Spare::new(grown, false, t.capacity()), 10, 0, Some(&help));
                check_rebuilt(&t, &r, &keys);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            helper.join().expect("the helper does not panic")
        });
        // Whether the helper came in time is up to the scheduler; every outcome was checked.
        assert!(helped <= 3);
        assert_eq!(help.state.load(Ordering::Relaxed), IDLE);
    }

    #[test]
    fn a_helper_runs_an_offered_half_once() {
        let (t, keys) = filled(40_000);
        let mut next: Table<u32> = Table::new(60_000, false);
        let mut moved = vec![MOVED_NOWHERE; t.capacity()];
        let (new_tags, new_slots) = next.mem.parts_mut();
        let mut m = Mover {
            old_tags: t.mem.tags(),
            old_slots: t.mem.slots(),
            old_from: 0,
            moved: &mut moved,
            new_tags,
            new_slots,
            new_overflow: &mut next.overflow,
            new_from: 0,
            new_groups: 60_000 / GROUP,
            now: 10,
            lapse: 0,
            placed: 0,
            lease_expiries: 0,
            ttl_expiries: 0,
            deferred: Vec::new(),
        };
        let help = Help::default();
        assert!(!help.lend_a_hand(), "nothing on offer");
        help.offer(&mut m);
        assert!(help.lend_a_hand(), "took the offer");
        assert!(!help.lend_a_hand(), "taken once");
        assert!(!help.withdraw(), "done by the helper");
        assert!(!help.lend_a_hand(), "back to idle");
        let placed = m.placed + m.deferred.len();
        assert_eq!(placed, keys.len() - keys.len().div_ceil(5));
        help.offer(&mut m);
        assert!(help.withdraw(), "taken back untouched");
    }

    #[test]
    fn dedup_only_tables_store_no_values() {
        let t: Table<()> = Table::with_capacity(1000);
        assert_eq!(t.values.len(), 0);
        assert!(t.fingerprints.is_none());
        // A tag byte and a 24-byte slot per slot, each array rounded up to whole cache lines,
        // and an overflow count per group of eight.
        let cap = t.capacity();
        assert_eq!(
            t.heap_bytes(),
            cap.div_ceil(64) * 64 + (cap * 24).div_ceil(64) * 64 + cap / GROUP
        );
    }
}

#[cfg(all(test, idemstore_loom))]
mod loom_models {
    use super::*;
    use crate::key::hash_key;

    /// A rebuild offers half its moves while another thread, which found the shard locked, may
    /// take them: whoever moves that half, every live entry ends up in the new table exactly
    /// once, and the rebuild sees the helper's writes.
    #[test]
    fn a_half_on_offer_is_moved_once_and_seen() {
        loom::model(|| {
            let help = crate::sync::Arc::new(Help::default());
            let helper = {
                let help = crate::sync::Arc::clone(&help);
                loom::thread::spawn(move || {
                    help.lend_a_hand();
                })
            };
            let mut t: Table<()> = Table::new(32, false);
            let keys: Vec<_> = (0..6u32)
                .map(|i| hash_key(1, b"", &i.to_le_bytes()))
                .collect();
            for (i, h) in keys.iter().enumerate() {
                let Probe::Absent(pos) = t.probe(h) else {
                    panic!()
                };
                t.insert_at(pos, h, Word::new(Phase::InFlight, i as u64, 100), 0);
            }
            let r = t.rebuild_split(Spare::new(48, false, t.capacity()), 1, 0, Some(&help));
            helper.join().unwrap();
            assert_eq!(r.table.occupied(), keys.len());
            for h in &keys {
                let from = t.find(h).unwrap();
                assert_eq!(r.table.find(h), Some(r.moved[from] as usize));
            }
        });
    }
}
