//! The process's allocator: mimalloc, asked the way its fast paths expect.
//!
//! The `mimalloc` crate's allocator asks `mi_malloc_aligned` for every block, whatever its
//! alignment. For a block over 1 KiB whose size class is not a power of two — a request's
//! state on the engine, ~3.8 KB, boxed once a request — that is mimalloc's generic aligned path,
//! which over-allocates and aligns by hand: ~270 instructions where plain `mi_malloc` takes
//! about a third of that. Every mimalloc block is at least 8-aligned (block sizes are whole
//! words), so a layout asking no more than 8 goes to the plain calls; a larger alignment keeps
//! the aligned ones.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every block `mi_malloc` returns has.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc, through its plain calls wherever they suffice.
pub struct Mimalloc;

// SAFETY: every block comes from mimalloc and goes back to it: `mi_free` frees blocks from the
// plain and the aligned calls alike, and `mi_realloc` / `mi_realloc_aligned` resize either. A
// block from a plain call is word-aligned, which is all a layout sent there asks (`align <=
// WORD`); the others are asked of the aligned calls with the layout's alignment.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match layout.align() <= WORD {
            true => mi::mi_malloc(layout.size()).cast(),
            false => mi::mi_malloc_aligned(layout.size(), layout.align()).cast(),
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match layout.align() <= WORD {
            true => mi::mi_zalloc(layout.size()).cast(),
            false => mi::mi_zalloc_aligned(layout.size(), layout.align()).cast(),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match layout.align() <= WORD {
            true => mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast(),
            false => mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_every_alignment_come_back_aligned_and_usable() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 24, 100, 1000, 3792, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; the block is written within its size, resized,
                // and freed with the layout it has.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null() && (p as usize).is_multiple_of(align), "{size} {align}");
                    p.write_bytes(0xa5, size);
                    let q = a.realloc(p, layout, size * 2);
                    assert!(!q.is_null() && (q as usize).is_multiple_of(align), "{size} {align}");
                    assert_eq!(*q.add(size - 1), 0xa5, "kept its bytes");
                    a.dealloc(q, Layout::from_size_align(size * 2, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert!((z as usize).is_multiple_of(align) && *z.add(size - 1) == 0);
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
