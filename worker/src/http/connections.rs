//! Open client connections (and upgraded tunnels), counted so that a draining worker can wait
//! until none is left, and reported in the metrics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::metrics::Metrics;

/// Connections being served by this worker, and a way to wait until there are none.
#[derive(Default)]
pub struct Connections {
    active: AtomicUsize,
    idle: Notify,
}

impl Connections {
    /// How many client connections are open.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Resolves when no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one open connection (client connection, or upgraded tunnel) until dropped.
pub struct ConnGuard(Arc<Connections>, Metrics);

impl ConnGuard {
    /// Counts a connection in `c` and in the metrics.
    pub fn new(c: Arc<Connections>, metrics: Metrics) -> Self {
        c.active.fetch_add(1, Ordering::Relaxed);
        metrics.connections(1);
        ConnGuard(c, metrics)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.1.connections(-1);
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Resolves once shutdown was requested (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    // Drop the returned guard here: it must not be held across an await.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
