//! The SQL. Every function takes the connection of a session that the caller opened with
//! `Database::write` or `Database::read`; none of them acquires one itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::NewPayment;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    /// Recorded; the processor has not answered yet.
    Pending,
    Succeeded,
    /// The processor declined the charge.
    Failed,
}

/// A payment as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Payment {
    pub id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    #[sqlx(json)]
    pub metadata: BTreeMap<String, String>,
    pub status: PaymentStatus,
    /// The processor's charge id, once it has answered.
    pub processor_reference: Option<String>,
    pub failure_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The columns of [`Payment`], as a macro so that every query stays a `&'static str`.
macro_rules! payment_columns {
    () => {
        "id, amount, currency, description, metadata, status, \
         processor_reference, failure_reason, created_at, updated_at"
    };
}

/// What the first session of a payment found.
pub enum Claim {
    /// The key was new: the payment was created, pending.
    Created(Payment),
    /// The key was used before, for a request with this fingerprint.
    Existing {
        fingerprint: Vec<u8>,
        payment: Payment,
    },
}

/// Whether a state change also writes its event to the outbox, and the trace it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Events<'a> {
    /// `OUTBOX_ENABLED`: off only to measure what the outbox costs the write path.
    pub enabled: bool,
    /// The request's W3C `traceparent`, carried with the event.
    pub traceparent: Option<&'a str>,
}

/// Records the idempotency key, the pending payment and its `created` event in one
/// statement, or finds what an earlier request with the same key recorded.
///
/// A concurrent request with the same key blocks on the key's unique index until the first
/// commits, then finds its row: concurrent duplicates create exactly one payment.
pub async fn claim(
    c: &mut PgConnection,
    account_id: Uuid,
    key: &str,
    payment_id: Uuid,
    payment: &NewPayment,
    events: Events<'_>,
) -> Result<Claim, sqlx::Error> {
    let created = sqlx::query_as::<_, Payment>(concat!(
        "WITH claimed AS ( \
           INSERT INTO idempotency_keys (account_id, key, request_hash, payment_id) \
           VALUES ($1, $2, $3, $4) \
           ON CONFLICT (account_id, key) DO NOTHING \
           RETURNING payment_id), \
         created AS ( \
           INSERT INTO payments (id, account_id, amount, currency, description, metadata, status) \
           SELECT payment_id, $1, $5, $6, $7, $8, 'pending' FROM claimed \
           RETURNING ",
        payment_columns!(),
        "), \
         event AS ( \
           INSERT INTO outbox (event_id, account_id, payment_id, kind, amount, currency, \
                               occurred_at, traceparent) \
           SELECT gen_random_uuid(), $1, id, 'created', amount, currency, created_at, $10 \
           FROM created WHERE $9) \
         SELECT ",
        payment_columns!(),
        " FROM created"
    ))
    .bind(account_id)
    .bind(key)
    .bind(payment.fingerprint())
    .bind(payment_id)
    .bind(payment.amount)
    .bind(&payment.currency)
    .bind(&payment.description)
    .bind(sqlx::types::Json(&payment.metadata))
    .bind(events.enabled)
    .bind(events.traceparent)
    .fetch_optional(&mut *c)
    .await?;
    if let Some(payment) = created {
        return Ok(Claim::Created(payment));
    }

    let (fingerprint, payment_id) = sqlx::query_as::<_, (Vec<u8>, Uuid)>(
        "SELECT request_hash, payment_id FROM idempotency_keys WHERE account_id = $1 AND key = $2",
    )
    .bind(account_id)
    .bind(key)
    .fetch_one(&mut *c)
    .await?;
    let payment = get(c, account_id, payment_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok(Claim::Existing {
        fingerprint,
        payment,
    })
}

/// How the processor answered.
#[derive(Debug, Clone)]
pub enum Settlement {
    Succeeded { reference: String },
    Declined { reference: String, reason: String },
}

/// Moves a pending payment to its final status and records the `succeeded` or `failed`
/// event in the same statement. If another request settled it first, the payment is
/// returned as that request left it, and no second event is written: a payment is
/// settled once.
pub async fn settle(
    c: &mut PgConnection,
    account_id: Uuid,
    payment_id: Uuid,
    settlement: &Settlement,
    events: Events<'_>,
) -> Result<Payment, sqlx::Error> {
    let (status, reference, reason) = match settlement {
        Settlement::Succeeded { reference } => (PaymentStatus::Succeeded, reference, None),
        Settlement::Declined { reference, reason } => {
            (PaymentStatus::Failed, reference, Some(reason))
        }
    };
    let updated = sqlx::query_as::<_, Payment>(concat!(
        "WITH updated AS ( \
           UPDATE payments \
           SET status = $3, processor_reference = $4, failure_reason = $5, updated_at = now() \
           WHERE account_id = $1 AND id = $2 AND status = 'pending' \
           RETURNING ",
        payment_columns!(),
        "), \
         event AS ( \
           INSERT INTO outbox (event_id, account_id, payment_id, kind, amount, currency, \
                               occurred_at, traceparent) \
           SELECT gen_random_uuid(), $1, id, status, amount, currency, updated_at, $7 \
           FROM updated WHERE $6) \
         SELECT ",
        payment_columns!(),
        " FROM updated"
    ))
    .bind(account_id)
    .bind(payment_id)
    .bind(status)
    .bind(reference)
    .bind(reason)
    .bind(events.enabled)
    .bind(events.traceparent)
    .fetch_optional(&mut *c)
    .await?;
    match updated {
        Some(payment) => Ok(payment),
        None => get(c, account_id, payment_id)
            .await?
            .ok_or(sqlx::Error::RowNotFound),
    }
}

/// One payment of one account; another account's payment is simply not found.
pub async fn get(
    c: &mut PgConnection,
    account_id: Uuid,
    payment_id: Uuid,
) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query_as::<_, Payment>(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE account_id = $1 AND id = $2"
    ))
    .bind(account_id)
    .bind(payment_id)
    .fetch_optional(c)
    .await
}

/// A page of an account's payments, newest first, strictly older than `starting_after`.
///
/// Keyset pagination: the cursor is the last id of the previous page, so rows inserted
/// while a client pages cannot shift the pages and cause duplicates or gaps.
pub async fn list(
    c: &mut PgConnection,
    account_id: Uuid,
    starting_after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Payment>, sqlx::Error> {
    sqlx::query_as::<_, Payment>(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments \
         WHERE account_id = $1 AND ($2::uuid IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(account_id)
    .bind(starting_after)
    .bind(limit)
    .fetch_all(c)
    .await
}
