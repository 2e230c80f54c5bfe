//! Buffers lent to connections while they work and taken back when they go idle, so a
//! keep-alive connection waiting for its next request holds none (nginx frees its header
//! buffer on keep-alive for the same reason) and a busy one still allocates nothing per
//! request. One per worker; each worker is one thread, so the lock is never contended.

use std::sync::Mutex;

/// Largest buffer taken back (a large body grew it; it is freed instead).
pub const KEPT_CAPACITY: usize = 16 * 1024;

/// Most buffers kept free at once (beyond them, returned ones are freed).
const MAX_FREE: usize = 1024;

/// The worker's free buffers.
#[derive(Default)]
pub struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
}

impl Buffers {
    /// An empty buffer, with the capacity of one used before when there is one.
    pub fn take(&self) -> Vec<u8> {
        self.free.lock().ok().and_then(|mut free| free.pop()).unwrap_or_default()
    }

    /// Takes `buf` back (emptied) for another connection.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > KEPT_CAPACITY {
            return;
        }
        buf.clear();
        if let Ok(mut free) = self.free.lock() {
            if free.len() < MAX_FREE {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_empty_and_large_ones_are_freed() {
        let buffers = Buffers::default();
        let mut a = buffers.take();
        a.extend_from_slice(b"hello");
        let cap = a.capacity();
        buffers.give(a);
        let b = buffers.take();
        assert!(b.is_empty() && b.capacity() == cap);
        buffers.give(Vec::with_capacity(KEPT_CAPACITY + 1));
        assert_eq!(buffers.take().capacity(), 0, "a grown buffer is not kept");
    }
}
