//! Traces, metrics and logs, named by the OpenTelemetry semantic conventions.
//!
//! [`init`] installs, once, at the start of `main`:
//!
//! - **Logs** on stdout through `tracing`: compact text by default, one JSON object per line
//!   with `LOG_FORMAT=json`. A JSON line written inside a traced span carries its `trace_id`
//!   and `span_id`, so a log line leads to its trace. `RUST_LOG` sets the filter.
//! - **Traces**: `tracing` spans become OpenTelemetry spans, exported over OTLP when an
//!   endpoint is configured. W3C trace context is the propagator; [`inject`] and
//!   [`extract`] carry it across HTTP, [`current_traceparent`] and [`context_from_traceparent`]
//!   across the outbox and the stream.
//! - **Metrics**: one meter provider with two readers. The Prometheus reader always runs and
//!   backs [`Telemetry::metrics_page`] (the admin port's `/metrics`, for clusters that
//!   scrape); the OTLP reader runs when an endpoint is configured. Instruments come from
//!   [`meter`].
//!
//! Everything is configured by the standard variables: `OTEL_SDK_DISABLED`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_ENDPOINT` (and the
//! per-signal `..._TRACES_ENDPOINT`, `..._METRICS_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`grpc` or `http/protobuf`), `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
//! (default `parentbased_always_on`), `OTEL_METRIC_EXPORT_INTERVAL`, and
//! `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` set to `none` to turn one signal's
//! export off. Without an endpoint the service runs normally and says so once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry::metrics::{Histogram, Meter, UpDownCounter};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, InstrumentationScope, KeyValue, global};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Bucket boundaries, in seconds, for request durations: the ones the HTTP semantic
/// conventions recommend.
pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Bucket boundaries, in seconds, for short waits and holds (pool waits, session holds,
/// batch inserts): finer at the low end, where a healthy service lives.
pub const SHORT_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What `init` set up; keep it for the life of the process and call [`Telemetry::shutdown`]
/// before exiting so the last spans and metrics are flushed.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
    registry: prometheus::Registry,
}

/// One signal's export setting, from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Export {
    Otlp,
    Off,
}

fn export_setting(signal: &str) -> Export {
    let exporter = env(&format!("OTEL_{signal}_EXPORTER"));
    if exporter.as_deref() == Some("none") {
        return Export::Off;
    }
    let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")));
    if endpoint.is_some() {
        Export::Otlp
    } else {
        Export::Off
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Installs logging, tracing and metrics for a service whose default name is `service`
/// (`OTEL_SERVICE_NAME` overrides it). Call first thing in `main`, before any instrument is
/// created: instruments made earlier stay no-ops. Later calls (tests that start several
/// services in one process) return what the first one installed.
pub fn init(service: &'static str) -> Arc<Telemetry> {
    INSTALLED_HANDLE
        .get_or_init(|| Arc::new(install(service)))
        .clone()
}

/// `GET /metrics`: the process's metrics in the Prometheus text format. Empty until
/// [`init`] has run.
pub async fn metrics_page() -> Response {
    match INSTALLED_HANDLE.get() {
        Some(telemetry) => telemetry.metrics_page(),
        None => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], "").into_response(),
    }
}

static INSTALLED_HANDLE: OnceLock<Arc<Telemetry>> = OnceLock::new();

