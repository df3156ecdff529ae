//! The worker: the asynchronous half of a payment's life.
//!
//! ```text
//! PostgreSQL outbox --relay--> Redis stream --consumer group--> ClickHouse
//!   (same transaction        (short sessions,    (batched inserts,
//!    as the change)           SKIP LOCKED)        ack after accept)
//! ```
//!
//! Delivery is at least once at every hop and nothing is deleted before the next hop has
//! it: the outbox row is marked published only after the stream accepted it, a stream
//! entry is acknowledged only after ClickHouse accepted its row. Repeats are made
//! invisible downstream by the event id (see `platform/clickhouse/payment_events.sql`).
//!
//! Any number of workers can run: relays share the outbox through row locks, consumers
//! share the stream through the consumer group, and a dead consumer's entries are claimed
//! by the others.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod event;
pub mod monitor;
pub mod relay;

/// The stream the relay publishes to.
pub const STREAM: &str = "payments.events";
/// The consumer group that loads ClickHouse.
pub const GROUP: &str = "analytics";
/// Where events that cannot be loaded go, with the reason.
pub const DEAD_LETTER_STREAM: &str = "payments.events.dead";
