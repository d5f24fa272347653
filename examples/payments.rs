//! An idempotent payments API over HTTP, with axum and [`IdempotencyLayer`].
//!
//! `POST /payments` charges an in-memory ledger; `GET /payments/{id}` reads a payment back.
//! Clients send an `Idempotency-Key` with every charge and may retry it as often as they like:
//! the charge runs once, and retries (even concurrent ones) get the first response back.
//!
//! ```sh
//! cargo run --example payments --features http                  # serves on 127.0.0.1:3000
//! cargo run --example payments --features http -- 127.0.0.1:0   # or PAYMENTS_ADDR=...
//! ```
//!
//! It prints curl commands to try. `tests/payments.rs` drives this same router over HTTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idemstore::http::{CachedResponse, IdempotencyLayer};
use idemstore::Store;
use serde::{Deserialize, Serialize};

/// The header that names the merchant (standing in for real authentication): idempotency keys
/// are scoped by it, so two merchants' equal keys never meet.
pub const TENANT: &str = "x-tenant-id";

/// Where the layer's problem documents point (`type` and `Link`), served by this app.
pub const DOCS: &str = "/docs/idempotency";

/// A charge request: `amount` in minor units (cents).
#[derive(Debug, Deserialize)]
pub struct NewPayment {
    /// The account to charge.
    pub account: String,
    /// How much, in cents; more than zero.
    pub amount: u64,
}

/// A payment that went through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The payment's id, `pay_N`.
    pub id: String,
    /// The merchant that charged it.
    pub tenant: String,
    /// The account charged.
    pub account: String,
    /// The amount, in cents.
    pub amount: u64,
}

/// The in-memory ledger behind the API.
#[derive(Debug, Default)]
pub struct Ledger {
    payments: Mutex<HashMap<String, Payment>>,
    /// Total charged per (tenant, account), in cents.
    balances: Mutex<HashMap<(String, String), u64>>,
    next_id: AtomicU64,
    charges: AtomicUsize,
    /// How long a charge takes (a stand-in for the card network's latency).
    latency: Duration,
}

impl Ledger {
    /// An empty ledger whose charges take `latency` each.
    pub fn new(latency: Duration) -> Self {
        Ledger {
            latency,
            ..Ledger::default()
        }
    }

    /// How many charges ran (retries that were replayed do not count).
    pub fn charges(&self) -> usize {
        self.charges.load(Ordering::SeqCst)
    }

