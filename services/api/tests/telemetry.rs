//! Telemetry against the running tier: the OTLP collector (rotel, printing the spans it
//! receives to its log), Prometheus scraping every service, and the services' JSON logs.
//!
//! The tests change the processor's behaviour and read shared logs, so they take a lock and
//! run one at a time.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::sync::Mutex;
use uuid::Uuid;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// One span as the collector printed it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    parent_id: String,
    id: String,
    name: String,
    kind: String,
}

/// Reads the spans out of rotel's detailed debug log. Its layout, per export: a
/// `ResourceSpans` block with the resource's attributes (`-> service.name: Str(api)`),
/// then one block per span with `Trace ID`, `Parent ID`, `ID`, `Name` and `Kind` lines.
/// Links print their trace id as `-> Trace ID: ...` and are skipped.
fn collected_spans() -> Vec<Span> {
    let text = std::fs::read_to_string(env("TIERSTACK_OTLP_LOG")).unwrap_or_default();
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut current: Option<Span> = None;
    for raw in text.lines() {
        let line = strip_ansi(raw);
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("-> service.name: Str(") {
            service = rest.trim_end_matches(')').to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim().to_owned());
        match key {
            "Trace ID" => {
                spans.extend(current.take());
                current = Some(Span {
                    service: service.clone(),
                    trace_id: value,
                    parent_id: String::new(),
                    id: String::new(),
                    name: String::new(),
                    kind: String::new(),
                });
            }
            "Parent ID" => current.iter_mut().for_each(|s| s.parent_id = value.clone()),
            "ID" => current.iter_mut().for_each(|s| s.id = value.clone()),
            "Name" => current.iter_mut().for_each(|s| s.name = value.clone()),
            "Kind" => current.iter_mut().for_each(|s| s.kind = value.clone()),
            _ => {}
        }
    }
    spans.extend(current);
    spans
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip up to and including the final letter of the escape sequence.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A fresh W3C trace context: a random trace id and a parent span id of our own.
fn new_trace() -> (String, String) {
    let trace_id = Uuid::new_v4().simple().to_string();
    let parent = Uuid::new_v4().simple().to_string()[..16].to_owned();
    let header = format!("00-{trace_id}-{parent}-01");
    (trace_id, header)
}

/// Creates one payment inside the trace `traceparent` names.
async fn traced_payment(account: &TestAccount, traceparent: &str) -> (u16, Value) {
    let response = http()
        .post(format!("{}/v1/payments", Tier::haproxy_url()))
        .bearer_auth(&account.api_key)
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .header("traceparent", traceparent)
        .json(&payment_body(4321))
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `clients` concurrent clients, each creating a payment, reading it back and listing
/// payments, until `duration` has passed. Returns the number of requests answered 2xx;
/// anything else fails the test.
async fn load(account: &TestAccount, clients: usize, duration: Duration) -> usize {
    let base = Tier::haproxy_url();
    let until = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (base, key, client) = (base.clone(), account.api_key.clone(), http());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            while Instant::now() < until {
                let (status, _, body) = post_payment(
                    &client,
                    &base,
                    &key,
                    &Uuid::new_v4().to_string(),
                    &payment_body(250),
                )
                .await;
                assert_eq!(status, 201, "{body}");
                let id = body["id"].as_str().unwrap().to_owned();
                for url in [
                    format!("{base}/v1/payments/{id}"),
                    format!("{base}/v1/payments?limit=5"),
                ] {
                    let (status, body) = get_json(&client, &url, &key).await;
                    // A read of a payment created a moment ago may reach the replica first.
                    assert!(status == 200 || status == 404, "{status}: {body}");
                }
                ok += 3;
            }
            ok
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}

#[tokio::test]
async fn a_payment_is_one_trace_from_the_request_to_its_analytics_row() {
    let _serial = SERIAL.lock().await;
    let account = create_account_on_plan("traced", "loadtest").await;
    // The traced payments go in the middle of a short load run, so the trace must come out
    // whole from a busy tier, not an idle one.
    let load_account = create_account_on_plan("traced-load", "loadtest").await;
    let background =
        tokio::spawn(async move { load(&load_account, 6, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // First a payment whose caller decided not to sample (flags 00): parent-based sampling
    // must follow that decision in every service.
    let (unsampled_id, unsampled) = new_trace();
    let unsampled = format!("{}-00", &unsampled[..unsampled.len() - 3]);
    let (status, body) = traced_payment(&account, &unsampled).await;
    assert_eq!(status, 201, "{body}");
    let (trace_id, traceparent) = new_trace();
    let (status, body) = traced_payment(&account, &traceparent).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "succeeded");
    let answered = background.await.unwrap();
    assert!(
        answered > 100,
        "the load run answered only {answered} requests"
    );

    // The workers' spans end when ClickHouse has accepted the row; then the batch
    // exporter sends them within its schedule delay.
    let wanted = [
        ("api", "POST /v1/payments", "SPAN_KIND_SERVER"),
        ("api", "POST /v1/charges", "SPAN_KIND_CLIENT"),
        ("psp-sim", "POST /v1/charges", "SPAN_KIND_SERVER"),
        ("worker", "publish payments.events", "SPAN_KIND_PRODUCER"),
        ("worker", "process payments.events", "SPAN_KIND_CONSUMER"),
    ];
    let deadline = Instant::now() + Duration::from_secs(45);
    let spans = loop {
        let spans: Vec<Span> = collected_spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        let complete = wanted.iter().all(|(service, name, kind)| {
            spans
                .iter()
                .any(|s| s.service == *service && s.name == *name && s.kind == *kind)
        });
        if complete {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} incomplete at the collector; it has: {:#?}",
            spans
                .iter()
                .map(|s| format!("{} {} {}", s.service, s.name, s.kind))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // The shape: the api's server span is the child of the caller's span; the processor's
    // server span is the child of the api's client span; the worker's spans are children
    // of the api's server span (its context travelled in the outbox event).
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let find = |service: &str, name: &str, kind: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.name == name && s.kind == kind)
            .unwrap()
    };
    let server = find("api", "POST /v1/payments", "SPAN_KIND_SERVER");
    assert_eq!(server.parent_id, traceparent[36..52], "api span's parent");
    let client = find("api", "POST /v1/charges", "SPAN_KIND_CLIENT");
    let processor = find("psp-sim", "POST /v1/charges", "SPAN_KIND_SERVER");
    assert_eq!(processor.parent_id, client.id);
    for name in ["publish payments.events", "process payments.events"] {
        let kind = if name.starts_with("publish") {
            "SPAN_KIND_PRODUCER"
        } else {
            "SPAN_KIND_CONSUMER"
        };
        assert_eq!(find("worker", name, kind).parent_id, server.id, "{name}");
    }
    // Every database session and Redis call of the request is a span in the trace, under
    // the request.
    // By now the unsampled payment's spans would have been exported too, had there been any.
    let leaked: Vec<String> = collected_spans()
        .into_iter()
        .filter(|s| s.trace_id == unsampled_id)
        .map(|s| format!("{} {}", s.service, s.name))
        .collect();
    assert!(
        leaked.is_empty(),
        "an unsampled trace was exported: {leaked:?}"
    );

    let sessions: BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.service == "api" && by_id.contains_key(s.parent_id.as_str()))
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        sessions.contains("claim_payment") && sessions.contains("settle_payment"),
        "the request's database sessions are missing: {sessions:?}"
    );
}

#[tokio::test]
async fn a_log_line_written_in_a_request_carries_its_trace_and_no_secret() {
    let _serial = SERIAL.lock().await;
    let account = create_account_on_plan("traced-logs", "loadtest").await;
    let behaviour_url = format!("{}/admin/behaviour", Tier::psp_url());
    let original: Value = http()
        .get(&behaviour_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut failing = original.clone();
    failing["failure_rate"] = 1.0.into();
    http()
        .put(&behaviour_url)
        .json(&failing)
        .send()
        .await
        .unwrap();

    let (trace_id, traceparent) = new_trace();
    let (status, body) = traced_payment(&account, &traceparent).await;
    http()
        .put(&behaviour_url)
        .json(&original)
        .send()
        .await
        .unwrap();
    assert_eq!(status, 502, "{body}");

    // The api warns about each failed processor attempt, inside the request's span.
    let run_dir = env("TIERSTACK_RUN_DIR");
    let mut lines: Vec<Value> = Vec::new();
    let mut everything = String::new();
    for instance in ["api-1", "api-2"] {
        let text = std::fs::read_to_string(format!("{run_dir}/logs/{instance}.log")).unwrap();
        lines.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|l| l["trace_id"] == trace_id.as_str()),
        );
        everything.push_str(&text);
    }
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["message"] == "processor answered 5xx"),
        "no warning with trace {trace_id}: {lines:#?}"
    );
    for line in &lines {
        let span_id = line["span_id"].as_str().unwrap_or_default();
        assert!(
            span_id.len() == 16 && span_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
        assert!(line["timestamp"].is_string() && line["target"].is_string());
    }
    let secret = account.api_key.rsplit('_').next().unwrap();
    assert!(
        !everything.contains(secret),
        "an API key's secret reached the logs"
    );
}

