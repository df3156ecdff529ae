//! Request extractors whose rejections are problem+json, with a message a client can act
//! on. axum's own extractors answer in plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use platform::problem::{FieldError, Problem, ProblemType};
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::error::ApiError;

/// A JSON body of type `T`, at most `API_MAX_BODY_BYTES` long.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, ApiError> {
        let limit = app.config.max_body_bytes;

        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !(essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")) {
            return Err(Problem::new(
                ProblemType::UnsupportedMediaType,
                "send the body as JSON with `Content-Type: application/json`",
            )
            .into());
        }

        let too_large = || -> ApiError {
            Problem::new(
                ProblemType::PayloadTooLarge,
                format!("the body must be at most {limit} bytes"),
            )
            .into()
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(too_large());
        }
        let bytes: Bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|_| too_large())?;

        parse_json(&bytes).map(JsonBody)
    }
}

/// Query parameters of type `T`. A query string that does not parse is a 400
/// `malformed-body` with axum's reason; rules on the values are the handler's (422).
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) =
            Query::<T>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| {
                    Problem::new(ProblemType::MalformedBody, rejection.body_text())
                        .with_status(StatusCode::BAD_REQUEST)
                })?;
        Ok(Self(value))
    }
}

/// Deserialises, telling apart a body that is not JSON (400, with the position) from JSON
/// of the wrong shape (422, with a pointer to the field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => value,
        Err(error) if error.inner().is_syntax() || error.inner().is_eof() => {
            return Err(malformed(error.inner()));
        }
        Err(error) => {
            return Err(ApiError::validation(vec![FieldError {
                pointer: json_pointer(&error.path().to_string()),
                detail: strip_position(&error.inner().to_string()),
            }]));
        }
    };
    // Anything after the value (a second object, stray text) makes the body malformed.
    deserializer.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

fn malformed(error: &serde_json::Error) -> ApiError {
    Problem::new(
        ProblemType::MalformedBody,
        format!(
            "the body is not valid JSON (line {}, column {})",
            error.line(),
            error.column()
        ),
    )
    .into()
}

/// `metadata.note` or `.` as serde_path_to_error prints it, as a JSON pointer.
fn json_pointer(path: &str) -> String {
    if path == "." || path.is_empty() {
        return String::new();
    }
    path.split('.')
        .map(|segment| segment.trim_start_matches('[').trim_end_matches(']'))
        .fold(String::new(), |mut pointer, segment| {
            pointer.push('/');
            pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
            pointer
        })
}

/// serde_json appends " at line 1 column 12" to its messages; the pointer says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CreatePaymentRequest;
    use axum::response::IntoResponse;

    async fn problem_of(body: &str) -> (u16, serde_json::Value) {
        let error =
            parse_json::<CreatePaymentRequest>(body.as_bytes()).expect_err("should be rejected");
        let response = error.into_response();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn broken_json_is_a_400_that_says_where() {
        let (status, problem) = problem_of(r#"{"amount": 12,"#).await;
        assert_eq!(status, 400);
        assert_eq!(
            problem["type"],
            "https://tierstack.dev/problems/malformed-body"
        );
        assert!(problem["detail"].as_str().unwrap().contains("line 1"));
    }

    #[tokio::test]
    async fn wrong_type_is_a_422_pointing_at_the_field() {
        let (status, problem) = problem_of(r#"{"amount": "12", "currency": "EUR"}"#).await;
        assert_eq!(status, 422);
        assert_eq!(problem["errors"][0]["pointer"], "/amount");
    }

    #[tokio::test]
    async fn unknown_and_missing_fields_are_422() {
        let (status, problem) =
            problem_of(r#"{"amount": 1, "currency": "EUR", "amuont": 2}"#).await;
        assert_eq!(status, 422);
        assert!(problem["detail"].as_str().unwrap().contains("amuont"));

        let (status, _) = problem_of(r#"{"currency": "EUR"}"#).await;
        assert_eq!(status, 422);
    }

    #[tokio::test]
    async fn trailing_garbage_is_malformed() {
        let (status, _) = problem_of(r#"{"amount": 1, "currency": "EUR"} x"#).await;
        assert_eq!(status, 400);
    }

    #[test]
    fn nested_paths_become_json_pointers() {
        assert_eq!(json_pointer("metadata.a/b"), "/metadata/a~1b");
        assert_eq!(json_pointer("."), "");
    }
}
