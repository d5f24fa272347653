//! The `http` feature over real HTTP: an axum server on 127.0.0.1:0 behind `IdempotencyLayer`,
//! driven by hyper's client (and by raw sockets where a test needs to misbehave).

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use bytes::Bytes;
use common::{client, send, serve, within, HttpClient, Reply};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use idemstore::http::{CachedResponse, IdempotencyLayer, IDEMPOTENT_REPLAYED};
use idemstore::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

fn store() -> Store<CachedResponse> {
    Store::builder()
        .max_value_size(64 * 1024)
        .weigher(|r: &CachedResponse| r.weight())
        .build()
        .unwrap()
}

/// `/r` answers every method with `handler`, behind `layer`.
async fn serve_layer(layer: IdempotencyLayer, handler: MethodRouter) -> SocketAddr {
    serve(Router::new().route("/r", handler).layer(layer)).await
}

fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        b = b.header("idempotency-key", key);
    }
    b.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap()
}

async fn post(client: &HttpClient, addr: SocketAddr, key: &str, body: &str) -> Reply {
    send(client, request(Method::POST, addr, "/r", Some(key), body)).await
}

/// What the handlers of these tests record.
#[derive(Default)]
struct Probe {
    calls: AtomicUsize,
    charged: AtomicUsize,
    started: Notify,
    gate: Notify,
    dropped: Notify,
    /// A scripted body reached a `Step::Gate` or `Step::Hang`.
    reading: Notify,
    /// Opens a scripted body's `Step::Gate`.
    body_gate: Notify,
}