fn install(service: &'static str) -> Telemetry {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let registry = prometheus::Registry::new();
    if disabled {
        install_subscriber(None);
        tracing::info!("OTEL_SDK_DISABLED=true: no traces, no metrics; logs only");
        return Telemetry {
            tracer: None,
            meters: None,
            registry,
        };
    }

    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();

    global::set_text_map_propagator(TraceContextPropagator::new());
    let mut problems = Vec::new();

    // Traces. The provider exists even without an exporter: spans then still get ids, so
    // log lines and outbox events carry a trace context a caller can follow.
    let traces = export_setting("TRACES");
    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    if traces == Export::Otlp {
        match opentelemetry_otlp::SpanExporter::builder().build() {
            Ok(exporter) => {
                tracer_builder =
                    tracer_builder.with_batch_exporter(Reported::new(exporter, "traces"))
            }
            Err(error) => problems.push(("traces", "OTLP span exporter", error.to_string())),
        }
    }
    let tracer_provider = tracer_builder.build();
    global::set_tracer_provider(tracer_provider.clone());

    // Metrics: Prometheus always, OTLP when configured.
    let mut meter_builder = SdkMeterProvider::builder().with_resource(resource);
    match opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .scope_info_enabled(false)
        .build()
    {
        Ok(reader) => meter_builder = meter_builder.with_reader(reader),
        Err(error) => problems.push(("metrics", "Prometheus reader", error.to_string())),
    }
    let metrics = export_setting("METRICS");
    if metrics == Export::Otlp {
        match opentelemetry_otlp::MetricExporter::builder().build() {
            Ok(exporter) => {
                meter_builder =
                    meter_builder.with_periodic_exporter(Reported::new(exporter, "metrics"))
            }
            Err(error) => problems.push(("metrics", "OTLP metric exporter", error.to_string())),
        }
    }
    let meter_provider = meter_builder.build();
    global::set_meter_provider(meter_provider.clone());

    let tracer = tracer_provider.tracer_with_scope(scope());
    install_subscriber(Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_level(false)
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_filter(span_filter())
            .boxed(),
    ));

    // Logged only now: until the subscriber is installed there is nowhere to log to.
    for (signal, part, error) in problems {
        tracing::warn!(signal, part, %error, "telemetry part failed to build; not exported");
    }
    let protocol = env("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|| "http/protobuf".into());
    match (traces, metrics) {
        (Export::Off, Export::Off) => tracing::info!(
            "no OTLP endpoint configured (OTEL_EXPORTER_OTLP_ENDPOINT): traces and metrics \
             are not exported; /metrics still serves Prometheus"
        ),
        (traces, metrics) => tracing::info!(
            traces = traces == Export::Otlp,
            metrics = metrics == Export::Otlp,
            protocol,
            "exporting telemetry over OTLP"
        ),
    }

    Telemetry {
        tracer: Some(tracer_provider),
        meters: Some(meter_provider),
        registry,
    }
}

impl Telemetry {
    /// The metrics in the Prometheus text format, for `GET /metrics`.
    pub fn metrics_page(&self) -> Response {
        use prometheus::Encoder as _;
        let encoder = prometheus::TextEncoder::new();
        let mut body = Vec::new();
        match encoder.encode(&self.registry.gather(), &mut body) {
            Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type())], body).into_response(),
            Err(error) => {
                tracing::error!(%error, "cannot encode the metrics");
                axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }

    /// Flushes and stops the exporters. Spans and metrics recorded after this are dropped.
    pub fn shutdown(&self) {
        if let Some(tracer) = &self.tracer
            && let Err(error) = tracer.shutdown()
        {
            tracing::debug!(%error, "tracer shutdown");
        }
        if let Some(meters) = &self.meters
            && let Err(error) = meters.shutdown()
        {
            tracing::debug!(%error, "meter shutdown");
        }
    }
}

/// An exporter that reports a collector outage once, and its end once, instead of the
/// SDK's error line per failed export (one every few seconds for as long as it lasts).
/// What could not be exported is dropped either way: telemetry never holds up the service.
#[derive(Debug)]
struct Reported<E> {
    inner: E,
    signal: &'static str,
    failing: AtomicBool,
}

impl<E> Reported<E> {
    fn new(inner: E, signal: &'static str) -> Self {
        Self {
            inner,
            signal,
            failing: AtomicBool::new(false),
        }
    }

    fn note(&self, result: OTelSdkResult) -> OTelSdkResult {
        let signal = self.signal;
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(signal, "the OTLP collector accepts exports again");
                }
            }
            Err(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        signal,
                        %error,
                        "the OTLP collector does not accept exports; dropping telemetry until it does"
                    );
                }
            }
        }
        Ok(())
    }
}

