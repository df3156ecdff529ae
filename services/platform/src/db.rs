//! Disciplined database sessions.
//!
//! PostgreSQL allows 100 connections; a service that serves 1000 concurrent users must
//! therefore hold a connection only while it is doing database work. This module makes that
//! the only easy way to reach the database:
//!
//! - Service code never sees a pool or a pooled connection. It calls [`Database::write`] or
//!   [`Database::read`] with a closure; the closure receives a connection that is inside a
//!   transaction and *is the whole session*: the connection is acquired just before the
//!   closure runs and released as soon as it returns. The closure must not call the network
//!   or sleep; do that between two sessions.
//! - Every session is a span (`db.session`, with its hold time), and its hold time and the
//!   wait for its connection are recorded per pool as `db.client.connection.use_time` and
//!   `db.client.connection.wait_time`, beside the pool's connection counts, pending
//!   requests and timeouts: the semantic conventions' connection-pool metrics. A session
//!   held longer than the configured threshold is logged at `warn`, so a regression shows up
//!   in logs and metrics before it shows up as pool timeouts.
//! - Writes go through PgBouncer in transaction pooling mode. PgBouncer 1.18 cannot track
//!   protocol-level prepared statements, and sqlx sends Parse/Describe and Bind/Execute in
//!   separate round trips, so a statement outside a transaction can land on two different
//!   server connections. The writer therefore runs with the statement cache off and every
//!   statement inside an explicit transaction: PgBouncer keeps a client on one server
//!   connection for the length of a transaction.
//! - Reads go to the replicas round robin. A replica that fails is taken out of rotation,
//!   reads fall back to the next replica or to the primary (logged once at `warn`), and a
//!   background probe puts the replica back when it answers again.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tracing::Instrument as _;

use crate::{config, telemetry};

/// The future a session closure returns. Boxed so that the closure can borrow the
/// connection for exactly the session's lifetime.
pub type SessionFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

/// Settings for both pools, read from `DB_*` environment variables.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `DB_WRITER_URL`: the primary, normally through PgBouncer.
    pub writer_url: String,
    /// `DB_READER_URLS`: comma-separated replicas. Empty means reads use the writer.
    pub reader_urls: Vec<String>,
    /// `DB_WRITER_POOL_SIZE` (default 20): connections per process to the writer.
    pub writer_pool_size: u32,
    /// `DB_READER_POOL_SIZE` (default 20): connections per process to each replica.
    pub reader_pool_size: u32,
    /// `DB_ACQUIRE_TIMEOUT_MS` (default 2000): longest wait for a session before the request
    /// fails with 503 `pool-timeout`.
    pub acquire_timeout: Duration,
    /// `DB_STATEMENT_TIMEOUT_MS` (default 5000): PostgreSQL `statement_timeout`, set per
    /// transaction.
    pub statement_timeout: Duration,
    /// `DB_IDLE_IN_TRANSACTION_TIMEOUT_MS` (default 10000): PostgreSQL
    /// `idle_in_transaction_session_timeout`, a backstop that ends a session left idle inside
    /// a transaction.
    pub idle_in_transaction_timeout: Duration,
    /// `DB_SESSION_HOLD_WARN_MS` (default 250): a session held longer is logged at `warn`.
    pub session_hold_warn: Duration,
    /// `DB_WRITER_TRANSACTION_POOLING` (default true): the writer URL points at a pooler in
    /// transaction mode, so the writer runs without a prepared statement cache.
    pub writer_transaction_pooling: bool,
}

impl DbConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            writer_url: config::required("DB_WRITER_URL")?,
            reader_urls: config::list("DB_READER_URLS"),
            writer_pool_size: config::var_or("DB_WRITER_POOL_SIZE", 20)?,
            reader_pool_size: config::var_or("DB_READER_POOL_SIZE", 20)?,
            acquire_timeout: config::millis_or("DB_ACQUIRE_TIMEOUT_MS", 2000)?,
            statement_timeout: config::millis_or("DB_STATEMENT_TIMEOUT_MS", 5000)?,
            idle_in_transaction_timeout: config::millis_or(
                "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                10_000,
            )?,
            session_hold_warn: config::millis_or("DB_SESSION_HOLD_WARN_MS", 250)?,
            writer_transaction_pooling: config::flag_or("DB_WRITER_TRANSACTION_POOLING", true)?,
        })
    }
}

