//! A tower [`Layer`](tower::Layer) that makes HTTP endpoints idempotent, after the IETF
//! [Idempotency-Key HTTP header field draft](https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/)
//! (feature `http`).
//!
//! A client sends `POST` or `PATCH` with an `Idempotency-Key` header; it may retry the request
//! as often as it likes (after a timeout, a dropped connection, a crash), and the handler runs
//! once: every duplicate gets the first response back, byte for byte, marked with
//! `Idempotent-Replayed: true`.
//!
//! ```
//! use std::time::Duration;
//! use axum::{http::request::Parts, routing::post, Router};
//! use idemstore::http::{CachedResponse, IdempotencyLayer};
//! use idemstore::Store;
//!
//! // The store: keys live 24 h after completion; stored responses weigh at most 256 KiB.
//! let store: Store<CachedResponse> = Store::builder()
//!     .ttl(Duration::from_secs(24 * 3600))
//!     .lease(Duration::from_secs(60))
//!     .max_value_size(256 * 1024)
//!     .weigher(|r: &CachedResponse| r.weight())
//!     .build()?;
//!
//! let app: Router = Router::new()
//!     .route("/payments", post(|body: String| async move { format!("charged {body}") }))
//!     .layer(
//!         IdempotencyLayer::new(store)
//!             // Keys of different callers never meet: scope them by the caller's identity.
//!             .scope(|parts: &Parts| {
//!                 parts.headers.get("x-tenant-id").map(|v| v.as_bytes().to_vec()).unwrap_or_default()
//!             })
//!             // Duplicates that arrive while the first request runs wait for its response.
//!             .wait(Duration::from_secs(10)),
//!     );
//! # Ok::<(), idemstore::Error>(())
//! ```
//!
//! # What the layer does with a request
//! 1. A request whose method is not one the layer applies to ([`IdempotencyLayer::methods`](crate::http::IdempotencyLayer::methods),
//!    `POST` and `PATCH` by default) passes through untouched, whatever its headers.
//! 2. The `Idempotency-Key` header is read and checked (format below). Missing: `400`, or the
//!    request passes through untouched if the key is optional
//!    ([`IdempotencyLayer::key_required`](crate::http::IdempotencyLayer::key_required)). Malformed, or sent more than once: `400`.
//! 3. The key's scope is computed from the request head (`414` for a path too long to be part
//!    of it, `500` if the layer is misconfigured), before anything else is done.
//! 4. The request body is read, up to [`IdempotencyLayer::max_request_body`](crate::http::IdempotencyLayer::max_request_body) (`413` beyond it;
//!    the handler does not run and no key is claimed).
//! 5. The key is claimed in its scope, with the request's fingerprint:
//!    - new key: the handler runs, with a request carrying the same bytes;
//!    - completed key, same fingerprint: the stored response is replayed; the handler does not
//!      run;
//!    - known key, different fingerprint: `422`;
//!    - key in flight: `409` with `Retry-After`, or, with [`IdempotencyLayer::wait`](crate::http::IdempotencyLayer::wait), the
//!      duplicate waits for the first request to finish and gets its response (`409` if it is
//!      still running when the wait runs out);
//!    - store full: `503` with `Retry-After`; the handler does not run (fail closed).
//! 6. While the handler runs and its response body is read, a heartbeat renews the key's lease
//!    (see the expiry policy). The handler's response is stored, or the key is released (see
//!    below), and the response goes to the client.
//!
//! # Key format
//! The draft makes `Idempotency-Key` an RFC 8941 Item whose value is a String
//! (`Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`). The layer accepts:
//! - an **sf-string**: `"`, then printable ASCII (0x20–0x7E) with `\"` and `\\` as the only
//!   escapes, then `"`; parameters (`"k";a=1`) and lists are refused;
//! - for compatibility with clients that send Stripe-style keys, a **bare value**: printable
//!   ASCII without space, `"`, `,` and `;` (`Idempotency-Key: 8e03978e-40d5-...`).
//!
//! The key is the unquoted content, so `"abc"` and `abc` are the same key. It must be 1 to
//! [`MAX_KEY_LEN`](crate::http::MAX_KEY_LEN) (255) bytes, and no longer than the store's `max_key_len`. A request with
//! more than one `Idempotency-Key` field gets `400` (the draft: clients MUST NOT send more
//! than one). UUIDs (v4, or v7) make good keys. (With
//! [`IdempotencyLayer::header_name`](crate::http::IdempotencyLayer::header_name), all of this
//! applies to the header named there instead.)
//!
//! # Scope and fingerprint
//! A key lives in a **scope**: the method, the path (as the layer sees it) and whatever
//! [`IdempotencyLayer::scope`](crate::http::IdempotencyLayer::scope) returns for the request, typically the authenticated principal or
//! tenant. Equal keys in different scopes are different keys: a request that reuses a key with
//! another method or path is a new request, and runs; two tenants' keys never meet, and one
//! tenant can never be replayed another's response.
//!
//! **Set a scope whenever more than one principal uses the service.** Without one, the scope
//! is the method and path alone: two callers that happen to send the same key to the same
//! endpoint share it, and the second gets the first one's response replayed, headers and
//! body included.
//!
//! **Nested routers**: axum's `Router::nest` strips the nest's prefix from the path that
//! services inside it see, so a layer applied inside two nests that share a store sees
//! `/orders` for both `/v1/orders` and `/v2/orders`, and their keys collide. Apply the layer
//! outside `nest` (it then sees the whole path), or add the prefix in `scope`.
//!
//! The **fingerprint** of a request is its query string, the values of the headers named with
//! [`IdempotencyLayer::fingerprint_header`](crate::http::IdempotencyLayer::fingerprint_header)
//! (none by default) and its body bytes; method and path need not be part of it, since they
//! are part of the scope. The store keeps a 64-bit hash of it with the key; a request that
//! reuses a known key (in flight or completed) in the same scope with a different fingerprint
//! gets `422`.
//!
//! # What is stored
//! | handler response | the key | a duplicate gets |
//! |---|---|---|
//! | 1xx–4xx except 408 and 429 | completed with the response | the response, replayed |
//! | 5xx (unless [`IdempotencyLayer::store_server_errors`](crate::http::IdempotencyLayer::store_server_errors)) | released | a fresh run |
//! | 408, 429 | released | a fresh run |
//! | a response larger than [`max_response_body`](crate::http::IdempotencyLayer::max_response_body) or the store's `max_value_size` | completed as [`CachedResponse::NotReplayable`](crate::http::CachedResponse::NotReplayable) | `409`, `code` `response_not_replayable` |
//! | a response that would be stored, whose body then failed, or whose client went away while the body was read | completed as [`CachedResponse::NotReplayable`](crate::http::CachedResponse::NotReplayable) | `409`, `code` `response_not_replayable` |
//! | the handler's service returned an error | released | a fresh run |
//! | the handler panicked, or the client went away before the handler answered (the response future was dropped) | released | a fresh run |
//!
//! 3xx responses are stored too: a `303 See Other` after a `POST` is the request's result, and
//! running the request again on a retry would do its work twice. With
//! `store_server_errors(true)`, 5xx responses are stored as well, as Stripe does: a request that
//! failed on the server is then not run again with the same key.
//!
//! Once the handler has answered with a status that is stored, its work is done: whatever
//! happens to the response body afterwards (it fails, or the client goes away while the layer
//! reads it), the key is completed, as not replayable if the response could not be stored
//! whole, and never released, so a retry can never run the work a second time.
//!
//! A stored response keeps its status, headers (less hop-by-hop ones: `Connection`,
//! `Keep-Alive`, `Proxy-*`, `TE`, `Transfer-Encoding`, `Upgrade`, and any that `Connection`
//! names), body and trailers, and is replayed byte for byte with `Idempotent-Replayed: true`
//! added. The server adds its own `Date` to a replay, as to any response, unless the handler
//! had set one. A response with trailers goes out chunked over HTTP/1 (never with
//! `Content-Length`), and, as hyper does, with the trailer fields that its `Trailer` header
//! names, when the client asked for them with `TE: trailers`.
//!
//! # Expiry policy
//! As the draft asks, a service that uses the layer should publish this policy:
//! - a completed key (and its stored response) lives for the store's ttl
//!   ([`Builder::ttl`](crate::Builder::ttl), 24 h by default), counted from the moment the
//!   response was stored; after that the key is forgotten and a request that reuses it runs
//!   again;
//! - an in-flight key is held for the lease ([`IdempotencyLayer::lease`](crate::http::IdempotencyLayer::lease), else the store's
//!   [`Builder::lease`](crate::Builder::lease), 30 s by default), and renewed by a
//!   **heartbeat** ([`IdempotencyLayer::heartbeat`](crate::http::IdempotencyLayer::heartbeat), on by default): every third of the lease,
//!   while the handler runs and while its response body is read, the lease is extended to a
//!   whole lease from then. A slow handler therefore keeps its key however long it runs, and
//!   the lease only bounds how long a key stays held once its request stops making progress:
//!   the response future is no longer polled (a handler that blocks its executor thread stops
//!   the heartbeat too). A handler that never finishes holds its key as long as it runs: put a
//!   timeout around handlers (a timeout layer outside this one releases the key when it gives
//!   up). If the lease does run out, the next duplicate takes the key over and runs the
//!   request again, and the first request's response is not stored. Without the heartbeat,
//!   set the lease above the slowest handler's time. `Retry-After` on `409` is the time left
//!   on the lease, in whole seconds rounded up (at least 1): when the key would be free if its
//!   request stopped now (with the heartbeat, a request still running then renews it);
//! - a released key (5xx, 408, 429, failures, panics, disconnects before the handler answered)
//!   is free at once.
//!
//! # Status codes the layer itself answers
//! Every one comes with an `application/problem+json` body (RFC 9457) with `type`, `title`,
//! `status`, `detail` (what happened and what to do) and a `code` extension member. `type` is
//! `about:blank` (and `title` the status's reason phrase) unless the layer has a documentation
//! URI ([`IdempotencyLayer::problem_type`](crate::http::IdempotencyLayer::problem_type)), which is then `type`, and also sent as
//! `Link: <uri>; rel="describedby"`.
//!
//! | status | `code` | when |
//! |---|---|---|
//! | 400 | `idempotency_key_missing` | the method needs a key and the request has none |
//! | 400 | `idempotency_key_malformed` | the key is not in the format above, or sent twice |
//! | 400 | `request_body_unreadable` | the request body failed while being read |
//! | 409 | `request_in_flight` | a request with this key is still running (`Retry-After`) |
//! | 409 | `response_not_replayable` | the key completed, but its response could not be stored (`original_status` member) |
//! | 413 | `request_body_too_large` | the body is over [`max_request_body`](crate::http::IdempotencyLayer::max_request_body) |
//! | 414 | `request_path_too_long` | method and path exceed the store's [`MAX_SCOPE_LEN`](crate::MAX_SCOPE_LEN) |
//! | 422 | `idempotency_key_reused` | the key is known in this scope with another query, body or fingerprinted header |
//! | 500 | `idempotency_misconfigured` | the layer's configuration is invalid: a bad lease, a scope over 4 KiB, or a store whose `max_value_size` is below the weight of a [`CachedResponse::NotReplayable`](crate::http::CachedResponse::NotReplayable) marker (the layer could not record a response too large to store, so it runs nothing) |
//! | 500 | `response_body_failed` | the handler's response body failed before its end (`original_status` member) |
//! | 503 | `idempotency_store_full` | the store holds as many keys as it may (`Retry-After`) |
//!
//! # Cancellation, panics and backpressure
//! The claim is held by a guard inside the response future: if the handler panics (the panic
//! unwinds through the future) or the server drops the future because the client went away
//! before the handler answered, the guard releases the key, so a retry runs the request
//! again. Once the handler has answered with a status that is stored, dropping the future
//! completes the key instead (see above). The layer does not catch panics; put a
//! panic-catching layer outside it if clients should get a `500` instead of a closed
//! connection. The inner service is made ready in `poll_ready` and called once the request
//! body is read and the key claimed, so it stays reserved while the body is read and, in wait
//! mode, while a duplicate waits.
//!
//! # Bodies and types
//! The layer reads the request body into [`Bytes`](bytes::Bytes) and hands the handler a request whose body
//! is `ReqB::from(bytes)` (the same body type: `axum::body::Body` and `Full<Bytes>` qualify).
//! Responses have the body type [`ResponseBody`](crate::http::ResponseBody), a boxed body that axum's `Router::layer`
//! accepts. The response future is `Send + 'static`.
//!
//! A response that would be stored is read whole (up to the cap) before its head goes to the
//! client: a streamed response (server-sent events, a long download) reaches the client only
//! once it has ended, or once it has outgrown [`max_response_body`](crate::http::IdempotencyLayer::max_response_body) (it is then passed on as
//! it comes, and not stored). Keep streaming endpoints out of the layer, or give them a small
//! cap.
//!
//! Put compression (and any layer that varies the response by request headers) **outside**
//! this layer: `Accept-Encoding` is not part of the fingerprint, so a response compressed
//! inside the layer for one client would be replayed, compressed so, to a retry that may not
//! accept that encoding. Outside, the layer stores the identity response and each replay is
//! compressed for the client that gets it.

