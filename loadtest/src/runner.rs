//! The closed model: N virtual clients, each with exactly one request in flight and no
//! pause between requests. Concurrency is what is fixed; throughput is what is measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;

use crate::scenario::{Mix, Operation};
use crate::stats::{Outcome, Recorder};

/// How long a virtual client waits after a failed request before its next one.
pub const FAILURE_PAUSE: Duration = Duration::from_millis(10);

pub struct StepPlan {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Live counters a progress display reads while the step runs.
#[derive(Default)]
pub struct Progress {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Workload {
    pub client: reqwest::Client,
    pub target: String,
    pub api_keys: Vec<String>,
    pub mix: Mix,
}

/// Runs one step and returns what was measured after the warm-up.
pub async fn run_step(
    workload: Arc<Workload>,
    plan: &StepPlan,
    progress: Arc<Progress>,
) -> Recorder {
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let stop_at = measure_from + plan.duration;

    let clients: Vec<_> = (0..plan.concurrency)
        .map(|client_index| {
            let workload = workload.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                virtual_client(&workload, client_index, measure_from, stop_at, &progress).await
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
    progress: &Progress,
) -> Recorder {
    let mut recorder = Recorder::default();
    let api_key = &workload.api_keys[client_index % workload.api_keys.len()];
    let mut own_payments: Vec<String> = Vec::new();
    let mut sequence = 0u64;

    while Instant::now() < stop_at {
        let operation = {
            let mut rng = rand::rng();
            match workload.mix.pick(&mut rng) {
                // A read needs something to read: the client's own first payment comes first.
                Operation::GetPayment if own_payments.is_empty() => Operation::CreatePayment,
                other => other,
            }
        };
        sequence += 1;

        let request = match operation {
            Operation::CreatePayment => workload
                .client
                .post(format!("{}/v1/payments", workload.target))
                .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                .json(&serde_json::json!({
                    "amount": 100 + (sequence % 10_000) as i64,
                    "currency": "EUR",
                    "description": "loadtest",
                })),
            Operation::GetPayment => {
                let id = own_payments
                    .choose(&mut rand::rng())
                    .expect("checked non-empty above");
                workload
                    .client
                    .get(format!("{}/v1/payments/{id}", workload.target))
            }
            Operation::ListPayments => workload
                .client
                .get(format!("{}/v1/payments?limit=20", workload.target)),
        };

        let sent_at = Instant::now();
        let result = request.bearer_auth(api_key).send().await;
        let (outcome, has_retry_after, created_id) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let has_retry_after = response.headers().contains_key("retry-after");
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let problem_type = body.get("type").and_then(|t| t.as_str());
                let outcome = Outcome::classify(status, problem_type);
                let created_id = (operation == Operation::CreatePayment
                    && outcome == Outcome::Success)
                    .then(|| body["id"].as_str().map(str::to_owned))
                    .flatten();
                (outcome, has_retry_after, created_id)
            }
            Err(error) if error.is_timeout() => (Outcome::ClientTimeout, false, None),
            Err(_) => (Outcome::ConnectionError, false, None),
        };
        let latency = sent_at.elapsed();

        if let Some(id) = created_id
            && own_payments.len() < 100
        {
            own_payments.push(id);
        }
        if sent_at >= measure_from {
            recorder.record(outcome, latency, has_retry_after);
            progress.completed.fetch_add(1, Ordering::Relaxed);
            if outcome != Outcome::Success {
                progress.failed.fetch_add(1, Ordering::Relaxed);
            }
        }

        // A client that came back the instant it was refused would turn a fast 503 into a
        // busy loop and measure its own retry storm; a short pause keeps it a client.
        if outcome != Outcome::Success {
            tokio::time::sleep(FAILURE_PAUSE).await;
        }
    }
    recorder
}
