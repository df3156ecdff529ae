//! The asynchronous pipeline end to end, against the running tier: payments through
//! HAProxy, their events through the outbox, the workers' relay, the Redis stream and the
//! consumer group into ClickHouse, and back out through `/v1/analytics/payments`.
//!
//! Every test uses an account of its own, so its counts are its own. The tests stop
//! ClickHouse and Redis and kill workers, so they take a lock and run one at a time.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Mutex;
use uuid::Uuid;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// How long the pipeline may take to drain after the last disturbance ended. Generous: a
/// restarted worker waits out its backoff (at most 5 s) and the other's claim interval.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

fn clickhouse() -> clickhouse::Client {
    platform::analytics::client(&Tier::clickhouse_url(), "tierstack")
}

fn queue_redis() -> redis::Client {
    redis::Client::open(env("QUEUE_REDIS_URL")).expect("queue redis url")
}

/// Creates `n` payments for `account` through HAProxy, `concurrency` at a time, and
/// returns how many were answered 201. Any other answer fails the test: the write path
/// must not notice what happens downstream of the outbox.
async fn create_payments(account: &TestAccount, n: usize, concurrency: usize) -> usize {
    let base = Tier::haproxy_url();
    let client = http();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (base, client, key, next) = (
            base.clone(),
            client.clone(),
            account.api_key.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut created = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return created;
                }
                // Amounts and currencies vary so that the totals compare something.
                let currency = ["EUR", "USD", "GBP"][i % 3];
                let body = serde_json::json!({
                    "amount": 100 + (i as i64 * 37) % 5000,
                    "currency": currency,
                    "description": "pipeline test",
                });
                let (status, _, body) =
                    post_payment(&client, &base, &key, &Uuid::new_v4().to_string(), &body).await;
                assert_eq!(status, 201, "payment {i} failed: {body}");
                created += 1;
            }
        }));
    }
    let mut created = 0;
    for task in tasks {
        created += task.await.expect("payment task");
    }
    created
}

/// Outbox events recorded for the account.
async fn outbox_events(account_id: Uuid) -> i64 {
    let mut primary = connect(&Tier::primary_url()).await;
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE account_id = $1")
        .bind(account_id)
        .fetch_one(&mut primary)
        .await
        .unwrap()
}

/// Distinct events, and stored rows (copies included), in ClickHouse for the account.
async fn clickhouse_events(account_id: Uuid) -> Option<(u64, u64)> {
    clickhouse()
        .query(
            "SELECT toUInt64(uniqExact(event_id)), toUInt64(count()) FROM payment_events \
             WHERE account_id = toUUID(?)",
        )
        .bind(account_id.to_string())
        .fetch_one::<(u64, u64)>()
        .await
        .ok()
}

/// True when nothing is on its way: no unpublished outbox row (for anyone), and an
/// empty stream with nothing pending (consumers delete what they acknowledge).
async fn pipeline_idle() -> bool {
    let mut primary = connect(&Tier::primary_url()).await;
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&mut primary)
            .await
            .unwrap();
    let Ok(mut redis) = queue_redis().get_multiplexed_async_connection().await else {
        return false;
    };
    let length: redis::RedisResult<u64> = redis::cmd("XLEN")
        .arg(worker::STREAM)
        .query_async(&mut redis)
        .await;
    unpublished == 0 && length.is_ok_and(|n| n == 0)
}

