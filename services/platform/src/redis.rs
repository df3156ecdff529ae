//! Redis, guarded so that its failure never becomes the service's failure.
//!
//! Every call has a short timeout, and a circuit breaker counts consecutive failures: past
//! a threshold it opens, and for a cool-down every call is refused at once instead of
//! waiting for another timeout. After the cool-down one call is let through as a probe; its
//! success closes the breaker. Callers treat a refused or failed call as "Redis is not
//! there" and degrade (the cache is bypassed, rate limits become local). The switch is
//! logged once each way, not per request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_redis::{Pool, Runtime};

use crate::config;

/// `REDIS_*` settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_URL`: unset means no Redis (no cache, local rate limits only).
    pub url: Option<String>,
    /// `REDIS_POOL_SIZE` (default 32).
    pub pool_size: usize,
    /// `REDIS_TIMEOUT_MS` (default 50): the most any Redis call may take, connection
    /// included.
    pub timeout: Duration,
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
    /// Milliseconds since `born` when the next probe may go through.
    probe_after_ms: AtomicU64,
    stats: BreakerStats,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Whether a call may go through now. While open, exactly one caller per cool-down
    /// wins the probe slot.
    fn allow(&self) -> bool {
        if !self.open.load(Ordering::Acquire) {
            return true;
        }
        let now = self.now_ms();
        let probe_after = self.probe_after_ms.load(Ordering::Acquire);
        now >= probe_after
            && self
                .probe_after_ms
                .compare_exchange(
                    probe_after,
                    now + self.cooldown.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn on_success(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
        if self.open.swap(false, Ordering::AcqRel) {
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
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .context("cannot build the Redis pool")?;
        Ok(Some(Self {
            pool,
            timeout: config.timeout,
            breaker: Arc::new(Breaker {
                threshold: config.breaker_failures.max(1),
                cooldown: config.breaker_cooldown,
                born: Instant::now(),
                consecutive_failures: AtomicU32::new(0),
                open: AtomicBool::new(false),
                probe_after_ms: AtomicU64::new(0),
                stats: BreakerStats::default(),
            }),
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
    /// breaker.
    pub async fn call<T, F, Fut>(&self, operation: F) -> Result<T, RedisError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow() {
            self.breaker
                .stats
                .calls_bypassed_total
                .fetch_add(1, Ordering::Relaxed);
            return Err(RedisError::Bypassed);
        }
        let attempt = async {
            let connection = self
                .pool
                .get()
                .await
                .map_err(|e| RedisError::Failed(e.to_string()))?;
            operation(connection)
                .await
                .map_err(|e| RedisError::Failed(e.to_string()))
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::Timeout),
        };
        match &result {
            Ok(_) => self.breaker.on_success(),
            Err(error) => self.breaker.on_failure(error),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker {
            threshold,
            cooldown: Duration::from_millis(cooldown_ms),
            born: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            probe_after_ms: AtomicU64::new(0),
            stats: BreakerStats::default(),
        }
    }

    #[test]
    fn breaker_opens_after_the_threshold_and_lets_one_probe_through_after_cooldown() {
        let b = breaker(3, 30);
        for _ in 0..2 {
            b.on_failure(&RedisError::Timeout);
            assert!(b.allow(), "still closed below the threshold");
        }
        b.on_failure(&RedisError::Timeout);
        assert!(!b.allow(), "open after three failures");
        assert_eq!(b.stats.opened_total.load(Ordering::Relaxed), 1);

        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "one probe after the cool-down");
        assert!(!b.allow(), "and only one");

        b.on_success();
        assert!(
            b.allow() && b.allow(),
            "closed again after a successful probe"
        );
    }
}