mod body;
mod cached;
mod key;
mod owner;
mod problem;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::header::{HeaderName, CONTENT_LENGTH};
use ::http::request::Parts;
use ::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::{Claim, ClaimOptions, Error, Store, MAX_SCOPE_LEN};

use body::{collect_capped, Collected, ReplayBody};
pub use cached::CachedResponse;
pub use key::MAX_KEY_LEN;
use owner::Owned;
use problem::Problem;

/// The request header that carries the key: `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header that marks a replay: `Idempotent-Replayed: true`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The default cap on a request body the layer reads: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;

/// The default cap on a response body the layer stores: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 1 << 20;

/// The default `Retry-After` of a `503` from a full store: 5 s.
pub const DEFAULT_CAPACITY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A boxed error, the error type of [`ResponseBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response of the layer: replays, problem documents and passed-on handler
/// responses alike.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// The response future of [`IdempotencyService`].
pub type ResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, E>> + Send + 'static>>;

/// Writes the caller-defined part of a request's scope.
type ScopeFn = dyn Fn(&Parts, &mut Vec<u8>) + Send + Sync;

/// The layer's settings, shared by every service it makes.
#[derive(Clone)]
struct Config {
    store: Store<CachedResponse>,
    header: HeaderName,
    methods: Vec<Method>,
    required: bool,
    scope: Option<Arc<ScopeFn>>,
    fingerprint_headers: Vec<HeaderName>,
    wait: Duration,
    store_server_errors: bool,
    max_request_body: usize,
    max_response_body: usize,
    lease: Option<Duration>,
    heartbeat: bool,
    capacity_retry_after: Duration,
    problem_type: Option<String>,
    link: Option<HeaderValue>,
    /// Whether the store takes a [`CachedResponse::NotReplayable`] marker; without it the
    /// layer could not keep a response too large to store from running twice.
    marker_fits: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyConfig")
            .field("header", &self.header)
            .field("methods", &self.methods)
            .field("required", &self.required)
            .field("scope", &self.scope.as_ref().map(|_| "Fn(&Parts)"))
            .field("fingerprint_headers", &self.fingerprint_headers)
            .field("wait", &self.wait)
            .field("store_server_errors", &self.store_server_errors)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("lease", &self.lease)
            .field("heartbeat", &self.heartbeat)
            .field("capacity_retry_after", &self.capacity_retry_after)
            .field("problem_type", &self.problem_type)
            .field("store", &self.store)
            .finish()
    }
}

/// The tower layer: wraps a service so that requests with an `Idempotency-Key` run once and
/// duplicates get the stored response. See the [module docs](self) for the whole behaviour.
///
/// Cheap to clone; every service it makes shares the one store, so a key claimed through one
/// route's service is seen by all (scopes keep routes apart).
#[derive(Clone, Debug)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

impl IdempotencyLayer {
    /// A layer over `store` with the defaults: `POST` and `PATCH`, key required, header
    /// `Idempotency-Key`, scope = method + path, fingerprint = query + body, `409` at once for
    /// a key in flight, 5xx/408/429 not stored, 1 MiB caps on request and stored response
    /// bodies, the lease renewed by a heartbeat while the handler runs.
    ///
    /// **The default scope is not safe for a service with more than one principal** (users,
    /// tenants, API clients): keys are then shared by everyone who calls the same method and
    /// path, and a caller that reuses another's key gets that caller's response replayed,
    /// headers and body included. Give such a service a [`scope`](Self::scope) that names the
    /// authenticated principal.
    ///
    /// Give the store [`CachedResponse::weight`] as its weigher and a `max_value_size`, so the
    /// memory of stored responses is bounded (see [`CachedResponse`]). The `max_value_size`
    /// must take at least a [`CachedResponse::NotReplayable`] marker (with that weigher,
    /// `size_of::<CachedResponse>()` bytes): below that, the layer could not record a response
    /// too large to store, so it refuses every keyed request with `500`
    /// (`idempotency_misconfigured`, logged as a `tracing` event with the `tracing` feature)
    /// rather than risk running one twice.
    pub fn new(store: Store<CachedResponse>) -> Self {
        let marker_fits = store
            .check_value(&CachedResponse::not_replayable(StatusCode::OK))
            .is_ok();
        IdempotencyLayer {
            config: Arc::new(Config {
                store,
                header: IDEMPOTENCY_KEY,
                methods: vec![Method::POST, Method::PATCH],
                required: true,
                scope: None,
                fingerprint_headers: Vec::new(),
                wait: Duration::ZERO,
                store_server_errors: false,
                max_request_body: DEFAULT_MAX_REQUEST_BODY,
                max_response_body: DEFAULT_MAX_RESPONSE_BODY,
                lease: None,
                heartbeat: true,
                capacity_retry_after: DEFAULT_CAPACITY_RETRY_AFTER,
                problem_type: None,
                link: None,
                marker_fits,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// The methods the layer applies to (default `POST` and `PATCH`); requests with other
    /// methods pass through untouched.
    pub fn methods<I: IntoIterator<Item = Method>>(self, methods: I) -> Self {
        self.with(|c| c.methods = methods.into_iter().collect())
    }

    /// Whether a request without a key gets `400` (`true`, the default) or passes through
    /// untouched, with no idempotency (`false`).
    pub fn key_required(self, required: bool) -> Self {
        self.with(|c| c.required = required)
    }

    /// The header that carries the key, instead of `Idempotency-Key`. The layer's problem
    /// documents name it.
    pub fn header_name(self, name: HeaderName) -> Self {
        self.with(|c| c.header = name)
    }

    /// The caller-defined part of a key's scope, computed from the request head: typically the
    /// authenticated principal or a tenant id, so that different callers' keys never meet.
    /// Method and path are always part of the scope; this is added to them. Together they
    /// may not exceed [`MAX_SCOPE_LEN`] (4 KiB): hash a longer scope down.
    ///
    /// A layer inside a nested router (axum's `Router::nest`) sees paths without the nest's
    /// prefix: apply it outside `nest`, or add the prefix here, when nests share a store.
    ///
    /// ```
    /// # use idemstore::{http::{CachedResponse, IdempotencyLayer}, Store};
    /// # let store: Store<CachedResponse> = Store::builder().build()?;
    /// let layer = IdempotencyLayer::new(store).scope(|parts: &axum::http::request::Parts| {
    ///     // An extension set by an authentication layer that runs before this one.
    ///     parts.extensions.get::<String>().cloned().unwrap_or_default()
    /// });
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn scope<F, T>(self, scope: F) -> Self
    where
        F: Fn(&Parts) -> T + Send + Sync + 'static,
        T: AsRef<[u8]>,
    {
        let scope = move |parts: &Parts, out: &mut Vec<u8>| {
            out.extend_from_slice(scope(parts).as_ref());
        };
        self.with(|c| c.scope = Some(Arc::new(scope)))
    }

    /// Adds a request header whose values are part of the fingerprint (e.g. `content-type`):
    /// a known key reused with other values of it gets `422`.
    pub fn fingerprint_header(self, name: HeaderName) -> Self {
        self.with(|c| c.fingerprint_headers.push(name))
    }

    /// How long a duplicate waits for a request with the same key that is still running:
    /// `Duration::ZERO` (the default) answers `409` at once; otherwise the duplicate waits up
    /// to `max` (without polling, see [`Store::claim_wait`]) and gets the stored response, or
    /// runs the request itself if the first one released the key, or gets `409` if the key is
    /// still in flight after `max`. If the first request's key is released (a 5xx, say), the
    /// waiting duplicates run the request again, one at a time, as retries would.
    pub fn wait(self, max: Duration) -> Self {
        self.with(|c| c.wait = max)
    }

    /// Whether 5xx responses are stored and replayed (as Stripe does) instead of releasing the
    /// key so that a retry runs the request again (the default, `false`).
    pub fn store_server_errors(self, store: bool) -> Self {
        self.with(|c| c.store_server_errors = store)
    }

    /// The largest request body the layer reads, in bytes (default 1 MiB); a larger one gets
    /// `413` and the handler does not run.
    pub fn max_request_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_request_body = bytes)
    }

    /// The largest response body the layer stores, in bytes (default 1 MiB). A larger response
    /// still goes to the client, streamed, but its key is completed as
    /// [`CachedResponse::NotReplayable`]: duplicates get `409`, and the request never runs
    /// twice.
    pub fn max_response_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_response_body = bytes)
    }

    /// The lease of a claimed key, instead of the store's default: how long a key stays held
    /// after its request stops renewing it (see [`heartbeat`](Self::heartbeat)), or, with the
    /// heartbeat off, how long the handler may run before a duplicate may take the key over.
    /// A lease the store refuses (under 1 ms, or too long) makes every keyed request a `500`
    /// (`idempotency_misconfigured`), answered before its body is read.
    pub fn lease(self, lease: Duration) -> Self {
        self.with(|c| c.lease = Some(lease))
    }

    /// Whether the lease is renewed while the handler runs and while its response body is
    /// read (`true`, the default): every third of the lease, the lease is extended to a whole
    /// lease from then, so a slow handler never loses its key to a duplicate that would run
    /// it a second time. With `false`, a handler that outlives the lease loses its key: a
    /// duplicate may take it over and run the request again. See the module docs' expiry
    /// policy.
    pub fn heartbeat(self, on: bool) -> Self {
        self.with(|c| c.heartbeat = on)
    }

    /// The `Retry-After` of a `503` when the store is full (default 5 s).
    pub fn capacity_retry_after(self, after: Duration) -> Self {
        self.with(|c| c.capacity_retry_after = after)
    }

    /// A URI that documents the service's idempotency rules: the `type` of the layer's problem
    /// documents, and sent as `Link: <uri>; rel="describedby"`, as the draft suggests.
    /// A URI that cannot be a header value is used as the `type` only.
    pub fn problem_type(self, uri: impl Into<String>) -> Self {
        let uri = uri.into();
        let link = HeaderValue::try_from(format!("<{uri}>; rel=\"describedby\"")).ok();
        self.with(|c| {
            c.problem_type = Some(uri);
            c.link = link;
        })
    }

    /// The layer's store.
    pub fn store(&self) -> &Store<CachedResponse> {
        &self.config.store
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> IdempotencyService<S> {
        IdempotencyService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`IdempotencyLayer`].
#[derive(Clone, Debug)]
pub struct IdempotencyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> IdempotencyService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for IdempotencyService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body + From<Bytes> + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The service made ready by `poll_ready` goes with this request; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = &self.config;
        if !config.methods.contains(req.method()) {
            return pass(inner.call(req));
        }
        let key = match read_key(config, req.headers()) {
            Ok(Some(key)) => key,
            Ok(None) if !config.required => return pass(inner.call(req)),
            Ok(None) => {
                let detail = format!(
                    "{} {} requires an {} header: send a unique value (a UUID) as a quoted \
                     string, and send the same value again when retrying the same request",
                    req.method(),
                    req.uri().path(),
                    header_label(config)
                );
                let p = Problem::new(
                    StatusCode::BAD_REQUEST,
                    "Idempotency key is missing",
                    "idempotency_key_missing",
                    detail,
                );
                return ready(config, p);
            }
            Err(p) => return ready(config, p),
        };
        Box::pin(handle(self.config.clone(), inner, req, key))
    }
}

