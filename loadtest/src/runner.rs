//! The three ways to apply load.
//!
//! - **Closed**: N virtual clients, each with exactly one request in flight and no pause.
//!   Concurrency is fixed; throughput is what the service delivers.
//! - **Users**: N users who pause between requests (think time, fixed or exponential).
//!   1000 users thinking for a second offer roughly 1000 req/s but only as many concurrent
//!   requests as arrive within one response time.
//! - **Open**: requests arrive at a constant rate whatever the service does. Latency is
//!   measured from each request's *scheduled* send time, so a server that stalls cannot
//!   hide its queue by slowing the load generator down (coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use rand::seq::IndexedRandom;

use crate::scenario::{Mix, Operation};
use crate::stats::{Outcome, Recorder};

/// How long a virtual client waits after a failed request before its next one. A client
/// that came back the instant it was refused would turn a fast 503 into a busy loop and
/// measure its own retry storm.
pub const FAILURE_PAUSE: Duration = Duration::from_millis(10);

/// The pause of a user between two requests.
#[derive(Debug, Clone, Copy)]
pub enum Think {
    Fixed(Duration),
    /// Exponentially distributed with this mean: arrivals from many users then look like a
    /// Poisson process, as real traffic does.
    Exponential(Duration),
}

impl Think {
    fn sample(self, rng: &mut impl Rng) -> Duration {
        match self {
            Think::Fixed(pause) => pause,
            Think::Exponential(mean) => {
                let uniform: f64 = rng.random_range(f64::EPSILON..1.0);
                mean.mul_f64(-uniform.ln())
            }
        }
    }

    pub fn describe(self) -> String {
        match self {
            Think::Fixed(pause) => format!("fixed {:.0} ms", pause.as_secs_f64() * 1000.0),
            Think::Exponential(mean) => {
                format!("exponential, mean {:.0} ms", mean.as_secs_f64() * 1000.0)
            }
        }
    }
}

pub struct StepPlan {
    /// Virtual clients, or users.
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub think: Option<Think>,
}

/// Live counters a progress display reads while the step runs.
#[derive(Default)]
pub struct Progress {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

impl Progress {
    fn note(&self, outcome: Outcome) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if outcome != Outcome::Success {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The HTTP/1.1 client of the request path.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client(connections: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build_http()
}

/// What every request of a run shares. URIs and `Authorization` values are built once: the
/// tool shares the machine with the service it measures, so its own CPU per request counts.
pub struct Workload {
    pub client: HttpClient,
    pub target: String,
    /// `Authorization: Bearer ...` of each seeded account.
    pub authorizations: Vec<HeaderValue>,
    pub mix: Mix,
    /// The client gives up on a request after this long.
    pub timeout: Duration,
    payments_uri: Uri,
    list_uri: Uri,
    /// The last hour of the caller's analytics, by minute: ClickHouse's side of the mix.
    analytics_uri: Uri,
}

impl Workload {
    pub fn new(
        client: HttpClient,
        target: &str,
        api_keys: &[String],
        mix: Mix,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let target = target.trim_end_matches('/').to_owned();
        let authorizations = api_keys
            .iter()
            .map(|key| HeaderValue::from_str(&format!("Bearer {key}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            client,
            payments_uri: format!("{target}/v1/payments").parse()?,
            list_uri: format!("{target}/v1/payments?limit=20").parse()?,
            analytics_uri: format!("{target}/v1/analytics/payments?interval=minute").parse()?,
            target,
            authorizations,
            mix,
            timeout,
        })
    }

    /// The URI of one payment, parsed once when the payment is created.
    fn payment_uri(&self, id: &str) -> Option<Uri> {
        format!("{}/{id}", self.payments_uri).parse().ok()
    }
}

/// How one request ended.
struct Sent {
    outcome: Outcome,
    has_retry_after: bool,
    /// The URI of the payment this request created, if it created one.
    created: Option<Uri>,
}

/// Sends one request of the mix. `payment` is what a read asks for.
async fn send(
    workload: &Workload,
    operation: Operation,
    authorization: &HeaderValue,
    payment: Option<&Uri>,
    amount: i64,
) -> Sent {
    let creates = operation == Operation::CreatePayment || payment.is_none();
    let builder = Request::builder().header(AUTHORIZATION, authorization.clone());
    let request = match (operation, payment) {
        (Operation::GetPayment, Some(uri)) => builder.uri(uri.clone()).body(Full::default()),
        (Operation::ListPayments, _) => {
            builder.uri(workload.list_uri.clone()).body(Full::default())
        }
        (Operation::PaymentAnalytics, _) => builder
            .uri(workload.analytics_uri.clone())
            .body(Full::default()),
        // A read with nothing to read creates something instead.
        (Operation::CreatePayment | Operation::GetPayment, _) => builder
            .method(Method::POST)
            .uri(workload.payments_uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .body(Full::new(Bytes::from(format!(
                r#"{{"amount":{amount},"currency":"EUR","description":"loadtest"}}"#
            )))),
    };
    let Ok(request) = request else {
        return Sent::failed(Outcome::ConnectionError);
    };

    let exchange = async {
        let response = workload.client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, body))
    };
    let (parts, body) = match tokio::time::timeout(workload.timeout, exchange).await {
        Ok(Ok(exchanged)) => exchanged,
        Ok(Err(_)) => return Sent::failed(Outcome::ConnectionError),
        Err(_) => return Sent::failed(Outcome::ClientTimeout),
    };

    let status = parts.status.as_u16();
    // The body is parsed only when something is needed from it: the id of a new payment,
    // or the problem type of a failure. A successful read is only drained.
    let needs_body = creates || !(200..300).contains(&status);
    let body: serde_json::Value = if needs_body {
        serde_json::from_slice(&body).unwrap_or_default()
    } else {
        serde_json::Value::Null
    };
    let outcome = Outcome::classify(status, body.get("type").and_then(|t| t.as_str()));
    let created = (creates && outcome == Outcome::Success)
        .then(|| body["id"].as_str().and_then(|id| workload.payment_uri(id)))
        .flatten();
    Sent {
        outcome,
        has_retry_after: parts.headers.contains_key(RETRY_AFTER),
        created,
    }
}

impl Sent {
    fn failed(outcome: Outcome) -> Self {
        Self {
            outcome,
            has_retry_after: false,
            created: None,
        }
    }
}

/// Runs one closed-model or users step and returns what was measured after the warm-up.
pub async fn run_step(
    workload: Arc<Workload>,
    plan: &StepPlan,
    progress: Arc<Progress>,
) -> Recorder {
    let measure_from = Instant::now() + plan.warmup;
    let stop_at = measure_from + plan.duration;
    let think = plan.think;

    let clients: Vec<_> = (0..plan.concurrency)
        .map(|client_index| {
            let workload = workload.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                virtual_client(
                    &workload,
                    client_index,
                    measure_from,
                    stop_at,
                    think,
                    &progress,
                )
                .await
            })
        })
        .collect();

