//! A payment event as it travels: a row of the outbox, then one JSON field of a stream
//! entry, then a row of ClickHouse.

use platform::analytics::EventRow;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The stream entry's field that holds the event.
pub const FIELD: &str = "event";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PaymentEvent {
    pub event_id: Uuid,
    pub account_id: Uuid,
    pub payment_id: Uuid,
    /// `created`, `succeeded` or `failed`.
    pub kind: String,
    pub amount: i64,
    pub currency: String,
    /// Microseconds since the epoch, exactly as PostgreSQL stored it.
    pub occurred_at_us: i64,
    /// W3C traceparent of the request that made the change.
    pub traceparent: Option<String>,
}

/// Why a stream entry cannot become a row. Such an entry goes to the dead-letter stream:
/// retrying it would fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum Undecodable {
    #[error("the entry has no `{FIELD}` field")]
    Missing,
    #[error("the event is not valid JSON for a payment event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the event is invalid: {0}")]
    Invalid(&'static str),
}

impl PaymentEvent {
    pub fn decode(raw: Option<&str>) -> Result<Self, Undecodable> {
        let event: Self = serde_json::from_str(raw.ok_or(Undecodable::Missing)?)?;
        if !matches!(event.kind.as_str(), "created" | "succeeded" | "failed") {
            return Err(Undecodable::Invalid("unknown kind"));
        }
        if event.currency.len() != 3 || !event.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Undecodable::Invalid("currency is not an ISO 4217 code"));
        }
        if event.occurred_at_us < 0 || event.occurred_at_us / 1_000_000 > i64::from(u32::MAX) {
            return Err(Undecodable::Invalid(
                "occurred_at is outside ClickHouse's DateTime",
            ));
        }
        Ok(event)
    }

    pub fn to_row(&self) -> EventRow {
        EventRow {
            event_id: self.event_id,
            account_id: self.account_id,
            payment_id: self.payment_id,
            kind: self.kind.clone(),
            amount: self.amount,
            currency: self.currency.clone(),
            occurred_at_us: self.occurred_at_us,
            // Checked by `decode` to fit.
            occurred_at: (self.occurred_at_us / 1_000_000) as u32,
            trace_id: self
                .traceparent
                .as_deref()
                .and_then(|t| t.split('-').nth(1))
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> PaymentEvent {
        PaymentEvent {
            event_id: Uuid::now_v7(),
            account_id: Uuid::now_v7(),
            payment_id: Uuid::now_v7(),
            kind: "succeeded".into(),
            amount: 1250,
            currency: "EUR".into(),
            occurred_at_us: 1_764_763_200_123_456,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        }
    }

    #[test]
    fn an_event_round_trips_and_keeps_its_trace_id() {
        let original = event();
        let json = serde_json::to_string(&original).unwrap();
        let decoded = PaymentEvent::decode(Some(&json)).unwrap();
        assert_eq!(decoded, original);
        let row = decoded.to_row();
        assert_eq!(row.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(row.occurred_at, 1_764_763_200);
    }

    #[test]
    fn entries_that_can_never_load_are_told_apart() {
        assert!(matches!(
            PaymentEvent::decode(None),
            Err(Undecodable::Missing)
        ));
        assert!(matches!(
            PaymentEvent::decode(Some("{")),
            Err(Undecodable::Json(_))
        ));
        let mut bad = event();
        bad.kind = "refunded".into();
        let json = serde_json::to_string(&bad).unwrap();
        assert!(matches!(
            PaymentEvent::decode(Some(&json)),
            Err(Undecodable::Invalid(_))
        ));
    }
}