impl Probe {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A handler that counts its runs, charges the body's length once per run, optionally waits,
/// and answers 201 with the run number and the body it got.
fn charging(probe: &Arc<Probe>, latency: Duration) -> MethodRouter {
    let probe = probe.clone();
    on(
        MethodFilter::POST
            .or(MethodFilter::PATCH)
            .or(MethodFilter::GET)
            .or(MethodFilter::PUT),
        move |body: Bytes| {
            let probe = probe.clone();
            async move {
                let run = probe.calls.fetch_add(1, Ordering::SeqCst) + 1;
                probe.started.notify_one();
                tokio::time::sleep(latency).await;
                probe.charged.fetch_add(body.len(), Ordering::SeqCst);
                let body = format!(
                    "{{\"run\":{run},\"got\":{}}}",
                    String::from_utf8_lossy(&body)
                );
                (StatusCode::CREATED, [("x-run", run.to_string())], body)
            }
        },
    )
}

fn post_only(
    f: impl Fn(usize, Bytes) -> Response + Clone + Send + Sync + 'static,
    probe: &Arc<Probe>,
) -> MethodRouter {
    let probe = probe.clone();
    on(MethodFilter::POST, move |body: Bytes| {
        let probe = probe.clone();
        let f = f.clone();
        async move {
            let run = probe.calls.fetch_add(1, Ordering::SeqCst) + 1;
            f(run, body)
        }
    })
}

const BODY: &str = r#"{"account":"acc-1","amount":1000}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_run_the_handler_once() {
    let probe = Arc::new(Probe::default());
    let addr = serve_layer(
        IdempotencyLayer::new(store()),
        charging(&probe, Duration::from_millis(300)),
    )
    .await;
    let client = client();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { post(&client, addr, "\"dup-1\"", BODY).await })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    assert_eq!(probe.calls(), 1, "the handler ran once");
    assert_eq!(
        probe.charged.load(Ordering::SeqCst),
        BODY.len(),
        "charged once"
    );
    let originals: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED && !r.replayed())
        .collect();
    assert_eq!(originals.len(), 1);
    let original = originals[0];
    let (mut replays, mut conflicts) = (0, 0);
    for r in &replies {
        match r.status {
            StatusCode::CREATED if r.replayed() => {
                assert_eq!(r.body, original.body);
                replays += 1;
            }
            StatusCode::CREATED => {}
            StatusCode::CONFLICT => {
                assert_eq!(r.problem(), "request_in_flight");
                assert!(r.retry_after() >= 1);
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    assert_eq!(1 + replays + conflicts, 100);
    // Afterwards, a retry replays.
    let again = post(&client, addr, "\"dup-1\"", BODY).await;
    assert!(again.replayed());
    assert_eq!(again.body, original.body);
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_wait_mode_every_duplicate_gets_the_same_response() {
    let probe = Arc::new(Probe::default());
    let layer = IdempotencyLayer::new(store()).wait(Duration::from_secs(10));
    let addr = serve_layer(layer, charging(&probe, Duration::from_millis(300))).await;
    let client = client();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { post(&client, addr, "dup-2", BODY).await })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    assert_eq!(probe.calls(), 1);
    assert_eq!(probe.charged.load(Ordering::SeqCst), BODY.len());
    let first = &replies[0];
    assert_eq!(first.status, StatusCode::CREATED);
    for r in &replies {
        assert_eq!((r.status, &r.body), (first.status, &first.body));
        assert_eq!(r.headers["x-run"], "1");
    }
    assert_eq!(replies.iter().filter(|r| !r.replayed()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_wait_mode_a_duplicate_gets_409_when_the_wait_runs_out() {
    let probe = Arc::new(Probe::default());
    let gated = {
        let probe = probe.clone();
        on(MethodFilter::POST, move || {
            let probe = probe.clone();
            async move {
                probe.calls.fetch_add(1, Ordering::SeqCst);
                let gate = probe.gate.notified();
                probe.started.notify_one();
                gate.await;
                (StatusCode::OK, "done")
            }
        })
    };
    let layer = IdempotencyLayer::new(store())
        .wait(Duration::from_millis(100))
        .lease(Duration::from_secs(20));
    let addr = serve_layer(layer, gated).await;
    let client = client();
    let first = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, addr, "slow", "{}").await })
    };
    within("the handler to start", probe.started.notified()).await;
    let busy = post(&client, addr, "slow", "{}").await;
    assert_eq!(busy.status, StatusCode::CONFLICT);
    assert_eq!(busy.problem(), "request_in_flight");
    // The time left on the 20 s lease, rounded up: 20 s, or 19 s on a slow machine.
    let after = busy.retry_after();
    assert!(
        (19..=20).contains(&after),
        "Retry-After {after} is the time left on the lease"
    );
    probe.gate.notify_one();
    let first = first.await.unwrap();
    assert_eq!(
        (first.status, &first.body[..]),
        (StatusCode::OK, &b"done"[..])
    );
    let replay = post(&client, addr, "slow", "{}").await;
    assert!(replay.replayed());
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_key_with_another_request_gets_422() {
    let probe = Arc::new(Probe::default());
    let addr = serve_layer(
        IdempotencyLayer::new(store()),
        charging(&probe, Duration::ZERO),
    )
    .await;
    let client = client();
    assert_eq!(
        post(&client, addr, "k", BODY).await.status,
        StatusCode::CREATED
    );
    let other_body = post(&client, addr, "k", r#"{"account":"acc-1","amount":9999}"#).await;
    assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other_body.problem(), "idempotency_key_reused");
    let other_query = send(
        &client,
        request(Method::POST, addr, "/r?x=1", Some("k"), BODY),
    )
    .await;
    assert_eq!(other_query.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The identical request still replays.
    assert!(post(&client, addr, "k", BODY).await.replayed());
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_gets_400_or_passes_through_when_optional() {
    let probe = Arc::new(Probe::default());
    let addr = serve_layer(
        IdempotencyLayer::new(store()),
        charging(&probe, Duration::ZERO),
    )
    .await;
    let client = client();
    let r = send(&client, request(Method::POST, addr, "/r", None, BODY)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.problem(), "idempotency_key_missing");
    assert_eq!(r.json()["type"], "about:blank");
    assert_eq!(r.json()["title"], "Bad Request");
    assert_eq!(probe.calls(), 0);

    let optional = IdempotencyLayer::new(store()).key_required(false);
    let addr = serve_layer(optional, charging(&probe, Duration::ZERO)).await;
    for _ in 0..2 {
        let r = send(&client, request(Method::POST, addr, "/r", None, BODY)).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert!(!r.replayed());
    }
    assert_eq!(probe.calls(), 2);
    // With a key, the optional layer is idempotent.
    post(&client, addr, "opt", BODY).await;
    assert!(post(&client, addr, "opt", BODY).await.replayed());
    assert_eq!(probe.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_keys_get_400() {
    let probe = Arc::new(Probe::default());
    let layer = IdempotencyLayer::new(store()).problem_type("https://example.com/idempotency");
    let addr = serve_layer(layer, charging(&probe, Duration::ZERO)).await;
    let client = client();
    let long = format!("\"{}\"", "k".repeat(300));
    let bad: Vec<HeaderValue> = vec![
        HeaderValue::from_static("\"unterminated"),
        HeaderValue::from_static("two words"),
        HeaderValue::from_static("\"k\";param=1"),
        HeaderValue::from_static("\"a\", \"b\""),
        HeaderValue::from_static("\"\""),
        HeaderValue::from_static("\"bad\\escape\""),
        HeaderValue::from_str(&long).unwrap(),
        HeaderValue::from_bytes(b"\"\xc3\xa9\"").unwrap(),
    ];
    for value in bad {
        let mut req = request(Method::POST, addr, "/r", None, BODY);
        req.headers_mut().insert("idempotency-key", value.clone());
        let r = send(&client, req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{value:?}");
        assert_eq!(r.problem(), "idempotency_key_malformed");
        assert_eq!(r.json()["type"], "https://example.com/idempotency");
        assert_eq!(r.json()["title"], "Idempotency key is malformed");
        assert_eq!(
            r.headers["link"],
            "<https://example.com/idempotency>; rel=\"describedby\""
        );
    }
    // A long key is reported with its real length.
    let mut req = request(Method::POST, addr, "/r", None, BODY);
    req.headers_mut()
        .insert("idempotency-key", HeaderValue::from_str(&long).unwrap());
    let detail = send(&client, req).await.detail();
    assert!(
        detail.starts_with("the Idempotency-Key is 300 bytes long, over the limit of 255;"),
        "{detail}"
    );
    let mut twice = request(Method::POST, addr, "/r", Some("\"a\""), BODY);
    twice
        .headers_mut()
        .append("idempotency-key", HeaderValue::from_static("\"b\""));
    let r = send(&client, twice).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("more than one"));
    assert_eq!(probe.calls(), 0);
    // A 255-byte key is fine, quoted or bare, and both forms are the same key.
    let max = "k".repeat(255);
    assert_eq!(
        post(&client, addr, &max, BODY).await.status,
        StatusCode::CREATED
    );
    assert!(post(&client, addr, &format!("\"{max}\""), BODY)
        .await
        .replayed());
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_pass_through() {
    let probe = Arc::new(Probe::default());
    let addr = serve_layer(
        IdempotencyLayer::new(store()),
        charging(&probe, Duration::ZERO),
    )
    .await;
    let client = client();
    for method in [Method::GET, Method::PUT, Method::GET, Method::PUT] {
        let r = send(&client, request(method, addr, "/r", Some("same"), BODY)).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert!(!r.replayed());
    }
    // No key needed either.
    let r = send(&client, request(Method::GET, addr, "/r", None, "")).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(probe.calls(), 5);
    // PATCH is covered by default, like POST.
    let r = send(&client, request(Method::PATCH, addr, "/r", None, BODY)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // And the method list can change.
    let put_only = IdempotencyLayer::new(store()).methods([Method::PUT]);
    let addr = serve_layer(put_only, charging(&probe, Duration::ZERO)).await;
    let r = send(&client, request(Method::POST, addr, "/r", None, BODY)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = send(&client, request(Method::PUT, addr, "/r", None, BODY)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_byte_identical() {
    let probe = Arc::new(Probe::default());
    let handler = post_only(
        |run, body| {
            // Binary, not UTF-8, with repeated headers.
            let mut bytes = vec![0u8, 0xff, 0xfe, run as u8];
            bytes.extend_from_slice(&body);
            Response::builder()
                .status(StatusCode::ACCEPTED)
                .header("content-type", "application/octet-stream")
                .header("x-run", run.to_string())
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2")
                .header("cache-control", "no-store")
                .body(Body::from(bytes))
                .unwrap()
        },
        &probe,
    );
    let addr = serve_layer(IdempotencyLayer::new(store()), handler).await;
    let client = client();
    let first = post(&client, addr, "bytes", BODY).await;
    let second = post(&client, addr, "bytes", BODY).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert!(!first.replayed());
    assert!(second.replayed());
    assert_eq!(second.status, first.status);
    assert_eq!(second.body, first.body);
    let strip = |h: &HeaderMap| {
        let mut h = h.clone();
        h.remove("date");
        h.remove(IDEMPOTENT_REPLAYED);
        h
    };
    assert_eq!(strip(&second.headers), strip(&first.headers));
    assert_eq!(second.headers.get_all("set-cookie").iter().count(), 2);
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_throttling_release_the_key() {
    let probe = Arc::new(Probe::default());
    // Runs 1 and 2 fail (500, then 429); run 3 succeeds.
    let flaky = post_only(
        |run, _| match run {
            1 => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
            2 => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
            _ => (StatusCode::CREATED, format!("ok {run}")).into_response(),
        },
        &probe,
    );
    let addr = serve_layer(IdempotencyLayer::new(store()), flaky.clone()).await;
    let client = client();
    assert_eq!(
        post(&client, addr, "e", BODY).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        post(&client, addr, "e", BODY).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let ok = post(&client, addr, "e", BODY).await;
    assert_eq!(
        (ok.status, &ok.body[..]),
        (StatusCode::CREATED, &b"ok 3"[..])
    );
    assert!(post(&client, addr, "e", BODY).await.replayed());
    assert_eq!(probe.calls(), 3);

    // Stripe's way: a 500 is a result too, and is replayed.
    let probe = Arc::new(Probe::default());
    let flaky = post_only(
        |_, _| (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        &probe,
    );
    let layer = IdempotencyLayer::new(store()).store_server_errors(true);
    let addr = serve_layer(layer, flaky).await;
    assert_eq!(
        post(&client, addr, "e", BODY).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let again = post(&client, addr, "e", BODY).await;
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(again.replayed());
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_releases_the_key() {
    let probe = Arc::new(Probe::default());
    let panicky = post_only(
        |run, _| {
            if run == 1 {
                panic!("the handler fails on its first run (this panic is part of the test)");
            }
            (StatusCode::CREATED, "charged").into_response()
        },
        &probe,
    );
    // hyper may close the connection a moment before it drops the request's future (and the
    // guard in it): the retry waits for the release instead of racing it.
    let addr = serve_layer(releasing_layer(), panicky).await;
    let client = client();
    let failed = within(
        "the panicking request",
        client.request(request(Method::POST, addr, "/r", Some("p"), BODY)),
    )
    .await;
    assert!(
        failed.is_err(),
        "the connection closes when the handler panics"
    );
    let retry = post(&client, addr, "p", BODY).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(!retry.replayed());
    assert_eq!(probe.calls(), 2);
}

/// A handler that stays in flight on its first run until its future is dropped, and tells
/// when that happens; later runs answer at once.
fn stuck_first(probe: &Arc<Probe>) -> MethodRouter {
    struct OnDrop(Arc<Probe>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.dropped.notify_one();
        }
    }
    let probe = probe.clone();
    on(MethodFilter::POST, move || {
        let probe = probe.clone();
        async move {
            let run = probe.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if run == 1 {
                let _signal = OnDrop(probe.clone());
                probe.started.notify_one();
                std::future::pending::<()>().await;
            }
            (StatusCode::CREATED, format!("run {run}"))
        }
    })
}

/// The handler's future is dropped a moment before the layer's guard releases the key (the
/// awaited handler is dropped first): the retry waits for the release instead of racing it.
fn releasing_layer() -> IdempotencyLayer {
    IdempotencyLayer::new(store()).wait(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_releases_the_key() {
    let probe = Arc::new(Probe::default());
    let addr = serve_layer(releasing_layer(), stuck_first(&probe)).await;
    // A raw connection that sends the request and hangs up while the handler runs.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "POST /r HTTP/1.1\r\nhost: {addr}\r\nidempotency-key: \"gone\"\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    socket.write_all(raw.as_bytes()).await.unwrap();
    within("the handler to start", probe.started.notified()).await;
    drop(socket);
    within("the server to drop the handler", probe.dropped.notified()).await;
    let retry = post(&client(), addr, "\"gone\"", BODY).await;
    assert_eq!(
        (retry.status, &retry.body[..]),
        (StatusCode::CREATED, &b"run 2"[..])
    );
    assert_eq!(probe.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_client_request_releases_the_key() {
    let probe = Arc::new(Probe::default());
    let addr = serve_layer(releasing_layer(), stuck_first(&probe)).await;
    let client = client();
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, addr, "aborted", BODY).await })
    };
    within("the handler to start", probe.started.notified()).await;
    pending.abort();
    within("the server to drop the handler", probe.dropped.notified()).await;
    let retry = post(&client, addr, "aborted", BODY).await;
    assert_eq!(
        (retry.status, &retry.body[..]),
        (StatusCode::CREATED, &b"run 2"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_answers_503_and_runs_nothing() {
    let probe = Arc::new(Probe::default());
    let tiny = Store::builder().max_entries(1).shards(1).build().unwrap();
    let layer = IdempotencyLayer::new(tiny).capacity_retry_after(Duration::from_millis(2500));
    let addr = serve_layer(layer, charging(&probe, Duration::ZERO)).await;
    let client = client();
    assert_eq!(
        post(&client, addr, "one", BODY).await.status,
        StatusCode::CREATED
    );
    let full = post(&client, addr, "two", BODY).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.problem(), "idempotency_store_full");
    assert_eq!(full.retry_after(), 3);
    assert_eq!(probe.calls(), 1);
    // The stored key still replays.
    assert!(post(&client, addr, "one", BODY).await.replayed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_response_is_delivered_once_and_never_rerun() {
    let probe = Arc::new(Probe::default());
    let big = post_only(
        |_, _| (StatusCode::OK, "x".repeat(1000)).into_response(),
        &probe,
    );
    let layer = IdempotencyLayer::new(store()).max_response_body(64);
    let addr = serve_layer(layer, big.clone()).await;
    let client = client();
    let first = post(&client, addr, "big", BODY).await;
    assert_eq!((first.status, first.body.len()), (StatusCode::OK, 1000));
    let dup = post(&client, addr, "big", BODY).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.problem(), "response_not_replayable");
    assert_eq!(dup.json()["original_status"], 200);
    assert!(dup.headers.get("retry-after").is_none());
    assert_eq!(probe.calls(), 1);

    // The same when the store's max_value_size is the tighter bound.
    let probe = Arc::new(Probe::default());
    let big = post_only(
        |_, _| (StatusCode::OK, "x".repeat(1000)).into_response(),
        &probe,
    );
    let small = Store::builder()
        .max_value_size(512)
        .weigher(|r: &CachedResponse| r.weight())
        .build()
        .unwrap();
    let addr = serve_layer(IdempotencyLayer::new(small), big).await;
    assert_eq!(post(&client, addr, "big", BODY).await.body.len(), 1000);
    assert_eq!(
        post(&client, addr, "big", BODY).await.problem(),
        "response_not_replayable"
    );
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_cap_gets_413() {
    let probe = Arc::new(Probe::default());
    let layer = IdempotencyLayer::new(store()).max_request_body(64);
    let addr = serve_layer(layer, charging(&probe, Duration::ZERO)).await;
    let client = client();
    let big = "x".repeat(100);
    let r = post(&client, addr, "cap", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.problem(), "request_body_too_large");
    // Without a Content-Length (chunked), the cap holds while reading.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "POST /r HTTP/1.1\r\nhost: {addr}\r\nidempotency-key: cap\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    socket.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within("the 413", socket.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(probe.calls(), 0);
    // No key was taken: the same key with a small body runs.
    assert_eq!(
        post(&client, addr, "cap", BODY).await.status,
        StatusCode::CREATED
    );
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_share_keys() {
    let probe = Arc::new(Probe::default());
    let layer = IdempotencyLayer::new(store()).scope(|parts: &Parts| {
        parts
            .headers
            .get("x-tenant")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default()
    });
    let addr = serve_layer(layer, charging(&probe, Duration::ZERO)).await;
    let client = client();
    let as_tenant = |tenant: &'static str| {
        let mut req = request(Method::POST, addr, "/r", Some("shared"), BODY);
        req.headers_mut()
            .insert("x-tenant", HeaderValue::from_static(tenant));
        req
    };
    let a = send(&client, as_tenant("a")).await;
    let b = send(&client, as_tenant("b")).await;
    assert!(!a.replayed() && !b.replayed());
    assert_ne!(a.body, b.body);
    let a2 = send(&client, as_tenant("a")).await;
    assert!(a2.replayed());
    assert_eq!(a2.body, a.body);
    assert_eq!(probe.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_gets_the_same_request_body() {
    let probe = Arc::new(Probe::default());
    let addr = serve_layer(
        IdempotencyLayer::new(store()),
        charging(&probe, Duration::ZERO),
    )
    .await;
    let r = post(&client(), addr, "echo", BODY).await;
    assert_eq!(
        r.json()["got"],
        serde_json::from_str::<serde_json::Value>(BODY).unwrap()
    );
}

/// What a [`Scripted`] body does, step by step.
enum Step {
    /// A data frame.
    Data(&'static str),
    /// A pause.
    Sleep(Duration),
    /// Signals `Probe::reading`, then waits for `Probe::body_gate`.
    Gate,
    /// Signals `Probe::reading`, then pends until the body is dropped.
    Hang,
    /// An error.
    Fail,
}

/// A response body that follows a script, with no size hint (so it goes out chunked), and
/// signals `Probe::dropped` when it is dropped.
struct Scripted {
    steps: VecDeque<Step>,
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    probe: Arc<Probe>,
}

impl Scripted {
    fn body(probe: &Arc<Probe>, steps: impl IntoIterator<Item = Step>) -> Body {
        Body::new(Scripted {
            steps: steps.into_iter().collect(),
            waiting: None,
            probe: probe.clone(),
        })
    }
}

impl http_body::Body for Scripted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(waiting) = &mut this.waiting {
                if waiting.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.waiting = None;
            }
            let frame = match this.steps.pop_front() {
                None => return Poll::Ready(None),
                Some(Step::Data(d)) => Frame::data(Bytes::from_static(d.as_bytes())),
                Some(Step::Fail) => {
                    return Poll::Ready(Some(Err(std::io::Error::other("the body fails"))))
                }
                Some(Step::Sleep(d)) => {
                    this.waiting = Some(Box::pin(tokio::time::sleep(d)));
                    continue;
                }
                Some(Step::Gate) => {
                    this.probe.reading.notify_one();
                    let probe = this.probe.clone();
                    this.waiting = Some(Box::pin(async move { probe.body_gate.notified().await }));
                    continue;
                }
                Some(Step::Hang) => {
                    this.probe.reading.notify_one();
                    this.waiting = Some(Box::pin(std::future::pending()));
                    continue;
                }
            };
            return Poll::Ready(Some(Ok(frame)));
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.probe.dropped.notify_one();
    }
}

/// A `POST` handler that counts its runs, signals `Probe::started`, waits for `Probe::gate`
/// on its first run only if `gated`, and answers 201 with a scripted body.
fn scripted(
    probe: &Arc<Probe>,
    gated: bool,
    steps: impl Fn() -> Vec<Step> + Clone + Send + Sync + 'static,
) -> MethodRouter {
    let probe = probe.clone();
    on(MethodFilter::POST, move || {
        let probe = probe.clone();
        let steps = steps.clone();
        async move {
            let run = probe.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let gate = probe.gate.notified();
            probe.started.notify_one();
            if gated && run == 1 {
                gate.await;
            }
            Response::builder()
                .status(StatusCode::CREATED)
                .header("x-run", run.to_string())
                .body(Scripted::body(&probe, steps()))
                .unwrap()
        }
    })
}

/// The short lease of the heartbeat tests, on the system clock.
const SHORT_LEASE: Duration = Duration::from_millis(400);

/// Well past [`SHORT_LEASE`]: a lease that nothing renews has run out by then.
const PAST_THE_LEASE: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_keeps_a_slow_request_s_key() {
    let probe = Arc::new(Probe::default());
    let handler = scripted(&probe, true, || {
        vec![Step::Data("slow "), Step::Gate, Step::Data("done")]
    });
    // The handler, and then the reading of its body, outlive the lease.
    let layer = IdempotencyLayer::new(store()).lease(SHORT_LEASE);
    let addr = serve_layer(layer, handler).await;
    let client = client();
    let first = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, addr, "slow-1", BODY).await })
    };
    within("the handler to start", probe.started.notified()).await;
    tokio::time::sleep(PAST_THE_LEASE).await;
    // The handler still runs, past its first lease: the key is still its own.
    let during_handler = post(&client, addr, "slow-1", BODY).await;
    assert_eq!(during_handler.status, StatusCode::CONFLICT);
    assert_eq!(during_handler.problem(), "request_in_flight");
    assert_eq!(
        during_handler.retry_after(),
        1,
        "under a second of lease left"
    );
    probe.gate.notify_one();
    within("the body to be read", probe.reading.notified()).await;
    tokio::time::sleep(PAST_THE_LEASE).await;
    // The handler answered, and its body is still being read, past another lease.
    let during_body = post(&client, addr, "slow-1", BODY).await;
    assert_eq!(during_body.problem(), "request_in_flight");
    probe.body_gate.notify_one();
    let first = first.await.unwrap();
    assert_eq!(
        (first.status, &first.body[..], first.replayed()),
        (StatusCode::CREATED, &b"slow done"[..], false)
    );
    // The response was stored: the lease was never lost.
    let replay = post(&client, addr, "slow-1", BODY).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    assert_eq!(probe.calls(), 1, "the handler ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_heartbeat_a_slow_request_loses_its_key() {
    let probe = Arc::new(Probe::default());
    let handler = scripted(&probe, true, || vec![Step::Data("charged")]);
    let layer = IdempotencyLayer::new(store())
        .lease(SHORT_LEASE)
        .heartbeat(false);
    let addr = serve_layer(layer, handler).await;
    let client = client();
    let first = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, addr, "slow-2", BODY).await })
    };
    within("the handler to start", probe.started.notified()).await;
    tokio::time::sleep(PAST_THE_LEASE).await;
    // The lease ran out: the duplicate takes the key over and runs the handler again.
    let second = post(&client, addr, "slow-2", BODY).await;
    assert_eq!(
        (second.status, second.header("x-run"), second.replayed()),
        (StatusCode::CREATED, Some("2"), false)
    );
    probe.gate.notify_one();
    let first = first.await.unwrap();
    assert_eq!(first.header("x-run"), Some("1"));
    // The first run's response was not stored; the second's was.
    assert_eq!(
        post(&client, addr, "slow-2", BODY).await.header("x-run"),
        Some("2")
    );
    assert_eq!(probe.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_fails_completes_the_key() {
    let probe = Arc::new(Probe::default());
    let handler = scripted(&probe, false, || vec![Step::Data("partial"), Step::Fail]);
    let addr = serve_layer(IdempotencyLayer::new(store()), handler).await;
    let client = client();
    let failed = post(&client, addr, "fails", BODY).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.problem(), "response_body_failed");
    assert_eq!(failed.json()["original_status"], 201);
    // The handler's work is done: a retry does not run it again.
    let dup = post(&client, addr, "fails", BODY).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.problem(), "response_not_replayable");
    assert_eq!(dup.json()["original_status"], 201);
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_the_body_is_read_completes_the_key() {
    let probe = Arc::new(Probe::default());
    let handler = scripted(&probe, false, || vec![Step::Data("partial"), Step::Hang]);
    // Wait mode: the body is dropped a moment before the layer completes the key.
    let addr = serve_layer(releasing_layer(), handler).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "POST /r HTTP/1.1\r\nhost: {addr}\r\nidempotency-key: \"cut\"\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    socket.write_all(raw.as_bytes()).await.unwrap();
    within("the body to be read", probe.reading.notified()).await;
    drop(socket);
    within("the server to drop the body", probe.dropped.notified()).await;
    let dup = post(&client(), addr, "\"cut\"", BODY).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.problem(), "response_not_replayable");
    assert_eq!(dup.json()["original_status"], 201);
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_over_the_cap_is_passed_on_whole() {
    let probe = Arc::new(Probe::default());
    let handler = scripted(&probe, false, || {
        vec![
            Step::Data("0123456789"),
            Step::Sleep(Duration::from_millis(5)),
            Step::Data("abcdefghij"),
            Step::Data("ABCDEFGHIJ"),
            Step::Sleep(Duration::from_millis(5)),
            Step::Data("!@#$%^&*()"),
        ]
    });
    // 25 bytes: the third chunk outgrows the cap.
    let layer = IdempotencyLayer::new(store()).max_response_body(25);
    let addr = serve_layer(layer, handler).await;
    let client = client();
    let first = post(&client, addr, "stream", BODY).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(&first.body[..], b"0123456789abcdefghijABCDEFGHIJ!@#$%^&*()");
    assert_eq!(first.header("x-run"), Some("1"));
    let dup = post(&client, addr, "stream", BODY).await;
    assert_eq!(dup.problem(), "response_not_replayable");
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_are_stored_and_replayed_over_http1() {
    let probe = Arc::new(Probe::default());
    let handler = {
        let probe = probe.clone();
        on(MethodFilter::POST, move || {
            let probe = probe.clone();
            async move {
                let run = probe.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", HeaderValue::from(run));
                let body = Full::new(Bytes::from_static(b"payload"))
                    .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
                Response::builder()
                    .status(StatusCode::OK)
                    .header("trailer", "x-checksum")
                    .body(Body::new(body))
                    .unwrap()
            }
        })
    };
    let addr = serve_layer(IdempotencyLayer::new(store()), handler).await;
    let client = client();
    let with_te = || {
        let mut req = request(Method::POST, addr, "/r", Some("trailers"), BODY);
        req.headers_mut()
            .insert("te", HeaderValue::from_static("trailers"));
        req
    };
    let first = send(&client, with_te()).await;
    let replay = send(&client, with_te()).await;
    assert!(!first.replayed() && replay.replayed());
    for r in [&first, &replay] {
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"payload"[..]));
        assert_eq!(r.header("trailer"), Some("x-checksum"), "{r:?}");
        assert_eq!(r.header("content-length"), None, "{r:?}");
        let trailers = r.trailers.as_ref().expect("trailers arrive");
        assert_eq!(trailers["x-checksum"], "1");
    }
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_while_its_request_runs_gets_422() {
    let probe = Arc::new(Probe::default());
    let handler = scripted(&probe, true, || vec![Step::Data("ok")]);
    let addr = serve_layer(IdempotencyLayer::new(store()), handler).await;
    let client = client();
    let first = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, addr, "busy", BODY).await })
    };
    within("the handler to start", probe.started.notified()).await;
    let other = post(&client, addr, "busy", "{}").await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.problem(), "idempotency_key_reused");
    assert!(other.detail().contains("is in use"), "{}", other.detail());
    let same = post(&client, addr, "busy", BODY).await;
    assert_eq!(same.problem(), "request_in_flight");
    probe.gate.notify_one();
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_on_another_path_is_another_key() {
    let probe = Arc::new(Probe::default());
    let router = Router::new()
        .route("/r", charging(&probe, Duration::ZERO))
        .route("/s", charging(&probe, Duration::ZERO))
        .layer(IdempotencyLayer::new(store()));
    let addr = serve(router).await;
    let client = client();
    let on_path = |method: Method, path: &str| request(method, addr, path, Some("k"), BODY);
    let r = send(&client, on_path(Method::POST, "/r")).await;
    let s = send(&client, on_path(Method::POST, "/s")).await;
    let patch = send(&client, on_path(Method::PATCH, "/r")).await;
    for reply in [&r, &s, &patch] {
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        assert!(!reply.replayed());
    }
    assert_eq!(probe.calls(), 3, "three scopes, three keys");
    // Each replays its own response.
    let r2 = send(&client, on_path(Method::POST, "/r")).await;
    let s2 = send(&client, on_path(Method::POST, "/s")).await;
    assert!(r2.replayed() && s2.replayed());
    assert_eq!((r2.body, s2.body), (r.body, s.body));
    assert_eq!(probe.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_key_header() {
    let probe = Arc::new(Probe::default());
    let layer =
        IdempotencyLayer::new(store()).header_name(HeaderName::from_static("x-request-key"));
    let addr = serve_layer(layer, charging(&probe, Duration::ZERO)).await;
    let client = client();
    let with_key = |value: &'static str| {
        let mut req = request(Method::POST, addr, "/r", None, BODY);
        req.headers_mut()
            .insert("x-request-key", HeaderValue::from_static(value));
        req
    };
    // Idempotency-Key is not the key header here.
    let missing = post(&client, addr, "\"k\"", BODY).await;
    assert_eq!(missing.problem(), "idempotency_key_missing");
    assert!(
        missing.detail().contains("an x-request-key header"),
        "{}",
        missing.detail()
    );
    let bad = send(&client, with_key("\"open")).await;
    assert_eq!(bad.problem(), "idempotency_key_malformed");
    assert!(
        bad.detail().starts_with("the x-request-key "),
        "{}",
        bad.detail()
    );
    assert_eq!(probe.calls(), 0);
    let first = send(&client, with_key("\"k\"")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(send(&client, with_key("k")).await.replayed());
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_too_small_for_the_marker_runs_nothing() {
    let probe = Arc::new(Probe::default());
    let tiny = Store::builder()
        .max_value_size(16)
        .weigher(|r: &CachedResponse| r.weight())
        .build()
        .unwrap();
    let addr = serve_layer(
        IdempotencyLayer::new(tiny),
        charging(&probe, Duration::ZERO),
    )
    .await;
    let r = post(&client(), addr, "k", BODY).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.problem(), "idempotency_misconfigured");
    assert_eq!(probe.calls(), 0);
}

/// Sends a request head that announces a body and never sends it; returns the status line of
/// the answer, which must come without the body.
async fn answer_without_body(addr: SocketAddr, path: &str) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nidempotency-key: k\r\ncontent-length: 100\r\n\r\n"
    );
    socket.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within("an answer before the body", async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server hung up without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_problems_are_answered_before_the_body_is_read() {
    let probe = Arc::new(Probe::default());
    let router = Router::new()
        .route("/{*rest}", charging(&probe, Duration::ZERO))
        .layer(IdempotencyLayer::new(store()));
    let addr = serve(router).await;
    let long = format!("/{}", "p".repeat(5000));
    assert_eq!(
        answer_without_body(addr, &long).await,
        "HTTP/1.1 414 URI Too Long"
    );
    let bad_lease = IdempotencyLayer::new(store()).lease(Duration::ZERO);
    let addr = serve_layer(bad_lease, charging(&probe, Duration::ZERO)).await;
    assert_eq!(
        answer_without_body(addr, "/r").await,
        "HTTP/1.1 500 Internal Server Error"
    );
    assert_eq!(probe.calls(), 0);
}
