//! The worker's admin port: `/livez`, `/readyz` with the pipeline's lag, and `/metrics`
//! (OpenTelemetry metrics in the Prometheus format).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use opentelemetry::metrics::Meter;
use platform::redis::Redis;
use serde_json::json;

use crate::consumer::ConsumerStats;
use crate::monitor::{Lag, LagMonitor};
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
        .route("/metrics", get(platform::telemetry::metrics_page))
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

/// Registers the worker's own instruments: each one reads the counters and the last lag
/// sample at collection time, for `/metrics` and the OTLP exporter alike.
pub fn register_metrics(state: &AdminState) {
    let meter = platform::telemetry::meter();
    let (relay, consumer) = (&state.relay, &state.consumer);
    let relay_counters: [(&'static str, &'static str, &'static str, Field<RelayStats>); 4] = [
        (
            "tierstack.outbox.published",
            "{event}",
            "Outbox events published to the stream.",
            |r| &r.events_published_total,
        ),
        (
            "tierstack.outbox.relay.batches",
            "{batch}",
            "Relay batches published.",
            |r| &r.batches_total,
        ),
        (
            "tierstack.outbox.relay.failures",
            "{batch}",
            "Relay batches that failed (database or Redis).",
            |r| &r.failures_total,
        ),
        (
            "tierstack.outbox.pruned",
            "{row}",
            "Published outbox rows deleted after the retention.",
            |r| &r.rows_pruned_total,
        ),
    ];
    for (name, unit, description, field) in relay_counters {
        observe_counter(&meter, relay, (name, unit, description), field);
    }
    let consumer_counters: [(
        &'static str,
        &'static str,
        &'static str,
        Field<ConsumerStats>,
    ); 4] = [
        (
            "tierstack.clickhouse.rows.inserted",
            "{row}",
            "Rows ClickHouse accepted.",
            |c| &c.events_inserted_total,
        ),
        (
            "tierstack.clickhouse.insert.failures",
            "{insert}",
            "INSERTs that failed.",
            |c| &c.insert_failures_total,
        ),
        (
            "tierstack.stream.dead_lettered",
            "{event}",
            "Events moved to the dead-letter stream.",
            |c| &c.dead_lettered_total,
        ),
        (
            "tierstack.stream.claimed",
            "{entry}",
            "Entries claimed from consumers that stopped acknowledging.",
            |c| &c.claimed_total,
        ),
    ];
    for (name, unit, description, field) in consumer_counters {
        observe_counter(&meter, consumer, (name, unit, description), field);
    }

    // Lag gauges are not observed, rather than observed as zero, while their source does
    // not answer: a missing series is honest, a zero backlog would not be.
    type Pick = fn(&Lag) -> Option<f64>;
    let gauges: [(&'static str, &'static str, &'static str, Pick); 6] = [
        (
            "tierstack.outbox.backlog",
            "{event}",
            "Outbox rows not yet published.",
            |l| l.outbox_backlog.map(|v| v as f64),
        ),
        (
            "tierstack.outbox.oldest_age",
            "s",
            "Age of the oldest unpublished outbox row.",
            |l| l.oldest_unpublished_age_seconds,
        ),
        (
            "tierstack.stream.length",
            "{entry}",
            "Entries in the payment event stream.",
            |l| l.stream_length.map(|v| v as f64),
        ),
        (
            "tierstack.stream.pending",
            "{entry}",
            "Entries delivered and not yet acknowledged.",
            |l| l.stream_pending.map(|v| v as f64),
        ),
        (
            "tierstack.stream.dead_letters",
            "{entry}",
            "Entries in the dead-letter stream.",
            |l| l.dead_letters.map(|v| v as f64),
        ),
        (
            "tierstack.clickhouse.up",
            "",
            "1 while ClickHouse accepts inserts.",
            |l| Some(f64::from(u8::from(l.clickhouse_up))),
        ),
    ];
    for (name, unit, description, pick) in gauges {
        let lag = state.lag.clone();
        meter
            .f64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer| {
                if let Some(value) = pick(&lag.snapshot()) {
                    observer.observe(value, &[]);
                }
            })
            .build();
    }
}

type Field<T> = fn(&T) -> &AtomicU64;

/// A monotonic counter read from one atomic field of `stats` at each collection.
fn observe_counter<T: Send + Sync + 'static>(
    meter: &Meter,
    stats: &Arc<T>,
    (name, unit, description): (&'static str, &'static str, &'static str),
    field: Field<T>,
) {
    let stats = stats.clone();
    meter
        .u64_observable_counter(name)
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |observer| observer.observe(field(&stats).load(Ordering::Relaxed), &[]))
        .build();
}
