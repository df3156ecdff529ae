//! The consumer: stream entries to ClickHouse rows.
//!
//! Entries are read through the consumer group and written into the `clickhouse` crate's
//! inserter, which ends an INSERT every `WORKER_INSERT_MAX_ROWS` rows or every
//! `WORKER_INSERT_PERIOD_MS`. Only when ClickHouse has accepted an INSERT are its entries
//! acknowledged and deleted from the stream; until then they stay pending in the group,
//! so a consumer that dies loses nothing: a restart with the same name reads its pending
//! entries first, and after `WORKER_CLAIM_IDLE_MS` any other consumer claims them.
//!
//! When an INSERT fails, the consumer stops reading (new events wait in the stream) and
//! retries the same rows with backoff. If ClickHouse answers its ping meanwhile, the rows
//! themselves are the problem: each is tried alone, and one that still fails goes to the
//! dead-letter stream with ClickHouse's reason. Entries that cannot even be decoded go
//! there at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clickhouse::inserter::Inserter;
use opentelemetry::metrics::Histogram;
use platform::analytics::{self, EventRow};
use platform::redis::{Redis, RedisError};
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::event::{FIELD, PaymentEvent};
use crate::relay::Backoff;
use crate::{DEAD_LETTER_STREAM, GROUP, STREAM};

/// How long a read waits for new entries. Short, so that the inserter's period is honoured
/// when the stream is quiet.
const READ_BLOCK_MS: usize = 200;

/// ClickHouse batch size and latency, per accepted INSERT.
struct BatchInstruments {
    size: Histogram<u64>,
    duration: Histogram<f64>,
}

fn batch_instruments() -> &'static BatchInstruments {
    static INSTRUMENTS: OnceLock<BatchInstruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = platform::telemetry::meter();
        BatchInstruments {
            size: meter
                .u64_histogram("tierstack.clickhouse.batch.size")
                .with_unit("{row}")
                .with_description("Rows per INSERT ClickHouse accepted.")
                .with_boundaries(vec![
                    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                ])
                .build(),
            duration: meter
                .f64_histogram("tierstack.clickhouse.batch.duration")
                .with_unit("s")
                .with_description("Time ClickHouse took to accept an INSERT.")
                .with_boundaries(platform::telemetry::SHORT_DURATION_BUCKETS.to_vec())
                .build(),
        }
    })
}

#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub events_inserted_total: AtomicU64,
    pub insert_failures_total: AtomicU64,
    pub dead_lettered_total: AtomicU64,
    pub claimed_total: AtomicU64,
    pub clickhouse_up: AtomicBool,
}

pub struct Consumer {
    pub redis: Redis,
    pub clickhouse: clickhouse::Client,
    /// The same server without a database selected, for creating the schema.
    pub clickhouse_root: clickhouse::Client,
    pub database: String,
    pub name: String,
    pub read_count: usize,
    pub insert_max_rows: u64,
    pub insert_period: Duration,
    pub claim_idle: Duration,
    pub timeout: Duration,
    pub stats: Arc<ConsumerStats>,
}

/// Rows of one INSERT, with the stream entries they came from.
type Batch = Vec<(String, EventRow)>;

/// The INSERT being built. An entry can arrive twice while it is open (a claim returns
/// entries this consumer already holds once they have idled long enough), so membership is
/// kept in a set: a read of 500 entries must not scan up to 1000 rows for each.
#[derive(Default)]
struct OpenBatch {
    rows: Batch,
    ids: HashSet<String>,
    /// One consumer span per traced event, in its request's trace; each ends when the
    /// INSERT holding its row is accepted (or given up on).
    spans: Vec<tracing::Span>,
}

impl OpenBatch {
    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn push(&mut self, id: String, row: EventRow, traceparent: Option<&str>) {
        if let Some(traceparent) = traceparent {
            let span = platform::telemetry::span_for_traceparent(traceparent, || {
                tracing::info_span!(
                    "stream.consume",
                    otel.name = "process payments.events",
                    otel.kind = "consumer",
                    messaging.system = "redis",
                    messaging.destination.name = STREAM,
                    messaging.consumer.group.name = GROUP,
                    messaging.message.id = %id,
                )
            });
            if !span.is_none() {
                self.spans.push(span);
            }
        }
        self.ids.insert(id.clone());
        self.rows.push((id, row));
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn take(&mut self) -> Batch {
        self.ids.clear();
        self.spans.clear();
        std::mem::take(&mut self.rows)
    }

    /// A span for the INSERT about to end, linked to the traces of the events in it, so a
    /// payment's trace leads to the batch that stored it and back.
    fn insert_span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "clickhouse.insert",
            otel.name = "INSERT payment_events",
            otel.kind = "client",
            db.system.name = "clickhouse",
            db.collection.name = analytics::TABLE,
            db.operation.batch.size = self.rows.len(),
        );
        platform::telemetry::link_spans(&span, &self.spans);
        span
    }
}

