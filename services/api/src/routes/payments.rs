//! `/v1/payments`.
//!
//! Creating a payment is two database sessions with the processor call between them:
//!
//! ```text
//! [session: claim the Idempotency-Key, insert the payment as pending] -> release
//! -> call the processor (timeout, bounded retries)
//! -> [session: record succeeded/failed and the processor reference] -> release -> 201
//! ```
//!
//! No connection is held while the processor is working, so the number of payments in
//! flight is bounded by the processor's latency and the admission limit, not by the pool.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use platform::problem::{FieldError, Problem, ProblemType};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Account;
use crate::domain::{CreatePaymentRequest, IdempotencyKey, NewPayment};
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};
use crate::psp::PspClient;
use crate::store::{self, Claim, Events, Payment, PaymentStatus};

/// Set on a response that replays the result of an earlier request with the same key.
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Create a payment.
///
/// Send a unique `Idempotency-Key` per payment and the same key when retrying: a retry
/// returns the original payment, and concurrent duplicates create exactly one payment and
/// one charge. Reusing a key for a different request is rejected with 422.
#[utoipa::path(
    post,
    path = "/v1/payments",
    tag = "payments",
    params(("Idempotency-Key" = String, Header, description = "Unique per payment; 1 to 255 visible ASCII characters.")),
    request_body(content = CreatePaymentRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The payment, settled (`succeeded` or `failed`). Replays carry `Idempotent-Replayed: true`.", body = Payment),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field, or Idempotency-Key reused for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The processor did not answer; retry with the same key", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Overloaded, pool timeout or deadline exceeded; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_payment(
    State(app): State<AppState>,
    account: Account,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreatePaymentRequest>,
) -> Result<Response, ApiError> {
    let key = IdempotencyKey::parse(headers.get("idempotency-key").and_then(|v| v.to_str().ok()))
        .map_err(|e| {
        Problem::invalid(e.pointer, e.detail).with_status(StatusCode::BAD_REQUEST)
    })?;
    let payment = NewPayment::parse(request).map_err(ApiError::validation)?;

    // This request's own span context when tracing is on (the worker's spans then join
    // this trace), else what the client sent.
    let traceparent = platform::telemetry::current_traceparent().or_else(|| traceparent(&headers));
    let (payment, replayed) = if app.config.demo_hold_session_across_psp {
        create_holding_session_across_psp(&app, &account, key, payment, traceparent).await?
    } else {
        create(&app, &account, key, payment, traceparent).await?
    };

    let mut response = (StatusCode::CREATED, Json(payment)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The disciplined flow: two short sessions, the processor call between them.
async fn create(
    app: &AppState,
    account: &Account,
    key: IdempotencyKey,
    new_payment: NewPayment,
    traceparent: Option<String>,
) -> Result<(Payment, bool), ApiError> {
    let account_id = account.id;
    let fingerprint = new_payment.fingerprint();
    let outbox = app.config.outbox_enabled;

    // Session 1: claim the key and record the payment as pending.
    let claim = {
        let (new_payment, traceparent) = (new_payment.clone(), traceparent.clone());
        app.db
            .write("claim_payment", move |c| {
                Box::pin(async move {
                    let events = Events {
                        enabled: outbox,
                        traceparent: traceparent.as_deref(),
                    };
                    store::claim(
                        c,
                        account_id,
                        key.as_str(),
                        Uuid::now_v7(),
                        &new_payment,
                        events,
                    )
                    .await
                })
            })
            .await?
    };
    let (pending, replayed) = match claim {
        Claim::Created(payment) => (payment, false),
        Claim::Existing {
            fingerprint: earlier,
            payment,
        } => {
            if earlier != fingerprint {
                return Err(idempotency_conflict());
            }
            if payment.status != PaymentStatus::Pending {
                return Ok((payment, true));
            }
            // A request with this key is in flight, or died before settling. Driving it
            // to completion here is safe: the processor call carries the payment id as its
            // idempotency key and answers with the same charge.
            (payment, true)
        }
    };

    // Between sessions: the processor call. No connection is held here.
    let settlement = app
        .psp
        .charge(pending.id, pending.amount, &pending.currency)
        .await?;

    // Session 2: record the outcome.
    let payment_id = pending.id;
    let settled = app
        .db
        .write("settle_payment", move |c| {
            Box::pin(async move {
                let events = Events {
                    enabled: outbox,
                    traceparent: traceparent.as_deref(),
                };
                store::settle(c, account_id, payment_id, &settlement, events).await
            })
        })
        .await?;

    // After the commit, never before: the cache must not run ahead of the database.
    app.cache.store(account_id, &settled).await;
    Ok((settled, replayed))
}

/// Demonstration only (`API_DEMO_HOLD_SESSION_ACROSS_PSP=true`): the same payment in one
/// session that stays open across the processor call. Each payment then holds a database
/// connection for the processor's whole latency, so the pool, not the CPU, caps throughput
/// and requests beyond it time out waiting for a session. It exists so the load test can
/// show that side by side with [`create`].
async fn create_holding_session_across_psp(
    app: &AppState,
    account: &Account,
    key: IdempotencyKey,
    new_payment: NewPayment,
    traceparent: Option<String>,
) -> Result<(Payment, bool), ApiError> {
    let account_id = account.id;
    let fingerprint = new_payment.fingerprint();
    let psp: Arc<PspClient> = app.psp.clone();
    let outbox = app.config.outbox_enabled;

    let outcome = app
        .db
        .write_holding_session_across_network("demo_payment_holding_session", move |c| {
            Box::pin(async move {
                let events = Events {
                    enabled: outbox,
                    traceparent: traceparent.as_deref(),
                };
                let claim = store::claim(
                    c,
                    account_id,
                    key.as_str(),
                    Uuid::now_v7(),
                    &new_payment,
                    events,
                )
                .await?;
                let (pending, replayed) = match claim {
                    Claim::Created(payment) => (payment, false),
                    Claim::Existing {
                        fingerprint: earlier,
                        payment,
                    } => {
                        if earlier != fingerprint {
                            return Ok(Err(idempotency_conflict()));
                        }
                        if payment.status != PaymentStatus::Pending {
                            return Ok(Ok((payment, true)));
                        }
                        (payment, true)
                    }
                };
                let settlement = match psp
                    .charge(pending.id, pending.amount, &pending.currency)
                    .await
                {
                    Ok(settlement) => settlement,
                    Err(error) => return Ok(Err(ApiError::from(error))),
                };
                let settled = store::settle(c, account_id, pending.id, &settlement, events).await?;
                Ok(Ok((settled, replayed)))
            })
        })
        .await??;
    app.cache.store(account_id, &outcome.0).await;
    Ok(outcome)
}

/// The request's W3C `traceparent` header, kept only when it has the version-00 shape
/// (`00-<32 hex>-<16 hex>-<2 hex>`): the outbox stores it, so it must not carry arbitrary
/// client bytes.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, span, flags]
            if *version == "00" && hex(trace, 32) && hex(span, 16) && hex(flags, 2) =>
        {
            Some(value.to_ascii_lowercase())
        }
        _ => None,
    }
}

fn idempotency_conflict() -> ApiError {
    Problem::new(
        ProblemType::IdempotencyConflict,
        "this Idempotency-Key was already used for a different request; use a new key for a new payment",
    )
    .into()
}

/// Retrieve one payment.
///
/// Served from a read replica: a payment created a moment ago may take a few milliseconds
/// to appear.
#[utoipa::path(
    get,
    path = "/v1/payments/{id}",
    tag = "payments",
    params(("id" = Uuid, Path, description = "The payment id")),
    responses(
        (status = 200, description = "The payment", body = Payment),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment for this account", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Overloaded or pool timeout; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_payment(
    State(app): State<AppState>,
    account: Account,
    Path(id): Path<String>,
) -> Result<Json<Payment>, ApiError> {
    // An id that is not a UUID cannot name a payment: that is "not found", not a bad request.
    let payment_id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("payment"))?;
    let account_id = account.id;

    let payment = app
        .cache
        .get_or_load(account_id, payment_id, || async {
            Ok(app
                .db
                .read("get_payment", move |c| {
                    Box::pin(async move { store::get(c, account_id, payment_id).await })
                })
                .await?)
        })
        .await?;
    payment
        .map(Json)
        .ok_or_else(|| ApiError::not_found("payment"))
}

pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 100 (default 20).
    limit: Option<String>,
    /// The id of the last payment of the previous page.
    starting_after: Option<String>,
}

/// A page of payments, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentPage {
    pub data: Vec<Payment>,
    /// True when older payments follow.
    pub has_more: bool,
    /// Pass as `starting_after` to fetch the next page.
    pub next_starting_after: Option<Uuid>,
}

/// List payments, newest first, with keyset pagination.
#[utoipa::path(
    get,
    path = "/v1/payments",
    tag = "payments",
    params(ListParams),
    responses(
        (status = 200, description = "A page of payments", body = PaymentPage),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Overloaded or pool timeout; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_payments(
    State(app): State<AppState>,
    account: Account,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<PaymentPage>, ApiError> {
    let (limit, starting_after) = parse_page(&params).map_err(ApiError::validation)?;
    let account_id = account.id;

    let mut rows = app
        .db
        .read("list_payments", move |c| {
            Box::pin(async move { store::list(c, account_id, starting_after, limit + 1).await })
        })
        .await?;

    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_starting_after = if has_more {
        rows.last().map(|p| p.id)
    } else {
        None
    };
    Ok(Json(PaymentPage {
        data: rows,
        has_more,
        next_starting_after,
    }))
}

fn parse_page(params: &ListParams) -> Result<(i64, Option<Uuid>), Vec<FieldError>> {
    let mut errors = Vec::new();
    let limit = match params.limit.as_deref() {
        None => DEFAULT_PAGE_SIZE,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                errors.push(FieldError {
                    pointer: "limit".into(),
                    detail: format!("must be an integer from 1 to {MAX_PAGE_SIZE}"),
                });
                DEFAULT_PAGE_SIZE
            }
        },
    };
    let starting_after = match params.starting_after.as_deref() {
        None | Some("") => None,
        Some(raw) => match Uuid::parse_str(raw) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.push(FieldError {
                    pointer: "starting_after".into(),
                    detail: "must be the id of a payment from the previous page".into(),
                });
                None
            }
        },
    };
    if errors.is_empty() {
        Ok((limit, starting_after))
    } else {
        Err(errors)
    }
}