/// Passes a request through: the inner service's response with its body boxed.
fn pass<F, B, E>(future: F) -> ResponseFuture<E>
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Box::pin(async move { Ok(box_response(future.await?)) })
}

/// A problem response, at once.
fn ready<E: Send + 'static>(config: &Config, problem: Problem) -> ResponseFuture<E> {
    let response = respond(config, problem);
    Box::pin(std::future::ready(Ok(response)))
}

fn respond(config: &Config, problem: Problem) -> Response<ResponseBody> {
    problem.into_response(config.problem_type.as_deref(), config.link.as_ref())
}

fn box_response<B>(response: Response<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    response.map(|b| b.map_err(Into::into).boxed_unsync())
}

/// The key header's name as people write it.
fn header_label(config: &Config) -> &str {
    if config.header == IDEMPOTENCY_KEY {
        "Idempotency-Key"
    } else {
        config.header.as_str()
    }
}

/// The longest key this layer accepts: [`MAX_KEY_LEN`], or the store's `max_key_len` if lower.
fn max_key_len(config: &Config) -> usize {
    MAX_KEY_LEN.min(config.store.inner.max_key_len)
}

/// The `400` for a malformed key.
fn malformed(detail: String) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "Idempotency key is malformed",
        "idempotency_key_malformed",
        detail,
    )
}

