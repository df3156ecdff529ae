//! `GET /metrics`: the instance's counters in the Prometheus text format.
//!
//! A dozen counters that already live in atomics; the telemetry work replaces this with
//! OpenTelemetry metrics under the same names.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::IntoResponse;
use platform::prometheus::MetricsText;

use crate::app::AppState;

pub async fn render(State(app): State<AppState>) -> impl IntoResponse {
    let mut text = MetricsText::new();
    let mut counter = |name: &str, help: &str, value: u64| text.counter(name, help, value);

    let cache = &app.cache.stats;
    counter(
        "payment_cache_hits_total",
        "Payment reads served from Redis.",
        cache.hits.load(Ordering::Relaxed),
    );
    counter(
        "payment_cache_misses_total",
        "Payment reads not found in Redis.",
        cache.misses.load(Ordering::Relaxed),
    );
    counter(
        "payment_cache_fills_total",
        "Payments written to the cache.",
        cache.fills.load(Ordering::Relaxed),
    );
    counter(
        "payment_cache_stale_fills_dropped_total",
        "Cache writes dropped because the cache held a newer version.",
        cache.stale_fills_dropped.load(Ordering::Relaxed),
    );
    counter(
        "payment_cache_bypassed_total",
        "Payment reads that skipped the cache because Redis was unavailable.",
        cache.bypassed.load(Ordering::Relaxed),
    );
    counter(
        "payment_cache_errors_total",
        "Cache operations that failed.",
        cache.errors.load(Ordering::Relaxed),
    );

    let limiter = &app.limiter.stats;
    counter(
        "rate_limit_allowed_total",
        "Requests within their key's limit.",
        limiter.allowed_total.load(Ordering::Relaxed),
    );
    counter(
        "rate_limit_limited_total",
        "Requests refused with 429.",
        limiter.limited_total.load(Ordering::Relaxed),
    );
    counter(
        "rate_limit_local_decisions_total",
        "Rate-limit decisions made by this process alone while Redis was unavailable.",
        limiter.local_decisions_total.load(Ordering::Relaxed),
    );

    if let Some(redis) = &app.redis {
        let breaker = redis.breaker_stats();
        counter(
            "redis_breaker_opened_total",
            "Times the Redis circuit breaker opened.",
            breaker.opened_total.load(Ordering::Relaxed),
        );
        counter(
            "redis_calls_bypassed_total",
            "Redis calls refused by the open breaker.",
            breaker.calls_bypassed_total.load(Ordering::Relaxed),
        );
        counter(
            "redis_calls_failed_total",
            "Redis calls that failed or timed out.",
            breaker.calls_failed_total.load(Ordering::Relaxed),
        );
    }

    let db = app.db.stats();
    counter("db_sessions_total", "Database sessions run.", db.sessions);
    counter(
        "db_sessions_over_hold_warn_total",
        "Sessions held longer than DB_SESSION_HOLD_WARN_MS.",
        db.sessions_over_hold_warn,
    );
    counter(
        "db_pool_timeouts_total",
        "Session acquisitions that timed out.",
        db.pool_timeouts,
    );
    counter(
        "db_reads_replica_total",
        "Read sessions served by a replica.",
        db.reads_on_replica,
    );
    counter(
        "db_reads_primary_total",
        "Read sessions served by the primary.",
        db.reads_on_primary,
    );

    let redis_up = app.redis.as_ref().is_some_and(|r| r.is_available());
    text.gauge(
        "redis_available",
        "Whether this instance currently uses Redis (breaker closed).",
        u8::from(redis_up),
    );
    text
}
