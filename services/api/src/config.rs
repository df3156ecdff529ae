//! The API's settings, all from environment variables; the README's configuration table
//! lists the same names.

use std::net::SocketAddr;
use std::time::Duration;

use platform::analytics::ClickHouseConfig;
use platform::config::{flag_or, millis_or, required, var_or};
use platform::db::DbConfig;
use platform::redis::RedisConfig;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `API_LISTEN` (default `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// `API_ADMIN_LISTEN` (default unset): a second listener for `/metrics`, `/livez` and
    /// `/readyz`, for Prometheus to scrape without going through the load balancer. When it
    /// is set, the main listener no longer serves `/metrics`.
    pub admin_listen: Option<SocketAddr>,
    /// `API_ADMISSION_LIMIT` (default 256): requests in flight per process before new ones
    /// are answered 503 `overloaded`.
    pub admission_limit: usize,
    /// `API_REQUEST_DEADLINE_MS` (default 10000): the longest any request may take.
    pub request_deadline: Duration,
    /// `API_MAX_BODY_BYTES` (default 16384): larger bodies get 413.
    pub max_body_bytes: usize,
    /// `API_SHUTDOWN_DRAIN_MS` (default 1000): after SIGTERM, how long readiness is false
    /// while requests are still accepted, so the load balancer can stop routing here.
    pub shutdown_drain: Duration,
    /// `API_SHUTDOWN_GRACE_MS` (default 15000): how long in-flight requests may take to
    /// finish once the listener has closed.
    pub shutdown_grace: Duration,
    /// `API_DEMO_HOLD_SESSION_ACROSS_PSP` (default false): demonstration mode that holds one
    /// database session for the whole payment, processor call included. It exists only so a
    /// benchmark can show why that is wrong. Never enable it in production.
    pub demo_hold_session_across_psp: bool,
    /// `OUTBOX_ENABLED` (default true): write each payment state change's event to the
    /// outbox. Off only to measure what the outbox costs; analytics then miss those payments.
    pub outbox_enabled: bool,
    /// `CACHE_ENABLED` (default true): read payments through Redis.
    pub cache_enabled: bool,
    /// `CACHE_TTL_SECONDS` (default 60): how long a cached payment lives.
    pub cache_ttl: Duration,
    /// `AUTH_CACHE_TTL_SECONDS` (default 30): how long a valid API key is remembered per
    /// process; 0 looks every request up.
    pub auth_cache_ttl: Duration,
    /// `RATE_LIMIT_PLANS` (default `standard=100/1`): requests per API key per plan, as
    /// `PLAN=REQUESTS/SECONDS,...`. Accounts whose plan is not listed get the first plan.
    pub rate_limit_plans: String,
    /// `RATE_LIMIT_FAIL_CLOSED` (default false): with Redis unavailable, refuse requests
    /// (429) instead of limiting each process locally.
    pub rate_limit_fail_closed: bool,
    pub psp: PspConfig,
    pub db: DbConfig,
    pub redis: RedisConfig,
    /// The analytics store; without `CLICKHOUSE_URL`, `/v1/analytics/*` answers 503.
    pub clickhouse: ClickHouseConfig,
}

#[derive(Debug, Clone)]
pub struct PspConfig {
    /// `PSP_URL`: base URL of the payment processor.
    pub url: String,
    /// `PSP_TIMEOUT_MS` (default 2000): per attempt.
    pub timeout: Duration,
    /// `PSP_MAX_RETRIES` (default 2): retries after a 5xx, a timeout or a connect error.
    pub max_retries: u32,
    /// `PSP_RETRY_BACKOFF_MS` (default 50): first backoff; doubles per retry, with jitter.
    pub retry_backoff: Duration,
}

impl ApiConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            listen: var_or("API_LISTEN", SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            admin_listen: match std::env::var("API_ADMIN_LISTEN") {
                Ok(value) if !value.trim().is_empty() => {
                    Some(value.trim().parse().map_err(|e| {
                        anyhow::anyhow!("API_ADMIN_LISTEN={value:?} is not an address: {e}")
                    })?)
                }
                _ => None,
            },
            admission_limit: var_or("API_ADMISSION_LIMIT", 256)?,
            request_deadline: millis_or("API_REQUEST_DEADLINE_MS", 10_000)?,
            max_body_bytes: var_or("API_MAX_BODY_BYTES", 16 * 1024)?,
            shutdown_drain: millis_or("API_SHUTDOWN_DRAIN_MS", 1000)?,
            shutdown_grace: millis_or("API_SHUTDOWN_GRACE_MS", 15_000)?,
            demo_hold_session_across_psp: flag_or("API_DEMO_HOLD_SESSION_ACROSS_PSP", false)?,
            outbox_enabled: flag_or("OUTBOX_ENABLED", true)?,
            cache_enabled: flag_or("CACHE_ENABLED", true)?,
            cache_ttl: Duration::from_secs(var_or("CACHE_TTL_SECONDS", 60)?),
            auth_cache_ttl: Duration::from_secs(var_or("AUTH_CACHE_TTL_SECONDS", 30)?),
            rate_limit_plans: var_or("RATE_LIMIT_PLANS", "standard=100/1".to_owned())?,
            rate_limit_fail_closed: flag_or("RATE_LIMIT_FAIL_CLOSED", false)?,
            psp: PspConfig {
                url: required("PSP_URL")?,
                timeout: millis_or("PSP_TIMEOUT_MS", 2000)?,
                max_retries: var_or("PSP_MAX_RETRIES", 2)?,
                retry_backoff: millis_or("PSP_RETRY_BACKOFF_MS", 50)?,
            },
            db: DbConfig::from_env()?,
            redis: RedisConfig::from_env()?,
            clickhouse: ClickHouseConfig::from_env()?,
        })
    }
}