/// The key of a request: `Ok(None)` if it has none, a `400` problem if it is malformed.
fn read_key(config: &Config, headers: &HeaderMap) -> Result<Option<Vec<u8>>, Problem> {
    let mut values = headers.get_all(&config.header).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(malformed(format!(
            "the request has more than one {} field; send exactly one",
            header_label(config)
        )));
    }
    let max_len = max_key_len(config);
    key::parse_key(value.as_bytes(), max_len)
        .map(Some)
        .map_err(|e| malformed(e.detail(header_label(config), max_len)))
}

/// Runs one request that carries a well-formed key.
async fn handle<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqB>,
    key: Vec<u8>,
) -> Result<Response<ResponseBody>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ReqB: Body + From<Bytes>,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    // What the head and the configuration decide is answered before the body is read.
    let scope = match preflight(&config, &parts) {
        Ok(scope) => scope,
        Err(p) => return Ok(respond(&config, p)),
    };
    let body = match read_body(&parts.headers, body, config.max_request_body).await {
        Ok(body) => body,
        Err(p) => return Ok(respond(&config, p)),
    };
    let fingerprint = fingerprint_of(&config, &parts, &body);
    let mut options = ClaimOptions::new().scope(&scope).fingerprint(&fingerprint);
    if let Some(lease) = config.lease {
        options = options.lease(lease);
    }
    let store = &config.store;
    let claim = if config.wait.is_zero() {
        store.claim_with(&key, &options)
    } else {
        store.claim_wait(&key, &options, config.wait).await
    };
    let guard = match claim {
        Ok(Claim::Acquired(guard)) => guard,
        Ok(Claim::Completed(replay)) => {
            let stored = replay.value();
            return Ok(match stored.replay() {
                Some(response) => response,
                None => respond(&config, not_replayable(&config, stored.status())),
            });
        }
        Ok(Claim::InProgress(p)) => {
            let p = Problem::new(
                StatusCode::CONFLICT,
                "A request is outstanding for this idempotency key",
                "request_in_flight",
                format!(
                    "a request with this {} is still being processed; retry after the \
                     Retry-After delay to get its response",
                    header_label(&config)
                ),
            )
            .retry_after(p.retry_after());
            return Ok(respond(&config, p));
        }
        Ok(Claim::Mismatch(m)) => {
            let state = if m.is_completed() {
                "was already used"
            } else {
                "is in use"
            };
            let what = if config.fingerprint_headers.is_empty() {
                "query string or body"
            } else {
                "query string, body or fingerprinted headers"
            };
            let p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency key is already used",
                "idempotency_key_reused",
                format!(
                    "this {} {state} for a request to this method and path with a different \
                     {what}; send a new key for a new request, or the identical request to \
                     retry",
                    header_label(&config)
                ),
            );
            return Ok(respond(&config, p));
        }
        Err(e) => return Ok(respond(&config, store_error(&config, e))),
    };

    // This request owns the key. Until it is settled, every early exit, panic or drop of this
    // future drops `owned`, which releases the key; meanwhile its heartbeat renews the lease.
    let mut owned = Owned::new(guard, config.heartbeat.then(|| effective_lease(&config)));
    let response = owned
        .run(inner.call(Request::from_parts(parts, ReqB::from(body))))
        .await?;
    let status = response.status();
    if !stores(&config, status) {
        owned.release();
        return Ok(box_response(response));
    }
    // The handler's work is done: from here the key is completed, never released, even if
    // the body fails or this future is dropped while the body is read.
    owned.settle(status);
    let (head, body) = box_response(response).into_parts();
    match owned
        .run(collect_capped(body, config.max_response_body))
        .await
    {
        Collected::Whole { data, trailers } => {
            let stored = CachedResponse::with_trailers(
                status,
                &head.headers,
                data.clone(),
                trailers.clone(),
            );
            let stored = match store.check_value(&stored) {
                Ok(_) => stored,
                Err(_) => CachedResponse::not_replayable(status),
            };
            owned.complete(stored);
            Ok(Response::from_parts(
                head,
                ReplayBody::new(data, trailers).boxed(),
            ))
        }
        Collected::Oversize(rest) => {
            owned.complete(CachedResponse::not_replayable(status));
            Ok(Response::from_parts(head, rest.boxed_unsync()))
        }
        Collected::Failed => {
            owned.complete(CachedResponse::not_replayable(status));
            let mut p = Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The response failed",
                "response_body_failed",
                format!(
                    "the request was processed (status {}), but its response body failed \
                     before it was complete, so it cannot be delivered or replayed; the \
                     request will not run again with this {}",
                    status.as_u16(),
                    header_label(&config)
                ),
            );
            p.original_status = Some(status);
            Ok(respond(&config, p))
        }
    }
}

