//! Liveness and readiness, for the load balancer and the orchestrator.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use platform::problem::{Problem, ProblemType};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process runs and answers. Never depends on the database, so a database
/// outage does not make the orchestrator restart every instance.
#[utoipa::path(get, path = "/livez", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn livez() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: this instance should receive traffic. False while draining for shutdown,
/// and while the database has not answered the last background probe.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Draining or database unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    if app.shutdown.is_draining() {
        return Problem::new(ProblemType::ShuttingDown, "this instance is shutting down")
            .into_response();
    }
    if !app.database_ready() {
        return Problem::new(
            ProblemType::DatabaseUnavailable,
            "the database did not answer the last readiness probe",
        )
        .into_response();
    }
    Json(Health { status: "ready" }).into_response()
}
