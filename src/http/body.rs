//! Bodies: collecting a response up to a cap, replaying a stored one, and passing on a response
//! that outgrew the cap (the part already read, then the rest).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::http::HeaderMap;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::{BoxError, ResponseBody};

/// A stored body: its bytes in one frame, then its trailers, if any.
#[derive(Debug)]
pub(crate) struct ReplayBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl ReplayBody {
    pub(crate) fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        ReplayBody { data, trailers }
    }

    pub(crate) fn boxed(self) -> ResponseBody {
        boxed(self)
    }
}

/// A body that cannot fail, boxed as a [`ResponseBody`].
pub(crate) fn boxed<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    body.map_err(|never| match never {}).boxed_unsync()
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    /// Exact without trailers. With trailers, only a lower bound: an HTTP/1 server sends a
    /// body of known length with `Content-Length`, which has no room for trailers, and would
    /// drop them; without an exact length it sends the body chunked, trailers included.
    fn size_hint(&self) -> SizeHint {
        let len = self.data.as_ref().map_or(0, |d| d.len() as u64);
        if self.trailers.is_none() {
            return SizeHint::with_exact(len);
        }
        let mut hint = SizeHint::new();
        hint.set_lower(len);
        hint
    }
}

/// A response body that outgrew the cap: the chunks already read, then the rest as it comes.
#[derive(Debug)]
pub(crate) struct Prefixed {
    chunks: VecDeque<Bytes>,
    rest: ResponseBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self.chunks.iter().map(|c| c.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}

/// A response body read up to a cap.
pub(crate) enum Collected {
    /// The whole body, with its trailers.
    Whole {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// The body is longer than the cap: what was read, and the rest, to pass on to the client.
    Oversize(Prefixed),
    /// The body failed before its end.
    Failed,
}

/// Reads `body` until its end, or until it has shown more than `limit` bytes.
pub(crate) async fn collect_capped(mut body: ResponseBody, limit: usize) -> Collected {
    let limit64 = u64::try_from(limit).unwrap_or(u64::MAX);
    let mut chunks = VecDeque::new();
    if body.size_hint().lower() > limit64 {
        return Collected::Oversize(Prefixed { chunks, rest: body });
    }
    let mut len = 0usize;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(_) => return Collected::Failed,
        };
        match frame.into_data() {
            Ok(data) => {
                len = len.saturating_add(data.len());
                if !data.is_empty() {
                    chunks.push_back(data);
                }
                if len > limit {
                    return Collected::Oversize(Prefixed { chunks, rest: body });
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    match &mut trailers {
                        Some(all) => all.extend(t),
                        None => trailers = Some(t),
                    }
                }
            }
        }
    }
    let data = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(len);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            all.freeze()
        }
    };
    Collected::Whole { data, trailers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The bodies here never pend: poll once with a no-op waker.
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut Context::from_waker(waker)) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("a test body pended"),
        }
    }

    /// A body of ready data frames, one per part.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn chunked(parts: &[&'static str]) -> ResponseBody {
        let parts = parts.iter().map(|p| Bytes::from_static(p.as_bytes()));
        Chunks(parts.collect()).boxed_unsync()
    }

    #[test]
    fn whole_bodies_are_joined() {
        let Collected::Whole { data, trailers } =
            block_on(collect_capped(chunked(&["ab", "", "cd"]), 4))
        else {
            panic!("4 bytes fit a 4-byte cap")
        };
        assert_eq!(data, "abcd");
        assert!(trailers.is_none());
    }

    #[test]
    fn oversize_bodies_pass_on_everything() {
        let Collected::Oversize(rest) = block_on(collect_capped(chunked(&["ab", "cd", "ef"]), 3))
        else {
            panic!("6 bytes do not fit a 3-byte cap")
        };
        let all = block_on(rest.collect()).unwrap().to_bytes();
        assert_eq!(all, "abcdef");
        // A known length over the cap is not read at all.
        let full = boxed(Full::new(Bytes::from_static(b"abcdef")));
        let Collected::Oversize(rest) = block_on(collect_capped(full, 3)) else {
            panic!("6 bytes do not fit a 3-byte cap")
        };
        assert!(rest.chunks.is_empty());
    }

    #[test]
    fn replay_bodies_carry_data_then_trailers() {
        let mut t = HeaderMap::new();
        t.insert("x-checksum", "1".parse().unwrap());
        assert_eq!(
            ReplayBody::new(Bytes::from_static(b"hi"), None)
                .size_hint()
                .exact(),
            Some(2)
        );
        let body = ReplayBody::new(Bytes::from_static(b"hi"), Some(t.clone()));
        // Trailers: no exact length, so that HTTP/1 sends the body chunked, trailers and all.
        assert_eq!(body.size_hint().exact(), None);
        assert_eq!(body.size_hint().lower(), 2);
        let collected = block_on(body.collect()).unwrap();
        assert_eq!(collected.trailers(), Some(&t));
        assert_eq!(collected.to_bytes(), "hi");
        assert!(ReplayBody::new(Bytes::new(), None).is_end_stream());
    }
}
