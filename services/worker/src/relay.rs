//! The relay: outbox rows to the stream.
//!
//! One batch is two short database sessions with the Redis call between them:
//!
//! ```text
//! [session: lease up to N unpublished rows, FOR UPDATE SKIP LOCKED] -> release
//! -> XADD each event to the stream (one pipelined round trip)
//! -> [session: mark the batch published] -> release
//! ```
//!
//! Holding the row locks across the XADD would be simpler to write and is the pattern
//! this project exists to avoid: a slow or unreachable Redis would then pin database
//! sessions for as long as it hangs. The lease (`leased_until`) does what the lock would
//! have done: other relays skip leased rows until the lease runs out. A relay that dies
//! after XADD but before marking leaves the rows to be published again after the lease;
//! the duplicates this causes are invisible in ClickHouse, and nothing is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use platform::db::{Database, DbError};
use platform::redis::{Redis, RedisError};
use tokio::sync::watch;

use crate::event::{FIELD, PaymentEvent};

#[derive(Debug, Default)]
pub struct RelayStats {
    pub events_published_total: AtomicU64,
    pub batches_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub rows_pruned_total: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

pub struct Relay {
    pub db: Database,
    pub redis: Redis,
    pub name: String,
    pub batch: i64,
    pub lease: Duration,
    pub poll: Duration,
    pub retention: Duration,
    pub stats: Arc<RelayStats>,
}

impl Relay {
    /// Leases left by an earlier process with this name are released at start: that
    /// process is gone, and its rows need not wait for the lease to run out.
    pub async fn release_own_leases(&self) -> Result<u64, DbError> {
        let name = self.name.clone();
        self.db
            .write("outbox_release_leases", move |c| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE outbox SET leased_by = NULL, leased_until = NULL \
                         WHERE leased_by = $1 AND published_at IS NULL",
                    )
                    .bind(name)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected())
                })
            })
            .await
    }

    /// Publishes one batch; returns how many events it held.
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        // Session 1: lease.
        let (name, lease_ms, batch) =
            (self.name.clone(), self.lease.as_millis() as i64, self.batch);
        let leased: Vec<(i64, PaymentEvent)> = self
            .db
            .write("outbox_lease", move |c| {
                Box::pin(async move {
                    let rows = sqlx::query_as::<_, LeasedRow>(
                        "UPDATE outbox \
                         SET leased_by = $1, leased_until = now() + make_interval(secs => $2 / 1000.0) \
                         WHERE seq IN ( \
                           SELECT seq FROM outbox \
                           WHERE published_at IS NULL \
                             AND (leased_until IS NULL OR leased_until < now()) \
                           ORDER BY seq LIMIT $3 \
                           FOR UPDATE SKIP LOCKED) \
                         RETURNING seq, event_id, account_id, payment_id, kind, amount, currency, \
                                   (extract(epoch FROM occurred_at) * 1000000)::bigint AS occurred_at_us, \
                                   traceparent",
                    )
                    .bind(name)
                    .bind(lease_ms as f64)
                    .bind(batch)
                    .fetch_all(c)
                    .await?;
                    Ok(rows.into_iter().map(LeasedRow::split).collect())
                })
            })
            .await?;
        if leased.is_empty() {
            return Ok(0);
        }
        // One producer span per event, in the trace of the request that made it; they end
        // when the batch is marked published.
        let _spans: Vec<tracing::Span> = leased
            .iter()
            .filter_map(|(_, event)| event.traceparent.as_deref())
            .map(|traceparent| {
                platform::telemetry::span_for_traceparent(traceparent, || {
                    tracing::info_span!(
                        "outbox.relay",
                        otel.name = "publish payments.events",
                        otel.kind = "producer",
                        messaging.system = "redis",
                        messaging.destination.name = crate::STREAM,
                        messaging.batch.message_count = leased.len(),
                    )
                })
            })
            .filter(|span| !span.is_none())
            .collect();

        // Between sessions: the stream. Pipelined, so a batch is one round trip.
        let mut pipe = redis::pipe();
        for (_, event) in &leased {
            let json = serde_json::to_string(event).expect("an event serialises");
            pipe.cmd("XADD")
                .arg(crate::STREAM)
                .arg("*")
                .arg(FIELD)
                .arg(json)
                .ignore();
        }
        let published = self
            .redis
            .call("stream.publish", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await;
        let seqs: Vec<i64> = leased.iter().map(|(seq, _)| *seq).collect();
        if let Err(error) = published {
            // Give the rows back now rather than when the lease runs out. Some of them may
            // be in the stream already; they will be published again, which is harmless.
            let name = self.name.clone();
            let _ = self
                .db
                .write("outbox_unlease", move |c| {
                    Box::pin(async move {
                        sqlx::query(
                            "UPDATE outbox SET leased_by = NULL, leased_until = NULL \
                             WHERE seq = ANY($1) AND leased_by = $2 AND published_at IS NULL",
                        )
                        .bind(seqs)
                        .bind(name)
                        .execute(c)
                        .await
                    })
                })
                .await;
            return Err(error.into());
        }

        // Session 2: mark published.
        let count = seqs.len();
        self.db
            .write("outbox_mark_published", move |c| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE outbox SET published_at = now(), leased_until = NULL \
                         WHERE seq = ANY($1)",
                    )
                    .bind(seqs)
                    .execute(c)
                    .await
                })
            })
            .await?;
        self.stats
            .events_published_total
            .fetch_add(count as u64, Ordering::Relaxed);
        self.stats.batches_total.fetch_add(1, Ordering::Relaxed);
        Ok(count)
    }

    /// Deletes up to 1000 published rows older than the retention, oldest first.
    pub async fn prune(&self) -> Result<u64, DbError> {
        let retention_s = self.retention.as_secs_f64();
        let deleted = self
            .db
            .write("outbox_prune", move |c| {
                Box::pin(async move {
                    sqlx::query(
                        "DELETE FROM outbox WHERE seq IN ( \
                           SELECT seq FROM outbox \
                           WHERE published_at < now() - make_interval(secs => $1) \
                           ORDER BY seq LIMIT 1000)",
                    )
                    .bind(retention_s)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected())
                })
            })
            .await?;
        self.stats
            .rows_pruned_total
            .fetch_add(deleted, Ordering::Relaxed);
        Ok(deleted)
    }

    /// Publishes until `stop` turns true: at once while batches come back full, after
    /// `poll` when the outbox is empty, with backoff while PostgreSQL or Redis fails (the
    /// rows wait in the outbox meanwhile).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        match self.release_own_leases().await {
            Ok(0) | Err(_) => {}
            Ok(n) => tracing::info!(rows = n, "released the leases of an earlier run"),
        }
        let mut backoff = Backoff::new();
        let mut next_prune = tokio::time::Instant::now();
        while !*stop.borrow() {
            let pause = match self.publish_batch().await {
                Ok(n) => {
                    // An empty outbox never reaches Redis, so only a batch that was
                    // published ends an outage; otherwise the log would flap.
                    if n > 0 && backoff.recovered() {
                        tracing::info!("relay publishing again");
                    }
                    if n as i64 >= self.batch {
                        Duration::ZERO
                    } else {
                        self.poll
                    }
                }
                Err(error) => {
                    self.stats.failures_total.fetch_add(1, Ordering::Relaxed);
                    if backoff.failed() {
                        tracing::warn!(%error, "relay cannot publish; events wait in the outbox");
                    }
                    backoff.delay()
                }
            };
            if tokio::time::Instant::now() >= next_prune {
                next_prune += Duration::from_secs(60);
                if let Err(error) = self.prune().await {
                    tracing::debug!(%error, "outbox prune failed; retried in a minute");
                }
            }
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

#[derive(sqlx::FromRow)]
struct LeasedRow {
    seq: i64,
    #[sqlx(flatten)]
    event: PaymentEvent,
}

impl LeasedRow {
    fn split(self) -> (i64, PaymentEvent) {
        (self.seq, self.event)
    }
}

/// Exponential backoff from 100 ms to 5 s that also remembers whether the last attempt
/// failed, so that an outage is logged once when it starts and once when it ends.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Self { failures: 0 }
    }

    /// Records a failure; true for the first of a run.
    pub fn failed(&mut self) -> bool {
        self.failures += 1;
        self.failures == 1
    }

    /// Records a success; true if it ends a run of failures.
    pub fn recovered(&mut self) -> bool {
        std::mem::replace(&mut self.failures, 0) > 0
    }

    pub fn delay(&self) -> Duration {
        let exponent = self.failures.saturating_sub(1).min(6);
        Duration::from_millis(100 * (1 << exponent)).min(Duration::from_secs(5))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_reports_the_edges_of_an_outage() {
        let mut backoff = Backoff::new();
        assert!(!backoff.recovered());
        assert!(backoff.failed());
        assert_eq!(backoff.delay(), Duration::from_millis(100));
        assert!(!backoff.failed());
        assert_eq!(backoff.delay(), Duration::from_millis(200));
        for _ in 0..10 {
            backoff.failed();
        }
        assert_eq!(backoff.delay(), Duration::from_secs(5));
        assert!(backoff.recovered());
        assert!(!backoff.recovered());
    }
}
