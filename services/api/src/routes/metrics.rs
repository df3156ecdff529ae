//! The API's own instruments, beside the HTTP, database-pool and circuit-breaker metrics
//! that `platform` records: cache outcomes and rate-limit decisions, read from the counters
//! the cache and the limiter keep, at each collection. `/metrics` (Prometheus) and the OTLP
//! exporter both see them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;

use crate::app::AppState;
use crate::cache::CacheStats;
use crate::ratelimit::LimiterStats;

type Series<T> = (&'static str, &'static str, fn(&T) -> &AtomicU64);

/// Registers the instruments; call once per process, after telemetry is installed.
pub fn register(app: &AppState) {
    let meter = platform::telemetry::meter();

    let cache = app.cache.clone();
    let lookups: [Series<CacheStats>; 3] = [
        ("tierstack.cache.result", "hit", |s| &s.hits),
        ("tierstack.cache.result", "miss", |s| &s.misses),
        ("tierstack.cache.result", "bypass", |s| &s.bypassed),
    ];
    meter
        .u64_observable_counter("tierstack.cache.lookups")
        .with_unit("{lookup}")
        .with_description(
            "Payment reads by cache outcome: hit (served from Redis), miss (read from \
             PostgreSQL), bypass (Redis unavailable).",
        )
        .with_callback(move |observer| observe(observer, &cache, |c| &c.stats, &lookups))
        .build();

    let cache = app.cache.clone();
    let fills: [Series<CacheStats>; 3] = [
        ("tierstack.cache.fill.outcome", "stored", |s| &s.fills),
        ("tierstack.cache.fill.outcome", "stale_dropped", |s| {
            &s.stale_fills_dropped
        }),
        ("tierstack.cache.fill.outcome", "error", |s| &s.errors),
    ];
    meter
        .u64_observable_counter("tierstack.cache.fills")
        .with_unit("{write}")
        .with_description(
            "Cache writes by outcome; stale_dropped means the cache already held a newer \
             version. Errors count every failed cache operation.",
        )
        .with_callback(move |observer| observe(observer, &cache, |c| &c.stats, &fills))
        .build();

    let limiter = app.limiter.clone();
    let decisions: [Series<LimiterStats>; 2] = [
        ("tierstack.rate_limit.decision", "allowed", |s| {
            &s.allowed_total
        }),
        ("tierstack.rate_limit.decision", "limited", |s| {
            &s.limited_total
        }),
    ];
    meter
        .u64_observable_counter("tierstack.rate_limit.decisions")
        .with_unit("{request}")
        .with_description("Rate-limit decisions: allowed, or limited (answered 429).")
        .with_callback(move |observer| observe(observer, &limiter, |l| &l.stats, &decisions))
        .build();

    let limiter = app.limiter.clone();
    meter
        .u64_observable_counter("tierstack.rate_limit.local_decisions")
        .with_unit("{request}")
        .with_description(
            "Rate-limit decisions this process made alone because Redis was unavailable.",
        )
        .with_callback(move |observer| {
            let value = limiter.stats.local_decisions_total.load(Ordering::Relaxed);
            observer.observe(value, &[]);
        })
        .build();
}

fn observe<T, S>(
    observer: &dyn opentelemetry::metrics::AsyncInstrument<u64>,
    owner: &Arc<T>,
    stats: fn(&T) -> &S,
    series: &[Series<S>],
) {
    let stats = stats(owner);
    for (key, value, field) in series {
        observer.observe(
            field(stats).load(Ordering::Relaxed),
            &[KeyValue::new(*key, *value)],
        );
    }
}
