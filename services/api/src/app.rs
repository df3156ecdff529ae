//! The router, its state, and the OpenAPI document generated from the same handlers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use platform::db::Database;
use platform::problem::{FieldError, Problem, ProblemType};
use platform::shutdown::Shutdown;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::ApiConfig;
use crate::psp::PspClient;
use crate::routes::{health, payments};

/// Everything a handler may use. Note what is absent: no pool and no connection. Handlers
/// reach the database only through [`Database`]'s session closures.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub psp: Arc<PspClient>,
    pub config: Arc<ApiConfig>,
    pub shutdown: Shutdown,
    database_ready: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(config: ApiConfig, db: Database, shutdown: Shutdown) -> anyhow::Result<Self> {
        Ok(Self {
            psp: Arc::new(PspClient::new(config.psp.clone())?),
            db,
            config: Arc::new(config),
            shutdown,
            database_ready: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn database_ready(&self) -> bool {
        self.database_ready.load(Ordering::Relaxed)
    }

    /// Probes the database once now, then every `interval` in the background. Readiness
    /// reads the last result instead of probing per request.
    pub async fn start_readiness_probe(&self, interval: Duration) {
        let probe = move |app: AppState| async move {
            let ok = app
                .db
                .ping_writer(interval.max(Duration::from_millis(500)))
                .await;
            let was = app.database_ready.swap(ok, Ordering::Relaxed);
            if was != ok {
                if ok {
                    tracing::info!("database reachable; ready");
                } else {
                    tracing::warn!("database unreachable; not ready");
                }
            }
        };
        probe(self.clone()).await;

        let app = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                probe(app.clone()).await;
            }
        });
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tierstack payments API",
        description = "A multi-tenant payments API. Errors are RFC 9457 problem+json; \
                       their `type` URIs are stable."
    ),
    modifiers(&BearerAuth),
    components(schemas(Problem, FieldError))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An account's API key: `tsk_<key id>_<secret>`"))
                    .build(),
            ),
        );
    }
}

/// Builds the whole HTTP surface.
///
/// The payment routes sit behind admission control; the health routes do not, so that an
/// instance at its limit still answers its load balancer.
pub fn router(state: AppState) -> Router {
    let admission =
        platform::admission::layer(state.config.admission_limit, state.config.request_deadline);

    let (payment_routes, payments_doc) = OpenApiRouter::new()
        .routes(routes!(payments::create_payment, payments::list_payments))
        .routes(routes!(payments::get_payment))
        .layer(admission)
        .split_for_parts();
    let (health_routes, health_doc) = OpenApiRouter::new()
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
        .split_for_parts();

    let mut doc = ApiDoc::openapi();
    doc.merge(payments_doc);
    doc.merge(health_doc);
    let doc = Arc::new(doc);

    payment_routes
        .merge(health_routes)
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async {
            Problem::new(ProblemType::NotFound, "no such route; see /openapi.json").into_response()
        })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                ProblemType::MethodNotAllowed,
                "this route does not accept that method; see /openapi.json",
            )
            .into_response()
        })
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("handler panicked");
            Problem::internal().into_response()
        }))
        // Request spans and failure events at debug: an overloaded instance answers many
        // 503s on purpose, and one log line each would add load exactly when it hurts.
        // Failures that matter are logged where they happen, with their cause.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// The OpenAPI document, for tools that want it without a running server.
pub fn openapi_json() -> serde_json::Value {
    let state_free = OpenApiRouter::<AppState>::new()
        .routes(routes!(payments::create_payment, payments::list_payments))
        .routes(routes!(payments::get_payment))
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz));
    let (_, routes_doc) = state_free.split_for_parts();
    let mut doc = ApiDoc::openapi();
    doc.merge(routes_doc);
    serde_json::to_value(doc).expect("the OpenAPI document serialises")
}
