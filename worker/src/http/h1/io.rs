//! The engine's I/O helpers: one bound for the client's stream (plain TCP and rustls alike), and
//! writes and reads bounded in time without a timer on the common path.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A client connection the engine serves: a `TcpStream`, or a rustls stream over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// [`Io::ready`] really waits for bytes once a read found none: a read that finds nothing
    /// may give its buffer back and wait without one (plain TCP; rustls may hold decrypted
    /// bytes the socket no longer signals).
    const WAITS_BARE: bool = false;

    /// Resolves when a read would find bytes (or the end), so that a connection takes a buffer
    /// only once its client sends something: a silent connection holds none.
    fn ready(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl Io for tokio::net::TcpStream {
    const WAITS_BARE: bool = true;

    async fn ready(&self) {
        let _ = std::future::poll_fn(|cx| self.poll_read_ready(cx)).await;
    }
}

/// rustls may hold decrypted bytes the socket no longer signals: always ready.
impl Io for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

/// An in-memory stream: the engine's unit tests script a client on its other end.
#[cfg(test)]
impl Io for tokio::io::DuplexStream {}

/// Writes all of `buf` and flushes it (a TLS stream keeps records until then), within `limit`
/// once the socket is full: a write that goes through at once — the common case — needs no
/// timer.
pub async fn write_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &[u8],
    limit: Duration,
) -> Result<(), ()> {
    let mut write = pin!(async {
        stream.write_all(buf).await?;
        stream.flush().await
    });
    match poll_once(write.as_mut()).await {
        Some(r) => r.map_err(drop),
        None => timeout(limit, write).await,
    }
}

/// Polls `fut` once: its output if it is ready, `None` (its waker registered) if not.
pub async fn poll_once<F: Future + Unpin>(mut fut: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut fut).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// `io` within `limit`; an error or the deadline are both a failure.
pub async fn timeout<T>(
    limit: Duration,
    io: impl Future<Output = std::io::Result<T>>,
) -> Result<T, ()> {
    match tokio::time::timeout(limit, io).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_to_a_reader_that_never_reads_gives_up_at_the_limit() {
        let (mut a, _b) = tokio::io::duplex(16);
        let big = vec![b'x'; 1024];
        let started = tokio::time::Instant::now();
        assert_eq!(write_within(&mut a, &big, Duration::from_secs(5)).await, Err(()));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_fits_needs_no_time() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_within(&mut a, b"hello", Duration::from_secs(5)).await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