#[tokio::test]
async fn every_dashboard_panel_has_data_in_prometheus_after_a_short_load_run() {
    let _serial = SERIAL.lock().await;
    let account = create_account_on_plan("dashboards", "loadtest").await;
    let started = Instant::now();
    let answered = load(&account, 8, Duration::from_secs(8)).await;
    assert!(answered > 100, "only {answered} requests answered");

    // Prometheus scrapes every second; the workers' lag gauges are sampled every 2 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let range = started.elapsed().as_secs() + 5;
    let dashboards: Vec<String> = std::fs::read_dir(format!(
        "{}/deploy/dashboards/grafana",
        env!("CARGO_MANIFEST_DIR").trim_end_matches("/services/api")
    ))
    .unwrap()
    .map(|e| e.unwrap().path().display().to_string())
    .filter(|p| p.ends_with(".json"))
    .collect();
    assert!(dashboards.len() >= 4, "dashboards: {dashboards:?}");

    let script = format!(
        "{}/deploy/dashboards/check-panels.py",
        env!("CARGO_MANIFEST_DIR").trim_end_matches("/services/api")
    );
    let output = Command::new("python3")
        .arg(&script)
        .args(["--prometheus", &env("TIERSTACK_PROMETHEUS_URL")])
        .args(["--range", &range.to_string()])
        .args(&dashboards)
        .output()
        .expect("python3 runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "panels without data:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.lines().filter(|l| l.starts_with("ok")).count() >= 20);
}

