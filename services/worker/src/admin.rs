//! The worker's admin port: `/livez`, `/readyz` with the pipeline's lag, and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use platform::prometheus::MetricsText;
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

async fn metrics(State(state): State<AdminState>) -> MetricsText {
    let (relay, consumer) = (&state.relay, &state.consumer);
    let counters: [(&str, &str, &AtomicU64); 9] = [
        (
            "outbox_events_published_total",
            "Outbox events published to the stream.",
            &relay.events_published_total,
        ),
        (
            "outbox_relay_batches_total",
            "Relay batches published.",
            &relay.batches_total,
        ),
        (
            "outbox_relay_failures_total",
            "Relay batches that failed (database or Redis).",
            &relay.failures_total,
        ),
        (
            "outbox_rows_pruned_total",
            "Published outbox rows deleted after the retention.",
            &relay.rows_pruned_total,
        ),
        (
            "clickhouse_events_inserted_total",
            "Rows ClickHouse accepted.",
            &consumer.events_inserted_total,
        ),
        (
            "clickhouse_inserts_total",
            "INSERTs ClickHouse accepted.",
            &consumer.inserts_total,
        ),
        (
            "clickhouse_insert_failures_total",
            "INSERTs that failed.",
            &consumer.insert_failures_total,
        ),
        (
            "stream_dead_lettered_total",
            "Events moved to the dead-letter stream.",
            &consumer.dead_lettered_total,
        ),
        (
            "stream_claimed_total",
            "Entries claimed from consumers that stopped acknowledging.",
            &consumer.claimed_total,
        ),
    ];
    let mut text = MetricsText::new();
    for (name, help, value) in counters {
        text.counter(name, help, value.load(Ordering::Relaxed));
    }
    text.counter(
        "clickhouse_insert_duration_seconds_total",
        "Time ClickHouse took to accept INSERTs.",
        consumer.insert_seconds_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
    );

    text.gauge(
        "clickhouse_last_insert_rows",
        "Rows in the last accepted INSERT.",
        consumer.last_insert_rows.load(Ordering::Relaxed),
    );

    let lag = state.lag.snapshot();
    text.gauge(
        "clickhouse_up",
        "1 while ClickHouse accepts inserts.",
        u8::from(lag.clickhouse_up),
    );
    text.gauge(
        "redis_breaker_open",
        "1 while the Redis circuit breaker is open.",
        u8::from(!state.redis.is_available()),
    );
    // Lag gauges are omitted, not zero, when their source did not answer.
    let gauges: [(&str, &str, Option<f64>); 5] = [
        (
            "outbox_backlog",
            "Outbox rows not yet published.",
            lag.outbox_backlog.map(|v| v as f64),
        ),
        (
            "outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row.",
            lag.oldest_unpublished_age_seconds,
        ),
        (
            "stream_length",
            "Entries in the payment event stream.",
            lag.stream_length.map(|v| v as f64),
        ),
        (
            "stream_pending",
            "Entries delivered and not yet acknowledged.",
            lag.stream_pending.map(|v| v as f64),
        ),
        (
            "stream_dead_letters",
            "Entries in the dead-letter stream.",
            lag.dead_letters.map(|v| v as f64),
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(value) = value {
            text.gauge(name, help, value);
        }
    }
    text
}