/// Why a session could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection became free within the acquire timeout: the service is saturated.
    #[error("no database session became available within {0:?}")]
    PoolTimeout(Duration),
    /// The database could not be reached at all.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A statement failed.
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
}

impl DbError {
    fn classify(error: sqlx::Error, acquire_timeout: Duration) -> Self {
        match error {
            sqlx::Error::PoolTimedOut => Self::PoolTimeout(acquire_timeout),
            e if is_connection_failure(&e) => Self::Unavailable(e),
            e => Self::Query(e),
        }
    }
}

/// True when the error says the server or the link to it is gone, as opposed to a statement
/// that failed on a healthy connection.
fn is_connection_failure(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            // 08: connection exception; 57P: operator intervention (shutdown, crash).
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// Counters an operator or a load test reads to see how sessions behave.
#[derive(Debug, Default)]
pub struct SessionStats {
    pub sessions: AtomicU64,
    pub sessions_over_hold_warn: AtomicU64,
    pub pool_timeouts: AtomicU64,
    pub reads_on_replica: AtomicU64,
    pub reads_on_primary: AtomicU64,
}

/// A point-in-time copy of [`SessionStats`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SessionStatsSnapshot {
    pub sessions: u64,
    pub sessions_over_hold_warn: u64,
    pub pool_timeouts: u64,
    pub reads_on_replica: u64,
    pub reads_on_primary: u64,
}

struct Replica {
    /// The URL without credentials, for logs.
    display: String,
    connect: PgConnectOptions,
    pool: PgPool,
    healthy: AtomicBool,
}

struct Inner {
    writer: PgPool,
    writer_begin: String,
    reader_begin: String,
    replicas: Vec<Replica>,
    next_replica: AtomicUsize,
    /// True while reads are being served by the primary because no replica answers; used
    /// to log the switch once, not per request.
    on_primary_fallback: AtomicBool,
    config: DbConfig,
    stats: SessionStats,
    instruments: PoolInstruments,
}

/// The semantic conventions' connection-pool instruments, attributed by pool name.
struct PoolInstruments {
    wait_time: Histogram<f64>,
    use_time: Histogram<f64>,
    timeouts: Counter<u64>,
    pending: UpDownCounter<i64>,
    over_hold_warn: Counter<u64>,
    writer: [KeyValue; 1],
    reader: [KeyValue; 1],
}

impl PoolInstruments {
    fn new() -> Self {
        let meter = telemetry::meter();
        Self {
            wait_time: meter
                .f64_histogram("db.client.connection.wait_time")
                .with_unit("s")
                .with_description("The time it took to obtain an open connection from the pool.")
                .with_boundaries(telemetry::SHORT_DURATION_BUCKETS.to_vec())
                .build(),
            use_time: meter
                .f64_histogram("db.client.connection.use_time")
                .with_unit("s")
                .with_description(
                    "The time between borrowing a connection and returning it to the pool: \
                     the database session's hold time.",
                )
                .with_boundaries(telemetry::SHORT_DURATION_BUCKETS.to_vec())
                .build(),
            timeouts: meter
                .u64_counter("db.client.connection.timeouts")
                .with_unit("{timeout}")
                .with_description(
                    "Connection requests that timed out before a connection was free.",
                )
                .build(),
            pending: meter
                .i64_up_down_counter("db.client.connection.pending_requests")
                .with_unit("{request}")
                .with_description("Requests waiting for an open connection.")
                .build(),
            over_hold_warn: meter
                .u64_counter("tierstack.db.session.over_hold_warn")
                .with_unit("{session}")
                .with_description("Sessions held longer than DB_SESSION_HOLD_WARN_MS.")
                .build(),
            writer: [KeyValue::new(POOL_NAME, "writer")],
            reader: [KeyValue::new(POOL_NAME, "reader")],
        }
    }

    fn attributes(&self, which: SessionPool) -> &[KeyValue] {
        match which {
            SessionPool::Replica => &self.reader,
            SessionPool::Writer | SessionPool::PrimaryFallback => &self.writer,
        }
    }
}

