//! A stand-in for an external payment processor.
//!
//! It gives load and fault tests a realistic slow dependency: latency drawn from a
//! log-normal distribution (a median with a long tail), a rate of transient 5xx failures, a
//! rate of declines, and idempotency on the `Idempotency-Key` header like a real processor.
//! Every charge it makes can be read back, so a test can prove there was no double charge.
//!
//! Behaviour can be changed at run time (`PUT /admin/behaviour`), so a test can slow the
//! processor down without restarting anything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use rand_distr::{Distribution, LogNormal};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How the simulated processor behaves. Every field has an environment variable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Behaviour {
    /// `PSP_SIM_LATENCY_MEDIAN_MS` (default 50): median response time.
    pub latency_median_ms: f64,
    /// `PSP_SIM_LATENCY_SIGMA` (default 0.5): log-normal shape; 0 makes every call take the
    /// median, 0.5 puts p99 near 3.2 times the median.
    pub latency_sigma: f64,
    /// `PSP_SIM_LATENCY_MAX_MS` (default 5000): the tail is cut here.
    pub latency_max_ms: f64,
    /// `PSP_SIM_FAILURE_RATE` (default 0): share of calls answered 503 without charging.
    pub failure_rate: f64,
    /// `PSP_SIM_DECLINE_RATE` (default 0): share of charges declined (recorded, 402).
    pub decline_rate: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency_median_ms: 50.0,
            latency_sigma: 0.5,
            latency_max_ms: 5000.0,
            failure_rate: 0.0,
            decline_rate: 0.0,
        }
    }
}

impl Behaviour {
    pub fn from_env() -> anyhow::Result<Self> {
        use platform::config::var_or;
        let defaults = Self::default();
        let behaviour = Self {
            latency_median_ms: var_or("PSP_SIM_LATENCY_MEDIAN_MS", defaults.latency_median_ms)?,
            latency_sigma: var_or("PSP_SIM_LATENCY_SIGMA", defaults.latency_sigma)?,
            latency_max_ms: var_or("PSP_SIM_LATENCY_MAX_MS", defaults.latency_max_ms)?,
            failure_rate: var_or("PSP_SIM_FAILURE_RATE", defaults.failure_rate)?,
            decline_rate: var_or("PSP_SIM_DECLINE_RATE", defaults.decline_rate)?,
        };
        behaviour.check().map_err(anyhow::Error::msg)?;
        Ok(behaviour)
    }

    /// A fixed latency with no tail and no failures: what tests that need a predictable
    /// processor use.
    pub fn fixed(latency: Duration) -> Self {
        Self {
            latency_median_ms: latency.as_secs_f64() * 1000.0,
            latency_sigma: 0.0,
            latency_max_ms: latency.as_secs_f64() * 1000.0,
            ..Self::default()
        }
    }

    fn check(&self) -> Result<(), String> {
        let rate_ok = |r: f64| (0.0..=1.0).contains(&r);
        if !(self.latency_median_ms >= 0.0 && self.latency_max_ms >= 0.0) {
            return Err("latencies must be zero or positive".into());
        }
        if !(self.latency_sigma >= 0.0 && self.latency_sigma <= 3.0) {
            return Err("latency_sigma must be between 0 and 3".into());
        }
        if !rate_ok(self.failure_rate) || !rate_ok(self.decline_rate) {
            return Err("failure_rate and decline_rate must be between 0 and 1".into());
        }
        Ok(())
    }

    fn sample_latency(&self, rng: &mut impl Rng) -> Duration {
        let median = self.latency_median_ms.max(0.0);
        let ms = if self.latency_sigma == 0.0 || median == 0.0 {
            median
        } else {
            match LogNormal::new(median.ln(), self.latency_sigma) {
                Ok(distribution) => distribution.sample(rng),
                Err(_) => median,
            }
        };
        Duration::from_secs_f64(ms.min(self.latency_max_ms).max(0.0) / 1000.0)
    }
}

/// A request to charge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChargeRequest {
    pub amount: i64,
    pub currency: String,
    /// The merchant's own reference (the payment id).
    pub reference: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Succeeded,
    Declined,
}

