//! Tests that watch or disturb shared parts of the tier (the replica, PgBouncer's pools,
//! the primary's session list), so they take a lock and run one at a time. `cargo test`
//! runs test binaries one after another, so they never overlap with the other files either.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use psp_sim::Behaviour;
use tokio::sync::Mutex;
use uuid::Uuid;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// What the database showed at its busiest moment while payments waited on the processor.
#[derive(Debug, Default)]
struct Watch {
    idle_in_transaction: i64,
    pgbouncer_server_connections_held: i64,
    samples: u32,
}

/// Sessions that have sat idle inside a transaction on the primary for over 200 ms: held
/// across something that is not database work. The tier's workers run short transactions
/// all the time; those are idle between statements for a round trip only, and not counted.
async fn idle_in_transaction(primary: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = 'tierstack' AND state LIKE 'idle in transaction%' \
           AND now() - state_change > interval '200 milliseconds'",
    )
    .fetch_one(primary)
    .await
    .unwrap()
}

/// Server connections PgBouncer has assigned to clients of one database alias: `sv_active`
/// in `SHOW POOLS`. The admin console speaks only the simple protocol, so psql asks.
fn pgbouncer_active_servers(alias: &str) -> i64 {
    let output = Command::new("psql")
        .args([
            &Tier::pgbouncer_admin_url(),
            "-At",
            "-F",
            "|",
            "-c",
            "SHOW POOLS",
        ])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    // Columns: database, user, cl_active, cl_waiting, (cl_active_cancel_req,
    // cl_waiting_cancel_req,) sv_active, ... ; the header is not printed with -A -t, so
    // the position of sv_active is found from the column count PgBouncer 1.18 uses.
    text.lines()
        .filter(|line| line.split('|').next() == Some(alias))
        .map(|line| {
            let columns: Vec<&str> = line.split('|').collect();
            let sv_active = if columns.len() >= 16 { 6 } else { 4 };
            columns[sv_active].parse::<i64>().unwrap()
        })
        .sum()
}

/// Creates `n` payments concurrently through `api_url` and, while they wait on the
/// processor, samples the primary and PgBouncer.
async fn watch_payments_in_flight(api_url: &str, psp: &psp_sim::RunningSim, n: usize) -> Watch {
    let account = create_account("session-watch").await;
    let client = http();
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let (client, url, key) = (client.clone(), api_url.to_owned(), account.api_key.clone());
            tokio::spawn(async move {
                post_payment(
                    &client,
                    &url,
                    &key,
                    &format!("watch-{i}"),
                    &payment_body(10),
                )
                .await
            })
        })
        .collect();

    // Wait until every payment has reached the processor, then sample while they wait on it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while psp.state.summary().attempts < n as u64 {
        assert!(
            Instant::now() < deadline,
            "payments never reached the processor"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut primary = connect(&Tier::primary_url()).await;
    let mut watch = Watch::default();
    let sampling_ends = Instant::now() + Duration::from_millis(500);
    while Instant::now() < sampling_ends {
        watch.idle_in_transaction = watch
            .idle_in_transaction
            .max(idle_in_transaction(&mut primary).await);
        watch.pgbouncer_server_connections_held = watch
            .pgbouncer_server_connections_held
            .max(pgbouncer_active_servers("tierstack_probe"));
        watch.samples += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    for request in requests {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    watch
}

#[tokio::test]
async fn no_session_is_held_while_the_processor_works() {
    let _serial = SERIAL.lock().await;
    let psp = psp_sim::spawn(Behaviour::fixed(Duration::from_secs(1)))
        .await
        .unwrap();
    let mut config = api_config(&psp.url());
    // A PgBouncer alias of its own, so its pool shows only this instance's sessions.
    config.db.writer_url = Tier::probe_writer_url();
    let api = spawn_api(config).await;

    let watch = watch_payments_in_flight(&api.url, &psp, 10).await;

    assert!(watch.samples >= 5, "{watch:?}");
    assert_eq!(watch.idle_in_transaction, 0, "{watch:?}");
    assert_eq!(watch.pgbouncer_server_connections_held, 0, "{watch:?}");
    assert_eq!(api.db.stats().sessions_over_hold_warn, 0);
}

/// The same measurement against the demonstration mode must see the sessions: this is
/// what proves the test above can fail.
#[tokio::test]
async fn demonstration_mode_is_seen_holding_sessions_across_the_processor_call() {
    let _serial = SERIAL.lock().await;
    let psp = psp_sim::spawn(Behaviour::fixed(Duration::from_secs(1)))
        .await
        .unwrap();
    let mut config = api_config(&psp.url());
    config.db.writer_url = Tier::probe_writer_url();
    config.demo_hold_session_across_psp = true;
    let api = spawn_api(config).await;

    let watch = watch_payments_in_flight(&api.url, &psp, 10).await;

    assert_eq!(watch.idle_in_transaction, 10, "{watch:?}");
    assert_eq!(watch.pgbouncer_server_connections_held, 10, "{watch:?}");
    assert!(api.db.stats().sessions_over_hold_warn >= 10);
}

/// Pauses WAL replay on the replica for the life of the guard.
struct ReplayPaused(sqlx::PgConnection);

impl ReplayPaused {
    async fn start() -> Self {
        let mut replica = connect(&Tier::replica_url()).await;
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&mut replica)
            .await
            .unwrap();
        Self(replica)
    }

    async fn resume(mut self) {
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&mut self.0)
            .await
            .unwrap();
    }
}

