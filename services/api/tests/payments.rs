//! The payments API through the real tier: HAProxy, two `api` processes, PgBouncer, the
//! primary and its replica, and the processor simulator. These tests share the tier and run
//! in parallel; each works in an account of its own.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use psp_sim::Behaviour;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn fifty_concurrent_identical_requests_make_one_payment_and_one_charge() {
    let account = create_account("idempotency").await;
    let base = Tier::haproxy_url();
    let key = Uuid::new_v4().to_string();
    let body = payment_body(4200);
    let client = http();

    let requests = (0..50).map(|_| {
        let (client, base, api_key, key, body) = (
            client.clone(),
            base.clone(),
            account.api_key.clone(),
            key.clone(),
            body.clone(),
        );
        tokio::spawn(async move { post_payment(&client, &base, &api_key, &key, &body).await })
    });
    let mut payment_ids = HashSet::new();
    for request in requests {
        let (status, _, payment) = request.await.unwrap();
        assert_eq!(status, 201, "every duplicate gets the payment: {payment}");
        assert_eq!(payment["status"], "succeeded");
        payment_ids.insert(payment["id"].as_str().unwrap().to_owned());
    }

    assert_eq!(payment_ids.len(), 1, "one payment for one key");
    let payment_id = payment_ids.into_iter().next().unwrap();
    assert_eq!(charges_for(&Tier::psp_url(), &payment_id).await, 1);

    let mut primary = connect(&Tier::primary_url()).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE account_id = $1")
        .bind(account.id)
        .fetch_one(&mut primary)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn retry_with_same_key_replays_and_different_body_is_rejected() {
    let account = create_account("replay").await;
    let base = Tier::haproxy_url();
    let client = http();
    let key = Uuid::new_v4().to_string();

    let (status, headers, first) =
        post_payment(&client, &base, &account.api_key, &key, &payment_body(700)).await;
    assert_eq!(status, 201);
    assert!(headers.get("idempotent-replayed").is_none());

    // The same request, spelled differently (lower-case currency), is the same request.
    let same = json!({ "currency": "eur", "amount": 700, "description": "integration test" });
    let (status, headers, replay) =
        post_payment(&client, &base, &account.api_key, &key, &same).await;
    assert_eq!(status, 201);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay, first);

    let (status, _, problem) =
        post_payment(&client, &base, &account.api_key, &key, &payment_body(701)).await;
    assert_problem(status, &problem, 422, "idempotency-conflict");
    assert_eq!(
        charges_for(&Tier::psp_url(), first["id"].as_str().unwrap()).await,
        1
    );
}

