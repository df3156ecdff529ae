//! What the integration tests share: the addresses of the running tier, accounts, and
//! in-process instances of the API and the processor simulator.
//!
//! The tier (PostgreSQL primary and replica, PgBouncer, two `api` processes behind HAProxy,
//! `psp-sim`) is started by `make test` through `deploy/local/tierctl`, which writes the
//! addresses to `tier.env`; the Makefile exports them to this process.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use api::config::{ApiConfig, PspConfig};
use api::startup::Application;
use platform::analytics::ClickHouseConfig;
use platform::db::DbConfig;
use platform::redis::RedisConfig;
use platform::shutdown::Shutdown;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with `make test`, which starts the local tier \
             and exports its addresses"
        )
    })
}

/// The running tier's addresses.
pub struct Tier;

impl Tier {
    pub fn haproxy_url() -> String {
        env("TIERSTACK_HAPROXY_URL")
    }
    pub fn psp_url() -> String {
        env("TIERSTACK_PSP_URL")
    }
    pub fn primary_url() -> String {
        env("DB_PRIMARY_URL")
    }
    pub fn replica_url() -> String {
        env("DB_REPLICA_URL")
    }
    pub fn writer_url() -> String {
        env("DB_WRITER_URL")
    }
    pub fn probe_writer_url() -> String {
        env("DB_PROBE_WRITER_URL")
    }
    pub fn reader_urls() -> Vec<String> {
        env("DB_READER_URLS")
            .split(',')
            .map(str::to_owned)
            .collect()
    }
    pub fn pgbouncer_admin_url() -> String {
        env("PGBOUNCER_ADMIN_URL")
    }
    pub fn redis_url() -> String {
        env("REDIS_URL")
    }
    pub fn clickhouse_url() -> String {
        env("CLICKHOUSE_URL")
    }
    pub fn tierctl() -> String {
        env("TIERSTACK_TIERCTL")
    }
}

pub async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// A fresh tenant with its API key, already visible on the replica (authentication reads
/// from replicas).
pub struct TestAccount {
    pub id: Uuid,
    pub api_key: String,
}

pub async fn create_account(name: &str) -> TestAccount {
    create_account_on_plan(name, "standard").await
}

pub async fn create_account_on_plan(name: &str, plan: &str) -> TestAccount {
    let mut primary = connect(&Tier::primary_url()).await;
    let (id, api_key) = api::auth::create_account(&mut primary, name, plan)
        .await
        .expect("account created");
    wait_on_replica("SELECT count(*) FROM accounts WHERE id = $1", id, 1).await;
    TestAccount { id, api_key }
}

/// Waits until `sql` (a count with one uuid parameter) reaches `expected` on the replica.
pub async fn wait_on_replica(sql: &'static str, id: Uuid, expected: i64) {
    let mut replica = connect(&Tier::replica_url()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count: i64 = sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&mut replica)
            .await
            .expect("replica query");
        if count >= expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica did not catch up within 10 s ({count} of {expected})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

pub fn payment_body(amount: i64) -> Value {
    json!({ "amount": amount, "currency": "EUR", "description": "integration test" })
}

/// POSTs a payment and returns status, headers and the JSON body.
pub async fn post_payment(
    client: &reqwest::Client,
    base: &str,
    api_key: &str,
    idempotency_key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = client
        .post(format!("{base}/v1/payments"))
        .bearer_auth(api_key)
        .header("Idempotency-Key", idempotency_key)
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let json = response.json().await.unwrap_or(Value::Null);
    (status, headers, json)
}

pub async fn get_json(client: &reqwest::Client, url: &str, api_key: &str) -> (u16, Value) {
    let response = client
        .get(url)
        .bearer_auth(api_key)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Settings for an API instance started by a test, against the running tier.
pub fn api_config(psp_url: &str) -> ApiConfig {
    ApiConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admission_limit: 256,
        request_deadline: Duration::from_secs(10),
        max_body_bytes: 16 * 1024,
        shutdown_drain: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(10),
        demo_hold_session_across_psp: false,
        admin_listen: None,
        cache_enabled: true,
        cache_ttl: Duration::from_secs(60),
        auth_cache_ttl: Duration::from_secs(30),
        rate_limit_plans: "standard=1000/1,tight=20/10".to_owned(),
        rate_limit_fail_closed: false,
        psp: PspConfig {
            url: psp_url.to_owned(),
            timeout: Duration::from_secs(5),
            max_retries: 2,
            retry_backoff: Duration::from_millis(20),
        },
        db: DbConfig {
            writer_url: Tier::writer_url(),
            reader_urls: Tier::reader_urls(),
            writer_pool_size: 10,
            reader_pool_size: 10,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(10),
            session_hold_warn: Duration::from_millis(250),
            writer_transaction_pooling: true,
        },
        redis: RedisConfig {
            url: Some(Tier::redis_url()),
            pool_size: 16,
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(250),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_millis(500),
        },
        outbox_enabled: true,
        clickhouse: ClickHouseConfig {
            url: Some(Tier::clickhouse_url()),
            database: "tierstack".to_owned(),
            timeout: Duration::from_secs(2),
        },
    }
}

/// An API instance running inside the test process.
pub struct TestApi {
    pub url: String,
    pub shutdown: Shutdown,
    pub db: platform::db::Database,
    pub cache: std::sync::Arc<api::cache::PaymentCache>,
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.stop();
    }
}

