//! The payments example, driven over real HTTP on loopback: the router it serves
//! (`examples/payments.rs`, included here) on 127.0.0.1:0, and hyper's client.

#[allow(dead_code)]
#[path = "../examples/payments.rs"]
mod payments;

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use common::{HttpClient, Reply};
use http_body_util::Full;
use payments::{Ledger, Payment, TENANT};

struct Api {
    addr: SocketAddr,
    client: HttpClient,
    ledger: Arc<Ledger>,
}

impl Api {
    /// The example's app, with charges that take `latency`, on an ephemeral port.
    async fn start(latency: Duration) -> Api {
        let ledger = Arc::new(Ledger::new(latency));
        let addr = common::serve(payments::app(ledger.clone(), payments::store())).await;
        Api {
            addr,
            client: common::client(),
            ledger,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        tenant: &str,
        key: Option<&str>,
        body: &str,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header(TENANT, tenant)
            .header("content-type", "application/json");
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap();
        common::send(&self.client, req).await
    }

    async fn charge(&self, tenant: &str, key: &str, account: &str, amount: u64) -> Reply {
        let body = format!(r#"{{"account":"{account}","amount":{amount}}}"#);
        self.send(Method::POST, "/payments", tenant, Some(key), &body)
            .await
    }
}

fn payment(reply: &Reply) -> Payment {
    serde_json::from_slice(&reply.body).expect("a payment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_charge_is_charged_once_and_readable() {
    let api = Api::start(Duration::ZERO).await;
    let first = api.charge("acme", "\"order-1\"", "acc-1", 1000).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    let p = payment(&first);
    assert_eq!((p.account.as_str(), p.amount), ("acc-1", 1000));
    assert_eq!(
        first.header("location"),
        Some(&*format!("/payments/{}", p.id))
    );

    let retry = api.charge("acme", "\"order-1\"", "acc-1", 1000).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("location"), first.header("location"));
    assert_eq!(api.ledger.charges(), 1);
    assert_eq!(api.ledger.charged("acme", "acc-1"), 1000);

    let read = api
        .send(
            Method::GET,
            &format!("/payments/{}", p.id),
            "acme",
            None,
            "",
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(payment(&read), p);
    // Another merchant cannot read it.
    let other = api
        .send(
            Method::GET,
            &format!("/payments/{}", p.id),
            "globex",
            None,
            "",
        )
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_charges_charge_once() {
    let api = Arc::new(Api::start(Duration::from_millis(300)).await);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.charge("acme", "\"burst\"", "acc-2", 250).await })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    // The example waits for the running charge, so every duplicate gets its response.
    assert!(replies.iter().all(|r| r.status == StatusCode::CREATED));
    assert!(replies.iter().all(|r| r.body == replies[0].body));
    assert_eq!(replies.iter().filter(|r| !r.replayed()).count(), 1);
    assert_eq!(api.ledger.charges(), 1);
    assert_eq!(api.ledger.charged("acme", "acc-2"), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misuse_gets_clear_errors() {
    let api = Api::start(Duration::ZERO).await;
    let body = r#"{"account":"acc-3","amount":500}"#;
    let missing = api
        .send(Method::POST, "/payments", "acme", None, body)
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let doc: serde_json::Value = serde_json::from_slice(&missing.body).unwrap();
    assert_eq!(doc["type"], payments::DOCS);
    assert_eq!(doc["code"], "idempotency_key_missing");

    assert_eq!(
        api.charge("acme", "k-3", "acc-3", 500).await.status,
        StatusCode::CREATED
    );
    let reused = api.charge("acme", "k-3", "acc-3", 999).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let doc: serde_json::Value = serde_json::from_slice(&reused.body).unwrap();
    assert_eq!(doc["code"], "idempotency_key_reused");

    // The handler's own 4xx is a result too, and replays.
    let invalid = api.charge("acme", "k-4", "acc-3", 0).await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(api.charge("acme", "k-4", "acc-3", 0).await.replayed());

    // Another merchant's equal key is another payment.
    let other = api.charge("globex", "k-3", "acc-3", 500).await;
    assert_eq!(other.status, StatusCode::CREATED);
    assert!(!other.replayed());
    assert_eq!(api.ledger.charges(), 2);

    // The documentation the problem documents point to.
    let docs = api
        .send(Method::GET, payments::DOCS, "acme", None, "")
        .await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&docs.body).contains("24 hours"));
}