/// Starts the tier's psp-sim binary on a free port with `otel` as its only telemetry
/// settings, makes three charges, stops it, and returns what it logged.
async fn run_psp_sim_with(otel: &[(&str, &str)]) -> Vec<Value> {
    run_psp_sim(otel, None).await
}

/// The same, with each charge sent inside the trace `traceparent` names.
async fn run_psp_sim(otel: &[(&str, &str)], traceparent: Option<&str>) -> Vec<Value> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(format!("{}/psp-sim", env("TIERSTACK_BIN_DIR")))
        .env_clear()
        .env("PSP_SIM_LISTEN", format!("127.0.0.1:{port}"))
        .env("PSP_SIM_LATENCY_MEDIAN_MS", "1")
        .env("LOG_FORMAT", "json")
        .envs(otel.iter().copied())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("psp-sim starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = http();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(format!("{base}/livez")).send().await.is_err() {
        assert!(Instant::now() < deadline, "psp-sim did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..3 {
        let started = Instant::now();
        let mut request = client.post(format!("{base}/v1/charges"));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request
            .header("Idempotency-Key", format!("telemetry-{i}"))
            .json(&serde_json::json!({"amount": 100, "currency": "EUR", "reference": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a charge was slow"
        );
        // Long enough for several export attempts at the intervals set below.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let charges = parse_metric(
        &metrics,
        "http_server_request_duration_seconds_count",
        &[("http_route", "/v1/charges")],
    );
    assert_eq!(charges, Some(3.0), "{metrics}");

    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let output = child.wait_with_output().await.unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("every log line is JSON"))
        .collect()
}

fn count(lines: &[Value], message: &str) -> usize {
    lines.iter().filter(|l| l["message"] == message).count()
}

#[tokio::test]
async fn without_a_collector_a_service_serves_metrics_and_says_so_once() {
    let lines = run_psp_sim_with(&[]).await;
    assert_eq!(
        count(
            &lines,
            "no OTLP endpoint configured (OTEL_EXPORTER_OTLP_ENDPOINT): traces and metrics are \
             not exported; /metrics still serves Prometheus"
        ),
        1,
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l["level"] != "ERROR"), "{lines:#?}");
}

#[tokio::test]
async fn an_unreachable_collector_is_reported_once_and_costs_no_request_anything() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let lines = run_psp_sim_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ])
    .await;
    let unreachable =
        "the OTLP collector does not accept exports; dropping telemetry until it does";
    let reports: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == unreachable)
        .collect();
    // Once per signal, although both kept failing for about two seconds.
    assert_eq!(reports.len(), 2, "{lines:#?}");
    assert!(reports.iter().all(|l| l["level"] == "WARN"));
    assert!(lines.iter().all(|l| l["level"] != "ERROR"), "{lines:#?}");
}

#[tokio::test]
async fn otlp_over_http_reaches_the_collector_too() {
    // The tier's services export over gRPC; this one uses OTLP/HTTP with protobuf, under a
    // service name of its own.
    let (trace_id, traceparent) = new_trace();
    let service = format!("psp-sim-http-{}", &trace_id[..8]);
    let attributes = format!("service.instance.id={service}-1,deployment.environment.name=probe");
    let lines = run_psp_sim(
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &env("TIERSTACK_OTLP_HTTP_URL"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", &service),
            ("OTEL_RESOURCE_ATTRIBUTES", &attributes),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
        Some(&traceparent),
    )
    .await;
    assert!(lines.iter().all(|l| l["level"] != "WARN"), "{lines:#?}");

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let servers = collected_spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id && s.service == service)
            .filter(|s| s.name == "POST /v1/charges" && s.kind == "SPAN_KIND_SERVER")
            .count();
        if servers == 3 {
            // OTEL_RESOURCE_ATTRIBUTES reached the collector as resource attributes.
            let log = strip_ansi(&std::fs::read_to_string(env("TIERSTACK_OTLP_LOG")).unwrap());
            assert!(log.contains(&format!("-> service.instance.id: Str({service}-1)")));
            assert!(log.contains("-> deployment.environment.name: Str(probe)"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{servers} of 3 spans arrived over OTLP/HTTP"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