pub async fn spawn_api(config: ApiConfig) -> TestApi {
    let shutdown = Shutdown::new();
    let application = Application::build(config, shutdown.clone())
        .await
        .expect("api builds");
    let url = format!("http://{}", application.local_addr());
    let db = application.state().db.clone();
    let cache = application.state().cache.clone();
    tokio::spawn(application.run_until_stopped());
    wait_ready(&url).await;
    TestApi {
        url,
        shutdown,
        db,
        cache,
    }
}

pub async fn wait_ready(base: &str) {
    let client = http();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{base} did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Number of charges the shared simulator made for a payment.
pub async fn charges_for(psp_url: &str, payment_id: &str) -> usize {
    let (status, body) = get_json(
        &http(),
        &format!("{psp_url}/v1/charges?reference={payment_id}"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    body["data"].as_array().expect("charge list").len()
}

/// Asserts an RFC 9457 body of the given type and returns it.
pub fn assert_problem(status: u16, body: &Value, expected_status: u16, slug: &str) {
    assert_eq!(status, expected_status, "body: {body}");
    assert_eq!(
        body["type"],
        format!("https://tierstack.dev/problems/{slug}"),
        "body: {body}"
    );
    assert_eq!(body["status"], expected_status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

/// Payment reads by cache outcome; with [`HIT`], the cache hits.
pub const CACHE_LOOKUPS: &str = "tierstack_cache_lookups_total";
pub const HIT: &[(&str, &str)] = &[("tierstack_cache_result", "hit")];
/// 1 per instance while its Redis circuit breaker is open.
pub const BREAKER_OPEN: &str = "tierstack_circuit_breaker_open";

/// The sum of the samples of `name` in a `/metrics` page whose labels include all of
/// `labels`; `None` when there is no such sample.
pub fn parse_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let matches = labels.iter().all(|(k, v)| {
            series_labels
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        if matches && let Ok(value) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// The value of one metric (summed over the series matching `labels`) in an instance's
/// `/metrics`.
pub async fn metric(base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics answered")
        .text()
        .await
        .unwrap();
    parse_metric(&text, name, labels)
        .unwrap_or_else(|| panic!("{name} {labels:?} not in {base}/metrics"))
}

/// The same metric summed over the tier's `api` instances, read from their admin ports.
pub async fn tier_metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for base in env("TIERSTACK_API_ADMIN_URLS").split(',') {
        sum += metric(base, name, labels).await;
    }
    sum
}

/// Runs `tierctl` against the running tier, e.g. `["stop-component", "redis"]`.
pub fn tierctl(args: &[&str]) {
    let status = Command::new(Tier::tierctl())
        .args(args)
        .args([
            "--tier",
            &env("TIERSTACK_TIER"),
            "--run-dir",
            &env("TIERSTACK_RUN_DIR"),
        ])
        .status()
        .expect("tierctl runs");
    assert!(status.success(), "tierctl {args:?} failed");
}