    let mut merged = Recorder::default();
    for client in clients {
        if let Ok(recorder) = client.await {
            merged.merge(&recorder);
        }
    }
    merged
}

async fn virtual_client(
    workload: &Workload,
    client_index: usize,
    measure_from: Instant,
    stop_at: Instant,
    think: Option<Think>,
    progress: &Progress,
) -> Recorder {
    let mut recorder = Recorder::default();
    let authorization = &workload.authorizations[client_index % workload.authorizations.len()];
    let mut own_payments: Vec<Uri> = Vec::new();
    let mut sequence = 0i64;

    // Users start spread over one think time, not all in the same millisecond.
    if let Some(think) = think {
        let offset = think
            .sample(&mut rand::rng())
            .mul_f64(rand::rng().random_range(0.0..1.0));
        tokio::time::sleep(offset).await;
    }

    while Instant::now() < stop_at {
        let (operation, payment) = {
            let mut rng = rand::rng();
            let operation = workload.mix.pick(&mut rng);
            (operation, own_payments.choose(&mut rng))
        };
        sequence += 1;

        let sent_at = Instant::now();
        let sent = send(workload, operation, authorization, payment, 100 + sequence).await;
        let latency = sent_at.elapsed();

        if let Some(url) = sent.created
            && own_payments.len() < 100
        {
            own_payments.push(url);
        }
        if sent_at >= measure_from {
            recorder.record(sent.outcome, latency, sent.has_retry_after);
            progress.note(sent.outcome);
        }

        let pause = match think {
            Some(think) => think.sample(&mut rand::rng()),
            None if sent.outcome != Outcome::Success => FAILURE_PAUSE,
            None => Duration::ZERO,
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause.min(stop_at.saturating_duration_since(Instant::now()))).await;
        }
    }
    recorder
}