/// The lease a claim gets: the layer's, else the store's default.
fn effective_lease(config: &Config) -> Duration {
    config
        .lease
        .unwrap_or_else(|| Duration::from_nanos(config.store.inner.lease_nanos))
}

/// Whether a handler response with `status` completes its key.
fn stores(config: &Config, status: StatusCode) -> bool {
    if status.is_server_error() {
        return config.store_server_errors;
    }
    !matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
    )
}

/// The `409` for a key whose response could not be stored.
fn not_replayable(config: &Config, original: StatusCode) -> Problem {
    let mut p = Problem::new(
        StatusCode::CONFLICT,
        "The original response cannot be replayed",
        "response_not_replayable",
        format!(
            "a request with this {} already completed with status {}, but its response could \
             not be stored (too large, or not delivered whole), so it cannot be replayed; the \
             request will not run again with this key",
            header_label(config),
            original.as_u16()
        ),
    );
    p.original_status = Some(original);
    p
}

/// The request body, read up to the cap.
async fn read_body<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, Problem>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            "request_body_too_large",
            format!(
                "the request body is larger than the {limit} bytes this endpoint accepts; the \
                 request was not processed"
            ),
        )
    };
    let limit64 = u64::try_from(limit).unwrap_or(u64::MAX);
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit64) || body.size_hint().lower() > limit64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(_) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "Request body unreadable",
            "request_body_unreadable",
            "the request body could not be read to its end; the request was not processed",
        )),
    }
}