const POOL_NAME: &str = "db.client.connection.pool.name";

/// Observes the pools' connection counts and limits at each collection. The callbacks hold
/// the database weakly: a closed `Database` stops being reported instead of living forever.
fn observe_pools(inner: &Arc<Inner>) {
    let meter = telemetry::meter();
    let weak: Weak<Inner> = Arc::downgrade(inner);
    meter
        .i64_observable_up_down_counter("db.client.connection.count")
        .with_unit("{connection}")
        .with_description("Open connections, by state (idle or used).")
        .with_callback(move |observer| {
            let Some(inner) = weak.upgrade() else { return };
            let (writer_open, writer_idle) = (inner.writer.size(), inner.writer.num_idle());
            let (mut reader_open, mut reader_idle) = (0u32, 0usize);
            for replica in &inner.replicas {
                reader_open += replica.pool.size();
                reader_idle += replica.pool.num_idle();
            }
            let observe = |pool: &'static str, open: u32, idle: usize| {
                let idle = idle as i64;
                let used = (i64::from(open) - idle).max(0);
                for (state, value) in [("idle", idle), ("used", used)] {
                    observer.observe(
                        value,
                        &[
                            KeyValue::new(POOL_NAME, pool),
                            KeyValue::new("db.client.connection.state", state),
                        ],
                    );
                }
            };
            observe("writer", writer_open, writer_idle);
            if !inner.replicas.is_empty() {
                observe("reader", reader_open, reader_idle);
            }
        })
        .build();
    let weak: Weak<Inner> = Arc::downgrade(inner);
    meter
        .i64_observable_up_down_counter("db.client.connection.max")
        .with_unit("{connection}")
        .with_description("The most open connections the pool allows.")
        .with_callback(move |observer| {
            let Some(inner) = weak.upgrade() else { return };
            observer.observe(
                i64::from(inner.config.writer_pool_size),
                &[KeyValue::new(POOL_NAME, "writer")],
            );
            if !inner.replicas.is_empty() {
                let max = i64::from(inner.config.reader_pool_size) * inner.replicas.len() as i64;
                observer.observe(max, &[KeyValue::new(POOL_NAME, "reader")]);
            }
        })
        .build();
    let weak: Weak<Inner> = Arc::downgrade(inner);
    meter
        .u64_observable_counter("tierstack.db.reads")
        .with_unit("{session}")
        .with_description("Read sessions, by where they ran (replica or primary).")
        .with_callback(move |observer| {
            let Some(inner) = weak.upgrade() else { return };
            let stats = &inner.stats;
            for (target, value) in [
                ("replica", stats.reads_on_replica.load(Ordering::Relaxed)),
                ("primary", stats.reads_on_primary.load(Ordering::Relaxed)),
            ] {
                observer.observe(value, &[KeyValue::new("tierstack.db.read.target", target)]);
            }
        })
        .build();
}

/// The service's handle to PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

/// Which pool a session came from, for logs and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionPool {
    Writer,
    Replica,
    PrimaryFallback,
}

impl SessionPool {
    fn as_str(self) -> &'static str {
        match self {
            Self::Writer => "writer",
            Self::Replica => "replica",
            Self::PrimaryFallback => "primary-fallback",
        }
    }
}

