//! Retry with backoff, written once (linkerd's `resolve/recover.rs`): every ZooKeeper call the
//! watcher makes goes through [`retry`], and reconnects wait on the same [`Backoff`].
//!
//! Delays grow from 100 ms to 5 s, each with ±50% jitter so that N workers on H hosts never
//! retry in lockstep (N × H sessions hit one ensemble; Synapse issues #290, #292).

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use zookeeper_client as zk;

/// Jittered exponential delays: 100 ms doubling to 5 s, each ±50%.
#[derive(Debug, Default)]
pub struct Backoff(u32);

impl Backoff {
    /// The next delay; grows until [`Backoff::reset`].
    pub fn next_delay(&mut self) -> Duration {
        let base = 100u64.saturating_mul(1 << self.0.min(6)).min(5000);
        self.0 += 1;
        Duration::from_millis(rand::rng().random_range(base / 2..=base + base / 2))
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Whether a ZooKeeper error ends the session: retrying on this client cannot help, a new
/// session must be opened. Every other error (connection loss, a hung server surfacing as a
/// generic error) is retried.
pub fn terminal(e: &zk::Error) -> bool {
    matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed)
}

/// Runs `op` until it succeeds (`Some`) or fails terminally (`None`: the session is over).
/// Each failure is logged as `{what}: {error}; retrying`.
pub async fn retry<T, F, Fut>(what: &str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, zk::Error>>,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) if terminal(&e) => return None,
            Err(e) => {
                log::warn!("{what}: {e}; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_cap_at_five_seconds() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!((50..=150).contains(&first.as_millis()), "{first:?}");
        for _ in 0..20 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!((2500..=7500).contains(&late.as_millis()), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_on_success_or_on_a_terminal_error() {
        let mut calls = 0;
        let got = retry("test", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(zk::Error::ConnectionLoss)
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Some(3));
        let gone: Option<()> = retry("test", || async { Err(zk::Error::SessionExpired) }).await;
        assert_eq!(gone, None);
    }
}
