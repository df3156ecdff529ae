//! The router, its state, and the OpenAPI document generated from the same handlers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use platform::db::Database;
use platform::problem::{FieldError, Problem, ProblemType};
use platform::redis::Redis;
use platform::shutdown::Shutdown;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth;
use crate::cache::PaymentCache;
use crate::config::ApiConfig;
use crate::psp::PspClient;
use crate::ratelimit::{self, RateLimiter};
use crate::routes::{analytics, health, payments};

/// Everything a handler may use. Note what is absent: no pool and no connection. Handlers
/// reach the database only through [`Database`]'s session closures.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub psp: Arc<PspClient>,
    pub config: Arc<ApiConfig>,
    pub shutdown: Shutdown,
    pub redis: Option<Redis>,
    pub cache: Arc<PaymentCache>,
    pub limiter: Arc<RateLimiter>,
    pub keys: Arc<auth::KeyCache>,
    /// The analytics store, when `CLICKHOUSE_URL` is set.
    pub analytics: Option<clickhouse::Client>,
    database_ready: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(config: ApiConfig, db: Database, shutdown: Shutdown) -> anyhow::Result<Self> {
        let redis = Redis::connect(&config.redis)?;
        let cache_redis = redis.clone().filter(|_| config.cache_enabled);
        let plans = ratelimit::parse_plans(&config.rate_limit_plans)?;
        Ok(Self {
            psp: Arc::new(PspClient::new(config.psp.clone())?),
            cache: Arc::new(PaymentCache::new(cache_redis, config.cache_ttl)),
            limiter: Arc::new(RateLimiter::new(
                plans,
                redis.clone(),
                config.rate_limit_fail_closed,
            )),
            redis,
            db,
            keys: Arc::new(auth::KeyCache::new(config.auth_cache_ttl)),
            analytics: config
                .clickhouse
                .url
                .as_deref()
                .map(|url| platform::analytics::client(url, &config.clickhouse.database)),
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

/// The routes that need an API key. The server and the OpenAPI document both start here,
/// so the document lists exactly what is served.
fn authenticated_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(payments::create_payment, payments::list_payments))
        .routes(routes!(payments::get_payment))
        .routes(routes!(analytics::payment_analytics))
}

/// Liveness and readiness, for load balancers: no API key, no admission control.
fn probe_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
}

/// Builds the whole HTTP surface.
///
/// The payment routes sit behind admission control; the health routes do not, so that an
/// instance at its limit still answers its load balancer.
pub fn router(state: AppState) -> Router {
    let admission =
        platform::admission::layer(state.config.admission_limit, state.config.request_deadline);

    let (payment_routes, payments_doc) = authenticated_routes()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate_and_limit,
        ))
        .layer(admission)
        .split_for_parts();
    let (health_routes, health_doc) = probe_routes().split_for_parts();

    let mut doc = ApiDoc::openapi();
    doc.merge(payments_doc);
    doc.merge(health_doc);
    let doc = Arc::new(doc);

    let mut routes = payment_routes.merge(health_routes);
    if state.config.admin_listen.is_none() {
        routes = routes.route("/metrics", get(platform::telemetry::metrics_page));
    }
    routes
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
        // A server span and the http.server.* metrics per request. No log line per
        // request or per failure: an overloaded instance answers many 503s on purpose,
        // and one line each would add load exactly when it hurts. Failures that matter are
        // logged where they happen, with their cause.
        .layer(axum::middleware::from_fn(platform::telemetry::http_server))
        .with_state(state)
}

/// The admin listener's routes: metrics and probes, nothing a client may call.
pub fn admin_router(state: AppState) -> Router {
    let (health_routes, _) = probe_routes().split_for_parts();
    health_routes
        .route("/metrics", get(platform::telemetry::metrics_page))
        .with_state(state)
}

/// Authenticates the caller, applies its plan's rate limit, and reports the limit on the
/// response: every authenticated response carries `RateLimit-Limit`, `RateLimit-Remaining`
/// and `RateLimit-Reset`; a refused one is a 429 with `Retry-After`.
async fn authenticate_and_limit(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let account = match auth::authenticate(request.headers(), &app).await {
        Ok(account) => account,
        Err(error) => return error.into_response(),
    };
    let decision = app.limiter.check(&account.key_id, &account.plan).await;
    let mut response = if decision.allowed {
        request.extensions_mut().insert(account);
        next.run(request).await
    } else {
        Problem::new(
            ProblemType::RateLimited,
            format!(
                "this API key may send {} requests per {} s on its plan; retry after the given delay",
                decision.limit,
                app.limiter.limit_for(&account.plan).period.as_secs_f64()
            ),
        )
        .retry_after(Duration::from_secs(decision.retry_after_seconds))
        .into_response()
    };
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(decision.reset_seconds));
    response
}

/// The OpenAPI document, for tools that want it without a running server.
pub fn openapi_json() -> serde_json::Value {
    let (_, routes_doc) = authenticated_routes()
        .merge(probe_routes())
        .split_for_parts();
    let mut doc = ApiDoc::openapi();
    doc.merge(routes_doc);
    serde_json::to_value(doc).expect("the OpenAPI document serialises")
}
