//! RFC 9457 problem details.
//!
//! Every error a Tierstack service returns is `application/problem+json` whose `type` is one
//! of [`ProblemType`]. The `type` URIs are part of the public contract: clients branch on
//! them, so a variant's slug never changes once released. `detail` is for humans and may be
//! reworded freely.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Where the problem type URIs live. They identify a class of error; they are not fetched.
pub const PROBLEM_BASE_URI: &str = "https://tierstack.dev/problems/";

/// The stable classes of error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// The request is well-formed HTTP but its content breaks a rule (400/422).
    Validation,
    /// The body is not JSON or not the expected shape (400).
    MalformedBody,
    /// The body is larger than the service accepts (413).
    PayloadTooLarge,
    /// The body is not declared as JSON (415).
    UnsupportedMediaType,
    /// No valid credentials (401).
    Unauthorized,
    /// The resource does not exist for this caller (404).
    NotFound,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// An idempotency key was reused with a different request (422).
    IdempotencyConflict,
    /// The API key is over its plan's request rate; retry after `Retry-After` (429).
    RateLimited,
    /// The process is at its in-flight limit; retry shortly (503).
    Overloaded,
    /// No database session could be had in time; retry shortly (503).
    PoolTimeout,
    /// The database cannot be reached (503).
    DatabaseUnavailable,
    /// The request did not finish within its deadline (503).
    DeadlineExceeded,
    /// A dependency (the payment processor) failed after retries (502).
    UpstreamFailure,
    /// The analytics store cannot answer; retry shortly (503).
    AnalyticsUnavailable,
    /// The process is shutting down; retry on another instance (503).
    ShuttingDown,
    /// A bug on our side. Never used for a client's mistake (500).
    Internal,
}

impl ProblemType {
    /// The stable slug that ends the `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Validation => "validation",
            Self::MalformedBody => "malformed-body",
            Self::PayloadTooLarge => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::IdempotencyConflict => "idempotency-conflict",
            Self::RateLimited => "rate-limited",
            Self::Overloaded => "overloaded",
            Self::PoolTimeout => "pool-timeout",
            Self::DatabaseUnavailable => "database-unavailable",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::UpstreamFailure => "upstream-failure",
            Self::AnalyticsUnavailable => "analytics-unavailable",
            Self::ShuttingDown => "shutting-down",
            Self::Internal => "internal",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Validation => "The request is invalid",
            Self::MalformedBody => "The request body could not be read",
            Self::PayloadTooLarge => "The request body is too large",
            Self::UnsupportedMediaType => "The request body must be JSON",
            Self::Unauthorized => "Authentication required",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::IdempotencyConflict => "Idempotency key reused with a different request",
            Self::RateLimited => "Too many requests for this API key",
            Self::Overloaded => "The service is at capacity",
            Self::PoolTimeout => "No database session available in time",
            Self::DatabaseUnavailable => "The database is unavailable",
            Self::DeadlineExceeded => "The request deadline was exceeded",
            Self::UpstreamFailure => "The payment processor failed",
            Self::AnalyticsUnavailable => "Analytics are unavailable",
            Self::ShuttingDown => "The instance is shutting down",
            Self::Internal => "Internal error",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MalformedBody => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded
            | Self::PoolTimeout
            | Self::DatabaseUnavailable
            | Self::DeadlineExceeded
            | Self::ShuttingDown
            | Self::AnalyticsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamFailure => StatusCode::BAD_GATEWAY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn uri(self) -> String {
        format!("{PROBLEM_BASE_URI}{}", self.slug())
    }
}

/// One offending field of a validation problem.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    /// Where the problem is: a JSON pointer into the body (`/amount`), or a header name.
    pub pointer: String,
    /// What is wrong and what would be accepted.
    pub detail: String,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI that identifies the class of problem; stable across releases.
    #[serde(rename = "type")]
    #[schema(example = "https://tierstack.dev/problems/validation")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    /// What went wrong with this request, in words a client developer can act on.
    pub detail: String,
    /// The offending fields, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds after which a retry may succeed, for the 503 classes (also sent as
    /// `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    #[serde(skip)]
    #[schema(ignore)]
    kind: Option<ProblemType>,
}

impl Problem {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            problem_type: kind.uri(),
            title: kind.title().to_owned(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_seconds: None,
            kind: Some(kind),
        }
    }

    /// A validation problem about one field.
    pub fn invalid(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        let error = FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        };
        let mut problem = Self::new(ProblemType::Validation, error.detail.clone());
        problem.errors.push(error);
        problem
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status.as_u16();
        self
    }

    /// Tells the client when to retry, in the body and in `Retry-After`.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after_seconds = Some(after.as_secs().max(1));
        self
    }

    pub fn kind(&self) -> Option<ProblemType> {
        self.kind
    }

    pub fn overloaded() -> Self {
        Self::new(
            ProblemType::Overloaded,
            "this instance is at its in-flight request limit; retry after the given delay",
        )
        .retry_after(Duration::from_secs(1))
    }

    pub fn internal() -> Self {
        Self::new(
            ProblemType::Internal,
            "an unexpected error occurred; it has been logged",
        )
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.detail, self.problem_type)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after_seconds;
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());

        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retryable_problem_carries_retry_after_header_and_problem_json() {
        let response = Problem::overloaded().into_response();

        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn problem_type_uri_is_stable() {
        let problem = Problem::invalid("/amount", "must be positive");
        let json = serde_json::to_value(&problem).unwrap();

        assert_eq!(json["type"], "https://tierstack.dev/problems/validation");
        assert_eq!(json["status"], 422);
        assert_eq!(json["errors"][0]["pointer"], "/amount");
        assert!(json.get("retry_after_seconds").is_none());
    }
}