impl Consumer {
    fn inserter(&self) -> Inserter<EventRow> {
        self.clickhouse
            .inserter::<EventRow>(analytics::TABLE)
            .with_max_rows(self.insert_max_rows)
            .with_period(Some(self.insert_period))
            .with_timeouts(Some(self.timeout), Some(self.timeout))
    }

    /// Creates the consumer group (from the start of the stream) and the ClickHouse table.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        let created = self
            .redis
            .call("stream.create_group", |mut c| async move {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(STREAM)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        match created {
            Ok(()) => tracing::info!(stream = STREAM, group = GROUP, "consumer group created"),
            Err(RedisError::Failed(message)) if message.contains("BUSYGROUP") => {}
            Err(error) => return Err(error.into()),
        }
        tokio::time::timeout(
            self.timeout,
            analytics::ensure_schema(&self.clickhouse_root, &self.database),
        )
        .await
        .map_err(|_| anyhow::anyhow!("ClickHouse did not answer in time"))??;
        Ok(())
    }

    async fn clickhouse_answers(&self) -> bool {
        let up = matches!(
            tokio::time::timeout(
                self.timeout,
                self.clickhouse.query("SELECT 1").fetch_one::<u8>()
            )
            .await,
            Ok(Ok(1))
        );
        self.stats.clickhouse_up.store(up, Ordering::Relaxed);
        up
    }

    async fn read(&self, from: &str) -> Result<Vec<StreamId>, RedisError> {
        let mut options = StreamReadOptions::default()
            .group(GROUP, &self.name)
            .count(self.read_count);
        if from == ">" {
            options = options.block(READ_BLOCK_MS);
        }
        let from = from.to_owned();
        let reply = self
            .redis
            .call("stream.read", |mut c| async move {
                redis::cmd("XREADGROUP")
                    .arg(&options)
                    .arg("STREAMS")
                    .arg(STREAM)
                    .arg(from)
                    .query_async::<Option<StreamReadReply>>(&mut c)
                    .await
            })
            .await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Takes over entries that another consumer (or an earlier run of this one) has held
    /// longer than `claim_idle` without acknowledging them.
    async fn claim_abandoned(&self) -> Result<Vec<StreamId>, RedisError> {
        let (name, idle) = (self.name.clone(), self.claim_idle.as_millis() as u64);
        let count = self.read_count;
        let reply = self
            .redis
            .call("stream.claim", |mut c| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(STREAM)
                    .arg(GROUP)
                    .arg(name)
                    .arg(idle)
                    .arg("0")
                    .arg(StreamAutoClaimOptions::default().count(count))
                    .query_async::<StreamAutoClaimReply>(&mut c)
                    .await
            })
            .await?;
        if !reply.claimed.is_empty() {
            self.stats
                .claimed_total
                .fetch_add(reply.claimed.len() as u64, Ordering::Relaxed);
            tracing::info!(
                entries = reply.claimed.len(),
                "claimed entries abandoned by another consumer"
            );
        }
        Ok(reply.claimed)
    }

    /// Acknowledges and deletes entries whose rows ClickHouse has accepted. Deleting keeps
    /// the stream as long as the work still to do, no longer. A failure here only means
    /// the entries are delivered again later; their rows are then duplicates, which the
    /// table's queries ignore.
    async fn acknowledge(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let result = self
            .redis
            .call("stream.ack", |mut c| async move {
                redis::pipe()
                    .cmd("XACK")
                    .arg(STREAM)
                    .arg(GROUP)
                    .arg(&ids)
                    .ignore()
                    .cmd("XDEL")
                    .arg(STREAM)
                    .arg(&ids)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, "could not acknowledge entries; they will be delivered again");
        }
    }

    /// Moves one entry to the dead-letter stream with `reason`, then acknowledges it.
    /// If Redis fails, the entry stays pending and is claimed and retried later.
    async fn dead_letter(&self, entry: &StreamId, reason: &str) {
        let raw: String = entry.get(FIELD).unwrap_or_default();
        let (id, name, reason_owned) = (entry.id.clone(), self.name.clone(), reason.to_owned());
        let moved = self
            .redis
            .call("stream.dead_letter", |mut c| async move {
                redis::pipe()
                    .cmd("XADD")
                    .arg(DEAD_LETTER_STREAM)
                    .arg("*")
                    .arg(FIELD)
                    .arg(raw)
                    .arg("reason")
                    .arg(reason_owned)
                    .arg("entry_id")
                    .arg(&id)
                    .arg("consumer")
                    .arg(name)
                    .ignore()
                    .cmd("XACK")
                    .arg(STREAM)
                    .arg(GROUP)
                    .arg(&id)
                    .ignore()
                    .cmd("XDEL")
                    .arg(STREAM)
                    .arg(&id)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        match moved {
            Ok(()) => {
                self.stats
                    .dead_lettered_total
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(entry = %entry.id, reason, "event moved to the dead-letter stream");
            }
            Err(error) => {
                tracing::warn!(%error, entry = %entry.id, "could not dead-letter an entry")
            }
        }
    }

    /// One INSERT of `rows`, sent now.
    async fn insert_all(&self, rows: &Batch) -> Result<(), clickhouse::error::Error> {
        let mut insert = self
            .clickhouse
            .insert::<EventRow>(analytics::TABLE)
            .await?
            .with_timeouts(Some(self.timeout), Some(self.timeout));
        for (_, row) in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    fn record_insert(&self, rows: u64, took: Duration) {
        let instruments = batch_instruments();
        instruments.size.record(rows, &[]);
        instruments.duration.record(took.as_secs_f64(), &[]);
        self.stats
            .events_inserted_total
            .fetch_add(rows, Ordering::Relaxed);
    }

    /// After a failed INSERT: retries `batch` until ClickHouse takes it, isolating rows it
    /// rejects while it is up. Returns false if `stop` came first; the entries then stay
    /// pending for the next run.
    async fn recover(&self, batch: Batch, stop: &mut watch::Receiver<bool>) -> bool {
        let mut backoff = Backoff::new();
        backoff.failed();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff.delay()) => {}
                _ = stop.changed() => return false,
            }
            let started = Instant::now();
            match self.insert_all(&batch).await {
                Ok(()) => {
                    self.record_insert(batch.len() as u64, started.elapsed());
                    tracing::info!(rows = batch.len(), "ClickHouse accepts inserts again");
                    self.acknowledge(batch.into_iter().map(|(id, _)| id).collect())
                        .await;
                    return true;
                }
                Err(error) => {
                    self.stats
                        .insert_failures_total
                        .fetch_add(1, Ordering::Relaxed);
                    if self.clickhouse_answers().await {
                        return self.isolate(batch, &error.to_string()).await;
                    }
                    // The outage was logged when it began; only the delay grows.
                    backoff.failed();
                }
            }
        }
    }

    /// ClickHouse is up but refused a batch: each row alone, and a row that still fails
    /// is dead-lettered with the reason. Stops (false) if ClickHouse goes away meanwhile.
    async fn isolate(&self, batch: Batch, batch_error: &str) -> bool {
        tracing::warn!(
            rows = batch.len(),
            error = batch_error,
            "ClickHouse refused a batch; trying its rows one by one"
        );
        for (id, row) in batch {
            let one = vec![(id.clone(), row)];
            let started = Instant::now();
            match self.insert_all(&one).await {
                Ok(()) => {
                    self.record_insert(1, started.elapsed());
                    self.acknowledge(vec![id]).await;
                }
                Err(_) if !self.clickhouse_answers().await => return false,
                Err(error) => {
                    // The entry's original JSON is gone by now; the row carries the same.
                    let json = serde_json::to_vec(&one[0].1).unwrap_or_default();
                    let entry = StreamId {
                        id,
                        map: [(FIELD.to_owned(), redis::Value::BulkString(json))]
                            .into_iter()
                            .collect(),
                        ..Default::default()
                    };
                    self.dead_letter(&entry, &format!("ClickHouse refused the row: {error}"))
                        .await;
                }
            }
        }
        true
    }

    /// Consumes until `stop` turns true, then sends what it holds and returns.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        while let Err(error) = self.prepare().await {
            if backoff.failed() {
                tracing::warn!(%error, "cannot prepare the stream group or the ClickHouse table; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.delay()) => {}
                _ = stop.changed() => return,
            }
        }
        self.stats.clickhouse_up.store(true, Ordering::Relaxed);

        let mut inserter = self.inserter();
        let mut batch = OpenBatch::default();
        // This consumer's own pending entries first (from an earlier run under this name),
        // then new ones.
        let mut history: Option<String> = Some("0".to_owned());
        let claim_every =
            (self.claim_idle / 3).clamp(Duration::from_secs(1), Duration::from_secs(5));
        let mut next_claim = Instant::now() + claim_every;
        let mut redis_backoff = Backoff::new();

        loop {
            if *stop.borrow() {
                break;
            }
            let read = match &history {
                Some(from) => self.read(from).await,
                None => self.read(">").await,
            };
            let mut entries = match read {
                Ok(entries) => {
                    if redis_backoff.recovered() {
                        tracing::info!("reading the stream again");
                    }
                    if history.is_some() {
                        history = entries.last().map(|e| e.id.clone());
                    }
                    entries
                }
                Err(RedisError::Failed(message)) if message.contains("NOGROUP") => {
                    // The stream or its group is gone: Redis came back without its data.
                    // Entries it lost were published, so the outbox no longer has them;
                    // that is why the queue's Redis persists every write. Recreate the
                    // group so that new events flow again.
                    tracing::error!("the stream's consumer group is missing; creating it again");
                    if let Err(error) = self.prepare().await {
                        tracing::warn!(%error, "cannot recreate the consumer group");
                    }
                    history = Some("0".to_owned());
                    Vec::new()
                }
                Err(error) => {
                    if redis_backoff.failed() {
                        tracing::warn!(%error, "cannot read the stream; events wait in the outbox");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(redis_backoff.delay()) => {}
                        _ = stop.changed() => {}
                    }
                    Vec::new()
                }
            };
            if Instant::now() >= next_claim {
                next_claim = Instant::now() + claim_every;
                match self.claim_abandoned().await {
                    Ok(claimed) => entries.extend(claimed),
                    Err(error) => tracing::debug!(%error, "claiming abandoned entries failed"),
                }
            }

            let mut failed = None;
            for entry in entries {
                if batch.contains(&entry.id) {
                    continue;
                }
                let raw: Option<String> = entry.get(FIELD);
                match PaymentEvent::decode(raw.as_deref()) {
                    Ok(event) => {
                        let row = event.to_row();
                        let traceparent = event.traceparent.as_deref();
                        if let Err(error) = inserter.write(&row).await {
                            failed = Some(error);
                            batch.push(entry.id, row, traceparent);
                            break;
                        }
                        batch.push(entry.id, row, traceparent);
                    }
                    Err(reason) => self.dead_letter(&entry, &reason.to_string()).await,
                }
            }
            if failed.is_none() {
                // A span only for a commit that ends an INSERT (rows or period reached),
                // not for every pass of the loop.
                let ends = !batch.is_empty()
                    && (batch.len() as u64 >= self.insert_max_rows
                        || inserter.time_left().is_some_and(|left| left.is_zero()));
                let span = if ends {
                    batch.insert_span()
                } else {
                    tracing::Span::none()
                };
                let started = Instant::now();
                match inserter.commit().instrument(span).await {
                    Ok(quantities) if quantities.rows > 0 => {
                        self.record_insert(quantities.rows, started.elapsed());
                        self.stats.clickhouse_up.store(true, Ordering::Relaxed);
                        let ids = batch.take().into_iter().map(|(id, _)| id).collect();
                        self.acknowledge(ids).await;
                    }
                    Ok(_) => {}
                    Err(error) => failed = Some(error),
                }
            }
            if let Some(error) = failed {
                self.stats
                    .insert_failures_total
                    .fetch_add(1, Ordering::Relaxed);
                self.stats.clickhouse_up.store(false, Ordering::Relaxed);
                tracing::warn!(%error, rows = batch.len(), "ClickHouse insert failed; new events wait in the stream until it recovers");
                // The inserter cannot be used after an error; the rows are still in `batch`.
                inserter = self.inserter();
                if !self.recover(batch.take(), &mut stop).await {
                    return;
                }
            }
        }

        // Stopping: send what is buffered, so a clean shutdown leaves nothing pending.
        if !batch.is_empty() {
            let started = Instant::now();
            match inserter.end().await {
                Ok(quantities) => {
                    self.record_insert(quantities.rows, started.elapsed());
                    self.acknowledge(batch.take().into_iter().map(|(id, _)| id).collect())
                        .await;
                }
                Err(error) => {
                    tracing::warn!(%error, "final insert failed; entries stay pending for the next run")
                }
            }
        }
    }
}