/// Waits until ClickHouse holds every outbox event of the account and the pipeline is
/// idle; returns (outbox events, distinct events in ClickHouse, rows in ClickHouse).
async fn wait_drained(account_id: Uuid) -> (i64, u64, u64) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let outbox = outbox_events(account_id).await;
        let stored = clickhouse_events(account_id).await;
        if let Some((distinct, rows)) = stored
            && distinct as i64 >= outbox
            && pipeline_idle().await
        {
            return (outbox, distinct, rows);
        }
        assert!(
            Instant::now() < deadline,
            "the pipeline did not drain within {DRAIN_TIMEOUT:?}: {outbox} outbox events, \
             ClickHouse has {stored:?} (distinct, rows)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A time range, `[from, to)`.
type Range = (OffsetDateTime, OffsetDateTime);

/// (status, currency) -> (count, volume), as the analytics API reports it for `range`, by
/// minute.
async fn analytics_totals(
    account: &TestAccount,
    (from, to): Range,
) -> BTreeMap<(String, String), (i64, i64)> {
    let rfc3339 = |at: OffsetDateTime| at.format(&Rfc3339).unwrap();
    let (status, body) = get_json(
        &http(),
        &format!(
            "{}/v1/analytics/payments?interval=minute&from={}&to={}",
            Tier::haproxy_url(),
            rfc3339(from),
            rfc3339(to)
        ),
        &account.api_key,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let totals = body["totals"].as_array().expect("totals");
    let total_count: i64 = totals.iter().map(|t| t["count"].as_i64().unwrap()).sum();
    let bucket_count: i64 = body["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["count"].as_i64().unwrap())
        .sum();
    assert_eq!(total_count, bucket_count, "buckets and totals disagree");
    totals
        .iter()
        .map(|t: &Value| {
            (
                (
                    t["status"].as_str().unwrap().to_owned(),
                    t["currency"].as_str().unwrap().to_owned(),
                ),
                (t["count"].as_i64().unwrap(), t["volume"].as_i64().unwrap()),
            )
        })
        .collect()
}

/// The same totals computed by SQL over the account's payments in PostgreSQL for the same
/// range: a payment counts as created when its `created_at` is in it, and as succeeded or
/// failed when its settlement (`updated_at`) is.
async fn sql_totals(account_id: Uuid, (from, to): Range) -> BTreeMap<(String, String), (i64, i64)> {
    let mut primary = connect(&Tier::primary_url()).await;
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT 'created', currency, count(*), sum(amount)::bigint FROM payments \
         WHERE account_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY currency \
         UNION ALL \
         SELECT status, currency, count(*), sum(amount)::bigint FROM payments \
         WHERE account_id = $1 AND status <> 'pending' \
           AND updated_at >= $2 AND updated_at < $3 GROUP BY status, currency",
    )
    .bind(account_id)
    .bind(from)
    .bind(to)
    .fetch_all(&mut primary)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(status, currency, count, volume)| ((status, currency), (count, volume)))
        .collect()
}

/// Sum of one worker counter over the tier's workers that answer.
async fn workers_metric(name: &str) -> f64 {
    let mut sum = 0.0;
    for base in env("TIERSTACK_WORKER_URLS").split(',') {
        let Ok(response) = http().get(format!("{base}/metrics")).send().await else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        sum += parse_metric(&text, name, &[]).unwrap_or(0.0);
    }
    sum
}

/// Compares the analytics API with SQL over the last `window` up to a moment from now,
/// and over a range that ends before the account existed, which must be empty.
async fn assert_analytics_match_postgres(account: &TestAccount) {
    let now = OffsetDateTime::now_utc();
    let recent = (
        now - time::Duration::hours(1),
        now + time::Duration::minutes(1),
    );
    let expected = sql_totals(account.id, recent).await;
    assert!(!expected.is_empty());
    assert_eq!(analytics_totals(account, recent).await, expected);

    let before = (
        now - time::Duration::hours(3),
        now - time::Duration::hours(2),
    );
    assert!(analytics_totals(account, before).await.is_empty());
}

/// Once the pipeline has drained: ClickHouse counts each of the account's outbox events
/// exactly once, `expected_events` if given, and the analytics API agrees with SQL.
/// Returns the number of events.
async fn assert_delivered_exactly_once(account: &TestAccount, expected_events: Option<i64>) -> i64 {
    let (outbox, distinct, rows) = wait_drained(account.id).await;
    if let Some(expected) = expected_events {
        assert_eq!(outbox, expected, "outbox events");
    }
    assert_eq!(distinct as i64, outbox, "distinct events in ClickHouse");
    assert!(rows >= distinct);
    assert_analytics_match_postgres(account).await;
    outbox
}

#[tokio::test]
async fn every_payment_event_reaches_clickhouse_once_and_analytics_match_postgres() {
    let _serial = SERIAL.lock().await;
    let account = create_account("pipeline-e2e").await;
    let published_before = workers_metric("tierstack_outbox_published_total").await;

    let created = create_payments(&account, 300, 20).await;

    // Each payment was created and then settled: two events each.
    let events = assert_delivered_exactly_once(&account, Some(2 * created as i64)).await;
    // Two relays shared the outbox and neither published a row the other had: without a
    // failure, each event went to the stream once.
    let published = workers_metric("tierstack_outbox_published_total").await - published_before;
    assert_eq!(published, events as f64, "events published more than once");

    // The lag is in every worker's /readyz, and reaches zero once drained (each worker
    // samples it every 2 s).
    for base in env("TIERSTACK_WORKER_URLS").split(',') {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = loop {
            let (status, ready) = get_json(&http(), &format!("{base}/readyz"), "").await;
            assert_eq!(status, 200, "{ready}");
            if ready["pipeline"]["outbox_backlog"] == 0 || Instant::now() > deadline {
                break ready;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let pipeline = &ready["pipeline"];
        assert_eq!(pipeline["outbox_backlog"], 0, "{ready}");
        assert_eq!(pipeline["oldest_unpublished_age_seconds"], 0.0, "{ready}");
        assert!(pipeline["stream_length"].is_u64(), "{ready}");
        assert!(pipeline["stream_pending"].is_u64(), "{ready}");
    }
}

#[tokio::test]
async fn redelivered_events_are_stored_twice_but_counted_once() {
    let _serial = SERIAL.lock().await;
    let account = create_account("pipeline-redelivery").await;
    create_payments(&account, 60, 10).await;
    let outbox = assert_delivered_exactly_once(&account, None).await;

    // What a relay that died between XADD and marking its batch does: publish the same
    // rows again. Every event then reaches ClickHouse a second time.
    let inserted_before = workers_metric("tierstack_clickhouse_rows_inserted_total").await;
    let mut primary = connect(&Tier::primary_url()).await;
    sqlx::query("UPDATE outbox SET published_at = NULL WHERE account_id = $1")
        .bind(account.id)
        .execute(&mut primary)
        .await
        .unwrap();
    assert_delivered_exactly_once(&account, Some(outbox)).await;
    let inserted =
        workers_metric("tierstack_clickhouse_rows_inserted_total").await - inserted_before;

    assert!(
        inserted >= outbox as f64,
        "the events were not delivered again ({inserted} rows inserted)"
    );
}

#[tokio::test]
async fn clickhouse_outage_and_a_killed_worker_lose_nothing_and_count_nothing_twice() {
    let _serial = SERIAL.lock().await;
    let account = create_account("pipeline-outage").await;
    let load = {
        let account = TestAccount {
            id: account.id,
            api_key: account.api_key.clone(),
        };
        tokio::spawn(async move { create_payments(&account, 400, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // ClickHouse goes away mid-run: payments keep succeeding, analytics say 503, and the
    // events wait in the stream.
    tierctl(&["stop-component", "clickhouse"]);
    let (status, body) = get_json(
        &http(),
        &format!("{}/v1/analytics/payments", Tier::haproxy_url()),
        &account.api_key,
    )
    .await;
    assert_problem(status, &body, 503, "analytics-unavailable");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut redis = queue_redis()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let waiting: u64 = redis::cmd("XLEN")
            .arg(worker::STREAM)
            .query_async(&mut redis)
            .await
            .unwrap();
        if waiting > 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events did not queue up in the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A worker dies without warning while it holds read-but-unacknowledged entries.
    tierctl(&["stop-component", "worker-1", "--signal", "KILL"]);
    tokio::time::sleep(Duration::from_secs(1)).await;

    tierctl(&["start-component", "clickhouse"]);
    let created = load.await.expect("load task");
    // Its entries are claimed by worker-2 after the claim interval; worker-1 comes back
    // afterwards and reads whatever of its own is still pending.
    tokio::time::sleep(Duration::from_secs(4)).await;
    tierctl(&["start-component", "worker-1"]);

    assert_delivered_exactly_once(&account, Some(2 * created as i64)).await;
}

#[tokio::test]
async fn with_the_queue_down_events_wait_in_the_outbox_and_flow_when_it_returns() {
    let _serial = SERIAL.lock().await;
    let account = create_account("pipeline-queue-down").await;

    tierctl(&["stop-component", "redis-queue"]);
    let created = create_payments(&account, 50, 5).await;
    let mut primary = connect(&Tier::primary_url()).await;
    let unpublished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE account_id = $1 AND published_at IS NULL",
    )
    .bind(account.id)
    .fetch_one(&mut primary)
    .await
    .unwrap();
    tierctl(&["start-component", "redis-queue"]);

    assert_eq!(unpublished, 2 * created as i64, "events left the outbox");
    assert_delivered_exactly_once(&account, Some(2 * created as i64)).await;
}

#[tokio::test]
async fn an_entry_that_can_never_load_goes_to_the_dead_letter_stream_with_its_reason() {
    let _serial = SERIAL.lock().await;
    let mut redis = queue_redis()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let body = format!(
        r#"{{"not":"a payment event","marker":"{}"}}"#,
        Uuid::new_v4()
    );
    let id: String = redis::cmd("XADD")
        .arg(worker::STREAM)
        .arg("*")
        .arg(worker::event::FIELD)
        .arg(&body)
        .query_async(&mut redis)
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let dead = loop {
        let letters: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(worker::DEAD_LETTER_STREAM)
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        if let Some(letter) = letters
            .ids
            .into_iter()
            .find(|letter| letter.get::<String>("entry_id").as_deref() == Some(id.as_str()))
        {
            break letter;
        }
        assert!(Instant::now() < deadline, "the entry was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert_eq!(dead.get::<String>(worker::event::FIELD), Some(body));
    let reason: String = dead.get("reason").unwrap();
    assert!(reason.contains("not valid JSON"), "{reason}");
    // Dead-lettered means acknowledged and gone from the stream, so it blocks nothing.
    let remaining: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(worker::STREAM)
        .arg(&id)
        .arg(&id)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(remaining.ids.is_empty());
}
