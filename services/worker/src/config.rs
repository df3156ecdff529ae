//! The worker's settings, all from environment variables; the README's configuration
//! table lists the same names.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use platform::analytics::ClickHouseConfig;
use platform::config::{millis_or, optional, var_or};
use platform::db::DbConfig;
use platform::redis::RedisConfig;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `WORKER_ADMIN_LISTEN` (default `0.0.0.0:9090`): `/livez`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    /// `WORKER_CONSUMER_NAME` (default `<hostname>-<pid>`): this worker's name in the
    /// consumer group and on its outbox leases. Give each replica a stable, unique name
    /// (a StatefulSet's pod name): a restarted worker then picks up its own unfinished
    /// entries and leases at once instead of waiting for them to be claimed.
    pub consumer_name: String,
    /// `WORKER_RELAY_BATCH` (default 200): outbox rows per relay batch.
    pub relay_batch: i64,
    /// `WORKER_RELAY_POLL_MS` (default 100): how long the relay sleeps when the outbox is
    /// empty. PgBouncer in transaction mode rules out LISTEN/NOTIFY, so the relay polls;
    /// an empty poll is one index probe.
    pub relay_poll: Duration,
    /// `WORKER_RELAY_LEASE_MS` (default 10000): how long leased rows stay with a relay
    /// before another may publish them.
    pub relay_lease: Duration,
    /// `OUTBOX_RETENTION_HOURS` (default 168): published rows older than this are deleted.
    pub outbox_retention: Duration,
    /// `WORKER_INSERT_MAX_ROWS` (default 1000): rows per ClickHouse insert, at most.
    pub insert_max_rows: u64,
    /// `WORKER_INSERT_PERIOD_MS` (default 1000): an insert with rows in it is sent at
    /// least this often.
    pub insert_period: Duration,
    /// `WORKER_READ_COUNT` (default 500): stream entries per read.
    pub read_count: usize,
    /// `WORKER_CLAIM_IDLE_MS` (default 15000): entries another consumer has held this
    /// long without acknowledging are claimed, on the assumption that it died.
    pub claim_idle: Duration,
    pub db: DbConfig,
    pub redis: RedisConfig,
    pub clickhouse: ClickHouseConfig,
}

impl WorkerConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let mut db = DbConfig::from_env()?;
        // The worker needs a few sessions, not the API's twenty.
        if optional("DB_WRITER_POOL_SIZE").is_none() {
            db.writer_pool_size = 4;
        }
        let mut redis = RedisConfig::from_env()?;
        redis.url.as_ref().context("REDIS_URL must be set")?;
        // Stream reads block for up to READ_BLOCK; the API's 50 ms bound would cut them off.
        if optional("REDIS_TIMEOUT_MS").is_none() {
            redis.timeout = Duration::from_millis(1000);
        }
        let clickhouse = ClickHouseConfig::from_env()?;
        clickhouse
            .url
            .as_ref()
            .context("CLICKHOUSE_URL must be set")?;
        let default_name = format!(
            "{}-{}",
            optional("HOSTNAME").unwrap_or_else(|| "worker".to_owned()),
            std::process::id()
        );
        Ok(Self {
            admin_listen: var_or(
                "WORKER_ADMIN_LISTEN",
                SocketAddr::from(([0, 0, 0, 0], 9090)),
            )?,
            consumer_name: optional("WORKER_CONSUMER_NAME").unwrap_or(default_name),
            relay_batch: var_or("WORKER_RELAY_BATCH", 200)?,
            relay_poll: millis_or("WORKER_RELAY_POLL_MS", 100)?,
            relay_lease: millis_or("WORKER_RELAY_LEASE_MS", 10_000)?,
            outbox_retention: Duration::from_secs(3600 * var_or("OUTBOX_RETENTION_HOURS", 168)?),
            insert_max_rows: var_or("WORKER_INSERT_MAX_ROWS", 1000)?,
            insert_period: millis_or("WORKER_INSERT_PERIOD_MS", 1000)?,
            read_count: var_or("WORKER_READ_COUNT", 500)?,
            claim_idle: millis_or("WORKER_CLAIM_IDLE_MS", 15_000)?,
            db,
            redis,
            clickhouse,
        })
    }
}