/// Appends `part` with a length prefix, so that parts never run into each other.
fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(part);
}

/// Checks the configuration and computes the request's scope: everything that does not need
/// the body, so that a request that cannot succeed is answered before its body is read.
fn preflight(config: &Config, parts: &Parts) -> Result<Vec<u8>, Problem> {
    if !config.marker_fits {
        event!(
            "http: the store's max_value_size is below the weight of a NotReplayable marker; \
             keyed requests are refused with 500"
        );
        return Err(misconfigured(
            "the idempotency store cannot record a response that is too large to store (its \
             max_value_size is below the weight of a CachedResponse::NotReplayable), so a \
             retry could run a request twice; the request was not processed"
                .to_string(),
        ));
    }
    if let Some(lease) = config.lease {
        if let Err(e) = crate::store::check_lease(lease) {
            return Err(misconfigured(format!(
                "the idempotency layer's lease is invalid ({e}); the request was not processed"
            )));
        }
    }
    scope_of(config, parts)
}

/// The scope of a request's key: method, path and the caller-defined part.
fn scope_of(config: &Config, parts: &Parts) -> Result<Vec<u8>, Problem> {
    let method = parts.method.as_str().as_bytes();
    let path = parts.uri.path().as_bytes();
    if 12 + method.len() + path.len() > MAX_SCOPE_LEN {
        return Err(Problem::new(
            StatusCode::URI_TOO_LONG,
            "Request path too long",
            "request_path_too_long",
            format!(
                "the request path is {} bytes; idempotent requests to this service may have \
                 paths of at most about {} bytes",
                path.len(),
                MAX_SCOPE_LEN - 12 - method.len()
            ),
        ));
    }
    let mut scope = Vec::with_capacity(64 + path.len());
    push_part(&mut scope, method);
    push_part(&mut scope, path);
    if let Some(f) = &config.scope {
        let mut own = Vec::new();
        f(parts, &mut own);
        push_part(&mut scope, &own);
    }
    if scope.len() > MAX_SCOPE_LEN {
        return Err(misconfigured(format!(
            "the scope of this request is {} bytes, over the store's limit of {MAX_SCOPE_LEN}; \
             the scope function should return a short identifier (or a hash of a long one)",
            scope.len()
        )));
    }
    Ok(scope)
}

