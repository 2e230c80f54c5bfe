//! A request body passed through to the primary instance frame by frame while a copy of it,
//! up to a bound, is kept for the route's mirror: the copy leaves only once the body has
//! ended whole, so the shadow gets exactly what the primary got, and the client's upload
//! never waits for it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::http::{Body, BoxError};

/// Told the whole body when it ended within the bound; `None` when it did not (larger, a
/// client error, or dropped before its end).
pub type OnEnd = Box<dyn FnOnce(Option<Bytes>) + Send + Sync>;

/// See the module.
pub struct Teed {
    inner: Body,
    kept: Option<BytesMut>,
    max: usize,
    on_end: Option<OnEnd>,
}

impl Teed {
    /// Passes `inner` through, keeping at most `max` bytes of it for `on_end`.
    pub fn new(inner: Body, max: usize, on_end: OnEnd) -> Teed {
        Teed { inner, kept: Some(BytesMut::new()), max, on_end: Some(on_end) }
    }

    fn end(&mut self, whole: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.kept.take().filter(|_| whole).map(BytesMut::freeze));
        }
    }
}

impl HttpBody for Teed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(kept)) = (f.data_ref(), this.kept.as_mut()) {
                    if kept.len() + data.len() <= this.max {
                        kept.extend_from_slice(data);
                    } else {
                        this.kept = None;
                    }
                }
                if this.inner.is_end_stream() {
                    this.end(true);
                }
            }
            Some(Err(_)) => this.end(false),
            None => this.end(true),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Teed {
    fn drop(&mut self) {
        self.end(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, StreamBody};
    use std::sync::{Arc, Mutex};

    fn body(chunks: &[&'static [u8]]) -> Body {
        let frames = chunks.iter().map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c))));
        StreamBody::new(futures::stream::iter(frames.collect::<Vec<_>>())).boxed()
    }

    fn teed(chunks: &[&'static [u8]], max: usize) -> (Teed, Arc<Mutex<Option<Option<Bytes>>>>) {
        let seen = Arc::new(Mutex::new(None));
        let told = seen.clone();
        let on_end: OnEnd = Box::new(move |b| *told.lock().unwrap() = Some(b));
        (Teed::new(body(chunks), max, on_end), seen)
    }

    #[tokio::test]
    async fn a_body_within_the_bound_is_copied_whole_once_it_ends() {
        let (t, seen) = teed(&[b"hello ", b"world"], 64);
        let passed = t.collect().await.unwrap().to_bytes();
        assert_eq!(&passed[..], b"hello world", "the primary gets every byte");
        assert_eq!(seen.lock().unwrap().clone(), Some(Some(Bytes::from_static(b"hello world"))));
    }

    #[tokio::test]
    async fn a_larger_body_passes_but_is_not_copied() {
        let (t, seen) = teed(&[b"hello ", b"world"], 8);
        assert_eq!(&t.collect().await.unwrap().to_bytes()[..], b"hello world");
        assert_eq!(seen.lock().unwrap().clone(), Some(None));
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_not_copied() {
        let (mut t, seen) = teed(&[b"hello ", b"world"], 64);
        let _ = t.frame().await;
        assert_eq!(seen.lock().unwrap().clone(), None, "not told before the end");
        drop(t);
        assert_eq!(seen.lock().unwrap().clone(), Some(None));
    }
}
