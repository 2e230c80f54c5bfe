//! The engine's connection to an instance: plain TCP, or TLS over it (`upstream_tls`), one type
//! so the attempt, the relay, the tunnel and the idle set are written once for both. TLS is
//! boxed: a rustls client session is kilobytes, a plain connection's handle a few words, and
//! every request's state holds one.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::http::client::pool::Pooled;

/// A connection to an instance.
pub enum Wire {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (the instance's name verified against `upstream_ca` or the system's roots).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Wire {
    /// Whether it is TLS (its idle connections wait apart from plain ones to the same address).
    pub fn is_tls(&self) -> bool {
        matches!(self, Wire::Tls(_))
    }

    /// The TCP connection under it.
    fn socket(&self) -> &TcpStream {
        match self {
            Wire::Plain(s) => s,
            Wire::Tls(s) => s.get_ref().0,
        }
    }
}

/// The idle-set key of a connection to `address`: the address for plain TCP, marked for TLS
/// (a plain and a TLS connection to one address never stand in for each other).
pub fn pool_key(address: &str, tls: bool) -> std::borrow::Cow<'_, str> {
    match tls {
        false => std::borrow::Cow::Borrowed(address),
        true => std::borrow::Cow::Owned(format!("tls|{address}")),
    }
}

impl Pooled for Wire {
    /// A TLS session the instance ended sends `close_notify` first: bytes on the socket, so the
    /// socket's checks tell for both.
    fn is_usable(&self) -> bool {
        self.socket().is_usable()
    }

    fn is_clean(&self) -> bool {
        self.socket().is_clean()
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Wire::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Wire::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(s) => Pin::new(s).poll_flush(cx),
            Wire::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Wire::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
