//! The worker's admin port: `/livez`, `/readyz` with the pipeline's lag, and `/metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use platform::redis::Redis;
use serde_json::json;

use crate::consumer::ConsumerStats;
use crate::monitor::LagMonitor;
use crate::relay::RelayStats;

#[derive(Clone)]
pub struct AdminState {
    pub lag: LagMonitor,
    pub relay: Arc<RelayStats>,
    pub consumer: Arc<ConsumerStats>,
    pub redis: Redis,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready when the worker can move events out of PostgreSQL: the database and Redis answer.
/// ClickHouse being down is reported but does not make the worker unready; events wait in
/// the stream and restarting the worker would not help.
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let lag = state.lag.snapshot();
    let ready = lag.postgres_up && lag.redis_up;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not ready" },
            "pipeline": lag,
        })),
    )
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut out = String::new();
    let mut metric = |kind: &str, name: &str, help: &str, value: f64| {
        write_metric(&mut out, kind, name, help, value);
    };
    let relay = &state.relay;
    let consumer = &state.consumer;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    metric(
        "counter",
        "outbox_events_published_total",
        "Outbox events published to the stream.",
        load(&relay.events_published_total),
    );
    metric(
        "counter",
        "outbox_relay_batches_total",
        "Relay batches published.",
        load(&relay.batches_total),
    );
    metric(
        "counter",
        "outbox_relay_failures_total",
        "Relay batches that failed (database or Redis).",
        load(&relay.failures_total),
    );
    metric(
        "counter",
        "outbox_rows_pruned_total",
        "Published outbox rows deleted after the retention.",
        load(&relay.rows_pruned_total),
    );
    metric(
        "counter",
        "clickhouse_events_inserted_total",
        "Rows ClickHouse accepted.",
        load(&consumer.events_inserted_total),
    );
    metric(
        "counter",
        "clickhouse_inserts_total",
        "INSERTs ClickHouse accepted.",
        load(&consumer.inserts_total),
    );
    metric(
        "counter",
        "clickhouse_insert_failures_total",
        "INSERTs that failed.",
        load(&consumer.insert_failures_total),
    );
    metric(
        "counter",
        "clickhouse_insert_duration_seconds_total",
        "Time ClickHouse took to accept INSERTs.",
        load(&consumer.insert_seconds_sum_us) / 1e6,
    );
    metric(
        "gauge",
        "clickhouse_last_insert_rows",
        "Rows in the last accepted INSERT.",
        load(&consumer.last_insert_rows),
    );
    metric(
        "counter",
        "stream_dead_lettered_total",
        "Events moved to the dead-letter stream.",
        load(&consumer.dead_lettered_total),
    );
    metric(
        "counter",
        "stream_claimed_total",
        "Entries claimed from consumers that stopped acknowledging.",
        load(&consumer.claimed_total),
    );
    let lag = state.lag.snapshot();
    let up = |b: bool| if b { 1.0 } else { 0.0 };
    metric(
        "gauge",
        "clickhouse_up",
        "1 while ClickHouse accepts inserts.",
        up(lag.clickhouse_up),
    );
    metric(
        "gauge",
        "redis_breaker_open",
        "1 while the Redis circuit breaker is open.",
        up(!state.redis.is_available()),
    );
    // Lag gauges are omitted, not zero, when their source did not answer.
    let mut gauge = |name: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            metric("gauge", name, help, value);
        }
    };
    gauge(
        "outbox_backlog",
        "Outbox rows not yet published.",
        lag.outbox_backlog.map(|v| v as f64),
    );
    gauge(
        "outbox_oldest_unpublished_age_seconds",
        "Age of the oldest unpublished outbox row.",
        lag.oldest_unpublished_age_seconds,
    );
    gauge(
        "stream_length",
        "Entries in the payment event stream.",
        lag.stream_length.map(|v| v as f64),
    );
    gauge(
        "stream_pending",
        "Entries delivered and not yet acknowledged.",
        lag.stream_pending.map(|v| v as f64),
    );
    gauge(
        "stream_dead_letters",
        "Entries in the dead-letter stream.",
        lag.dead_letters.map(|v| v as f64),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn write_metric(out: &mut String, kind: &str, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}