/// Runs one open-model step: `rate` requests per second, each on a schedule fixed in
/// advance. At most `max_in_flight` requests are outstanding; a request that would exceed
/// it is not sent and counts as a client timeout, because a real arrival would have found
/// the service that far behind.
pub async fn run_open_step(
    workload: Arc<Workload>,
    rate: usize,
    warmup: Duration,
    duration: Duration,
    max_in_flight: usize,
    progress: Arc<Progress>,
) -> Recorder {
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let in_flight = Arc::new(AtomicU64::new(0));
    // Payments created so far, with the account that owns each: a read must be sent as
    // its owner, or it is (rightly) a 404.
    let created: Arc<Mutex<Vec<(usize, Uri)>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();

    for index in 0u64.. {
        let scheduled = started + period.mul_f64(index as f64);
        if scheduled >= stop_at {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let measured = scheduled >= measure_from;

        if in_flight.load(Ordering::Relaxed) >= max_in_flight as u64 {
            if measured {
                recorder.lock().expect("recorder lock").record(
                    Outcome::ClientTimeout,
                    scheduled.elapsed(),
                    false,
                );
                progress.note(Outcome::ClientTimeout);
            }
            continue;
        }

        let (workload, recorder, in_flight, created, progress) = (
            workload.clone(),
            recorder.clone(),
            in_flight.clone(),
            created.clone(),
            progress.clone(),
        );
        in_flight.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let (operation, owned) = {
                let mut rng = rand::rng();
                let created = created.lock().expect("created lock");
                (
                    workload.mix.pick(&mut rng),
                    created.choose(&mut rng).cloned(),
                )
            };
            let accounts = workload.authorizations.len();
            let (account, payment) = match owned {
                Some((owner, uri)) if operation == Operation::GetPayment => (owner, Some(uri)),
                _ => (index as usize % accounts, None),
            };
            let authorization = &workload.authorizations[account];
            let sent = send(
                &workload,
                operation,
                authorization,
                payment.as_ref(),
                100 + index as i64,
            )
            .await;
            // Latency from the scheduled send time, not from when the request went out.
            let latency = scheduled.elapsed();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Some(uri) = sent.created {
                let mut created = created.lock().expect("created lock");
                if created.len() < 10_000 {
                    created.push((account, uri));
                }
            }
            if measured {
                recorder.lock().expect("recorder lock").record(
                    sent.outcome,
                    latency,
                    sent.has_retry_after,
                );
                progress.note(sent.outcome);
            }
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}

    Arc::try_unwrap(recorder)
        .map(|m| m.into_inner().expect("recorder lock"))
        .unwrap_or_else(|shared| shared.lock().expect("recorder lock").clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    async fn fast_server() -> String {
        let app = axum::Router::new().route("/v1/payments", axum::routing::get(|| async { "{}" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// A server that handles one request at a time, 20 ms each: at most 50 req/s.
    async fn one_at_a_time_server() -> String {
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let app = axum::Router::new().route(
            "/v1/payments",
            axum::routing::get(move || {
                let lock = lock.clone();
                async move {
                    let _serial = lock.lock().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn workload(target: &str) -> Arc<Workload> {
        let keys = ["tsk_test".to_owned()];
        let mix = "list=1".parse().unwrap();
        Arc::new(
            Workload::new(http_client(64), target, &keys, mix, Duration::from_secs(10)).unwrap(),
        )
    }

    #[tokio::test]
    async fn open_model_measures_from_the_schedule_when_the_generator_falls_behind() {
        // A fast server, and a load generator whose only thread is blocked for the first
        // 400 ms: the requests scheduled in that time go out late. Measured from when they
        // were sent they would look fast; measured from their schedule, the 40 or so that
        // were held back show up to 400 ms of waiting, as a real arrival would have seen.
        let target = fast_server().await;
        tokio::spawn(async {
            std::thread::sleep(Duration::from_millis(400));
        });
        let recorder = run_open_step(
            workload(&target),
            100,
            Duration::ZERO,
            Duration::from_secs(1),
            1000,
            Arc::default(),
        )
        .await;

        assert_eq!(recorder.total(), 100);
        let held_back = recorder.success.count_between(100_000, 1_000_000);
        assert!(
            (25..=45).contains(&held_back),
            "{held_back} requests waited 100 ms or more"
        );
        let on_time = recorder.success.count_between(1, 50_000);
        assert!(on_time >= 50, "{on_time} requests were served on time");
    }

    #[tokio::test]
    async fn closed_model_with_one_client_sees_only_the_service_time() {
        let target = one_at_a_time_server().await;
        let plan = StepPlan {
            concurrency: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(500),
            think: None,
        };
        let recorder = run_step(workload(&target), &plan, Arc::default()).await;

        let latency = Percentiles::of(&recorder.success);
        assert!(recorder.total() >= 15, "{}", recorder.total());
        assert!(latency.p99_ms < 100.0, "{latency:?}");
    }

    #[test]
    fn exponential_think_time_has_the_requested_mean() {
        let think = Think::Exponential(Duration::from_millis(1000));
        let mut rng = rand::rng();
        let total: f64 = (0..20_000)
            .map(|_| think.sample(&mut rng).as_secs_f64())
            .sum();
        let mean = total / 20_000.0;
        assert!((0.95..1.05).contains(&mean), "{mean}");
    }
}
