//! Per-API-key rate limits, shared by every `api` instance through Redis.
//!
//! The algorithm is GCRA (the generic cell rate algorithm): for a limit of N requests per
//! period P, each key keeps one number, its theoretical arrival time (TAT). A request is
//! allowed when TAT - now <= P - P/N, and then moves TAT forward by P/N. One number per
//! key, O(1) work, and an exact time until the next request would be allowed.
//!
//! In Redis the check-and-update is one Lua script, so concurrent requests on different
//! instances cannot both take the last slot, and it reads the clock from Redis (`TIME`),
//! so instances with skewed clocks agree. When Redis is unavailable (the breaker in
//! `platform::redis` is open) each process applies the same limit on its own: fail open to
//! a local limit, or, with `RATE_LIMIT_FAIL_CLOSED`, refuse.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use platform::redis::Redis;

/// One plan's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u64,
    pub period: Duration,
}

impl Limit {
    fn emission_ms(self) -> f64 {
        self.period.as_secs_f64() * 1000.0 / self.requests as f64
    }

    fn tolerance_ms(self) -> f64 {
        self.period.as_secs_f64() * 1000.0 - self.emission_ms()
    }
}

/// `standard=100/1,enterprise=1000/1`, in order; the first is the default.
pub fn parse_plans(spec: &str) -> anyhow::Result<Vec<(String, Limit)>> {
    let mut plans = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, limit) = entry.split_once('=').with_context(|| {
            format!("RATE_LIMIT_PLANS entry {entry:?} is not PLAN=REQUESTS/SECONDS")
        })?;
        let (requests, seconds) = limit.split_once('/').with_context(|| {
            format!("RATE_LIMIT_PLANS entry {entry:?} is not PLAN=REQUESTS/SECONDS")
        })?;
        let requests: u64 = requests
            .trim()
            .parse()
            .context("requests must be a whole number")?;
        let seconds: f64 = seconds.trim().parse().context("seconds must be a number")?;
        if requests == 0 || seconds.is_nan() || seconds <= 0.0 {
            bail!("RATE_LIMIT_PLANS entry {entry:?} needs positive numbers");
        }
        plans.push((
            name.trim().to_owned(),
            Limit {
                requests,
                period: Duration::from_secs_f64(seconds),
            },
        ));
    }
    if plans.is_empty() {
        bail!("RATE_LIMIT_PLANS lists no plan");
    }
    Ok(plans)
}

/// The outcome of one check, and what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the key's full quota is back.
    pub reset_seconds: u64,
    /// Seconds until a request would be allowed, when refused.
    pub retry_after_seconds: u64,
}

/// GCRA on (now, TAT) in milliseconds: the decision and the new TAT.
fn gcra(limit: Limit, now_ms: f64, tat_ms: Option<f64>) -> (Decision, Option<f64>) {
    let emission = limit.emission_ms();
    let tolerance = limit.tolerance_ms();
    let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
    let new_tat = tat + emission;
    if new_tat - now_ms > tolerance + emission + 1e-6 {
        let wait = tat - now_ms - tolerance;
        return (
            Decision {
                allowed: false,
                limit: limit.requests,
                remaining: 0,
                reset_seconds: ((tat - now_ms) / 1000.0).ceil() as u64,
                retry_after_seconds: (wait / 1000.0).ceil().max(1.0) as u64,
            },
            None,
        );
    }
    let remaining = ((now_ms + tolerance + emission - new_tat) / emission)
        .floor()
        .max(0.0) as u64;
    (
        Decision {
            allowed: true,
            limit: limit.requests,
            remaining,
            reset_seconds: ((new_tat - now_ms) / 1000.0).ceil() as u64,
            retry_after_seconds: 0,
        },
        Some(new_tat),
    )
}

/// The same arithmetic as [`gcra`], atomically in Redis. Returns
/// `{allowed, remaining, reset_ms, retry_after_ms}`.
const GCRA_SCRIPT: &str = r#"
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + emission
if new_tat - now > tolerance + emission + 0.000001 then
  return {0, 0, math.ceil(tat - now), math.ceil(tat - now - tolerance)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1)
local remaining = math.floor((now + tolerance + emission - new_tat) / emission)
return {1, remaining, math.ceil(new_tat - now), 0}
"#;

#[derive(Debug, Default)]
pub struct LimiterStats {
    pub allowed_total: AtomicU64,
    pub limited_total: AtomicU64,
    /// Decisions made by the per-process fallback while Redis was unavailable.
    pub local_decisions_total: AtomicU64,
}

pub struct RateLimiter {
    plans: Vec<(String, Limit)>,
    redis: Option<Redis>,
    script: redis::Script,
    fail_closed: bool,
    /// Per-process TATs, used only while Redis is unavailable.
    local: Mutex<HashMap<String, f64>>,
    started: Instant,
    pub stats: LimiterStats,
}

