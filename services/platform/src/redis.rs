//! Redis, guarded so that its failure never becomes the service's failure.
//!
//! Every call has a short timeout, and a circuit breaker counts consecutive failures: past
//! a threshold it opens, and for a cool-down every call is refused at once instead of
//! waiting for another timeout. After the cool-down one call is let through as a probe; its
//! success closes the breaker. Callers treat a refused or failed call as "Redis is not
//! there" and degrade (the cache is bypassed, rate limits become local). The switch is
//! logged once each way, not per request.
//!
//! Each call is a client span named by its caller; the breaker's state and counts are
//! observed as `tierstack.circuit_breaker.*` metrics with `tierstack.dependency = "redis"`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_redis::{Pool, Runtime};
use opentelemetry::KeyValue;
use tracing::Instrument as _;

use crate::{config, telemetry};

/// `REDIS_*` settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_URL`: unset means no Redis (no cache, local rate limits only).
    pub url: Option<String>,
    /// `REDIS_POOL_SIZE` (default 32).
    pub pool_size: usize,
    /// `REDIS_TIMEOUT_MS` (default 50): the most any Redis command may take.
    pub timeout: Duration,
    /// `REDIS_CONNECT_TIMEOUT_MS` (default 250): the most getting a pooled connection may
    /// take, opening a new one included.
    pub connect_timeout: Duration,
    /// `REDIS_BREAKER_FAILURES` (default 3): consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// `REDIS_BREAKER_COOLDOWN_MS` (default 1000): how long the breaker stays open before
    /// a probe call.
    pub breaker_cooldown: Duration,
}

impl RedisConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            url: std::env::var("REDIS_URL")
                .ok()
                .filter(|u| !u.trim().is_empty()),
            pool_size: config::var_or("REDIS_POOL_SIZE", 32)?,
            timeout: config::millis_or("REDIS_TIMEOUT_MS", 50)?,
            connect_timeout: config::millis_or("REDIS_CONNECT_TIMEOUT_MS", 250)?,
            breaker_failures: config::var_or("REDIS_BREAKER_FAILURES", 3)?,
            breaker_cooldown: config::millis_or("REDIS_BREAKER_COOLDOWN_MS", 1000)?,
        })
    }
}

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The breaker is open: the call was not attempted.
    #[error("redis bypassed: circuit open")]
    Bypassed,
    #[error("redis call timed out")]
    Timeout,
    #[error("redis error: {0}")]
    Failed(String),
}

/// The breaker's counters, for metrics.
#[derive(Debug, Default)]
pub struct BreakerStats {
    pub opened_total: AtomicU64,
    pub calls_bypassed_total: AtomicU64,
    pub calls_failed_total: AtomicU64,
}

struct Breaker {
    threshold: u32,
    cooldown: Duration,
    born: Instant,
    consecutive_failures: AtomicU32,
    open: AtomicBool,
    /// Counts openings. A call remembers the epoch it was admitted in, so that a slow call
    /// admitted before the breaker opened cannot close it by succeeding late: only a call
    /// admitted while open (the probe) can.
    epoch: AtomicU64,
    /// Milliseconds since `born` when the next probe may go through.
    probe_after_ms: AtomicU64,
    stats: BreakerStats,
}

impl Breaker {
    fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            born: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            probe_after_ms: AtomicU64::new(0),
            stats: BreakerStats::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Whether a call may go through now, and if so the epoch it is admitted in. While
    /// open, exactly one caller per cool-down wins the probe slot.
    fn allow(&self) -> Option<Admission> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if !self.open.load(Ordering::Acquire) {
            return Some(Admission {
                epoch,
                probe: false,
            });
        }
        let now = self.now_ms();
        let probe_after = self.probe_after_ms.load(Ordering::Acquire);
        let won = now >= probe_after
            && self
                .probe_after_ms
                .compare_exchange(
                    probe_after,
                    now + self.cooldown.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        won.then_some(Admission { epoch, probe: true })
    }

