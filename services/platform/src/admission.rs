//! Admission control: fail fast and clean instead of queueing without bound.
//!
//! A process accepts at most `admission_limit` requests at once. The next one is not queued:
//! it is answered at once with 503 `overloaded` and `Retry-After`, so a client (or the load
//! balancer) can go elsewhere or back off, and the requests already admitted keep their
//! latency. Every admitted request also has a deadline; one that runs past it is answered
//! with 503 `deadline-exceeded` instead of holding the client for as long as the slowest
//! dependency allows.

use std::sync::OnceLock;
use std::time::Duration;

use axum::BoxError;
use axum::error_handling::HandleErrorLayer;
use axum::response::{IntoResponse, Response};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;

use crate::problem::{Problem, ProblemType};

/// The layer stack returned by [`layer`].
pub type AdmissionLayer = ServiceBuilder<
    Stack<
        TimeoutLayer,
        Stack<
            GlobalConcurrencyLimitLayer,
            Stack<LoadShedLayer, Stack<HandleErrorLayer<ErrorHandler, ()>, Identity>>,
        >,
    >,
>;

type ErrorHandler = fn(BoxError) -> std::future::Ready<Response>;

/// Admission control for a router: at most `admission_limit` requests in flight (shared by
/// every route the layer wraps), and each bounded by `deadline`.
///
/// The global limit matters: axum applies a layer to each route separately, and a plain
/// concurrency limit would give every route a limit of its own.
pub fn layer(admission_limit: usize, deadline: Duration) -> AdmissionLayer {
    // Both reasons start at zero, so the series exist before the first refusal.
    for reason in ["overloaded", "deadline_exceeded"] {
        shed_counter().add(0, &[KeyValue::new("tierstack.admission.reason", reason)]);
    }
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(rejection as ErrorHandler))
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::new(admission_limit))
        .layer(TimeoutLayer::new(deadline))
}

fn rejection(error: BoxError) -> std::future::Ready<Response> {
    let reason = if error.is::<tower::load_shed::error::Overloaded>() {
        "overloaded"
    } else if error.is::<tower::timeout::error::Elapsed>() {
        "deadline_exceeded"
    } else {
        "error"
    };
    shed_counter().add(1, &[KeyValue::new("tierstack.admission.reason", reason)]);
    std::future::ready(problem_for(&error).into_response())
}

/// `tierstack.admission.shed`: requests answered 503 by admission control, by reason.
fn shed_counter() -> &'static Counter<u64> {
    static SHED: OnceLock<Counter<u64>> = OnceLock::new();
    SHED.get_or_init(|| {
        crate::telemetry::meter()
            .u64_counter("tierstack.admission.shed")
            .with_unit("{request}")
            .with_description(
                "Requests refused by admission control: overloaded (in-flight limit) or \
                 deadline_exceeded.",
            )
            .build()
    })
}

fn problem_for(error: &BoxError) -> Problem {
    if error.is::<tower::load_shed::error::Overloaded>() {
        Problem::overloaded()
    } else if error.is::<tower::timeout::error::Elapsed>() {
        Problem::new(
            ProblemType::DeadlineExceeded,
            "the request did not complete within its deadline; it is safe to retry with the \
             same Idempotency-Key",
        )
        .retry_after(Duration::from_secs(1))
    } else {
        tracing::error!(error = %error, "unexpected middleware error");
        Problem::internal()
    }
}