/// A charge the processor made. Declines are charges too: they were decided and recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Charge {
    pub id: String,
    pub idempotency_key: String,
    pub status: ChargeStatus,
    pub amount: i64,
    pub currency: String,
    pub reference: String,
}

/// What `GET /v1/charges/summary` returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// Distinct charges made.
    pub charges: u64,
    /// Every `POST /v1/charges`, replays and failures included.
    pub attempts: u64,
    /// Calls answered with an idempotent replay of an earlier charge.
    pub replays: u64,
    /// Calls answered 503 without charging.
    pub transient_failures: u64,
}

/// Limitation: charges are kept in memory, so a restart forgets them. That is what a test
/// double needs; the bound keeps a long load test from growing it without limit.
const MAX_CHARGES_KEPT: usize = 2_000_000;

#[derive(Default)]
struct Ledger {
    by_key: HashMap<String, Charge>,
    summary: Summary,
}

#[derive(Clone)]
pub struct SimState {
    behaviour: Arc<Mutex<Behaviour>>,
    ledger: Arc<Mutex<Ledger>>,
}

impl SimState {
    pub fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour: Arc::new(Mutex::new(behaviour)),
            ledger: Arc::new(Mutex::new(Ledger::default())),
        }
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("behaviour lock") = behaviour;
    }

    pub fn summary(&self) -> Summary {
        self.ledger.lock().expect("ledger lock").summary.clone()
    }

    pub fn charges_for_reference(&self, reference: &str) -> Vec<Charge> {
        let ledger = self.ledger.lock().expect("ledger lock");
        ledger
            .by_key
            .values()
            .filter(|c| c.reference == reference)
            .cloned()
            .collect()
    }
}

pub fn router(state: SimState) -> Router {
    Router::new()
        .route("/v1/charges", post(create_charge).get(list_charges))
        .route("/v1/charges/summary", get(summary))
        .route("/admin/behaviour", get(get_behaviour).put(put_behaviour))
        .route("/livez", get(|| async { "ok" }))
        .route("/metrics", get(platform::telemetry::metrics_page))
        // The processor's own server span, a child of the api's call, and its request
        // metrics.
        .layer(axum::middleware::from_fn(platform::telemetry::http_server))
        .with_state(state)
}

/// A running simulator, for tests that start one in process.
pub struct RunningSim {
    pub addr: SocketAddr,
    pub state: SimState,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSim {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a simulator on an ephemeral loopback port.
pub async fn spawn(behaviour: Behaviour) -> std::io::Result<RunningSim> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = SimState::new(behaviour);
    let app = router(state.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(RunningSim { addr, state, task })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn create_charge(
    State(state): State<SimState>,
    headers: HeaderMap,
    body: Result<Json<ChargeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key header is required",
        );
    };
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    if request.amount <= 0 {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "amount must be positive");
    }

    let behaviour = state.behaviour.lock().expect("behaviour lock").clone();
    let (latency, transient_failure, declined) = {
        let mut rng = rand::rng();
        (
            behaviour.sample_latency(&mut rng),
            rng.random_bool(behaviour.failure_rate),
            rng.random_bool(behaviour.decline_rate),
        )
    };

    // The outcome is decided and recorded on arrival, under the lock, so a concurrent
    // duplicate finds it and is answered with the same charge instead of making another.
    let decision = {
        let mut ledger = state.ledger.lock().expect("ledger lock");
        ledger.summary.attempts += 1;
        if let Some(existing) = ledger.by_key.get(&key).cloned() {
            if existing.amount != request.amount || existing.currency != request.currency {
                Decision::KeyReused
            } else {
                ledger.summary.replays += 1;
                Decision::Replay(existing)
            }
        } else if transient_failure {
            ledger.summary.transient_failures += 1;
            Decision::TransientFailure
        } else {
            let charge = Charge {
                id: format!("ch_{}", Uuid::new_v4().simple()),
                idempotency_key: key.clone(),
                status: if declined {
                    ChargeStatus::Declined
                } else {
                    ChargeStatus::Succeeded
                },
                amount: request.amount,
                currency: request.currency.clone(),
                reference: request.reference.clone(),
            };
            if ledger.by_key.len() < MAX_CHARGES_KEPT {
                ledger.by_key.insert(key.clone(), charge.clone());
            }
            ledger.summary.charges += 1;
            Decision::New(charge)
        }
    };

