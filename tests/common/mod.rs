//! What `tests/http.rs` and `tests/payments.rs` share: a loopback server, hyper's client, and
//! the replies it gets.

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idemstore::http::IDEMPOTENT_REPLAYED;

/// hyper's HTTP/1 client, with whole bodies.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Every test fails rather than hangs.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// `f`, or a panic naming `what` if it takes over [`DEADLINE`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} took over {DEADLINE:?}"),
    }
}

/// Serves `router` on an ephemeral loopback port until the test's runtime ends.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A new client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    /// Whether it is marked `Idempotent-Replayed: true`.
    pub fn replayed(&self) -> bool {
        self.headers
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v == "true")
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The `code` of a problem document, after checking its RFC 9457 shape.
    pub fn problem(&self) -> String {
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{self:?}"
        );
        let doc = self.json();
        assert_eq!(doc["status"], self.status.as_u16(), "{doc}");
        assert!(doc["type"].is_string() && doc["title"].is_string(), "{doc}");
        assert!(!doc["detail"].as_str().unwrap().is_empty(), "{doc}");
        doc["code"].as_str().unwrap().to_string()
    }

    /// The `detail` of a problem document.
    pub fn detail(&self) -> String {
        self.json()["detail"].as_str().unwrap().to_string()
    }

    /// `Retry-After`, in seconds.
    pub fn retry_after(&self) -> u64 {
        self.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// Sends `req` and reads the whole response, within [`DEADLINE`].
pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    within("a request", async {
        let resp = client.request(req).await.expect("the server answers");
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.expect("the body arrives");
        let trailers = collected.trailers().cloned();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    })
    .await
}
