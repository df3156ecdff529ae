//! `/v1/analytics/payments`: counts and volumes for the calling account, from ClickHouse.
//!
//! Never from PostgreSQL: at the 1k-rps tier, aggregate scans are exactly the load the
//! primary and its replicas must not carry. When ClickHouse is unavailable the endpoint
//! answers 503 with `Retry-After`; payments are unaffected.

use axum::Json;
use axum::extract::State;
use platform::analytics::{self, Interval};
use platform::problem::{FieldError, Problem, ProblemType};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::auth::Account;
use crate::error::ApiError;
use crate::extract::QueryParams;

/// The widest range each interval may cover, so that one request returns a bounded number
/// of buckets (at most 1440 minutes, 744 hours, or 366 days).
fn max_range(interval: Interval) -> time::Duration {
    match interval {
        Interval::Minute => time::Duration::days(1),
        Interval::Hour => time::Duration::days(31),
        Interval::Day => time::Duration::days(366),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsParams {
    /// Start of the range, inclusive, RFC 3339 (default: `to` minus one day).
    from: Option<String>,
    /// End of the range, exclusive, RFC 3339 (default: now).
    to: Option<String>,
    /// `minute` (range up to 1 day), `hour` (up to 31 days) or `day` (up to 366 days);
    /// default `hour`. Buckets are aligned in UTC.
    interval: Option<String>,
}

/// Events of one kind and currency in one bucket.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AnalyticsBucket {
    /// Start of the bucket, RFC 3339, UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// The status payments entered: `created` (recorded, pending), `succeeded` or `failed`.
    pub status: String,
    pub currency: String,
    pub count: u64,
    /// Sum of amounts in minor units.
    pub volume: i64,
}

/// Totals over the whole range for one status and currency.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AnalyticsTotal {
    pub status: String,
    pub currency: String,
    pub count: u64,
    pub volume: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PaymentAnalytics {
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    pub interval: Interval,
    /// Non-empty buckets only, oldest first.
    pub buckets: Vec<AnalyticsBucket>,
    pub totals: Vec<AnalyticsTotal>,
}

/// Payment counts and volumes over time.
///
/// Served from ClickHouse, which the worker fills from the outbox: a payment appears here
/// a moment after it is written (see the worker's lag metrics), each event exactly once.
#[utoipa::path(
    get,
    path = "/v1/analytics/payments",
    tag = "analytics",
    params(AnalyticsParams),
    responses(
        (status = 200, description = "Buckets and totals by status and currency", body = PaymentAnalytics),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid range or interval", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Analytics unavailable or overloaded; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn payment_analytics(
    State(app): State<AppState>,
    account: Account,
    QueryParams(params): QueryParams<AnalyticsParams>,
) -> Result<Json<PaymentAnalytics>, ApiError> {
    let (from, to, interval) =
        parse_range(&params, OffsetDateTime::now_utc()).map_err(ApiError::validation)?;
    let Some(client) = &app.analytics else {
        return Err(unavailable(
            "no analytics store is configured (CLICKHOUSE_URL)",
        ));
    };

    let from_us = micros(from);
    let to_us = micros(to);
    let rows = tokio::time::timeout(
        app.config.clickhouse.timeout,
        analytics::summarize(client, account.id, from_us, to_us, interval),
    )
    .await;
    let rows = match rows {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => {
            tracing::warn!(%error, "analytics query failed");
            return Err(unavailable(
                "the analytics store did not answer; retry shortly",
            ));
        }
        Err(_) => {
            tracing::warn!("analytics query timed out");
            return Err(unavailable("the analytics store did not answer in time"));
        }
    };

    let mut totals: Vec<AnalyticsTotal> = Vec::new();
    let mut buckets = Vec::with_capacity(rows.len());
    for row in rows {
        match totals
            .iter_mut()
            .find(|t| t.status == row.kind && t.currency == row.currency)
        {
            Some(total) => {
                total.count += row.count;
                total.volume += row.volume;
            }
            None => totals.push(AnalyticsTotal {
                status: row.kind.clone(),
                currency: row.currency.clone(),
                count: row.count,
                volume: row.volume,
            }),
        }
        buckets.push(AnalyticsBucket {
            start: OffsetDateTime::from_unix_timestamp_nanos(i128::from(row.bucket_us) * 1000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            status: row.kind,
            currency: row.currency,
            count: row.count,
            volume: row.volume,
        });
    }
    totals.sort_by(|a, b| (&a.status, &a.currency).cmp(&(&b.status, &b.currency)));
    Ok(Json(PaymentAnalytics {
        from,
        to,
        interval,
        buckets,
        totals,
    }))
}

fn unavailable(detail: &str) -> ApiError {
    Problem::new(ProblemType::AnalyticsUnavailable, detail)
        .retry_after(std::time::Duration::from_secs(5))
        .into()
}

/// Microseconds since the epoch: PostgreSQL's precision, and the events'.
fn micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1000) as i64
}