/// The fingerprint of a request: query, the configured headers and the body. Method and path
/// are part of the scope, so a request that differs in them is another key, never a `422`.
fn fingerprint_of(config: &Config, parts: &Parts, body: &[u8]) -> Vec<u8> {
    let mut fp = Vec::with_capacity(64 + body.len());
    match parts.uri.query() {
        None => fp.push(0),
        Some(q) => {
            fp.push(1);
            push_part(&mut fp, q.as_bytes());
        }
    }
    for name in &config.fingerprint_headers {
        push_part(&mut fp, name.as_str().as_bytes());
        let values = parts.headers.get_all(name);
        push_part(
            &mut fp,
            &u32::try_from(values.iter().count())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for v in values {
            push_part(&mut fp, v.as_bytes());
        }
    }
    push_part(&mut fp, body);
    fp
}

fn misconfigured(detail: String) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Idempotency misconfigured",
        "idempotency_misconfigured",
        detail,
    )
}

/// The problem for a claim the store refused.
fn store_error(config: &Config, e: Error) -> Problem {
    match e {
        Error::CapacityExceeded { .. } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Idempotency store is full",
            "idempotency_store_full",
            format!(
                "the server cannot record more idempotency keys right now, so it did not \
                 process this request; retry with the same {} after the Retry-After delay",
                header_label(config)
            ),
        )
        .retry_after(config.capacity_retry_after),
        // `read_key` checks the length against the same limit: not expected here.
        Error::InvalidKey { max_len, .. } => malformed(format!(
            "the {} is longer than this service's limit of {max_len} bytes",
            header_label(config)
        )),
        other => misconfigured(format!(
            "the idempotency layer could not claim the key: {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let store = Store::builder().build().unwrap();
        let layer = IdempotencyLayer::new(store);
        Arc::try_unwrap(layer.config).unwrap()
    }

    fn parts(method: Method, uri: &str) -> Parts {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn what_is_stored() {
        let mut c = config();
        for s in [200, 201, 204, 303, 400, 404, 409, 422] {
            assert!(stores(&c, StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [408, 429, 500, 502, 503] {
            assert!(!stores(&c, StatusCode::from_u16(s).unwrap()), "{s}");
        }
        c.store_server_errors = true;
        assert!(stores(&c, StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!stores(&c, StatusCode::TOO_MANY_REQUESTS));
    }

    #[test]
    fn scopes_and_fingerprints_separate_their_parts() {
        let c = config();
        let a = parts(Method::POST, "/a?x=1");
        let b = parts(Method::POST, "/a?x=2");
        let d = parts(Method::PATCH, "/a?x=1");
        let e = parts(Method::POST, "/a");
        let f = parts(Method::POST, "/a?");
        assert_eq!(scope_of(&c, &a).unwrap(), scope_of(&c, &b).unwrap());
        assert_ne!(scope_of(&c, &a).unwrap(), scope_of(&c, &d).unwrap());
        assert_ne!(fingerprint_of(&c, &a, b""), fingerprint_of(&c, &b, b""));
        assert_ne!(fingerprint_of(&c, &e, b""), fingerprint_of(&c, &f, b""));
        assert_ne!(fingerprint_of(&c, &a, b"1"), fingerprint_of(&c, &a, b"2"));
        // Method and path are the scope's, not the fingerprint's.
        let g = parts(Method::PATCH, "/other?x=1");
        assert_eq!(fingerprint_of(&c, &a, b"1"), fingerprint_of(&c, &g, b"1"));
        assert_ne!(scope_of(&c, &a).unwrap(), scope_of(&c, &g).unwrap());
        let mut long = String::from("/");
        long.push_str(&"p".repeat(MAX_SCOPE_LEN));
        let p = scope_of(&c, &parts(Method::POST, &long)).unwrap_err();
        assert_eq!(p.status, StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn caller_scopes_are_added() {
        let store = Store::builder().build().unwrap();
        let layer = IdempotencyLayer::new(store)
            .scope(|p: &Parts| {
                p.headers
                    .get("x-tenant")
                    .map(|v| v.as_bytes().to_vec())
                    .unwrap_or_default()
            })
            .fingerprint_header(::http::header::CONTENT_TYPE);
        let c = &*layer.config;
        let mut a = parts(Method::POST, "/a");
        let plain = scope_of(c, &a).unwrap();
        a.headers.insert("x-tenant", HeaderValue::from_static("t1"));
        let t1 = scope_of(c, &a).unwrap();
        a.headers.insert("x-tenant", HeaderValue::from_static("t2"));
        assert_ne!(plain, t1);
        assert_ne!(t1, scope_of(c, &a).unwrap());
        let before = fingerprint_of(c, &a, b"{}");
        a.headers.insert(
            ::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        assert_ne!(before, fingerprint_of(c, &a, b"{}"));

        let huge = IdempotencyLayer::new(Store::builder().build().unwrap())
            .scope(|_: &Parts| vec![0u8; MAX_SCOPE_LEN]);
        let p = scope_of(&huge.config, &a).unwrap_err();
        assert_eq!(p.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn keys_from_headers() {
        let c = config();
        let mut h = HeaderMap::new();
        assert!(read_key(&c, &h).unwrap().is_none());
        h.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("\"k-1\""));
        assert_eq!(read_key(&c, &h).unwrap().unwrap(), b"k-1");
        h.append(IDEMPOTENCY_KEY, HeaderValue::from_static("\"k-2\""));
        assert_eq!(
            read_key(&c, &h).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn keys_are_checked_against_the_configured_header_and_limit() {
        let store = Store::builder().max_key_len(16).build().unwrap();
        let layer = IdempotencyLayer::new(store).header_name(HeaderName::from_static("x-key"));
        let c = &*layer.config;
        let mut h = HeaderMap::new();
        h.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("\"ignored\""));
        assert!(read_key(c, &h).unwrap().is_none());
        h.insert("x-key", HeaderValue::from_static("\"0123456789abcdefXYZ\""));
        let p = read_key(c, &h).unwrap_err();
        assert_eq!(p.code, "idempotency_key_malformed");
        assert!(
            p.detail
                .starts_with("the x-key is 19 bytes long, over the limit of 16;"),
            "{}",
            p.detail
        );
        assert!(p.detail.contains("1 to 16 bytes"), "{}", p.detail);
        h.insert("x-key", HeaderValue::from_static("0123456789abcdef"));
        assert_eq!(read_key(c, &h).unwrap().unwrap().len(), 16);
    }

    #[test]
    fn misconfigurations_are_found_before_the_body_is_read() {
        let a = parts(Method::POST, "/a");
        let bad_lease =
            IdempotencyLayer::new(Store::builder().build().unwrap()).lease(Duration::ZERO);
        let p = preflight(&bad_lease.config, &a).unwrap_err();
        assert_eq!(
            (p.status, p.code),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "idempotency_misconfigured"
            )
        );
        // A store that cannot take the "not replayable" marker.
        let tiny = Store::builder()
            .max_value_size(8)
            .weigher(|r: &CachedResponse| r.weight())
            .build()
            .unwrap();
        let layer = IdempotencyLayer::new(tiny);
        assert!(!layer.config.marker_fits);
        let p = preflight(&layer.config, &a).unwrap_err();
        assert_eq!(p.code, "idempotency_misconfigured");
        // A store that just takes it is fine.
        let marker = CachedResponse::not_replayable(StatusCode::OK).weight();
        let snug = Store::builder()
            .max_value_size(marker)
            .weigher(|r: &CachedResponse| r.weight())
            .build()
            .unwrap();
        assert!(preflight(&IdempotencyLayer::new(snug).config, &a).is_ok());
        assert_eq!(
            effective_lease(&config()),
            Duration::from_secs(30),
            "the store's default lease"
        );
        assert_eq!(
            effective_lease(
                &bad_lease
                    .with(|c| c.lease = Some(Duration::from_secs(7)))
                    .config
            ),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn layers_describe_themselves() {
        let layer = IdempotencyLayer::new(Store::builder().build().unwrap())
            .problem_type("https://example.com/docs/idempotency");
        let text = format!("{layer:?}");
        assert!(
            text.contains("https://example.com/docs/idempotency"),
            "{text}"
        );
        assert_eq!(
            layer.config.link.as_ref().unwrap(),
            "<https://example.com/docs/idempotency>; rel=\"describedby\""
        );
    }
}