#[tokio::test]
async fn another_tenants_payment_is_not_found() {
    let owner = create_account("owner").await;
    let intruder = create_account("intruder").await;
    let base = Tier::haproxy_url();
    let client = http();

    let (status, _, payment) = post_payment(
        &client,
        &base,
        &owner.api_key,
        &Uuid::new_v4().to_string(),
        &payment_body(100),
    )
    .await;
    assert_eq!(status, 201);
    let id = payment["id"].as_str().unwrap();
    wait_on_replica(
        "SELECT count(*) FROM payments WHERE id = $1",
        id.parse().unwrap(),
        1,
    )
    .await;

    let url = format!("{base}/v1/payments/{id}");
    let (status, body) = get_json(&client, &url, &owner.api_key).await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], id);

    let (status, body) = get_json(&client, &url, &intruder.api_key).await;
    assert_problem(status, &body, 404, "not-found");

    let (status, list) = get_json(&client, &format!("{base}/v1/payments"), &intruder.api_key).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn client_mistakes_get_problem_json_4xx_never_5xx() {
    let account = create_account("validation").await;
    let base = Tier::haproxy_url();
    let client = http();
    let send = |body: String, content_type: &'static str, key: Option<&'static str>| {
        let mut request = client
            .post(format!("{base}/v1/payments"))
            .bearer_auth(&account.api_key)
            .header("Content-Type", content_type)
            .body(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(content_type, "application/problem+json");
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let json = "application/json";

    let (s, b) = send(
        r#"{"amount": 10, "currency": "EUR""#.into(),
        json,
        Some("k1"),
    )
    .await;
    assert_problem(s, &b, 400, "malformed-body");

    let (s, b) = send(
        r#"{"amount": "ten", "currency": "EUR"}"#.into(),
        json,
        Some("k2"),
    )
    .await;
    assert_problem(s, &b, 422, "validation");
    assert_eq!(b["errors"][0]["pointer"], "/amount");

    let (s, b) = send(
        r#"{"amount": 10, "currency": "ZZZ"}"#.into(),
        json,
        Some("k3"),
    )
    .await;
    assert_problem(s, &b, 422, "validation");
    assert_eq!(b["errors"][0]["pointer"], "/currency");

    let (s, b) = send(
        r#"{"amount": -1, "currency": "EUR"}"#.into(),
        json,
        Some("k4"),
    )
    .await;
    assert_problem(s, &b, 422, "validation");

    let huge = r#"{"amount": 99999999999999999999, "currency": "EUR"}"#;
    let (s, b) = send(huge.into(), json, Some("k5")).await;
    assert_problem(s, &b, 422, "validation");

    let (s, b) = send(r#"{"amount": 10, "currency": "EUR"}"#.into(), json, None).await;
    assert_problem(s, &b, 400, "validation");
    assert_eq!(b["errors"][0]["pointer"], "Idempotency-Key");

    let big = format!(
        r#"{{"amount": 10, "currency": "EUR", "description": "{}"}}"#,
        "x".repeat(20_000)
    );
    let (s, b) = send(big, json, Some("k6")).await;
    assert_problem(s, &b, 413, "payload-too-large");

    let (s, b) = send("amount=10".into(), "text/plain", Some("k7")).await;
    assert_problem(s, &b, 415, "unsupported-media-type");

    // Nothing above may have created a payment.
    let mut primary = connect(&Tier::primary_url()).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE account_id = $1")
        .bind(account.id)
        .fetch_one(&mut primary)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn missing_or_wrong_api_key_is_401_with_a_challenge() {
    let base = Tier::haproxy_url();
    let client = http();

    let response = client
        .get(format!("{base}/v1/payments"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );

    let forged = format!("tsk_{}_{}", "0".repeat(16), "f".repeat(64));
    let (status, body) = get_json(&client, &format!("{base}/v1/payments"), &forged).await;
    assert_problem(status, &body, 401, "unauthorized");
}

#[tokio::test]
async fn pagination_walks_every_payment_once_newest_first_while_new_ones_arrive() {
    let account = create_account("pagination").await;
    let base = Tier::haproxy_url();
    let client = http();

    let mut created = Vec::new();
    for i in 0..23 {
        let (status, _, payment) = post_payment(
            &client,
            &base,
            &account.api_key,
            &format!("page-{i}"),
            &payment_body(100 + i),
        )
        .await;
        assert_eq!(status, 201);
        created.push(payment["id"].as_str().unwrap().to_owned());
    }
    let last: Uuid = created.last().unwrap().parse().unwrap();
    wait_on_replica("SELECT count(*) FROM payments WHERE id = $1", last, 1).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(after) => format!("{base}/v1/payments?limit=5&starting_after={after}"),
            None => format!("{base}/v1/payments?limit=5"),
        };
        let (status, page) = get_json(&client, &url, &account.api_key).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()),
        );
        pages += 1;

        // A payment created while paging is newer than every cursor: it must not appear.
        if pages == 2 {
            let (status, _, _) = post_payment(
                &client,
                &base,
                &account.api_key,
                "page-late",
                &payment_body(999),
            )
            .await;
            assert_eq!(status, 201);
        }
        if page["has_more"] == false {
            assert!(page["next_starting_after"].is_null());
            break;
        }
        cursor = Some(page["next_starting_after"].as_str().unwrap().to_owned());
    }

    assert_eq!(pages, 5);
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every payment once, newest first");

    let (status, problem) = get_json(
        &client,
        &format!("{base}/v1/payments?limit=0"),
        &account.api_key,
    )
    .await;
    assert_problem(status, &problem, 422, "validation");
    let (status, problem) = get_json(
        &client,
        &format!("{base}/v1/payments?starting_after=nope"),
        &account.api_key,
    )
    .await;
    assert_problem(status, &problem, 422, "validation");
}

#[tokio::test]
async fn over_the_in_flight_limit_requests_get_an_immediate_503_with_retry_after() {
    let psp = psp_sim::spawn(Behaviour::fixed(Duration::from_millis(800)))
        .await
        .unwrap();
    let mut config = api_config(&psp.url());
    config.admission_limit = 3;
    let api = spawn_api(config).await;
    let account = create_account("admission").await;
    let client = http();

    let slow: Vec<_> = (0..3)
        .map(|i| {
            let (client, url, key) = (client.clone(), api.url.clone(), account.api_key.clone());
            tokio::spawn(async move {
                post_payment(&client, &url, &key, &format!("slow-{i}"), &payment_body(10)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    for i in 0..5 {
        let started = Instant::now();
        let (status, headers, problem) = post_payment(
            &client,
            &api.url,
            &account.api_key,
            &format!("rejected-{i}"),
            &payment_body(10),
        )
        .await;
        let took = started.elapsed();
        assert_problem(status, &problem, 503, "overloaded");
        assert_eq!(headers["retry-after"], "1");
        assert!(took < Duration::from_millis(200), "rejection took {took:?}");
    }

    // Health stays outside the limit, so the load balancer still sees the instance.
    let ready = client
        .get(format!("{}/readyz", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    for request in slow {
        let (status, _, _) = request.await.unwrap();
        assert_eq!(status, 201, "admitted requests complete");
    }
}

#[tokio::test]
async fn an_exhausted_pool_answers_503_pool_timeout_quickly() {
    // The demonstration mode holds a session across a 600 ms processor call; with a pool of
    // two and a 200 ms acquire timeout, most of eight concurrent payments cannot get one.
    let psp = psp_sim::spawn(Behaviour::fixed(Duration::from_millis(600)))
        .await
        .unwrap();
    let mut config = api_config(&psp.url());
    config.demo_hold_session_across_psp = true;
    config.db.writer_pool_size = 2;
    config.db.acquire_timeout = Duration::from_millis(200);
    let api = spawn_api(config).await;
    let account = create_account("pool-timeout").await;
    let client = http();

    let requests: Vec<_> = (0..8)
        .map(|i| {
            let (client, url, key) = (client.clone(), api.url.clone(), account.api_key.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result =
                    post_payment(&client, &url, &key, &format!("pt-{i}"), &payment_body(10)).await;
                (result, started.elapsed())
            })
        })
        .collect();

    let mut timeouts = 0;
    for request in requests {
        let ((status, headers, body), took) = request.await.unwrap();
        if status == 503 {
            assert_problem(status, &body, 503, "pool-timeout");
            assert_eq!(headers["retry-after"], "1");
            assert!(took < Duration::from_millis(1000), "failure took {took:?}");
            timeouts += 1;
        } else {
            assert_eq!(status, 201, "{body}");
        }
    }
    assert!(timeouts >= 4, "only {timeouts} of 8 timed out");
    assert!(api.db.stats().pool_timeouts >= 4);
}

#[tokio::test]
async fn processor_outage_leaves_payment_pending_and_a_retry_completes_it_once() {
    let psp = psp_sim::spawn(Behaviour {
        failure_rate: 1.0,
        ..Behaviour::fixed(Duration::from_millis(5))
    })
    .await
    .unwrap();
    let api = spawn_api(api_config(&psp.url())).await;
    let account = create_account("outage").await;
    let client = http();

    let (status, headers, problem) = post_payment(
        &client,
        &api.url,
        &account.api_key,
        "outage-1",
        &payment_body(50),
    )
    .await;
    assert_problem(status, &problem, 502, "upstream-failure");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(psp.state.summary().attempts, 3, "one call and two retries");

    psp.state
        .set_behaviour(Behaviour::fixed(Duration::from_millis(5)));
    let (status, headers, payment) = post_payment(
        &client,
        &api.url,
        &account.api_key,
        "outage-1",
        &payment_body(50),
    )
    .await;
    assert_eq!(status, 201, "{payment}");
    assert_eq!(payment["status"], "succeeded");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(psp.state.summary().charges, 1);
}

#[tokio::test]
async fn openapi_document_describes_every_route() {
    let client = http();
    let response = client
        .get(format!("{}/openapi.json", Tier::haproxy_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();

    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/payments", "post"),
        ("/v1/payments", "get"),
        ("/v1/payments/{id}", "get"),
        ("/livez", "get"),
        ("/readyz", "get"),
    ] {
        assert!(paths[path].get(method).is_some(), "{method} {path} missing");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());

    let (status, body) = get_json(&client, &format!("{}/nope", Tier::haproxy_url()), "").await;
    assert_problem(status, &body, 404, "not-found");
}

#[tokio::test]
async fn a_key_gets_its_plan_limit_across_both_instances_and_no_more() {
    // The `tight` plan allows 20 requests per 10 s; 60 arrive at once, spread by HAProxy
    // over both instances, which share the count through Redis.
    let account = create_account_on_plan("rate-limited", "tight").await;
    let base = Tier::haproxy_url();
    let client = http();
    let requests: Vec<_> = (0..60)
        .map(|_| {
            let (client, url, key) = (
                client.clone(),
                format!("{base}/v1/payments"),
                account.api_key.clone(),
            );
            tokio::spawn(async move { client.get(url).bearer_auth(key).send().await.unwrap() })
        })
        .collect();

    let mut allowed = 0;
    for request in requests {
        let response = request.await.unwrap();
        let headers = response.headers().clone();
        assert_eq!(headers["ratelimit-limit"], "20");
        assert!(headers.contains_key("ratelimit-remaining"));
        assert!(headers.contains_key("ratelimit-reset"));
        match response.status().as_u16() {
            200 => allowed += 1,
            429 => {
                assert!(headers.contains_key("retry-after"));
                let problem: Value = response.json().await.unwrap();
                assert_problem(429, &problem, 429, "rate-limited");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!((20..=21).contains(&allowed), "{allowed} requests allowed");
}

/// An API instance of its own (with a fast processor) and one settled payment, read once
/// so that its key is authenticated and the payment is in the cache.
struct CachedPayment {
    api: TestApi,
    _psp: psp_sim::RunningSim,
    account: TestAccount,
    id: String,
    url: String,
}

async fn cached_payment(name: &str) -> CachedPayment {
    let psp = psp_sim::spawn(Behaviour::fixed(Duration::from_millis(5)))
        .await
        .unwrap();
    let api = spawn_api(api_config(&psp.url())).await;
    let account = create_account(name).await;
    let client = http();
    let (status, _, payment) =
        post_payment(&client, &api.url, &account.api_key, name, &payment_body(9)).await;
    assert_eq!(status, 201);
    let id = payment["id"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/payments/{id}", api.url);
    let (status, _) = get_json(&client, &url, &account.api_key).await;
    assert_eq!(status, 200);
    CachedPayment {
        api,
        _psp: psp,
        account,
        id,
        url,
    }
}

#[tokio::test]
async fn a_cached_read_never_touches_postgresql() {
    // `_psp` is bound so that the processor lives as long as the test.
    let CachedPayment {
        api,
        _psp,
        account,
        url,
        ..
    } = cached_payment("cached-read").await;
    let client = http();

    let sessions_before = api.db.stats().sessions;
    // This instance's own counter: other tests' instances share the process's metrics.
    let hits = || api.cache.stats.hits.load(Ordering::Relaxed);
    let hits_before = hits();
    for _ in 0..5 {
        let (status, body) = get_json(&client, &url, &account.api_key).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "succeeded");
    }
    assert_eq!(
        api.db.stats().sessions,
        sessions_before,
        "a cached read opened a session"
    );
    assert_eq!(hits(), hits_before + 5);
}

#[tokio::test]
async fn when_a_hot_key_expires_one_request_per_process_loads_it() {
    let CachedPayment {
        api,
        _psp,
        account,
        id: payment_id,
        url,
    } = cached_payment("stampede").await;
    let client = http();

    // The entry expires (deleted here), then 40 readers arrive at once.
    let redis = redis::Client::open(Tier::redis_url()).unwrap();
    let mut connection = redis.get_multiplexed_async_connection().await.unwrap();
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("payment:{}:{payment_id}", account.id))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let sessions_before = api.db.stats().sessions;

    let readers: Vec<_> = (0..40)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.clone(), account.api_key.clone());
            tokio::spawn(async move { get_json(&client, &url, &key).await.0 })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), 200);
    }

    let loads = api.db.stats().sessions - sessions_before;
    assert_eq!(loads, 1, "{loads} database loads for one expired key");
}