impl Database {
    /// Builds both pools. Connections are opened lazily, so a service can start (and report
    /// not-ready) while the database is still coming up.
    pub fn connect(config: DbConfig, application_name: &str) -> anyhow::Result<Self> {
        let mut writer_options = PgConnectOptions::from_str(&config.writer_url)
            .context("DB_WRITER_URL is not a valid PostgreSQL URL")?
            .application_name(application_name);
        if config.writer_transaction_pooling {
            writer_options = writer_options.statement_cache_capacity(0);
        }
        let writer = PgPoolOptions::new()
            .max_connections(config.writer_pool_size)
            .min_connections(0)
            .acquire_timeout(config.acquire_timeout)
            // Through PgBouncer a client connection rarely dies on its own, and a ping on
            // every acquire would add a round trip to every session. A broken connection
            // surfaces as an error on BEGIN and is replaced by the pool.
            .test_before_acquire(false)
            .connect_lazy_with(writer_options);

        let mut replicas = Vec::with_capacity(config.reader_urls.len());
        for url in &config.reader_urls {
            let connect = PgConnectOptions::from_str(url)
                .with_context(|| format!("DB_READER_URLS entry {url:?} is not a valid URL"))?
                .application_name(application_name);
            let pool = PgPoolOptions::new()
                .max_connections(config.reader_pool_size)
                .min_connections(0)
                .acquire_timeout(config.acquire_timeout)
                .connect_lazy_with(connect.clone());
            replicas.push(Replica {
                display: redact(url),
                connect,
                pool,
                healthy: AtomicBool::new(true),
            });
        }

        let timeouts = format!(
            "SET LOCAL statement_timeout = {}; SET LOCAL idle_in_transaction_session_timeout = {}",
            config.statement_timeout.as_millis(),
            config.idle_in_transaction_timeout.as_millis()
        );
        let inner = Inner {
            writer,
            writer_begin: format!("BEGIN; {timeouts}"),
            reader_begin: format!("BEGIN READ ONLY; {timeouts}"),
            replicas,
            next_replica: AtomicUsize::new(0),
            on_primary_fallback: AtomicBool::new(false),
            config,
            stats: SessionStats::default(),
            instruments: PoolInstruments::new(),
        };
        let inner = Arc::new(inner);
        // Counters start at zero, so a dashboard or an alert sees a series (at 0) before
        // the first timeout rather than no data.
        let instruments = &inner.instruments;
        let mut pools = vec![&instruments.writer];
        if !inner.replicas.is_empty() {
            pools.push(&instruments.reader);
        }
        for attributes in pools {
            instruments.timeouts.add(0, attributes);
            instruments.over_hold_warn.add(0, attributes);
        }
        observe_pools(&inner);
        Ok(Self { inner })
    }

    pub fn config(&self) -> &DbConfig {
        &self.inner.config
    }

    /// Runs `work` as one write session on the primary.
    ///
    /// `work` receives a connection inside a transaction. The transaction commits when
    /// `work` returns `Ok` and rolls back when it returns `Err`. `label` names the session
    /// in logs.
    ///
    /// Invariant: `work` is the whole database session. It must not call the network, wait
    /// on a timer or do long computation; the connection is held until it returns.
    pub async fn write<T, F>(&self, label: &'static str, work: F) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> SessionFuture<'c, T>,
    {
        self.on_primary(&self.inner.writer_begin, SessionPool::Writer, label, work)
            .await
    }

    /// Demonstration only: the anti-pattern this project exists to prevent.
    ///
    /// Behaves like [`Database::write`], but is meant for a closure that *does* call the
    /// network while the session is open, so that a benchmark can show, side by side, how
    /// holding a session across a slow dependency exhausts the pool. Production code paths
    /// never call this.
    pub async fn write_holding_session_across_network<T, F>(
        &self,
        label: &'static str,
        work: F,
    ) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> SessionFuture<'c, T>,
    {
        self.write(label, work).await
    }

    /// Runs `work` as one read-only session on a replica, or on the primary when no replica
    /// answers.
    ///
    /// Reads are safe to repeat, so a read whose replica fails mid-way is retried once on
    /// the next candidate; `work` is therefore `Fn`. The same invariant as for
    /// [`Database::write`] holds: the closure is the whole session.
    pub async fn read<T, F>(&self, label: &'static str, work: F) -> Result<T, DbError>
    where
        F: for<'c> Fn(&'c mut PgConnection) -> SessionFuture<'c, T>,
    {
        let inner = &self.inner;
        let timeout = inner.config.acquire_timeout;

        // At most two replicas are tried: the next in rotation, then, if it failed, one more.
        for _ in 0..2 {
            let Some(replica) = self.pick_replica() else {
                break;
            };
            match run_session(
                inner,
                &replica.pool,
                &inner.reader_begin,
                SessionPool::Replica,
                label,
                &work,
            )
            .await
            {
                Ok(value) => {
                    inner.stats.reads_on_replica.fetch_add(1, Ordering::Relaxed);
                    self.note_replicas_back();
                    return Ok(value);
                }
                Err(error) if replica_is_down(&error, &replica.pool) => {
                    self.mark_unhealthy(replica, &error);
                }
                Err(error) => return Err(self.note_error(DbError::classify(error, timeout))),
            }
        }

        self.note_primary_fallback();
        self.read_on_primary(label, &work).await
    }

    /// Runs `work` as one read-only session on the primary, for the few reads that must see
    /// a write made a moment ago (a replica may not have replayed it yet). Everything else
    /// reads with [`Database::read`].
    pub async fn read_on_primary<T, F>(&self, label: &'static str, work: F) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> SessionFuture<'c, T>,
    {
        let value = self
            .on_primary(
                &self.inner.reader_begin,
                SessionPool::PrimaryFallback,
                label,
                work,
            )
            .await?;
        self.inner
            .stats
            .reads_on_primary
            .fetch_add(1, Ordering::Relaxed);
        Ok(value)
    }

    /// One session on the writer pool, opened with `begin`.
    async fn on_primary<T, F>(
        &self,
        begin: &str,
        which: SessionPool,
        label: &'static str,
        work: F,
    ) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> SessionFuture<'c, T>,
    {
        let inner = &self.inner;
        run_session(inner, &inner.writer, begin, which, label, work)
            .await
            .map_err(|e| self.note_error(DbError::classify(e, inner.config.acquire_timeout)))
    }

    /// Round robin over the replicas currently believed healthy.
    fn pick_replica(&self) -> Option<&Replica> {
        let replicas = &self.inner.replicas;
        if replicas.is_empty() {
            return None;
        }
        let start = self.inner.next_replica.fetch_add(1, Ordering::Relaxed);
        (0..replicas.len())
            .map(|offset| &replicas[(start + offset) % replicas.len()])
            .find(|replica| replica.healthy.load(Ordering::Relaxed))
    }

    fn mark_unhealthy(&self, replica: &Replica, error: &sqlx::Error) {
        if replica.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                replica = %replica.display,
                error = %error,
                "replica taken out of rotation; reads fall back"
            );
        }
    }