fn parse_range(
    params: &AnalyticsParams,
    now: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime, Interval), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut time = |name: &str, raw: Option<&str>| match raw {
        None | Some("") => None,
        Some(raw) => match OffsetDateTime::parse(raw, &Rfc3339) {
            Ok(at) => Some(at),
            Err(_) => {
                errors.push(FieldError {
                    pointer: name.into(),
                    detail: "must be an RFC 3339 time, e.g. 2026-12-03T10:00:00Z".into(),
                });
                None
            }
        },
    };
    let to = time("to", params.to.as_deref());
    let from = time("from", params.from.as_deref());
    let interval = match params.interval.as_deref() {
        None | Some("") => Interval::Hour,
        Some(raw) => Interval::parse(raw).unwrap_or_else(|| {
            errors.push(FieldError {
                pointer: "interval".into(),
                detail: "must be one of minute, hour, day".into(),
            });
            Interval::Hour
        }),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let to = to.unwrap_or(now).to_offset(time::UtcOffset::UTC);
    let from = from
        .unwrap_or(to - time::Duration::days(1))
        .to_offset(time::UtcOffset::UTC);
    if from >= to {
        errors.push(FieldError {
            pointer: "from".into(),
            detail: "must be earlier than `to`".into(),
        });
    } else if to - from > max_range(interval) {
        errors.push(FieldError {
            pointer: "from".into(),
            detail: format!(
                "the range may span at most {} days with interval {}; narrow it or use a wider interval",
                max_range(interval).whole_days(),
                params.interval.as_deref().unwrap_or("hour"),
            ),
        });
    }
    if errors.is_empty() {
        Ok((from, to, interval))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(from: Option<&str>, to: Option<&str>, interval: Option<&str>) -> AnalyticsParams {
        AnalyticsParams {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            interval: interval.map(str::to_owned),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-12-03T12:00:00Z", &Rfc3339).unwrap()
    }

    fn pointers(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.pointer).collect()
    }

    #[test]
    fn defaults_are_the_last_day_by_hour() {
        let (from, to, interval) = parse_range(&params(None, None, None), now()).unwrap();
        assert_eq!(to, now());
        assert_eq!(to - from, time::Duration::days(1));
        assert_eq!(interval, Interval::Hour);
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let (from, _, _) = parse_range(
            &params(Some("2026-12-03T10:00:00+02:00"), None, Some("minute")),
            now(),
        )
        .unwrap();
        assert_eq!(
            from,
            OffsetDateTime::parse("2026-12-03T08:00:00Z", &Rfc3339).unwrap()
        );
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let errors =
            parse_range(&params(Some("yesterday"), Some("x"), Some("week")), now()).unwrap_err();
        assert_eq!(pointers(errors), ["to", "from", "interval"]);
    }

    #[test]
    fn an_empty_or_reversed_range_is_refused() {
        let at = Some("2026-12-03T10:00:00Z");
        assert_eq!(
            pointers(parse_range(&params(at, at, None), now()).unwrap_err()),
            ["from"]
        );
    }

    #[test]
    fn each_interval_bounds_the_range() {
        let two_days_ago = Some("2026-12-01T12:00:00Z");
        assert!(parse_range(&params(two_days_ago, None, Some("minute")), now()).is_err());
        assert!(parse_range(&params(two_days_ago, None, Some("hour")), now()).is_ok());
        let long_ago = Some("2025-01-01T00:00:00Z");
        assert!(parse_range(&params(long_ago, None, Some("day")), now()).is_err());
    }
}
