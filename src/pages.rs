//! Zero-filled arrays for the tables, on transparent huge pages where Linux offers them.
//!
//! A claim's cost at millions of keys is mostly two random memory accesses (a tag group and a
//! slot), and in a virtual machine a TLB miss on a 4 KiB page costs as much again as the cache
//! miss. A table of 2 MiB or more is therefore mapped on its own at a 2 MiB boundary and marked
//! `MADV_HUGEPAGE`, so the kernel backs it with 2 MiB pages when it can (the system's
//! `transparent_hugepage` setting `always` or `madvise`; with `never` nothing changes). The
//! mapping is fresh zero pages, faulted in on first touch, so a new table costs nothing until
//! it is used. Smaller arrays, and other systems, use the global allocator's zeroed memory.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The size of a transparent huge page on x86-64 and most arm64 kernels.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// A fixed-length array whose elements start as all-zero bytes.
pub(crate) struct ZeroedArray<T> {
    ptr: NonNull<T>,
    len: usize,
    /// Whether the memory is a mapping of its own (else it came from the global allocator).
    mapped: bool,
}

// SAFETY: a `ZeroedArray<T>` owns its elements exactly as a `Box<[T]>` does.
unsafe impl<T: Send> Send for ZeroedArray<T> {}
// SAFETY: as above; shared access hands out only `&[T]`.
unsafe impl<T: Sync> Sync for ZeroedArray<T> {}

impl<T> ZeroedArray<T> {
    /// `len` elements of all-zero bytes; on huge pages if `huge` and the array is large enough.
    /// `None` if the memory cannot be had (nor the layout made).
    ///
    /// # Safety
    /// All-zero bytes must be a valid value of `T`.
    pub(crate) unsafe fn try_new(len: usize, huge: bool) -> Option<Self> {
        let layout = Layout::array::<T>(len.max(1)).ok()?;
        #[cfg(target_os = "linux")]
        if huge && layout.size() >= HUGE_PAGE && layout.align() <= HUGE_PAGE {
            if let Some(ptr) = map_huge(layout.size()) {
                return Some(Self {
                    ptr: ptr.cast(),
                    len,
                    mapped: true,
                });
            }
        }
        // SAFETY: the layout's size is non-zero (at least one element, and `T` is never
        // zero-sized here: the tables store slots and tag bytes).
        let ptr = unsafe { alloc_zeroed(layout) };
        Some(Self {
            ptr: NonNull::new(ptr.cast::<T>())?,
            len,
            mapped: false,
        })
    }

    /// Faults the whole array in now, writable, in one system call: for an array about to be
    /// written all over (a rebuilt table). It spares a fault per page and, on huge pages, the
    /// read fault that maps the shared zero page before the write fault that replaces it (and
    /// flushes the other cores' TLBs). Memory from the global allocator, and kernels before
    /// 5.14 (no `MADV_POPULATE_WRITE`), are left as they are.
    pub(crate) fn populate(&mut self) {
        #[cfg(target_os = "linux")]
        if self.mapped {
            // SAFETY: the range is the mapping `map_huge` made for this array; populating it
            // only faults its pages in, zero-filled, changing no byte of it.
            unsafe {
                libc::madvise(
                    self.ptr.as_ptr().cast(),
                    page_round(self.layout().size()),
                    libc::MADV_POPULATE_WRITE,
                )
            };
        }
    }

    /// This array grown to `len` elements in a new mapping that takes over its pages: the
    /// first `self.len()` elements keep their bytes and the rest are zero. Only the new part
    /// is fresh memory for the kernel to zero; the old part moves by its page tables (`mremap`),
    /// huge pages whole (both mappings start at a 2 MiB boundary; a partial last huge page of
    /// the old one was never a huge page). Hands the array
    /// back unchanged if it is not a mapping of its own, is not shorter than `len`, or the
    /// kernel refuses.
    #[cfg_attr(not(target_os = "linux"), allow(clippy::unnecessary_wraps))]
    pub(crate) fn grow(self, len: usize) -> Result<Self, Self> {
        #[cfg(target_os = "linux")]
        if self.mapped && len > self.len {
            let old_bytes = page_round(self.layout().size());
            let Ok(layout) = Layout::array::<T>(len) else {
                return Err(self);
            };
            let Some(to) = map_huge(layout.size()) else {
                return Err(self);
            };
            // SAFETY: `self` is the mapping `map_huge` made of `old_bytes` bytes at `ptr`;
            // `to` is a fresh mapping of at least that many bytes, so the move replaces only
            // memory nobody refers to. On success the old range is unmapped by the kernel and
            // its pages (with the elements' bytes) now sit at `to`.
            let moved = unsafe {
                libc::mremap(
                    self.ptr.as_ptr().cast(),
                    old_bytes,
                    old_bytes,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    to.as_ptr().cast::<libc::c_void>(),
                )
            };
            if moved == libc::MAP_FAILED {
                // SAFETY: `to` is the fresh mapping made above, never handed out.
                unsafe { libc::munmap(to.as_ptr().cast(), page_round(layout.size())) };
                return Err(self);
            }
            // The old mapping is gone: nothing is left for `self`'s `Drop` to free or drop.
            std::mem::forget(self);
            return Ok(Self {
                ptr: to.cast(),
                len,
                mapped: true,
            });
        }
        let _ = len;
        Err(self)
    }

