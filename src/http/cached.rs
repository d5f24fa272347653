//! What the layer stores for a completed key.

use ::http::header::{self, HeaderName};
use ::http::{HeaderMap, HeaderValue, Response, StatusCode};
use bytes::Bytes;

use super::body::ReplayBody;
use super::{ResponseBody, IDEMPOTENT_REPLAYED};

/// The stored outcome of a request, the value type of the layer's
/// [`Store`](crate::Store)`<CachedResponse>`.
///
/// Give the store [`CachedResponse::weight`] as its weigher, so that
/// [`Builder::max_value_size`](crate::Builder::max_value_size) bounds the memory of stored
/// responses:
///
/// ```
/// use idemstore::{http::CachedResponse, Store};
///
/// let store: Store<CachedResponse> = Store::builder()
///     .max_value_size(256 * 1024)
///     .weigher(|r: &CachedResponse| r.weight())
///     .build()?;
/// # Ok::<(), idemstore::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CachedResponse {
    /// A whole response, replayed byte for byte: status, headers (less hop-by-hop headers),
    /// body and trailers.
    #[non_exhaustive]
    Replayable {
        /// The status of the original response.
        status: StatusCode,
        /// Its headers, less hop-by-hop headers (see [`CachedResponse::new`]).
        headers: HeaderMap,
        /// Its body, exactly as the handler produced it.
        body: Bytes,
        /// Its trailers, if it had any (boxed: rare, and large).
        trailers: Option<Box<HeaderMap>>,
    },
    /// The request ran and completed with `status`, but its response could not be stored:
    /// too large (over the layer's
    /// [`max_response_body`](super::IdempotencyLayer::max_response_body) or the store's
    /// `max_value_size`), or its body failed, or its client went away, before the layer had
    /// read it whole. A duplicate gets `409 Conflict` with a problem document saying so, never
    /// a second execution.
    #[non_exhaustive]
    NotReplayable {
        /// The status of the original response.
        status: StatusCode,
    },
}

/// The bytes [`CachedResponse::weight`] counts for each header beside its name and value
/// (the `HeaderMap` entry and index).
const HEADER_OVERHEAD: usize = 32;

impl CachedResponse {
    /// A replayable response. Hop-by-hop headers are dropped (`Connection`, `Keep-Alive`,
    /// `Proxy-Authenticate`, `Proxy-Authorization`, `Proxy-Connection`, `TE`,
    /// `Transfer-Encoding`, `Upgrade`, and any header that `Connection` names): they describe
    /// the original connection, not the response. `Trailer`, which announces the trailer
    /// fields, is end-to-end (RFC 9110 §6.6.2) and kept.
    pub fn new(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Self {
        CachedResponse::Replayable {
            status,
            headers: end_to_end(headers),
            body,
            trailers: None,
        }
    }

    /// [`CachedResponse::new`] with trailers.
    pub fn with_trailers(
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
    ) -> Self {
        CachedResponse::Replayable {
            status,
            headers: end_to_end(headers),
            body,
            trailers: trailers.map(Box::new),
        }
    }

    /// The "done, not replayable" marker for a request that completed with `status`.
    pub fn not_replayable(status: StatusCode) -> Self {
        CachedResponse::NotReplayable { status }
    }

    /// The status of the original response.
    pub fn status(&self) -> StatusCode {
        match self {
            CachedResponse::Replayable { status, .. }
            | CachedResponse::NotReplayable { status } => *status,
        }
    }

    /// Whether a duplicate gets the original response back.
    pub fn is_replayable(&self) -> bool {
        matches!(self, CachedResponse::Replayable { .. })
    }

    /// The stored headers, if the response is replayable.
    pub fn headers(&self) -> Option<&HeaderMap> {
        match self {
            CachedResponse::Replayable { headers, .. } => Some(headers),
            CachedResponse::NotReplayable { .. } => None,
        }
    }

    /// The stored body, if the response is replayable.
    pub fn body(&self) -> Option<&Bytes> {
        match self {
            CachedResponse::Replayable { body, .. } => Some(body),
            CachedResponse::NotReplayable { .. } => None,
        }
    }

    /// The memory the value holds, in bytes: the body, each header's name and value plus 32
    /// bytes of map overhead, and the value itself. Use it as the store's
    /// [`weigher`](crate::Builder::weigher).
    pub fn weight(&self) -> usize {
        let map = |m: &HeaderMap| -> usize {
            m.iter()
                .map(|(k, v)| k.as_str().len() + v.len() + HEADER_OVERHEAD)
                .sum()
        };
        let held = match self {
            CachedResponse::Replayable {
                headers,
                body,
                trailers,
                ..
            } => body.len() + map(headers) + trailers.as_deref().map_or(0, map),
            CachedResponse::NotReplayable { .. } => 0,
        };
        std::mem::size_of::<Self>() + held
    }

    /// The replay of a replayable response: its status, headers, body and trailers, plus
    /// `Idempotent-Replayed: true`. The body is shared with the store, not copied.
    pub(crate) fn replay(&self) -> Option<Response<ResponseBody>> {
        let CachedResponse::Replayable {
            status,
            headers,
            body,
            trailers,
        } = self
        else {
            return None;
        };
        let mut response =
            Response::new(ReplayBody::new(body.clone(), trailers.as_deref().cloned()).boxed());
        *response.status_mut() = *status;
        *response.headers_mut() = headers.clone();
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        Some(response)
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the widespread `Keep-Alive` and `Proxy-*`).
/// `Trailer` is not one: it is end-to-end, and HTTP/1 servers send only the trailer fields
/// it names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
];

/// `headers` less hop-by-hop ones and those `Connection` names.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(name) || *name == header::UPGRADE || named.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_not_stored() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        h.insert("connection", "keep-alive, x-conn-only".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-conn-only", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("trailer", "x-sum".parse().unwrap());
        let c = CachedResponse::new(StatusCode::CREATED, &h, Bytes::from_static(b"{}"));
        let kept = c.headers().unwrap();
        let names: Vec<&str> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "set-cookie", "trailer"]);
        assert_eq!(kept.get_all("set-cookie").iter().count(), 2);
        assert_eq!(c.status(), StatusCode::CREATED);
        assert!(c.is_replayable());
    }

    #[test]
    fn weights() {
        let small = CachedResponse::not_replayable(StatusCode::OK);
        assert_eq!(small.weight(), std::mem::size_of::<CachedResponse>());
        assert!(!small.is_replayable());
        assert!(small.body().is_none());
        let mut h = HeaderMap::new();
        h.insert("x-a", "bc".parse().unwrap());
        let c = CachedResponse::new(StatusCode::OK, &h, Bytes::from(vec![0u8; 1000]));
        assert_eq!(c.weight(), small.weight() + 1000 + 3 + 2 + HEADER_OVERHEAD);
    }

    #[test]
    fn replays_are_marked() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        let c = CachedResponse::new(StatusCode::ACCEPTED, &h, Bytes::from_static(b"ok"));
        let r = c.replay().unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers()[IDEMPOTENT_REPLAYED], "true");
        assert!(CachedResponse::not_replayable(StatusCode::OK)
            .replay()
            .is_none());
    }
}
