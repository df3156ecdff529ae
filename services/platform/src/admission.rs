//! Admission control: fail fast and clean instead of queueing without bound.
//!
//! A process accepts at most `admission_limit` requests at once. The next one is not queued:
//! it is answered at once with 503 `overloaded` and `Retry-After`, so a client (or the load
//! balancer) can go elsewhere or back off, and the requests already admitted keep their
//! latency. Every admitted request also has a deadline; one that runs past it is answered
//! with 503 `deadline-exceeded` instead of holding the client for as long as the slowest
//! dependency allows.

use std::time::Duration;

use axum::BoxError;
use axum::error_handling::HandleErrorLayer;
use axum::response::{IntoResponse, Response};
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
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(rejection as ErrorHandler))
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::new(admission_limit))
        .layer(TimeoutLayer::new(deadline))
}

fn rejection(error: BoxError) -> std::future::Ready<Response> {
    std::future::ready(problem_for(&error).into_response())
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
