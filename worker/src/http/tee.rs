//! A request body passed through to the primary instance frame by frame while a copy of it,
//! up to a bound, is kept for the route's mirror: the copy leaves only once the body has
//! ended whole, so the shadow gets exactly what the primary got, and the client's upload
//! never waits for it.

use bytes::{Bytes, BytesMut};
use hyper::body::Frame;

use crate::http::eos::{End, Watch, Watched};
use crate::http::Body;

/// Told the whole body when it ended within the bound; `None` when it did not (larger, a
/// client error, or dropped before its end).
pub type OnEnd = Box<dyn FnOnce(Option<Bytes>) + Send + Sync>;

/// A body passed through while a bounded copy of it is kept: see the module.
pub type Teed = Watched<Body, Keeps>;

/// Passes `inner` through, keeping at most `max` bytes of it for `on_end`.
pub fn tee(inner: Body, max: usize, on_end: OnEnd) -> Teed {
    Watched::new(inner, Keeps { kept: Some(BytesMut::new()), max, on_end: Some(on_end) })
}

/// The copy a [`Teed`] keeps, and whom to tell at the end.
pub struct Keeps {
    kept: Option<BytesMut>,
    max: usize,
    on_end: Option<OnEnd>,
}

impl Watch for Keeps {
    fn frame(&mut self, frame: &mut Frame<Bytes>) {
        if let (Some(data), Some(kept)) = (frame.data_ref(), self.kept.as_mut()) {
            if kept.len() + data.len() <= self.max {
                kept.extend_from_slice(data);
            } else {
                self.kept = None;
            }
        }
    }

    fn end(&mut self, how: End) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.kept.take().filter(|_| how == End::Whole).map(BytesMut::freeze));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::BoxError;
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
        (tee(body(chunks), max, on_end), seen)
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
