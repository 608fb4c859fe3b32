//! The process's allocator: mimalloc, called the way it is fast.
//!
//! mimalloc rather than the system allocator: a request allocates and frees many small
//! blocks; with glibc's malloc that took about 6 % of weir's CPU under load, and with
//! mimalloc the median CPU per request fell by about 8 % (bench/profile, BENCHMARKS.md).
//!
//! Allocations that need no more than 8-byte alignment (nearly all) go to `mi_malloc`,
//! which gives every block that alignment. The `mimalloc` crate sends every allocation
//! through `mi_malloc_aligned` instead, whose fast path only covers blocks of up to
//! 1 KiB: a larger one (a request's future, an I/O buffer) takes a path that
//! over-allocates by the alignment and costs about 250 instructions, some four times
//! per proxied request.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has (its smallest blocks are one word).
const PLAIN_ALIGN: usize = 8;

#[derive(Debug, Default)]
pub struct Allocator;

// SAFETY: each method forwards to the mimalloc call with the same contract; blocks of
// either kind are freed and reallocated by the same mimalloc heap.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see above).
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_malloc(layout.size()) as *mut u8
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see above).
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_zalloc(layout.size()) as *mut u8
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (see above).
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (see above).
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

/// Turns transparent huge pages off for this process. A huge page is resident whole as
/// soon as any of its 2 MiB is touched, and stays so while any block on it lives: with
/// them, weir with 1,000 open connections held 58-65 MB, without them 44-46 MB (three
/// runs each; idle, 14.5 MB and 8.5 MB). The CPU they might save per request did not
/// show in `bench/profile` (18 interleaved rounds, BENCHMARKS.md). mimalloc is built
/// not to ask for them (`no_thp`, which covers a system whose setting is `madvise`);
/// this covers `always`. Elsewhere than on Linux it does nothing.
pub fn without_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes a flag by value and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_once_turned_off() {
        without_huge_pages().unwrap();
        // SAFETY: PR_GET_THP_DISABLE reads a flag; it takes no pointers.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
            1
        );
    }

    /// Blocks of every size and alignment come back aligned, hold what was written, and
    /// keep it across a reallocation.
    #[test]
    fn blocks_are_aligned_and_keep_their_contents() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16, 64, 4096] {
            for size in [1, 7, 8, 24, 100, 1024, 1500, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a valid layout of non-zero size; the block is freed below.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                    p.write_bytes(0xAB, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "grown: size {size}, align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xAB));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
