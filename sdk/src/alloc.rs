//! The allocator of plugins built with the SDK (wasm32 only, feature `size-classes`, on by
//! default): small blocks come from free lists by size class, larger ones from the
//! standard allocator.
//!
//! A hook call allocates a dozen small blocks (the strings weir copies in, the ones the
//! plugin builds, the action's lists) and frees them all before it returns. The standard
//! allocator (dlmalloc) spends about 300 instructions on each allocate-and-free; a free
//! list, a dozen. A freed small block goes back to its class's list, never to dlmalloc, so
//! a plugin keeps the most small blocks it ever held at once: a few KiB for hooks like
//! these, within the plugin's `memory` cap like everything else.

// The allocator interface is unsafe by nature: callers promise matching layouts.
#![allow(unsafe_code)]

use std::alloc::Layout;

/// Block sizes of the classes, each also its blocks' alignment (up to 16 bytes).
const SIZES: [usize; 7] = [8, 16, 32, 64, 128, 256, 512];
/// The largest alignment a class serves.
const MAX_ALIGN: usize = 16;

/// The class of a layout: the smallest block that holds its size and alignment, or None
/// for blocks left to the standard allocator. Deallocation gets the same layout as the
/// allocation (the allocator contract), so it finds the same class.
pub(crate) fn class(layout: Layout) -> Option<usize> {
    if layout.align() > MAX_ALIGN {
        return None;
    }
    let need = layout.size().max(layout.align());
    SIZES.iter().position(|&size| size >= need)
}

/// The layout a class's blocks are carved with: aligned to their size, up to 16 bytes,
/// which covers every layout [`class`] maps to it.
fn block_layout(class: usize) -> Layout {
    let size = SIZES[class];
    Layout::from_size_align(size, size.min(MAX_ALIGN)).expect("a valid block layout")
}

#[cfg(all(target_arch = "wasm32", feature = "size-classes"))]
mod global {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::UnsafeCell;

    use super::{SIZES, block_layout, class};

    /// A free block: the next free block of its class is kept in its first bytes.
    struct FreeBlock {
        next: *mut FreeBlock,
    }

    struct SizeClasses {
        heads: UnsafeCell<[*mut FreeBlock; SIZES.len()]>,
    }

    // SAFETY: wasm32 plugins run on one thread (a component has no threads), so the lists
    // are never touched by two threads.
    unsafe impl Sync for SizeClasses {}

    // SAFETY: a block handed out for a layout is at least as large and as aligned as the
    // layout asks ([`class`], [`block_layout`]); blocks on a list are free and owned by
    // it alone; every block on a list came from `System` with its class's layout and is
    // only ever handed out again for that class.
    unsafe impl GlobalAlloc for SizeClasses {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let Some(c) = class(layout) else {
                return unsafe { System.alloc(layout) };
            };
            let heads = unsafe { &mut *self.heads.get() };
            let head = heads[c];
            if head.is_null() {
                return unsafe { System.alloc(block_layout(c)) };
            }
            heads[c] = unsafe { (*head).next };
            head.cast()
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let Some(c) = class(layout) else {
                return unsafe { System.dealloc(ptr, layout) };
            };
            let heads = unsafe { &mut *self.heads.get() };
            let block: *mut FreeBlock = ptr.cast();
            unsafe { block.write(FreeBlock { next: heads[c] }) };
            heads[c] = block;
        }
    }

    #[global_allocator]
    static ALLOCATOR: SizeClasses = SizeClasses {
        heads: UnsafeCell::new([std::ptr::null_mut(); SIZES.len()]),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn a_layout_gets_the_smallest_class_that_holds_it() {
        assert_eq!(class(layout(1, 1)), Some(0));
        assert_eq!(class(layout(8, 8)), Some(0));
        assert_eq!(class(layout(9, 1)), Some(1));
        assert_eq!(class(layout(24, 8)), Some(2));
        assert_eq!(class(layout(512, 1)), Some(6));
        // Too large, or aligned beyond what the classes give: the standard allocator.
        assert_eq!(class(layout(513, 1)), None);
        assert_eq!(class(layout(64, 32)), None);
        // Alignment counts as size: a 16-aligned byte needs a 16-byte block.
        assert_eq!(class(layout(1, 16)), Some(1));
    }

    #[test]
    fn every_block_is_as_large_and_as_aligned_as_its_layouts_ask() {
        for size in 1..=600 {
            for align in [1, 2, 4, 8, 16, 32] {
                let l = layout(size, align);
                if let Some(c) = class(l) {
                    let block = block_layout(c);
                    assert!(
                        block.size() >= l.size() && block.align() >= l.align(),
                        "{l:?}"
                    );
                }
            }
        }
    }
}