/// The local fallback keeps at most this many keys; beyond it, keys whose quota is full
/// again are dropped (they carry no information).
const LOCAL_KEYS_MAX: usize = 100_000;

impl RateLimiter {
    pub fn new(plans: Vec<(String, Limit)>, redis: Option<Redis>, fail_closed: bool) -> Self {
        Self {
            plans,
            redis,
            script: redis::Script::new(GCRA_SCRIPT),
            fail_closed,
            local: Mutex::new(HashMap::new()),
            started: Instant::now(),
            stats: LimiterStats::default(),
        }
    }

    pub fn limit_for(&self, plan: &str) -> Limit {
        self.plans
            .iter()
            .find(|(name, _)| name == plan)
            .unwrap_or(&self.plans[0])
            .1
    }

    /// Checks and counts one request of `key_id` on `plan`.
    pub async fn check(&self, key_id: &str, plan: &str) -> Decision {
        let limit = self.limit_for(plan);
        let decision = match self.check_shared(key_id, limit).await {
            Some(decision) => decision,
            None if self.fail_closed => Decision {
                allowed: false,
                limit: limit.requests,
                remaining: 0,
                reset_seconds: 1,
                retry_after_seconds: 1,
            },
            None => {
                self.stats
                    .local_decisions_total
                    .fetch_add(1, Ordering::Relaxed);
                self.check_local(key_id, limit)
            }
        };
        let counter = if decision.allowed {
            &self.stats.allowed_total
        } else {
            &self.stats.limited_total
        };
        counter.fetch_add(1, Ordering::Relaxed);
        decision
    }

    async fn check_shared(&self, key_id: &str, limit: Limit) -> Option<Decision> {
        let redis = self.redis.as_ref()?;
        let key = format!("ratelimit:{key_id}");
        let mut invocation = self.script.key(key);
        invocation
            .arg(limit.emission_ms())
            .arg(limit.tolerance_ms());
        let reply: Vec<i64> = redis
            .call("ratelimit.check", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await
            .ok()?;
        let [allowed, remaining, reset_ms, retry_ms] = reply[..] else {
            return None;
        };
        Some(Decision {
            allowed: allowed == 1,
            limit: limit.requests,
            remaining: remaining.max(0) as u64,
            reset_seconds: (reset_ms.max(0) as u64).div_ceil(1000),
            retry_after_seconds: (retry_ms.max(0) as u64)
                .div_ceil(1000)
                .max(u64::from(allowed == 0)),
        })
    }

    fn check_local(&self, key_id: &str, limit: Limit) -> Decision {
        let now_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let mut local = self.local.lock().expect("local limiter lock");
        if local.len() >= LOCAL_KEYS_MAX {
            local.retain(|_, tat| *tat > now_ms);
        }
        let (decision, new_tat) = gcra(limit, now_ms, local.get(key_id).copied());
        if let Some(tat) = new_tat {
            local.insert(key_id.to_owned(), tat);
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_PER_SECOND: Limit = Limit {
        requests: 10,
        period: Duration::from_secs(1),
    };

    #[test]
    fn a_burst_gets_exactly_the_limit_then_an_exact_retry_time() {
        let mut tat = None;
        for expected_remaining in (0..10).rev() {
            let (decision, new_tat) = gcra(TEN_PER_SECOND, 0.0, tat);
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
            tat = new_tat;
        }
        let (refused, _) = gcra(TEN_PER_SECOND, 0.0, tat);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_seconds, 1);

        // One emission interval (100 ms) later, exactly one more request fits.
        let (again, _) = gcra(TEN_PER_SECOND, 100.0, tat);
        assert!(again.allowed);
        assert_eq!(again.remaining, 0);
    }

    #[test]
    fn plans_parse_and_unknown_plans_get_the_first() {
        let plans = parse_plans("standard=100/1, tight=20/10").unwrap();
        let limiter = RateLimiter::new(plans, None, false);
        assert_eq!(limiter.limit_for("tight").requests, 20);
        assert_eq!(limiter.limit_for("nope").requests, 100);
        assert!(parse_plans("standard=0/1").is_err());
        assert!(parse_plans("standard").is_err());
    }

    #[tokio::test]
    async fn without_redis_the_local_limiter_applies_the_plan() {
        let limiter = RateLimiter::new(parse_plans("p=5/60").unwrap(), None, false);
        let mut allowed = 0;
        for _ in 0..8 {
            allowed += u64::from(limiter.check("key", "p").await.allowed);
        }
        assert_eq!(allowed, 5);
        assert_eq!(
            limiter.stats.local_decisions_total.load(Ordering::Relaxed),
            8
        );
    }
}
