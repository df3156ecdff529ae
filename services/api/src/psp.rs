//! The payment processor client.
//!
//! Every call carries the payment id as the processor's `Idempotency-Key`, which is what
//! makes retries safe: a retried or duplicated call is answered with the charge the first
//! one made, never with a second charge. Retries cover 5xx answers, timeouts and connect
//! errors, with exponential backoff and jitter, and are bounded in count.

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::config::PspConfig;
use crate::store::Settlement;

#[derive(Debug, thiserror::Error)]
pub enum PspError {
    /// The processor did not give a final answer after every retry. The charge may or may
    /// not exist; a later call with the same key finds out.
    #[error("payment processor unavailable after {attempts} attempts: {last_error}")]
    Unavailable { attempts: u32, last_error: String },
    /// The processor refused the request itself: a bug on our side, not a decline.
    #[error("payment processor rejected the request with {status}: {body}")]
    Rejected { status: u16, body: String },
}

#[derive(Deserialize)]
struct ChargeResponse {
    id: String,
}

#[derive(Clone)]
pub struct PspClient {
    http: reqwest::Client,
    charges_url: String,
    config: PspConfig,
}

impl PspClient {
    pub fn new(config: PspConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(1)))
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            http,
            charges_url: format!("{}/v1/charges", config.url.trim_end_matches('/')),
            config,
        })
    }

    /// Charges `amount` for `payment_id`. Never holds a database session: call it between
    /// two sessions.
    pub async fn charge(
        &self,
        payment_id: Uuid,
        amount: i64,
        currency: &str,
    ) -> Result<Settlement, PspError> {
        let body = serde_json::json!({
            "amount": amount,
            "currency": currency,
            "reference": payment_id.to_string(),
        });
        let attempts = self.config.max_retries + 1;
        let mut last_error = String::new();

        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            // One client span per attempt; its context goes to the processor in
            // `traceparent`, so the processor's span is its child.
            let span = platform::telemetry::child_span(|| {
                tracing::info_span!(
                "psp.charge",
                otel.name = "POST /v1/charges",
                otel.kind = "client",
                http.request.method = "POST",
                url.full = %self.charges_url,
                http.request.resend_count = attempt - 1,
                http.response.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                )
            });
            let mut headers = reqwest::header::HeaderMap::new();
            span.in_scope(|| platform::telemetry::inject(&mut headers));
            let sent = self
                .http
                .post(&self.charges_url)
                .headers(headers)
                .header("Idempotency-Key", payment_id.to_string())
                .json(&body)
                .send()
                .instrument(span.clone())
                .await;
            match &sent {
                Ok(response) => {
                    span.record(
                        "http.response.status_code",
                        i64::from(response.status().as_u16()),
                    );
                    if response.status().is_server_error() {
                        span.record("otel.status_code", "ERROR");
                    }
                }
                Err(_) => {
                    span.record("otel.status_code", "ERROR");
                }
            }

            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    last_error = error.to_string();
                    tracing::warn!(%payment_id, attempt, error = %last_error, "processor call failed");
                    continue;
                }
            };

            let status = response.status();
            if status.is_server_error() {
                last_error = format!("HTTP {status}");
                tracing::warn!(%payment_id, attempt, status = status.as_u16(), "processor answered 5xx");
                continue;
            }
            let text = response.text().await.unwrap_or_default();
            if status.is_success() || status.as_u16() == 402 {
                let charge: ChargeResponse =
                    serde_json::from_str(&text).map_err(|e| PspError::Rejected {
                        status: status.as_u16(),
                        body: format!("unreadable charge ({e}): {text}"),
                    })?;
                return Ok(if status.is_success() {
                    Settlement::Succeeded {
                        reference: charge.id,
                    }
                } else {
                    Settlement::Declined {
                        reference: charge.id,
                        reason: "declined_by_processor".into(),
                    }
                });
            }
            return Err(PspError::Rejected {
                status: status.as_u16(),
                body: text,
            });
        }

        Err(PspError::Unavailable {
            attempts,
            last_error,
        })
    }

    /// Exponential backoff with full jitter, so retries from many requests do not arrive
    /// at the processor in lockstep.
    fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.config.retry_backoff * 2u32.saturating_pow(retry - 1);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}
