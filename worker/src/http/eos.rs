//! One way for a body to end: [`Watched`] passes a body through frame by frame and tells its
//! [`Watch`] each frame and, exactly once, how the body ended — read whole, failed, or dropped
//! before its end (linkerd2-proxy's `BodyWithEosFn` shape). What must happen at the end of a
//! stream (a pooled connection returned, a request counted done, a mirror copy sent, a request
//! body marked sent) is written as a `Watch`, never as another body type with its own idea of
//! when a stream is over.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// How a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Read to its end (or it had none).
    Whole,
    /// Its source failed.
    Failed,
    /// Dropped before its end.
    Dropped,
}

/// What a watched body tells as it streams.
pub trait Watch {
    /// A frame passes (data or trailers); it may be changed on its way.
    fn frame(&mut self, _frame: &mut Frame<Bytes>) {}

    /// The body ended, once.
    fn end(&mut self, how: End);
}

/// A body and its watch; see the module.
pub struct Watched<B, W: Watch> {
    inner: B,
    watch: W,
    ended: bool,
}

impl<B: HttpBody<Data = Bytes> + Unpin, W: Watch> Watched<B, W> {
    /// Watches `inner`. A body that has nothing to send (HEAD, 204, none at all) has ended
    /// already, whether or not it is ever polled.
    pub fn new(inner: B, watch: W) -> Self {
        let mut body = Watched { inner, watch, ended: false };
        if body.inner.is_end_stream() {
            body.end(End::Whole);
        }
        body
    }

    fn end(&mut self, how: End) {
        if !std::mem::replace(&mut self.ended, true) {
            self.watch.end(how);
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin, W: Watch + Unpin> HttpBody for Watched<B, W> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let mut polled = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &mut polled {
            Some(Ok(frame)) => {
                this.watch.frame(frame);
                if this.inner.is_end_stream() {
                    this.end(End::Whole);
                }
            }
            Some(Err(_)) => this.end(End::Failed),
            None => this.end(End::Whole),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, W: Watch> Drop for Watched<B, W> {
    fn drop(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            self.watch.end(End::Dropped);
        }
    }
}

/// Holds `T` (a guard) until the body ends, however it ends.
pub struct Holding<T>(pub Option<T>);

impl<T> Watch for Holding<T> {
    fn end(&mut self, _how: End) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::BoxError;
    use http_body_util::{BodyExt as _, StreamBody};
    use std::sync::{Arc, Mutex};

    struct Log(Arc<Mutex<Vec<String>>>);

    impl Watch for Log {
        fn frame(&mut self, frame: &mut Frame<Bytes>) {
            let n = frame.data_ref().map_or(0, Bytes::len);
            self.0.lock().unwrap().push(format!("frame {n}"));
        }
        fn end(&mut self, how: End) {
            self.0.lock().unwrap().push(format!("{how:?}"));
        }
    }

    fn body(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> crate::http::Body {
        StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    fn watched(
        frames: Vec<Result<Frame<Bytes>, BoxError>>,
    ) -> (impl HttpBody, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        (Watched::new(body(frames), Log(log.clone())), log)
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test]
    async fn a_body_read_whole_ends_once_whole_after_its_frames() {
        let (b, log) = watched(vec![data("ab"), data("cde")]);
        let _ = b.collect().await;
        assert_eq!(*log.lock().unwrap(), ["frame 2", "frame 3", "Whole"]);
    }

    #[tokio::test]
    async fn a_failure_ends_it_failed_and_a_drop_before_the_end_dropped() {
        let (b, log) = watched(vec![data("ab"), Err("reset".into()), data("late")]);
        let _ = b.collect().await;
        assert_eq!(*log.lock().unwrap(), ["frame 2", "Failed"]);
        let (b, log) = watched(vec![data("ab"), data("cd")]);
        let mut b = Box::pin(b);
        let _ = std::future::poll_fn(|cx| b.as_mut().poll_frame(cx)).await;
        drop(b);
        assert_eq!(*log.lock().unwrap(), ["frame 2", "Dropped"]);
    }

    #[test]
    fn a_body_with_nothing_to_send_has_ended_before_it_is_polled() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let b = Watched::new(http_body_util::Empty::<Bytes>::new(), Log(log.clone()));
        assert_eq!(*log.lock().unwrap(), ["Whole"]);
        drop(b);
        assert_eq!(*log.lock().unwrap(), ["Whole"], "once");
    }

    #[test]
    fn holding_lets_go_at_the_end() {
        let guard = Arc::new(());
        let b = Watched::new(
            http_body_util::Full::new(Bytes::from_static(b"x")),
            Holding(Some(guard.clone())),
        );
        assert_eq!(Arc::strong_count(&guard), 2, "held while the body has data");
        drop(b);
        assert_eq!(Arc::strong_count(&guard), 1);
    }
}