/// Creates a payment while the replica's replay is paused and lists the account's
/// payments at once. Returns the payment as created and whether the list showed it: the
/// list is read from a replica (and never cached), so a replica cannot show it yet.
async fn create_then_list_with_replay_paused(
    base: &str,
    account: &TestAccount,
    amount: i64,
) -> (serde_json::Value, bool) {
    let client = http();
    let paused = ReplayPaused::start().await;
    let (status, _, payment) = post_payment(
        &client,
        base,
        &account.api_key,
        &Uuid::new_v4().to_string(),
        &payment_body(amount),
    )
    .await;
    let (list_status, list) =
        get_json(&client, &format!("{base}/v1/payments"), &account.api_key).await;
    paused.resume().await;
    assert_eq!(status, 201, "{payment}");
    assert_eq!(list_status, 200, "{list}");
    let listed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == payment["id"]);
    (payment, listed)
}

#[tokio::test]
async fn reads_are_served_by_the_replica() {
    let _serial = SERIAL.lock().await;
    let account = create_account("replica-reads").await;
    let base = Tier::haproxy_url();
    let client = http();

    // With replay paused, a new payment exists on the primary but not on the replica: if
    // the API reads from the replica, it cannot list it yet.
    let (payment, listed_while_paused) =
        create_then_list_with_replay_paused(&base, &account, 300).await;
    assert!(
        !listed_while_paused,
        "the list did not come from the replica"
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, list) =
            get_json(&client, &format!("{base}/v1/payments"), &account.api_key).await;
        assert_eq!(status, 200);
        if list["data"][0]["id"] == payment["id"] {
            assert_eq!(list["data"][0]["status"], "succeeded");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "payment never appeared on the replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_key_created_a_moment_ago_works_before_the_replica_has_it() {
    let _serial = SERIAL.lock().await;
    let paused = ReplayPaused::start().await;
    let mut primary = connect(&Tier::primary_url()).await;
    let (_, api_key) = api::auth::create_account(&mut primary, "fresh-key", "standard")
        .await
        .unwrap();

    let (status, body) = get_json(
        &http(),
        &format!("{}/v1/payments", Tier::haproxy_url()),
        &api_key,
    )
    .await;
    paused.resume().await;

    assert_eq!(status, 200, "a valid key was refused: {body}");
}

#[tokio::test]
async fn with_the_replica_stopped_reads_are_served_by_the_primary() {
    let _serial = SERIAL.lock().await;
    let account = create_account("replica-down").await;
    let base = Tier::haproxy_url();
    let client = http();
    let (status, _, payment) = post_payment(
        &client,
        &base,
        &account.api_key,
        &Uuid::new_v4().to_string(),
        &payment_body(400),
    )
    .await;
    assert_eq!(status, 201);
    let id = payment["id"].as_str().unwrap().to_owned();
    wait_on_replica(
        "SELECT count(*) FROM payments WHERE id = $1",
        id.parse().unwrap(),
        1,
    )
    .await;

    tierctl(&["stop-component", "postgres-replica"]);
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let (status, _) = get_json(
            &client,
            &format!("{base}/v1/payments/{id}"),
            &account.api_key,
        )
        .await;
        statuses.push((status, started.elapsed()));
    }
    let (list_status, list) =
        get_json(&client, &format!("{base}/v1/payments"), &account.api_key).await;
    tierctl(&["start-component", "postgres-replica"]);

    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|(_, took)| *took < Duration::from_secs(3)),
        "{statuses:?}"
    );
    assert_eq!(list_status, 200);
    assert_eq!(list["data"][0]["id"], id.as_str());

    // Once the replica is back, reads return to it (replay-paused reads miss new rows).
    wait_ready(&base).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, listed_while_paused) = create_then_list_with_replay_paused(&base, &account, 401).await;
    assert!(!listed_while_paused, "reads did not return to the replica");
}

