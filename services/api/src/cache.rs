//! Read-through cache of payments in Redis.
//!
//! A hit never touches PostgreSQL; a miss loads from a replica and fills the cache with a
//! TTL. Each entry carries a version, the payment's `updated_at` in microseconds, and
//! every write to the cache goes through one script that stores a value only if it is
//! newer than what is there.
//!
//! The race this guards against: a reader misses and loads the payment from a replica
//! while it is still pending; meanwhile the payment is settled, and the writer puts the
//! settled payment in the cache; then the reader's fill arrives with the pending copy. A
//! plain SET (or a delete on write followed by the late fill) would leave the stale status
//! cached until the TTL ran out. With versions, the late fill is older than the entry and
//! is dropped, whichever order the two arrive in. The writer updates the cache after its
//! transaction commits, never before, so the cache never runs ahead of the database.
//!
//! When a hot key expires under load, only one loader per key per process goes to the
//! database; the others wait for its result (single flight).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform::redis::Redis;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::error::ApiError;
use crate::store::Payment;

/// Stores `ARGV[2]` under version `ARGV[1]` unless the entry holds a newer version;
/// `ARGV[3]` is the TTL in seconds. Returns 1 when stored.
const SET_IF_NEWER: &str = r#"
local current = redis.call('HGET', KEYS[1], 'v')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"#;

/// Metric names are the fields, suffixed `_total`, under `payment_cache_`.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fills: AtomicU64,
    /// Fills dropped because the cache already held a newer version.
    pub stale_fills_dropped: AtomicU64,
    /// Reads that skipped Redis because it was unavailable or errored.
    pub bypassed: AtomicU64,
    pub errors: AtomicU64,
}

type Flight = Arc<OnceCell<Option<Payment>>>;

enum Lookup {
    Hit(Payment),
    Miss,
    Unavailable,
}

pub struct PaymentCache {
    redis: Option<Redis>,
    ttl: Duration,
    script: redis::Script,
    in_flight: Mutex<HashMap<(Uuid, Uuid), Flight>>,
    pub stats: CacheStats,
}

fn key(account_id: Uuid, payment_id: Uuid) -> String {
    format!("payment:{account_id}:{payment_id}")
}

fn version(payment: &Payment) -> i128 {
    payment.updated_at.unix_timestamp_nanos() / 1000
}

impl PaymentCache {
    /// `redis` is `None` when there is no Redis or the cache is switched off.
    pub fn new(redis: Option<Redis>, ttl: Duration) -> Self {
        Self {
            redis,
            ttl,
            script: redis::Script::new(SET_IF_NEWER),
            in_flight: Mutex::new(HashMap::new()),
            stats: CacheStats::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// The payment from the cache, or from `load` (once per key per process at a time),
    /// filling the cache on the way. A payment that does not exist is not cached.
    pub async fn get_or_load<F, Fut>(
        &self,
        account_id: Uuid,
        payment_id: Uuid,
        load: F,
    ) -> Result<Option<Payment>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Payment>, ApiError>>,
    {
        let Some(redis) = &self.redis else {
            return load().await;
        };

        match self.lookup(redis, account_id, payment_id).await {
            Lookup::Hit(payment) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(payment));
            }
            Lookup::Miss => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
            }
            Lookup::Unavailable => {
                // Redis is down or slow: read from the database, as if there were no cache.
                self.stats.bypassed.fetch_add(1, Ordering::Relaxed);
                return load().await;
            }
        }

        // Single flight: the first caller for this key loads, the others await its result.
        let flight = {
            let mut in_flight = self.in_flight.lock().expect("in-flight lock");
            in_flight
                .entry((account_id, payment_id))
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let result = flight
            .get_or_try_init(|| async {
                // A reader that missed just before the previous loader filled the cache
                // can arrive after that loader's flight has ended and start a new one.
                // Looking again costs one round trip per load and spares the database.
                if let Lookup::Hit(payment) = self.lookup(redis, account_id, payment_id).await {
                    return Ok(Some(payment));
                }
                let loaded = load().await?;
                if let Some(payment) = &loaded {
                    self.store(account_id, payment).await;
                }
                Ok::<_, ApiError>(loaded)
            })
            .await
            .cloned();
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .retain(|_, f| !Arc::ptr_eq(f, &flight) || Arc::strong_count(f) > 2);
        result
    }

    async fn lookup(&self, redis: &Redis, account_id: Uuid, payment_id: Uuid) -> Lookup {
        let cache_key = key(account_id, payment_id);
        let cached = redis
            .call("cache.get", |mut c| {
                let cache_key = cache_key.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(cache_key)
                        .arg("d")
                        .query_async::<Option<String>>(&mut c)
                        .await
                }
            })
            .await;
        match cached {
            Ok(Some(json)) => match serde_json::from_str::<Payment>(&json) {
                Ok(payment) => Lookup::Hit(payment),
                Err(_) => {
                    // An entry this version cannot read: treat it as absent and refill it.
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    Lookup::Miss
                }
            },
            Ok(None) => Lookup::Miss,
            Err(_) => Lookup::Unavailable,
        }
    }

    /// Puts `payment` in the cache unless a newer version is there. Best effort: a failure
    /// only means the next read goes to the database.
    pub async fn store(&self, account_id: Uuid, payment: &Payment) {
        let Some(redis) = &self.redis else {
            return;
        };
        let Ok(json) = serde_json::to_string(payment) else {
            return;
        };
        let mut invocation = self.script.key(key(account_id, payment.id));
        invocation
            .arg(version(payment).to_string())
            .arg(json)
            .arg(self.ttl.as_secs().max(1));
        match redis
            .call("cache.fill", |mut c| async move {
                invocation.invoke_async::<i64>(&mut c).await
            })
            .await
        {
            Ok(1) => {
                self.stats.fills.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                self.stats
                    .stale_fills_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