impl<E: SpanExporter> SpanExporter for Reported<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.note(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Reported<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.note(result)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("tierstack")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// The meter every Tierstack instrument comes from.
pub fn meter() -> Meter {
    global::meter_with_scope(scope())
}

/// Which spans become OpenTelemetry spans: ours at `info` and above, and none from the
/// libraries underneath, whose spans would otherwise flood the collector (the exporter's own
/// HTTP and gRPC calls among them, which would trace themselves).
fn span_filter() -> Targets {
    Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("h2", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper_util", tracing::level_filters::LevelFilter::OFF)
        .with_target("tonic", tracing::level_filters::LevelFilter::OFF)
        .with_target("tower", tracing::level_filters::LevelFilter::OFF)
        .with_target("reqwest", tracing::level_filters::LevelFilter::OFF)
        .with_target("opentelemetry", tracing::level_filters::LevelFilter::OFF)
        .with_target(
            "opentelemetry_sdk",
            tracing::level_filters::LevelFilter::OFF,
        )
        .with_target(
            "opentelemetry_otlp",
            tracing::level_filters::LevelFilter::OFF,
        )
        .with_target("sqlx", tracing::level_filters::LevelFilter::OFF)
        // The clickhouse crate's own spans start traces of their own; the worker's
        // `clickhouse.insert` span covers the same work, linked to the events' traces.
        .with_target("clickhouse", tracing::level_filters::LevelFilter::OFF)
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

fn install_subscriber(otel: Option<BoxedLayer>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = env("LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .event_format(JsonLines)
            .fmt_fields(NoSpanFields)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_target(false)
            .with_filter(filter)
            .boxed()
    };
    // A second init (in tests) is harmless, so its error is ignored.
    let _ = tracing_subscriber::registry()
        .with(otel)
        .with(logs)
        .try_init();
}

/// One JSON object per log line, with the trace and span ids of the span it was written in.
///
/// Written here because tracing-subscriber's JSON format cannot add fields, and the crates
/// that can are not released against this OpenTelemetry version.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = serde_json::Map::new();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), now.into());
        let meta = event.metadata();
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(span) = ctx.lookup_current() {
            line.insert("span".into(), span.name().into());
        }
        let context = tracing::Span::current().context();
        let span_context = context.span().span_context().clone();
        if span_context.is_valid() {
            line.insert(
                "trace_id".into(),
                span_context.trace_id().to_string().into(),
            );
            line.insert("span_id".into(), span_context.span_id().to_string().into());
        }
        event.record(&mut JsonFields(&mut line));
        let text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Span fields as the JSON lines need them: not at all (a line names its span and carries
/// its trace and span ids). The default formats every field of every span as text when
/// the span is created, which on a busy service is a measurable part of tracing's cost.
struct NoSpanFields;

impl<'writer> FormatFields<'writer> for NoSpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: Writer<'writer>,
        _fields: R,
    ) -> std::fmt::Result {
        Ok(())
    }
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// Writes the current span's trace context into outgoing request headers.
pub fn inject(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// The trace context a caller sent, to become the parent of this request's span.
pub fn extract(headers: &HeaderMap) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

/// The current span's context as a W3C `traceparent` value, when there is one: stored with
/// an outbox event so the worker's spans join the request's trace.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// The parent context a stored `traceparent` names; an empty context when it is malformed.
pub fn context_from_traceparent(traceparent: &str) -> Context {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Links `span` to each of `others` (up to the SDK's limit of 128 links per span): for one
/// operation done on behalf of many traces, such as a batch insert.
pub fn link_spans(span: &tracing::Span, others: &[tracing::Span]) {
    for other in others.iter().take(128) {
        let context = other.context();
        let other_span = context.span();
        let span_context = other_span.span_context();
        if span_context.is_sampled() {
            span.add_link(span_context.clone());
        }
    }
}

/// The HTTP server instruments of the semantic conventions.
struct HttpInstruments {
    duration: Histogram<f64>,
    active: UpDownCounter<i64>,
}

fn http_instruments() -> &'static HttpInstruments {
    static INSTRUMENTS: OnceLock<HttpInstruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = meter();
        HttpInstruments {
            duration: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Duration of HTTP server requests.")
                .with_boundaries(REQUEST_DURATION_BUCKETS.to_vec())
                .build(),
            active: meter
                .i64_up_down_counter("http.server.active_requests")
                .with_unit("{request}")
                .with_description("Number of active HTTP server requests.")
                .build(),
        }
    })
}

/// The method as the semantic conventions name it: the standard ones as they are (without
/// an allocation per request), anything else as `_OTHER`, so that a client cannot create a
/// metric series per made-up method.
fn method_name(method: &axum::http::Method) -> opentelemetry::StringValue {
    use axum::http::Method;
    let name: &'static str = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    };
    name.into()
}

/// Middleware for a whole router: one server span per request, a child of the caller's
/// trace context, and the `http.server.*` metrics by method, route and status.
///
/// Add it with `Router::layer`, so that the matched route is known: axum applies such a
/// layer to each route.
pub async fn http_server(request: Request, next: Next) -> Response {
    let instruments = http_instruments();
    let method = method_name(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    // Probes and scrapes arrive every second from every load balancer and Prometheus:
    // they are counted in the metrics, but a trace each would bury the traces that matter.
    let untraced = matches!(route.as_deref(), Some("/livez" | "/readyz" | "/metrics"));
    let span = if untraced {
        tracing::Span::none()
    } else {
        let name = match &route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        };
        tracing::info_span!(
        "http.server",
        otel.name = name,
        otel.kind = "server",
        http.request.method = %method,
        http.route = route.as_deref(),
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        )
    };
    if !untraced {
        let _ = span.set_parent(extract(request.headers()));
    }

    let active_attributes = [KeyValue::new("http.request.method", method.clone())];
    instruments.active.add(1, &active_attributes);
    let started = Instant::now();
    let response = {
        use tracing::Instrument as _;
        next.run(request).instrument(span.clone()).await
    };
    let elapsed = started.elapsed().as_secs_f64();
    instruments.active.add(-1, &active_attributes);

    let status = response.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let mut attributes = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("http.response.status_code", i64::from(status)),
    ];
    if let Some(route) = route {
        attributes.push(KeyValue::new("http.route", route));
    }
    instruments.duration.record(elapsed, &attributes);
    response
}

/// The span `make` builds when the current span is being traced (it exists and its trace is
/// sampled), and a disabled span otherwise. Work done inside a sampled request or event
/// joins its trace; a background loop's polling starts no trace every few milliseconds;
/// and a request that sampling left out pays for no child spans at all, which is most of
/// what tracing costs (the request's own span is still made: it carries the decision on
/// to the processor and the outbox).
pub fn child_span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    let current = tracing::Span::current();
    if current.is_none() || !current.context().span().span_context().is_sampled() {
        tracing::Span::none()
    } else {
        make()
    }
}

/// A span for work done on behalf of a stored `traceparent` (the relay, the consumer),
/// made by `make` and joined to that trace; a disabled span when the trace was not
/// sampled or the value is malformed, so unsampled events cost no spans.
pub fn span_for_traceparent(
    traceparent: &str,
    make: impl FnOnce() -> tracing::Span,
) -> tracing::Span {
    let parent = context_from_traceparent(traceparent);
    if !parent.span().span_context().is_sampled() {
        return tracing::Span::none();
    }
    let span = make();
    let _ = span.set_parent(parent);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_traceparent_becomes_the_parent_context() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = context_from_traceparent(parent);
        let span = context.span();
        let span_context = span.span_context();
        assert!(span_context.is_valid());
        assert!(span_context.is_remote());
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let malformed = context_from_traceparent("not a traceparent");
        assert!(!malformed.span().span_context().is_valid());
    }

    #[test]
    fn without_a_span_there_is_no_traceparent_to_store() {
        assert_eq!(current_traceparent(), None);
    }
}