#[tokio::test]
async fn with_redis_down_the_api_keeps_answering_and_returns_to_redis_when_it_is_back() {
    let _serial = SERIAL.lock().await;
    let account = create_account("redis-down").await;
    let base = Tier::haproxy_url();
    let client = http();
    let (status, _, payment) = post_payment(
        &client,
        &base,
        &account.api_key,
        &Uuid::new_v4().to_string(),
        &payment_body(500),
    )
    .await;
    assert_eq!(status, 201);
    let url = format!("{base}/v1/payments/{}", payment["id"].as_str().unwrap());
    wait_on_replica(
        "SELECT count(*) FROM payments WHERE id = $1",
        payment["id"].as_str().unwrap().parse().unwrap(),
        1,
    )
    .await;
    let local_before = tier_metric("tierstack_rate_limit_local_decisions_total", &[]).await;

    tierctl(&["stop-component", "redis"]);
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let response = client
            .get(&url)
            .bearer_auth(&account.api_key)
            .send()
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status(), 200, "read {i} failed with Redis down");
        assert!(response.headers().contains_key("ratelimit-remaining"));
    }
    let (status, _, _) = post_payment(
        &client,
        &base,
        &account.api_key,
        &Uuid::new_v4().to_string(),
        &payment_body(501),
    )
    .await;
    let breakers_open = tier_metric(BREAKER_OPEN, &[]).await;
    let local_after = tier_metric("tierstack_rate_limit_local_decisions_total", &[]).await;
    tierctl(&["start-component", "redis"]);

    assert_eq!(status, 201, "a payment failed with Redis down");
    assert!(
        slowest < Duration::from_millis(500),
        "slowest read {slowest:?}"
    );
    assert_eq!(breakers_open, 2.0, "the breakers did not open");
    assert!(
        local_after > local_before,
        "limits did not fall back to local"
    );

    // Back: within a few breaker cool-downs both instances use Redis again, and repeated
    // reads of the same payment become cache hits.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for _ in 0..4 {
            let _ = client.get(&url).bearer_auth(&account.api_key).send().await;
        }
        if tier_metric(BREAKER_OPEN, &[]).await == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the instances did not return to Redis"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hits_before = tier_metric(CACHE_LOOKUPS, HIT).await;
    for _ in 0..6 {
        let response = client
            .get(&url)
            .bearer_auth(&account.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let hits_after = tier_metric(CACHE_LOOKUPS, HIT).await;
    assert!(
        hits_after >= hits_before + 4.0,
        "{hits_before} -> {hits_after}"
    );
}

/// The tier's processor simulator's behaviour.
async fn tier_psp() -> serde_json::Value {
    let url = format!("{}/admin/behaviour", Tier::psp_url());
    http().get(&url).send().await.unwrap().json().await.unwrap()
}

async fn set_tier_psp(behaviour: serde_json::Value) {
    let url = format!("{}/admin/behaviour", Tier::psp_url());
    let response = http().put(&url).json(&behaviour).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn no_reader_sees_the_old_status_after_a_payment_settles() {
    // Through HAProxy and both instances, which share the Redis cache. The processor fails
    // at first, so the payment stays pending while readers fill the cache with it; then a
    // retry settles it, and every read that starts after the retry answered must see
    // `succeeded`.
    let _serial = SERIAL.lock().await;
    // Readers hammering one payment would exceed the standard plan's rate.
    let account = create_account_on_plan("stale-status", "loadtest").await;
    let base = Tier::haproxy_url();
    let client = http();

    let original = tier_psp().await;
    let mut failing = original.clone();
    failing["failure_rate"] = 1.0.into();
    set_tier_psp(failing).await;
    let (status, _, _) = post_payment(
        &client,
        &base,
        &account.api_key,
        "stale-1",
        &payment_body(75),
    )
    .await;
    assert_eq!(status, 502);
    let mut primary = connect(&Tier::primary_url()).await;
    let payment_id: Uuid = sqlx::query_scalar(
        "SELECT payment_id FROM idempotency_keys WHERE account_id = $1 AND key = 'stale-1'",
    )
    .bind(account.id)
    .fetch_one(&mut primary)
    .await
    .unwrap();
    wait_on_replica("SELECT count(*) FROM payments WHERE id = $1", payment_id, 1).await;
    let url = format!("{base}/v1/payments/{payment_id}");
    let hits_before = tier_metric(CACHE_LOOKUPS, HIT).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, key, stop) = (
                client.clone(),
                url.clone(),
                account.api_key.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut reads = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let (status, body) = get_json(&client, &url, &key).await;
                    assert_eq!(status, 200, "{body}");
                    reads.push((started, body["status"].as_str().unwrap().to_owned()));
                }
                reads
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    set_tier_psp(original).await;
    let (status, _, settled) = post_payment(
        &client,
        &base,
        &account.api_key,
        "stale-1",
        &payment_body(75),
    )
    .await;
    let settled_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(status, 201, "{settled}");
    assert_eq!(settled["status"], "succeeded");

    let (mut before, mut after) = (0, 0);
    for reader in readers {
        for (started, status) in reader.await.unwrap() {
            if started > settled_at {
                assert_eq!(status, "succeeded", "a read after settlement saw {status}");
                after += 1;
            } else if status == "pending" {
                before += 1;
            }
        }
    }
    assert!(before > 0, "the readers never saw the pending payment");
    assert!(after > 0, "no read happened after settlement");
    assert!(
        tier_metric(CACHE_LOOKUPS, HIT).await > hits_before,
        "the reads were not served by the cache"
    );
}

#[tokio::test]
async fn sigterm_during_traffic_fails_no_in_flight_request() {
    let _serial = SERIAL.lock().await;
    let psp = psp_sim::spawn(Behaviour::fixed(Duration::from_millis(400)))
        .await
        .unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_api"))
        .arg("serve")
        .env("API_LISTEN", format!("127.0.0.1:{port}"))
        .env("API_SHUTDOWN_DRAIN_MS", "300")
        .env("API_SHUTDOWN_GRACE_MS", "5000")
        .env("DB_WRITER_URL", Tier::writer_url())
        .env("DB_READER_URLS", Tier::reader_urls().join(","))
        .env("PSP_URL", psp.url())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("api starts");
    wait_ready(&url).await;
    let account = create_account("sigterm").await;
    let client = http();

    let in_flight: Vec<_> = (0..20)
        .map(|i| {
            let (client, url, key) = (client.clone(), url.clone(), account.api_key.clone());
            tokio::spawn(async move {
                post_payment(&client, &url, &key, &format!("term-{i}"), &payment_body(10)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let readiness = client.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(readiness.status(), 503, "readiness turns false first");

    for request in in_flight {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, 201, "an in-flight request failed: {body}");
    }
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the process exits within its grace period")
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
}
