//! How failures become responses. Every variant maps to one stable problem type; a
//! client's mistake is never a 500.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use platform::db::DbError;
use platform::problem::{FieldError, Problem, ProblemType};

use crate::psp::PspError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Problem(Box<Problem>),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Psp(#[from] PspError),
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self::Problem(Box::new(problem))
    }
}

impl ApiError {
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [only] => format!("{}: {}", only.pointer, only.detail),
            _ => format!("{} fields are invalid; see `errors`", errors.len()),
        };
        Problem::new(ProblemType::Validation, detail)
            .with_errors(errors)
            .into()
    }

    pub fn not_found(what: &str) -> Self {
        Problem::new(ProblemType::NotFound, format!("no {what} with that id")).into()
    }
}

const RETRY_SOON: Duration = Duration::from_secs(1);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Problem(problem) => problem.into_response(),
            Self::Unauthorized(detail) => crate::auth::unauthorized_response(detail),
            Self::Db(DbError::PoolTimeout(waited)) => Problem::new(
                ProblemType::PoolTimeout,
                format!("no database session became free within {waited:?}; retry shortly"),
            )
            .retry_after(RETRY_SOON)
            .into_response(),
            Self::Db(DbError::Unavailable(error)) => {
                tracing::warn!(%error, "database unavailable");
                Problem::new(
                    ProblemType::DatabaseUnavailable,
                    "the database cannot be reached; retry shortly",
                )
                .retry_after(RETRY_SOON)
                .into_response()
            }
            Self::Db(DbError::Query(error)) if is_timeout(&error) => {
                tracing::warn!(%error, "database statement timed out");
                Problem::new(
                    ProblemType::DatabaseUnavailable,
                    "the database did not answer in time; retry shortly",
                )
                .retry_after(RETRY_SOON)
                .into_response()
            }
            Self::Db(DbError::Query(error)) => {
                tracing::error!(%error, "database statement failed");
                Problem::internal().into_response()
            }
            Self::Psp(PspError::Unavailable {
                attempts,
                last_error,
            }) => {
                tracing::warn!(attempts, %last_error, "payment processor unavailable");
                Problem::new(
                    ProblemType::UpstreamFailure,
                    "the payment processor did not answer; the payment is recorded as pending \
                     and retrying with the same Idempotency-Key completes it without charging twice",
                )
                .retry_after(RETRY_SOON)
                .into_response()
            }
            Self::Psp(error @ PspError::Rejected { .. }) => {
                tracing::error!(%error, "payment processor rejected our request");
                Problem::new(
                    ProblemType::UpstreamFailure,
                    "the payment processor refused the request",
                )
                .into_response()
            }
        }
    }
}

/// `statement_timeout` (57014) and `idle_in_transaction_session_timeout` (25P03) end a
/// session because the database is slow, not because the request was wrong.
fn is_timeout(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "57014" || code == "25P03")
}