    /// The total charged to `account` by `tenant`, in cents.
    pub fn charged(&self, tenant: &str, account: &str) -> u64 {
        let balances = self.balances.lock().unwrap_or_else(|e| e.into_inner());
        balances
            .get(&(tenant.to_string(), account.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn record(&self, tenant: &str, req: &NewPayment) -> Payment {
        let id = format!("pay_{}", self.next_id.fetch_add(1, Ordering::SeqCst) + 1);
        let payment = Payment {
            id: id.clone(),
            tenant: tenant.to_string(),
            account: req.account.clone(),
            amount: req.amount,
        };
        let mut balances = self.balances.lock().unwrap_or_else(|e| e.into_inner());
        *balances
            .entry((tenant.to_string(), req.account.clone()))
            .or_default() += req.amount;
        drop(balances);
        let mut payments = self.payments.lock().unwrap_or_else(|e| e.into_inner());
        payments.insert(id, payment.clone());
        payment
    }

    fn get(&self, id: &str) -> Option<Payment> {
        let payments = self.payments.lock().unwrap_or_else(|e| e.into_inner());
        payments.get(id).cloned()
    }
}

/// The idempotency store the example uses: keys live 24 h after completion, an in-flight
/// charge holds its key on a 30 s lease (which the layer's heartbeat renews while the charge
/// runs), and stored responses weigh at most 64 KiB each.
pub fn store() -> Store<CachedResponse> {
    Store::builder()
        .ttl(Duration::from_secs(24 * 3600))
        .lease(Duration::from_secs(30))
        .max_entries(1_000_000)
        .max_value_size(64 * 1024)
        .weigher(|r: &CachedResponse| r.weight())
        .maintenance_interval(Duration::from_secs(1))
        .build()
        .expect("the example's store settings are valid")
}

/// The app: the payments routes behind the idempotency layer.
///
/// Duplicates of a charge that is still running wait up to 10 s for its response, so a client
/// that retries too early still gets the charge's result instead of a `409`.
pub fn app(ledger: Arc<Ledger>, store: Store<CachedResponse>) -> Router {
    let idempotency = IdempotencyLayer::new(store)
        .scope(|parts: &Parts| tenant_of(&parts.headers).into_bytes())
        .wait(Duration::from_secs(10))
        .max_request_body(16 * 1024)
        .problem_type(DOCS);
    Router::new()
        .route("/payments", post(create_payment))
        .route("/payments/{id}", get(read_payment))
        .layer(idempotency)
        // Outside the layer: the docs route needs no key (GET passes through anyway).
        .route(DOCS, get(docs))
        .with_state(ledger)
}

fn tenant_of(headers: &HeaderMap) -> String {
    headers
        .get(TENANT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("public")
        .to_string()
}

async fn create_payment(
    State(ledger): State<Arc<Ledger>>,
    headers: HeaderMap,
    Json(req): Json<NewPayment>,
) -> Response {
    if req.amount == 0 || req.account.trim().is_empty() {
        // A 4xx is a result too: it is stored, and a retry of the same request replays it.
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a payment needs a non-empty account and an amount above zero",
        );
    }
    ledger.charges.fetch_add(1, Ordering::SeqCst);
    // The card network: slow, and not idempotent on its own.
    tokio::time::sleep(ledger.latency).await;
    let payment = ledger.record(&tenant_of(&headers), &req);
    let location = format!("/payments/{}", payment.id);
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(payment),
    )
        .into_response()
}

async fn read_payment(
    State(ledger): State<Arc<Ledger>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match ledger.get(&id) {
        Some(p) if p.tenant == tenant_of(&headers) => Json(p).into_response(),
        _ => problem(StatusCode::NOT_FOUND, "no such payment"),
    }
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

async fn docs() -> &'static str {
    "Idempotency: POST /payments requires an Idempotency-Key header, a quoted string of 1 to 255 \
     printable ASCII characters (a UUID is best), unique per payment. Retry a request with the \
     same key and the same body: it runs once, and retries get its response again, marked \
     Idempotent-Replayed: true. Keys are scoped per merchant (x-tenant-id) and live 24 hours \
     after the payment completes; a payment still running holds its key while it runs, and for \
     up to 30 seconds after the server stops working on it. \
     Errors: 400 missing or malformed key, 409 a request with this key is still running, 422 \
     the key was used with a different request, 413 body over 16 KiB, 503 retry later.\n"
}

/// The address to serve on: the first argument, else `PAYMENTS_ADDR`, else 127.0.0.1:3000.
fn listen_addr() -> Result<SocketAddr, String> {
    let raw = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PAYMENTS_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:3000".to_string());
    raw.parse().map_err(|e| {
        format!("cannot serve on {raw:?}: {e}; give an address such as 127.0.0.1:3000")
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let ledger = Arc::new(Ledger::new(Duration::from_millis(500)));
    println!("payments on http://{addr} (a charge takes 500 ms; Ctrl-C stops)\n");
    println!("# charge 10.00 to acc-1; run it twice, or twice at once: one charge, one response");
    println!(
        "curl -i http://{addr}/payments -H 'content-type: application/json' \\\n  \
         -H '{TENANT}: acme' -H 'idempotency-key: \"order-1001\"' \\\n  \
         -d '{{\"account\":\"acc-1\",\"amount\":1000}}'\n"
    );
    println!("# the same key with another body: 422");
    println!(
        "curl -i http://{addr}/payments -H 'content-type: application/json' \\\n  \
         -H '{TENANT}: acme' -H 'idempotency-key: \"order-1001\"' \\\n  \
         -d '{{\"account\":\"acc-1\",\"amount\":9999}}'\n"
    );
    println!("# no key: 400");
    println!(
        "curl -i http://{addr}/payments -H 'content-type: application/json' \\\n  \
         -d '{{\"account\":\"acc-1\",\"amount\":1000}}'\n"
    );
    println!("# read the payment back");
    println!("curl -i http://{addr}/payments/pay_1 -H '{TENANT}: acme'\n");
    axum::serve(listener, app(ledger, store())).await?;
    Ok(())
}
