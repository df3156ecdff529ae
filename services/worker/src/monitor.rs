//! How far behind the pipeline is, sampled every few seconds so that `/metrics` and
//! `/readyz` never query PostgreSQL, Redis or ClickHouse themselves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform::db::Database;
use platform::redis::Redis;
use serde::Serialize;
use tokio::sync::watch;

use crate::consumer::ConsumerStats;
use crate::{DEAD_LETTER_STREAM, GROUP, STREAM};

/// The last sample. A field is `None` when its source did not answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lag {
    pub postgres_up: bool,
    pub redis_up: bool,
    pub clickhouse_up: bool,
    /// Outbox rows not yet published to the stream.
    pub outbox_backlog: Option<i64>,
    /// Age of the oldest of them, in seconds; 0 when there are none.
    pub oldest_unpublished_age_seconds: Option<f64>,
    /// Entries in the stream: read-but-unacknowledged plus not yet read.
    pub stream_length: Option<u64>,
    /// Entries delivered to a consumer and not yet acknowledged.
    pub stream_pending: Option<u64>,
    pub dead_letters: Option<u64>,
}

#[derive(Clone, Default)]
pub struct LagMonitor {
    last: Arc<Mutex<Lag>>,
}

impl LagMonitor {
    pub fn snapshot(&self) -> Lag {
        self.last.lock().expect("lag lock").clone()
    }

    pub async fn sample(&self, db: &Database, redis: &Redis, consumer: &ConsumerStats) {
        let outbox = db
            .read("outbox_lag", |c| {
                Box::pin(async move {
                    sqlx::query_as::<_, (i64, f64)>(
                        "SELECT count(*), \
                                coalesce(extract(epoch FROM now() - min(recorded_at)), 0)::float8 \
                         FROM outbox WHERE published_at IS NULL",
                    )
                    .fetch_one(c)
                    .await
                })
            })
            .await
            .ok();
        let streams = redis
            .call("stream.lag", |mut c| async move {
                redis::pipe()
                    .cmd("XLEN")
                    .arg(STREAM)
                    .cmd("XPENDING")
                    .arg(STREAM)
                    .arg(GROUP)
                    .cmd("XLEN")
                    .arg(DEAD_LETTER_STREAM)
                    .query_async::<(u64, redis::Value, u64)>(&mut c)
                    .await
            })
            .await
            .ok();
        let pending = streams.as_ref().map(|(_, summary, _)| match summary {
            // XPENDING's summary starts with the count; before the group exists it errors,
            // which `call` reports as a failure above.
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        });
        let lag = Lag {
            postgres_up: outbox.is_some(),
            redis_up: streams.is_some(),
            clickhouse_up: consumer
                .clickhouse_up
                .load(std::sync::atomic::Ordering::Relaxed),
            outbox_backlog: outbox.map(|(n, _)| n),
            oldest_unpublished_age_seconds: outbox.map(|(_, age)| age),
            stream_length: streams.as_ref().map(|(len, _, _)| *len),
            stream_pending: pending,
            dead_letters: streams.as_ref().map(|(_, _, dead)| *dead),
        };
        *self.last.lock().expect("lag lock") = lag;
    }

    pub async fn run(
        self,
        db: Database,
        redis: Redis,
        consumer: Arc<ConsumerStats>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        while !*stop.borrow() {
            self.sample(&db, &redis, &consumer).await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
