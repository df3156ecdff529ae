//! Payment events in ClickHouse: the table, the row the worker writes into it, and the
//! query the analytics API reads it with. Schema and query live together because the
//! query is what makes redelivered events invisible (see `clickhouse/payment_events.sql`).

use std::time::Duration;

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config;

/// The DDL, with `{database}` standing for the database name.
const SCHEMA: &str = include_str!("../clickhouse/payment_events.sql");

pub const TABLE: &str = "payment_events";

/// `CLICKHOUSE_*` settings.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    /// `CLICKHOUSE_URL`: the HTTP interface, e.g. `http://127.0.0.1:8123`. Unset means no
    /// analytics store.
    pub url: Option<String>,
    /// `CLICKHOUSE_DATABASE` (default `tierstack`).
    pub database: String,
    /// `CLICKHOUSE_TIMEOUT_MS` (default 2000): the longest one query or insert may take.
    pub timeout: Duration,
}

impl ClickHouseConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            url: config::optional("CLICKHOUSE_URL"),
            database: config::var_or("CLICKHOUSE_DATABASE", "tierstack".to_owned())?,
            timeout: config::millis_or("CLICKHOUSE_TIMEOUT_MS", 2000)?,
        })
    }
}

/// A client for `database`. Validation is off because ClickHouse 18.16, the server
/// packaged for this machine, knows neither `RowBinaryWithNamesAndTypes` nor the settings
/// validation sends; rows are therefore plain RowBinary, and every row type here matches
/// its columns in order and type exactly.
pub fn client(url: &str, database: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(url)
        .with_database(database)
        .with_validation(false)
}

/// The schema's statements, comments removed, one per element.
pub fn schema_statements(database: &str) -> Vec<String> {
    let without_comments: String = SCHEMA
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("{database}", database))
        .collect()
}

/// Creates the database and table if they do not exist. `client` need not have a
/// database selected.
pub async fn ensure_schema(
    client: &clickhouse::Client,
    database: &str,
) -> Result<(), clickhouse::error::Error> {
    for statement in schema_statements(database) {
        client.query(&statement).execute().await?;
    }
    Ok(())
}

/// One event as stored in [`TABLE`]; the fields follow the columns' order.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct EventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub account_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub payment_id: Uuid,
    /// `created`, `succeeded` or `failed`.
    pub kind: String,
    pub amount: i64,
    pub currency: String,
    pub occurred_at_us: i64,
    /// `DateTime`: seconds since the epoch.
    pub occurred_at: u32,
    /// The W3C trace id the event was recorded under, or empty.
    pub trace_id: String,
}

/// Bucket widths the analytics API offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Minute,
    Hour,
    Day,
}

impl Interval {
    pub fn micros(self) -> i64 {
        match self {
            Self::Minute => 60_000_000,
            Self::Hour => 3_600_000_000,
            Self::Day => 86_400_000_000,
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "minute" => Some(Self::Minute),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }
}

/// Events of one kind and currency within one bucket.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct BucketRow {
    /// The bucket's start, in microseconds since the epoch (UTC).
    pub bucket_us: i64,
    pub kind: String,
    pub currency: String,
    pub count: u64,
    /// Sum of amounts, in minor units.
    pub volume: i64,
}

/// Counts and volumes of `account_id`'s events with `from_us <= occurred_at_us < to_us`,
/// by bucket, kind and currency, each event counted once however often it was delivered.
pub async fn summarize(
    client: &clickhouse::Client,
    account_id: Uuid,
    from_us: i64,
    to_us: i64,
    interval: Interval,
) -> Result<Vec<BucketRow>, clickhouse::error::Error> {
    // The inner query collapses copies of an event; the range on occurred_at (seconds)
    // only lets ClickHouse skip partitions, the exact range is on occurred_at_us. Its
    // aliases differ from the column names: ClickHouse resolves an alias that shadows a
    // column in the WHERE clause too, and would then filter on an aggregate.
    client
        .query(
            "SELECT toInt64(intDiv(event_at_us, ?) * ?) AS bucket_us, event_kind AS kind, \
                    event_currency AS currency, toUInt64(count()) AS count, \
                    toInt64(sum(event_amount)) AS volume \
             FROM ( \
               SELECT event_id, any(kind) AS event_kind, any(currency) AS event_currency, \
                      any(amount) AS event_amount, any(occurred_at_us) AS event_at_us \
               FROM payment_events \
               WHERE account_id = toUUID(?) \
                 AND occurred_at >= toDateTime(?) AND occurred_at <= toDateTime(?) \
                 AND occurred_at_us >= ? AND occurred_at_us < ? \
               GROUP BY event_id) \
             GROUP BY bucket_us, kind, currency \
             ORDER BY bucket_us, kind, currency",
        )
        .bind(interval.micros())
        .bind(interval.micros())
        .bind(account_id.to_string())
        .bind(from_us.div_euclid(1_000_000))
        .bind(to_us.div_euclid(1_000_000))
        .bind(from_us)
        .bind(to_us)
        .fetch_all::<BucketRow>()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_splits_into_statements_without_comments() {
        let statements = schema_statements("analytics");
        assert_eq!(statements.len(), 2);
        assert!(statements[0].starts_with("CREATE DATABASE IF NOT EXISTS analytics"));
        assert!(statements[1].contains("analytics.payment_events"));
        assert!(statements.iter().all(|s| !s.contains("--")));
    }

    #[test]
    fn intervals_parse_only_known_names() {
        assert_eq!(Interval::parse("hour"), Some(Interval::Hour));
        assert_eq!(Interval::parse("week"), None);
        assert_eq!(Interval::parse("Hour"), None);
    }
}