    fn note_primary_fallback(&self) {
        if self.inner.replicas.is_empty() {
            return;
        }
        if !self.inner.on_primary_fallback.swap(true, Ordering::Relaxed) {
            tracing::warn!("no replica answers; reads are served by the primary");
        }
    }

    fn note_replicas_back(&self) {
        if self
            .inner
            .on_primary_fallback
            .swap(false, Ordering::Relaxed)
        {
            tracing::info!("reads are served by replicas again");
        }
    }

    fn note_error(&self, error: DbError) -> DbError {
        if matches!(error, DbError::PoolTimeout(_)) {
            self.inner
                .stats
                .pool_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        error
    }

    /// Puts failed replicas back into rotation once they answer again. Runs until the
    /// process exits; spawn it once.
    pub async fn watch_replicas(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for replica in &self.inner.replicas {
                if replica.healthy.load(Ordering::Relaxed) {
                    continue;
                }
                if probe(&replica.connect, interval).await {
                    replica.healthy.store(true, Ordering::Relaxed);
                    tracing::info!(replica = %replica.display, "replica back in rotation");
                }
            }
        }
    }

    /// Checks that the writer answers, on a connection of its own: readiness must not
    /// depend on a free slot in the pool, or a saturated instance would be pulled from the
    /// load balancer exactly when it is busiest.
    pub async fn ping_writer(&self, timeout: Duration) -> bool {
        probe(&self.inner.writer.connect_options(), timeout).await
    }

    pub fn stats(&self) -> SessionStatsSnapshot {
        let s = &self.inner.stats;
        SessionStatsSnapshot {
            sessions: s.sessions.load(Ordering::Relaxed),
            sessions_over_hold_warn: s.sessions_over_hold_warn.load(Ordering::Relaxed),
            pool_timeouts: s.pool_timeouts.load(Ordering::Relaxed),
            reads_on_replica: s.reads_on_replica.load(Ordering::Relaxed),
            reads_on_primary: s.reads_on_primary.load(Ordering::Relaxed),
        }
    }

    /// Closes both pools, waiting for sessions in progress to end.
    pub async fn close(&self) {
        self.inner.writer.close().await;
        for replica in &self.inner.replicas {
            replica.pool.close().await;
        }
    }
}

