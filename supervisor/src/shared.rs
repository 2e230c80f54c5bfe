//! A shared memory region, mapped by the supervisor before it forks, so every worker (and the
//! supervisor) sees the same bytes. The supervisor does not interpret them: the application
//! decides the layout (zkgate keeps its metrics and worker status there).

use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};

use crate::{sys, Error};

/// A `MAP_SHARED | MAP_ANONYMOUS` region, zero-filled, never unmapped (it lives as long as the
/// process, and workers inherit it through `fork`).
#[derive(Debug, Clone, Copy)]
pub struct SharedMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain shared memory; its users access it only through atomics.
unsafe impl Send for SharedMemory {}
// SAFETY: as above.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Maps `len` bytes (rounded up to whole pages by the kernel).
    pub fn map(len: usize) -> Result<Self, Error> {
        let size = NonZeroUsize::new(len.max(1)).expect("non-zero");
        // SAFETY: an anonymous mapping touches no existing memory; we own the result.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(sys("mmap"))?;
        Ok(SharedMemory { ptr: ptr.cast(), len })
    }

    /// Start of the region (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never, once mapped; for clippy's sake).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
