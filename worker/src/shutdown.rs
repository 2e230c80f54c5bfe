//! The worker's stop, as every task that must end with it sees it: the accept loops, each
//! connection (an HTTP/1 answer then says `Connection: close`, HTTP/2 sends GOAWAY) and the
//! admin listener. One [`Trigger`] fires it; each task holds a [`Shutdown`] (mini-redis's shape)
//! rather than a bare channel whose `bool` every site would have to read the same way.

use tokio::sync::watch;

/// Fires the stop, once. Dropped, it ends every [`Shutdown::recv`] too (a worker whose main
/// task is gone stops), though [`Shutdown::is_shutdown`] keeps saying what was fired.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A task's view of the stop: cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A stop not fired yet, and the view tasks take of it.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Every [`Shutdown`] sees the stop from now on.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Whether the stop was fired.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the stop is fired (or its trigger is gone); at once when it was.
    pub async fn recv(&mut self) {
        // The guard `wait_for` returns is dropped here: it must not be held across an await.
        let _ = self.0.wait_for(|s| *s).await.map(|_| ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_view_sees_the_stop_once_fired_or_its_trigger_gone() {
        let (trigger, mut a) = channel();
        let mut b = a.clone();
        assert!(!a.is_shutdown());
        trigger.fire();
        a.recv().await;
        assert!(a.is_shutdown() && b.is_shutdown());
        b.recv().await;
        let (trigger, mut c) = channel();
        drop(trigger);
        c.recv().await;
    }
}