    tokio::time::sleep(latency).await;

    match decision {
        Decision::New(charge) | Decision::Replay(charge)
            if charge.status == ChargeStatus::Declined =>
        {
            (StatusCode::PAYMENT_REQUIRED, Json(charge)).into_response()
        }
        Decision::New(charge) => (StatusCode::CREATED, Json(charge)).into_response(),
        Decision::Replay(charge) => (StatusCode::OK, Json(charge)).into_response(),
        Decision::TransientFailure => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "simulated transient failure",
        ),
        Decision::KeyReused => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency-Key reused with a different amount or currency",
        ),
    }
}

/// What the simulator decided for one call, before it sleeps for the latency.
enum Decision {
    New(Charge),
    Replay(Charge),
    TransientFailure,
    KeyReused,
}

#[derive(Deserialize)]
struct ChargeFilter {
    reference: Option<String>,
    idempotency_key: Option<String>,
}

async fn list_charges(
    State(state): State<SimState>,
    Query(filter): Query<ChargeFilter>,
) -> Response {
    if filter.reference.is_none() && filter.idempotency_key.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "filter by reference or idempotency_key; use /v1/charges/summary for totals",
        );
    }
    let ledger = state.ledger.lock().expect("ledger lock");
    let data: Vec<Charge> = ledger
        .by_key
        .values()
        .filter(|c| filter.reference.as_ref().is_none_or(|r| &c.reference == r))
        .filter(|c| {
            filter
                .idempotency_key
                .as_ref()
                .is_none_or(|k| &c.idempotency_key == k)
        })
        .cloned()
        .collect();
    Json(serde_json::json!({ "data": data })).into_response()
}

async fn summary(State(state): State<SimState>) -> Json<Summary> {
    Json(state.summary())
}

async fn get_behaviour(State(state): State<SimState>) -> Json<Behaviour> {
    Json(state.behaviour.lock().expect("behaviour lock").clone())
}

async fn put_behaviour(
    State(state): State<SimState>,
    Json(behaviour): Json<Behaviour>,
) -> Response {
    if let Err(message) = behaviour.check() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, &message);
    }
    tracing::info!(?behaviour, "behaviour changed");
    state.set_behaviour(behaviour.clone());
    Json(behaviour).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_normal_latency_has_the_configured_median_and_a_tail() {
        let behaviour = Behaviour::default();
        let mut rng = rand::rng();
        let mut samples: Vec<f64> = (0..20_000)
            .map(|_| behaviour.sample_latency(&mut rng).as_secs_f64() * 1000.0)
            .collect();
        samples.sort_by(f64::total_cmp);

        let median = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        assert!((45.0..55.0).contains(&median), "median {median}");
        assert!(
            p99 > 2.5 * median,
            "p99 {p99} should be well above the median"
        );
    }

    #[test]
    fn fixed_behaviour_has_no_tail() {
        let behaviour = Behaviour::fixed(Duration::from_millis(20));
        let mut rng = rand::rng();
        assert_eq!(
            behaviour.sample_latency(&mut rng),
            Duration::from_millis(20)
        );
    }

    #[tokio::test]
    async fn concurrent_duplicates_make_one_charge() {
        let sim = spawn(Behaviour::fixed(Duration::from_millis(30)))
            .await
            .unwrap();
        let client = reqwest_free_post(sim.addr);
        let calls: Vec<_> = (0..20).map(|_| tokio::spawn(client.clone()())).collect();
        for call in calls {
            assert!(call.await.unwrap() < 300);
        }
        let summary = sim.state.summary();
        assert_eq!(summary.charges, 1);
        assert_eq!(summary.attempts, 20);
        assert_eq!(sim.state.charges_for_reference("pay_1").len(), 1);
    }

    /// A tiny HTTP/1.1 POST over a raw socket: the simulator's own tests need no client.
    fn reqwest_free_post(
        addr: SocketAddr,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>> + Clone {
        move || {
            Box::pin(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let body = r#"{"amount":100,"currency":"EUR","reference":"pay_1"}"#;
                let request = format!(
                    "POST /v1/charges HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k1\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).await.unwrap();
                response[9..12].parse().unwrap()
            })
        }
    }
}
