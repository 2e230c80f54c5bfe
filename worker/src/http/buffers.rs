//! Buffers lent to connections while they work and taken back when they go idle, so a
//! keep-alive connection waiting for its next request holds none (nginx frees its header
//! buffer on keep-alive for the same reason) and a busy one still allocates nothing per
//! request. One per worker; each worker is one thread, so the lock is never contended.

use std::sync::Mutex;

/// Largest buffer taken back (a large body grew it; it is freed instead).
pub const KEPT_CAPACITY: usize = 16 * 1024;

/// Most buffers kept free at once (beyond them, returned ones are freed).
const MAX_FREE: usize = 1024;

/// A new buffer's capacity (when none is free): a head fits without the buffer growing (and
/// being copied) a step at a time.
const FRESH: usize = 4096;

/// The worker's free buffers.
#[derive(Default)]
pub struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
}

impl Buffers {
    /// An empty buffer, with the capacity of one used before when there is one.
    pub fn take(&self) -> Vec<u8> {
        let free = self.free.lock().ok().and_then(|mut free| free.pop());
        free.unwrap_or_else(|| Vec::with_capacity(FRESH))
    }

    /// Gives each of `bufs` that has no capacity a free buffer, under one lock.
    pub fn fill<const N: usize>(&self, bufs: [&mut Vec<u8>; N]) {
        if bufs.iter().all(|b| b.capacity() > 0) {
            return;
        }
        let Ok(mut free) = self.free.lock() else { return };
        for buf in bufs.into_iter().filter(|b| b.capacity() == 0) {
            *buf = free.pop().unwrap_or_else(|| Vec::with_capacity(FRESH));
        }
    }

    /// Takes `buf` back (emptied) for another connection.
    pub fn give(&self, buf: Vec<u8>) {
        self.give_all([buf]);
    }

    /// Takes several back under one lock (a connection going idle gives all of its own);
    /// those with no capacity, or grown past [`KEPT_CAPACITY`], are dropped instead.
    pub fn give_all<const N: usize>(&self, bufs: [Vec<u8>; N]) {
        let Ok(mut free) = self.free.lock() else { return };
        for mut buf in bufs {
            if (1..=KEPT_CAPACITY).contains(&buf.capacity()) && free.len() < MAX_FREE {
                buf.clear();
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
        assert_eq!(buffers.take().capacity(), FRESH, "a grown buffer is not kept: a new one");
    }

    #[test]
    fn a_connections_buffers_go_back_and_come_out_together() {
        let buffers = Buffers::default();
        let grown = Vec::with_capacity(KEPT_CAPACITY + 1);
        buffers.give_all([Vec::with_capacity(64), Vec::new(), grown, Vec::with_capacity(128)]);
        assert_eq!(buffers.free.lock().unwrap().len(), 2, "empty and grown ones are not kept");
        let (mut a, mut b, mut c) = (Vec::new(), Vec::with_capacity(8), Vec::new());
        buffers.fill([&mut a, &mut b, &mut c]);
        assert!(a.capacity() >= 64 && c.capacity() >= 64, "the two kept ones lent again");
        assert_eq!(b.capacity(), 8, "a buffer that has one keeps it");
        assert!(buffers.free.lock().unwrap().is_empty());
    }
}