    /// The array's start with the allocation's own provenance, made without a reference to
    /// the elements: for memory that other threads read through pointers while this one
    /// writes (see `readers`), where a `&mut [T]` would claim it exclusively.
    pub(crate) fn as_raw(&self) -> *mut T {
        self.ptr.as_ptr()
    }

    /// Whether [`ZeroedArray::grow`] may take this array's pages (it is a mapping of its own).
    pub(crate) fn is_mapped(&self) -> bool {
        self.mapped
    }

    fn layout(&self) -> Layout {
        Layout::array::<T>(self.len.max(1)).expect("invariant: checked when allocated")
    }
}

impl<T> Drop for ZeroedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the elements are initialized (zero, or written since) and owned here; they
        // are dropped in place once, before their memory goes.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.len,
            ))
        };
        let layout = self.layout();
        #[cfg(target_os = "linux")]
        if self.mapped {
            // SAFETY: `map_huge` mapped exactly `page_round(layout.size())` bytes here, and
            // nothing refers to them any more.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), page_round(layout.size())) };
            return;
        }
        debug_assert!(!self.mapped);
        // SAFETY: allocated by `alloc_zeroed` with this same layout.
        unsafe { dealloc(self.ptr.as_ptr().cast(), layout) }
    }
}

impl<T> Deref for ZeroedArray<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialized elements owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> DerefMut for ZeroedArray<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ZeroedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroedArray")
            .field("len", &self.len)
            .field("mapped", &self.mapped)
            .finish_non_exhaustive()
    }
}

/// `bytes` rounded up to whole 4 KiB pages.
#[cfg(target_os = "linux")]
fn page_round(bytes: usize) -> usize {
    bytes.div_ceil(4096) * 4096
}

/// Maps `bytes` of fresh zero pages at a 2 MiB boundary and asks for huge pages. `None` if
/// the kernel refuses the mapping (the caller falls back to the allocator).
#[cfg(target_os = "linux")]
fn map_huge(bytes: usize) -> Option<NonNull<u8>> {
    let len = page_round(bytes);
    // One huge page more than needed, so that a 2 MiB-aligned start fits; the ends are
    // unmapped again.
    let total = len + HUGE_PAGE;
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let addr = raw as usize;
    let start = addr.next_multiple_of(HUGE_PAGE);
    let head = start - addr;
    let tail = total - head - len;
    // SAFETY: both ranges lie inside the mapping just made, page-aligned (mmap returns pages,
    // `start` and `len` are page multiples), and nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
        // A refusal (huge pages disabled) leaves ordinary pages: nothing to handle.
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    NonNull::new(start as *mut u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populated_arrays_stay_zeroed() {
        for len in [1000, (5 << 20) / 8 + 3] {
            // SAFETY: zero is a valid u64.
            let mut a = unsafe { ZeroedArray::<u64>::try_new(len, true) }.unwrap();
            a.populate();
            assert!(a.iter().all(|&x| x == 0));
            a[len - 1] = 7;
            assert_eq!(a[len - 1], 7);
        }
    }

    #[test]
    fn grown_arrays_keep_their_elements_and_add_zeros() {
        let len = (5 << 20) / 8 + 3;
        // SAFETY: zero is a valid u64.
        let mut a = unsafe { ZeroedArray::<u64>::try_new(len, true) }.unwrap();
        a.populate();
        for (i, x) in a.iter_mut().enumerate() {
            *x = i as u64 + 1;
        }
        let grown = a.grow(len * 2);
        #[cfg(target_os = "linux")]
        {
            let g = grown.expect("a mapping grows");
            assert!(g.mapped && g.len() == len * 2);
            assert_eq!(g.as_ptr() as usize % (2 << 20), 0, "huge-page aligned");
            assert!(g[..len].iter().enumerate().all(|(i, &x)| x == i as u64 + 1));
            assert!(g[len..].iter().all(|&x| x == 0));
            // Not longer: handed back as it was.
            let same = g.grow(len).expect_err("not longer");
            assert_eq!(same.len(), len * 2);
        }
        #[cfg(not(target_os = "linux"))]
        assert_eq!(grown.expect_err("no mappings").len(), len);
        // Memory from the allocator is handed back.
        // SAFETY: zero is a valid u64.
        let small = unsafe { ZeroedArray::<u64>::try_new(100, true) }.unwrap();
        assert_eq!(small.grow(200).expect_err("not a mapping").len(), 100);
    }

    #[test]
    fn small_and_huge_arrays_start_zeroed_and_hold_writes() {
        for len in [2, 1000, (5 << 20) / 8 + 3] {
            // SAFETY: zero is a valid u64.
            let mut a = unsafe { ZeroedArray::<u64>::try_new(len, true) }.unwrap();
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&x| x == 0));
            a[len - 1] = 7;
            a[0] = 9;
            assert_eq!((a[0], a[len - 1]), (9, 7));
            #[cfg(target_os = "linux")]
            assert_eq!(a.mapped, len * 8 >= HUGE_PAGE);
            if a.mapped {
                assert_eq!(a.as_ptr() as usize % (2 << 20), 0, "huge-page aligned");
            }
            // SAFETY: as above.
            let b = unsafe { ZeroedArray::<u64>::try_new(len, false) }.unwrap();
            assert!(!b.mapped && b.iter().all(|&x| x == 0));
        }
    }
}