    fn on_success(&self, admission: Admission) {
        self.consecutive_failures.store(0, Ordering::Release);
        let current = admission.epoch == self.epoch.load(Ordering::Acquire);
        if admission.probe && current && self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("redis reachable again; cache and shared rate limits resumed");
        }
    }

    fn on_failure(&self, error: &RedisError) {
        self.stats
            .calls_failed_total
            .fetch_add(1, Ordering::Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold && !self.open.load(Ordering::Acquire) {
            self.probe_after_ms.store(
                self.now_ms() + self.cooldown.as_millis() as u64,
                Ordering::Release,
            );
            if !self.open.swap(true, Ordering::AcqRel) {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.stats.opened_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %error,
                    failures,
                    "redis unavailable; cache bypassed and rate limits local until it answers"
                );
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Admission {
    epoch: u64,
    probe: bool,
}

/// A guarded Redis pool. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    timeout: Duration,
    breaker: Arc<Breaker>,
}

impl Redis {
    /// `None` when no `REDIS_URL` is configured. Connects lazily.
    pub fn connect(config: &RedisConfig) -> anyhow::Result<Option<Self>> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let pool = deadpool_redis::Config::from_url(url.as_str())
            .builder()
            .context("REDIS_URL is not a valid Redis URL")?
            .max_size(config.pool_size)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .context("cannot build the Redis pool")?;
        let breaker = Arc::new(Breaker::new(
            config.breaker_failures,
            config.breaker_cooldown,
        ));
        observe_breaker(&breaker);
        Ok(Some(Self {
            pool,
            timeout: config.timeout,
            breaker,
        }))
    }

    /// True while the breaker is closed.
    pub fn is_available(&self) -> bool {
        !self.breaker.open.load(Ordering::Acquire)
    }

    pub fn breaker_stats(&self) -> &BreakerStats {
        &self.breaker.stats
    }

    /// Runs one Redis operation on a pooled connection, within the timeout and behind the
    /// breaker. `name` names the call's span (`cache.get`, `ratelimit.check`, ...).
    pub async fn call<T, F, Fut>(&self, name: &'static str, operation: F) -> Result<T, RedisError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        // A call made outside any span (a background poll) starts no trace of its own.
        let span = telemetry::child_span(|| {
            tracing::info_span!(
                "redis",
                otel.name = name,
                otel.kind = "client",
                db.system.name = "redis",
                error.type = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            )
        });
        let result = self.call_inner(operation).instrument(span.clone()).await;
        if let Err(error) = &result {
            let kind = match error {
                RedisError::Bypassed => "circuit_open",
                RedisError::Timeout => "timeout",
                RedisError::Failed(_) => "failed",
            };
            span.record("error.type", kind);
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn call_inner<T, F, Fut>(&self, operation: F) -> Result<T, RedisError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let Some(admission) = self.breaker.allow() else {
            self.breaker
                .stats
                .calls_bypassed_total
                .fetch_add(1, Ordering::Relaxed);
            return Err(RedisError::Bypassed);
        };
        // Getting a connection has its own, longer bound (`connect_timeout`): opening a new
        // one under a burst can take longer than a command, and that is not an outage. A
        // refused connection still fails at once.
        let result = match self.pool.get().await {
            Err(error) => Err(RedisError::Failed(error.to_string())),
            Ok(connection) => match tokio::time::timeout(self.timeout, operation(connection)).await
            {
                Ok(result) => result.map_err(|e| RedisError::Failed(e.to_string())),
                Err(_) => Err(RedisError::Timeout),
            },
        };
        match &result {
            Ok(_) => self.breaker.on_success(admission),
            Err(error) => self.breaker.on_failure(error),
        }
        result
    }
}

/// Observes a breaker's state and counts at each metrics collection.
fn observe_breaker(breaker: &Arc<Breaker>) {
    let meter = telemetry::meter();
    let dependency = || [KeyValue::new("tierstack.dependency", "redis")];
    let weak: Weak<Breaker> = Arc::downgrade(breaker);
    meter
        .i64_observable_gauge("tierstack.circuit_breaker.open")
        .with_description("1 while the circuit breaker is open and calls are refused.")
        .with_callback(move |observer| {
            if let Some(breaker) = weak.upgrade() {
                let open = breaker.open.load(Ordering::Acquire);
                observer.observe(i64::from(open), &dependency());
            }
        })
        .build();
    let weak: Weak<Breaker> = Arc::downgrade(breaker);
    meter
        .u64_observable_counter("tierstack.circuit_breaker.opened")
        .with_unit("{opening}")
        .with_description("Times the circuit breaker opened.")
        .with_callback(move |observer| {
            if let Some(breaker) = weak.upgrade() {
                let opened = breaker.stats.opened_total.load(Ordering::Relaxed);
                observer.observe(opened, &dependency());
            }
        })
        .build();
    let weak: Weak<Breaker> = Arc::downgrade(breaker);
    meter
        .u64_observable_counter("tierstack.dependency.calls.failed")
        .with_unit("{call}")
        .with_description(
            "Calls that did not get an answer: failed, timed out, or refused by the open breaker.",
        )
        .with_callback(move |observer| {
            if let Some(breaker) = weak.upgrade() {
                let stats = &breaker.stats;
                for (outcome, value) in [
                    ("failed", stats.calls_failed_total.load(Ordering::Relaxed)),
                    (
                        "bypassed",
                        stats.calls_bypassed_total.load(Ordering::Relaxed),
                    ),
                ] {
                    observer.observe(
                        value,
                        &[
                            KeyValue::new("tierstack.dependency", "redis"),
                            KeyValue::new("tierstack.call.outcome", outcome),
                        ],
                    );
                }
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker::new(threshold, Duration::from_millis(cooldown_ms))
    }

    #[test]
    fn breaker_opens_after_the_threshold_and_only_a_probe_closes_it() {
        let b = breaker(3, 30);
        let admitted_before_opening = b.allow().unwrap();
        for _ in 0..2 {
            b.on_failure(&RedisError::Timeout);
            assert!(b.allow().is_some(), "still closed below the threshold");
        }
        b.on_failure(&RedisError::Timeout);
        assert!(b.allow().is_none(), "open after three failures");
        assert_eq!(b.stats.opened_total.load(Ordering::Relaxed), 1);

        b.on_success(admitted_before_opening);
        assert!(
            b.allow().is_none(),
            "a late success from before the opening keeps it open"
        );

        std::thread::sleep(Duration::from_millis(40));
        let probe = b.allow().expect("one probe after the cool-down");
        assert!(b.allow().is_none(), "and only one");

        b.on_success(probe);
        assert!(
            b.allow().is_some() && b.allow().is_some(),
            "closed after a successful probe"
        );
    }
}