/// Acquire, BEGIN, run the closure, COMMIT or ROLLBACK, release: one session.
async fn run_session<T, F>(
    inner: &Inner,
    pool: &PgPool,
    begin: &str,
    which: SessionPool,
    label: &'static str,
    work: F,
) -> Result<T, sqlx::Error>
where
    F: for<'c> FnOnce(&'c mut PgConnection) -> SessionFuture<'c, T>,
{
    let instruments = &inner.instruments;
    let attributes = instruments.attributes(which);
    // A session outside any span (a background poll) starts no trace of its own.
    let span = telemetry::child_span(|| {
        tracing::info_span!(
            "db.session",
            otel.name = label,
            otel.kind = "client",
            db.system.name = "postgresql",
            db.client.connection.pool.name = which.as_str(),
            tierstack.db.session.hold_ms = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    });

    let asked_at = Instant::now();
    instruments.pending.add(1, attributes);
    let acquired = pool.acquire().instrument(span.clone()).await;
    instruments.pending.add(-1, attributes);
    let mut connection = match acquired {
        Ok(connection) => connection,
        Err(error) => {
            if matches!(error, sqlx::Error::PoolTimedOut) {
                instruments.timeouts.add(1, attributes);
            }
            span.record("otel.status_code", "ERROR");
            return Err(error);
        }
    };
    let acquired_at = Instant::now();
    instruments
        .wait_time
        .record((acquired_at - asked_at).as_secs_f64(), attributes);

    let outcome = async {
        // The BEGIN text is built in `Database::connect` from two integers only.
        let begin = sqlx::AssertSqlSafe(begin.to_owned());
        let mut transaction = connection.begin_with(begin).await?;
        let value = work(&mut transaction).await?;
        transaction.commit().await?;
        Ok(value)
    }
    .instrument(span.clone())
    .await;

    drop(connection);
    let held = acquired_at.elapsed();
    instruments.use_time.record(held.as_secs_f64(), attributes);
    span.record("tierstack.db.session.hold_ms", held.as_secs_f64() * 1000.0);
    if outcome.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    let _entered = span.enter();
    record_hold(inner, which, label, held);
    outcome
}

fn record_hold(inner: &Inner, which: SessionPool, label: &'static str, held: Duration) {
    let stats = &inner.stats;
    stats.sessions.fetch_add(1, Ordering::Relaxed);

    let session_hold_ms = held.as_secs_f64() * 1000.0;
    if held > inner.config.session_hold_warn {
        stats
            .sessions_over_hold_warn
            .fetch_add(1, Ordering::Relaxed);
        inner
            .instruments
            .over_hold_warn
            .add(1, inner.instruments.attributes(which));
        tracing::warn!(
            session = label,
            pool = which.as_str(),
            session_hold_ms,
            threshold_ms = inner.config.session_hold_warn.as_millis() as u64,
            "database session held longer than the threshold"
        );
    } else {
        tracing::trace!(
            session = label,
            pool = which.as_str(),
            session_hold_ms,
            "session"
        );
    }
}

/// A replica counts as down when its connections fail, or when the pool timed out while it
/// still had room for more connections (it was trying, and failing, to connect). A timeout
/// with every connection busy is saturation, not failure, and is reported as a pool
/// timeout rather than shifted onto the primary.
fn replica_is_down(error: &sqlx::Error, pool: &PgPool) -> bool {
    match error {
        sqlx::Error::PoolTimedOut => pool.size() < pool.options().get_max_connections(),
        other => is_connection_failure(other),
    }
}

/// Connects afresh (not from a pool) and runs `SELECT 1` within `timeout`.
async fn probe(options: &PgConnectOptions, timeout: Duration) -> bool {
    let attempt = async {
        let mut connection = options.connect().await?;
        sqlx::raw_sql("SELECT 1").execute(&mut connection).await?;
        connection.close().await
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(())))
}

/// Drops the password from a URL before it is logged.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_credentials() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/payments"),
            "postgres://***@db:5432/payments"
        );
        assert_eq!(redact("postgres://db/payments"), "postgres://db/payments");
    }

    #[test]
    fn io_errors_count_as_connection_failures_but_row_not_found_does_not() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_connection_failure(&io));
        assert!(!is_connection_failure(&sqlx::Error::RowNotFound));
    }
}
